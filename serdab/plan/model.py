"""Planning a model in one call: profile (or workload) + cluster + policy -> a checked placement.

``plan_request`` builds the ``PlanRequest`` every caller used to assemble by hand (the CLI, the
demo, the benchmarks, the runtime); ``plan_model`` runs a registered planner on it and raises
``InfeasibleError`` with the reason when nothing fits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from serdab.cluster import Cluster
from serdab.errors import InfeasibleError
from serdab.plan import BlindCosts, CostModel, Placement, PlanRequest, Workload, get_planner
from serdab.plan.placement import PlanCost
from serdab.plan.report import why_infeasible
from serdab.privacy.leakage import LeakageReport
from serdab.privacy.policy import PrivacyPolicy, allowed_starts, parse_policy
from serdab.profile import Profile

if TYPE_CHECKING:
    from serdab.privacy.audit import AuditReport

__all__ = ["PlannedModel", "plan_model", "plan_request"]


@dataclass(frozen=True)
class PlannedModel:
    request: PlanRequest
    placement: Placement
    cost: PlanCost
    planner_s: float


def plan_request(
    profile: Profile | Workload,
    cluster: Cluster,
    *,
    policy: str | PrivacyPolicy = "resolution:20",
    chunk: int = 1,
    trusted_tail: bool = False,
    replicate: bool = False,
    leakage: LeakageReport | None = None,
    audit: AuditReport | None = None,
    blind: BlindCosts | None = None,
) -> PlanRequest:
    """The request a planner sees: the cost model of this workload on this cluster, the cuts the
    policy lets an untrusted device receive (pearson/ssim/mse need ``leakage``, attack-* an
    ``audit``), and the rules; with ``blind``, trusted stages may have an untrusted helper blind
    their linear layers (issue 28)."""
    workload = profile if isinstance(profile, Workload) else Workload.from_profile(profile)
    if blind is not None:
        if blind.helper is not None and blind.helper not in {d.name for d in cluster.devices}:
            raise InfeasibleError(f"--blind-helper {blind.helper}: no such device in cluster {cluster.name}")
        workload = replace(workload, blind=blind)
    rule = parse_policy(policy) if isinstance(policy, str) else policy
    allowed = tuple(allowed_starts(rule, workload.boundary_resolution, leakage, audit))
    return PlanRequest(CostModel(workload, cluster), allowed, chunk, rule.spec, trusted_tail, replicate)


def plan_model(
    profile: Profile | Workload,
    cluster: Cluster,
    *,
    strategy: str = "optimal",
    policy: str | PrivacyPolicy = "resolution:20",
    chunk: int = 10_800,
    trusted_tail: bool = False,
    replicate: bool = False,
    leakage: LeakageReport | None = None,
    audit: AuditReport | None = None,
    blind: BlindCosts | None = None,
) -> PlannedModel:
    """The ``strategy``'s placement for a stream of ``chunk`` frames; InfeasibleError says why not."""
    request = plan_request(
        profile,
        cluster,
        policy=policy,
        chunk=chunk,
        trusted_tail=trusted_tail,
        replicate=replicate,
        leakage=leakage,
        audit=audit,
        blind=blind,
    )
    started = time.perf_counter()
    placement = get_planner(strategy).plan(request)
    planner_s = time.perf_counter() - started
    if placement is None:
        raise InfeasibleError(why_infeasible(request, strategy))
    return PlannedModel(request, placement, request.evaluate(placement), planner_s)
