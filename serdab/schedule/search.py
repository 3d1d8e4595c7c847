"""Per-request placement search: branch and bound with a packing bound, CP-SAT when it cannot settle.

Used as a policy (``SearchPolicy``) and, through ``serdab.schedule.evaluate.feasible_exists``,
as the oracle that says whether any valid placement existed for a request.
"""

from __future__ import annotations

import numpy as np

from serdab.schedule.exact import solve_exact
from serdab.schedule.policies import GreedyPolicy, Policy
from serdab.schedule.system import Request, SystemState, privacy_allows

__all__ = ["SearchPolicy", "packing_infeasible", "search_placement"]


def packing_infeasible(sizes: np.ndarray, free: np.ndarray) -> bool:
    """True when items cannot fit one per device-slot: for the k largest items (each >= t), the
    devices offer only sum(floor(free / t)) places big enough; fewer than k proves infeasibility."""
    sizes = np.sort(sizes[sizes > 0])[::-1]
    return any(np.floor(free / t).sum() < k for k, t in enumerate(sizes, start=1))


def search_placement(
    state: SystemState,
    request: Request,
    budget: int = 2_000,
    optimise: bool = True,
    hint: list[int] | None = None,
) -> tuple[list[int] | None, bool]:
    """Depth-first branch and bound over the middle layers, children in earliest-finish order.

    Returns (best placement found or None, whether the search finished within ``budget`` nodes).
    The first leaf reached is the greedy placement when greedy works; backtracking repairs dead
    ends; with ``optimise`` the search goes on, pruning by latency so far + the remaining layers
    on the fastest participant, and keeps the best placement. ``hint`` (a device per layer, e.g.
    the last placement of the same CNN) is tried first: repeating a placement exposes nothing new.
    """
    p = state.participants
    cnn = request.cnn
    c = state.cnn_index(cnn)
    compute, memory, bandwidth = state.free_compute.copy(), state.free_memory.copy(), state.free_bandwidth.copy()
    base = state.exposure[:p, c, :].copy()
    last = cnn.depth - 1
    source = state.source_device(request.source)
    fastest = state.speed[:p].max()
    mults_left = np.concatenate([np.cumsum([x.mults for x in cnn.layers[::-1]])[::-1], [0]])
    weights_left = np.concatenate([np.cumsum([x.weight_bytes for x in cnn.layers[::-1]])[::-1], [0]])
    remaining = mults_left / fastest
    best: list[int] | None = None
    best_latency = np.inf
    path: list[int] = []
    nodes = 0
    finished = True

    def dfs(layer: int, previous: int, latency: float) -> bool:
        """False stops the whole search (budget spent, or a first solution found when not optimising)."""
        nonlocal nodes, best, best_latency, finished
        if layer == last:
            sent = cnn.layers[layer - 1].out_bytes
            if bandwidth[previous] < sent:
                return True
            total = latency + sent / state.rate[previous] + cnn.layers[last].mults / state.speed[source]
            if total < best_latency:
                best, best_latency = [source, *path, source], total
            return optimise
        nodes += 1
        if nodes > budget:
            finished = False
            return False
        if latency + remaining[layer] >= best_latency:
            return True
        # necessary: what is left must fit the participants' free compute and memory in total
        if mults_left[layer] - cnn.layers[last].mults > compute[:p].sum():
            return True
        if weights_left[layer] - cnn.layers[last].weight_bytes > memory[:p].sum():
            return True
        spec = cnn.layers[layer]
        sent = cnn.layers[layer - 1].out_bytes
        options = []
        classes: set[tuple] = set()  # interchangeable devices (same type, free capacity, exposure): try one
        for i in range(p):
            if compute[i] < spec.mults or memory[i] < spec.weight_bytes:
                continue
            if i != previous and bandwidth[previous] < sent:
                continue
            if state.config.privacy != "none" and not privacy_allows(
                state.config.privacy, layer, int(base[i, 1:layer].sum())
            ):
                continue
            key = (
                state.speed[i],
                state.rate[i],
                compute[i],
                memory[i],
                bandwidth[i],
                i == previous,
                base[i, 1:last].tobytes(),
            )
            if key in classes:
                continue
            classes.add(key)
            step = (sent / state.rate[previous] if i != previous else 0.0) + spec.mults / state.speed[i]
            preferred = 0 if hint is not None and hint[layer] == i else 1
            options.append((preferred, step, -state.speed[i], i))
        for _, step, _, i in sorted(options):
            moved = sent if i != previous else 0
            compute[i] -= spec.mults
            memory[i] -= spec.weight_bytes
            bandwidth[previous] -= moved
            seen_before = base[i, layer]
            base[i, layer] = True
            path.append(i)
            go_on = dfs(layer + 1, i, latency + step)
            path.pop()
            base[i, layer] = seen_before
            compute[i] += spec.mults
            memory[i] += spec.weight_bytes
            bandwidth[previous] += moved
            if not go_on:
                return False
        return True

    first = cnn.layers[0].mults + cnn.layers[last].mults
    if compute[source] < first or bandwidth[source] < cnn.layers[0].out_bytes:
        return None, True
    middle = cnn.layers[1:last]
    # Sound infeasibility proofs before searching: capacity only shrinks and exposure only grows as
    # layers are placed, so a device unable to take a layer now never will within this request.
    eligible = np.zeros(p, dtype=bool)
    for layer, spec in enumerate(middle, start=1):
        able = (compute[:p] >= spec.mults) & (memory[:p] >= spec.weight_bytes)
        if state.config.privacy != "none":
            seen = base[:, 1:layer].sum(axis=1)
            able &= np.array([privacy_allows(state.config.privacy, layer, int(x)) for x in seen])
        if not able.any():
            return None, True
        eligible |= able
    mults = np.array([x.mults for x in middle], dtype=float)
    weights = np.array([x.weight_bytes for x in middle], dtype=float)
    if packing_infeasible(mults, compute[:p] * eligible) or packing_infeasible(weights, memory[:p] * eligible):
        return None, True
    compute[source] -= first
    dfs(1, source, cnn.layers[0].mults / state.speed[source])
    return best, finished or best is not None and not optimise


