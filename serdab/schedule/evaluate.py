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

from serdab.schedule.exact import solve_exact
from serdab.schedule.policies import Policy
from serdab.schedule.search import search_placement
from serdab.schedule.system import Request, SystemConfig, SystemState
from serdab.schedule.workload import CnnSpec

__all__ = ["StreamResult", "feasible_exists", "place_request", "run_stream"]


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
    status = solve_exact(state, [request], time_limit_s=solver_s, feasibility_only=True).status
    return {"infeasible": False, "unknown": None}.get(status, True)


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
