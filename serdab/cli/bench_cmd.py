"""`serdab bench ...`: benchmarks that write JSON + PNG and print the table quoted in docs/benchmarks.md."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from serdab.bench.placement_bench import (
    FIG12_MODELS,
    planner_speed,
    plot_placement_bench,
    run_placement_bench,
    tree_gap,
)
from serdab.bench.profile_bench import plot_profile_bench, run_profile_bench
from serdab.cli.common import console, err_console
from serdab.cluster import load_cluster
from serdab.models import ZOO

__all__ = ["bench_app"]


def _write(result: dict, json_path: Path, plot: Callable[[dict, Path], None]) -> Path:
    """The JSON result and its PNG beside it; returns the PNG's path."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    png = json_path.with_suffix(".png")
    plot(result, png)
    return png


bench_app = typer.Typer(
    help="Benchmarks: each writes JSON and a PNG under bench/results/.", no_args_is_help=True, add_completion=False
)


@bench_app.command("profile")
def bench_profile(
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the JSON result.")] = Path(
        "bench/results/profile.json"
    ),
    repeat: Annotated[int, typer.Option(min=1, help="Timed runs per block.")] = 30,
    threads: Annotated[int, typer.Option(min=1, help="ONNX Runtime intra-op threads.")] = 1,
    quick: Annotated[bool, typer.Option("--quick", help="Small models only (seconds, not minutes).")] = False,
) -> None:
    """Profiling cost of each zoo model and the sum-of-blocks vs whole-model error."""
    models = ["lenet5", "cifar_cnn", "he_cnn6", "he_cnn5", "resnet18"] if quick else list(ZOO)
    with err_console.status("profiling") as status:
        result = run_profile_bench(models, repeat, threads, progress=lambda m: status.update(f"profiling {m}"))
    png = _write(result, json_path, plot_profile_bench)
    table = Table(title=f"profiling cost (ONNX Runtime, {threads} thread(s), median of {repeat})")
    for column in ("model", "blocks", "load s", "profiling s", "whole ms", "sum of blocks ms", "error"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in result["rows"]:
        table.add_row(
            r["model"],
            str(r["blocks"]),
            f"{r['load_s']:.1f}",
            f"{r['profiling_s']:.1f}",
            f"{r['whole_ms']:.2f}",
            f"{r['sum_blocks_ms']:.2f}",
            f"{100 * r['sum_error']:+.1f}%",
        )
    console.print(table)
    err_console.print(f"wrote {json_path} and {png}")


@bench_app.command("placement")
def bench_placement(
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the JSON result.")] = Path(
        "bench/results/placement.json"
    ),
    cluster: Annotated[
        list[str] | None,
        typer.Option(help="Cluster file(s) or shipped names to run Fig. 12 on (repeatable).", show_default=False),
    ] = None,
    speed_cluster: Annotated[str, typer.Option(help="Six-device cluster for the planner-speed target.")] = "edge-cloud",
    chunk: Annotated[int, typer.Option(min=1, help="Frames in the stream (seed 000: 10,800).")] = 10_800,
    policy: Annotated[str, typer.Option(help="Privacy policy (seed 000: resolution:20).")] = "resolution:20",
    quick: Annotated[bool, typer.Option("--quick", help="ResNet18 only.")] = False,
) -> None:
    """Seed 000 Fig. 12: every strategy's speedup over one enclave, and the optimal planner's speed.

    Runs on examples/clusters/paper.yaml and edge-cloud.yaml unless --cluster is given.
    """
    paths = cluster or ["paper", "edge-cloud"]
    specs = [load_cluster(p) for p in paths]
    models = ["resnet18"] if quick else FIG12_MODELS
    rows = []
    with err_console.status("planning") as status:
        for spec in specs:
            rows += run_placement_bench(spec, models, chunk, policy, progress=status.update)
        status.update("timing the optimal planner at 100 blocks")
        speed = planner_speed(load_cluster(speed_cluster))
        status.update("seed 000's tree vs optimal on synthetic chains")
        gaps = [row for spec in specs for row in tree_gap(spec)]
    result = {
        "clusters": [s.name for s in specs],
        "chunk": chunk,
        "policy": policy,
        "results": rows,
        "planner_speed": speed,
        "tree_gap": gaps,
    }
    png = _write(result, json_path, lambda _, path: plot_placement_bench(rows, path))
    table = Table(title=f"speedup over 1 TEE, {chunk} frames, policy {policy} (predicted from emulated speeds)")
    for column in ("cluster", "model", "strategy", "placement", "T(n) s", "simulated s", "speedup", "planner ms"):
        table.add_column(column, justify="left" if column in ("cluster", "model", "strategy", "placement") else "right")
    for r in rows:
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
    console.print(table)
    speed_table = Table(title="optimal planner, synthetic 100-block chain, 6 devices (median of 5)")
    for column in ("policy", "replicate", "chunk", "planner ms"):
        speed_table.add_column(column, justify="right")
    for r in speed:
        speed_table.add_row(r["policy"], str(r["replicate"]), str(r["chunk"]), f"{r['planner_ms']:.1f}")
    console.print(speed_table)
    for spec in specs:
        mine = sorted(float(g["gap"]) for g in gaps if g["cluster"] == spec.name)
        worst = max((g for g in gaps if g["cluster"] == spec.name), key=lambda g: g["gap"])
        console.print(
            f"seed 000's tree vs optimal on {len(mine)} synthetic 40-block chains, {spec.name}: median gap "
            f"{100 * mine[len(mine) // 2]:.1f}%, worst {100 * mine[-1]:.1f}% ({worst['serdab']} vs {worst['optimal']})"
        )
    err_console.print(f"wrote {json_path} and {png}")


