"""The Ray executor: each dataflow engine as a Ray actor on the node that holds its device.

An optional extra (``pip install 'serdab[ray]'``); nothing on the default path imports this
module. The application manager is unchanged: it still deploys, attests, wires and recovers,
and only asks the executor to put a worker on a device. Here that is a small actor pinned by a
custom resource (``serdab_device_<device>``, or ``serdab_host_<host>`` for every device of a
cluster-file host) that runs ``LocalExecutor`` on its node: the same enclave launch through
``serdab.tee``, the same attestation to the manager and the key service. The enclave image and
an untrusted stage's ONNX file travel to the node as bytes (the image is measured again when it
is launched, so a node cannot substitute its own). Frames never touch Ray's object store: they
go worker to worker over the transmission operators' TCP links, AES-GCM-sealed per hop, exactly
as with the local executor; Ray carries only the control calls (start, alive, stop).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
from cryptography import x509

from serdab.cluster import Cluster
from serdab.errors import TeeError
from serdab.proc import log_tail
from serdab.raycluster import TEE_BACKEND_ENV, check_ray_address, device_resource, host_resource, node_resources
from serdab.runtime.executor import Executor, LocalExecutor, WorkerHandle, WorkerSpec
from serdab.tee.image import pack_image, unpack_image

__all__ = ["EngineAgent", "RayExecutor"]

ALIVE_CACHE_S = 0.5  # the manager polls liveness every 0.1 s; one actor call per worker per half second is plenty
RESOURCE_SHARE = 0.001  # a worker takes a sliver of its device's resource, so a restart never waits for the old one


class EngineAgent:
    """Runs on the device's node: launches one dataflow engine there and answers for it."""

    def __init__(self, tee_backend: str) -> None:
        # a node knows its own TEE hardware: SERDAB_TEE_BACKEND there overrides the driver's choice
        self.local = LocalExecutor(os.environ.get(TEE_BACKEND_ENV) or tee_backend)
        self.dir = Path(tempfile.mkdtemp(prefix="serdab-ray-engine-"))
        self.handle: WorkerHandle | None = None

    def start(self, spec: WorkerSpec, image: bytes | None, stage: bytes | None) -> int | None:
        log_path = self.dir / "worker.log"
        extra: list[str] = []
        enclave_image = None
        if image is not None:
            enclave_image = unpack_image(image, self.dir / "image")
        if stage is not None:
            stage_path = self.dir / "stage.onnx"
            stage_path.write_bytes(stage)
            extra = ["--stage-file", str(stage_path)]
        local = replace(spec, log_path=log_path, enclave_image=enclave_image, extra_args=tuple(extra))
        self.handle = self.local.start(local)
        return self.handle.pid

    def alive(self) -> bool:
        return self.handle is not None and self.handle.alive()

    def roots(self) -> list[bytes]:
        from cryptography.hazmat.primitives.serialization import Encoding

        return [cert.public_bytes(Encoding.PEM) for cert in self.local.simulated_roots()]

    def log_tail(self) -> str:
        return log_tail(self.dir / "worker.log")

    def stop(self) -> None:
        if self.handle is not None:
            self.local.stop(self.handle)
        self.local.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class _RayHandle(WorkerHandle):
    spec: WorkerSpec
    actor: Any
    worker_pid: int | None
    _alive: bool = True
    _checked: float = 0.0

    @property
    def pid(self) -> int | None:
        return self.worker_pid

    def alive(self) -> bool:
        now = time.monotonic()
        if self._alive and now - self._checked >= ALIVE_CACHE_S:
            self._checked = now
            try:
                self._alive = bool(ray.get(self.actor.alive.remote(), timeout=5))
            except (ray.exceptions.RayError, TimeoutError):
                self._alive = False  # the actor (or its node) is gone: so is the worker, as far as we know
        return self._alive


def _joined_here(init: dict[str, Any]) -> bool:
    """Join a Ray cluster running on this machine if there is one (``ray.init(address="auto")`` finds
    it, or says at once that there is none). Kept joined: a driver that disconnects and connects
    again in one process loses its actors."""
    try:
        ray.init(address="auto", **init)
    except ConnectionError:
        return False
    return True


