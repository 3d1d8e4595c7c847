"""A served model: key service, enclave and public replicas, gateway and autoscaler, started and
stopped together (what `serdab serve` runs and what tests and benchmarks drive).

Order of trust, as in S3ML (seed 002 Fig. 2): the model owner (this process) verifies the key
service's attestation, builds the measured replica image with the model encrypted inside and
registers the model key under a policy naming that image's PCRs; enclave replicas then get the
model key and the service's TLS key from the key service themselves. The owner never hands a
key to a replica, and the gateway only ever sees the service's CA certificate (for health checks).

Emulated hosts: enclave replicas are spread over ``enclave_hosts`` simulated hosts, each with its
own EPC budget (``serdab.tee.epc``), so an interference enclave on one host slows only the
replicas there. Every figure that rests on this says "emulated".
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from serdab import proc
from serdab.errors import ReplicaError, ServeConfigError, TeeError
from serdab.proc import ReadyFile
from serdab.serve.autoscale import AutoscaleState, ScaleInput, decide
from serdab.serve.balancing import HostSample, PagingRate, get_balancer
from serdab.serve.client import service_context
from serdab.serve.config import KINDS, ServeConfig
from serdab.serve.engine import ServingEngine
from serdab.serve.gateway import Gateway, GatewayConfig, ReplicaEntry
from serdab.serve.trust import ServiceTrust

__all__ = ["ModelService", "ReplicaProcess"]


@dataclass
class ReplicaProcess:
    id: str
    kind: str
    host: str
    port: int
    pid: int | None
    start_s: float  # launch to serving: process, (attestation, key release,) model load
    stop: Callable[[], None]
    alive: Callable[[], bool]
    grpc_port: int | None = None


class ModelService(ServingEngine):
    """The gateway engine: Serdab's gateway in front of replica processes."""

    starting = "starting key service, replicas and gateway"

    def __init__(
        self, config: ServeConfig, work_dir: Path | None = None, log: Callable[[str], None] | None = None
    ) -> None:
        self.config = config
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="serdab-serve-"))
        self.log = log or (lambda _: None)
        self.replicas: dict[str, ReplicaProcess] = {}
        self.stress: dict[str, Any] = {}
        self.start_times: dict[str, list[float]] = {k: [] for k in KINDS}
        self.decisions: list[dict[str, Any]] = []
        self.restarts: list[dict[str, Any]] = []
        self.extras: list[ReplicaProcess] = []  # started for benchmarks, not behind the gateway
        self.gateway: Gateway | None = None
        self._backends: dict[str, Any] = {}
        self._trust: ServiceTrust | None = None
        self.service_ssl: ssl.SSLContext | None = None  # trusts the service CA only (health, stats)
        self._counter = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._autoscaler: threading.Thread | None = None
        self._paging: dict[str, PagingRate] = {}

    # --- start and stop -----------------------------------------------------------------------------
    def _start(self) -> None:
        from serdab.models.load import load_model

        o = self.config
        loaded = load_model(o.model)
        self.model_name = loaded.name
        model = loaded.proto.SerializeToString()
        self._model_file = self.work_dir / f"{loaded.name}.onnx"
        self._model_file.write_bytes(model)
        if o.wants_enclaves():
            self._start_trust(model)
        policies = {}
        for kind in KINDS:
            policies[kind] = get_balancer(o.balancer_for(kind))
        self.admin_token = secrets.token_hex(24)
        self.gateway = Gateway(
            policies,
            GatewayConfig(
                host=o.host,
                port=o.port,
                secure_port=o.gateway.secure_port,
                monitor_interval_s=o.monitor_interval_s,
                grpc_port=o.gateway.grpc_port if o.gateway.grpc else None,
                secure_grpc_port=o.gateway.secure_grpc_port,
            ),
            enclave_ssl=self.service_ssl,
            host_samples=self._host_samples,
            info={"model": self.model_name, "service": self.service_name},
            admin=self._admin,
            admin_token=self.admin_token,
        )
        self.gateway.start()
        self.log(f"gateway on {self.gateway.url} (secure TLS pass-through on port {self.gateway.secure_port})")
        if self.gateway.grpc_port:
            self.log(
                f"gRPC (OIP) on port {self.gateway.grpc_port} (secure TLS pass-through on port "
                f"{self.gateway.secure_grpc_port})"
            )
        launches = [("enclave", i) for i in range(o.secure)] + [("public", i) for i in range(o.public)]
        for kind, _ in launches:
            self.add_replica(kind)
        self._autoscaler = threading.Thread(target=self._control_loop, name="serve-control", daemon=True)
        self._autoscaler.start()

    @property
    def service_name(self) -> str | None:
        return self._trust.service if self._trust is not None else None

    def _start_trust(self, model: bytes) -> None:
        self.log("starting the key service in an enclave (simulated TEE)")
        self._trust = ServiceTrust.start(self.model_name, model, self.work_dir)
        self.service_ssl = service_context(self._trust.ca_pem)
        self.log(f"model key registered with the key service as {self._trust.service} (policy: replica image PCR0-2)")

    def stop(self) -> None:
        """Stop the autoscaler, gateway, every replica and interference enclave, and the key service."""
        self._stopping.set()
        if self._autoscaler is not None:
            self._autoscaler.join(timeout=10)
        if self.gateway is not None:
            self.gateway.stop()
        for replica in [*self.replicas.values(), *self.extras]:
            with contextlib.suppress(Exception):
                replica.stop()
        self.replicas.clear()
        self.extras.clear()
        for backend, enclave, _, _ in self.stress.values():
            with contextlib.suppress(Exception):
                backend.terminate(enclave)
        self.stress.clear()
        for backend in self._backends.values():
            with contextlib.suppress(Exception):
                backend.close()
        if self._trust is not None:
            with contextlib.suppress(Exception):
                self._trust.close()
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    @property
    def url(self) -> str:
        assert self.gateway is not None, "not started"
        return self.gateway.url

    def replica_counts(self) -> dict[str, int]:
        return {kind: sum(1 for r in self.replicas.values() if r.kind == kind) for kind in KINDS}

    def replica_rows(self) -> list[dict[str, Any]]:
        return [
            {
                "id": r.id,
                "kind": r.kind,
                "host": r.host,
                "port": r.port,
                "grpc_port": r.grpc_port,
                "pid": r.pid,
                "start_s": r.start_s,
            }
            for r in self.replicas.values()
        ]

    def doors(self) -> list[str]:
        assert self.gateway is not None, "not started"
        g = self.gateway
        lines = [f"gateway  {g.url}  (secure: TLS pass-through on port {g.secure_port})"]
        if g.grpc_port:
            lines.append(
                f"gRPC     {g.config.host}:{g.grpc_port}  (secure: TLS pass-through on port {g.secure_grpc_port})"
            )
        return lines

    # --- what a client needs to trust -----------------------------------------------------------------
    def trust(self) -> dict[str, Any]:
        """The owner's statement a client verifies against (handed out of band, never by the gateway)."""
        front = self.gateway.url if self.gateway else None
        if self._trust is None:
            return {"gateway": front, "model": self.model_name}
        return self._trust.statement(front, self.model_name)

    # --- replicas -------------------------------------------------------------------------------------
    def _next_id(self, kind: str) -> str:
        with self._lock:
            self._counter += 1
            return f"{kind}-{self._counter}"

    def _enclave_host(self) -> str:
        count = self.config.gateway.enclave_hosts or max(1, min(3, self.config.secure))
        in_use = [r.host for r in self.replicas.values() if r.kind == "enclave"]
        hosts = [f"h{i + 1}" for i in range(count)]
        return min(hosts, key=lambda h: (in_use.count(h), h))

    def backend(self, host: str) -> Any:
        """The simulated TEE backend of an emulated host (its own EPC budget)."""
        if host not in self._backends:
            from serdab.tee import get_backend

            self._backends[host] = get_backend("simulated")
        return self._backends[host]

    def add_replica(
        self, kind: str, host: str | None = None, tls: bool | None = None, register: bool = True
    ) -> ReplicaProcess:
        """Start a replica and put it behind the gateway. ``tls`` other than the kind's own (enclaves
        TLS, public plain) and ``register=False`` exist for benchmarks that address replicas directly."""
        started = time.monotonic()
        replica = self._launch_enclave(host, tls is not False) if kind == "enclave" else self._launch_public(bool(tls))
        replica.start_s = time.monotonic() - started
        if not register:
            self.extras.append(replica)
            return replica
        self.start_times[kind].append(replica.start_s)
        self.replicas[replica.id] = replica
        assert self.gateway is not None
        self.gateway.add_replica(
            ReplicaEntry(replica.id, kind, ("127.0.0.1", replica.port), replica.host, grpc_port=replica.grpc_port)
        )
        self.log(f"{kind} replica {replica.id} on {replica.host}:{replica.port} ready in {replica.start_s:.2f} s")
        return replica

    def public_tls_files(self) -> tuple[Path, Path]:
        """A self-signed certificate and key for public replicas asked to serve HTTPS (benchmarks)."""
        cert, key = self.work_dir / "public-tls.crt", self.work_dir / "public-tls.key"
        if not cert.exists():
            from serdab.crypto import cert_pem, key_pem, new_key, self_signed_server
            from serdab.validation import write_private

            private = new_key()
            cert.write_bytes(cert_pem(self_signed_server(private, "serdab public replica", ("localhost", "127.0.0.1"))))
            write_private(key, key_pem(private))
        return cert, key

    def _launch_public(self, tls: bool = False) -> ReplicaProcess:
        replica_id = self._next_id("public")
        ready = self.work_dir / f"{replica_id}.ready"
        log = self.work_dir / f"{replica_id}.log"
        extra = []
        if tls:
            cert, key = self.public_tls_files()
            extra = ["--tls-cert", str(cert), "--tls-key", str(key)]
        child = proc.start(
            [
                sys.executable,
                "-m",
                "serdab.serve.replica",
                "--name",
                self.model_name,
                "--model-file",
                str(self._model_file),
                "--ready-file",
                str(ready),
                "--id",
                replica_id,
                "--threads",
                str(self.config.threads),
                *extra,
                *self._grpc_args(),
            ],
            name="public replica",
            log_path=log,
            error=ReplicaError,
        )
        info = child.wait_ready(ReadyFile(ready), self.config.gateway.start_timeout_s, ReplicaError)
        return ReplicaProcess(
            id=replica_id,
            kind="public",
            host="public",
            port=int(info["port"]),
            pid=child.pid,
            start_s=0.0,
            stop=child.stop,
            alive=child.alive,
            grpc_port=info.get("grpc_port"),
        )

    def _grpc_args(self) -> list[str]:
        return ["--grpc-port", "0"] if self.config.gateway.grpc else []

    def _launch_enclave(self, host: str | None = None, tls: bool = True) -> ReplicaProcess:
        if self._trust is None:
            raise ReplicaError("no replica image: the service was started without enclave replicas")
        host = host or self._enclave_host()
        backend = self.backend(host)
        replica_id = self._next_id("enclave")
        args = [
            "--name",
            self.model_name,
            *self._trust.enclave_args(),
            "--speed",
            str(self.config.enclave_speed),
            "--id",
            replica_id,
            "--threads",
            str(self.config.threads),
            *self._grpc_args(),
        ]
        if not tls:
            args.append("--plaintext-benchmark-only")
        enclave = backend.launch(
            self._trust.image.path,
            args,
            env={"OMP_NUM_THREADS": str(self.config.threads)},
            log_path=self.work_dir / f"{replica_id}.log",
        )
        try:
            info = backend.wait_ready(enclave, self.config.gateway.start_timeout_s)
        except TeeError as exc:
            backend.terminate(enclave)
            raise ReplicaError(f"enclave replica did not start: {exc}") from None
        return ReplicaProcess(
            id=replica_id,
            kind="enclave",
            host=host,
            port=int(info["port"]),
            pid=enclave.pid,
            start_s=0.0,
            stop=lambda: backend.terminate(enclave),
            alive=enclave.alive,
            grpc_port=info.get("grpc_port"),
        )

    def remove_replica(self, replica_id: str, drain_s: float = 10.0) -> None:
        """Take a replica out of rotation, let its requests finish (up to ``drain_s``), stop it."""
        replica = self.replicas.pop(replica_id)
        assert self.gateway is not None

        def drain() -> int:
            entry = self.gateway.replicas.get(replica_id) if self.gateway else None
            if entry is None:
                return 0
            entry.draining = True
            return entry.in_flight

        deadline = time.monotonic() + drain_s
        while self.gateway.call(drain) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.gateway.remove_replica(replica_id)
        replica.stop()
        self.log(f"{replica.kind} replica {replica_id} stopped")

    def _admin(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """The owner's operations through the gateway (bearer token): what `serdab stress` calls."""
        if action == "stress":
            host = str(body["host"])
            hosts = {r.host for r in self.replicas.values() if r.kind == "enclave"}
            if host not in hosts:
                raise ServeConfigError(f"no enclave replica runs on host {host!r}; hosts: {', '.join(sorted(hosts))}")
            epc_bytes = int(body["epc_bytes"])
            if not 0 < epc_bytes <= 2**40:
                raise ServeConfigError(f"epc_bytes must be positive, got {epc_bytes}")
            return {"stress": self.start_stress(host, epc_bytes), "emulated": True}
        if action == "unstress":
            name = str(body["name"])
            if name not in self.stress:
                raise ServeConfigError(f"no interference enclave {name!r}; running: {', '.join(self.stress) or 'none'}")
            self.stop_stress(name)
            return {"stopped": name}
        if action == "replicas":
            return {
                "replicas": self.replica_rows(),
                "stress": list(self.stress),
                "decisions": self.decisions[-20:],
            }
        raise ServeConfigError(f"unknown admin action {action!r}: stress, unstress or replicas")

    # --- EPC interference (emulated) ------------------------------------------------------------------
    def start_stress(self, host: str, epc_bytes: int) -> str:
        """Make the interference enclave on ``host`` occupy ``epc_bytes`` of its emulated EPC (S3ML's
        Stress-SGX); the enclave is started on first use and kept, idle, after ``stop_stress``."""
        from serdab.serve.stress import build_stress_image

        name = f"stress-{host}"
        if name not in self.stress:
            image = self.work_dir / "stress-image"
            if not image.exists():
                build_stress_image(self.work_dir)
            control = self.work_dir / f"{name}.bytes"
            control.write_text("0")
            backend = self.backend(host)
            enclave = backend.launch(image, ["--control", str(control)], log_path=self.work_dir / f"{name}.log")
            backend.wait_ready(enclave, 30)
            self.stress[name] = (backend, enclave, host, control)
        self._set_stress(name, epc_bytes)
        self.log(f"EPC interference {name}: {epc_bytes / 2**20:.0f} MiB on {host} (emulated)")
        return name

    def _set_stress(self, name: str, epc_bytes: int) -> None:
        backend, enclave, _, control = self.stress[name]
        tmp = control.with_suffix(".tmp")
        tmp.write_text(str(epc_bytes))
        tmp.replace(control)
        deadline = time.monotonic() + 5
        while backend.epc.stats().resident_bytes.get(enclave.id, 0) != epc_bytes and time.monotonic() < deadline:
            time.sleep(0.005)

    def stop_stress(self, name: str) -> None:
        """The interference ends: its enclave frees its EPC (and stays, idle, for the next window)."""
        self._set_stress(name, 0)

    def _interfering(self, host: str) -> bool:
        return any(h == host and b.epc.stats().resident_bytes.get(e.id, 0) > 0 for b, e, h, _ in self.stress.values())

    def _host_samples(self) -> dict[str, HostSample]:
        now = time.monotonic()
        samples = {}
        for host, backend in list(self._backends.items()):
            stats = backend.epc.stats()
            rate = self._paging.setdefault(host, PagingRate()).sample(stats.page_ins + stats.page_outs, now)
            samples[host] = HostSample(rate, self._interfering(host))
        return samples

    # --- autoscaling ----------------------------------------------------------------------------------
    def _replica_busy(self, replica: ReplicaProcess) -> float | None:
        scheme, verify = ("https", self.service_ssl or True) if replica.kind == "enclave" else ("http", True)
        try:
            reply = httpx.get(f"{scheme}://127.0.0.1:{replica.port}/v1/replica", verify=verify, timeout=2.0)
            return float(reply.json()["busy_s"])
        except (httpx.HTTPError, KeyError, ValueError):
            return None

    def _supervise(self) -> None:
        """A replica whose process died is replaced by a new one of its kind (as a Kubernetes Deployment)."""
        for replica in [r for r in self.replicas.values() if not r.alive()]:
            if self._stopping.is_set():
                return
            self.replicas.pop(replica.id, None)
            assert self.gateway is not None
            self.gateway.remove_replica(replica.id)
            replica.stop()
            self.restarts.append({"t": time.monotonic(), "replica": replica.id, "kind": replica.kind})
            self.log(f"{replica.kind} replica {replica.id} died: starting a replacement")
            try:
                self.add_replica(replica.kind, host=replica.host if replica.kind == "enclave" else None)
            except (ReplicaError, TeeError) as exc:
                self.log(f"could not replace {replica.id}: {exc}")

    def _control_loop(self) -> None:
        states = {kind: AutoscaleState() for kind in self.config.autoscale}
        last_busy: dict[str, tuple[float, float]] = {}
        while not self._stopping.wait(self.config.gateway.autoscale_interval_s):
            self._supervise()
            if not self.config.autoscale or self._stopping.is_set():
                continue
            assert self.gateway is not None
            views = {r["id"]: r for r in self.gateway.snapshot()}
            for kind, config in self.config.autoscale.items():
                mine = [r for r in self.replicas.values() if r.kind == kind]
                in_service = [r for r in mine if views.get(r.id, {}).get("healthy") and views[r.id]["weight"] > 0]
                utilisations = []
                now = time.monotonic()
                for r in in_service:
                    busy = self._replica_busy(r)
                    if busy is None:
                        continue
                    if r.id in last_busy and now > last_busy[r.id][0]:
                        utilisations.append(min(1.0, (busy - last_busy[r.id][1]) / (now - last_busy[r.id][0])))
                    last_busy[r.id] = (now, busy)
                utilisation = sum(utilisations) / len(utilisations) if utilisations else 0.0
                start_s = max(self.start_times[kind][-3:], default=5.0)
                decision, states[kind] = decide(
                    config,
                    ScaleInput(
                        now_s=now,
                        in_service=len(in_service),
                        starting=0,
                        total=len(mine),
                        utilisation=utilisation,
                        start_time_s=start_s,
                    ),
                    states[kind],
                )
                if decision.delta == 0:
                    continue
                self.gateway.scaled(kind, decision.delta)
                self.decisions.append(
                    {
                        "t": now,
                        "kind": kind,
                        "delta": decision.delta,
                        "reason": decision.reason,
                        "replicas": len(mine) + decision.delta,
                    }
                )
                self.log(f"autoscale {kind}: {decision.delta:+d} ({decision.reason})")
                try:
                    if decision.delta > 0:
                        for _ in range(decision.delta):
                            self.add_replica(kind)
                    else:
                        newest = sorted(in_service, key=lambda r: int(r.id.rsplit("-", 1)[1]))[decision.delta :]
                        for r in newest:
                            self.remove_replica(r.id)
                            last_busy.pop(r.id, None)
                except (ReplicaError, TeeError) as exc:
                    self.log(f"autoscale {kind}: {exc}")
