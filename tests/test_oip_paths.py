"""The replica's Open Inference Protocol as clients send it: versioned paths, no Content-Type, no id,
absurd shapes, invented paths. Raw HTTP through Starlette's test client (httpx), no Serdab client."""

from __future__ import annotations

import json

import numpy as np
import pytest
from starlette.testclient import TestClient

from serdab.models.load import load_model
from serdab.serve.replica import ModelRunner, create_replica_app


@pytest.fixture(scope="module")
def client():
    runner = ModelRunner("lenet5", load_model("lenet5").proto.SerializeToString())
    with TestClient(create_replica_app(runner, "public", replica_id="oip")) as c:
        yield c


def _body(shape=(1, 1, 28, 28), **extra) -> bytes:
    data = np.zeros(shape, dtype=np.float32).reshape(-1).tolist()
    return json.dumps(
        {"inputs": [{"name": "input", "shape": list(shape), "datatype": "FP32", "data": data}], **extra}
    ).encode()


def test_a_json_body_without_content_type_is_json_and_no_id_means_no_id(client) -> None:
    name = client.get("/v2/models/lenet5").json()["inputs"][0]["name"]
    body = _body().replace(b'"input"', json.dumps(name).encode(), 1)
    answer = client.post("/v2/models/lenet5/infer", content=body, headers={"content-type": ""})
    assert answer.status_code == 200, answer.text
    assert "id" not in answer.json() and answer.json()["outputs"][0]["shape"] == [1, 10]
    with_id = json.dumps({**json.loads(body), "id": "frame-7"}).encode()
    assert client.post("/v2/models/lenet5/infer", content=with_id).json()["id"] == "frame-7"


def test_the_versioned_paths_answer_for_version_1_only(client) -> None:
    assert client.get("/v2/models/lenet5/versions/1/ready").json() == {"name": "lenet5", "ready": True}
    assert client.get("/v2/models/lenet5/versions/1").json()["versions"] == ["1"]
    name = client.get("/v2/models/lenet5").json()["inputs"][0]["name"]
    body = _body().replace(b'"input"', json.dumps(name).encode(), 1)
    answer = client.post(
        "/v2/models/lenet5/versions/1/infer", content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 200
    missing = client.get("/v2/models/lenet5/versions/2/ready")
    assert missing.status_code == 404 and "version 1 only" in missing.json()["error"]


def test_a_dimension_past_64_bits_is_a_400(client) -> None:
    body = json.dumps({"inputs": [{"name": "x", "shape": [2**70, 1], "datatype": "FP32", "data": [0.0]}]})
    answer = client.post("/v2/models/lenet5/infer", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 400 and "elements" in answer.json()["error"]


def test_invented_paths_do_not_grow_the_metrics(client) -> None:
    for i in range(5):
        client.get(f"/nowhere/{i}")
    before = client.get("/metrics").text
    for i in range(200):
        client.get(f"/invented/{i}")
        client.get(f"/v2/models/lenet5/{i}")
        client.get(f"/v2/models/other{i}/versions/{i}/x")
    after = client.get("/metrics").text
    routes = {line.split('route="')[1].split('"')[0] for line in after.splitlines() if 'route="' in line}
    assert routes <= {
        "other",
        "/metrics",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}",
        "/v2/models/{name}/versions/{version}/ready",
        "/v2/models/{name}/versions/{version}/infer",
    }
    assert abs(len(after) - len(before)) < 2_000  # counters change, no series is added
