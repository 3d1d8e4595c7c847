"""Serving benchmarks (seed 001 Figs. 2, 3, 5 and Table 1; seed 002 Fig. 6, Table 1 and Fig. 7), and
the latency plot `serdab load --json` writes.

Each deployment runs as `serdab serve` in its own process group, so the load generator (this
process) does not share a GIL with the gateway; replicas are located and interference is started
through the gateway's admin calls, as an operator would. What rests on emulation is labelled:
enclaves are simulated processes (their speed 1.0 = this host's, as Nitro's dedicated cores, unless
a row says otherwise), EPC and its paging are emulated (``serdab.tee.epc``). Two cores carry the
client, the gateway and every replica: the scaling rows say so.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from serdab import proc  # noqa: E402
from serdab.bench import new_table  # noqa: E402
from serdab.proc import ReadyFile  # noqa: E402
from serdab.serve.load import Sample, closed_loop, open_loop, summarise  # noqa: E402

__all__ = ["PARTS", "plot", "plot_latency", "report", "run", "run_serving_bench"]

Progress = Callable[[str], None]
SERVE_START_S = 180.0  # a deployment builds images, starts the key service and every replica
SERVE_STOP_S = 60.0  # `serdab serve` stops each replica it started before it exits


def plot_latency(samples: Sequence[Sample], path: Path, title: str) -> None:
    """Latency of each request over the run (secure and public apart), failures marked."""
    fig, ax = plt.subplots(figsize=(8, 4))
    _scatter(ax, samples)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _scatter(ax: Any, samples: Sequence[Sample]) -> None:
    for secure, colour, label in ((True, "tab:red", "secure (enclave)"), (False, "tab:blue", "public")):
        rows = [s for s in samples if s.secure == secure and s.ok]
        if rows:
            ax.scatter([s.start_s for s in rows], [1000 * s.latency_s for s in rows], s=6, c=colour, label=label)
    failed = [s for s in samples if not s.ok]
    if failed:
        ax.scatter([s.start_s for s in failed], [0] * len(failed), marker="x", c="black", label="failed")
    ax.set_xlabel("request start (s)")
    ax.set_ylabel("latency (ms)")
    ax.legend(fontsize=8)


# --- a deployment in its own process ------------------------------------------------------------------
@dataclass
class Served:
    url: str
    trust: dict[str, Any]
    token: str
    child: proc.Child

    def admin(self, action: str, **body: Any) -> dict[str, Any]:
        reply = httpx.post(
            f"{self.url}/v1/admin/{action}", json=body, timeout=120, headers={"authorization": f"Bearer {self.token}"}
        )
        reply.raise_for_status()
        return reply.json()

    def replicas(self) -> list[dict[str, Any]]:
        return self.admin("replicas")["replicas"]


@contextmanager
def served(
    model: str,
    work: Path,
    *,
    secure: int,
    public: int,
    balancer: str = "round-robin",
    enclave_hosts: int = 0,
    enclave_speed: float = 1.0,
    monitor_interval: float = 1.0,
    grpc: bool = False,
) -> Iterator[Served]:
    """`serdab serve` in its own process group; SIGTERM (it stops everything it started) on exit."""
    work.mkdir(parents=True, exist_ok=True)
    trust_file = work / "trust.json"
    trust_file.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "serdab",
        "serve",
        model,
        "--secure",
        str(secure),
        "--public",
        str(public),
        "--balancer",
        balancer,
        "--port",
        "0",
        "--enclave-hosts",
        str(enclave_hosts),
        "--enclave-speed",
        str(enclave_speed),
        "--monitor-interval",
        str(monitor_interval),
        "--trust-file",
        str(trust_file),
        *(["--grpc", "--grpc-port", "0"] if grpc else []),
    ]
    child = proc.start(command, name="serdab serve", log_path=work / "serve.log", env={"OMP_NUM_THREADS": "1"})
    try:
        trust = child.wait_ready(ReadyFile(trust_file), SERVE_START_S)
        token = (work / "trust.admin-token").read_text().strip()  # written before the trust statement
        yield Served(trust["gateway"], trust, token, child)
    finally:
        child.stop(SERVE_STOP_S)


def _input(model: str, batch: int) -> np.ndarray:
    from serdab.models import zoo_entry

    return np.random.default_rng(0).standard_normal((batch, *zoo_entry(model).input_chw)).astype(np.float32)


def _rss_mib(pid: int, field: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# --- seed 001 -------------------------------------------------------------------------------------------
def channel_throughput(s: Served, model: str, megabytes: int = 32, repeat: int = 5) -> dict[str, float]:
    """MB/s of a large request body into each kind: TLS through the pass-through into the enclave vs
    plain HTTP through the gateway's proxy (the replica reads it all, then refuses it: 400)."""
    from serdab.serve.client import Client

    body = os.urandom(megabytes * 2**20)
    headers = {"content-type": "application/octet-stream", "inference-header-content-length": str(len(body) + 1)}
    out = {}
    with Client(s.url, trust=s.trust) as client:
        for name, secure in (("enclave_tls_mb_s", True), ("public_plain_mb_s", False)):
            http, base = client.http(secure)
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                reply = http.post(f"{base}/v2/models/{model}/infer", content=body, headers=headers)
                times.append(time.perf_counter() - started)
                assert reply.status_code == 400, reply.text
            out[name] = megabytes / float(np.median(times))
    return out


