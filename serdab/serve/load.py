"""Load generation against a gateway: closed loop as seed 001 does (N threads, K requests each) or
open loop with Poisson arrivals as S3ML does; secure and public requests mixed in any proportion.

Open-loop latency is measured from each request's scheduled arrival, not from when a thread got
to it, so a saturated server shows its queueing (no coordinated omission). By default each
worker first sets its session up off the clock (a secure client attests the key service and an
enclave once: ~0.1 s of CPU that would otherwise sit in the first requests); ``warmup=False``
(`serdab load --cold`) counts it. Each worker thread has
its own client; with ``fresh_connections`` every request opens a new connection, so the gateway
balances secure traffic (routed by connection) per request.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from serdab.serve.client import Client

__all__ = ["Sample", "closed_loop", "open_loop", "summarise"]


@dataclass(frozen=True)
class Sample:
    start_s: float  # since the run began
    latency_s: float
    secure: bool
    ok: bool
    error: str = ""


def _client(url: str, trust: Mapping[str, Any] | None, model: str | None) -> Client:
    return Client(url, trust=trust, model=model, retries=0)


def _one(client: Client, x: np.ndarray, secure: bool) -> str:
    try:
        client.infer(x, secure=secure)
    except Exception as exc:  # noqa: BLE001 - every failure is a counted, reported sample
        return f"{type(exc).__name__}: {exc}"[:200]
    return ""


def closed_loop(
    url: str,
    x: np.ndarray,
    *,
    threads: int,
    requests: int,
    secure_fraction: float = 0.0,
    trust: Mapping[str, Any] | None = None,
    model: str | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    warmup: bool = True,
    fresh_connections: bool = False,
) -> tuple[list[Sample], float]:
    """Each of ``threads`` sends ``requests`` requests back to back; (samples, wall seconds). With
    ``warmup`` each thread first sets its session up (attestation, connections) off the clock; with
    ``fresh_connections`` each request opens a new connection (secure traffic is balanced per connection)."""
    rng = np.random.default_rng(seed)
    kinds = rng.random((threads, requests)) < secure_fraction
    samples: list[Sample] = []
    lock = threading.Lock()
    total = threads * requests
    ready = threading.Barrier(threads)
    begin = time.perf_counter()

    def worker(k: int) -> None:
        nonlocal begin
        with _client(url, trust, model) as client:
            if warmup:
                for secure in {bool(v) for v in kinds[k]}:
                    _one(client, x, secure)
                if ready.wait() == 0:
                    begin = time.perf_counter()
                ready.wait()
            for secure in kinds[k]:
                started = time.perf_counter()
                error = _one(client, x, bool(secure))
                sample = Sample(started - begin, time.perf_counter() - started, bool(secure), not error, error)
                with lock:
                    samples.append(sample)
                    if progress:
                        progress(len(samples), total)
                if fresh_connections:
                    client.reconnect()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    return samples, time.perf_counter() - begin


def open_loop(
    url: str,
    x: np.ndarray,
    *,
    rate_per_s: float,
    duration_s: float,
    secure_fraction: float = 0.0,
    trust: Mapping[str, Any] | None = None,
    model: str | None = None,
    workers: int = 32,
    fresh_connections: bool = True,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    warmup: bool = True,
) -> tuple[list[Sample], float]:
    """Poisson arrivals at ``rate_per_s`` for ``duration_s``; (samples, wall seconds). With ``warmup``
    every worker sets its session up (attestation, first connection) before the first arrival."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate_per_s, size=int(rate_per_s * duration_s * 1.5) + 16)
    arrivals = np.cumsum(gaps)
    arrivals = arrivals[arrivals < duration_s]
    kinds = rng.random(len(arrivals)) < secure_fraction
    jobs: queue.Queue[tuple[float, bool] | None] = queue.Queue()
    samples: list[Sample] = []
    lock = threading.Lock()
    ready = threading.Barrier(workers + 1)

    def worker() -> None:
        client = _client(url, trust, model)
        try:
            if warmup:
                for secure in {bool(k) for k in kinds}:
                    _one(client, x, secure)
            ready.wait()
            while (job := jobs.get()) is not None:
                due, secure = job
                error = _one(client, x, secure)
                sample = Sample(due, time.perf_counter() - begin - due, secure, not error, error)
                with lock:
                    samples.append(sample)
                    if progress:
                        progress(len(samples), len(arrivals))
                if fresh_connections:
                    client.reconnect()
        finally:
            client.close()

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in pool:
        t.start()
    ready.wait()
    begin = time.perf_counter()
    for due, secure in zip(arrivals, kinds, strict=True):
        wait = begin + due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        jobs.put((float(due), bool(secure)))
    for _ in pool:
        jobs.put(None)
    for t in pool:
        t.join()
    return samples, time.perf_counter() - begin


def summarise(samples: list[Sample], wall_s: float) -> dict[str, Any]:
    """Latency percentiles (ms), throughput and errors, overall and per kind."""

    def stats(rows: list[Sample]) -> dict[str, Any]:
        ok = np.array([s.latency_s for s in rows if s.ok]) * 1000
        out: dict[str, Any] = {"requests": len(rows), "errors": sum(1 for s in rows if not s.ok)}
        if len(ok):
            out.update(
                {
                    "min_ms": float(ok.min()),
                    "mean_ms": float(ok.mean()),
                    "p50_ms": float(np.percentile(ok, 50)),
                    "p95_ms": float(np.percentile(ok, 95)),
                    "p99_ms": float(np.percentile(ok, 99)),
                    "max_ms": float(ok.max()),
                }
            )
        return out

    summary = {
        "wall_s": wall_s,
        "throughput_per_s": sum(1 for s in samples if s.ok) / wall_s if wall_s else 0.0,
        "all": stats(samples),
    }
    for name, secure in (("secure", True), ("public", False)):
        rows = [s for s in samples if s.secure == secure]
        if rows:
            summary[name] = stats(rows)
    errors = [s.error for s in samples if not s.ok]
    if errors:
        summary["first_errors"] = sorted(set(errors))[:5]
    return summary
