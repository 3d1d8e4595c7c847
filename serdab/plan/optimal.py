"""Exact optimal placement: minimum T(n) = L + (n-1) P over contiguous placements (seed 000 eq. 1-2).

Why hand-written: no solver library knows this objective, and a MIP would be orders of magnitude
slower than this dynamic programme for the sizes that matter (M ~ 100 blocks, K ~ 6 devices).

Subset DP over states (used devices S, last group g, cut c): the least latency L of a placement
of blocks 0..c-1 whose last stage runs on g. For a fixed cap q on every period term (stage
compute / replicas, hop share), the DP gives L_min(q); T(n) = min over q of L_min(q) + (n-1) q
(PipeEdge-style sweep over candidate periods). The sweep walks the Pareto front of (L, P)
downwards from the least-latency plan and stops as soon as no smaller period can pay off, so
only a few DPs run. Groups are single devices, or with ``replicate`` any set of identical
devices running one stage round robin. Assumptions and limits: one stage per device; each hop
is its own channel (the simulator shows when a plan reuses a physical link); exponential in the
number of devices (2^K states), fine for the K <= ~10 of an edge/cloud set-up.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from serdab.plan.placement import Placement, Stage
from serdab.plan.planner import Planner, PlanRequest

__all__ = ["Group", "OptimalPlanner", "device_groups", "min_latency_placement"]


@dataclass(frozen=True)
class Group:
    """What can hold one stage: devices running it round robin, or one trusted device whose linear
    layers an untrusted ``helper`` computes blinded. A device may hold one stage and blind for one."""

    devices: tuple[int, ...]
    helper: int | None = None

    def mask(self, k: int) -> int:
        """Bits of what the group occupies among ``k`` devices: holding a stage, then blinding for one."""
        bits = sum(1 << i for i in self.devices)
        return bits | (1 << (k + self.helper)) if self.helper is not None else bits


def device_groups(request: PlanRequest) -> list[Group]:
    """Single devices, (with ``replicate``) every set of >= 2 identical devices, and (when the workload
    carries blinding costs) every trusted device with every untrusted helper it is linked to.

    A group lists the source first when it holds it, then cluster order: its first device takes
    frame 0. An outsourced mode's W r device is reserved for that: it is in no group (and without it,
    nothing is blinded).
    """
    costs = request.costs
    devices = costs.devices
    blind = costs.workload.blind
    reserved = costs.index.get(blind.helper) if blind is not None and blind.helper is not None else None
    groups = [Group((i,)) for i in range(len(devices)) if i != reserved]
    lost = blind is not None and blind.helper is not None and reserved is None  # the W r device is gone
    if blind is not None and not lost:
        groups += [
            Group((e,), g)
            for e in range(len(devices))
            for g in range(len(devices))
            if devices[e].trusted
            and not devices[g].trusted
            and reserved not in (e, g)
            and costs.cluster.channel(devices[e], devices[g]) is not None
        ]
    if not request.replicate:
        return groups
    classes: list[list[int]] = []
    for i, d in enumerate(devices):
        for members in classes:
            if devices[members[0]].same_hardware(d):
                members.append(i)
                break
        else:
            classes.append([i])
    for members in classes:
        ordered = sorted((i for i in members if i != reserved), key=lambda i: (i != costs.source, i))
        for size in range(2, len(ordered) + 1):
            groups.extend(Group(c) for c in itertools.combinations(ordered, size))
    return groups


@dataclass
class _Solution:
    latency_s: float
    stages: list[tuple[int, int, int]]  # (group index, first block, last block)


class _Tables:
    """Everything the DP reads, computed once per request."""

    def __init__(self, request: PlanRequest) -> None:
        costs = request.costs
        self.request = request
        self.m = costs.blocks
        self.groups = device_groups(request)
        k = len(costs.devices)
        self.masks = [g.mask(k) for g in self.groups]
        self.trusted = [all(costs.devices[i].trusted for i in g.devices) for g in self.groups]
        self.compute = []  # latency matrices C[c, c2]
        self.compute_period = []  # C / replicas
        by_head: dict[tuple[int, int | None], np.ndarray] = {}
        for g in self.groups:
            key = (g.devices[0], g.helper)
            if key not in by_head:
                by_head[key] = (
                    costs.compute_matrix(g.devices[0]) if g.helper is None else costs.blind_matrix(*key)  # type: ignore[arg-type]
                )
            self.compute.append(by_head[key])
            self.compute_period.append(by_head[key] / len(g.devices))
        source = (costs.source,)
        self.entry = []  # (latency, period) of the hop source -> g for the input frame (cut 0)
        for g in self.groups:
            if g.devices == source:
                self.entry.append((0.0, 0.0))
            else:
                lat, per = costs.hop_vectors(source, g.devices)
                self.entry.append((float(lat[0]), float(per[0])))
        allowed = np.array(request.allowed, dtype=bool)
        self.blocked = ~allowed  # cuts an untrusted group may not start at
        self._hops: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def hop(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        key = (a, b)
        if key not in self._hops:
            lat, per = self.request.costs.hop_vectors(self.groups[a].devices, self.groups[b].devices)
            if not self.trusted[b]:
                lat = np.where(self.blocked, np.inf, lat)
            self._hops[key] = (lat, per)
        return self._hops[key]

    def candidate_periods(self) -> np.ndarray:
        values = [cp[np.isfinite(cp)] for cp in self.compute_period]
        values.append(np.array([per for _, per in self.entry]))
        for a, b in self.successors_all():
            per = self.hop(a, b)[1]
            values.append(per[np.isfinite(per)])
        return np.unique(np.concatenate(values))

    def successors_all(self) -> list[tuple[int, int]]:
        return [
            (a, b)
            for a in range(len(self.groups))
            for b in range(len(self.groups))
            if not self.masks[a] & self.masks[b]
        ]

    def capped(self, cap: float) -> list[np.ndarray]:
        if math.isinf(cap):
            return self.compute
        return [np.where(cp <= cap, c, np.inf) for c, cp in zip(self.compute, self.compute_period, strict=True)]


def _solve(t: _Tables, cap: float) -> _Solution | None:
    """Least-latency placement whose every period term is <= cap (None if there is none)."""
    compute = t.capped(cap)
    m = t.m
    cols = np.arange(m + 1)
    states: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for g in range(len(t.groups)):
        entry_lat, entry_per = t.entry[g]
        if t.trusted[g] and entry_per <= cap and math.isfinite(entry_lat):
            row = entry_lat + compute[g][0]
            if np.isfinite(row).any():
                states[(t.masks[g], g)] = (row, np.full(m + 1, -1), np.zeros(m + 1, dtype=np.int64))
    levels = max(2 * len(t.request.costs.devices), 1)
    for level in range(1, levels + 1):
        for mask, g in [k for k in states if k[0].bit_count() == level]:
            f = states[(mask, g)][0]
            if not np.isfinite(f[:m]).any():
                continue
            for g2 in range(len(t.groups)):
                if mask & t.masks[g2]:
                    continue
                lat, per = t.hop(g, g2)
                h = f + lat
                h[per > cap] = np.inf
                idx = np.flatnonzero(np.isfinite(h[:m]))
                if idx.size == 0:
                    continue
                sub = h[idx, None] + compute[g2][idx]
                arg = sub.argmin(axis=0)
                val = sub[arg, cols]
                key = (mask | t.masks[g2], g2)
                if key in states:
                    best, prev_g, prev_c = states[key]
                    better = val < best
                    best[better] = val[better]
                    prev_g[better] = g
                    prev_c[better] = idx[arg[better]]
                else:
                    prev_g = np.where(np.isfinite(val), g, -1)
                    states[key] = (val, prev_g, idx[arg])
    best_key = None
    best_latency = math.inf
    for key, (f, _, _) in states.items():  # insertion order: fewer devices first on ties
        if f[m] < best_latency and (t.trusted[key[1]] or not t.request.trusted_tail):
            best_key, best_latency = key, float(f[m])
    if best_key is None:
        return None
    stages = []
    mask, g, c = best_key[0], best_key[1], m
    while True:
        _, prev_g, prev_c = states[(mask, g)]
        if prev_g[c] < 0:
            stages.append((g, 0, c - 1))
            break
        first = int(prev_c[c])
        stages.append((g, first, c - 1))
        mask, g, c = mask & ~t.masks[g], int(prev_g[c]), first
    return _Solution(best_latency, stages[::-1])


def _min_period(t: _Tables) -> float:
    """Least achievable period P over all placements (bottleneck DP: min over paths of max term)."""
    m = t.m
    states: dict[tuple[int, int], np.ndarray] = {}
    for g in range(len(t.groups)):
        entry_lat, entry_per = t.entry[g]
        if t.trusted[g] and math.isfinite(entry_lat):
            states[(t.masks[g], g)] = np.maximum(entry_per, t.compute_period[g][0])
    best = math.inf
    levels = max(2 * len(t.request.costs.devices), 1)
    for level in range(1, levels + 1):
        for mask, g in [k for k in states if k[0].bit_count() == level]:
            f = states[(mask, g)]
            if t.trusted[g] or not t.request.trusted_tail:
                best = min(best, float(f[m]))
            for g2 in range(len(t.groups)):
                if mask & t.masks[g2]:
                    continue
                lat, per = t.hop(g, g2)
                h = np.where(np.isfinite(lat), np.maximum(f, per), np.inf)
                idx = np.flatnonzero(h[:m] < best)
                if idx.size == 0:
                    continue
                val = np.maximum(h[idx, None], t.compute_period[g2][idx]).min(axis=0)
                key = (mask | t.masks[g2], g2)
                states[key] = np.minimum(states[key], val) if key in states else val
    return best


def _placement(t: _Tables, solution: _Solution, strategy: str) -> Placement:
    names = [d.name for d in t.request.costs.devices]
    stages = []
    for g, first, last in solution.stages:
        group = t.groups[g]
        helper = names[group.helper] if group.helper is not None else None
        stages.append(Stage(tuple(names[i] for i in group.devices), first, last, helper))
    return Placement(strategy, tuple(stages))


def min_latency_placement(request: PlanRequest, strategy: str) -> Placement | None:
    """The placement with the least one-frame latency L (n = 1: no pipelining considered)."""
    t = _Tables(request)
    solution = _solve(t, math.inf)
    return None if solution is None else _placement(t, solution, strategy)


class OptimalPlanner(Planner):
    name = "optimal"
    summary = "exact minimum of T(n) over every contiguous placement (subset DP + period sweep)"

    def plan(self, request: PlanRequest) -> Placement | None:
        t = _Tables(request)
        strategy = "optimal+replicate" if request.replicate else self.name
        n = request.chunk
        first = _solve(t, math.inf)
        if first is None:
            return None
        best = _placement(t, first, strategy)
        if n == 1:
            return best
        cost = request.evaluate(best)
        best_time, latency_floor, top = cost.chunk_time_s, cost.latency_s, cost.period_s
        p_min = _min_period(t)
        candidates = t.candidate_periods()
        # walk down the (L, P) front: each DP at cap q gives L_min(q) and a plan of period a <= q;
        # every cap in [a, q] gives that same plan, so the next cap is the largest candidate < a.
        cap = _below(candidates, top, inclusive_limit=(best_time - latency_floor) / (n - 1))
        while cap is not None and cap >= p_min:
            solution = _solve(t, cap)
            if solution is None:
                break
            placement = _placement(t, solution, strategy)
            cost = request.evaluate(placement)
            if cost.chunk_time_s < best_time:
                best, best_time = placement, cost.chunk_time_s
            if cost.latency_s + (n - 1) * p_min >= best_time:
                break
            cap = _below(candidates, min(cost.period_s, cap))
        return best


def _below(candidates: np.ndarray, limit: float, inclusive_limit: float = math.inf) -> float | None:
    """The largest candidate < limit and <= inclusive_limit."""
    i = int(np.searchsorted(candidates, limit, side="left")) - 1
    j = int(np.searchsorted(candidates, inclusive_limit, side="right")) - 1
    k = min(i, j)
    return float(candidates[k]) if k >= 0 else None