@bench_app.command("rlpdnn")
def bench_rlpdnn(
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the JSON result.")] = Path(
        "bench/results/rlpdnn.json"
    ),
    quick: Annotated[
        bool, typer.Option("--quick", help="Fewer workloads, steps and requests (about 3 minutes).")
    ] = False,
) -> None:
    """Seed 003 (RL-PDNN): DQN (paper and masked), static, greedy and search placement vs the exact optimum."""
    from serdab.bench.rlpdnn_bench import plot_rlpdnn, run_rlpdnn_bench  # imports SB3 and torch: only when asked

    with err_console.status("RL-PDNN benchmark") as status:
        result = run_rlpdnn_bench(quick, progress=status.update)
    png = _write(result, json_path, plot_rlpdnn)
    table = Table(
        title=f"RL-PDNN (simulated IoT system), {result['requests']} requests per row, "
        f"DQN trained {result['train_steps']} steps"
    )
    for column in (
        "workload",
        "privacy",
        "policy",
        "accuracy",
        "when feasible",
        "latency s",
        "shared MB",
        "decision ms",
        "gap to optimal",
    ):
        table.add_column(column, justify="left" if column in ("workload", "privacy", "policy") else "right")
    for r in result["rows"]:
        gap = r["gap_to_optimal"]
        table.add_row(
            r["workload"],
            r["privacy"],
            r["policy"],
            f"{r['accuracy']:.3f}",
            f"{r['accuracy_feasible']:.3f}",
            f"{r['mean_latency_s']:.4f}",
            f"{r['shared_mb']:.3f}",
            f"{r['decision_ms']:.3f}",
            "-" if gap is None else f"{100 * gap:+.1f}%",
        )
    console.print(table)
    err_console.print(f"wrote {json_path} and {png} in {result['wall_s']:.0f} s")


