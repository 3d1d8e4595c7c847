"""Seed 000 Fig. 12 on the paper-like cluster: speedup of every strategy over one enclave, plus planner speed.

Each zoo model is profiled on this host (cached), planned by every strategy for a 10,800-frame
stream under the 20x20 rule, and scored by T(n) of the one cost model; the event simulator
replays each plan as a check. Planner speed is timed on synthetic 100-block chains on the
six-device edge-cloud cluster. All times rest on emulated TEE/GPU speeds (examples/clusters/).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from serdab.bench import new_table  # noqa: E402
from serdab.cluster import Cluster  # noqa: E402
from serdab.graph import open_chain  # noqa: E402
from serdab.plan import Placement, PlanRequest, Workload, get_planner  # noqa: E402
from serdab.plan.model import plan_request  # noqa: E402
from serdab.plan.simulate import simulate  # noqa: E402
from serdab.profile import cached_profile  # noqa: E402
from serdab.testing import synthetic_workload  # noqa: E402

__all__ = [
    "FIG12_MODELS",
    "STRATEGIES",
    "planner_speed",
    "plot",
    "report",
    "run",
    "run_placement_bench",
    "tree_gap",
]

FIG12_MODELS = ["alexnet", "googlenet", "mobilenetv2", "squeezenet1_1", "resnet18"]
# (label in seed 000 Fig. 12, planner, replicate)
STRATEGIES = [
    ("1 TEE", "single-tee", False),
    ("No pipelining", "neurosurgeon", False),
    ("1 TEE & 1 GPU", "tee-gpu", False),
    ("2 TEEs", "two-tees", False),
    ("Serdab proposed", "serdab", False),
    ("optimal", "optimal", False),
    ("optimal+replication", "optimal", True),
]


def _request(workload: Workload, cluster: Cluster, chunk: int, policy: str, replicate: bool) -> PlanRequest:
    return plan_request(workload, cluster, policy=policy, chunk=chunk, replicate=replicate)


def _timed_plan(request: PlanRequest, planner: str) -> tuple[Placement | None, float]:
    started = time.perf_counter()
    placement = get_planner(planner).plan(request)
    return placement, time.perf_counter() - started


def run_placement_bench(
    cluster: Cluster,
    models: list[str],
    chunk: int = 10_800,
    policy: str = "resolution:20",
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for model in models:
        if progress:
            progress(f"profiling {model}")
        chain = open_chain(model)
        profile, _ = cached_profile(chain.chain, chain.name)
        workload = Workload.from_profile(profile)
        baseline = None
        for label, planner, replicate in STRATEGIES:
            if progress:
                progress(f"{model}: {label}")
            request = _request(workload, cluster, chunk, policy, replicate)
            placement, planner_s = _timed_plan(request, planner)
            if placement is None:
                rows.append(
                    {"cluster": cluster.name, "model": model, "strategy": label, "planner": planner, "feasible": False}
                )
                continue
            cost = request.evaluate(placement)
            baseline = cost.chunk_time_s if planner == "single-tee" else baseline
            rows.append(
                {
                    "cluster": cluster.name,
                    "model": model,
                    "strategy": label,
                    "planner": planner,
                    "feasible": True,
                    "placement": placement.describe(),
                    "latency_s": cost.latency_s,
                    "period_s": cost.period_s,
                    "bottleneck": cost.bottleneck,
                    "chunk_time_s": cost.chunk_time_s,
                    "simulated_chunk_time_s": simulate(request.costs, placement, chunk).chunk_time_s,
                    "speedup": baseline / cost.chunk_time_s if baseline else None,
                    "planner_ms": 1000 * planner_s,
                    "blocks": workload.blocks,
                }
            )
    return rows


def planner_speed(
    cluster: Cluster,
    blocks: int = 100,
    repeat: int = 5,
    policies: tuple[str, ...] = ("resolution:20", "resolution:224"),
) -> list[dict[str, Any]]:
    """Median wall time of the optimal planner on synthetic chains (the < 100 ms target)."""
    workload = synthetic_workload(blocks)
    rows = []
    for policy in policies:
        for replicate in (False, True):
            for chunk in (1, 10, 10_800):
                request = _request(workload, cluster, chunk, policy, replicate)
                times = [_timed_plan(request, "optimal")[1] for _ in range(repeat)]
                rows.append(
                    {
                        "blocks": blocks,
                        "devices": len(cluster.devices),
                        "policy": policy,
                        "replicate": replicate,
                        "chunk": chunk,
                        "planner_ms": 1000 * statistics.median(times),
                    }
                )
    return rows


def tree_gap(cluster: Cluster, blocks: int = 40, seeds: int = 10, chunk: int = 10_800) -> list[dict[str, Any]]:
    """How much slower seed 000's placement tree is than the optimum on synthetic chains."""
    rows = []
    for seed in range(seeds):
        request = _request(synthetic_workload(blocks, seed=seed), cluster, chunk, "resolution:20", False)
        tree_placement, optimal_placement = (get_planner(name).plan(request) for name in ("serdab", "optimal"))
        if tree_placement is None or optimal_placement is None:
            continue  # nothing fits this synthetic chain: no gap to measure
        tree, optimal = request.evaluate(tree_placement), request.evaluate(optimal_placement)
        rows.append(
            {
                "cluster": cluster.name,
                "seed": seed,
                "blocks": blocks,
                "serdab": tree.placement.describe(),
                "optimal": optimal.placement.describe(),
                "gap": tree.chunk_time_s / optimal.chunk_time_s - 1,
            }
        )
    return rows


