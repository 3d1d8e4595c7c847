"""Issue 15's scale benchmark, pipeline part: one placement run by the local executor and by the Ray
executor on 1, 2 and 3 Ray nodes of this machine, the same frames each time.

Measured per configuration: throughput (frames per host second over the stream), the frames'
end-to-end latency p50/p99 (host ms, with the queueing of a streamed chunk), the probe latency L,
the per-frame overhead Ray adds over the local executor (1/throughput difference), deploy time,
and memory per node (resident set of every process of that node: raylet and Ray workers, the
engine agents and the stage workers they launched; for the local executor, the manager and its
workers). All Ray nodes share this machine's 2 cores, so more nodes cannot mean more compute:
what the node count shows is Ray's own cost, and that placement by resource works across nodes.
Needs the ``ray`` extra.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from serdab.bench import new_table  # noqa: E402
from serdab.choices import RayIngress
from serdab.cluster import load_cluster
from serdab.graph import open_chain
from serdab.profile import cached_profile
from serdab.raycluster import device_resource
from serdab.runtime.frames import open_source
from serdab.runtime.manager import ApplicationManager, RunOptions

__all__ = ["LAYOUTS", "plot", "report", "run", "run_pipeline_scale", "run_serving_scale"]

# which devices each Ray node offers; the first node is the head (the driver's node)
LAYOUTS: dict[str, list[list[str]]] = {
    "ray 1 node": [["tee1", "e1", "tee2", "gpu2"]],
    "ray 2 nodes": [["tee1", "tee2"], ["e1", "gpu2"]],
    "ray 3 nodes": [[], ["tee1", "tee2"], ["e1", "gpu2"]],
}


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _tree_rss(roots: list[int], exclude: set[int] = frozenset()) -> int:  # type: ignore[assignment]
    tree = _children()
    seen: set[int] = set()
    stack = [p for p in roots if p not in exclude]
    while stack:
        pid = stack.pop()
        if pid in seen or pid in exclude:
            continue
        seen.add(pid)
        stack += tree.get(pid, [])
    return sum(_rss_bytes(p) for p in seen)


def _run(
    model: str,
    placement: str,
    frames: int,
    chunk: int,
    native: bool,
    executor: Any,
    on_sample: Callable[[], dict[str, int]],
) -> dict[str, Any]:
    opened = open_chain(model)
    profile, _ = cached_profile(opened.chain, opened.name)
    options = RunOptions(chunk=chunk, placement=placement, native=native, repartition=None)
    manager = ApplicationManager(opened.chain, opened.name, profile, load_cluster("paper"), options, executor=executor)
    lines: list[dict[str, Any]] = []
    memory: dict[str, int] = {}

    def on_result(line: dict[str, Any]) -> None:
        lines.append(line)
        if len(lines) == frames // 2:  # mid-stream: every worker up and busy
            memory.update(on_sample())

    started = time.monotonic()
    summary = manager.run(open_source(f"synthetic:{frames}", opened.chain.input_shape).frames(), on_result=on_result)
    wall = time.monotonic() - started
    steady = summary.steady()
    d = summary.dilation
    stream_s = sum(c.measured_chunk_s for c in summary.chunks) * d  # host seconds streaming, deploys excluded
    host_latency = [line["latency_ms"] * d for line in lines]
    return {
        "frames": len(lines),
        "in_order": [line["frame"] for line in lines] == list(range(frames)),
        "dilation": d,
        "wall_s": wall,
        "deploy_s": wall - stream_s,
        "throughput_fps": len(lines) / stream_s if stream_s > 0 else 0.0,
        "latency_p50_ms": float(np.percentile(host_latency, 50)),
        "latency_p99_ms": float(np.percentile(host_latency, 99)),
        "probe_latency_ms": float(np.mean([c.measured_latency_s for c in steady])) * 1000 * d,
        "predicted_period_ms": float(np.mean([c.predicted_period_s for c in steady])) * 1000 * d,
        "measured_period_ms": float(np.mean([c.measured_period_s for c in steady])) * 1000 * d,
        "memory_bytes": memory,
    }


def run_pipeline_scale(
    model: str = "resnet18",
    placement: str = "tee1[0-11] -> e1[12-21]",
    frames: int = 48,
    chunk: int = 16,
    progress: Callable[[str], None] = lambda _: None,
) -> list[dict[str, Any]]:
    import ray
    from ray.cluster_utils import Cluster

    from serdab.runtime.ray_executor import RayExecutor

    rows: list[dict[str, Any]] = []
    me = os.getpid()

    def local_sample() -> dict[str, int]:
        return {"this machine": _tree_rss([me])}

    for native in (True, False):
        mode = "native" if native else "emulated"
        progress(f"local executor, {mode}")
        row = _run(model, placement, frames, chunk, native, None, local_sample)
        rows.append({"executor": "local", "nodes": 0, "mode": mode, **row})
        for label, layout in LAYOUTS.items():
            progress(f"{label}, {mode}")
            cluster = Cluster(
                initialize_head=True,
                head_node_args={"num_cpus": 1, "resources": {device_resource(d): 1.0 for d in layout[0]}},
            )
            for devices in layout[1:]:
                cluster.add_node(num_cpus=1, resources={device_resource(d): 1.0 for d in devices})
            ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False, include_dashboard=False)
            cluster.wait_for_nodes()
            try:
                nodes = [cluster.head_node, *cluster.worker_nodes]

                def sample(nodes: list[Any] = nodes, me: int = me) -> dict[str, int]:
                    out = {}
                    for k, node in enumerate(nodes):
                        pids = [p.process.pid for procs in node.all_processes.values() for p in procs]
                        out[f"node {k}" + (" (head)" if k == 0 else "")] = _tree_rss(pids, exclude={me})
                    return out

                row = _run(model, placement, frames, chunk, native, RayExecutor(), sample)
            finally:
                ray.shutdown()
                cluster.shutdown()
            rows.append({"executor": "ray", "nodes": len(layout), "layout": layout, "mode": mode, **row})
    for row in rows:
        base = next(r for r in rows if r["executor"] == "local" and r["mode"] == row["mode"])
        row["throughput_vs_local"] = row["throughput_fps"] / base["throughput_fps"] if base["throughput_fps"] else 0
        row["overhead_per_frame_ms"] = 1000 / row["throughput_fps"] - 1000 / base["throughput_fps"]
    return rows


def plot(result: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["pipeline"]
    serving = result.get("serving")
    fig, axes = plt.subplots(1, 3 if serving else 2, figsize=(16 if serving else 11, 4))
    for ax, mode in zip(axes[:2], ("native", "emulated"), strict=True):
        chosen = [r for r in rows if r["mode"] == mode]
        labels = ["local" if r["executor"] == "local" else f"ray {r['nodes']}n" for r in chosen]
        ax.bar(labels, [r["throughput_fps"] for r in chosen], color=["#555"] + ["#1f77b4"] * (len(chosen) - 1))
        ax.set_title(f"pipeline {result['model']} {result['placement']}, {mode}")
        ax.set_ylabel("frames per host second")
        for k, r in enumerate(chosen):
            ax.text(k, r["throughput_fps"], f"{100 * r['throughput_vs_local']:.0f}%", ha="center", va="bottom")
    if serving:
        ax = axes[2]
        for engine, marker in (("gateway", "o"), ("ray", "s"), ("ray-haproxy", "^")):
            chosen = [r for r in serving["replicas"] if r["engine"] == engine]
            ax.plot([r["replicas"] for r in chosen], [r["throughput_rps"] for r in chosen], marker=marker, label=engine)
        ax.set_xlabel("enclave replicas (resnet18, emulated speed 0.3)")
        ax.set_ylabel("requests/s (6 closed-loop clients)")
        ax.set_title("serving: gateway vs Ray Serve")
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _closed_loop(
    url: str, trust: dict[str, Any] | None, secure: bool, shape: tuple[int, ...], threads: int, requests: int
) -> dict[str, Any]:
    """``threads`` clients, each sending its share of ``requests`` one after another (after one warm-up each)."""
    import threading

    from serdab.serve.client import Client

    latencies: list[float] = []
    lock = threading.Lock()
    x = np.random.default_rng(0).random(shape, dtype=np.float32)

    def client_loop(count: int) -> None:
        with Client(url, trust=trust) as client:
            client.infer(x, secure=secure)  # warm: attestation, connection
            for _ in range(count):
                started = time.perf_counter()
                client.infer(x, secure=secure)
                with lock:
                    latencies.append(time.perf_counter() - started)

    workers = [threading.Thread(target=client_loop, args=(requests // threads,)) for _ in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "throughput_rps": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def _service(engine: str, model: str, secure: int, public: int, speed: float) -> Any:
    """``gateway``, ``ray`` (Ray Serve's Python proxy: Serdab's router runs) or ``ray-haproxy``."""
    from serdab.choices import ServeEngine
    from serdab.serve.config import RayOptions, ServeConfig
    from serdab.serve.engine import make_engine

    config = ServeConfig(model, secure=secure, public=public, balancer="sed", enclave_speed=speed)
    if engine != "gateway":
        ingress = RayIngress.HAPROXY if engine == "ray-haproxy" else RayIngress.PROXY
        config = ServeConfig(
            model,
            secure=secure,
            public=public,
            balancer="sed",
            enclave_speed=speed,
            port=_free_port(),
            engine=ServeEngine.RAY,
            ray=RayOptions(ingress=ingress),
        )
    return make_engine(config).start()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _url(service: Any) -> str:
    return str(service.url)


def _service_rss() -> int:
    """Every process the service started, this one excluded (replicas, enclaves, key service; Ray's node
    processes, which a local Ray starts as children of its driver)."""
    me = os.getpid()
    return _tree_rss([me]) - _rss_bytes(me)


def run_serving_scale(progress: Callable[[str], None] = lambda _: None, requests: int = 200) -> dict[str, Any]:
    """Ray Serve against the gateway: per-request overhead (LeNet-5, one at a time) and 1..3 enclave replicas
    (ResNet-18 at emulated enclave speed 0.3, 6 closed-loop clients)."""
    overhead = []
    for engine in ("gateway", "ray", "ray-haproxy"):
        progress(f"{engine}: one request at a time (lenet5)")
        service = _service(engine, "lenet5", secure=1, public=1, speed=1.0)
        try:
            for secure in (False, True):
                row = _closed_loop(_url(service), service.trust(), secure, (1, 1, 28, 28), 1, requests)
                overhead.append({"engine": engine, "kind": "enclave" if secure else "public", **row})
        finally:
            service.stop()
    for row in overhead:
        base = next(r for r in overhead if r["engine"] == "gateway" and r["kind"] == row["kind"])
        row["p50_overhead_ms"] = row["p50_ms"] - base["p50_ms"]
    replicas = []
    for engine in ("gateway", "ray", "ray-haproxy"):
        for count in (1, 2, 3):
            progress(f"{engine}: {count} enclave replica(s) (resnet18, speed 0.3)")
            service = _service(engine, "resnet18", secure=count, public=0, speed=0.3)
            try:
                row = _closed_loop(_url(service), service.trust(), True, (1, 3, 224, 224), 6, 60)
                row["memory_bytes"] = _service_rss()
            finally:
                service.stop()
            replicas.append({"engine": engine, "replicas": count, **row})
    for row in replicas:
        one = next(r for r in replicas if r["engine"] == row["engine"] and r["replicas"] == 1)
        gateway = next(r for r in replicas if r["engine"] == "gateway" and r["replicas"] == row["replicas"])
        row["speedup_vs_1"] = row["throughput_rps"] / one["throughput_rps"]
        row["vs_gateway"] = row["throughput_rps"] / gateway["throughput_rps"]
    return {"overhead": overhead, "replicas": replicas}


def run(progress: Callable[[str], None], *, frames: int = 48, pipeline_only: bool = False) -> dict[str, Any]:
    """The pipeline on the local executor vs Ray on 1, 2, 3 nodes of this machine, and Ray Serve vs the
    gateway (per-request overhead; 1..3 enclave replicas)."""
    model, placement = "resnet18", "tee1[0-11] -> e1[12-21]"
    rows = run_pipeline_scale(model, placement, frames, progress=progress)
    serving = run_serving_scale(progress=progress) if not pipeline_only else None
    return {
        "model": model,
        "placement": placement,
        "frames": frames,
        "pipeline": rows,
        "serving": serving,
        "cores": os.cpu_count(),
    }


def report(result: dict[str, Any]) -> list[Any]:
    model, placement, frames = result["model"], result["placement"], result["frames"]
    table = new_table(
        f"pipeline {model} {placement}, {frames} frames: local executor vs Ray nodes on this machine",
        (
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
        ),
        left=("mode", "executor"),
    )
    for r in result["pipeline"]:
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
    lines: list[Any] = [table]
    serving = result["serving"]
    if serving:
        table = new_table(
            "serving, one request at a time (lenet5): gateway vs Ray Serve",
            ("engine", "kind", "p50 ms", "p99 ms", "p50 overhead ms"),
            left=("engine", "kind"),
        )
        for r in serving["overhead"]:
            table.add_row(
                r["engine"], r["kind"], f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['p50_overhead_ms']:+.2f}"
            )
        lines.append(table)
        table = new_table(
            "serving, enclave replicas (resnet18, emulated speed 0.3, 6 closed-loop clients)",
            ("engine", "replicas", "req/s", "vs 1 replica", "vs gateway", "p50 ms", "p99 ms", "memory MiB"),
            left=("engine",),
        )
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
        lines.append(table)
    return lines