class RayExecutor(Executor):
    """Workers as Ray actors, each placed on the node offering its device's (or host's) resource.

    ``address``: empty (the default, as ``ray.init()`` does: ``RAY_ADDRESS`` or a cluster running on
    this machine, else a new one here), ``auto`` (a running cluster only, ``ray start --head``),
    ``ray://HOST:PORT`` (Ray client), or ``local`` (always a new one-node Ray here). A Ray this
    executor starts offers every device of ``cluster``. Ray is shut down on close only if this
    executor started or connected it.
    """

    name = "ray"

    def __init__(self, address: str = "auto", cluster: Cluster | None = None, tee_backend: str = "simulated") -> None:
        self.tee_backend = tee_backend
        self._owns_ray = False
        if not ray.is_initialized():
            init: dict[str, Any] = {"logging_level": "ERROR", "include_dashboard": False, "log_to_driver": False}
            if not address:
                address = os.environ.get("RAY_ADDRESS", "") or ("connected" if _joined_here(init) else "local")
            if address == "connected":
                pass  # the cluster running here, joined while looking for it
            elif address == "local":
                resources: dict[str, float] = {}
                if cluster is not None:
                    for host in {d.host for d in cluster.devices}:
                        resources.update(node_resources(cluster, host))
                ray.init(address="local", resources=resources, **init)  # a new Ray here, whatever RAY_ADDRESS says
            else:
                try:
                    check_ray_address(address)
                except (ConnectionError, ValueError) as exc:
                    raise TeeError(f"{exc} (start one with `ray start --head`, or use --address local)") from None
                try:
                    ray.init(address=address, **init)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise TeeError(
                        f"no Ray cluster at {address}: {exc} (start one with `ray start --head`, "
                        f"or use --address local)"
                    ) from None
            self._owns_ray = True
        self._agent: Any = ray.remote(num_cpus=0)(EngineAgent)
        self._handles: list[_RayHandle] = []
        self._roots: list[x509.Certificate] | None = None

    @property
    def bind_host(self) -> str:
        """Loopback while every Ray node is this machine; otherwise this node's address."""
        here = ray.util.get_node_ip_address()
        nodes = {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}
        return "127.0.0.1" if nodes <= {here} else here

    def _placement(self, spec: WorkerSpec) -> dict[str, float]:
        offered = ray.cluster_resources()
        for name in (device_resource(spec.device), *(host_resource(h) for h in spec.hosts)):
            if offered.get(name, 0) > 0:
                return {name: RESOURCE_SHARE}
        raise TeeError(
            f"no Ray node offers {device_resource(spec.device)}"
            + (f" or {host_resource(spec.hosts[0])}" if spec.hosts else "")
            + " (start the node with `ray start --resources ...`; see docs/scale-out.md)"
        )

    def start(self, spec: WorkerSpec) -> WorkerHandle:
        resources = self._placement(spec)
        actor = self._agent.options(resources=resources, max_restarts=0).remote(self.tee_backend)
        image = pack_image(spec.enclave_image) if spec.enclave_image is not None else None
        stage = spec.stage_file.read_bytes() if spec.stage_file is not None and image is None else None
        try:
            pid = ray.get(actor.start.remote(spec, image, stage), timeout=120)
        except ray.exceptions.RayError as exc:
            ray.kill(actor)
            cause = getattr(exc, "cause", None) or exc
            raise TeeError(f"cannot start the worker for {spec.device} on Ray: {cause}") from None
        handle = _RayHandle(spec, actor, pid)
        self._handles.append(handle)
        return handle

    def stop(self, handle: WorkerHandle) -> None:
        assert isinstance(handle, _RayHandle)
        # an actor already gone leaves a worker that exits when the manager closes its control channel
        with contextlib.suppress(ray.exceptions.RayError, TimeoutError):
            ray.get(handle.actor.stop.remote(), timeout=10)
        ray.kill(handle.actor)
        if handle in self._handles:
            self._handles.remove(handle)

    def simulated_roots(self) -> list[x509.Certificate]:
        """Every node's simulated root (on one machine they are the same host identity)."""
        if self._roots is None:
            from cryptography.x509 import load_pem_x509_certificate

            roots: dict[bytes, x509.Certificate] = {}
            hosts = [n for n in ray.nodes() if n.get("Alive")]
            for node in hosts:
                probe = self._agent.options(
                    scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                        node["NodeID"], soft=False
                    )
                ).remote(self.tee_backend)
                try:
                    for pem in ray.get(probe.roots.remote(), timeout=60):
                        roots[pem] = load_pem_x509_certificate(pem)
                except (ray.exceptions.RayError, TimeoutError) as exc:  # one line, not Ray's traceback
                    node_id = str(node["NodeID"])[:12]
                    raise TeeError(f"Ray node {node_id} did not say its TEE root: {type(exc).__name__}") from None
                finally:
                    ray.kill(probe)
            self._roots = list(roots.values())
        return list(self._roots)

    def close(self) -> None:
        for handle in list(self._handles):
            self.stop(handle)
        if self._owns_ray and os.environ.get("SERDAB_RAY_KEEP") != "1":
            ray.shutdown()