class SearchPolicy(Policy):
    """Branch and bound per request (``search_placement``), planned at its first middle layer.

    When the branch and bound runs out of budget without a placement, a deeper depth-first search
    looks for any valid one, then CP-SAT (``solve_exact`` on this one request, ``solver_s``
    seconds); greedy only when none finds one.
    """

    name = "search"

    def __init__(self, budget: int = 150, deep_budget: int = 2_000, solver_s: float = 2.0) -> None:
        self.budget = budget  # nodes of branch and bound for the best placement
        self.deep_budget = deep_budget  # nodes of plain depth-first search when that found none
        self.solver_s = solver_s  # CP-SAT for the requests neither settles (0: never)
        self._plans: dict[int, list[int]] = {}
        self._last: dict[tuple[int, str], list[int]] = {}  # (participant generation, CNN) -> last placement

    def choose(self, state: SystemState, request: Request, layer: int) -> int:
        if layer == 1:
            self._plans.clear()
            key = (state.generation, request.cnn.name)
            placement, finished = search_placement(state, request, self.budget, hint=self._last.get(key))
            if placement is None and not finished:  # a deeper search for any valid placement
                placement, finished = search_placement(state, request, self.deep_budget, optimise=False)
            if placement is None and not finished and self.solver_s > 0:
                solved = solve_exact(state, [request], time_limit_s=self.solver_s, feasibility_only=True)
                placement = solved.placements[0] if solved.placements else None
            if placement is not None:
                self._plans[request.id] = placement
                self._last[key] = placement
        plan = self._plans.get(request.id)
        if plan is not None:
            return plan[layer]
        return GreedyPolicy().choose(state, request, layer)
