"""The stock Triton HTTP client (tritonclient[http], NVIDIA's) against a running `serdab serve`: health,
metadata, versioned readiness, inference with JSON and binary tensors for batches 1-4 (answers equal
to ONNX Runtime on the same model), and its errors for a wrong dtype, shape, input name and model."""

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
from tritonclient.utils import InferenceServerException  # noqa: E402

from serdab.models.load import load_model  # noqa: E402
from serdab.onnxrt import make_session  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    work = tmp_path_factory.mktemp("triton")
    trust = work / "trust.json"
    log = open(work / "serve.log", "wb")  # noqa: SIM115 - closed below
    argv = [sys.executable, "-m", "serdab", "serve", "lenet5", "--secure", "0", "--public", "1", "--port", "0"]
    process = subprocess.Popen([*argv, "--trust-file", str(trust)], stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 120
    while not trust.with_name("trust.admin-token").exists():
        assert process.poll() is None, (work / "serve.log").read_text()
        assert time.monotonic() < deadline, "serdab serve did not start"
        time.sleep(0.1)
    client = th.InferenceServerClient(json.loads(trust.read_text())["gateway"].removeprefix("http://"))
    yield client
    client.close()
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=60)
    log.close()


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