def seed001(model: str, work: Path, quick: bool, progress: Progress) -> dict[str, Any]:
    threads_list = [1, 4, 8] if quick else [1, 2, 5, 10, 20, 40]
    fractions = [0.0, 0.25, 0.5, 0.75, 1.0]
    result: dict[str, Any] = {"model": model, "batch": 2}
    progress(f"seed 001: {model}, one enclave and one public replica")
    with served(model, work / "seed001", secure=1, public=1) as s:
        replicas = s.replicas()
        result["start_s"] = {r["kind"]: r["start_s"] for r in replicas}
        result["memory_startup_peak_mib"] = {r["kind"]: _rss_mib(r["pid"], "VmHWM") for r in replicas}
        result["memory_startup_peak_mib"]["gateway"] = _rss_mib(s.child.pid, "VmHWM")
        progress("seed 001 Fig. 2: channel throughput")
        result["channel"] = channel_throughput(s, model, 16 if quick else 32, 3 if quick else 5)
        x = _input(model, 2)
        fig3 = []
        for kind, fraction in (("enclave", 1.0), ("public", 0.0)):
            for threads in threads_list:
                progress(f"seed 001 Fig. 3: {kind}, {threads} threads x 2 requests")
                samples, wall = closed_loop(
                    s.url, x, threads=threads, requests=2, secure_fraction=fraction, trust=s.trust, model=model
                )
                fig3.append({"kind": kind, "threads": threads, **summarise(samples, wall)["all"]})
        result["fig3"] = fig3
        sampling = threading.Event()
        rss: dict[str, list[float]] = {name: [] for name in [*(r["kind"] for r in replicas), "gateway"]}

        def sample_memory() -> None:
            while not sampling.wait(0.5):
                for r in replicas:
                    rss[r["kind"]].append(_rss_mib(r["pid"]))
                rss["gateway"].append(_rss_mib(s.child.pid))

        sampler = threading.Thread(target=sample_memory, daemon=True)
        sampler.start()
        fig5 = []
        for fraction in fractions:
            progress(f"seed 001 Fig. 5: {fraction:.0%} secure")
            samples, wall = closed_loop(
                s.url,
                x,
                threads=8,
                requests=3 if quick else 6,
                secure_fraction=fraction,
                trust=s.trust,
                model=model,
                seed=int(100 * fraction),
            )
            summary = summarise(samples, wall)
            fig5.append(
                {
                    "secure_fraction": fraction,
                    "secure": summary.get("secure"),
                    "public": summary.get("public"),
                    "throughput_per_s": summary["throughput_per_s"],
                }
            )
        sampling.set()
        sampler.join()
        result["fig5"] = fig5
        result["memory_light_load_mib"] = {k: float(np.nanmean(v)) for k, v in rss.items() if v}
        progress("secure vs public path, one request at a time")
        result["sequential"] = _sequential(s, x, model, 20 if quick else 60)
    return result


def _sequential(s: Served, x: np.ndarray, model: str, count: int) -> dict[str, float]:
    """p50 of one request at a time on a set-up session, secure and public interleaved."""
    from serdab.serve.client import Client

    times: dict[bool, list[float]] = {True: [], False: []}
    with Client(s.url, trust=s.trust, model=model) as client:
        client.infer(x, secure=True)
        client.infer(x, secure=False)
        for _ in range(count):
            for secure in (True, False):
                started = time.perf_counter()
                client.infer(x, secure=secure)
                times[secure].append(time.perf_counter() - started)
    secure_ms, public_ms = 1000 * float(np.median(times[True])), 1000 * float(np.median(times[False]))
    return {"secure_p50_ms": secure_ms, "public_p50_ms": public_ms, "secure_over_public": secure_ms / public_ms - 1}


