"""The planner interface: a frozen request in, a Placement (or None when infeasible) out.

Every planner sees the same ``PlanRequest`` (cost model, which cuts an untrusted device may
receive, chunk size, optional rules) and is judged by the same cost model, so strategies
differ only in which placements they consider. Planners are registered by name in
``serdab.plan.PLANNERS``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from serdab.plan.costs import CostModel
from serdab.plan.placement import Placement, PlanCost, crossing

__all__ = ["PlanRequest", "Planner", "best_placement", "violation"]


@dataclass(frozen=True, eq=False)
class PlanRequest:
    costs: CostModel
    allowed: tuple[bool, ...]  # boundary b (0..M): may an untrusted stage start at block b?
    chunk: int = 1
    policy: str = "resolution:20"
    trusted_tail: bool = False  # the last stage must be trusted (labels stay private)
    replicate: bool = False  # a stage may run round robin on several identical devices

    def trusted(self, name: str) -> bool:
        return self.costs.cluster.device(name).trusted

    def evaluate(self, placement: Placement) -> PlanCost:
        return self.costs.evaluate(placement, self.chunk)


class Planner(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]

    @abstractmethod
    def plan(self, request: PlanRequest) -> Placement | None:
        """The strategy's best placement; None when it has no feasible one."""


def violation(request: PlanRequest, placement: Placement) -> str | None:
    """Why a placement breaks structure, trust, privacy, memory or links; None when it is valid."""
    return _judge(request, placement)[0]


def _judge(request: PlanRequest, placement: Placement) -> tuple[str | None, PlanCost | None]:
    costs = request.costs
    error = costs.structure_error(placement)
    if error:
        return error, None
    stages = placement.stages
    if not all(request.trusted(d) for d in stages[0].devices):
        return "the first stage must run on a trusted device", None
    if request.trusted_tail and not all(request.trusted(d) for d in stages[-1].devices):
        return "the last stage must run on a trusted device (labels stay private)", None
    if not request.replicate and any(s.replicas > 1 for s in stages):
        return "replication was not allowed", None
    for stage in stages:
        if not all(request.trusted(d) for d in stage.devices) and not request.allowed[stage.first]:
            return (
                f"{stage.device} is untrusted and may not receive {crossing(stage.first)} ({request.policy})",
                None,
            )
    cost = request.evaluate(placement)
    for s in cost.stages:
        if not math.isfinite(s.compute_s):
            return f"{s.stage.device} cannot hold blocks {s.stage.first}-{s.stage.last} ({s.memory_bytes} bytes)", cost
    for h in cost.hops:
        if not math.isfinite(h.time_s + h.period_s):
            return f"no link from {h.src[0]} to {h.dst[0]}", cost
    return None, cost


def best_placement(request: PlanRequest, candidates: Iterable[Placement]) -> Placement | None:
    """The valid candidate with the least T(n); ties go to the one seen first."""
    best: Placement | None = None
    best_time = math.inf
    for placement in candidates:
        error, cost = _judge(request, placement)
        if error is None and cost is not None and cost.chunk_time_s < best_time:
            best, best_time = placement, cost.chunk_time_s
    return best
