"""`serdab plan MODEL --cluster FILE`: where each block runs, and the predicted L, P and T(n)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from serdab.cli.common import (
    AuditOpt,
    BlindHelperOpt,
    BlindOpt,
    InputShapeOpt,
    IntegrityOpt,
    JsonOpt,
    PrivacyOpt,
    ReplicateOpt,
    TrustedTailOpt,
    blind_costs,
    check_blind,
    console,
    human_bytes,
    open_model,
    progress_bar,
    read_audit,
    write_json,
)
from serdab.cluster import load_cluster
from serdab.errors import ConfigError, PlanError, PolicyError
from serdab.plan import PLANNERS, PlanRequest, get_planner
from serdab.plan.model import plan_model
from serdab.plan.placement import PlanCost
from serdab.plan.report import plan_document
from serdab.plan.simulate import simulate
from serdab.privacy import LeakageReport, default_images, measure_leakage
from serdab.privacy.policy import parse_policy
from serdab.profile import Profile, cached_profile
from serdab.validation import load_json_model

__all__ = ["plan", "plan_table"]

SIMULATE_MAX = 20_000  # frames; the event simulation costs ~10 us per frame and stage


def plan_table(cost: PlanCost, request: PlanRequest) -> Table:
    table = Table(
        title=f"{cost.placement.strategy} placement of {request.costs.workload.model} on {request.costs.cluster.name} "
        f"(policy {request.policy})"
    )
    for column in ("stage", "device", "trusted", "blocks", "memory", "compute ms", "in from", "in bytes", "link ms"):
        table.add_column(column, justify="left" if column in ("device", "blocks", "in from") else "right")
    hops = {h.boundary: h for h in cost.hops}
    for i, s in enumerate(cost.stages):
        stage = s.stage
        hop = hops.get(stage.first)
        devices = "+".join(stage.devices) + (f" (x{stage.replicas} round robin)" if stage.replicas > 1 else "")
        if stage.helper:
            devices += f", blinded on {stage.helper}"
        table.add_row(
            str(i),
            devices,
            "yes" if request.trusted(stage.device) else "no",
            f"{stage.first}-{stage.last}",
            human_bytes(s.memory_bytes) + (" paged" if s.paged else ""),
            f"{1000 * s.compute_s:.2f}",
            "+".join(hop.src) if hop else "-",
            human_bytes(hop.bytes) if hop else "-",
            f"{1000 * hop.time_s:.2f}" if hop else "-",
        )
    return table


def _leakage_file(path: Path) -> LeakageReport:
    return load_json_model(LeakageReport, path, "leakage", "a `serdab leakage --json` report", PolicyError)


def plan(
    cluster: Annotated[
        str,
        typer.Option(
            help="Cluster YAML (devices, links, source), or a shipped example: paper, single-tee, edge-cloud.",
            show_default=False,
        ),
    ],
    model: Annotated[
        str | None, typer.Argument(help="Zoo model or .onnx path (omit when --profile is given).", show_default=False)
    ] = None,
    chunk: Annotated[int, typer.Option(min=1, help="Frames in the chunk T(n) is minimised for.")] = 10_800,
    strategy: Annotated[str, typer.Option(help=f"Planner: {', '.join(PLANNERS)}.")] = "optimal",
    privacy: PrivacyOpt = "resolution:20",
    replicate: ReplicateOpt = False,
    trusted_tail: TrustedTailOpt = False,
    profile: Annotated[
        Path | None, typer.Option(help="Plan from a saved `serdab profile --json` file instead of profiling MODEL.")
    ] = None,
    leakage: Annotated[
        Path | None,
        typer.Option(help="A `serdab leakage --json` report, for pearson/ssim/mse policies with --profile."),
    ] = None,
    audit: AuditOpt = None,
    input_shape: InputShapeOpt = None,
    blind: BlindOpt = None,
    integrity: IntegrityOpt = True,
    blind_helper: BlindHelperOpt = None,
    json_path: JsonOpt = None,
) -> None:
    """Place MODEL's blocks on the cluster's enclaves and accelerators: private, and fastest for a chunk of frames.

    Prints each stage's device, blocks, memory, compute and incoming link, then the predicted frame
    latency L, period P and chunk time T(n) = L + (n-1) P (seed 000 eq. 1-2; docs/plan.md), and an
    event simulation of the same chunk as a check.
    """
    policy = parse_policy(privacy)
    get_planner(strategy)  # an unknown name fails before any profiling
    spec = load_cluster(cluster)
    check_blind(blind, blind_helper, spec.names)
    if replicate and strategy not in ("optimal", "brute-force"):
        raise PlanError(f"--replicate applies to the optimal and brute-force strategies, not {strategy}")
    report = _leakage_file(leakage) if leakage is not None else None
    wants_leakage = policy.needs_leakage and report is None
    if blind is not None and model is None:
        raise ConfigError("--blind measures what blinding each block costs: give the MODEL (with --profile too)")
    needs_model = profile is None or wants_leakage or blind is not None
    opened = open_model(model, input_shape) if model is not None and needs_model else None
    if profile is not None:
        prof = Profile.load(profile)
    elif opened is not None:
        with progress_bar(f"profiling {opened.name}", len(opened.chain.blocks) + 1) as update:
            prof, _ = cached_profile(opened.chain, opened.name, progress=update)
    else:
        raise ConfigError("give a MODEL to profile or --profile PROFILE.json")
    if wants_leakage and opened is not None:
        images = default_images(grey_digits=opened.chain.input_shape[1] == 1)
        with progress_bar(f"leakage of {opened.name}", len(images)) as update:
            report = measure_leakage(opened.chain, opened.name, images, progress=update)
    audited = read_audit(audit, policy, opened.chain if opened else None, model or prof.model)
    blinding = blind_costs(opened.chain, prof, blind, integrity, blind_helper) if opened else None
    planned = plan_model(
        prof,
        spec,
        strategy=strategy,
        policy=policy,
        chunk=chunk,
        trusted_tail=trusted_tail,
        replicate=replicate,
        leakage=report,
        audit=audited,
        blind=blinding,
    )
    request, placement, cost, planner_s = planned.request, planned.placement, planned.cost, planned.planner_s
    costs = request.costs
    console.print(plan_table(cost, request))
    document = plan_document(request, cost, report)
    document["planner_s"] = planner_s
    console.print(
        f"frame latency L = {1000 * cost.latency_s:.1f} ms, period P = {1000 * cost.period_s:.1f} ms "
        f"(bottleneck: {cost.bottleneck}), T({chunk}) = L + (n-1) P = {cost.chunk_time_s:.3f} s"
    )
    if chunk <= SIMULATE_MAX:
        sim = simulate(costs, placement, chunk)
        document["simulated_chunk_time_s"] = sim.chunk_time_s
        gap = sim.chunk_time_s / cost.chunk_time_s - 1
        console.print(
            f"event simulation of {chunk} frames: T = {sim.chunk_time_s:.3f} s ({100 * gap:+.2f}% vs formula)"
        )
    for stage in cost.stages:
        if stage.blinded is not None:
            b = stage.blinded
            console.print(
                f"{stage.stage.device} blinds blocks {stage.stage.first}-{stage.stage.last} on {stage.stage.helper}: "
                f"enclave {1000 * b.enclave_s:.1f} ms, GPU {1000 * b.gpu_s:.1f} ms, "
                f"round trips {1000 * b.link_s:.1f} ms "
                f"({human_bytes(b.sent_bytes)} out, {human_bytes(b.returned_bytes)} back per frame)"
                + (f"; sealed pool {human_bytes(b.pool_bytes)} per frame" if b.pool_bytes else "")
            )
    if blinding is not None and placement.helpers:
        console.print(f"{blinding.describe()}; the GPU sees masked values only, and the layers' weights")
    exposed = document["privacy"]["untrusted_inputs"]
    if exposed:
        for e in exposed:
            res = "x".join(map(str, e["resolution"]))
            leak = f"; Pearson {e['pearson']:.2f}, SSIM {e['ssim']:.2f}, MSE {e['mse']:.4f}" if "pearson" in e else ""
            where = f"at cut {e['cut']} (after block {e['cut']}: {e['after_block']}, {res}{leak})"
            console.print(f"untrusted {e['device']} receives the tensor {where}")
    else:
        console.print("every block runs on trusted devices")
    console.print(
        f"[dim]planned by {strategy} in {1000 * planner_s:.1f} ms; times are predictions from the profile "
        f"and the cluster's emulated speeds[/dim]"
    )
    write_json(json_path, document)