TOLLS_S = (0.0, 1e-4, 1e-3, 1e-2)  # per transfer into or out of a confidential GPU: none, the examples', 10x, 100x


def _with_toll(cluster: Cluster, toll_s: float | None) -> Cluster:
    """The cluster with every confidential GPU's per-transfer toll set; 0: no bounce buffers at all (as
    with confidential computing off), None: without the confidential GPUs."""

    def tolled(device: Any) -> Any:
        if device.kind != "cgpu":
            return device
        update: dict[str, Any] = {"transfer_overhead_s": toll_s}
        if toll_s == 0.0:
            update["transfer_bandwidth_bytes_per_s"] = None
        return device.model_copy(update=update)

    if toll_s is None:
        devices = [d for d in cluster.devices if d.kind != "cgpu"]
    else:
        devices = [tolled(d) for d in cluster.devices]
    return cluster.model_copy(update={"devices": devices})


def confidential_gpu(
    cluster: Cluster, models: list[str], chunk: int = 10_800, policy: str = "resolution:20"
) -> list[dict[str, Any]]:
    """Where the optimal planner puts each model's blocks when a confidential GPU exists, what its
    bounce-buffer toll costs (the toll swept from none to 100x the example's), and what the GPU buys
    (the same cluster without it)."""
    rows: list[dict[str, Any]] = []
    for model in models:
        chain = open_chain(model)
        workload = Workload.from_profile(cached_profile(chain.chain, chain.name)[0])
        for toll in (None, *TOLLS_S):
            variant = _with_toll(cluster, toll)
            request = _request(workload, variant, chunk, policy, False)
            placement = get_planner("optimal").plan(request)
            row: dict[str, Any] = {
                "cluster": cluster.name,
                "model": model,
                "toll_ms": None if toll is None else 1000 * toll,
                "bounce_cap": toll is not None and toll > 0,
                "feasible": placement is not None,
            }
            if placement is not None:
                cost = request.evaluate(placement)
                on_gpu = [s for s in placement.stages if any(variant.device(d).kind == "cgpu" for d in s.devices)]
                row |= {
                    "placement": placement.describe(),
                    "gpu_blocks": sum(s.last - s.first + 1 for s in on_gpu),
                    "latency_s": cost.latency_s,
                    "period_s": cost.period_s,
                    "bottleneck": cost.bottleneck,
                    "chunk_time_s": cost.chunk_time_s,
                }
            rows.append(row)
    return rows


