"""OIP over gRPC end to end (`ModelService(grpc=True)`): serdab.Client on both paths, the gateway's public
door forwarding and its secure door passing TLS through (it never holds a secure call's plaintext), every
bad input an INVALID_ARGUMENT or NOT_FOUND with a message (never UNKNOWN or INTERNAL, fuzzed), closed
metric labels, and our messages the same on the wire as the Triton client's own generated ones."""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serdab.errors import AttestationError, ServeError
from serdab.serve import oip_pb2 as pb
from serdab.serve.client import Client
from serdab.serve.config import GatewayOptions, ServeConfig
from serdab.serve.gateway import ReplicaEntry
from serdab.serve.grpc_oip import CALLS, SERVICE, GrpcOip
from serdab.serve.service import ModelService
from serdab.testing import RecordingProxy

X = np.random.default_rng(1).standard_normal((2, 1, 28, 28)).astype(np.float32)
GOOD_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


def direct(x: np.ndarray) -> np.ndarray:
    from serdab.models.load import load_model
    from serdab.onnxrt import make_session

    return make_session(load_model("lenet5").proto).run(None, {"input": x})[0]


@pytest.fixture(scope="module")
def service():
    with ModelService(ServeConfig("lenet5", secure=1, public=1, gateway=GatewayOptions(grpc=True))) as svc:
        yield svc


@pytest.fixture(scope="module")
def doors(service):
    """Raw channels: the gateway's public door and a public replica's own port."""
    public = next(r for r in service.replicas.values() if r.kind == "public")
    gateway = GrpcOip(f"127.0.0.1:{service.gateway.grpc_port}", timeout_s=20)
    replica = GrpcOip(f"127.0.0.1:{public.grpc_port}", timeout_s=20)
    yield {"gateway": gateway, "replica": replica}
    gateway.close()
    replica.close()


def _code(channel: GrpcOip, request: pb.ModelInferRequest) -> tuple[grpc.StatusCode, str]:
    try:
        channel.call("ModelInfer", request)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def test_client_over_grpc_on_both_paths_equals_onnx_runtime(service):
    with Client(service.gateway.url, trust=service.trust(), protocol="grpc") as client:
        public = client.infer(X, secure=False)
        secure = client.infer(X, secure=True)
        assert client.attested is not None and client.attested["identity"].startswith("sim-")
        assert client.last_timing is not None and "infer;dur=" in client.last_timing
    np.testing.assert_allclose(public, direct(X), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(secure, public, rtol=1e-6, atol=1e-6)


def test_a_secure_grpc_call_to_other_pcrs_is_never_sent(service):
    trust = service.trust()
    trust["replica_pcrs"] = {**trust["replica_pcrs"], "2": "00" * 48}
    with Client(service.gateway.url, trust=trust, protocol="grpc") as client, pytest.raises(AttestationError):
        client.infer(X, secure=True)
    with Client(service.gateway.url, protocol="grpc") as client, pytest.raises(AttestationError):
        client.infer(X, secure=True)  # no trust statement: nothing secure is sent


def test_the_secure_door_speaks_only_tls(service):
    plain = GrpcOip(f"127.0.0.1:{service.gateway.secure_grpc_port}", timeout_s=5)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            plain.call("ServerLive", pb.ServerLiveRequest())
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        plain.close()


def test_the_gateway_never_sees_a_secure_grpc_calls_plaintext(service):
    marker = np.full((1, 1, 28, 28), 1.2345678, dtype=np.float32)
    enclave = next(r for r in service.replicas.values() if r.kind == "enclave")
    relay = RecordingProxy(("127.0.0.1", enclave.grpc_port))
    service.gateway.remove_replica(enclave.id)
    entry = ReplicaEntry(enclave.id, "enclave", ("127.0.0.1", enclave.port), enclave.host, grpc_port=relay.address[1])
    service.gateway.add_replica(entry)
    try:
        with Client(service.gateway.url, trust=service.trust(), protocol="grpc") as client:
            result = client.infer(marker, secure=True)
        seen = relay.seen()
    finally:
        service.gateway.remove_replica(enclave.id)
        service.gateway.add_replica(
            ReplicaEntry(enclave.id, "enclave", ("127.0.0.1", enclave.port), enclave.host, grpc_port=enclave.grpc_port)
        )
        relay.close()
    assert len(seen) > marker.nbytes  # the call did pass through
    assert marker.tobytes()[:64] not in seen and b"lenet5" not in seen and b"ModelInfer" not in seen
    assert result.tobytes()[:16] not in seen


def _request(**tensor) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="lenet5")
    raw = tensor.pop("raw", None)
    request.inputs.add(**{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], **tensor})
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