@bench_app.command("he")
def bench_he(
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the JSON result.")] = Path(
        "bench/results/he.json"
    ),
    quick: Annotated[
        bool, typer.Option("--quick", help="40 + 10 images, one baseline image (about 3 minutes).")
    ] = False,
) -> None:
    """Seed 004 (HE-DL): packed CKKS recall, transfer and batch modes vs one BFV ciphertext per pixel."""
    from serdab.bench.he_bench import plot_he_bench, run_he_bench  # imports SEAL and torch: only when asked

    with err_console.status("HE benchmark") as status:
        result = run_he_bench(quick, progress=status.update)
    png = _write(result, json_path, plot_he_bench)
    table = Table(title=f"HE inference per image at {result['link_bits_per_s'] / 1e6:.1f} Mb/s (seed 004's link)")
    for column in (
        "net",
        "mode",
        "N",
        "images",
        "client s",
        "upload KiB",
        "server s",
        "e2e s",
        "keys MiB",
        "acc plain",
        "acc approx",
        "acc encrypted",
    ):
        table.add_column(column, justify="left" if column in ("net", "mode") else "right")
    for r in result["rows"]:
        table.add_row(
            r["net"],
            r["mode"],
            str(r["params"]["poly_modulus_degree"]),
            str(r["images"]),
            f"{r['client_s']:.4f}",
            f"{r['upload_bytes'] / 1024:.0f}",
            f"{r['server_s']:.4f}",
            f"{r['e2e_s']:.4f}",
            f"{r['key_bytes'] / 2**20:.0f}",
            f"{r['acc_plain']:.3f}",
            f"{r['acc_approx']:.3f}",
            f"{r['acc_encrypted']:.3f}",
        )
    b = result["baseline"]
    table.add_row(
        b["net"],
        "baseline BFV/pixel",
        str(b["params"]["poly_modulus_degree"]),
        str(b["images"]),
        f"{b['client_s']:.2f}",
        f"{b['upload_bytes'] / 1024:.0f}",
        f"{b['server_s']:.2f}",
        f"{b['e2e_s']:.2f}",
        "-",
        "-",
        "-",
        f"{b['acc_encrypted']:.3f}",
    )
    console.print(table)
    console.print(
        f"packed he_cnn5 vs baseline: {result['speedup_e2e']:.0f}x end to end, "
        f"{result['speedup_server']:.0f}x server time"
    )
    err_console.print(f"wrote {json_path} and {png} in {result['wall_s']:.0f} s")


@bench_app.command("pipeline")
def bench_pipeline(
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the JSON result.")] = Path(
        "bench/results/pipeline.json"
    ),
    quick: Annotated[bool, typer.Option("--quick", help="ResNet-18 only, 12 frames (about 3 minutes).")] = False,
    frames: Annotated[int | None, typer.Option(min=2, help="Frames per run (default 24; 12 with --quick).")] = None,
    cluster: Annotated[str, typer.Option(help="Cluster file or shipped example.")] = "paper",
) -> None:
    """Seed 000 Fig. 12 measured: each strategy's placement run by the pipeline runtime, beside its prediction."""
    from serdab.bench.pipeline_bench import hop_overhead, plot_pipeline_bench, run_pipeline_bench, worker_overhead

    spec = load_cluster(cluster)
    models = ["resnet18"] if quick else FIG12_MODELS
    count = frames or (12 if quick else 24)
    with err_console.status("running placements") as status:
        rows = run_pipeline_bench(spec, models, count, progress=lambda m: status.update(m))
        status.update("per-hop overhead")
        sizes = [4_096, 65_536, 204_800, 602_112, 3_211_264]
        hops = hop_overhead(sizes) + hop_overhead(sizes, processes=False)
        status.update("worker overhead")
        worker = worker_overhead(spec)
    result = {
        "cluster": spec.name,
        "frames": count,
        "quick": quick,
        "rows": rows,
        "hops": hops,
        "worker": worker,
        "emulated": "device speeds and links from the cluster file, time-dilated per row",
    }
    png = _write(result, json_path, plot_pipeline_bench)
    table = Table(title=f"measured pipeline on {spec.name}, {count} frames per run (emulated speeds)")
    for column in (
        "model",
        "strategy",
        "placement",
        "T meas s",
        "T pred s",
        "gap",
        "P meas ms",
        "P pred ms",
        "gap",
        "L gap",
        "1st frame gap",
        "speedup T",
        "speedup P",
        "pred T(10800)",
    ):
        table.add_column(column, justify="left" if column in ("model", "strategy", "placement") else "right")
    for r in rows:
        if not r.get("feasible"):
            table.add_row(r["model"], r["strategy"], "infeasible", *[""] * 11)
            continue
        table.add_row(
            r["model"],
            r["strategy"],
            r["placement"],
            f"{r['measured_chunk_s']:.3f}",
            f"{r['predicted_chunk_s']:.3f}",
            f"{100 * (r['measured_chunk_s'] / r['predicted_chunk_s'] - 1):+.1f}%",
            f"{1000 * r['measured_period_s']:.1f}",
            f"{1000 * r['predicted_period_s']:.1f}",
            f"{100 * (r['measured_period_s'] / r['predicted_period_s'] - 1):+.1f}%",
            f"{100 * (r['measured_latency_s'] / r['predicted_latency_s'] - 1):+.1f}%",
            f"{100 * (r['first_frame_latency_s'] / r['predicted_latency_s'] - 1):+.1f}%",
            f"{r.get('speedup_measured_chunk', 0):.2f}x",
            f"{r.get('speedup_measured_period', 0):.2f}x",
            f"{r.get('speedup_predicted_10800', 0):.2f}x",
        )
    console.print(table)
    for h in hops:
        where = "between two processes" if h["processes"] else "between two threads"
        console.print(
            f"one encrypted hop, {h['bytes'] / 1024:.0f} KiB on loopback {where}: median "
            f"{h['median_ms']:.3f} ms, p95 {h['p95_ms']:.3f} ms"
        )
    console.print(
        f"worker vs ONNX Runtime directly ({worker['model']}, native): {worker['pipeline_period_ms']:.2f} ms "
        f"per frame vs {worker['direct_ms']:.2f} ms ({worker['overhead_per_frame_ms']:+.2f} ms)"
    )
    err_console.print(f"wrote {json_path} and {png}")


