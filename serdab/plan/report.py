"""What a plan says to the outside: the JSON document of `serdab plan` and infeasibility reasons."""

from __future__ import annotations

import math
from typing import Any

from serdab.plan.costs import BlindCosts
from serdab.plan.placement import BlindedShare, PlanCost
from serdab.plan.planner import PlanRequest
from serdab.privacy import LeakageReport

__all__ = ["plan_document", "why_infeasible"]


def plan_document(request: PlanRequest, cost: PlanCost, leakage: LeakageReport | None = None) -> dict[str, Any]:
    """The placement as issue 3's JSON contract (block ranges inclusive, profile indices), plus extras."""
    costs = request.costs
    workload = costs.workload
    by_boundary = {c.index + 1: c for c in leakage.cuts} if leakage else {}
    exposed = []
    for i, s in enumerate(cost.placement.stages):
        if not request.trusted(s.device):
            entry: dict[str, Any] = {
                "stage": i,
                "device": s.device,
                "cut": s.first - 1,  # the tensor block first-1 outputs (an untrusted stage never gets the input)
                "after_block": workload.block_names[s.first - 1],
                "resolution": list(workload.boundary_resolution[s.first] or (1, 1)),
            }
            if s.first in by_boundary:
                c = by_boundary[s.first]
                entry.update(pearson=c.pearson, ssim=c.ssim, mse=c.mse)
            exposed.append(entry)
    return {
        "strategy": cost.placement.strategy,
        "model": workload.model,
        "cluster": costs.cluster.name,
        "chunk": cost.chunk,
        "stages": [
            {
                "device": s.stage.device,
                "replicas": list(s.stage.devices),
                "blocks": [s.stage.first, s.stage.last],
                "compute_s": s.compute_s,
                "memory_bytes": s.memory_bytes,
                "paged": s.paged,
                "trusted": request.trusted(s.stage.device),
                **({"blinded": _blinded(s.stage.helper, s.blinded, workload.blind)} if s.blinded else {}),
            }
            for s in cost.stages
        ],
        "links": [
            {
                "from": h.src[0],
                "to": h.dst[0],
                "cut": h.boundary - 1 if h.boundary > 0 else None,  # None: the input frame
                "bytes": h.bytes,
                "time_s": h.time_s,
                "period_s": h.period_s,
            }
            for h in cost.hops
        ],
        "latency_s": cost.latency_s,
        "period_s": cost.period_s,
        "chunk_time_s": cost.chunk_time_s,
        "bottleneck": cost.bottleneck,
        "privacy": {
            "policy": request.policy,
            "trusted_tail": request.trusted_tail,
            "untrusted_inputs": exposed,
            **({"blinding": workload.blind.describe()} if workload.blind and cost.placement.helpers else {}),
        },
    }


def _blinded(helper: str | None, share: BlindedShare, blind: BlindCosts | None) -> dict[str, Any]:
    """A blinded stage's split of its time, and what it assumes (the outsourced mode's non-collusion)."""
    assert blind is not None  # a stage has a share only when the workload carries blinding costs
    return {
        "helper": helper,
        "mode": blind.mode,
        "integrity": blind.integrity,
        "non_colluding_helper": blind.helper,
        "enclave_s": share.enclave_s,
        "gpu_s": share.gpu_s,
        "round_trips_s": share.link_s,
        "sent_bytes": share.sent_bytes,
        "returned_bytes": share.returned_bytes,
        "pool_bytes_per_frame": share.pool_bytes,
        "precompute_s_per_frame": share.precompute_s,
    }


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def why_infeasible(request: PlanRequest, strategy: str) -> str:
    """One line saying why no placement exists (or why this strategy has none)."""
    costs = request.costs
    cluster = costs.cluster
    m = costs.blocks
    trusted = [i for i, d in enumerate(costs.devices) if d.trusted]
    untrusted = [d for d in costs.devices if not d.trusted]
    first_private = next((c for c in range(1, m) if request.allowed[c]), None)
    if all(math.isinf(costs.compute_s(i, 0, 0)) for i in trusted):
        sizes = ", ".join(f"{costs.devices[i].name} {_mib(costs.devices[i].memory_bytes)}" for i in trusted)
        return (
            f"nothing can hold the first stage: block 0 ({costs.workload.block_names[0]}) needs "
            f"{_mib(costs.stage_memory(0, 0))} and the trusted devices ({sizes}) cannot page"
        )
    if strategy == "tee-gpu":
        if not untrusted:
            return f"tee-gpu needs an untrusted device; cluster {cluster.name} has none"
        if request.trusted_tail:
            return "tee-gpu ends on an untrusted device, which the trusted-tail rule forbids"
        if first_private is None:
            return f"policy {request.policy} lets no cut tensor leave the enclave, so tee-gpu has nowhere to cut"
    if strategy == "single-tee":
        return (
            f"{cluster.source} cannot hold the whole model ({_mib(costs.stage_memory(0, m - 1))} of weights and "
            "activations) and cannot page"
        )
    if first_private is None or not untrusted:
        return (
            f"policy {request.policy} keeps every block on trusted devices, and they cannot hold all {m} blocks "
            "between them without paging"
        )
    after = costs.workload.block_names[first_private - 1]
    return (
        f"no {strategy} placement fits the memory limits under policy {request.policy}: the first tensor an "
        f"untrusted device may receive is at cut {first_private - 1} (after {after}), "
        f"and blocks 0-{first_private - 1} need {_mib(costs.stage_memory(0, first_private - 1))} on trusted devices"
    )