ONE = np.zeros((1, 1, 28, 28), dtype=np.float32).tobytes()


def _cases() -> list[tuple[str, pb.ModelInferRequest, grpc.StatusCode, str]]:
    mixed = _request(raw=ONE)
    mixed.inputs[0].contents.fp32_contents.extend([0.0] * 784)
    two_raw = _request(raw=ONE)
    two_raw.raw_input_contents.append(ONE)
    twice = _request(raw=ONE)
    twice.inputs.add(name="input", datatype="FP32", shape=[1, 1, 28, 28])
    twice.raw_input_contents.append(ONE)
    many = pb.ModelInferRequest(model_name="lenet5")
    for k in range(17):
        many.inputs.add(name=f"i{k}", datatype="FP32", shape=[1])
    unknown_output = _request(raw=ONE)
    unknown_output.outputs.add(name="logits")
    other_version = _request(raw=ONE)
    other_version.model_version = "7"
    other_model = _request(raw=ONE)
    other_model.model_name = "resnet"
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    return [
        ("contents and raw", mixed, invalid, "contents and raw_input_contents"),
        ("raw count", two_raw, invalid, "raw_input_contents has 2 entries"),
        ("no inputs", pb.ModelInferRequest(model_name="lenet5"), invalid, "1 to 16 inputs"),
        ("17 inputs", many, invalid, "1 to 16 inputs"),
        ("given twice", twice, invalid, "given twice"),
        ("negative dim", _request(shape=[-1, 1, 28, 28], raw=ONE), invalid, "negative dimension"),
        ("huge dims", _request(shape=[2**62, 2**62], raw=ONE), invalid, "over 2,147,483,648 elements"),
        ("short raw", _request(raw=ONE[:-4]), invalid, "binary bytes"),
        ("unknown datatype", _request(datatype="FP8", raw=ONE), invalid, "not supported"),
        ("BYTES", _request(datatype="BYTES", contents=pb.InferTensorContents(bytes_contents=[b"x"])), invalid, "BYTES"),
        ("FP16 typed", _request(datatype="FP16", shape=[1]), invalid, "raw_input_contents"),
        ("no data", _request(), invalid, "values for shape"),
        (
            "INT8 out of range",
            _request(datatype="INT8", shape=[2], contents=pb.InferTensorContents(int_contents=[1, 300])),
            invalid,
            "is not INT8",
        ),
        ("wrong dtype", _request(datatype="FP64", raw=ONE * 2), invalid, "must be FP32"),
        ("unknown output", unknown_output, invalid, "unknown output 'logits'"),
        ("other version", other_version, grpc.StatusCode.NOT_FOUND, "version 1 only"),
        ("other model", other_model, grpc.StatusCode.NOT_FOUND, "unknown model 'resnet'"),
    ]


@pytest.mark.parametrize("door", ["gateway", "replica"])
def test_every_bad_call_is_named_with_its_status(doors, door):
    for label, request, code, says in _cases():
        got, details = _code(doors[door], request)
        assert (got, says in details) == (code, True), f"{label}: {got} {details}"


