"""The Open Inference Protocol over gRPC (KServe v2's ``GRPCInferenceService``, which Triton serves too).

Three pieces, all on grpcio (the HTTP/2 framing, flow control and TLS are gRPC's own):

- ``replica_handler``: a replica's six calls (server live/ready/metadata, model ready/metadata,
  ModelInfer with ``raw_input_contents`` or typed contents), checked as the REST path checks them
  (``serdab.serve.protocol.decode_tensor``) and answered with the same model runner; every bad
  input is INVALID_ARGUMENT or NOT_FOUND with a one-line message, never INTERNAL.
- ``ProxyHandler``: the gateway's public gRPC door. It forwards each call as opaque bytes (it never
  parses a request) to a public replica the balancing policy picks, moves a call that finds the
  replica gone (UNAVAILABLE) to another, and answers server live/ready/metadata itself, as its
  REST door does. Secure gRPC is not here: the gateway passes TLS through to an enclave replica.
- ``GrpcOip``: a small client for ``serdab.Client`` (numpy in, numpy out), plain or over TLS that
  trusts only the service CA.

Messages are ``oip_pb2`` (written from the protocol's text, field numbers the protocol's).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from serdab.errors import InferenceRequestError, ServeError
from serdab.serve import oip_pb2 as pb
from serdab.serve.protocol import DATATYPES, datatype_of, decode_tensor

__all__ = ["CALLS", "SERVICE", "GrpcOip", "ProxyHandler", "replica_handler", "start_server"]

SERVICE = "inference.GRPCInferenceService"
CALLS = ("ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata", "ModelInfer")
MAX_MESSAGE_BYTES = 64 * 2**20  # as the REST body limit
MAX_INPUTS = 16
_MESSAGE_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
# nothing a client controls holds a server forever or grows it without bound (the HTTP side's ServerLimits):
# a connection must finish its handshake in 30 s, goes when idle 30 s, at most 100 calls at once on one,
# and a connection is asked to go (GOAWAY, the client reconnects) after 30 minutes, with 1 minute's grace
_SERVER_OPTIONS = [
    *_MESSAGE_OPTIONS,
    ("grpc.server_handshake_timeout_ms", 30_000),
    ("grpc.max_connection_idle_ms", 30_000),
    ("grpc.max_concurrent_streams", 100),
    ("grpc.max_connection_age_ms", 30 * 60_000),
    ("grpc.max_connection_age_grace_ms", 60_000),
]
_TYPED = {  # the typed-contents field each datatype travels in (FP16 only raw, as the protocol says)
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
_MESSAGES: dict[str, tuple[Any, Any]] = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
}
SERVER_METADATA = pb.ServerMetadataResponse(name="serdab", version="1", extensions=["binary_tensor_data"])

Observe = Callable[[str, float, bool], None]  # (call, seconds, failed): the replica's metrics


def _path(call: str) -> str:
    return f"/{SERVICE}/{call}"


def _server_calls(ready: Callable[[], bool]) -> dict[str, Callable[[Any], Any]]:
    """Server live, ready and metadata: a replica's and the gateway's alike, but for what ready means."""
    return {
        "ServerLive": lambda _request: pb.ServerLiveResponse(live=True),
        "ServerReady": lambda _request: pb.ServerReadyResponse(ready=ready()),
        "ServerMetadata": lambda _request: SERVER_METADATA,
    }


# --- a replica's calls ------------------------------------------------------------------------------
def request_tensors(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """The request's input tensors by name, checked; InferenceRequestError names the first problem."""
    if not 1 <= len(request.inputs) <= MAX_INPUTS:
        raise InferenceRequestError(f"a request has 1 to {MAX_INPUTS} inputs, not {len(request.inputs)}")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InferenceRequestError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs (one each, in order)"
        )
    tensors: dict[str, np.ndarray] = {}
    for k, tensor in enumerate(request.inputs):
        if tensor.name in tensors:
            raise InferenceRequestError(f"input {tensor.name!r} is given twice")
        if raw:
            if tensor.HasField("contents"):
                raise InferenceRequestError(f"input {tensor.name!r} has contents and raw_input_contents")
            tensors[tensor.name] = decode_tensor(tensor.name, tensor.datatype, list(tensor.shape), raw[k], None)
            continue
        field = _TYPED.get(tensor.datatype)
        if field is None:
            raise InferenceRequestError(
                f"input {tensor.name!r}: {tensor.datatype or 'no datatype'} goes in raw_input_contents or is "
                f"not supported (use one of {', '.join(DATATYPES)})"
            )
        values = getattr(tensor.contents, field)
        tensors[tensor.name] = decode_tensor(tensor.name, tensor.datatype, list(tensor.shape), None, list(values))
    return tensors


