"""Serving on Ray Serve (``serdab serve MODEL --engine ray``): the same replicas, policies and rule.

Two Ray Serve applications: public replicas at ``/`` (OIP v2 and seed 001's ``/predict-public``,
plus ``/v1/gateway``) and enclave replicas at ``/secure``. A public replica runs the replica app
(``serdab.serve.replica``) in-process. An enclave replica is a Ray Serve replica on a node that
offers the ``enclave`` resource (one per node: the node is the host whose EPC it uses) which
launches the measured replica image through ``serdab.tee`` there; the enclave attests to the key
service and gets the model key and the service key exactly as behind the gateway.

Ray's proxy terminates HTTP, so TLS cannot pass through to the enclave as it does at the
gateway's L4 port. Secure requests therefore travel *sealed* (``serdab.serve.sealed``): the
client seals the request to the attested service key, and ``/secure`` forwards only sealed
requests, the attestation document and the service certificate; any plaintext secure route is
refused (403). Ray's proxy, object store and the replica actor see ciphertext only. The replica hands a
sealed request to its enclave as it came, on the enclave's sealed stream (no HTTP or TLS to redo).

Routing: ``SerdabRouter`` wraps the gateway's balancing policies (``serdab.serve.balancing``) as
a Ray Serve request router; replicas report their host, in-flight requests and (enclaves) the
weight the policy's monitoring cycle gave their host as routing stats. The cycle runs in each
enclave replica, not in the router, because Ray Serve runs one router per proxy and per handle:
a decision kept in a router would differ from one router to the next. With Ray Serve's HAProxy
ingress (``ingress="haproxy"``), HAProxy sends each POST straight to the replica that ``ReplicaRoute``
names for it with ``SerdabRouter``'s choice (Ray Serve's ingress-router hook, 2.60 and later; before,
HAProxy balances public replicas and ``SecureFront`` hands secure requests on). Autoscaling:
``SerdabAutoscaling`` is the gateway's rule (``serdab.serve.autoscale``) as a Ray Serve
autoscaling policy. Needs the ``ray`` extra.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import ray
from ray import serve
from ray.serve.config import AutoscalingConfig, AutoscalingPolicy, RequestRouterConfig
from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serdab.choices import RayIngress
from serdab.raycluster import ENCLAVE_RESOURCE, check_ray_address
from serdab.serve.autoscale import AutoscaleConfig, AutoscaleState, ScaleInput, decide
from serdab.serve.balancing import HostSample, ReplicaView, get_balancer
from serdab.serve.sealed import SealedStream
from serdab.tee.image import pack_image, unpack_image
from serdab.web import error_response

__all__ = [
    "SECURE_PREFIX",
    "EnclaveModel",
    "PublicModel",
    "RayServeOptions",
    "RayService",
    "SerdabAutoscaling",
    "SerdabRouter",
]

SECURE_PREFIX = "/secure"
HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"
# what /secure forwards to an enclave: sealed requests and what a client needs to seal to it, nothing in plaintext
SECURE_ROUTES = {
    ("POST", "/v1/sealed"),
    ("GET", "/v1/attestation"),
    ("GET", "/v1/service-certificate"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v1/replica"),
}
REFUSED = (
    f"secure requests travel sealed to an enclave: POST {SECURE_PREFIX}/v1/sealed "
    "(serdab.Client with the owner's trust statement)"
)
# Ray Serve runs user code and a handle's router each on an event loop of its own thread by default; every
# request then crosses threads. Serdab's replicas and router never block their loop (inference runs in a
# thread pool, the enclave is awaited), so they run on the replica's one loop, as Ray's throughput mode does.
# Behind HAProxy a stopping replica stays reachable 30 s by default so that HAProxy can drop it; Ray reloads
# HAProxy's configuration when a replica goes, so a few seconds do, and a service stops in seconds, not 30+.
REPLICA_ENV = {
    "runtime_env": {
        "env_vars": {
            "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
            "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "3",
        }
    }
}
# a deployment in front of the model's replicas (a route or SecureFront): no CPU of its own, many requests at once
FRONT_OPTIONS = {"ray_actor_options": {"num_cpus": 0, **REPLICA_ENV}, "max_ongoing_requests": 64}
# Ray Serve's ingress-router hook (2.60 and later; its LLM stack uses it; private, hence the check)
_HAS_ROUTER_HOOK = hasattr(serve.Application, "_with_ingress_request_router")
FORWARDED_HEADERS = ("content-type", "server-timing", "inference-header-content-length")


def _host_label() -> str:
    """The cluster-file host this node stands for (its ``serdab_host_*`` resource), else its node id."""
    node = ray.get_runtime_context().get_node_id()
    for info in ray.nodes():
        if info["NodeID"] == node:
            for name in info.get("Resources", {}):
                if name.startswith("serdab_host_"):
                    return name.removeprefix("serdab_host_")
    return node[:8]


class _Served:
    """ASGI middleware: counts requests in flight (a routing stat) and names the replica in every answer."""

    def __init__(self, app: Any, replica: str, host: str) -> None:
        self.app, self.in_flight = app, 0
        self.headers = [(b"x-serdab-replica", replica.encode()), (b"x-serdab-host", host.encode())]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def named(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        self.in_flight += 1
        try:
            await self.app(scope, receive, named)
        finally:
            self.in_flight -= 1


@serve.ingress()
class PublicModel:
    """A public replica: the replica app itself is the deployment's ASGI app (no extra hop inside)."""

    def __init__(self, name: str, model: bytes, threads: int, info: dict[str, Any]) -> None:
        from serdab.serve.replica import ModelRunner, create_replica_app

        self.runner = ModelRunner(name, model, threads)
        self.host = _host_label()
        self.id = f"public-{self.host}-{os.getpid()}"
        app = create_replica_app(self.runner, "public", replica_id=self.id)

        async def gateway() -> JSONResponse:
            return JSONResponse(info)

        async def refused() -> JSONResponse:
            return error_response(403, REFUSED)

        app.add_api_route("/v1/gateway", gateway, methods=["GET"])
        app.add_api_route("/predict-secure", refused, methods=["POST"])
        self.served = _Served(app, self.id, self.host)

    def __serve_build_asgi_app__(self) -> Any:
        return self.served

    def record_routing_stats(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "in_flight": self.served.in_flight,
            "paging_pages_per_s": 0.0,
            "interference": False,
            "sampled_at": time.monotonic(),
        }


