"""Seed 000 Fig. 12 measured: every strategy's placement run for real on the paper cluster, beside its prediction.

Each model is profiled (cached) and planned by each strategy for seed 000's 10,800-frame stream
under the 20x20 rule; the placement is then run by ``serdab.runtime`` on a synthetic stream of
``frames`` frames, one chunk, emulated speeds (time dilated so the fastest device it uses still
has headroom on this host). The speedup over one enclave is given twice: on the measured T(n)
of the short stream, and on the measured period P, which is what T(10,800) converges to. Also
the runtime's own cost, without emulation: one encrypted hop between two processes against
tensor size on loopback, and a stage worker's per-frame time against calling ONNX Runtime directly.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from serdab.bench import new_table  # noqa: E402
from serdab.bench.placement_bench import STRATEGIES as PLACEMENT_STRATEGIES  # noqa: E402
from serdab.bench.placement_bench import _request  # noqa: E402
from serdab.cluster import Cluster  # noqa: E402
from serdab.framing import encode_payload, new_records  # noqa: E402
from serdab.graph import open_chain  # noqa: E402
from serdab.onnxrt import make_session  # noqa: E402
from serdab.plan import Workload, get_planner  # noqa: E402
from serdab.profile import cached_profile  # noqa: E402
from serdab.runtime.emulation import choose_dilation, compressed_dilation  # noqa: E402
from serdab.runtime.frames import open_source  # noqa: E402
from serdab.runtime.link import LinkSealer, LinkSpec  # noqa: E402
from serdab.runtime.manager import ApplicationManager, RunOptions  # noqa: E402
from serdab.runtime.wire import connect, send_message  # noqa: E402

__all__ = ["HOP_SIZES", "hop_overhead", "plot", "report", "run", "run_pipeline_bench", "worker_overhead"]

HOP_SIZES = [4_096, 65_536, 204_800, 602_112, 3_211_264]  # bytes: LeNet-5 to ResNet-18 tensors

# seed 000 Fig. 12's strategies (the placement benchmark's list) that pipeline; 1 TEE first: the baseline
STRATEGIES = [s for s in PLACEMENT_STRATEGIES if s[1] != "neurosurgeon"]
PLAN_CHUNK = 10_800


def _measure(
    chain: Any,
    name: str,
    profile: Any,
    cluster: Cluster,
    placement: Any,
    frames: int,
    native: bool = False,
    compress: bool = False,
):
    devices = [cluster.device(d) for d in placement.devices]
    dilation = None if native else choose_dilation(devices)
    if compress and not native:
        from serdab.plan import CostModel

        cost = CostModel(Workload.from_profile(profile), cluster).evaluate(placement, frames)
        untrusted = [
            s.compute_s * cluster.device(s.stage.device).speed  # host seconds of the work (the profile's)
            for s in cost.stages
            if not cluster.device(s.stage.device).trusted
        ]
        dilation = compressed_dilation(
            devices,
            untrusted_host_s=max(untrusted, default=0.0),
            period_s=cost.period_s,
            hop_bytes=max((h.bytes for h in cost.hops), default=0),
        )
    options = RunOptions(
        chunk=frames,
        placement=placement.describe(),
        native=native,
        repartition=None,
        dilation=dilation,
        replicate=True,
    )
    manager = ApplicationManager(chain, name, profile, cluster, options)
    summary = manager.run(open_source(f"synthetic:{frames}", chain.input_shape).frames())
    return summary, summary.chunks[-1]


def run_pipeline_bench(
    cluster: Cluster,
    models: list[str],
    frames: int,
    progress: Callable[[str], None] = lambda _: None,
    compress: bool = False,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for model in models:
        progress(f"profiling {model}")
        opened = open_chain(model)
        profile, _ = cached_profile(opened.chain, opened.name)
        workload = Workload.from_profile(profile)
        base: dict[str, float] = {}
        for label, planner, replicate in STRATEGIES:
            request = _request(workload, cluster, PLAN_CHUNK, "resolution:20", replicate)
            placement = get_planner(planner).plan(request)
            row: dict[str, Any] = {"model": model, "strategy": label, "planner": planner, "frames": frames}
            if placement is None:
                rows.append({**row, "feasible": False})
                continue
            progress(f"{model}: {label} {placement.describe()}")
            summary, chunk = _measure(opened.chain, opened.name, profile, cluster, placement, frames, compress=compress)
            long_run = request.evaluate(placement)
            row.update(
                feasible=True,
                placement=placement.describe(),
                dilation=summary.dilation,
                measured_chunk_s=chunk.measured_chunk_s,
                predicted_chunk_s=chunk.predicted_chunk_s,
                simulated_chunk_s=chunk.simulated_chunk_s,
                measured_latency_s=chunk.measured_latency_s,
                predicted_latency_s=chunk.predicted_latency_s,
                first_frame_latency_s=chunk.first_frame_latency_s,
                measured_period_s=chunk.measured_period_s,
                predicted_period_s=chunk.predicted_period_s,
                predicted_bottleneck=chunk.predicted_bottleneck,
                measured_bottleneck=chunk.measured_bottleneck,
                throughput_ratio=(chunk.predicted_period_s / chunk.measured_period_s) if chunk.measured_period_s else 0,
                predicted_chunk_10800_s=long_run.chunk_time_s,
                wall_s=summary.wall_s,
                stages=[s.model_dump() for s in chunk.stages],
            )
            if planner == "single-tee":
                base = {
                    "T": chunk.measured_chunk_s,
                    "P": chunk.measured_period_s,
                    "T_pred": chunk.predicted_chunk_s,
                    "P_pred": long_run.chunk_time_s,
                }
            if base:
                row["speedup_measured_chunk"] = base["T"] / chunk.measured_chunk_s
                row["speedup_measured_period"] = base["P"] / chunk.measured_period_s
                row["speedup_predicted_chunk"] = base["T_pred"] / chunk.predicted_chunk_s
                row["speedup_predicted_10800"] = base["P_pred"] / long_run.chunk_time_s
            rows.append(row)
    return rows


def hop_overhead(
    sizes: list[int], repeats: int = 200, gap_s: float = 0.005, processes: bool = True
) -> list[dict[str, float]]:
    """One encrypted hop on loopback (AES-GCM seal + CBOR + TCP + open + decode), a frame every
    ``gap_s`` as in a pipeline, no emulated link time; between two processes (as stages are) or,
    with ``processes=False``, two threads of one process (the same work without an OS wake-up)."""
    import multiprocessing
    import queue as queues

    from serdab.bench.hop_probe import receive

    context = multiprocessing.get_context("spawn")  # a clean child: only the link code, as in a worker
    rows = []
    for size in sizes:
        tensor = np.random.default_rng(0).standard_normal(size // 4).astype(np.float32)
        spec = LinkSpec("bench", "a", "b", bytes(32))
        ports: Any
        results: Any
        if processes:
            ports, results = context.Queue(), context.Queue()
            child: Any = context.Process(target=receive, args=(spec, repeats, ports, results))
        else:
            ports, results = queues.Queue(), queues.Queue()
            child = threading.Thread(target=receive, args=(spec, repeats, ports, results), daemon=True)
        child.start()
        sock = connect(("127.0.0.1", ports.get(timeout=60)))
        sealer = LinkSealer(spec)
        for _ in range(repeats):
            payload = encode_payload([tensor], new_records())
            start = time.monotonic()
            send_message(sock, sealer.seal(0, payload, start))  # 'at' carries the start time
            time.sleep(gap_s)
        times = results.get(timeout=60)
        child.join(timeout=10)
        sock.close()
        rows.append(
            {
                "bytes": size,
                "processes": processes,
                "median_ms": 1000 * statistics.median(times),
                "p95_ms": 1000 * float(np.percentile(times, 95)),
            }
        )
    return rows


def worker_overhead(cluster: Cluster, model: str = "resnet18", frames: int = 30) -> dict[str, Any]:
    """Per-frame period of a one-stage native pipeline (an enclave worker) against ONNX Runtime called
    directly, timed before and after the pipeline run (the lower median counts: noise only adds)."""
    opened = open_chain(model)
    profile, _ = cached_profile(opened.chain, opened.name)
    single = get_planner("single-tee").plan(
        _request(Workload.from_profile(profile), cluster, PLAN_CHUNK, "resolution:20", False)
    )
    if single is None:
        raise RuntimeError(f"{model} does not fit one enclave of {cluster.name}")
    session = make_session(opened.chain.model)
    x = next(open_source("synthetic:1", opened.chain.input_shape).frames()).tensor

    def direct() -> float:
        times = []
        for _ in range(frames):
            start = time.perf_counter()
            session.run(None, {opened.chain.input_name: x})
            times.append(time.perf_counter() - start)
        return 1000 * statistics.median(times)

    before = direct()
    _, chunk = _measure(opened.chain, opened.name, profile, cluster, single, frames, native=True)
    after = direct()
    direct_ms = min(before, after)
    period_ms = 1000 * chunk.measured_period_s
    return {
        "model": model,
        "direct_ms": direct_ms,
        "direct_before_ms": before,
        "direct_after_ms": after,
        "stage_ms": chunk.stages[0].measured_ms,
        "pipeline_period_ms": period_ms,
        "overhead_per_frame_ms": period_ms - direct_ms,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    rows = [r for r in result["rows"] if r.get("feasible")]
    models = list(dict.fromkeys(r["model"] for r in rows))
    labels = [label for label, _, _ in STRATEGIES]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        measured = [
            next((r.get("speedup_measured_period") or 0 for r in rows if r["model"] == m and r["strategy"] == label), 0)
            for m in models
        ]
        predicted = [
            next((r.get("speedup_predicted_10800") or 0 for r in rows if r["model"] == m and r["strategy"] == label), 0)
            for m in models
        ]
        xs = np.arange(len(models)) + i * width
        axes[0].bar(xs, measured, width, label=label)
        axes[0].scatter(xs, predicted, color="black", marker="_", s=80, zorder=3)
    axes[0].set_xticks(np.arange(len(models)) + 0.4 - width / 2, models, rotation=15)
    axes[0].set_ylabel("speedup over 1 TEE (measured P; ticks: predicted T(10800))")
    axes[0].set_title("seed 000 Fig. 12, measured (emulated speeds)")
    axes[0].legend(fontsize=7)
    for key, marker in (("chunk", "o"), ("period", "s"), ("latency", "^")):
        predicted = [r[f"predicted_{key}_s"] for r in rows]
        measured = [r[f"measured_{key}_s"] for r in rows]
        axes[1].scatter(predicted, measured, marker=marker, label=f"{key}", alpha=0.7)
    top = max([r["predicted_chunk_s"] for r in rows] + [1e-3])
    axes[1].plot([1e-3, top], [1e-3, top], color="grey", lw=0.8)
    axes[1].plot([1e-3, top], [1.1e-3, 1.1 * top], color="grey", lw=0.5, ls="--")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("predicted (s, emulated)")
    axes[1].set_ylabel("measured (s, emulated)")
    axes[1].set_title("measured vs cost model (dashed: +10%)")
    axes[1].legend()
    for processes, label in ((True, "processes"), (False, "threads")):
        hops = [h for h in result.get("hops", []) if h.get("processes", True) == processes]
        if not hops:
            continue
        kib = [h["bytes"] / 1024 for h in hops]
        axes[2].plot(kib, [h["median_ms"] for h in hops], marker="o", label=f"median, two {label}")
        axes[2].plot(kib, [h["p95_ms"] for h in hops], marker="x", ls=":", label=f"p95, two {label}")
    axes[2].axhline(1.0, color="grey", lw=0.8, ls="--")
    axes[2].set_xscale("log")
    axes[2].set_xlabel("tensor KiB")
    axes[2].set_ylabel("ms per hop (loopback, no emulation)")
    axes[2].set_title("runtime cost of one encrypted hop")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(
    progress: Callable[[str], None],
    *,
    quick: bool = False,
    frames: int | None = None,
    cluster: str = "paper",
    compress: bool = False,
    models: list[str] | None = None,
) -> dict[str, Any]:
    """Each strategy's placement run by the pipeline runtime beside its prediction, the cost of one
    encrypted hop, and a worker against ONNX Runtime called directly."""
    from serdab.bench.placement_bench import FIG12_MODELS
    from serdab.cluster import load_cluster

    spec = load_cluster(cluster)
    count = frames or (12 if quick else 24)
    chosen = models or (["resnet18"] if quick else FIG12_MODELS)
    rows = run_pipeline_bench(spec, chosen, count, progress=progress, compress=compress)
    progress("per-hop overhead")
    hops = hop_overhead(HOP_SIZES) + hop_overhead(HOP_SIZES, processes=False)
    progress("worker overhead")
    worker = worker_overhead(spec)
    return {
        "cluster": spec.name,
        "frames": count,
        "quick": quick,
        "rows": rows,
        "hops": hops,
        "worker": worker,
        "emulated": "device speeds and links from the cluster file, time-dilated per row"
        + ("; clock compressed for the enclaves (faster devices count what they took)" if compress else ""),
        "compress": compress,
    }


def report(result: dict[str, Any]) -> list[Any]:
    table = new_table(
        f"measured pipeline on {result['cluster']}, {result['frames']} frames per run (emulated speeds)",
        (
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
        ),
        left=("model", "strategy", "placement"),
    )
    for r in result["rows"]:
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
    lines: list[Any] = [table]
    for h in result["hops"]:
        where = "between two processes" if h["processes"] else "between two threads"
        lines.append(
            f"one encrypted hop, {h['bytes'] / 1024:.0f} KiB on loopback {where}: median "
            f"{h['median_ms']:.3f} ms, p95 {h['p95_ms']:.3f} ms"
        )
    worker = result["worker"]
    lines.append(
        f"worker vs ONNX Runtime directly ({worker['model']}, native): {worker['pipeline_period_ms']:.2f} ms "
        f"per frame vs {worker['direct_ms']:.2f} ms ({worker['overhead_per_frame_ms']:+.2f} ms)"
    )
    return lines