@bench_app.command("startup")
def bench_startup(
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the JSON result.")] = Path(
        "bench/results/startup.json"
    ),
    repeat: Annotated[int, typer.Option(min=1, help="Runs per command (median).")] = 7,
) -> None:
    """CLI start-up time and the heavy packages each entry point imports."""
    from serdab.bench.startup_bench import plot_startup_bench, run_startup_bench

    with err_console.status("timing fresh interpreters"):
        result = run_startup_bench(repeat)
    png = _write(result, json_path, plot_startup_bench)
    table = Table(title=f"start-up, median of {repeat} fresh interpreters")
    for column in ("command", "wall s", "CPU s"):
        table.add_column(column, justify="left" if column == "command" else "right")
    for r in result["rows"]:
        table.add_row(r["command"], f"{r['wall_s']:.3f}", f"{r['cpu_s']:.3f}")
    console.print(table)
    for label, heavy in result["heavy_imports"].items():
        loaded = ", ".join(heavy) if heavy else "none of torch, onnxruntime, onnx, scikit-image, scikit-learn"
        console.print(f"{label}: loads {loaded}")
    err_console.print(f"wrote {json_path} and {png}")


@bench_app.command("audit")
def bench_audit(
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the JSON result.")] = Path(
        "bench/results/audit.json"
    ),
    quick: Annotated[
        bool, typer.Option("--quick", help="LeNet-5 twins and ResNet-18 only (about 5 minutes on 2 cores).")
    ] = False,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="SSIM threshold of the attack policy.")] = 0.3,
    cluster: Annotated[str, typer.Option(help="Cluster file or shipped example the plans are scored on.")] = "paper",
) -> None:
    """Privacy audit of the zoo: white-box SSIM per resolution, trained vs seeded LeNet-5, and the
    speedup an attack-ssim policy costs against resolution:20. Audits are cached like `serdab audit`."""
    from serdab.bench.audit_bench import IMAGENET_MODELS, plot_audit_bench, run_audit_bench  # torch: only when asked

    models = ["resnet18"] if quick else IMAGENET_MODELS
    with err_console.status("privacy audit") as status:
        result = run_audit_bench(load_cluster(cluster), models, threshold=threshold, progress=status.update)
    result["quick"] = quick
    png = _write(result, json_path, plot_audit_bench)
    table = Table(title="reconstruction from each cut (SSIM on grey, victims at the model's input size)")
    for column in ("model", "cut", "resolution", "attack", "SSIM mean", "SSIM worst", "chance", "PSNR worst", "s"):
        table.add_column(column, justify="left" if column in ("model", "attack") else "right")
    for r in result["audits"]:
        side = "x".join(map(str, r["resolution"])) if r["resolution"] else "1x1"
        chance = "-" if r["chance_ssim"] is None else f"{r['chance_ssim']:.3f}"
        table.add_row(
            r["model"],
            f"{r['cut']} {r['block']}",
            side,
            r["attack"],
            f"{r['ssim_mean']:.3f}",
            f"{r['ssim_worst']:.3f}",
            chance,
            f"{r['psnr_worst']:.1f}",
            f"{r['seconds']:.0f}",
        )
    console.print(table)
    plans = Table(title=f"optimal plan on {result['cluster']} under each policy (emulated speeds, T(10800))")
    for column in ("model", "policy", "placement", "first untrusted cut", "speedup over 1 TEE"):
        plans.add_column(column, justify="left" if column in ("model", "policy", "placement") else "right")
    for p in result["plans"]:
        if not p["feasible"]:
            plans.add_row(p["model"], p["policy"], "infeasible", "-", "-")
            continue
        first = p["first_untrusted_cut"]
        plans.add_row(
            p["model"], p["policy"], p["placement"], "-" if first is None else str(first), f"{p['speedup']:.2f}x"
        )
    console.print(plans)
    err_console.print(f"wrote {json_path} and {png} in {result['total_s']:.0f} s")