def plot(result: dict[str, Any], path: Path) -> None:
    """One panel per cluster: grouped bars of speedup over 1 TEE, one group per model."""
    rows = result["results"]
    clusters = list(dict.fromkeys(str(r["cluster"]) for r in rows))
    labels = [label for label, _, _ in STRATEGIES]
    width = 0.8 / len(labels)
    fig, axes = plt.subplots(len(clusters), 1, figsize=(12, 4.2 * len(clusters)), squeeze=False)
    for ax, cluster in zip(axes[:, 0], clusters, strict=True):
        mine = [r for r in rows if r["cluster"] == cluster]
        models = list(dict.fromkeys(str(r["model"]) for r in mine))
        for j, label in enumerate(labels):
            values = []
            for model in models:
                match = [r for r in mine if r["model"] == model and r["strategy"] == label and r.get("speedup")]
                values.append(float(match[0]["speedup"]) if match else 0.0)
            offsets = [i + (j - len(labels) / 2 + 0.5) * width for i in range(len(models))]
            ax.bar(offsets, values, width, label=label)
        ax.set_xticks(range(len(models)), models)
        ax.set_yscale("log")
        ax.set_ylabel("speedup over 1 TEE")
        ax.set_title(f"Seed 000 Fig. 12, {cluster} cluster, 10,800 frames (predicted; emulated TEE/GPU speeds)")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.legend(ncol=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(
    progress: Callable[[str], None],
    *,
    cluster: list[str] | None = None,
    speed_cluster: str = "edge-cloud",
    chunk: int = 10_800,
    policy: str = "resolution:20",
    quick: bool = False,
) -> dict[str, Any]:
    """Fig. 12 on each cluster (examples/clusters/: paper, edge-cloud and the confidential cvm-h100 and
    edge-cvm-cgpu by default), the optimal planner's speed at 100 blocks, seed 000's tree against the
    optimum on synthetic chains, and on clusters with a confidential GPU its toll swept."""
    from serdab.cluster import load_cluster

    specs = [load_cluster(p) for p in cluster or ["paper", "edge-cloud", "cvm-h100", "edge-cvm-cgpu"]]
    models = ["resnet18"] if quick else FIG12_MODELS
    rows = []
    for spec in specs:
        rows += run_placement_bench(spec, models, chunk, policy, progress=progress)
    confidential = []
    for spec in specs:
        if any(d.kind == "cgpu" for d in spec.devices):
            progress(f"{spec.name}: the confidential GPU's toll, swept")
            confidential += confidential_gpu(spec, models, chunk, policy)
    progress("timing the optimal planner at 100 blocks")
    speed = planner_speed(load_cluster(speed_cluster))
    progress("seed 000's tree vs optimal on synthetic chains")
    gaps = [row for spec in specs for row in tree_gap(spec)]
    return {
        "clusters": [s.name for s in specs],
        "chunk": chunk,
        "policy": policy,
        "results": rows,
        "planner_speed": speed,
        "tree_gap": gaps,
        "confidential_gpu": confidential,
    }


def report(result: dict[str, Any]) -> list[Any]:
    chunk, policy, gaps = result["chunk"], result["policy"], result["tree_gap"]
    table = new_table(
        f"speedup over 1 TEE, {chunk} frames, policy {policy} (predicted from emulated speeds)",
        ("cluster", "model", "strategy", "placement", "T(n) s", "simulated s", "speedup", "planner ms"),
        left=("cluster", "model", "strategy", "placement"),
    )
    for r in result["results"]:
        if not r["feasible"]:
            table.add_row(r["cluster"], r["model"], r["strategy"], "infeasible", "-", "-", "-", "-")
            continue
        table.add_row(
            r["cluster"],
            r["model"],
            r["strategy"],
            r["placement"],
            f"{r['chunk_time_s']:.1f}",
            f"{r['simulated_chunk_time_s']:.1f}",
            f"{r['speedup']:.2f}x",
            f"{r['planner_ms']:.1f}",
        )
    speed_table = new_table(
        "optimal planner, synthetic 100-block chain, 6 devices (median of 5)",
        ("policy", "replicate", "chunk", "planner ms"),
    )
    for r in result["planner_speed"]:
        speed_table.add_row(r["policy"], str(r["replicate"]), str(r["chunk"]), f"{r['planner_ms']:.1f}")
    lines: list[Any] = [table, speed_table]
    if result.get("confidential_gpu"):
        toll_table = new_table(
            "with a confidential GPU: optimal placement as its per-transfer toll grows (and without the GPU)",
            ("cluster", "model", "toll", "placement", "blocks on cGPU", "L ms", "P ms", "T(n) s", "bottleneck"),
            left=("cluster", "model", "toll", "placement", "bottleneck"),
        )
        for r in result["confidential_gpu"]:
            toll = "no cGPU" if r["toll_ms"] is None else ("none" if not r["bounce_cap"] else f"{r['toll_ms']:g} ms")
            if not r["feasible"]:
                toll_table.add_row(r["cluster"], r["model"], toll, "infeasible", "-", "-", "-", "-", "-")
                continue
            toll_table.add_row(
                r["cluster"],
                r["model"],
                toll,
                r["placement"],
                str(r["gpu_blocks"]),
                f"{1000 * r['latency_s']:.1f}",
                f"{1000 * r['period_s']:.1f}",
                f"{r['chunk_time_s']:.1f}",
                str(r["bottleneck"]),
            )
        lines.append(toll_table)
    for name in result["clusters"]:
        mine = sorted(float(g["gap"]) for g in gaps if g["cluster"] == name)
        worst = max((g for g in gaps if g["cluster"] == name), key=lambda g: g["gap"])
        lines.append(
            f"seed 000's tree vs optimal on {len(mine)} synthetic 40-block chains, {name}: median gap "
            f"{100 * mine[len(mine) // 2]:.1f}%, worst {100 * mine[-1]:.1f}% ({worst['serdab']} vs {worst['optimal']})"
        )
    return lines