def test_typed_contents_are_accepted_as_raw_ones_are(doors):
    typed = _request(contents=pb.InferTensorContents(fp32_contents=X[:1].reshape(-1).tolist()))
    answer, _ = doors["gateway"].call("ModelInfer", typed)
    out = np.frombuffer(answer.raw_output_contents[0], dtype=np.float32).reshape(tuple(answer.outputs[0].shape))
    np.testing.assert_allclose(out, direct(X[:1]), rtol=1e-5, atol=1e-5)
    assert answer.id == "" and answer.model_version == "1"


def test_bytes_that_are_not_the_message_are_invalid_argument(doors):
    for channel in doors.values():
        for call in ("ModelInfer", "ModelMetadata", "ServerLive"):
            raw = channel.channel.unary_unary(f"/{SERVICE}/{call}")
            with pytest.raises(grpc.RpcError) as caught:
                raw(b"\xff\xff\xff\xff\x0f", timeout=5)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (call, caught.value.details())
            assert "do not parse" in caught.value.details()


def test_calls_outside_the_protocol_are_unimplemented(doors):
    for channel in doors.values():
        other = channel.channel.unary_unary(f"/{SERVICE}/RepositoryIndex")
        with pytest.raises(grpc.RpcError) as caught:
            other(b"", timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


_TYPES = ["FP32", "FP64", "FP16", "INT8", "INT32", "INT64", "UINT8", "UINT64", "BOOL", "BYTES", "", "fp32"]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    datatype=st.sampled_from(_TYPES),
    shape=st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(0, 40), max_size=6),
    raw=st.none() | st.binary(max_size=4096),
    values=st.lists(st.floats(allow_nan=True, width=32), max_size=64),
    name=st.sampled_from(["input", "", "x" * 300]),
    version=st.sampled_from(["", "1", "2"]),
)
def test_no_call_makes_the_gateway_or_a_replica_fail(doors, datatype, shape, raw, values, name, version):
    request = pb.ModelInferRequest(model_name="lenet5", model_version=version)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    if raw is None:
        tensor.contents.fp32_contents.extend(values)
    else:
        request.raw_input_contents.append(raw)
    for channel in doors.values():
        code, details = _code(channel, request)
        assert code in GOOD_CODES, f"{code}: {details}"


def test_metric_labels_stay_a_closed_set(service, doors):
    for _ in range(3):
        for _, request, _, _ in _cases():
            _code(doors["replica"], request)
    public = next(r for r in service.replicas.values() if r.kind == "public")
    text = httpx.get(f"http://127.0.0.1:{public.port}/metrics").text
    routes = {line.split('route="')[1].split('"')[0] for line in text.splitlines() if 'route="' in line}
    grpc_routes = {r for r in routes if r.startswith("grpc:")}
    assert "grpc:ModelInfer" in grpc_routes and grpc_routes <= {f"grpc:{call}" for call in CALLS}


def test_our_messages_are_the_triton_clients_on_the_wire():
    """Field numbers, names and types of every message we serve against tritonclient's generated code
    (NVIDIA's, from Triton's proto): what one serialises the other reads."""
    service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")

    def fields(descriptor) -> dict[int, tuple[str, int, int]]:
        return {f.number: (f.name, f.type, f.label) for f in descriptor.fields}

    def walk(ours, theirs) -> None:
        assert set(fields(ours).items()) <= set(fields(theirs).items()), ours.full_name
        for nested in ours.nested_types:
            walk(nested, theirs.nested_types_by_name[nested.name])

    for name, descriptor in pb.DESCRIPTOR.message_types_by_name.items():
        walk(descriptor, getattr(service_pb2, name).DESCRIPTOR)


def test_a_deployment_without_grpc_says_so():
    with (
        ModelService(ServeConfig("lenet5", secure=0, public=1)) as plain,
        Client(plain.gateway.url, protocol="grpc") as client,
        pytest.raises(ServeError, match="serdab serve --grpc"),
    ):
        client.infer(X, secure=False)
    with pytest.raises(ServeError, match="protocol must be http or grpc"):
        Client("http://127.0.0.1:9", protocol="websocket")
