"""Discrete-event simulation of a chunk of frames flowing through a placement.

The check on the cost model's closed form: every device and every physical channel (a
directed host-to-host link, or a same-host device pair) is a FIFO resource serving one job at
a time; frame i takes replica i mod r of each stage; all n frames are waiting at the source at
t = 0 (seed 000's chunk), or arrive every ``interval_s``. Durations come from the same
``CostModel``, so differences from T(n) = L + (n-1) P come only from queueing and sharing
(a plan that crosses one physical link twice, replicas at small n), which is what it is for.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

from serdab.plan.costs import CostModel, link_key
from serdab.plan.placement import Placement

__all__ = ["SimResult", "simulate"]


@dataclass(frozen=True)
class SimResult:
    chunk: int
    chunk_time_s: float  # last frame out
    first_latency_s: float  # frame 0, in to out
    mean_latency_s: float
    busy_s: dict[str, float]  # per resource: time spent serving
    events: int


def _route(costs: CostModel, placement: Placement, frame: int) -> list[tuple[str, float]]:
    """(resource, seconds) steps of one frame, hops included."""
    steps: list[tuple[str, float]] = []
    previous = costs.devices[costs.source]
    for stage in placement.stages:
        device = costs.devices[costs.index[stage.devices[frame % stage.replicas]]]
        channel = link_key(previous, device)
        if channel is not None:
            nbytes = int(costs.workload.boundary_bytes[stage.first])
            steps.append(
                (
                    ":".join(channel),
                    float(costs.transfer_s(costs.index[previous.name], costs.index[device.name], nbytes)),
                )
            )
        # the stage's head device's time (a blinded stage's enclave is held through its helper's round trips)
        steps.append((device.name, costs.stage_compute_s(stage)))
        previous = device
    return steps


def simulate(costs: CostModel, placement: Placement, chunk: int, interval_s: float = 0.0) -> SimResult:
    """Run ``chunk`` frames through ``placement``; returns when the last one leaves."""
    routes = [_route(costs, placement, i) for i in range(min(chunk, _cycle(placement)))]
    arrival = [i * interval_s for i in range(chunk)]
    done = [0.0] * chunk
    queues: dict[str, deque[tuple[int, int]]] = {}
    idle: dict[str, bool] = {}
    busy: dict[str, float] = {}
    events: list[tuple[float, int, int, int]] = []  # (time, order, frame, step finished+1 / ready)
    order = 0

    def ready(time: float, frame: int, step: int) -> None:
        nonlocal order
        route = routes[frame % len(routes)]
        if step == len(route):
            done[frame] = time
            return
        resource = route[step][0]
        queues.setdefault(resource, deque()).append((frame, step))
        if idle.setdefault(resource, True):
            start(time, resource)

    def start(time: float, resource: str) -> None:
        nonlocal order
        frame, step = queues[resource].popleft()
        seconds = routes[frame % len(routes)][step][1]
        idle[resource] = False
        busy[resource] = busy.get(resource, 0.0) + seconds
        heapq.heappush(events, (time + seconds, order, frame, step))
        order += 1

    for frame in range(chunk):
        heapq.heappush(events, (arrival[frame], order, frame, -1))
        order += 1
    count = 0
    while events:
        time, _, frame, step = heapq.heappop(events)
        count += 1
        if step >= 0:  # a job finished: free its resource, then move the frame on
            resource = routes[frame % len(routes)][step][0]
            idle[resource] = True
            if queues[resource]:
                start(time, resource)
        ready(time, frame, step + 1)
    latencies = [done[i] - arrival[i] for i in range(chunk)]
    return SimResult(
        chunk=chunk,
        chunk_time_s=max(done),
        first_latency_s=latencies[0],
        mean_latency_s=sum(latencies) / chunk,
        busy_s=busy,
        events=count,
    )


def _cycle(placement: Placement) -> int:
    """Frames after which the replica choice repeats."""
    cycle = 1
    for stage in placement.stages:
        cycle = cycle * stage.replicas // _gcd(cycle, stage.replicas)
    return cycle


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a
