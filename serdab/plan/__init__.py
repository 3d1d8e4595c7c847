"""Placement planning: Profile + Cluster + privacy policy -> Placement (seed 000 sec. IV-V).

Blocks are the profile's indices and every block range is inclusive; cut i is the tensor block i
outputs (docs/partition.md). Inside, tensors are indexed by boundary b = 0..M, the one before
block b (boundary 0 = the input frame, boundary b = cut b-1). Times are seconds, sizes bytes. Every planner, the
simulator and the runtime judge a placement with the one ``CostModel``.
"""

from serdab.errors import PlanError
from serdab.plan.brute import BruteForcePlanner, all_placements
from serdab.plan.costs import PRECOMPUTATION, BlindCosts, CostModel, Workload
from serdab.plan.optimal import Group, OptimalPlanner, device_groups
from serdab.plan.placement import BlindedShare, HopCost, Placement, PlanCost, Stage, StageCost
from serdab.plan.planner import Planner, PlanRequest, best_placement, violation
from serdab.plan.strategies import (
    NeurosurgeonPlanner,
    SerdabTreePlanner,
    SingleTeePlanner,
    TeeGpuPlanner,
    TwoTeesPlanner,
)

__all__ = [
    "PLANNERS",
    "PRECOMPUTATION",
    "BlindCosts",
    "BlindedShare",
    "CostModel",
    "Group",
    "HopCost",
    "Placement",
    "PlanCost",
    "PlanRequest",
    "Planner",
    "Stage",
    "StageCost",
    "Workload",
    "all_placements",
    "best_placement",
    "device_groups",
    "get_planner",
    "violation",
]

PLANNERS: dict[str, type[Planner]] = {
    p.name: p
    for p in (
        OptimalPlanner,
        SerdabTreePlanner,
        SingleTeePlanner,
        NeurosurgeonPlanner,
        TeeGpuPlanner,
        TwoTeesPlanner,
        BruteForcePlanner,
    )
}


def get_planner(name: str) -> Planner:
    """A planner by registered name; an unknown name lists the valid ones."""
    kind = PLANNERS.get(name)
    if kind is None:
        raise PlanError(f"unknown strategy {name!r}; choose one of {', '.join(PLANNERS)}")
    return kind()