def infer_response(
    model: str, outputs: Mapping[str, np.ndarray], request: pb.ModelInferRequest
) -> pb.ModelInferResponse:
    """The outputs the request names (all when it names none), raw little-endian, in the request's order."""
    wanted = [o.name for o in request.outputs]
    unknown = [name for name in wanted if name not in outputs]
    if unknown:
        raise InferenceRequestError(f"unknown output {unknown[0]!r}; the model gives {', '.join(outputs)}")
    answer = pb.ModelInferResponse(model_name=model, model_version="1", id=request.id)
    for name in wanted or list(outputs):
        array = np.ascontiguousarray(outputs[name])
        datatype = datatype_of(array.dtype) or "FP32"
        answer.outputs.add(name=name, datatype=datatype, shape=array.shape)
        answer.raw_output_contents.append(array.astype(DATATYPES[datatype], copy=False).tobytes())
    return answer


def replica_handler(runner: Any, observe: Observe | None = None) -> grpc.GenericRpcHandler:
    """The six calls on ``runner`` (a ``serdab.serve.replica.ModelRunner``)."""

    def known(name: str, version: str) -> None:
        if name != runner.name:
            raise _NotFound(f"unknown model {name!r}; this replica serves {runner.name!r}")
        if version not in ("", "1"):
            raise _NotFound(f"model {runner.name!r} has version 1 only, not {version!r}")

    def metadata(request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        known(request.name, request.version)
        answer = pb.ModelMetadataResponse(name=runner.name, versions=["1"], platform="onnxruntime_onnx")
        for specs, into in ((runner.inputs, answer.inputs), (runner.outputs, answer.outputs)):
            for spec in specs:
                into.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        return answer

    def ready(request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        # a model or version this replica does not serve is not ready (as Triton answers), not an error
        return pb.ModelReadyResponse(ready=request.name == runner.name and request.version in ("", "1"))

    async def infer(request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        known(request.model_name, request.model_version)
        feeds = runner.check(request_tensors(request))
        outputs, timing = await asyncio.to_thread(runner.infer, feeds)
        context.set_trailing_metadata((("server-timing", timing),))
        return infer_response(runner.name, outputs, request)

    calls: dict[str, Callable[..., Any]] = {
        **_server_calls(lambda: True),
        "ModelReady": ready,
        "ModelMetadata": metadata,
    }
    handlers = {name: _unary(name, fn, observe) for name, fn in calls.items()}
    handlers["ModelInfer"] = _unary("ModelInfer", infer, observe, takes_context=True)
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


class _NotFound(ServeError):
    pass


def _unary(name: str, fn: Callable[..., Any], observe: Observe | None, takes_context: bool = False) -> Any:
    request_type, response_type = _MESSAGES[name]

    async def call(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        started, failed = time.perf_counter(), True
        try:
            try:  # parsed here, not by grpc: a message that is not this protobuf is the client's error
                request = request_type.FromString(raw)
            except DecodeError:
                raise InferenceRequestError(f"not a {name}Request message (protobuf): the bytes do not parse") from None
            answer = fn(request, context) if takes_context else fn(request)
            if isinstance(answer, Awaitable):
                answer = await answer
            failed = False
            return answer
        except _NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except ServeError as exc:  # InferenceRequestError and the runner's checks
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        finally:
            if observe is not None:
                observe(name, time.perf_counter() - started, failed)

    return grpc.unary_unary_rpc_method_handler(call, response_serializer=response_type.SerializeToString)


async def start_server(
    handler: grpc.GenericRpcHandler, host: str, port: int, tls: tuple[bytes, bytes] | None = None
) -> tuple[grpc.aio.Server, int]:
    """A started grpc.aio server with ``handler`` (TLS with ``tls`` = (certificate PEM, key PEM)) and its port."""
    server = grpc.aio.server(options=_SERVER_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    address = f"{host}:{port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, grpc.ssl_server_credentials([(tls[1], tls[0])]))
    if not bound:
        raise ServeError(f"cannot listen for gRPC on {address}")
    await server.start()
    return server, bound


# --- the gateway's public door ----------------------------------------------------------------------
Pick = Callable[[set[str]], Any]  # replica ids tried -> an entry with .id and .grpc_address, or None


class ProxyHandler(grpc.GenericRpcHandler):
    """Forwards the OIP calls as bytes to public replicas; ``pick`` is the gateway's balancing policy,
    ``attempt(entry, ok)`` its accounting (in-flight counts, health)."""

    def __init__(
        self,
        pick: Pick,
        attempt: Callable[[Any, bool | None], None],
        ready: Callable[[], bool],
        timeout_s: float,
        max_attempts: int,
        observe: Observe | None = None,
    ) -> None:
        self._pick = pick
        self._attempt = attempt
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._observe = observe
        self._channels: dict[tuple[str, int], grpc.aio.Channel] = {}
        self._callables: dict[tuple[tuple[str, int], str], Any] = {}
        # made once: grpc asks service() for a handler on every call
        own = {name: _unary(name, fn, observe) for name, fn in _server_calls(ready).items()}
        self._handlers = {_path(call): own.get(call) or self._forwarding(call) for call in CALLS}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(handler_call_details.method)  # None: UNIMPLEMENTED, from grpc

    def _forwarding(self, call: str) -> grpc.RpcMethodHandler:
        method = _path(call)

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            started, failed = time.perf_counter(), True
            try:
                answer = await self._forward(method, request, context)
                failed = False
                return answer
            finally:
                if self._observe is not None:
                    self._observe(call, time.perf_counter() - started, failed)

        return grpc.unary_unary_rpc_method_handler(forward)  # bytes in, bytes out: never parsed here

    async def _forward(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        metadata = tuple((k, v) for k, v in context.invocation_metadata() or () if not k.startswith((":", "grpc-")))
        tried: set[str] = set()
        last = "no healthy public replica could take the call"
        for _ in range(self._max_attempts):
            entry = self._pick(tried)
            if entry is None:
                break
            tried.add(entry.id)
            self._attempt(entry, None)
            call = self._callable(entry.grpc_address, method)(request, timeout=self._timeout_s, metadata=metadata)
            try:
                answer = await call
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:  # the replica is gone: another one
                    self._attempt(entry, False)
                    last = f"replica {entry.id}: {exc.details()}"
                    continue
                self._attempt(entry, True)
                context.set_trailing_metadata(tuple(exc.trailing_metadata() or ()))
                await context.abort(exc.code(), exc.details() or "")
            self._attempt(entry, True)
            context.set_trailing_metadata(tuple(await call.trailing_metadata() or ()))
            return answer
        await context.abort(grpc.StatusCode.UNAVAILABLE, last)
        raise AssertionError("abort raises")  # for the type checker

    def _callable(self, address: tuple[str, int], method: str) -> Any:
        """One channel per replica, one callable per (replica, method): made once, reused by every call."""
        key = (address, method)
        if key not in self._callables:
            if address not in self._channels:
                target = f"{address[0]}:{address[1]}"
                self._channels[address] = grpc.aio.insecure_channel(target, options=_MESSAGE_OPTIONS)
            self._callables[key] = self._channels[address].unary_unary(method)
        return self._callables[key]

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._callables.clear()


# --- a client ---------------------------------------------------------------------------------------
class GrpcOip:
    """One channel to a gRPC OIP door; ``ca_pem`` makes it TLS trusting only that CA (the service's)."""

    def __init__(self, target: str, *, ca_pem: str | None = None, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s
        if ca_pem is None:
            self.channel = grpc.insecure_channel(target, options=_MESSAGE_OPTIONS)
        else:
            # the service CA signs only the service certificate (SANs localhost/127.0.0.1); the name
            # check adds nothing to that, and the gateway's address may be any name
            credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem.encode())
            options = [*_MESSAGE_OPTIONS, ("grpc.ssl_target_name_override", "localhost")]
            self.channel = grpc.secure_channel(target, credentials, options=options)
        self._calls = {
            name: self.channel.unary_unary(
                _path(name), request_serializer=req.SerializeToString, response_deserializer=resp.FromString
            )
            for name, (req, resp) in _MESSAGES.items()
        }

    def call(self, name: str, request: Any) -> tuple[Any, dict[str, str]]:
        """The answer and the trailing metadata; grpc.RpcError as grpc raises it."""
        answer, call = self._calls[name].with_call(request, timeout=self.timeout_s)
        return answer, {k: v for k, v in call.trailing_metadata() or ()}

    def infer(self, model: str, inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        request = pb.ModelInferRequest(model_name=model)
        for name, array in inputs.items():
            array = np.ascontiguousarray(array)
            datatype = datatype_of(array.dtype)
            if datatype is None:
                raise InferenceRequestError(f"input {name!r}: numpy dtype {array.dtype} has no OIP datatype")
            request.inputs.add(name=name, datatype=datatype, shape=array.shape)
            request.raw_input_contents.append(array.astype(DATATYPES[datatype], copy=False).tobytes())
        answer, trailing = self.call("ModelInfer", request)
        return outputs_of(answer), trailing

    def close(self) -> None:
        self.channel.close()


def outputs_of(answer: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    out = {}
    raw: Sequence[bytes] = answer.raw_output_contents
    for k, tensor in enumerate(answer.outputs):
        dtype = DATATYPES[tensor.datatype]
        if raw:
            out[tensor.name] = np.frombuffer(raw[k], dtype=dtype).reshape(tuple(tensor.shape))
        else:
            values = list(getattr(tensor.contents, _TYPED[tensor.datatype]))
            out[tensor.name] = np.asarray(values, dtype=dtype).reshape(tuple(tensor.shape))
    return out