@bench_app.command("serving")
def bench_serving(
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the JSON result.")] = Path(
        "bench/results/serving.json"
    ),
    quick: Annotated[bool, typer.Option("--quick", help="Fewer points and shorter runs (about 8 minutes).")] = False,
    parts: Annotated[
        str | None,
        typer.Option(help="Run only these parts (overhead,seed001,fig6,table1,fig7), keeping the others from --json."),
    ] = None,
) -> None:
    """Seeds 001 and 002 measured: start time, channel, latency vs concurrency, mixed privacy, memory, TLS cost,
    P99 under EPC interference per balancing policy, replica scaling, gateway overhead (20 minutes; --quick 8)."""
    from serdab.bench.serving_bench import PARTS, plot_serving_bench, run_serving_bench
    from serdab.errors import ServeConfigError

    chosen = [p.strip() for p in parts.split(",")] if parts else list(PARTS)
    unknown = sorted(set(chosen) - set(PARTS))
    if unknown:
        raise ServeConfigError(f"unknown part {unknown[0]!r}; parts: {', '.join(PARTS)}")
    previous = None
    if parts:
        try:
            previous = json.loads(json_path.read_text())
        except (OSError, ValueError):
            raise ServeConfigError(f"--parts keeps the other parts from {json_path}, which cannot be read") from None
        if previous.get("quick") != quick:
            raise ServeConfigError(f"{json_path} holds a {'quick' if previous.get('quick') else 'full'} run")
    with err_console.status("serving benchmark") as status:
        result = run_serving_bench(quick, progress=status.update, parts=chosen, previous=previous)
    png = _write(result, json_path, plot_serving_bench)
    s1 = result["seed001"]
    console.print(
        f"gateway overhead at p50: {result['overhead']['overhead_p50_ms']:.3f} ms "
        f"({result['overhead']['direct_p50_ms']:.2f} ms direct, {result['overhead']['gateway_p50_ms']:.2f} "
        "ms through the gateway)"
    )
    start, channel = s1["start_s"], s1["channel"]
    console.print(
        f"start time: enclave replica {start['enclave']:.2f} s, public {start['public']:.2f} s; channel: "
        f"enclave TLS {channel['enclave_tls_mb_s']:.0f} MB/s, public plain "
        f"{channel['public_plain_mb_s']:.0f} MB/s"
    )
    seq = s1["sequential"]
    console.print(
        f"{s1['model']} one at a time: secure p50 {seq['secure_p50_ms']:.1f} ms, public "
        f"{seq['public_p50_ms']:.1f} ms ({100 * seq['secure_over_public']:+.1f}%)"
    )
    table = Table(title=f"seed 001 Fig. 3: {s1['model']}, threads x 2 requests, batch 2")
    for column in ("kind", "threads", "min ms", "mean ms", "max ms"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    for r in s1["fig3"]:
        table.add_row(r["kind"], str(r["threads"]), f"{r['min_ms']:.1f}", f"{r['mean_ms']:.1f}", f"{r['max_ms']:.1f}")
    console.print(table)
    table = Table(title="seed 001 Fig. 5: mixed privacy, 8 threads")
    for column in ("% secure", "secure mean ms", "secure max ms", "public mean ms", "public max ms", "req/s"):
        table.add_column(column, justify="right")
    for r in s1["fig5"]:
        sec, pub = r["secure"] or {}, r["public"] or {}
        table.add_row(
            f"{100 * r['secure_fraction']:.0f}",
            *(
                f"{d[k]:.1f}" if k in d else "-"
                for d, k in ((sec, "mean_ms"), (sec, "max_ms"), (pub, "mean_ms"), (pub, "max_ms"))
            ),
            f"{r['throughput_per_s']:.1f}",
        )
    console.print(table)
    table = Table(title="seed 001 Table 1: memory (MiB)")
    for column in ("process", "peak at start", "mean under light load"):
        table.add_column(column, justify="left" if column == "process" else "right")
    for kind, value in s1["memory_light_load_mib"].items():
        table.add_row(kind, f"{s1['memory_startup_peak_mib'].get(kind, float('nan')):.0f}", f"{value:.0f}")
    console.print(table)
    table = Table(title="seed 002 Fig. 6: one request, set-up connection, straight to the replica")
    for column in ("model", "where", "TLS", "inference ms", "communication ms", "e2e ms", "connect ms"):
        table.add_column(column, justify="left" if column in ("model", "where", "TLS") else "right")
    for r in result["fig6"]:
        table.add_row(
            r["model"],
            r["where"],
            "yes" if r["tls"] else "no",
            f"{r['inference_ms']:.2f}",
            f"{r['communication_ms']:.2f}",
            f"{r['e2e_ms']:.2f}",
            f"{r['first_request_connect_ms']:.2f}",
        )
    console.print(table)
    t1 = result["table1"]
    table = Table(
        title=f"seed 002 Table 1: {t1['model']}, 3 enclave replicas, {t1['rate_per_s']:g}/s Poisson for "
        f"{t1['duration_s']:.0f} s, interference on h1 in {len(t1['windows_s'])} windows "
        "(emulated EPC)"
    )
    for column in ("policy", "interference", "p50 ms", "p99 ms", "max ms", "errors"):
        table.add_column(column, justify="left" if column in ("policy", "interference") else "right")
    for r in t1["rows"]:
        table.add_row(
            r["policy"],
            r["degree"],
            f"{r.get('p50_ms', float('nan')):.1f}",
            f"{r.get('p99_ms', float('nan')):.1f}",
            f"{r.get('max_ms', float('nan')):.1f}",
            str(r["errors"]),
        )
    console.print(table)
    table = Table(title="seed 002 Fig. 7: enclave replicas (closed loop, 6 threads; 2 cores)")
    for column in ("replicas", "enclave speed", "req/s", "p50 ms", "p99 ms"):
        table.add_column(column, justify="right")
    for r in result["fig7"]:
        table.add_row(
            str(r["replicas"]),
            f"{r['enclave_speed']:g}",
            f"{r['throughput_per_s']:.1f}",
            f"{r.get('p50_ms', float('nan')):.1f}",
            f"{r.get('p99_ms', float('nan')):.1f}",
        )
    console.print(table)
    err_console.print(f"wrote {json_path} and {png} in {result['wall_s']:.0f} s")


@bench_app.command("scale")
def bench_scale(
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the JSON result.")] = Path(
        "bench/results/scale.json"
    ),
    frames: Annotated[int, typer.Option(min=4, help="Frames per pipeline run.")] = 48,
    pipeline_only: Annotated[bool, typer.Option("--pipeline-only", help="Skip the serving part.")] = False,
) -> None:
    """The pipeline on the local executor vs Ray on 1, 2, 3 nodes of this machine, and Ray Serve vs the
    gateway (per-request overhead; 1..3 enclave replicas). Needs the ray extra."""
    from serdab.errors import PlanError

    try:
        from serdab.bench.scale_bench import plot_scale_bench, run_pipeline_scale, run_serving_scale
    except ImportError as exc:
        raise PlanError(f"serdab bench scale needs the ray extra: pip install 'serdab[ray]' ({exc})") from None
    model, placement = "resnet18", "tee1[0-11] -> e1[12-21]"
    with err_console.status("pipeline") as status:
        rows = run_pipeline_scale(model, placement, frames, progress=lambda m: status.update(m))
        serving = run_serving_scale(progress=lambda m: status.update(m)) if not pipeline_only else None
    result = {
        "model": model,
        "placement": placement,
        "frames": frames,
        "pipeline": rows,
        "serving": serving,
        "cores": __import__("os").cpu_count(),
    }
    png = _write(result, json_path, plot_scale_bench)
    table = Table(title=f"pipeline {model} {placement}, {frames} frames: local executor vs Ray nodes on this machine")
    for column in (
        "mode",
        "executor",
        "frames/s",
        "vs local",
        "+ms/frame",
        "p50 ms",
        "p99 ms",
        "L probe ms",
        "deploy s",
        "memory MiB per node",
    ):
        table.add_column(column, justify="left" if column in ("mode", "executor") else "right")
    for r in rows:
        memory = ", ".join(f"{v / 2**20:.0f}" for v in r["memory_bytes"].values())
        table.add_row(
            r["mode"],
            "local" if r["executor"] == "local" else f"ray, {r['nodes']} node(s)",
            f"{r['throughput_fps']:.2f}",
            f"{100 * r['throughput_vs_local']:.1f}%",
            f"{r['overhead_per_frame_ms']:+.2f}",
            f"{r['latency_p50_ms']:.1f}",
            f"{r['latency_p99_ms']:.1f}",
            f"{r['probe_latency_ms']:.1f}",
            f"{r['deploy_s']:.1f}",
            memory,
        )
    console.print(table)
    if serving:
        table = Table(title="serving, one request at a time (lenet5): gateway vs Ray Serve")
        for column in ("engine", "kind", "p50 ms", "p99 ms", "p50 overhead ms"):
            table.add_column(column, justify="left" if column in ("engine", "kind") else "right")
        for r in serving["overhead"]:
            table.add_row(
                r["engine"], r["kind"], f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['p50_overhead_ms']:+.2f}"
            )
        console.print(table)
        table = Table(title="serving, enclave replicas (resnet18, emulated speed 0.3, 6 closed-loop clients)")
        for column in ("engine", "replicas", "req/s", "vs 1 replica", "vs gateway", "p50 ms", "p99 ms", "memory MiB"):
            table.add_column(column, justify="left" if column == "engine" else "right")
        for r in serving["replicas"]:
            table.add_row(
                r["engine"],
                str(r["replicas"]),
                f"{r['throughput_rps']:.2f}",
                f"{r['speedup_vs_1']:.2f}x",
                f"{100 * r['vs_gateway']:.0f}%",
                f"{r['p50_ms']:.0f}",
                f"{r['p99_ms']:.0f}",
                f"{r['memory_bytes'] / 2**20:.0f}",
            )
        console.print(table)
    err_console.print(f"wrote {json_path} and {png}")
