"""The exact optimum of seed 003's eq. 4 for a small batch of requests, with OR-Tools CP-SAT.

Requests are placed in the given order on one snapshot of the system (no clock): the solver
chooses a participant for every middle layer (first and last stay on the source, 4.e-f) so that
the summed latency of eq. 4 is least, subject to memory, compute and sender bandwidth over the
whole batch (4.a-c), one device per layer (4.d) and the privacy rule on what each participant has
seen of the CNN, counting earlier requests of the batch (4.g-h / eq. 6). Times are integer
microseconds in the model. Used to measure online policies' gap to optimal on small instances.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ortools.sat.python import cp_model

from serdab.schedule.system import Request, SystemState, exposure_bound

__all__ = ["ExactResult", "solve_exact"]

_US = 1e6


@dataclass(frozen=True)
class ExactResult:
    status: str  # "optimal", "feasible" (time limit, or feasibility_only), "infeasible", "unknown" (time limit)
    latency_s: float  # summed latency of the batch (eq. 4)
    placements: list[list[int]]  # per request, device per layer


def solve_exact(
    state: SystemState, requests: Sequence[Request], time_limit_s: float = 30.0, feasibility_only: bool = False
) -> ExactResult:
    """The least total latency (or, with ``feasibility_only``, any valid placement) for ``requests`` in order."""
    p = state.participants
    model = cp_model.CpModel()
    level = state.config.privacy
    assign: dict[tuple[int, int, int], cp_model.IntVar] = {}
    moved: dict[tuple[int, int, int], cp_model.IntVar] = {}
    cost = []
    use_compute: dict[int, list[Any]] = {i: [] for i in range(len(state.speed))}
    use_memory: dict[int, list[Any]] = {i: [] for i in range(len(state.speed))}
    use_bandwidth: dict[int, list[Any]] = {i: [] for i in range(len(state.speed))}
    for r, request in enumerate(requests):
        layers = request.cnn.layers
        last = len(layers) - 1
        source = state.source_device(request.source)
        for layer in (0, last):
            use_compute[source].append(layers[layer].mults)
            use_memory[source].append(layers[layer].weight_bytes)
            cost.append(round(layers[layer].mults / state.speed[source] * _US))
        use_bandwidth[source].append(layers[0].out_bytes)  # layer 1 always leaves the source
        cost.append(round(layers[0].out_bytes / state.rate[source] * _US))
        for layer in range(1, last):
            row = [model.new_bool_var(f"a{r}_{layer}_{i}") for i in range(p)]
            model.add_exactly_one(row)
            for i, var in enumerate(row):
                assign[r, layer, i] = var
                use_compute[i].append((layers[layer].mults, var))
                use_memory[i].append((layers[layer].weight_bytes, var))
                cost.append((round(layers[layer].mults / state.speed[i] * _US), var))
        for layer in range(1, last):
            for i in range(p):
                out = model.new_bool_var(f"m{r}_{layer}_{i}")  # the output of `layer` leaves device i
                here = assign[r, layer, i]
                if layer + 1 == last:
                    model.add(out == here)
                else:
                    nxt = assign[r, layer + 1, i]
                    model.add_implication(out, here)
                    model.add_implication(out, nxt.Not())
                    model.add_bool_or([out, here.Not(), nxt])
                moved[r, layer, i] = out
                use_bandwidth[i].append((layers[layer].out_bytes, out))
                cost.append((round(layers[layer].out_bytes / state.rate[i] * _US), out))
    for i in range(len(state.speed)):
        for uses, free in (
            (use_compute[i], state.free_compute[i]),
            (use_memory[i], state.free_memory[i]),
            (use_bandwidth[i], state.free_bandwidth[i]),
        ):
            constant = sum(u for u in uses if isinstance(u, int))
            terms = [c * v for c, v in (u for u in uses if not isinstance(u, int))]
            model.add(sum(terms) + constant <= int(free))
    if level != "none":
        for r, request in enumerate(requests):
            c = state.cnn_index(request.cnn)
            earlier = [q for q in range(r + 1) if requests[q].cnn.name == request.cnn.name]
            for layer in range(1, request.cnn.depth - 1):
                bound = exposure_bound(level, layer)
                if bound is None:
                    continue
                for i in range(p):
                    seen: list[Any] = []
                    for k in range(1, layer):
                        if state.exposure[i, c, k]:
                            seen.append(1)
                            continue
                        sources = [assign[q, k, i] for q in earlier if (q, k, i) in assign]
                        if len(sources) == 1:  # one request of this CNN so far: its own assignment
                            seen.append(sources[0])
                        elif sources:
                            flag = model.new_bool_var(f"x{r}_{i}_{k}")
                            model.add_max_equality(flag, sources)
                            seen.append(flag)
                    model.add(sum(seen) <= bound).only_enforce_if(assign[r, layer, i])
    if not feasibility_only:
        model.minimize(sum(c if isinstance(c, int) else c[0] * c[1] for c in cost))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = 2
    status = solver.solve(model)
    if status == cp_model.UNKNOWN:
        return ExactResult("unknown", math.inf, [])
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return ExactResult("infeasible", math.inf, [])
    placements = []
    for r, request in enumerate(requests):
        source = state.source_device(request.source)
        chosen = [
            next(i for i in range(p) if solver.value(assign[r, layer, i])) for layer in range(1, request.cnn.depth - 1)
        ]
        placements.append([source, *chosen, source])
    latency = sum(c if isinstance(c, int) else c[0] * solver.value(c[1]) for c in cost) / _US
    optimal = status == cp_model.OPTIMAL and not feasibility_only
    return ExactResult("optimal" if optimal else "feasible", latency, placements)
