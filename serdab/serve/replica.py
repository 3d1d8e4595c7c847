"""A model replica: one ONNX model in ONNX Runtime behind OIP v2 and seed 001's endpoints.

Two kinds speak the same API. A **public** replica is an ordinary process serving plain HTTP.
An **enclave** replica is the entrypoint of a measured image (``serdab.kms.lifecycle.build_model_image``): inside the
enclave it attests to the key service, which releases the service's TLS key and certificate and
the model key only to an image whose PCRs match (seed 002 Fig. 2); it decrypts the model in its
own memory and terminates TLS itself, so a client's plaintext exists only in the client and the
enclave. It also answers ``/v1/attestation`` with a document binding the TLS certificate, so a
client can check, on the very connection it will use, which code holds the key.

Emulated, and labelled so: an enclave's compute is padded to ``1 / speed`` of this host's time,
and by the EPC paging factor while its host's emulated EPC is over-committed (``serdab.tee.epc``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from serdab.errors import InferenceRequestError, ServeError
from serdab.serve.protocol import (
    BINARY_HEADER,
    DATATYPES,
    ImageBatch,
    InferRequest,
    TensorSpec,
    decode_images,
    encode_infer_response,
    parse_infer_request,
    top_k,
)
from serdab.web import HttpError, error_body, install_errors, listen_http, read_body, serve_app

__all__ = ["MAX_BODY_BYTES", "ModelRunner", "create_replica_app", "enclave_main", "main"]

MAX_BODY_BYTES = 64 * 2**20
_ORT_TYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(int8)": "INT8",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
}
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ModelRunner:
    """The model and the one lock around it: a replica runs one inference at a time, so its
    queue is visible to the balancer as requests in flight."""

    def __init__(self, name: str, model: bytes, threads: int = 1, pad: Callable[[float], float] | None = None) -> None:
        from serdab.onnxrt import make_session

        self.session = make_session(model, threads)
        self.name = name
        self._pad = pad  # host seconds of compute -> extra seconds to wait (emulated speed and paging)
        self._lock = threading.Lock()
        self.waiting = 0  # requests queued for the model (the replica's queue)
        self.busy_s = 0.0
        self.inferences = 0
        self.inputs = [self._spec(i) for i in self.session.get_inputs()]
        self.outputs = [self._spec(o) for o in self.session.get_outputs()]
        shape = [d if isinstance(d, int) else 1 for d in self.session.get_inputs()[0].shape]
        self.session.run(None, {self.inputs[0].name: np.zeros(shape, dtype=DATATYPES[self.inputs[0].datatype])})

    @staticmethod
    def _spec(arg: Any) -> TensorSpec:
        return TensorSpec(
            name=arg.name,
            datatype=_ORT_TYPES.get(arg.type, "FP32"),
            shape=[d if isinstance(d, int) else -1 for d in arg.shape],
        )

    @property
    def image_shape(self) -> tuple[int, ...]:
        shape = self.inputs[0].shape
        if len(shape) != 4 or any(d <= 0 for d in shape[1:]):
            raise InferenceRequestError(f"model {self.name} does not take N x C x H x W images (input {shape})")
        return tuple(shape)

    def check(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The request's tensors as the model wants them, or an error naming the first mismatch."""
        expected = {s.name: s for s in self.inputs}
        unknown = sorted(set(tensors) - set(expected))
        if unknown:
            raise InferenceRequestError(f"unknown input {unknown[0]!r}; model {self.name} takes {', '.join(expected)}")
        feeds = {}
        for spec in self.inputs:
            if spec.name not in tensors:
                raise InferenceRequestError(f"missing input {spec.name!r} ({spec.datatype} {spec.shape})")
            array = tensors[spec.name]
            if array.dtype != DATATYPES[spec.datatype]:
                raise InferenceRequestError(f"input {spec.name!r} must be {spec.datatype}, not {array.dtype}")
            if array.ndim != len(spec.shape) or any(
                e not in (-1, g) for e, g in zip(spec.shape, array.shape, strict=True)
            ):
                raise InferenceRequestError(
                    f"input {spec.name!r} has shape {list(array.shape)}; the model takes {spec.shape} (-1 = any)"
                )
            if array.ndim and array.shape[0] > 64:
                raise InferenceRequestError(f"batch of {array.shape[0]} is over the limit of 64")
            feeds[spec.name] = array
        return feeds

    def infer(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
        """Outputs by name, and a Server-Timing value: time waiting for the model, time inside it
        (emulated enclave time included)."""
        queued = time.perf_counter()
        self.waiting += 1
        with self._lock:
            self.waiting -= 1
            started = time.perf_counter()
            results = self.session.run(None, feeds)
            host_s = time.perf_counter() - started
            extra = self._pad(host_s) if self._pad else 0.0
            if extra > 0:
                time.sleep(extra)
            infer_s = time.perf_counter() - started
            self.busy_s += infer_s
            self.inferences += 1
        timing = f"queue;dur={1000 * (started - queued):.3f}, infer;dur={1000 * infer_s:.3f}"
        return {spec.name: value for spec, value in zip(self.outputs, results, strict=True)}, timing


class _Measure:
    """Latency, in-flight and error metrics per route, as plain ASGI (Starlette's BaseHTTPMiddleware
    cost ~0.3 ms a request here)."""

    def __init__(self, app: Any, kind: str, latency: Histogram, in_flight: Gauge, errors: Counter) -> None:
        self.app, self.kind, self.latency, self.in_flight, self.errors = app, kind, latency, in_flight, errors

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in _FIXED else _route_of(path)
        status = 500

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.in_flight.labels(self.kind).inc()
        started = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        finally:
            self.in_flight.labels(self.kind).dec()
            self.latency.labels(route, self.kind).observe(time.perf_counter() - started)
            if status >= 400:
                self.errors.labels(route, self.kind).inc()


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` substituted, so it can sit inside an OpenAPI document."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def create_replica_app(
    runner: ModelRunner,
    kind: str,
    *,
    replica_id: str,
    attest: Callable[[bytes], bytes] | None = None,
    epc_stats: Callable[[], dict[str, Any]] | None = None,
    emulation: dict[str, Any] | None = None,
    sealed: tuple[Any, bytes] | None = None,
) -> FastAPI:
    """The replica's HTTP API; ``attest`` (enclaves) answers ``/v1/attestation``; ``sealed`` (the
    service's private key and certificate PEM, enclaves only) answers ``/v1/sealed`` requests, and its
    ``SealedHandler`` is ``app.state.sealed`` for the sealed stream."""
    app = FastAPI(title=f"serdab {kind} replica", version="1", docs_url=None, redoc_url=None)
    registry = CollectorRegistry()
    latency = Histogram(
        "serdab_replica_request_seconds",
        "Request latency by route",
        ["route", "kind"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    in_flight = Gauge("serdab_replica_in_flight", "Requests being served", ["kind"], registry=registry)
    errors = Counter("serdab_replica_errors_total", "Requests answered 4xx/5xx", ["route", "kind"], registry=registry)
    busy = Gauge("serdab_replica_busy_seconds", "Seconds spent inside inference", ["kind"], registry=registry)
    queue = Gauge("serdab_replica_queue", "Requests waiting for the model", ["kind"], registry=registry)
    page_ins = Gauge(
        "serdab_epc_page_ins",
        "EPC pages swapped in on this replica's host (emulated)",
        ["kind", "emulated"],
        registry=registry,
    )
    page_outs = Gauge(
        "serdab_epc_page_outs",
        "EPC pages swapped out on this replica's host (emulated)",
        ["kind", "emulated"],
        registry=registry,
    )
    started_at = time.monotonic()

    install_errors(app, {ServeError: lambda _: 400})

    app.add_middleware(_Measure, kind=kind, latency=latency, in_flight=in_flight, errors=errors)

    def observe_grpc(call: str, seconds: float, failed: bool) -> None:
        """gRPC calls in the same metrics; ``call`` is one of the six the handler serves (a closed set)."""
        latency.labels(f"grpc:{call}", kind).observe(seconds)
        if failed:
            errors.labels(f"grpc:{call}", kind).inc()

    app.state.observe_grpc = observe_grpc

    def _model(name: str) -> None:
        if name != runner.name:
            raise HttpError(404, f"unknown model {name!r}; this replica serves {runner.name!r}")

    @app.get("/v2/", include_in_schema=False)  # as KServe's published OpenAPI document writes it
    @app.get("/v2")
    def server_metadata() -> dict[str, Any]:
        return {"name": "serdab", "version": "1", "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.get("/v2/models/{name}")
    def model_metadata(name: str) -> dict[str, Any]:
        _model(name)
        return {
            "name": runner.name,
            "versions": ["1"],
            "platform": "onnxruntime_onnx",
            "inputs": [s.model_dump() for s in runner.inputs],
            "outputs": [s.model_dump() for s in runner.outputs],
        }

    @app.get("/v2/models/{name}/ready")
    def model_ready(name: str) -> dict[str, Any]:
        _model(name)
        return {"name": runner.name, "ready": True}

    def _version(name: str, version: str) -> None:
        _model(name)
        if version != "1":
            raise HttpError(404, f"model {runner.name!r} has version 1 only, not {version!r}")

    # OIP's versioned paths (the Triton client asks is_model_ready(name, "1") on them)
    @app.get("/v2/models/{name}/versions/{version}")
    def version_metadata(name: str, version: str) -> dict[str, Any]:
        _version(name, version)
        return model_metadata(name)

    @app.get("/v2/models/{name}/versions/{version}/ready")
    def version_ready(name: str, version: str) -> dict[str, Any]:
        _version(name, version)
        return model_ready(name)

    infer_body = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _inline(InferRequest.model_json_schema())},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    }
    batch = {"application/json": {"schema": _inline(ImageBatch.model_json_schema())}}
    batch_body = {"requestBody": {"required": True, "content": batch}}

    @app.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=infer_body)
    async def version_infer(name: str, version: str, request: Request) -> Response:
        _version(name, version)
        return await infer(name, request)

    @app.post("/v2/models/{name}/infer", openapi_extra=infer_body)
    async def infer(name: str, request: Request) -> Response:
        _model(name)
        body = await read_body(request, ("application/json", "application/octet-stream"), MAX_BODY_BYTES)
        parsed, tensors, binary = parse_infer_request(body, request.headers.get(BINARY_HEADER))
        outputs, timing = await run_in_threadpool(runner.infer, runner.check(tensors))
        wanted = {o.name for o in parsed.outputs or []}
        unknown = wanted - set(outputs)
        if unknown:
            raise InferenceRequestError(f"unknown output {sorted(unknown)[0]!r}; the model gives {', '.join(outputs)}")
        chosen = {k: v for k, v in outputs.items() if not wanted or k in wanted}
        content, headers = encode_infer_response(runner.name, chosen, parsed.id, binary)
        return Response(content, headers={**headers, "server-timing": timing})

    async def predict(request: Request) -> JSONResponse:
        body = await read_body(request, ("application/json",), MAX_BODY_BYTES)
        try:
            batch = ImageBatch.model_validate_json(body)
        except ValueError as exc:
            raise InferenceRequestError(f'expected {{"images": [base64 image, ...]}} (1-64 images): {exc}') from None
        pixels = await run_in_threadpool(decode_images, batch.images, runner.image_shape)
        outputs, timing = await run_in_threadpool(runner.infer, {runner.inputs[0].name: pixels})
        logits = next(iter(outputs.values()))
        answer = {"model": runner.name, "replica": kind, "predictions": top_k(logits, batch.top_k)}
        return JSONResponse(answer, headers={"server-timing": timing})

    # seed 001's routes: the gateway sends each prefix to its kind; a replica answers only its own
    app.add_api_route(
        f"/predict-{'secure' if kind == 'enclave' else 'public'}", predict, methods=["POST"], openapi_extra=batch_body
    )

    @app.get("/v1/replica")
    def stats() -> dict[str, Any]:
        info = {
            "id": replica_id,
            "kind": kind,
            "model": runner.name,
            "busy_s": runner.busy_s,
            "inferences": runner.inferences,
            "uptime_s": time.monotonic() - started_at,
            "pid": os.getpid(),
            "emulation": emulation or {},
        }
        if epc_stats is not None:
            info["epc"] = epc_stats()
        return info

    if attest is not None:
        sign = attest

        @app.get("/v1/attestation")
        def attestation(nonce: str = Query(..., min_length=2, max_length=128, pattern="^[0-9a-fA-F]+$")) -> Response:
            if len(nonce) % 2:
                raise HttpError(400, "nonce must be an even number of hex digits")
            return Response(sign(bytes.fromhex(nonce)), media_type="application/cbor")

    if sealed is not None:
        app.state.sealed = SealedHandler(app, sealed[0])
        _sealed_routes(app, app.state.sealed, sealed[1])

    @app.get("/metrics")
    def metrics() -> Response:
        busy.labels(kind).set(runner.busy_s)
        queue.labels(kind).set(runner.waiting)
        if epc_stats is not None:
            stats_now = epc_stats()
            page_ins.labels(kind, "true").set(stats_now.get("page_ins", 0))
            page_outs.labels(kind, "true").set(stats_now.get("page_outs", 0))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


class SealedHandler:
    """Answers sealed requests (``serdab.serve.sealed``) inside the enclave: open, run against this very
    app in-process, seal the answer. Reached at ``/v1/sealed`` over TLS and on the sealed stream, where a
    replica's host-side proxy hands sealed requests over as they are, without HTTP or TLS in between."""

    def __init__(self, app: FastAPI, service_key: Any) -> None:
        from serdab.serve.sealed import SessionKeys

        self.app = app
        self.sessions = SessionKeys(service_key)

    async def answer(self, request: bytes) -> bytes:
        opened = self.sessions.open(request)
        status, headers, body = await _call_app(self.app, opened.method, opened.path, opened.headers, opened.body)
        return opened.seal_reply(status, headers, body)

    async def serve_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection of the sealed stream: sealed requests in, ``{"status", "body"}`` CBOR frames out."""
        import cbor2

        from serdab.serve.sealed import read_frame, write_frame

        try:
            while (request := await read_frame(reader)) is not None:
                try:
                    answer = {"status": 200, "body": await self.answer(request)}
                except ServeError as exc:  # as /v1/sealed answers it: 400 and the reason in JSON
                    answer = {"status": 400, "body": error_body(str(exc))}
                write_frame(writer, cbor2.dumps(answer))
                await writer.drain()
        except (ValueError, ConnectionError, asyncio.IncompleteReadError):
            pass  # a broken or oversized frame ends the connection, as a bad TLS record would
        finally:
            writer.close()


async def _call_app(
    app: Any, method: str, path: str, headers: dict[str, str], body: bytes
) -> tuple[int, dict[str, str], bytes]:
    """One request through the ASGI app in-process (a fifth of what an HTTP client over ASGI costs)."""
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [*raw, (b"content-length", str(len(body)).encode())],
        "client": ("sealed", 0),
        "server": ("enclave", 443),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    status, answer_headers, chunks = 500, {}, []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
            answer_headers.update({k.decode(): v.decode() for k, v in message.get("headers", [])})
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))

    await app(scope, receive, send)
    return status, answer_headers, b"".join(chunks)


def _sealed_routes(app: FastAPI, handler: SealedHandler, certificate_pem: bytes) -> None:
    @app.get("/v1/service-certificate")
    def service_certificate() -> Response:
        return Response(certificate_pem, media_type="application/x-pem-file")

    @app.post(
        "/v1/sealed",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def sealed_request(request: Request) -> Response:
        sealed = await read_body(request, ("application/octet-stream",), MAX_BODY_BYTES)
        return Response(await handler.answer(sealed), media_type="application/octet-stream")


_FIXED = {
    "/v2",
    "/v2/",
    "/v2/health/live",
    "/v2/health/ready",
    "/metrics",
    "/v1/replica",
    "/v1/attestation",
    "/predict-secure",
    "/predict-public",
    "/v1/sealed",
    "/v1/service-certificate",
}


_MODEL_ROUTES = {
    (): "/v2/models/{name}",
    ("ready",): "/v2/models/{name}/ready",
    ("infer",): "/v2/models/{name}/infer",
    ("versions", None): "/v2/models/{name}/versions/{version}",
    ("versions", None, "ready"): "/v2/models/{name}/versions/{version}/ready",
    ("versions", None, "infer"): "/v2/models/{name}/versions/{version}/infer",
}


def _route_of(path: str) -> str:
    """A label for the metrics from a closed set: the route templates (model names and versions become
    {name} and {version}); any other path is 'other', so invented paths cannot grow /metrics."""
    parts = path.split("/")
    if len(parts) >= 4 and parts[1:3] == ["v2", "models"] and parts[3]:
        rest = parts[4:]
        key = ("versions", None, *rest[2:]) if len(rest) >= 2 and rest[0] == "versions" and rest[1] else tuple(rest)
        return _MODEL_ROUTES.get(key, "other")
    return "other"


async def _serve(
    app: FastAPI,
    runner: ModelRunner,
    sock: Any,
    ready: Callable[[int | None], None],
    *,
    grpc_port: int | None,
    tls: tuple[bytes, bytes] | None,
    host: str,
    stream: tuple[Any, Callable] | None = None,
) -> None:
    """The HTTP API and, with ``grpc_port``, OIP over gRPC beside it (same runner, same TLS);
    ``ready`` gets the gRPC port once both accept."""
    server, bound = None, None
    if grpc_port is not None:
        from serdab.serve.grpc_oip import replica_handler, start_server

        server, bound = await start_server(replica_handler(runner, app.state.observe_grpc), host, grpc_port, tls)
    try:
        await serve_app(app, sock, lambda: ready(bound), tls=tls, stream=stream)
    finally:
        if server is not None:
            await server.stop(1)


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--name", required=True, help="the model's name in the API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--id", default=None)
    parser.add_argument("--grpc-port", type=int, default=None, help="also serve OIP over gRPC on this port (0: any)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """A public replica: ``python -m serdab.serve.replica --name M --model-file F --ready-file R``."""
    parser = _parser("serdab-public-replica")
    parser.add_argument("--model-file", required=True, type=Path)
    parser.add_argument("--ready-file", required=True, type=Path)
    parser.add_argument("--tls-cert", type=Path, default=None, help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, default=None, help="and this key (PEM)")
    args = parser.parse_args(argv)
    runner = ModelRunner(args.name, args.model_file.read_bytes(), args.threads)
    replica_id = args.id or f"public-{os.getpid()}"
    app = create_replica_app(runner, "public", replica_id=replica_id)
    sock = listen_http(args.host, args.port)
    port = sock.getsockname()[1]

    def ready(grpc_port: int | None) -> None:
        tmp = args.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"port": port, "pid": os.getpid(), "id": replica_id, "grpc_port": grpc_port}))
        tmp.replace(args.ready_file)

    tls = (args.tls_cert.read_bytes(), args.tls_key.read_bytes()) if args.tls_cert and args.tls_key else None
    asyncio.run(_serve(app, runner, sock, ready, grpc_port=args.grpc_port, tls=tls, host=args.host))
    return 0


def enclave_main(argv: list[str]) -> int:
    """An enclave replica: the entrypoint of a measured replica image, talking to its NSM."""
    from serdab.crypto import cert_der, sha384
    from serdab.kms.lifecycle import KmsCoordinates, fetch_model
    from serdab.tee.nsm import NsmClient

    parser = _parser("serdab-enclave-replica")
    KmsCoordinates.add_arguments(parser)
    parser.add_argument("--speed", type=float, default=1.0, help="emulated enclave speed relative to this host")
    parser.add_argument(
        "--plaintext-benchmark-only",
        action="store_true",
        help="plain HTTP, only to measure what TLS costs (seed 002 Fig. 6); never for data",
    )
    args = parser.parse_args(argv)
    nsm = NsmClient.from_env()
    model, keys = fetch_model(KmsCoordinates.from_args(args), nsm)
    nsm.resident(int(len(model) * 1.3))  # weights plus activations, as the EPC sees them (emulated)

    def pad(host_s: float) -> float:
        factor = nsm.access() / args.speed  # paging slowdown while the host's EPC is over-committed
        return host_s * (factor - 1.0)

    runner = ModelRunner(args.name, model, args.threads, pad)
    del model
    from cryptography import x509

    certificate = x509.load_pem_x509_certificate(keys.cert_pem.encode())
    tls_hash = sha384(cert_der(certificate))
    replica_id = args.id or os.environ.get("SERDAB_ENCLAVE_ID", "enclave")

    def attest(nonce: bytes) -> bytes:
        return nsm.attest(nonce=nonce, user_data=tls_hash)

    def epc() -> dict[str, Any]:
        stats = nsm.stats()
        return {"page_ins": stats.get("page_ins", 0), "page_outs": stats.get("page_outs", 0), "emulated": True}

    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    service_key = load_pem_private_key(keys.key_pem.encode(), password=None)
    app = create_replica_app(
        runner,
        "enclave",
        replica_id=replica_id,
        attest=attest,
        epc_stats=epc,
        emulation={"speed": args.speed, "epc": "emulated"},
        sealed=(service_key, keys.cert_pem.encode()),
    )
    sock, stream = listen_http(args.host, args.port), listen_http(args.host, 0)
    port, stream_port = sock.getsockname()[1], stream.getsockname()[1]
    asyncio.run(
        _serve(
            app,
            runner,
            sock,
            lambda grpc_port: nsm.ready(
                port=port, sealed_port=stream_port, id=replica_id, tls_sha384=tls_hash.hex(), grpc_port=grpc_port
            ),
            grpc_port=args.grpc_port,
            tls=None if args.plaintext_benchmark_only else (keys.cert_pem.encode(), keys.key_pem.encode()),
            host=args.host,
            stream=(stream, app.state.sealed.serve_stream),
        )
    )
    return 0


if __name__ == "__main__":
    import sys

    try:
        sys.exit(main())
    except (ServeError, OSError) as exc:
        print(f"replica: error: {exc}", file=sys.stderr)
        sys.exit(2)