def gateway_overhead(work: Path, count: int, progress: Progress) -> dict[str, float]:
    """p50 of a request to a public replica directly vs through the gateway (LeNet-5: the model is ~0),
    interleaved. (Issue 25 measured the h11 forwarder beside the hand-written one it replaced in one run,
    bench/results/issue25/serving-quick.json, before deleting the old one.)"""
    from serdab.serve.protocol import encode_infer_request

    progress("gateway overhead")
    x = _input("lenet5", 2)
    body, headers = encode_infer_request({"input": x})
    with served("lenet5", work / "overhead", secure=0, public=1) as s:
        port = s.replicas()[0]["port"]
        bases = {"direct_p50_ms": f"http://127.0.0.1:{port}", "gateway_p50_ms": s.url}
        times: dict[str, list[float]] = {name: [] for name in bases}
        clients = {name: httpx.Client() for name in bases}
        try:
            for _ in range(count):
                for name, base in bases.items():
                    started = time.perf_counter()
                    clients[name].post(
                        f"{base}/v2/models/lenet5/infer", content=body, headers=headers
                    ).raise_for_status()
                    times[name].append(time.perf_counter() - started)
        finally:
            for client in clients.values():
                client.close()
    out = {name: 1000 * float(np.median(t[count // 10 :])) for name, t in times.items()}
    out["overhead_p50_ms"] = out["gateway_p50_ms"] - out["direct_p50_ms"]
    return out


WARM_REQUESTS = 30


def tensor_overhead(model: str, work: Path, count: int, progress: Progress) -> list[dict[str, Any]]:
    """Issue 25's target: a request's cost beyond the replica's own queue + inference time (its
    Server-Timing), p50 of one request at a time through the gateway, with binary tensors over HTTP
    and raw tensors over gRPC, public and secure, interleaved on set-up sessions. Each path is warmed
    with ``WARM_REQUESTS`` first: a gRPC channel's flow-control window grows with use (the first ~60
    requests of 600 KB cost ~2 ms more each on this host), and a client keeps its channel."""
    from serdab.serve.client import Client
    from serdab.serve.protocol import encode_infer_request

    progress(f"{model}: cost beyond inference, HTTP binary and gRPC, public and secure")
    x = _input(model, 1)
    body, headers = encode_infer_request({"input": x})
    samples: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    with (
        served(model, work / "tensors", secure=1, public=1, grpc=True) as s,
        Client(s.url, trust=s.trust, model=model) as http,
        Client(s.url, trust=s.trust, model=model, protocol="grpc") as grpc,
    ):

        def over_http(secure: bool) -> float:
            client, base = http.http(secure)
            reply = client.post(f"{base}/v2/models/{model}/infer", content=body, headers=headers)
            reply.raise_for_status()
            return _server_ms(reply.headers.get("server-timing", ""))

        def over_grpc(secure: bool) -> float:
            grpc.infer(x, secure=secure)
            return _server_ms(grpc.last_timing or "")

        calls = {"http-binary": over_http, "grpc": over_grpc}
        for name, call in calls.items():
            for secure in (False, True):
                for _ in range(WARM_REQUESTS):  # attestation, connections, windows set up
                    call(secure)
                samples[(name, secure)] = []
        for _ in range(count):
            for (name, secure), into in samples.items():
                started = time.perf_counter()
                server_ms = calls[name](secure)
                into.append((1000 * (time.perf_counter() - started), server_ms))
    rows = []
    for (name, secure), pairs in samples.items():
        e2e = np.array([p[0] for p in pairs])
        server = np.array([p[1] for p in pairs])
        rows.append(
            {
                "model": model,
                "protocol": name,
                "path": "secure" if secure else "public",
                "e2e_p50_ms": float(np.median(e2e)),
                "inference_p50_ms": float(np.median(server)),
                "beyond_inference_p50_ms": float(np.median(e2e - server)),
                "beyond_inference_p90_ms": float(np.percentile(e2e - server, 90)),
            }
        )
    return rows


# --- seed 002 -------------------------------------------------------------------------------------------
def tls_cost(models: Sequence[str], count: int, progress: Progress) -> list[dict[str, Any]]:
    """Seed 002 Fig. 6: inference and communication time, outside/inside the enclave, without/with TLS,
    one request at a time on a set-up connection, straight to the replica (no gateway)."""
    import ssl

    from serdab.serve.config import GatewayOptions, ServeConfig
    from serdab.serve.service import ModelService

    rows = []
    for model in models:
        progress(f"seed 002 Fig. 6: {model}")
        x = _input(model, 1)
        from serdab.serve.protocol import encode_infer_request

        body, headers = encode_infer_request({"input": x})
        with ModelService(
            ServeConfig(model, secure=1, public=1, gateway=GatewayOptions(enclave_hosts=2))
        ) as svc:  # an EPC each
            plain_enclave = svc.add_replica("enclave", tls=False, register=False)
            tls_public = svc.add_replica("public", tls=True, register=False)
            enclave = next(r for r in svc.replicas.values() if r.kind == "enclave")
            public = next(r for r in svc.replicas.values() if r.kind == "public")
            service_ca = svc.service_ssl
            public_ca = ssl.create_default_context(cafile=str(svc.public_tls_files()[0]))
            public_ca.check_hostname = False
            configs: list[tuple[str, bool, str, Any]] = [
                ("outside", False, f"http://127.0.0.1:{public.port}", True),
                ("outside", True, f"https://127.0.0.1:{tls_public.port}", public_ca),
                ("inside", False, f"http://127.0.0.1:{plain_enclave.port}", True),
                ("inside", True, f"https://127.0.0.1:{enclave.port}", service_ca),
            ]
            for where, tls, base, verify in configs:
                with httpx.Client(verify=verify) as http:
                    started = time.perf_counter()
                    http.get(f"{base}/v2/health/live").raise_for_status()
                    connect_ms = 1000 * (time.perf_counter() - started)
                    e2e, infer = [], []
                    for k in range(count + 3):
                        started = time.perf_counter()
                        reply = http.post(f"{base}/v2/models/{model}/infer", content=body, headers=headers)
                        elapsed = time.perf_counter() - started
                        reply.raise_for_status()
                        if k >= 3:
                            e2e.append(1000 * elapsed)
                            infer.append(_server_ms(reply.headers.get("server-timing", "")))
                e2e_ms, infer_ms = float(np.median(e2e)), float(np.median(infer))
                rows.append(
                    {
                        "model": model,
                        "where": where,
                        "tls": tls,
                        "e2e_ms": e2e_ms,
                        "inference_ms": infer_ms,
                        "communication_ms": e2e_ms - infer_ms,
                        "first_request_connect_ms": connect_ms,
                    }
                )
    return rows


def _server_ms(timing: str) -> float:
    total = 0.0
    for part in timing.split(","):
        name, _, rest = part.strip().partition(";dur=")
        if name in ("queue", "infer") and rest:
            total += float(rest)
    return total


OFFERED_FRACTION = 0.5  # of the capacity measured without interference
SATURATED_P50_FACTOR = 4.0  # p50 before any interference this many times the unloaded one: the load alone queues


def _capacity(s: Served, x: np.ndarray, model: str, quick: bool) -> dict[str, float]:
    """What this deployment serves on this machine: one request at a time (unloaded p50), then a closed
    loop of 6 threads (throughput at saturation), secure requests, no interference."""
    one, one_wall = closed_loop(s.url, x, threads=1, requests=10, secure_fraction=1.0, trust=s.trust, model=model)
    full, wall = closed_loop(
        s.url, x, threads=6, requests=6 if quick else 15, secure_fraction=1.0, trust=s.trust, model=model
    )
    return {
        "unloaded_p50_ms": summarise(one, one_wall)["all"]["p50_ms"],
        "capacity_per_s": summarise(full, wall)["throughput_per_s"],
    }


def epc_interference(model: str, work: Path, quick: bool, progress: Progress) -> dict[str, Any]:
    """Seed 002 Table 1: P99 with 3 enclave replicas on 3 hosts under Poisson arrivals while an
    interference enclave occupies one host's EPC in two windows, for each balancing policy.

    The offered load is a stated fraction of the capacity measured first on this machine (with
    round-robin, no interference): a fixed rate would compare the policies in overload on a small
    host (every queue grows, whatever the policy). 50%, because shedding a host only helps while the
    other two can absorb its share (below 2/3 of capacity). A run whose p50 before the first
    interference window is over SATURATED_P50_FACTOR x the unloaded p50 is marked saturated (the load
    alone builds a queue) and the policies are not compared; what a policy does to the queue once
    interference starts is what the table measures."""
    duration = 40.0 if quick else 120.0
    # S3ML samples paging once per second and sheds after 5 cycles; time is scaled down here so that the
    # requests caught in the 5 cycles stay under 1% of a short run, as they do in S3ML's 10 minutes
    monitor = 0.1 if quick else 0.2
    windows = [(0.2 * duration, 0.45 * duration), (0.6 * duration, 0.85 * duration)]
    # a ResNet-18 replica holds ~58 MB of the 93 MiB EPC: +400 MiB puts the host ~4x over (emulated slowdown
    # ~4.2x: the replica saturates at its share of the load), +40 MiB just over (~1.3x, paging below the trigger)
    degrees = {"high": 400 * 2**20, "low": 40 * 2**20}
    boundary = 200_000.0  # pages/s; 70% of it is the trigger: above the low degree (~70k/s), far below the high
    policies = ["round-robin", "least-connections", "sed", f"epc-aware:{boundary:g}:0.7:5"]
    x = _input(model, 1)
    rows: list[dict[str, Any]] = []
    measured: dict[str, float] = {}
    rate = 0.0
    for policy in policies:
        progress(f"seed 002 Table 1: {policy}")
        with served(
            model, work / "table1", secure=3, public=0, balancer=policy, enclave_hosts=3, monitor_interval=monitor
        ) as s:
            closed_loop(s.url, x, threads=3, requests=5, secure_fraction=1.0, trust=s.trust, model=model)  # warm
            if not measured:
                progress("seed 002 Table 1: capacity of 3 enclave replicas on this machine, no interference")
                measured = _capacity(s, x, model, quick)
                rate = OFFERED_FRACTION * measured["capacity_per_s"]
            s.admin("unstress", name=s.admin("stress", host="h1", epc_bytes=2**20)["stress"])  # its enclave is up
            for degree, epc_bytes in degrees.items():
                progress(f"seed 002 Table 1: {policy}, {degree} interference, {rate:.1f}/s for {duration:.0f} s")
                stop = threading.Event()

                def interfere(epc: int = epc_bytes, stop: threading.Event = stop) -> None:
                    begin = time.perf_counter()
                    for start, end in windows:
                        if stop.wait(max(0.0, begin + start - time.perf_counter())):
                            return
                        name = s.admin("stress", host="h1", epc_bytes=epc)["stress"]
                        stop.wait(max(0.0, begin + end - time.perf_counter()))
                        s.admin("unstress", name=name)

                thread = threading.Thread(target=interfere, daemon=True)
                thread.start()
                samples, wall = open_loop(
                    s.url,
                    x,
                    rate_per_s=rate,
                    duration_s=duration,
                    secure_fraction=1.0,
                    trust=s.trust,
                    model=model,
                    workers=24,
                    seed=7,
                )
                stop.set()
                thread.join()
                summary = summarise(samples, wall)["all"]
                before = [1000 * q.latency_s for q in samples if q.ok and q.start_s < windows[0][0]]
                before_p50 = float(np.median(before)) if before else float("inf")
                rows.append(
                    {
                        "policy": policy.split(":")[0],
                        "degree": degree,
                        "epc_bytes": epc_bytes,
                        **summary,
                        "before_interference_p50_ms": before_p50,
                        "saturated": before_p50 > SATURATED_P50_FACTOR * measured["unloaded_p50_ms"],
                    }
                )
                time.sleep(3 * monitor + 1)  # weights back to 1 before the next run
    return {
        "model": model,
        **measured,
        "offered_fraction": OFFERED_FRACTION,
        "rate_per_s": rate,
        "duration_s": duration,
        "windows_s": windows,
        "monitor_interval_s": monitor,
        "boundary_pages_per_s": boundary,
        "rows": rows,
        "comparison": compare_policies(rows),
    }


def compare_policies(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """EPC-aware's P99 against round-robin's per interference degree, or why there is no comparison."""
    saturated = [f"{r['policy']} ({r['degree']})" for r in rows if r.get("saturated")]
    if saturated:
        return {"refused": f"saturated runs: {', '.join(saturated)}; lower the offered fraction"}
    out: dict[str, Any] = {}
    for degree in ("high", "low"):
        by = {r["policy"]: r for r in rows if r["degree"] == degree}
        if "epc-aware" in by and "round-robin" in by and by["round-robin"].get("p99_ms"):
            out[f"epc_aware_vs_round_robin_p99_{degree}"] = by["epc-aware"]["p99_ms"] / by["round-robin"]["p99_ms"] - 1
    return out


def replica_scaling(model: str, work: Path, quick: bool, progress: Progress) -> list[dict[str, Any]]:
    """Seed 002 Fig. 7: throughput and P99 with 1, 2, 3 enclave replicas, closed loop with a new
    connection per request (so each request is balanced), at this host's speed (CPU-bound: 2 cores)
    and at an emulated SGX speed of 0.3 (the enclave waits, the core does not)."""
    rows = []
    x = _input(model, 1)
    for speed in (1.0, 0.3):
        for count in (1, 2, 3):
            progress(f"seed 002 Fig. 7: {count} enclave replica(s), speed {speed}")
            with served(
                model,
                work / "fig7",
                secure=count,
                public=0,
                balancer="least-connections",
                enclave_hosts=count,
                enclave_speed=speed,
            ) as s:
                closed_loop(s.url, x, threads=2, requests=3, secure_fraction=1.0, trust=s.trust, model=model)
                samples, wall = closed_loop(
                    s.url,
                    x,
                    threads=6,
                    requests=8 if quick else 25,
                    secure_fraction=1.0,
                    trust=s.trust,
                    model=model,
                    fresh_connections=True,
                )
                summary = summarise(samples, wall)
                rows.append(
                    {
                        "replicas": count,
                        "enclave_speed": speed,
                        "throughput_per_s": summary["throughput_per_s"],
                        **summary["all"],
                    }
                )
    return rows


PARTS = ("overhead", "tensors", "seed001", "fig6", "table1", "fig7")


def run_serving_bench(
    quick: bool = False,
    progress: Progress | None = None,
    parts: Sequence[str] = PARTS,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every part, or only ``parts`` with the others kept from ``previous`` (a result file of the
    same mode); ``part_wall_s`` and ``measured_at`` say when each part was measured."""
    say = progress or (lambda _: None)
    started = time.perf_counter()
    result: dict[str, Any] = dict(previous or {})
    result["quick"] = quick
    walls, stamps = dict(result.get("part_wall_s", {})), dict(result.get("measured_at", {}))
    fig6_models = (
        ["mobilenetv2", "squeezenet1_1"] if quick else ["mobilenetv2", "squeezenet1_1", "resnet18", "googlenet"]
    )
    runs: dict[str, Callable[[Path], Any]] = {
        "overhead": lambda work: gateway_overhead(work, 100 if quick else 400, say),
        "tensors": lambda work: tensor_overhead("resnet18", work, 30 if quick else 100, say),
        "seed001": lambda work: seed001("resnet18", work, quick, say),
        "fig6": lambda work: tls_cost(fig6_models, 10 if quick else 30, say),
        "table1": lambda work: epc_interference("resnet18", work, quick, say),
        "fig7": lambda work: replica_scaling("resnet18", work, quick, say),
    }
    with tempfile.TemporaryDirectory(prefix="serdab-bench-serving-") as tmp:
        for part in parts:
            began = time.perf_counter()
            result[part] = runs[part](Path(tmp))
            walls[part] = time.perf_counter() - began
            stamps[part] = time.strftime("%Y-%m-%d %H:%M:%S")
    missing = [p for p in PARTS if p not in result]
    if missing:
        raise ValueError(f"parts {', '.join(missing)} were neither run nor found in the previous result")
    result["part_wall_s"], result["measured_at"] = walls, stamps
    result["wall_s"] = sum(walls.values()) if previous else time.perf_counter() - started
    result["emulated"] = (
        "enclaves are simulated processes; their speed is this host's unless enclave_speed says "
        "otherwise; EPC budget and paging are emulated"
    )
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    s1 = result["seed001"]
    ax = axes[0][0]
    for kind, colour in (("enclave", "tab:red"), ("public", "tab:blue")):
        rows = [r for r in s1["fig3"] if r["kind"] == kind]
        threads = [r["threads"] for r in rows]
        ax.plot(threads, [r["mean_ms"] for r in rows], marker="o", c=colour, label=f"{kind} mean")
        ax.fill_between(threads, [r["min_ms"] for r in rows], [r["max_ms"] for r in rows], color=colour, alpha=0.15)
    ax.set(xlabel="threads (x 2 requests, batch 2)", ylabel="latency ms", title="seed 001 Fig. 3 (min-max band)")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    fractions = [100 * r["secure_fraction"] for r in s1["fig5"]]
    for kind, colour in (("secure", "tab:red"), ("public", "tab:blue")):
        values = [(r[kind] or {}).get("mean_ms", np.nan) for r in s1["fig5"]]
        ax.plot(fractions, values, marker="o", c=colour, label=f"{kind} mean")
    ax.set(xlabel="% secure requests", ylabel="latency ms", title="seed 001 Fig. 5: mixed privacy")
    ax.legend(fontsize=8)
    ax = axes[0][2]
    kinds = list(s1["memory_light_load_mib"])
    ax.bar([k + " start" for k in kinds], [s1["memory_startup_peak_mib"].get(k, 0) for k in kinds], color="grey")
    ax.bar([k + " load" for k in kinds], [s1["memory_light_load_mib"][k] for k in kinds], color="tab:green")
    ax.set(ylabel="MiB", title="seed 001 Table 1: memory (peak at start, mean under load)")
    ax.tick_params(axis="x", labelsize=7)
    ax = axes[1][0]
    labels, inference, communication = [], [], []
    for r in result["fig6"]:
        labels.append(f"{r['model'][:9]}\n{r['where']}{' TLS' if r['tls'] else ''}")
        inference.append(r["inference_ms"])
        communication.append(r["communication_ms"])
    ax.bar(labels, inference, label="inference")
    ax.bar(labels, communication, bottom=inference, label="communication")
    ax.set(ylabel="ms", title="seed 002 Fig. 6: TLS, inside/outside the enclave")
    ax.tick_params(axis="x", labelsize=6)
    ax.legend(fontsize=8)
    ax = axes[1][1]
    t1 = result["table1"]["rows"]
    policies = list(dict.fromkeys(r["policy"] for r in t1))
    for k, degree in enumerate(("high", "low")):
        values = [
            next((r.get("p99_ms", 0) for r in t1 if r["policy"] == p and r["degree"] == degree), 0) for p in policies
        ]
        ax.bar([i + 0.4 * k for i in range(len(policies))], values, 0.4, label=f"{degree} interference")
    ax.set_xticks([i + 0.2 for i in range(len(policies))], policies, fontsize=8)
    ax.set(ylabel="P99 ms", title="seed 002 Table 1: P99 under EPC interference (emulated)")
    ax.legend(fontsize=8)
    ax = axes[1][2]
    for speed, colour in ((1.0, "tab:blue"), (0.3, "tab:red")):
        rows = [r for r in result["fig7"] if r["enclave_speed"] == speed]
        ax.plot(
            [r["replicas"] for r in rows],
            [r["throughput_per_s"] for r in rows],
            marker="o",
            c=colour,
            label=f"throughput, enclave speed {speed}",
        )
    ax.set(xlabel="enclave replicas", ylabel="requests/s", title="seed 002 Fig. 7: scaling (2 cores)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(progress: Progress, *, quick: bool = False, parts: str | None = None, result_file: Path) -> dict[str, Any]:
    """Every part, or only ``parts`` (comma-separated) with the others kept from ``result_file``."""
    from serdab.errors import ServeConfigError

    chosen = [p.strip() for p in parts.split(",")] if parts else list(PARTS)
    unknown = sorted(set(chosen) - set(PARTS))
    if unknown:
        raise ServeConfigError(f"unknown part {unknown[0]!r}; parts: {', '.join(PARTS)}")
    previous = None
    if parts:
        try:
            previous = json.loads(result_file.read_text())
        except (OSError, ValueError):
            raise ServeConfigError(f"--parts keeps the other parts from {result_file}, which cannot be read") from None
        if previous.get("quick") != quick:
            raise ServeConfigError(f"{result_file} holds a {'quick' if previous.get('quick') else 'full'} run")
    return run_serving_bench(quick, progress=progress, parts=chosen, previous=previous)


def report(result: dict[str, Any]) -> list[Any]:
    s1, overhead = result["seed001"], result["overhead"]
    start, channel, seq = s1["start_s"], s1["channel"], s1["sequential"]
    lines: list[Any] = [
        f"gateway overhead at p50: {overhead['overhead_p50_ms']:.3f} ms ({overhead['direct_p50_ms']:.2f} ms direct, "
        f"{overhead['gateway_p50_ms']:.2f} ms through the gateway)",
    ]
    if "legacy_overhead_p50_ms" in overhead:
        lines.append(
            f"forwarder, side by side in one run: h11 {overhead['h11_overhead_p50_ms']:.3f} ms, the old "
            f"hand-written one {overhead['legacy_overhead_p50_ms']:.3f} ms (gateways alone in front of one replica)"
        )
    if result.get("tensors"):
        table = new_table(
            f"{result['tensors'][0]['model']}: a request's cost beyond the replica's queue + inference time "
            "(Server-Timing), through the gateway, one at a time",
            ("protocol", "path", "e2e p50 ms", "inference p50 ms", "beyond p50 ms", "beyond p90 ms"),
            left=("protocol", "path"),
        )
        for r in result["tensors"]:
            table.add_row(
                r["protocol"],
                r["path"],
                f"{r['e2e_p50_ms']:.1f}",
                f"{r['inference_p50_ms']:.1f}",
                f"{r['beyond_inference_p50_ms']:.2f}",
                f"{r['beyond_inference_p90_ms']:.2f}",
            )
        lines.append(table)
    lines += [
        f"start time: enclave replica {start['enclave']:.2f} s, public {start['public']:.2f} s; channel: "
        f"enclave TLS {channel['enclave_tls_mb_s']:.0f} MB/s, public plain {channel['public_plain_mb_s']:.0f} MB/s",
        f"{s1['model']} one at a time: secure p50 {seq['secure_p50_ms']:.1f} ms, public "
        f"{seq['public_p50_ms']:.1f} ms ({100 * seq['secure_over_public']:+.1f}%)",
    ]
    table = new_table(
        f"seed 001 Fig. 3: {s1['model']}, threads x 2 requests, batch 2",
        ("kind", "threads", "min ms", "mean ms", "max ms"),
        left=("kind",),
    )
    for r in s1["fig3"]:
        table.add_row(r["kind"], str(r["threads"]), f"{r['min_ms']:.1f}", f"{r['mean_ms']:.1f}", f"{r['max_ms']:.1f}")
    lines.append(table)
    table = new_table(
        "seed 001 Fig. 5: mixed privacy, 8 threads",
        ("% secure", "secure mean ms", "secure max ms", "public mean ms", "public max ms", "req/s"),
    )
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
    lines.append(table)
    table = new_table(
        "seed 001 Table 1: memory (MiB)", ("process", "peak at start", "mean under light load"), left=("process",)
    )
    for kind, value in s1["memory_light_load_mib"].items():
        table.add_row(kind, f"{s1['memory_startup_peak_mib'].get(kind, float('nan')):.0f}", f"{value:.0f}")
    lines.append(table)
    table = new_table(
        "seed 002 Fig. 6: one request, set-up connection, straight to the replica",
        ("model", "where", "TLS", "inference ms", "communication ms", "e2e ms", "connect ms"),
        left=("model", "where", "TLS"),
    )
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
    lines.append(table)
    t1 = result["table1"]
    load = (
        f"{t1['rate_per_s']:.1f}/s Poisson = {100 * t1['offered_fraction']:.0f}% of the measured capacity "
        f"{t1['capacity_per_s']:.1f}/s"
        if "capacity_per_s" in t1
        else f"{t1['rate_per_s']:g}/s Poisson"
    )
    table = new_table(
        f"seed 002 Table 1: {t1['model']}, 3 enclave replicas, {load} for {t1['duration_s']:.0f} s, "
        f"interference on h1 in {len(t1['windows_s'])} windows (emulated EPC)",
        ("policy", "interference", "p50 ms", "p99 ms", "max ms", "p50 before it ms", "errors"),
        left=("policy", "interference"),
    )
    for r in t1["rows"]:
        table.add_row(
            r["policy"],
            r["degree"],
            f"{r.get('p50_ms', float('nan')):.1f}",
            f"{r.get('p99_ms', float('nan')):.1f}",
            f"{r.get('max_ms', float('nan')):.1f}",
            f"{r.get('before_interference_p50_ms', float('nan')):.1f}" + (" SATURATED" if r.get("saturated") else ""),
            str(r["errors"]),
        )
    lines.append(table)
    comparison = t1.get("comparison", {})
    if "refused" in comparison:
        lines.append(f"policies not compared: {comparison['refused']}")
    for key, value in comparison.items():
        if key != "refused":
            lines.append(f"{key.replace('_', ' ')}: {100 * value:+.0f}%")
    table = new_table(
        "seed 002 Fig. 7: enclave replicas (closed loop, 6 threads; 2 cores)",
        ("replicas", "enclave speed", "req/s", "p50 ms", "p99 ms"),
    )
    for r in result["fig7"]:
        table.add_row(
            str(r["replicas"]),
            f"{r['enclave_speed']:g}",
            f"{r['throughput_per_s']:.1f}",
            f"{r.get('p50_ms', float('nan')):.1f}",
            f"{r.get('p99_ms', float('nan')):.1f}",
        )
    lines.append(table)
    return lines
