"""The gateway: one front door for both kinds of replica (seed 001's router, S3ML's IPVS frontend).

Public requests arrive as plain HTTP and are proxied per request to public replicas: the
balancing policy picks one, a request that fails on a replica before an answer (connection
refused or reset, replica gone) is retried on another (inference is idempotent), with timeouts
and a body-size limit. Secure traffic arrives as TLS on the secure port and is passed through at
the transport layer, routed by connection to an enclave replica (as S3ML routes with IPVS): the
TLS session ends inside the enclave, so the gateway holds neither the plaintext of a secure
request nor any key that decrypts it. A plain-HTTP request to a secure route is refused (403).

Replicas are health-checked every ``health_interval_s``; host paging samples (emulated EPC) are
fed to the policy every ``monitor_interval_s`` (S3ML: once per second). Everything that decides
(policies) is pure; this module only does sockets. Binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serdab.errors import ServeError
from serdab.serve.balancing import BalancingPolicy, HostSample, ReplicaView
from serdab.serve.forward import UnforwardableRequest, UpstreamError, UpstreamPool, end_to_end
from serdab.serve.replica import LATENCY_BUCKETS, MAX_BODY_BYTES
from serdab.web import HttpError, error_response, install_errors, listen_http, read_body, serve_app

__all__ = ["Gateway", "GatewayConfig", "ReplicaEntry"]

# besides the hop-by-hop ones: the gateway writes its own Host and length, and answers 100-continue itself
_REQUEST_OWN = frozenset({b"host", b"content-length", b"expect"})
# the gateway's server writes its own: the replica's would make two of each
_ANSWER_HEADERS_DROPPED = {b"date", b"server"}


ADMIN_BODY_BYTES = 64 * 1024  # an admin call is a handful of fields


@dataclass
class ReplicaEntry:
    """One replica as the gateway tracks it (mutated only on the gateway's event loop)."""

    id: str
    kind: str  # "enclave" | "public"
    address: tuple[str, int]
    host: str = "local"
    healthy: bool = True
    in_flight: int = 0
    served: int = 0
    draining: bool = False
    grpc_port: int | None = None  # OIP over gRPC beside HTTP (TLS for enclaves), when served

    @property
    def grpc_address(self) -> tuple[str, int]:
        assert self.grpc_port is not None
        return (self.address[0], self.grpc_port)

    def view(self) -> ReplicaView:
        return ReplicaView(self.id, self.host, self.in_flight, 1.0, self.healthy and not self.draining)


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 0
    secure_port: int = 0
    request_timeout_s: float = 30.0
    connect_timeout_s: float = 2.0
    idle_timeout_s: float = 120.0
    max_body_bytes: int = MAX_BODY_BYTES
    health_interval_s: float = 1.0
    monitor_interval_s: float = 1.0
    max_attempts: int = 3
    grpc_port: int | None = None  # None: no gRPC doors; else the public one (0: any free port)
    secure_grpc_port: int = 0  # TLS pass-through to enclave replicas' gRPC, with grpc_port set


@dataclass
class _Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.latency = Histogram(
            "serdab_gateway_request_seconds",
            "Request (public) or connection (secure) time",
            ["route", "kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("serdab_gateway_in_flight", "Requests or connections in flight", ["kind"], registry=r)
        self.retries = Counter(
            "serdab_gateway_retries_total", "Attempts moved to another replica", ["kind"], registry=r
        )
        self.refused = Counter(
            "serdab_gateway_refused_total", "Requests refused by the gateway", ["reason"], registry=r
        )
        self.weight = Gauge(
            "serdab_gateway_replica_weight", "Balancing weight (0 = shed)", ["replica", "kind"], registry=r
        )
        self.healthy = Gauge(
            "serdab_gateway_replica_healthy", "1 when the last health check passed", ["replica", "kind"], registry=r
        )
        self.replica_in_flight = Gauge(
            "serdab_gateway_replica_in_flight", "Requests or connections per replica", ["replica", "kind"], registry=r
        )
        self.paging = Gauge(
            "serdab_epc_paging_pages_per_second",
            "Host EPC paging throughput (emulated)",
            ["host", "emulated"],
            registry=r,
        )
        self.replicas = Gauge("serdab_replicas", "Replicas behind the gateway", ["kind"], registry=r)
        self.scaling = Counter(
            "serdab_autoscaler_decisions_total",
            "Replicas added or removed by the autoscaler",
            ["kind", "direction"],
            registry=r,
        )


class Gateway:
    """Start with ``start()``; add and remove replicas from any thread; ``stop()`` closes everything."""

    def __init__(
        self,
        policies: Mapping[str, BalancingPolicy],
        config: GatewayConfig = GatewayConfig(),
        *,
        enclave_ssl: ssl.SSLContext | None = None,
        host_samples: Callable[[], Mapping[str, HostSample]] | None = None,
        info: Mapping[str, Any] | None = None,
        registry: CollectorRegistry | None = None,
        admin: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None,
        admin_token: str | None = None,
    ) -> None:
        self.config = config
        self.policies = dict(policies)  # by kind
        self.states = {kind: p.initial() for kind, p in self.policies.items()}
        self.replicas: dict[str, ReplicaEntry] = {}
        self.metrics = _Metrics(registry or CollectorRegistry())
        self._enclave_ssl = enclave_ssl  # health checks of enclaves: the service CA only, no key
        self._host_samples = host_samples
        self._info = dict(info or {})
        self._admin = admin  # owner's operations (interference, replica list); bearer token required
        self._admin_token = admin_token
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="gateway", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.port = 0
        self.secure_port = 0
        self.grpc_port: int | None = None
        self.secure_grpc_port: int | None = None
        self._pools: dict[str, UpstreamPool] = {}  # keep-alive connections per public replica
        self._health_clients: dict[str, httpx.AsyncClient] = {}  # one per kind, made on the loop

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self, timeout_s: float = 20.0) -> Gateway:
        self._thread.start()
        if not self._started.wait(timeout_s) or self._error is not None:
            raise ServeError(f"the gateway did not start: {self._error or 'timed out'}")
        return self

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def stop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._shutdown.set)
        self._thread.join(timeout=10)

    def call(self, fn: Callable[[], Any], timeout_s: float = 10.0) -> Any:
        """Run ``fn`` on the gateway's loop (where replica state lives) and return its result."""
        return asyncio.run_coroutine_threadsafe(self._call(fn), self._loop).result(timeout_s)

    @staticmethod
    async def _call(fn: Callable[[], Any]) -> Any:
        return fn()

    def add_replica(self, entry: ReplicaEntry) -> None:
        def add() -> None:
            self.replicas[entry.id] = entry
            self._count(entry.kind)

        self.call(add)

    def remove_replica(self, replica_id: str) -> None:
        def remove() -> None:
            entry = self.replicas.pop(replica_id, None)
            pool = self._pools.pop(replica_id, None)
            if pool is not None:
                pool.close()
            if entry is not None:
                self._count(entry.kind)
                for gauge in (self.metrics.weight, self.metrics.healthy, self.metrics.replica_in_flight):
                    with contextlib.suppress(KeyError):
                        gauge.remove(entry.id, entry.kind)

        self.call(remove)

    def _count(self, kind: str) -> None:
        self.metrics.replicas.labels(kind).set(sum(1 for r in self.replicas.values() if r.kind == kind))

    def scaled(self, kind: str, delta: int) -> None:
        """Count an autoscaler decision (thread-safe: prometheus_client metrics lock themselves)."""
        self.metrics.scaling.labels(kind, "up" if delta > 0 else "down").inc(abs(delta))

    def snapshot(self) -> list[dict[str, Any]]:
        """Replicas as the gateway sees them now (thread-safe copy)."""

        def copy() -> list[dict[str, Any]]:
            weights = {k: self.policies[k].weights(self.states[k]) for k in self.policies}
            return [
                {
                    "id": r.id,
                    "kind": r.kind,
                    "host": r.host,
                    "healthy": r.healthy,
                    "in_flight": r.in_flight,
                    "served": r.served,
                    "weight": 0.0 if weights.get(r.kind, {}).get(r.host) == 0.0 else 1.0,
                }
                for r in self.replicas.values()
            ]

        return self.call(copy)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
            self._error = exc
            self._started.set()
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._shutdown = asyncio.Event()
        self._connections: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        secure = await asyncio.start_server(
            self._pass_through, self.config.host, self.config.secure_port, reuse_address=True
        )
        self.secure_port = secure.sockets[0].getsockname()[1]
        sock = listen_http(self.config.host, self.config.port, backlog=512)
        self.port = sock.getsockname()[1]
        listening, stop_serving = asyncio.Event(), asyncio.Event()
        serving = asyncio.create_task(serve_app(self._app(), sock, listening.set, should_exit=stop_serving))
        waiter = asyncio.create_task(listening.wait())
        await asyncio.wait({serving, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if serving.done():
            serving.result()
        timeout = self.config.connect_timeout_s
        self._health_clients = {
            "public": httpx.AsyncClient(timeout=timeout),
            "enclave": httpx.AsyncClient(verify=self._enclave_ssl or True, timeout=timeout),
        }
        grpc_doors = await self._open_grpc() if self.config.grpc_port is not None else None
        tasks = [asyncio.create_task(self._health_loop()), asyncio.create_task(self._monitor_loop())]
        self._started.set()
        await self._shutdown.wait()
        stop_serving.set()
        secure.close()
        if grpc_doors is not None:
            server, proxy, secure_grpc = grpc_doors
            secure_grpc.close()
            await server.stop(1)
            await proxy.close()
        for task in tasks:
            task.cancel()
        for writer in list(self._writers):  # pass-through pipes end when their sockets close
            writer.close()
        await asyncio.gather(*tasks, *self._connections, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, 5)
        for pool in self._pools.values():
            pool.close()
        for client in self._health_clients.values():
            await client.aclose()

    async def _open_grpc(self) -> tuple[Any, Any, asyncio.Server]:
        """The public gRPC door (calls forwarded to public replicas) and the secure one (TLS passed through)."""
        from serdab.serve.grpc_oip import ProxyHandler, start_server

        def attempt(entry: ReplicaEntry, ok: bool | None) -> None:
            if ok is None:
                entry.in_flight += 1
                return
            entry.in_flight -= 1
            if ok:
                entry.served += 1
            else:
                entry.healthy = False  # gone: the next health check decides again
                self.metrics.retries.labels("public").inc()

        def observe(call: str, seconds: float, failed: bool) -> None:
            self.metrics.latency.labels(f"grpc:{call}", "public").observe(seconds)

        proxy = ProxyHandler(
            lambda tried: self._choose("public", tried, grpc=True),
            attempt,
            lambda: any(r.healthy and not r.draining for r in self.replicas.values()),
            self.config.request_timeout_s,
            self.config.max_attempts,
            observe,
        )
        server, self.grpc_port = await start_server(proxy, self.config.host, self.config.grpc_port or 0)
        secure = await asyncio.start_server(
            lambda r, w: self._pass_through(r, w, grpc=True),
            self.config.host,
            self.config.secure_grpc_port,
            reuse_address=True,
        )
        self.secure_grpc_port = secure.sockets[0].getsockname()[1]
        return server, proxy, secure

    # --- choosing ---------------------------------------------------------------------------------
    def _choose(self, kind: str, exclude: set[str], grpc: bool = False) -> ReplicaEntry | None:
        candidates = [
            r
            for r in self.replicas.values()
            if r.kind == kind and r.id not in exclude and (r.grpc_port is not None or not grpc)
        ]
        policy = self.policies.get(kind)
        if policy is None or not candidates:
            return None
        chosen, self.states[kind] = policy.choose([r.view() for r in candidates], self.states[kind])
        return self.replicas.get(chosen) if chosen else None

    # --- public path (L7) -------------------------------------------------------------------------
    def _app(self) -> Starlette:
        routes = [
            Route("/metrics", self._metrics, methods=["GET"]),
            Route("/v1/gateway", self._gateway_info, methods=["GET"]),
            Route("/v2/health/live", self._live, methods=["GET"]),
            Route("/v2/health/ready", self._ready, methods=["GET"]),
            Route("/v2", self._server_metadata, methods=["GET"]),
            Route("/v2/", self._server_metadata, methods=["GET"]),  # KServe's OpenAPI document writes it so
            Route("/predict-secure", self._refuse_plain, methods=["GET", "POST", "PUT"]),
            Route("/v1/admin/{action}", self._admin_call, methods=["POST"]),
            Route("/{path:path}", self._proxy, methods=["GET", "POST", "HEAD"]),
        ]
        app = Starlette(routes=routes)
        install_errors(app)
        return app

    async def _metrics(self, _: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def _gateway_info(self, _: Request) -> JSONResponse:
        kinds = {k: sum(1 for r in self.replicas.values() if r.kind == k and r.healthy) for k in self.policies}
        return JSONResponse(
            {
                **self._info,
                "secure_port": self.secure_port,
                **({"grpc_port": self.grpc_port, "secure_grpc_port": self.secure_grpc_port} if self.grpc_port else {}),
                "healthy": kinds,
                "balancers": {k: p.name for k, p in self.policies.items()},
            }
        )

    async def _admin_call(self, request: Request) -> JSONResponse:
        from starlette.concurrency import run_in_threadpool

        given = request.headers.get("authorization", "").removeprefix("Bearer ").encode()
        if self._admin is None or not self._admin_token:
            return error_response(404, "this gateway takes no admin calls")
        if not secrets.compare_digest(given, self._admin_token.encode()):
            return error_response(401, "admin calls need the owner's bearer token")
        try:
            body = json.loads(await read_body(request, None, ADMIN_BODY_BYTES) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            result = await run_in_threadpool(self._admin, request.path_params["action"], body)
        except HttpError as exc:
            return error_response(exc.status, exc.message)
        except RecursionError:
            return error_response(400, "the body is nested too deeply for an admin call")
        except KeyError as exc:
            return error_response(400, f"the body lacks {exc}")
        except (ValueError, TypeError, OverflowError) as exc:  # e.g. a number out of range, a list for a number
            return error_response(400, f"not a valid admin call: {type(exc).__name__}: {exc}"[:300])
        except ServeError as exc:
            return error_response(400, str(exc))
        return JSONResponse(result)

    async def _live(self, _: Request) -> JSONResponse:
        return JSONResponse({"live": True})

    async def _ready(self, _: Request) -> JSONResponse:
        """Ready when any replica can serve, of either kind (an all-enclave deployment serves only
        secure requests, and is ready); which kinds are up is in /v1/gateway and the metrics."""
        up = [r for r in self.replicas.values() if r.healthy and not r.draining]
        if up:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "error": "no healthy replica yet"}, status_code=503)

    async def _server_metadata(self, _: Request) -> JSONResponse:
        """OIP's server metadata, with the healthy replicas per kind beside it (the protocol allows more
        fields): readiness is one bit, this says which kind of request can be served."""
        ready = {k: sum(1 for r in self.replicas.values() if r.kind == k and r.healthy) for k in self.policies}
        return JSONResponse(
            {"name": "serdab", "version": "1", "extensions": ["binary_tensor_data"], "ready_replicas": ready}
        )

    async def _refuse_plain(self, _: Request) -> JSONResponse:
        self.metrics.refused.labels("plaintext-secure").inc()
        return error_response(
            403,
            f"secure requests go over TLS straight to an enclave replica (secure port "
            f"{self.secure_port}); use serdab.Client(url).infer(..., secure=True)",
        )

    async def _proxy(self, request: Request) -> Response:
        path = request.url.path
        try:
            body = await read_body(request, None, self.config.max_body_bytes)
        except HttpError as exc:
            self.metrics.refused.labels("too-large" if exc.status == 413 else "bad-body").inc()
            return error_response(exc.status, exc.message)
        headers = end_to_end(request.headers.raw, _REQUEST_OWN)
        # as the client sent it: a decoded path (`my model`) is not a valid request line
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        target = raw_path.decode("latin-1") + (f"?{request.url.query}" if request.url.query else "")
        route = "/predict-public" if path == "/predict-public" else "/v2/..." if path.startswith("/v2") else "other"
        tried: set[str] = set()
        started = time.perf_counter()
        self.metrics.in_flight.labels("public").inc()
        try:
            for attempt in range(self.config.max_attempts):
                entry = self._choose("public", tried)
                if entry is None:
                    break
                tried.add(entry.id)
                entry.in_flight += 1
                pool = self._pools.get(entry.id)
                if pool is None:
                    pool = self._pools[entry.id] = UpstreamPool(
                        entry.address, connect_timeout_s=self.config.connect_timeout_s
                    )
                try:
                    status, out, content = await pool.request(
                        request.method, target, headers, body, self.config.request_timeout_s
                    )
                except TimeoutError:
                    self.metrics.refused.labels("timeout").inc()
                    message = f"replica {entry.id} did not answer within {self.config.request_timeout_s:.0f} s"
                    return error_response(504, message)
                except UnforwardableRequest as exc:
                    self.metrics.refused.labels("bad-request").inc()
                    return error_response(400, str(exc))
                except UpstreamError:
                    entry.healthy = False  # refused, reset or gone: the next health check decides again
                    if attempt + 1 < self.config.max_attempts:
                        self.metrics.retries.labels("public").inc()
                    continue
                finally:
                    entry.in_flight -= 1
                entry.served += 1
                self.metrics.latency.labels(route, "public").observe(time.perf_counter() - started)
                reply = Response(content, status_code=status)
                kept = [h for h in out if h[0] not in _ANSWER_HEADERS_DROPPED]
                reply.raw_headers = [h for h in reply.raw_headers if h[0] == b"content-length"] + kept
                return reply
        finally:
            self.metrics.in_flight.labels("public").dec()
        self.metrics.refused.labels("no-replica").inc()
        return error_response(503, "no healthy public replica could take the request")

    # --- secure path (L4 pass-through) ------------------------------------------------------------
    async def _pass_through(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, grpc: bool = False
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        tried: set[str] = set()
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        entry = None
        for attempt in range(self.config.max_attempts):
            entry = self._choose("enclave", tried, grpc)
            if entry is None:
                break
            tried.add(entry.id)
            try:
                upstream = await asyncio.wait_for(
                    asyncio.open_connection(*(entry.grpc_address if grpc else entry.address)),
                    self.config.connect_timeout_s,
                )
                break
            except (TimeoutError, OSError):
                entry.healthy = False
                if attempt + 1 < self.config.max_attempts:
                    self.metrics.retries.labels("enclave").inc()
        if upstream is None or entry is None:
            self.metrics.refused.labels("no-replica").inc()
            writer.close()
            return
        entry.in_flight += 1
        entry.served += 1
        started = time.perf_counter()
        self.metrics.in_flight.labels("enclave").inc()
        up_reader, up_writer = upstream
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            entry.in_flight -= 1
            self.metrics.in_flight.labels("enclave").dec()
            route = "grpc-tls-connection" if grpc else "tls-connection"
            self.metrics.latency.labels(route, "enclave").observe(time.perf_counter() - started)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Copy bytes one way until either side closes or the connection idles too long."""
        try:
            while True:
                data = await asyncio.wait_for(source.read(65536), self.config.idle_timeout_s)
                if not data:
                    break
                sink.write(data)
                await sink.drain()
        except (TimeoutError, OSError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                if sink.can_write_eof():
                    sink.write_eof()

    # --- background loops -------------------------------------------------------------------------
    async def _check(self, entry: ReplicaEntry) -> bool:
        scheme, context = ("https", self._enclave_ssl) if entry.kind == "enclave" else ("http", None)
        if entry.kind == "enclave" and context is None:
            try:  # no CA to check the TLS certificate with: a TCP connect is all the gateway can see
                _, w = await asyncio.wait_for(asyncio.open_connection(*entry.address), self.config.connect_timeout_s)
                w.close()
                return True
            except (TimeoutError, OSError):
                return False
        try:
            client = self._health_clients[entry.kind]
            reply = await client.get(f"{scheme}://{entry.address[0]}:{entry.address[1]}/v2/health/ready")
            return reply.status_code == 200
        except httpx.HTTPError:
            return False

    async def _health_loop(self) -> None:
        while True:
            entries = list(self.replicas.values())
            results = await asyncio.gather(*(self._check(e) for e in entries))
            for entry, ok in zip(entries, results, strict=True):
                entry.healthy = ok
                self.metrics.healthy.labels(entry.id, entry.kind).set(1 if ok else 0)
                self.metrics.replica_in_flight.labels(entry.id, entry.kind).set(entry.in_flight)
            await asyncio.sleep(self.config.health_interval_s)

    async def _monitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.monitor_interval_s)
            if self._host_samples is None:
                continue
            samples = self._host_samples()
            for host, sample in samples.items():
                self.metrics.paging.labels(host, "true").set(sample.paging_pages_per_s)
            for kind, policy in self.policies.items():
                self.states[kind] = policy.tick(samples, self.states[kind])
                shed = policy.weights(self.states[kind])
                for r in self.replicas.values():
                    if r.kind == kind:
                        self.metrics.weight.labels(r.id, r.kind).set(shed.get(r.host, 1.0))
