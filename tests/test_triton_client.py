"""The stock Triton clients (tritonclient[http] and tritonclient[grpc], NVIDIA's) against a running
`serdab serve --grpc`: health, metadata, versioned readiness, inference with JSON and binary tensors
(HTTP) and raw tensors (gRPC, public and secure) for batches 1-4 (answers equal to ONNX Runtime on
the same model), and their errors for a wrong dtype, shape, input name and model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

th = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a dev dependency")
tg = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is a dev dependency")
import httpx  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from serdab.models.load import load_model  # noqa: E402
from serdab.onnxrt import make_session  # noqa: E402


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """`serdab serve lenet5 --grpc` with an enclave and a public replica; its trust statement and doors."""
    work = tmp_path_factory.mktemp("triton")
    trust_file = work / "trust.json"
    log = open(work / "serve.log", "wb")  # noqa: SIM115 - closed below
    argv = [sys.executable, "-m", "serdab", "serve", "lenet5", "--secure", "1", "--public", "1", "--port", "0"]
    argv += ["--grpc", "--grpc-port", "0", "--trust-file", str(trust_file)]
    process = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not trust_file.exists():
            assert process.poll() is None, (work / "serve.log").read_text()
            assert time.monotonic() < deadline, "serdab serve did not start"
            time.sleep(0.1)
        trust = json.loads(trust_file.read_text())
        yield trust, httpx.get(trust["gateway"] + "/v1/gateway").json(), work
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        log.close()


@pytest.fixture(scope="module")
def served(deployment):
    client = th.InferenceServerClient(deployment[0]["gateway"].removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module", params=["public", "secure"])
def grpc_client(deployment, request):
    """The stock gRPC client at the gateway's public door, or over TLS to an enclave through the secure
    door, trusting only the service CA that the attested key service hands out."""
    from serdab.serve.client import service_certificate

    trust, info, work = deployment
    if request.param == "public":
        client = tg.InferenceServerClient(f"127.0.0.1:{info['grpc_port']}")
    else:
        ca = work / "service-ca.pem"
        ca.write_text(service_certificate(trust)[0]["ca_pem"])
        client = tg.InferenceServerClient(
            f"127.0.0.1:{info['secure_grpc_port']}",
            ssl=True,
            root_certificates=str(ca),
            channel_args=[("grpc.ssl_target_name_override", "localhost")],
        )
    yield client
    client.close()


def test_health_metadata_and_versioned_readiness(served) -> None:
    assert served.is_server_live() and served.is_server_ready()
    assert served.is_model_ready("lenet5") and served.is_model_ready("lenet5", "1")
    assert not served.is_model_ready("lenet5", "2") and not served.is_model_ready("nomodel")
    meta = served.get_model_metadata("lenet5")
    assert meta["versions"] == ["1"] and meta["inputs"][0]["datatype"] == "FP32"


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("batch", [1, 2, 4])
def test_inference_equals_onnx_runtime(served, binary: bool, batch: int) -> None:
    meta = served.get_model_metadata("lenet5")
    inp, out = meta["inputs"][0], meta["outputs"][0]
    x = np.random.default_rng(batch).random([batch, *inp["shape"][1:]], dtype=np.float32)
    tensor = th.InferInput(inp["name"], list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    answer = served.infer("lenet5", [tensor], outputs=[th.InferRequestedOutput(out["name"], binary_data=binary)])
    expected = make_session(load_model("lenet5").proto.SerializeToString()).run(None, {inp["name"]: x})[0]
    np.testing.assert_allclose(answer.as_numpy(out["name"]), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "datatype", "shape", "status", "says"),
    [
        ("input", "INT32", [1, 1, 28, 28], "400", "must be FP32"),
        ("input", "FP32", [1, 3, 28, 28], "400", "has shape"),
        ("nope", "FP32", [1, 1, 28, 28], "400", "unknown input"),
    ],
)
def test_wrong_inputs_are_4xx_with_a_message(served, name, datatype, shape, status, says) -> None:
    tensor = th.InferInput(name, shape, datatype)
    tensor.set_data_from_numpy(np.zeros(shape, dtype=np.int32 if datatype == "INT32" else np.float32))
    with pytest.raises(InferenceServerException) as caught:
        served.infer("lenet5", [tensor])
    assert caught.value.status() == status and says in str(caught.value)


def test_an_unknown_model_is_404(served) -> None:
    with pytest.raises(InferenceServerException) as caught:
        served.get_model_metadata("nomodel")
    assert caught.value.status() == "404"


def _expected(x: np.ndarray) -> np.ndarray:
    return make_session(load_model("lenet5").proto.SerializeToString()).run(None, {"input": x})[0]


def test_grpc_health_metadata_and_versioned_readiness(grpc_client) -> None:
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert grpc_client.is_model_ready("lenet5") and grpc_client.is_model_ready("lenet5", "1")
    assert not grpc_client.is_model_ready("lenet5", "2") and not grpc_client.is_model_ready("nomodel")
    assert grpc_client.get_server_metadata().name == "serdab"
    meta = grpc_client.get_model_metadata("lenet5")
    assert list(meta.versions) == ["1"] and meta.inputs[0].datatype == "FP32"
    assert list(meta.inputs[0].shape) == [-1, 1, 28, 28]


@pytest.mark.parametrize("batch", [1, 2, 3, 4])
def test_grpc_inference_equals_onnx_runtime(grpc_client, batch: int) -> None:
    x = np.random.default_rng(batch).random([batch, 1, 28, 28], dtype=np.float32)
    tensor = tg.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    answer = grpc_client.infer("lenet5", [tensor], outputs=[tg.InferRequestedOutput("output")], request_id="r-7")
    np.testing.assert_allclose(answer.as_numpy("output"), _expected(x), rtol=1e-5, atol=1e-5)
    assert answer.get_response().id == "r-7"


@pytest.mark.parametrize(
    ("name", "datatype", "shape", "code", "says"),
    [
        ("input", "INT32", [1, 1, 28, 28], "INVALID_ARGUMENT", "must be FP32"),
        ("input", "FP32", [1, 3, 28, 28], "INVALID_ARGUMENT", "has shape"),
        ("nope", "FP32", [1, 1, 28, 28], "INVALID_ARGUMENT", "unknown input"),
    ],
)
def test_grpc_wrong_inputs_are_named(grpc_client, name, datatype, shape, code, says) -> None:
    tensor = tg.InferInput(name, shape, datatype)
    tensor.set_data_from_numpy(np.zeros(shape, dtype=np.int32 if datatype == "INT32" else np.float32))
    with pytest.raises(InferenceServerException) as caught:
        grpc_client.infer("lenet5", [tensor])
    assert code in caught.value.status() and says in str(caught.value)


def test_grpc_unknown_model_is_not_found(grpc_client) -> None:
    with pytest.raises(InferenceServerException) as caught:
        grpc_client.get_model_metadata("nomodel")
    assert "NOT_FOUND" in caught.value.status()
    tensor = tg.InferInput("input", [1, 1, 28, 28], "FP32")
    tensor.set_data_from_numpy(np.zeros([1, 1, 28, 28], dtype=np.float32))
    with pytest.raises(InferenceServerException) as caught:
        grpc_client.infer("nomodel", [tensor])
    assert "NOT_FOUND" in caught.value.status()
