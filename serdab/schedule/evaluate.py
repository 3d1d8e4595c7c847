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

from serdab.schedule.policies import Policy
from serdab.schedule.system import Request, SystemConfig, SystemState, privacy_allows
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


def feasible_exists(state: SystemState, request: Request, budget: int = 2_000) -> bool | None:
    """Does any placement of the middle layers respect resources and privacy now? None: search budget spent."""
    p = state.participants
    cnn = request.cnn
    c = state.cnn_index(cnn)
    compute, memory, bandwidth = state.free_compute.copy(), state.free_memory.copy(), state.free_bandwidth.copy()
    base = state.exposure[:p, c, :].copy()
    last = cnn.depth - 1
    source = state.source_device(request.source)
    nodes = 0

    def dfs(layer: int, previous: int) -> bool | None:
        nonlocal nodes
        if layer == last:
            sent = cnn.layers[layer - 1].out_bytes if previous != source else 0
            return bandwidth[previous] >= sent and compute[source] >= cnn.layers[last].mults
        nodes += 1
        if nodes > budget:
            return None
        spec = cnn.layers[layer]
        sent = cnn.layers[layer - 1].out_bytes
        candidates = []
        for i in range(p):
            if compute[i] < spec.mults or memory[i] < spec.weight_bytes:
                continue
            if i != previous and bandwidth[previous] < sent:
                continue
            if state.config.privacy != "none" and not privacy_allows(
                state.config.privacy, layer, int(base[i, 1:layer].sum())
            ):
                continue
            candidates.append(i)
        finish = {
            i: (sent / state.rate[previous] if i != previous else 0) + spec.mults / state.speed[i] for i in candidates
        }
        unknown = False
        for i in sorted(candidates, key=finish.__getitem__):
            moved = sent if i != previous else 0
            compute[i] -= spec.mults
            memory[i] -= spec.weight_bytes
            bandwidth[previous] -= moved
            seen_before = base[i, layer]
            base[i, layer] = True
            found = dfs(layer + 1, i)
            base[i, layer] = seen_before
            compute[i] += spec.mults
            memory[i] += spec.weight_bytes
            bandwidth[previous] += moved
            if found:
                return True
            unknown |= found is None
        return None if unknown else False

    if compute[source] < cnn.layers[0].mults + cnn.layers[last].mults:
        return False
    compute[source] -= cnn.layers[0].mults
    return dfs(1, source)


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
