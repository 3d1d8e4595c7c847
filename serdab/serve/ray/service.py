"""``RayService``: the key service, the replica image and both Serve applications, started and
stopped together; the ``ray`` engine behind ``serdab.serve.engine``."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray import serve

from serdab.choices import RayIngress
from serdab.raycluster import ENCLAVE_RESOURCE, check_ray_address
from serdab.serve.config import ServeConfig
from serdab.serve.engine import ServingEngine
from serdab.serve.ray.apps import build_public, build_secure
from serdab.serve.ray.args import BuilderArgs
from serdab.serve.ray.compat import HAPROXY_ENV, running_replicas
from serdab.serve.ray.deployments import SECURE_PREFIX

__all__ = ["RayService"]


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _cluster_ingress() -> RayIngress:
    """The front door a running Ray cluster serves with: HAProxy where its nodes run with
    ``RAY_SERVE_ENABLE_HA_PROXY`` set (a Ray task sees its node's environment), else Ray's Python proxy."""

    def read() -> str:
        return os.environ.get(HAPROXY_ENV, "")

    flag = ray.get(ray.remote(num_cpus=0)(read).remote(), timeout=60)
    return RayIngress.HAPROXY if flag.lower() in ("1", "true") else RayIngress.PROXY


def _proxy_location(ingress: str) -> str:
    """A front door on every node, except HAProxy on nodes that share a machine: each would bind the same
    ports (Ray's Python proxies share theirs with SO_REUSEPORT; HAProxy does not), so only the head's runs."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    shared = len({n["NodeManagerAddress"] for n in alive}) < len(alive)
    return "HeadOnly" if ingress == "haproxy" and shared else "EveryNode"


def _run_app(app: Any, name: str, route_prefix: str, ingress: str) -> None:
    """``serve.run`` here, or with the HAProxy ingress in a Ray task: Ray Serve checks that HAProxy is on
    (for the ingress-router hook) in the process that deploys, and only the cluster's processes have it."""
    if ingress != "haproxy":
        serve.run(app, name=name, route_prefix=route_prefix, blocking=False)
        return

    # one call per worker process: a reused worker would keep its Serve client to an earlier controller;
    # the app travels as an argument (through the object store), not in the closure, since a model's
    # weights would push the function past Ray's size limit
    task = ray.remote(num_cpus=0, max_calls=1, runtime_env={"env_vars": {HAPROXY_ENV: "1"}})(_deploy)
    ray.get(task.remote(app, name, route_prefix))


def _deploy(app: Any, name: str, route_prefix: str) -> None:
    serve.run(app, name=name, route_prefix=route_prefix, blocking=False)


def _wait_gone(actor: str, namespace: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(actor, namespace=namespace)
        except ValueError:
            return
        time.sleep(0.2)


class RayService(ServingEngine):
    """The key service, the replica image and both Serve applications, started and stopped together."""

    handlers_after_start = True  # Ray's driver installs a SIGTERM handler of its own when it starts
    starting = "starting Ray, the key service and the Serve applications"

    def __init__(self, config: ServeConfig, log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.log = log or (lambda _: None)
        self.ingress = config.ray.ingress  # "auto" resolved in start()
        self.port = config.port or _free_port(config.host)  # Ray Serve binds a port it is given
        self.work_dir = Path(tempfile.mkdtemp(prefix="serdab-ray-serve-"))
        self.trust_chain: Any = None
        self.model_name = config.model
        self._owns_ray = False

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def replica_counts(self) -> dict[str, int]:
        """Running replicas per kind (Ray Serve's own count; not the route or front deployments beside them)."""
        counts = running_replicas()
        return {"enclave": counts.get("enclave", 0), "public": counts.get("public", 0)}

    def doors(self) -> list[str]:
        return [
            f"front    {self.url}  (Ray Serve's {self.ingress} ingress; secure requests sealed to the enclaves "
            f"at {self.url}{SECURE_PREFIX})"
        ]

    def _start(self) -> None:
        from serdab.models.load import load_model
        from serdab.serve.trust import ServiceTrust

        o = self.config
        address = o.ray.address
        requested = RayIngress(o.ray.ingress)
        starts_ray = not ray.is_initialized() and address == "local"
        self.ingress = RayIngress.HAPROXY if requested is RayIngress.AUTO and starts_ray else requested
        if not ray.is_initialized():
            init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
            init["address"] = address  # "local" starts a new Ray here even where RAY_ADDRESS names another
            if address == "local":  # one node standing for one host with a TEE; each enclave replica takes it
                init["resources"] = {ENCLAVE_RESOURCE: float(max(1, o.secure))}
            if self.ingress == "haproxy":  # read by the Serve controller Ray starts; a running cluster decides itself
                os.environ[HAPROXY_ENV] = "1"
            try:
                check_ray_address(address)
                ray.init(**init)
            except (ConnectionError, ValueError) as exc:
                from serdab.errors import ServeConfigError

                raise ServeConfigError(f"{exc} (start one with `ray start --head`, or use --address local)") from None
            finally:
                os.environ.pop(HAPROXY_ENV, None)
            self._owns_ray = True
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        if self.ingress is RayIngress.AUTO:
            self.ingress = _cluster_ingress()
        loaded = load_model(o.model)
        self.model_name = loaded.name
        model_file = self.work_dir / f"{loaded.name}.onnx"
        model_file.write_bytes(loaded.proto.SerializeToString())
        serve.start(http_options={"host": o.host, "port": self.port}, proxy_location=_proxy_location(self.ingress))
        self.log(f"Ray Serve on {self.url} ({self.ingress} ingress)")
        if o.wants_enclaves():
            self.log("starting the key service in an enclave (simulated TEE); deploying the enclave application")
            self.trust_chain = ServiceTrust.start(self.model_name, model_file.read_bytes(), self.work_dir)
            trust_file = self.work_dir / "serve-trust.json"
            trust_file.write_text(json.dumps(self.trust()))
            secure = build_secure(
                self._args("enclave", o.secure, image=str(self.trust_chain.image.path), trust=str(trust_file))
            )
            _run_app(secure, "secure", SECURE_PREFIX, self.ingress)
        _run_app(build_public(self._args("public", o.public, model=str(model_file))), "public", "/", self.ingress)
        self._wait_running()

    def _wait_running(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = serve.status()
            states = {name: str(app.status) for name, app in status.applications.items()}
            if states and all(s.endswith("RUNNING") for s in states.values()):
                return
            failed = [f"{n}: {a.message}" for n, a in status.applications.items() if str(a.status).endswith("FAILED")]
            if failed:
                from serdab.errors import ReplicaError

                raise ReplicaError("Ray Serve could not start the service: " + "; ".join(failed))
            time.sleep(0.2)
        from serdab.errors import ReplicaError

        raise ReplicaError(f"Ray Serve applications not running after {timeout_s:.0f} s")

    def _args(self, kind: str, replicas: int, **extra: Any) -> BuilderArgs:
        """What `serdab serve` hands a builder: this configuration's part for one kind of replica."""
        o = self.config
        scaling = o.autoscale.get(kind)
        return BuilderArgs(
            model_name=self.model_name,
            replicas=replicas,
            autoscale=(scaling.min_replicas, scaling.max_replicas) if scaling else None,
            cooldown_s=scaling.cooldown_s if scaling else 15.0,
            balancer=o.balancer,
            threads=o.threads,
            enclave_speed=o.enclave_speed,
            stats_period_s=o.monitor_interval_s,
            look_back_s=o.ray.look_back_s,
            stress_dir=o.ray.stress_dir,
            ingress=RayIngress(self.ingress),
            **extra,
        )

    def trust(self) -> dict[str, Any]:
        if self.trust_chain is None:
            return {"gateway": self.url, "model": self.model_name}
        return self.trust_chain.statement(self.url, self.model_name)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Everything this service started; never hangs on a Ray that is already gone (e.g. its raylet was
        signalled with our process group), and the key service, ours alone, goes first."""
        import threading

        if self.trust_chain is not None:
            self.trust_chain.close()
        if ray.is_initialized():
            stopping = threading.Thread(target=serve.shutdown, daemon=True)
            stopping.start()
            stopping.join(timeout_s)
            if not self._owns_ray:  # a shared Ray: the next service must not find this one's controller
                _wait_gone("SERVE_CONTROLLER_ACTOR", "serve", timeout_s)
        if self._owns_ray:
            ray.shutdown()
        shutil.rmtree(self.work_dir, ignore_errors=True)
