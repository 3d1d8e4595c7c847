"""Serdab's Ray Serve deployments: the public and enclave replicas and the small fronts before them.

A public replica runs the replica app (``serdab.serve.replica``) in-process. An enclave replica
launches the measured replica image on its node through ``serdab.tee`` and forwards only sealed
traffic to it (``/secure``'s allowed routes); its monitoring cycle runs here, in
``record_routing_stats``, because Ray Serve runs one router per proxy and per handle: a decision
kept in a router would differ from one router to the next. ``ReplicaRoute`` answers HAProxy's
``/internal/route`` with ``SerdabRouter``'s choice (the ingress-router hook, ``compat``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serdab.serve.balancing import HostSample, PagingRate, get_balancer
from serdab.serve.ray.compat import REPLICA_ENV, chosen_replica_id
from serdab.serve.sealed import SealedStream
from serdab.tee.image import unpack_image
from serdab.web import error_response

__all__ = [
    "FRONT_OPTIONS",
    "REFUSED",
    "SECURE_PREFIX",
    "EnclaveModel",
    "FrontInfo",
    "PublicModel",
    "ReplicaRoute",
    "SecureFront",
]

SECURE_PREFIX = "/secure"
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
# a deployment in front of the model's replicas (a route or SecureFront): no CPU of its own, many requests at once
FRONT_OPTIONS = {"ray_actor_options": {"num_cpus": 0, **REPLICA_ENV}, "max_ongoing_requests": 64}
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
            answer = JSONResponse({"replica_id": await chosen_replica_id(self.handle)})
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
        evidence: str = "aws-nitro",
    ) -> None:
        from serdab.raycluster import TEE_BACKEND_ENV
        from serdab.serve.client import service_context
        from serdab.tee import get_backend
        from serdab.tee.evidence import EVIDENCE_ENV

        self.dir = Path(tempfile.mkdtemp(prefix="serdab-ray-replica-"))
        unpack_image(image, self.dir / "image")
        self.host = _host_label()
        self.id = f"enclave-{self.host}-{os.getpid()}"
        # the trust statement's evidence kind: the enclave attests in it (this actor hosts this replica alone)
        os.environ[EVIDENCE_ENV] = evidence
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
        self._paging = PagingRate()
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
        stats, now = self.backend.epc.stats(), time.monotonic()
        rate = self._paging.sample(stats.page_ins + stats.page_outs, now)
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
