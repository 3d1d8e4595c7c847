"""Run a policy over a stream of requests and measure seed 003's metrics.

Accuracy is the share of requests whose placement respects every constraint; since a greedy
choice can dead-end, each request is first checked by a depth-first search (``feasible_exists``)
so accuracy can also be reported over the requests for which a valid placement existed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from serdab.schedule.policies import GreedyPolicy, Policy
from serdab.schedule.system import Request, SystemConfig, SystemState, privacy_allows
from serdab.schedule.workload import CnnSpec

__all__ = [
    "SearchPolicy",
    "StreamResult",
    "feasible_exists",
    "packing_infeasible",
    "place_request",
    "run_stream",
    "search_placement",
]


@dataclass(frozen=True)
class StreamResult:
    policy: str
    requests: int
    accuracy: float  # share of all requests placed without violating a constraint
    accuracy_feasible: float  # the same among requests for which a valid placement was shown to exist
    feasible_share: float  # requests with a valid placement found by the search
    unknown_share: float  # requests the search could not decide within its budget (in neither count)
    mean_latency_s: float  # over valid placements
    shared_mb: float  # per valid inference
    decision_ms: float  # mean time per layer decision


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
            key = (state.speed[i], state.rate[i], compute[i], memory[i], bandwidth[i], i == previous,
                   base[i, 1:last].tobytes())  # fmt: skip
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
    if packing_infeasible(np.array([x.mults for x in middle], dtype=float), compute[:p]) or packing_infeasible(
        np.array([x.weight_bytes for x in middle], dtype=float), memory[:p]
    ):
        return None, True
    compute[source] -= first
    dfs(1, source, cnn.layers[0].mults / state.speed[source])
    return best, finished or best is not None and not optimise


def feasible_exists(state: SystemState, request: Request, budget: int = 2_000, solver_s: float = 5.0) -> bool | None:
    """Does any placement of the middle layers respect resources and privacy now?

    The depth-first search answers most requests; when it runs out of budget, CP-SAT decides
    (``solve_exact`` on this one request). None only when the solver also runs out of time.
    """
    placement, finished = search_placement(state, request, budget, optimise=False)
    if placement is not None:
        return True
    if finished:
        return False
    from serdab.schedule.exact import solve_exact

    status = solve_exact(state, [request], time_limit_s=solver_s, feasibility_only=True).status
    return {"infeasible": False, "unknown": None}.get(status, True)


class SearchPolicy(Policy):
    """Branch and bound per request (``search_placement``), planned at its first middle layer.

    When the search runs out of budget without a placement, CP-SAT (``solve_exact`` on this one
    request, ``solver_s`` seconds) settles it; greedy only when neither finds one.
    """

    name = "search"

    def __init__(self, budget: int = 300, solver_s: float = 2.0) -> None:
        self.budget = budget
        self.solver_s = solver_s  # CP-SAT for the requests the search cannot settle (0: never)
        self._plans: dict[int, list[int]] = {}
        self._last: dict[tuple[int, str], list[int]] = {}  # (participant generation, CNN) -> last placement

    def choose(self, state: SystemState, request: Request, layer: int) -> int:
        if layer == 1:
            self._plans.clear()
            key = (state.generation, request.cnn.name)
            placement, finished = search_placement(state, request, self.budget, hint=self._last.get(key))
            if placement is None and not finished and self.solver_s > 0:
                from serdab.schedule.exact import solve_exact

                solved = solve_exact(state, [request], time_limit_s=self.solver_s)
                placement = solved.placements[0] if solved.placements else None
            if placement is not None:
                self._plans[request.id] = placement
                self._last[key] = placement
        plan = self._plans.get(request.id)
        if plan is not None:
            return plan[layer]
        return GreedyPolicy().choose(state, request, layer)


def place_request(
    state: SystemState, request: Request, choose: Callable[[SystemState, Request, int], int]
) -> tuple[bool, float]:
    """Place every layer (first and last on the source); (valid, seconds spent deciding)."""
    source = state.source_device(request.source)
    state.place(request, 0, source)
    spent = 0.0
    for layer in range(1, request.cnn.depth - 1):
        started = time.perf_counter()
        device = choose(state, request, layer)
        spent += time.perf_counter() - started
        state.place(request, layer, device)
    state.place(request, request.cnn.depth - 1, source)
    state.finish(request)
    return not request.failed, spent


def run_stream(
    policy: Policy,
    config: SystemConfig,
    cnns: tuple[CnnSpec, ...],
    requests: int,
    seed: int = 0,
    check_feasible: bool = True,
    progress: Callable[[int], None] | None = None,
) -> StreamResult:
    """Poisson arrivals at ``config.arrival_rate``; the same seed gives every policy the same stream."""
    rng = np.random.default_rng(seed)
    state = SystemState(config, cnns, np.random.default_rng(seed + 1))
    clock = 0.0
    valid = feasible = valid_when_feasible = unknown = 0
    latencies: list[float] = []
    shared: list[int] = []
    decisions = 0
    spent = 0.0
    for n in range(requests):
        clock += rng.exponential(1.0 / config.arrival_rate)
        state.advance(clock)
        request = state.new_request(int(rng.integers(config.sources)), clock)
        exists = feasible_exists(state, request) if check_feasible else None
        ok, seconds = place_request(state, request, policy.choose)
        spent += seconds
        decisions += request.cnn.depth - 2
        feasible += exists is True
        unknown += exists is None
        valid += ok
        valid_when_feasible += ok and exists is True
        if ok:
            latencies.append(state.latency(request))
            shared.append(state.shared_bytes(request))
        if progress:
            progress(n + 1)
    return StreamResult(
        policy=policy.name,
        requests=requests,
        accuracy=valid / requests,
        accuracy_feasible=valid_when_feasible / feasible if feasible else 1.0,
        feasible_share=feasible / requests,
        unknown_share=unknown / requests,
        mean_latency_s=float(np.mean(latencies)) if latencies else float("nan"),
        shared_mb=float(np.mean(shared)) / 1e6 if shared else 0.0,
        decision_ms=1000 * spent / max(decisions, 1),
    )