class FrontInfo:
    """The front door of a service without public replicas: ``/v1/gateway`` only."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info

    async def __call__(self, request: Request) -> Response:
        if request.url.path == "/v1/gateway":
            return JSONResponse(self.info)
        return error_response(
            404, f"this service has no public replicas; secure requests travel sealed to {SECURE_PREFIX}/v1/sealed"
        )


async def _secure_route(request: Request, forward: Any) -> Response:
    """What ``/secure`` lets through to an enclave (sealed requests, attestation, certificate, health)."""
    path = request.url.path.removeprefix(SECURE_PREFIX) or "/"
    if (request.method, path) not in SECURE_ROUTES:
        return error_response(403, f"{request.method} {SECURE_PREFIX}{path}: {REFUSED}")
    status, headers, body = await forward(
        request.method, path, dict(request.query_params), await request.body(), request.headers.get("content-type", "")
    )
    return Response(body, status_code=status, headers=headers)


class SecureFront:
    """With Ray Serve's HAProxy ingress on a Ray without the ingress-router hook (below 2.60): a thin
    ingress that hands each allowed secure request to the enclave replicas through a deployment
    handle, where ``SerdabRouter`` chooses; HAProxy allows no custom router on an ingress itself."""

    def __init__(self, enclaves: Any) -> None:
        self.enclaves = enclaves

    async def __call__(self, request: Request) -> Response:
        async def forward(*args: Any) -> tuple[int, dict[str, str], bytes]:
            status, headers, body = await self.enclaves.forward.remote(*args)
            return int(status), dict(headers), bytes(body)

        return await _secure_route(request, forward)


class _SecureRoutes:
    """ASGI: what ``/secure`` lets through to an enclave (the deployment's own app: no wrapper per request)."""

    def __init__(self, forward: Any) -> None:
        self.forward = forward

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            response = await _secure_route(Request(scope, receive), self.forward)
            await response(scope, receive, send)


class _ChooseReplica:
    """ASGI: ``/internal/route`` answered with the replica ``SerdabRouter`` picks on ``handle``'s deployment."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"].rstrip("/").endswith("/internal/route"):
            async with self.handle.choose_replica(_reserve=False) as selection:
                answer = JSONResponse({"replica_id": selection._replica.replica_id.to_full_id_str()})
        else:
            answer = error_response(404, "this deployment only answers HAProxy's /internal/route")
        await answer(scope, receive, send)


@serve.ingress()
class ReplicaRoute:
    """With Ray Serve's HAProxy ingress: HAProxy asks this deployment which replica takes each POST
    (``/internal/route``, Ray Serve's ingress-router hook) and then sends the request straight to that
    replica. The choice is ``SerdabRouter``'s, on the served deployment's handle, without dispatching
    through it, so HAProxy's speed and the gateway's policies (EPC-aware for enclaves) go together."""

    def __init__(self, handle: Any) -> None:
        self.choose = _ChooseReplica(handle)

    def __serve_build_asgi_app__(self) -> Any:
        return self.choose


def _routed(served: Any, kind: str) -> Any:
    """``served`` with ``ReplicaRoute`` attached as its ingress router (Ray Serve 2.60 and later)."""
    return served._with_ingress_request_router(
        _deployment(ReplicaRoute).options(name=f"{kind}-route", **FRONT_OPTIONS).bind(served)
    )


@serve.ingress()
class EnclaveModel:
    """An enclave replica: launches the measured replica image on this node and forwards sealed traffic."""

    def __init__(
        self,
        name: str,
        image: bytes,
        trust_args: list[str],
        ca_pem: str,
        speed: float,
        threads: int,
        stress_dir: str | None = None,
        balancer: str = "sed",
    ) -> None:
        from serdab.raycluster import TEE_BACKEND_ENV
        from serdab.serve.client import service_context
        from serdab.tee import get_backend

        self.dir = Path(tempfile.mkdtemp(prefix="serdab-ray-replica-"))
        unpack_image(image, self.dir / "image")
        self.host = _host_label()
        self.id = f"enclave-{self.host}-{os.getpid()}"
        self.backend: Any = get_backend(os.environ.get(TEE_BACKEND_ENV) or "simulated")
        args = ["--name", name, *trust_args, "--speed", str(speed), "--id", self.id, "--threads", str(threads)]
        self.enclave = self.backend.launch(
            self.dir / "image", args, env={"OMP_NUM_THREADS": str(threads)}, log_path=self.dir / "replica.log"
        )
        self.stress: Any = None
        try:
            ready = self.backend.wait_ready(self.enclave, 120)
            self._start_stress(stress_dir)
        except BaseException:
            self._stop()
            raise
        self.client = httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{int(ready['port'])}", timeout=120, verify=service_context(ca_pem)
        )
        self.stream = SealedStream(int(ready["sealed_port"])) if ready.get("sealed_port") else None
        self.in_flight = 0
        self._paging: tuple[float, int] | None = None
        self.policy = get_balancer(balancer)
        self.monitor = self.policy.initial()

    def _start_stress(self, folder: str | None) -> None:
        """An idle interference enclave on this host whose EPC follows ``folder/<host>`` (emulated, S3ML sec. 5.1)."""
        if not folder:
            return
        from serdab.serve.stress import build_stress_image

        control = Path(folder) / self.host
        control.parent.mkdir(parents=True, exist_ok=True)
        if not control.exists():
            control.write_text("0")
        image = build_stress_image(self.dir / "stress")
        self.stress = self.backend.launch(image, ["--control", str(control)], log_path=self.dir / "stress.log")
        self.backend.wait_ready(self.stress, 60)

    def __serve_build_asgi_app__(self) -> Any:
        return _SecureRoutes(self.forward)

    async def forward(
        self, method: str, path: str, query: dict[str, str], body: bytes, content_type: str
    ) -> tuple[int, dict[str, str], bytes]:
        """One allowed secure request to this replica's enclave, as it came (ciphertext for a sealed one):
        sealed requests on the enclave's sealed stream, the rest (attestation, certificate, health) over TLS."""
        self.in_flight += 1
        try:
            if (method, path) == ("POST", "/v1/sealed") and self.stream is not None:
                status, content = await self.stream.call(body)
                headers = {"content-type": "application/octet-stream" if status == 200 else "application/json"}
            else:
                reply = await self.client.request(
                    method, path, params=query, content=body, headers={"content-type": content_type}
                )
                status, content = reply.status_code, reply.content
                headers = {k: v for k, v in reply.headers.items() if k.lower() in FORWARDED_HEADERS}
        finally:
            self.in_flight -= 1
        return status, {**headers, "x-serdab-replica": self.id, "x-serdab-host": self.host}, content

    def record_routing_stats(self) -> dict[str, Any]:
        """One monitoring cycle: Ray Serve's controller calls it once per stats period, as S3ML samples paging
        once a second; the weight the policy gives this host travels to every router alike."""
        stats = self.backend.epc.stats()
        pages, now = stats.page_ins + stats.page_outs, time.monotonic()
        last, self._paging = self._paging, (now, pages)
        rate = (pages - last[1]) / (now - last[0]) if last and now > last[0] else 0.0
        interference = self.stress is not None and stats.resident_bytes.get(self.stress.id, 0) > 0
        self.monitor = self.policy.tick({self.host: HostSample(rate, interference)}, self.monitor)
        weight = self.policy.weights(self.monitor).get(self.host, 1.0)
        return {
            "host": self.host,
            "in_flight": self.in_flight,
            "paging_pages_per_s": rate,
            "weight": weight,
            "interference": interference,
            "sampled_at": now,
            "enclave_pid": self.enclave.pid,
        }

    def _stop(self) -> None:
        for enclave in (self.stress, self.enclave):
            if enclave is not None:
                self.backend.terminate(enclave)
        self.backend.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __del__(self) -> None:  # Ray Serve calls it when the replica stops
        self._stop()


class SerdabRouter(RequestRouter):
    """The gateway's balancing policy as a Ray Serve request router.

    Replicas report their host, requests in flight and the weight the policy's monitoring cycle
    gave their host (``record_routing_stats``, one cycle per stats period in each enclave replica),
    so every router, one per proxy and per handle, sheds the same hosts. Ray Serve forwards routing
    stats every second or two, so a host is shed that much later than at the gateway. If every
    candidate is shed the request still goes to one: Ray Serve would otherwise retry it forever,
    where the gateway answers 503.
    """

    def initialize_state(self, balancer: str = "sed", **_: Any) -> None:
        self.policy = get_balancer(balancer)
        self.state = self.policy.initial()

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        views = []
        for replica in candidate_replicas:
            stats = replica.routing_stats or {}
            views.append(
                ReplicaView(
                    replica.replica_id.unique_id,
                    str(stats.get("host", replica.node_id)),
                    int(stats.get("in_flight", 0)),
                    float(stats.get("weight", 1.0)),
                )
            )
        chosen, self.state = self.policy.choose(views, self.state)
        if chosen is None:
            return [candidate_replicas]
        return [[r for r in candidate_replicas if r.replica_id.unique_id == chosen]]


class SerdabAutoscaling:
    """The gateway's autoscaling rule (``serdab.serve.autoscale.decide``) as a Ray Serve autoscaling policy.

    Utilisation is the mean number of requests in flight per replica, capped at 1 (a one-thread
    model server is busy whenever it holds a request); replicas Ray is still starting count as
    starting, so no scale-down happens under them.
    """

    def __init__(
        self,
        target_utilisation: float = 0.6,
        tolerance: float = 0.1,
        cooldown_s: float = 15.0,
        start_time_s: float = 1.0,
    ) -> None:
        self.target = target_utilisation
        self.tolerance = tolerance
        self.cooldown_s = cooldown_s
        self.start_time_s = start_time_s

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        config = AutoscaleConfig(
            min_replicas=ctx.capacity_adjusted_min_replicas,
            max_replicas=max(1, ctx.capacity_adjusted_max_replicas),
            target_utilisation=self.target,
            tolerance=self.tolerance,
            cooldown_s=self.cooldown_s,
        )
        running = len(ctx.running_replicas)
        now = ctx.current_time if ctx.current_time is not None else time.time()
        utilisation = min(1.0, float(ctx.total_num_requests) / running) if running else 0.0
        saved = ctx.policy_state or {}
        state = AutoscaleState(
            saved.get("last_change_s", float("-inf")), saved.get("last_utilisation"), saved.get("last_sample_s")
        )
        target = max(ctx.target_num_replicas, running)
        decision, state = decide(
            config,
            ScaleInput(
                now_s=now,
                in_service=running,
                starting=max(0, target - running),
                total=target,
                utilisation=utilisation,
                start_time_s=self.start_time_s,
            ),
            state,
        )
        desired = max(config.min_replicas, min(config.max_replicas, target + decision.delta))
        return desired, {
            "last_change_s": state.last_change_s,
            "last_utilisation": state.last_utilisation,
            "last_sample_s": state.last_sample_s,
            "reason": decision.reason,
        }


@dataclass
class RayServeOptions:
    model: str
    public: int = 1
    secure: int = 1
    balancer: str = "epc-aware"
    autoscale: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind -> (min, max)
    enclave_speed: float = 1.0
    threads: int = 1
    address: str = "local"
    port: int = 8000
    stats_period_s: float = 1.0  # S3ML samples paging once per second
    cooldown_s: float = 15.0
    look_back_s: float = 30.0  # Ray Serve's window over request metrics for autoscaling
    stress_dir: str | None = None  # emulated EPC interference: one control file per host label (see EnclaveModel)
    ingress: RayIngress = RayIngress.AUTO  # see serdab.choices and docs/scale-out.md


def _deployment(cls: type) -> Any:
    return serve.deployment(cls)


def _scaling(args: dict[str, Any], count: int) -> dict[str, Any]:
    if not args.get("autoscale"):
        return {"num_replicas": count}
    low, high = args["autoscale"]
    policy = AutoscalingPolicy(
        policy_function=SerdabAutoscaling, policy_kwargs={"cooldown_s": float(args.get("cooldown_s", 15.0))}
    )
    return {
        "autoscaling_config": AutoscalingConfig(
            min_replicas=low,
            max_replicas=high,
            initial_replicas=max(low, min(high, count)),
            upscale_delay_s=0,
            downscale_delay_s=0,
            look_back_period_s=float(args.get("look_back_s", 30.0)),
            policy=policy,
        )
    }


def _router(args: dict[str, Any], kind: str) -> RequestRouterConfig:
    balancer = str(args.get("balancer", "sed"))
    if kind != "enclave" and balancer.split(":")[0] == "epc-aware":
        balancer = "sed"  # EPC only matters to enclaves: public replicas get plain SED, as at the gateway
    period = float(args.get("stats_period_s", 1.0))
    config: dict[str, Any] = {
        "request_router_class": SerdabRouter,
        "request_router_kwargs": {"balancer": balancer},
        "request_routing_stats_period_s": period,
    }
    return RequestRouterConfig(**config)


def _info(model_name: str) -> dict[str, Any]:
    return {"model": model_name, "engine": "ray", "secure": "sealed", "secure_prefix": SECURE_PREFIX}


def public_app(args: dict[str, Any]) -> Any:
    """The public application (Serve config ``import_path: serdab.serve.ray_engine:public_app``).

    ``args``: ``model`` (zoo name or .onnx path), ``replicas``, optional ``autoscale`` [min, max],
    ``balancer``, ``threads``, ``stats_period_s``, ``cooldown_s``, ``look_back_s``, ``model_name``, ``ingress``
    (``proxy``, Ray Serve's Python proxy, or ``haproxy``: HAProxy balances public replicas itself).
    With no public replica it is a front door that only answers ``/v1/gateway``."""
    from serdab.models.load import load_model

    replicas = int(args.get("replicas", 1))
    if not replicas and not args.get("autoscale"):
        name = str(args.get("model_name") or Path(str(args["model"])).stem)
        front = _deployment(FrontInfo).options(name="front", ray_actor_options={"num_cpus": 0, **REPLICA_ENV})
        return front.bind(_info(name))
    loaded = load_model(str(args["model"]))
    name = str(args.get("model_name") or loaded.name)
    haproxy = args.get("ingress") == "haproxy"
    # behind HAProxy without the ingress-router hook (Ray below 2.60), HAProxy balances public replicas itself
    routing = {"request_router_config": _router(args, "public")} if _HAS_ROUTER_HOOK or not haproxy else {}
    deployment = _deployment(PublicModel).options(
        name="public",
        ray_actor_options={"num_cpus": 0, **REPLICA_ENV},
        max_ongoing_requests=8,
        **routing,
        **_scaling(args, replicas),
    )
    public = deployment.bind(name, loaded.proto.SerializeToString(), int(args.get("threads", 1)), _info(name))
    return _routed(public, "public") if haproxy and _HAS_ROUTER_HOOK else public


def secure_app(args: dict[str, Any]) -> Any:
    """The enclave application (``import_path: serdab.serve.ray_engine:secure_app``), route prefix ``/secure``.

    ``args``: ``image`` (the replica image directory the owner built and registered), ``trust`` (the
    owner's trust statement file: key service URL and PCRs, service name, replica PCRs), ``model_name``,
    ``replicas``, optional ``autoscale``, ``balancer``, ``enclave_speed``, ``threads``, ``stress_dir``, ``ingress``.
    The service CA comes from the key service itself, attested against the trust statement."""
    from serdab.serve.client import service_certificate
    from serdab.serve.trust import statement_coordinates

    trust = json.loads(Path(str(args["trust"])).read_text())
    certificate = service_certificate(trust)[0]
    deployment = _deployment(EnclaveModel).options(
        name="enclave",
        ray_actor_options={"num_cpus": 0, "resources": {ENCLAVE_RESOURCE: 1}, **REPLICA_ENV},
        max_ongoing_requests=8,
        request_router_config=_router(args, "enclave"),
        **_scaling(args, int(args.get("replicas", 1))),
    )
    enclaves = deployment.bind(
        str(args.get("model_name") or trust["model"]),
        pack_image(Path(str(args["image"]))),
        statement_coordinates(trust).to_argv(),
        certificate["ca_pem"],
        float(args.get("enclave_speed", 1.0)),
        int(args.get("threads", 1)),
        args.get("stress_dir"),
        str(args.get("balancer", "sed")),
    )
    if args.get("ingress") != "haproxy":
        return enclaves
    if _HAS_ROUTER_HOOK:
        return _routed(enclaves, "enclave")
    # HAProxy balances an ingress itself: SerdabRouter chooses the enclave behind a front deployment
    return _deployment(SecureFront).options(name="secure-front", **FRONT_OPTIONS).bind(enclaves)


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


class RayService:
    """The key service, the replica image and both Serve applications, started and stopped together."""

    def __init__(self, options: RayServeOptions) -> None:
        self.options = options
        self.ingress = options.ingress  # "auto" resolved in start()
        self.work_dir = Path(tempfile.mkdtemp(prefix="serdab-ray-serve-"))
        self.trust_chain: Any = None
        self._owns_ray = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.options.port}"

    def start(self) -> RayService:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from serdab.models.load import load_model
        from serdab.serve.trust import ServiceTrust

        o = self.options
        try:
            requested = RayIngress(o.ingress)
        except ValueError:
            from serdab.errors import ServeConfigError

            raise ServeConfigError(f"unknown ingress {o.ingress!r}; choose {', '.join(RayIngress)}") from None
        starts_ray = not ray.is_initialized() and o.address == "local"
        self.ingress = RayIngress.HAPROXY if requested is RayIngress.AUTO and starts_ray else requested
        if not ray.is_initialized():
            init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
            init["address"] = o.address  # "local" starts a new Ray here even where RAY_ADDRESS names another
            if o.address == "local":  # one node standing for one host with a TEE; each enclave replica takes it
                init["resources"] = {ENCLAVE_RESOURCE: float(max(1, o.secure))}
            if self.ingress == "haproxy":  # read by the Serve controller Ray starts; a running cluster decides itself
                os.environ[HAPROXY_ENV] = "1"
            try:
                check_ray_address(o.address)
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
        serve.start(http_options={"host": "127.0.0.1", "port": o.port}, proxy_location=_proxy_location(self.ingress))
        common = {
            "model_name": self.model_name,
            "balancer": o.balancer,
            "stats_period_s": o.stats_period_s,
            "cooldown_s": o.cooldown_s,
            "look_back_s": o.look_back_s,
            "threads": o.threads,
            "ingress": str(self.ingress),
        }
        if o.secure or "enclave" in o.autoscale:
            self.trust_chain = ServiceTrust.start(self.model_name, model_file.read_bytes(), self.work_dir)
            trust_file = self.work_dir / "serve-trust.json"
            trust_file.write_text(json.dumps(self.trust()))
            secure = secure_app(
                {
                    **common,
                    "image": str(self.trust_chain.image.path),
                    "trust": str(trust_file),
                    "replicas": o.secure,
                    "autoscale": o.autoscale.get("enclave"),
                    "enclave_speed": o.enclave_speed,
                    "stress_dir": o.stress_dir,
                }
            )
            _run_app(secure, "secure", SECURE_PREFIX, self.ingress)
        public = public_app(
            {**common, "model": str(model_file), "replicas": o.public, "autoscale": o.autoscale.get("public")}
        )
        _run_app(public, "public", "/", self.ingress)
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

    def trust(self) -> dict[str, Any]:
        if self.trust_chain is None:
            return {"gateway": self.url, "model": self.model_name}
        return self.trust_chain.statement(self.url, self.model_name)

    def replicas(self) -> dict[str, int]:
        """Running replicas per kind (Ray Serve's own count)."""
        counts = {"enclave": 0, "public": 0}
        for app in serve.status().applications.values():
            for name, deployment in app.deployments.items():
                if name in counts:  # the model's replicas, not a route or front deployment beside them
                    counts[name] = sum(
                        n for state, n in deployment.replica_states.items() if str(state).endswith("RUNNING")
                    )
        return counts

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
