"""Test doubles that ship with the package: synthetic workloads, planning problems, documents, a link attacker.

Used by the test suite (planner vs brute force, verifier failures) and by `serdab bench
placement` (planner speed at M = 100 blocks), so both exercise the same generators.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
from typing import Any

import numpy as np

from serdab.cluster import Cluster
from serdab.crypto import cert_der, issue_certificate, new_key
from serdab.errors import SerdabError
from serdab.plan import BlindCosts, CostModel, PlanRequest, Workload
from serdab.tee.document import AttestationDocument, sign_document
from serdab.tee.host import HostIdentity

__all__ = ["RecordingProxy", "TamperingProxy", "craft_document", "random_request", "synthetic_workload"]


def synthetic_workload(blocks: int, seed: int = 0, side: int = 224) -> Workload:
    """A CNN-like chain: times and sizes drawn from seeded ranges, resolution halving every M/6 blocks."""
    rng = np.random.default_rng(seed)
    step = max(blocks // 6, 1)
    resolution = tuple((max(side >> min(c // step, 5), 1),) * 2 for c in range(blocks + 1))
    return Workload(
        model=f"synthetic{blocks}",
        block_names=tuple(f"block{i}" for i in range(blocks)),
        block_s=rng.uniform(0.0005, 0.01, blocks),
        params_bytes=rng.integers(0, 5_000_000, blocks),
        peak_bytes=rng.integers(100_000, 5_000_000, blocks),
        boundary_bytes=rng.integers(10_000, 1_000_000, blocks + 1),
        boundary_resolution=resolution,
    )


def random_request(
    rng: random.Random, replicate: bool, max_blocks: int = 5, max_devices: int = 4, blind: bool = False
) -> PlanRequest:
    """A small random planning problem: identical devices (for replicas), tight memories, sparse links;
    with ``blind``, random blinding costs (some blocks not blindable, sometimes an outsourced W r device)."""
    m = rng.randint(1, max_blocks)
    k = rng.randint(1, max_devices)
    host_names = ["h0", "h1", "h2"][: rng.randint(1, 3)]
    # a few hardware templates, so identical devices (replica candidates) are common
    templates: list[dict[str, Any]] = [
        {
            "kind": kind,
            "trusted": kind in ("tee", "cvm", "cgpu"),
            "speed": rng.choice([0.25, 1.0, 4.0]),
            "memory": rng.choice([100, 1000, 10**9]),
            "paging_factor": rng.choice([None, 3.0]) if kind == "tee" else None,
        }
        for kind in ("tee", "tee", "cpu", "gpu", "cvm", "cgpu")
    ]
    templates[-1] |= {"transfer_overhead": rng.choice([0.0, 0.005]), "transfer_bandwidth": rng.choice([None, 500.0])}
    devices: list[dict[str, Any]] = []
    for i in range(k):
        template = templates[0] if i == 0 else rng.choice(templates)
        devices.append({"name": f"d{i}", "host": rng.choice(host_names), **template})
    hosts = sorted({d["host"] for d in devices})
    links = [
        {"a": a, "b": b, "bandwidth": rng.choice([1e3, 1e5]), "rtt": rng.choice([0.0, 0.01])}
        for i, a in enumerate(hosts)
        for b in hosts[i + 1 :]
        if rng.random() < 0.8
    ]
    cluster = Cluster.model_validate(
        {"source": "d0", "devices": devices, "links": links, "local": {"bandwidth": 1e6, "rtt": 0.001}}
    )
    block_s = np.array([rng.choice([0.01, 0.02, 0.05, 0.1, 0.3]) for _ in range(m)])
    workload = Workload(
        model="random",
        block_names=tuple(f"b{i}" for i in range(m)),
        block_s=block_s,
        params_bytes=np.array([rng.choice([0, 50, 200]) for _ in range(m)]),
        peak_bytes=np.array([rng.choice([10, 60]) for _ in range(m)]),
        boundary_bytes=np.array([rng.choice([10, 100, 1000]) for _ in range(m + 1)]),
        boundary_resolution=tuple(None for _ in range(m + 1)),
        blind=_random_blind(rng, block_s, cluster) if blind else None,
    )
    allowed = (False, *(rng.random() < 0.6 for _ in range(m)))
    return PlanRequest(
        CostModel(workload, cluster),
        allowed,
        chunk=rng.choice([1, 2, 3, 10, 1000]),
        policy="random",
        trusted_tail=rng.random() < 0.2,
        replicate=replicate,
    )


def _random_blind(rng: random.Random, block_s: np.ndarray, cluster: Cluster) -> BlindCosts:
    m = len(block_s)
    untrusted = [d.name for d in cluster.devices if not d.trusted]
    mode = rng.choice(["in-stream", "pool", "outsourced"] if len(untrusted) > 1 else ["in-stream", "pool"])
    return BlindCosts(
        mode=mode,
        integrity=rng.random() < 0.5,
        enclave_s=block_s * np.array([rng.choice([0.05, 0.2, 1.5]) for _ in range(m)]),
        entry_s=np.array([rng.choice([0.0, 0.001, 0.01]) for _ in range(m)]),
        exit_s=np.array([rng.choice([0.0, 0.001, 0.01]) for _ in range(m)]),
        sent_bytes=np.array([rng.choice([1, 10, 100]) for _ in range(m)], dtype=np.int64),
        returned_bytes=np.array([rng.choice([1, 10, 100]) for _ in range(m)], dtype=np.int64),
        trips=np.array([rng.choice([0, 1, 3]) for _ in range(m)], dtype=np.int64),
        blindable=np.array([rng.random() < 0.85 for _ in range(m)], dtype=bool),
        pool_bytes=np.zeros(m, dtype=np.int64),
        precompute_s=np.zeros(m),
        why_not=tuple("random" for _ in range(m)),
        helper=rng.choice(untrusted) if mode == "outsourced" else None,
    )


def craft_document(
    host: HostIdentity,
    pcrs: dict[int, bytes],
    *,
    nonce: bytes | None = None,
    user_data: bytes | None = None,
    public_key: bytes | None = None,
    time: dt.datetime | None = None,
    leaf_days: int = 1,
    leaf_from: dt.datetime | None = None,
    module_id: str = "sim-test-enc0000",
) -> bytes:
    """A simulated attestation document with chosen fields, for verifier tests (time, validity, PCRs)."""
    time = time or dt.datetime.now(dt.UTC)
    key = new_key()
    leaf = issue_certificate(
        host.host_key, host.host_cert, key.public_key(), module_id, days=leaf_days, now=leaf_from or time
    )
    document = AttestationDocument(
        module_id=module_id,
        timestamp_ms=int(time.timestamp() * 1000),
        pcrs=pcrs,
        certificate=cert_der(leaf),
        cabundle=[cert_der(host.root_cert), cert_der(host.host_cert)],
        public_key=public_key,
        user_data=user_data,
        nonce=nonce,
    )
    return sign_document(document, key)


class TamperingProxy:
    """A man in the middle on one pipeline link: forwards messages, and does one bad thing to one of them.

    ``action`` is "tamper" (flip a ciphertext byte), "replay" (send it twice) or "drop" (never send
    it), applied to data message number ``at`` (0-based, after the link's hello). Stop with ``close``.
    """

    def __init__(self, target: tuple[str, int], action: str, at: int = 2) -> None:
        import socket
        import threading

        if action not in ("tamper", "replay", "drop"):
            raise ValueError(f"action must be tamper, replay or drop, not {action!r}")
        self.target, self.action, self.at = target, action, at
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        from serdab.runtime.wire import connect, recv_message, send_message

        try:
            inbound, _ = self.listener.accept()
        except OSError:
            return
        outbound = None
        try:
            outbound = connect(self.target)
            send_message(outbound, recv_message(inbound) or {})  # the hello
            index = 0
            while (message := recv_message(inbound)) is not None:
                if index == self.at:
                    self.done.set()
                    if self.action == "drop":
                        index += 1
                        continue
                    if self.action == "tamper":
                        ct = bytearray(message["ct"])
                        ct[len(ct) // 2] ^= 0x01
                        message = {**message, "ct": bytes(ct)}
                    if self.action == "replay":
                        send_message(outbound, message)
                send_message(outbound, message)
                index += 1
        except (OSError, SerdabError):
            pass  # either end hung up (the run stopped on what this proxy did): the attack is over
        finally:
            inbound.close()
            if outbound is not None:
                outbound.close()

    def close(self) -> None:
        self.listener.close()


class RecordingProxy:
    """A TCP man in the middle that forwards both ways and keeps every byte it saw (what a compromised
    front door, proxy or network could read). ``seen()`` is everything, both directions. Stop with ``close``."""

    def __init__(self, target: tuple[str, int]) -> None:
        import socket
        import threading

        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        self._sockets: list[Any] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{self.address[0]}:{self.address[1]}"

    def seen(self) -> bytes:
        with self._lock:
            return b"".join(self._chunks)

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                inbound, _ = self.listener.accept()
            except OSError:
                return
            try:
                outbound = socket.create_connection(self.target)
            except OSError:
                inbound.close()
                continue
            self._sockets += [inbound, outbound]
            for a, b in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: Any, sink: Any) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    self._chunks.append(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(2)

    def close(self) -> None:
        self.listener.close()
        for s in self._sockets:
            s.close()
