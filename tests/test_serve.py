"""Secure serving end to end: real key service, enclave and public replicas, gateway, HTTP clients."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from serdab.errors import AttestationError, InferenceRequestError, PcrMismatchError
from serdab.serve.autoscale import AutoscaleConfig
from serdab.serve.client import Client
from serdab.serve.config import GatewayOptions, ServeConfig
from serdab.serve.gateway import ReplicaEntry
from serdab.serve.protocol import (
    BINARY_HEADER,
    encode_infer_request,
    encode_infer_response,
    parse_infer_request,
    parse_infer_response,
)
from serdab.serve.service import ModelService
from serdab.testing import RecordingProxy

X = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)


def direct(x: np.ndarray) -> np.ndarray:
    from serdab.models.load import load_model
    from serdab.onnxrt import make_session

    session = make_session(load_model("lenet5").proto)
    return session.run(None, {"input": x})[0]


# --- the wire format --------------------------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False])
def test_oip_request_and_response_round_trip(binary):
    body, headers = encode_infer_request({"input": X}, binary=binary, request_id="r1")
    request, tensors, wants_binary = parse_infer_request(body, headers.get(BINARY_HEADER))
    assert request.id == "r1" and wants_binary == binary
    np.testing.assert_array_equal(tensors["input"], X)
    body, headers = encode_infer_response("lenet5", {"output": X[:, 0, 0, :10]}, "r1", binary)
    np.testing.assert_allclose(parse_infer_response(body, headers.get(BINARY_HEADER))["output"], X[:, 0, 0, :10])


@pytest.mark.parametrize(
    ("body", "header", "message"),
    [
        (b"{not json", None, "not an OIP v2 inference request"),
        (b'{"inputs": []}', None, "inputs"),
        (b'{"inputs": [{"name": "input", "shape": [2], "datatype": "FP32", "data": [1]}]}', None, "1 values"),
        (b'{"inputs": [{"name": "input", "shape": [1], "datatype": "STRING", "data": ["a"]}]}', None, "datatype"),
        (b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": ["x"]}]}', None, "not FP32"),
        (
            b'{"inputs": [{"name": "input", "shape": [2], "datatype": "FP32", '
            b'"parameters": {"binary_data_size": 8}}]}abcd',
            "104",
            "does not fit the body",
        ),
        (b"{}", "999", "outside the 2-byte body"),
        (b"{}", "two", "must be an integer"),
    ],
)
def test_malformed_oip_requests_are_named(body, header, message):
    with pytest.raises(InferenceRequestError, match=message):
        parse_infer_request(body, header)


# --- one service for the API tests ------------------------------------------------------------------
@pytest.fixture(scope="module")
def service():
    svc = ModelService(ServeConfig("lenet5", secure=1, public=1)).start()
    yield svc
    svc.stop()
    assert all(not r.alive() for r in svc.replicas.values())


@pytest.fixture(scope="module")
def replica_url(service):
    public = next(r for r in service.replicas.values() if r.kind == "public")
    return f"http://127.0.0.1:{public.port}"


def test_oip_endpoints_answer_as_the_protocol_says(replica_url):
    with httpx.Client(base_url=replica_url) as http:
        assert http.get("/v2/health/live").status_code == 200
        assert http.get("/v2/health/ready").status_code == 200
        assert "binary_tensor_data" in http.get("/v2").json()["extensions"]
        meta = http.get("/v2/models/lenet5").json()
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
        assert meta["outputs"][0]["datatype"] == "FP32"
        assert http.get("/v2/models/lenet5/ready").json()["ready"] is True
        body = {
            "id": "q",
            "inputs": [{"name": "input", "shape": [2, 1, 28, 28], "datatype": "FP32", "data": X.tolist()}],
        }
        reply = http.post("/v2/models/lenet5/infer", json=body)
        assert reply.status_code == 200 and reply.json()["id"] == "q"
        out = reply.json()["outputs"][0]
        assert out["shape"] == [2, 10]
        np.testing.assert_allclose(np.array(out["data"]).reshape(2, 10), direct(X), rtol=1e-5, atol=1e-5)
        content, headers = encode_infer_request({"input": X})
        reply = http.post("/v2/models/lenet5/infer", content=content, headers=headers)
        assert reply.headers["content-type"] == "application/octet-stream"
        got = parse_infer_response(reply.content, reply.headers[BINARY_HEADER])["output"]
        np.testing.assert_allclose(got, direct(X), rtol=1e-5, atol=1e-5)
        assert b"serdab_replica_request_seconds" in http.get("/metrics").content


@pytest.mark.parametrize(
    ("kind", "status", "fragment"),
    [
        ("malformed", 400, "not an OIP v2 inference request"),
        ("shape", 400, "has shape [2, 1, 28, 27]"),
        ("dtype", 400, "must be FP32"),
        ("unknown-model", 404, "unknown model"),
        ("unknown-input", 400, "unknown input"),
        ("too-large", 413, "limit"),
        ("content-type", 415, "content type"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message_and_the_replica_keeps_serving(replica_url, kind, status, fragment):
    path, headers = "/v2/models/lenet5/infer", {"content-type": "application/json"}
    if kind == "malformed":
        body = b'{"inputs": [{'
    elif kind == "shape":
        body = json.dumps(
            {"inputs": [{"name": "input", "shape": [2, 1, 28, 27], "datatype": "FP32", "data": [0.0] * (2 * 28 * 27)}]}
        ).encode()
    elif kind == "dtype":
        body = json.dumps(
            {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "INT32", "data": [0] * 784}]}
        ).encode()
    elif kind == "unknown-model":
        path, body = "/v2/models/resnet50/infer", b"{}"
    elif kind == "unknown-input":
        body = json.dumps({"inputs": [{"name": "pixels", "shape": [1], "datatype": "FP32", "data": [0.0]}]}).encode()
    elif kind == "too-large":
        body = b"{" + b" " * (65 * 2**20) + b"}"
    else:
        body, headers = b"x", {"content-type": "text/plain"}
    with httpx.Client(base_url=replica_url, timeout=30) as http:
        reply = http.post(path, content=body, headers=headers)
        assert reply.status_code == status
        assert fragment in reply.json()["error"]
        content, good = encode_infer_request({"input": X})
        assert http.post("/v2/models/lenet5/infer", content=content, headers=good).status_code == 200


def test_seed001_base64_batch_endpoints(service):
    rng = np.random.default_rng(3)
    pixels = [(rng.random((40, 30)) * 255).astype(np.uint8) for _ in range(2)]
    with Client(service.gateway.url, trust=service.trust()) as client:
        public = client.predict(pixels, secure=False, top_k=3)
        secure = client.predict(pixels, secure=True, top_k=3)
    assert len(public) == 2 and len(public[0]) == 3
    assert public == secure  # the same model in both kinds of replica
    scores = [p["score"] for p in public[0]]
    assert scores == sorted(scores, reverse=True)
    with httpx.Client(base_url=service.gateway.url) as http:
        bad = http.post("/predict-public", json={"images": ["not base64!"]})
        assert bad.status_code == 400 and "base64" in bad.json()["error"]


def test_secure_and_public_paths_give_the_same_answer(service):
    with Client(service.gateway.url, trust=service.trust()) as client:
        public = client.infer(X, secure=False)
        secure = client.infer(X, secure=True)
        assert client.attested is not None and client.attested["identity"].startswith("sim-")
    np.testing.assert_allclose(secure, public, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(public, direct(X), rtol=1e-5, atol=1e-5)


def test_a_secure_route_over_plain_http_is_refused(service):
    with httpx.Client(base_url=service.gateway.url) as http:
        reply = http.post("/predict-secure", json={"images": []})
    assert reply.status_code == 403 and "TLS" in reply.json()["error"]


def test_client_refuses_an_enclave_with_other_pcrs(service):
    trust = service.trust()
    trust["replica_pcrs"] = {**trust["replica_pcrs"], "2": "00" * 48}
    with Client(service.gateway.url, trust=trust) as client, pytest.raises(AttestationError, match="other enclaves"):
        client.infer(X, secure=True)


def test_client_refuses_a_key_service_it_cannot_verify(service):
    trust = service.trust()
    trust["kms_pcrs"] = {**trust["kms_pcrs"], "0": "11" * 48}
    with Client(service.gateway.url, trust=trust) as client, pytest.raises(PcrMismatchError):
        client.infer(X, secure=True)
    untrusted_root = service.trust()
    untrusted_root.pop("simulated_root_pem")
    with Client(service.gateway.url, trust=untrusted_root) as client, pytest.raises(AttestationError):
        client.infer(X, secure=True)


def test_without_a_trust_statement_nothing_secure_is_sent(service):
    with Client(service.gateway.url) as client, pytest.raises(AttestationError, match="trust statement"):
        client.infer(X, secure=True)


def test_gateway_metrics_and_info(service):
    with Client(service.gateway.url, trust=service.trust()) as client:
        client.infer(X, secure=False)
    with httpx.Client(base_url=service.gateway.url) as http:
        info = http.get("/v1/gateway").json()
        assert info["model"] == "lenet5" and info["healthy"] == {"enclave": 1, "public": 1}
        metrics = http.get("/metrics").text
    assert 'serdab_gateway_request_seconds_count{kind="public",route="/v2/..."}' in metrics
    assert "serdab_gateway_replica_healthy" in metrics


# --- the gateway never holds a secure request's plaintext --------------------------------------------
def test_the_gateway_never_sees_a_secure_requests_plaintext():
    marker = np.full((1, 1, 28, 28), 1.2345678, dtype=np.float32)  # a recognisable pattern
    with ModelService(ServeConfig("lenet5", secure=1, public=0)) as svc:
        # an all-enclave deployment is ready on the protocol's own probe, and says what it is
        import httpx

        assert httpx.get(f"{svc.gateway.url}/v2/health/ready").json() == {"ready": True}
        metadata = httpx.get(f"{svc.gateway.url}/v2").json()
        assert metadata["name"] == "serdab" and metadata["ready_replicas"] == {"enclave": 1, "public": 0}
        (replica,) = svc.replicas.values()
        # the gateway relays secure connections byte for byte (L4): what it sends the enclave and gets
        # back is everything it ever holds of them, so a recorder on that leg sees what the gateway sees
        relay = RecordingProxy(("127.0.0.1", replica.port))
        svc.gateway.remove_replica(replica.id)
        svc.gateway.add_replica(ReplicaEntry(replica.id, "enclave", relay.address, replica.host))
        try:
            with Client(svc.gateway.url, trust=svc.trust()) as client:
                client.infer(marker, secure=True)
                result = client.infer(marker, secure=True)
                assert client.served_by is None or client.served_by == replica.id
        finally:
            relay.close()
        seen = relay.seen()
    assert len(seen) > marker.nbytes  # the request did pass through the gateway
    needle = marker.tobytes()[:64]
    assert needle not in seen and b"lenet5/infer" not in seen and b"binary_data_size" not in seen
    assert result.tobytes()[:16] not in seen  # nor the answer


# --- faults and scaling (own services: they kill and add replicas) ----------------------------------
def test_a_replica_killed_under_load_loses_no_request():
    with ModelService(ServeConfig("lenet5", secure=2, public=2)) as svc:
        trust = svc.trust()
        victims = [next(r for r in svc.replicas.values() if r.kind == kind) for kind in ("public", "enclave")]
        results: list[np.ndarray] = []
        errors: list[Exception] = []
        outstanding: dict[int, tuple[bool, float]] = {}  # thread -> (secure, when its current call began)

        def worker(secure: bool) -> None:
            with Client(svc.gateway.url, trust=trust) as client:
                for _ in range(25):
                    outstanding[threading.get_ident()] = (secure, time.monotonic())
                    try:
                        results.append(client.infer(X, secure=secure))
                    except Exception as exc:  # noqa: BLE001 - counted and asserted on
                        errors.append(exc)
                    finally:
                        outstanding.pop(threading.get_ident(), None)

        def stuck(secure: bool) -> bool:  # a call of this kind waiting far longer than one takes (~ms)
            now = time.monotonic()
            return any(s == secure and now - began > 1.0 for s, began in list(outstanding.values()))

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(worker, k % 2 == 0) for k in range(6)]
            while len(results) < 12:  # both kinds flowing
                time.sleep(0.01)
            for victim in victims:  # frozen first, so requests reach them and wait there
                assert victim.pid is not None
                os.kill(victim.pid, signal.SIGSTOP)
            deadline = time.monotonic() + 20
            while not (stuck(True) and stuck(False)) and time.monotonic() < deadline:
                time.sleep(0.05)
            in_flight = (stuck(True), stuck(False))
            answered_before_kill = len(results)
            for victim in victims:
                os.kill(victim.pid, signal.SIGKILL)
            for f in futures:
                f.result()
        assert in_flight == (True, True), "no request was waiting on a victim when the kill landed"
        assert answered_before_kill < 150
        assert errors == []
        assert len(results) == 150
        expected = direct(X)
        for r in results:
            np.testing.assert_allclose(r, expected, rtol=1e-5, atol=1e-5)
        with Client(svc.gateway.url, trust=trust) as client:  # still serving both kinds
            client.infer(X, secure=True)
            client.infer(X, secure=False)
        deadline = time.monotonic() + 30  # and the dead replicas are replaced
        while (len(svc.restarts) < 2 or sum(r.alive() for r in list(svc.replicas.values())) < 4) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert sorted(r["kind"] for r in svc.restarts) == ["enclave", "public"]
        assert sum(r.alive() for r in svc.replicas.values()) == 4


def test_autoscaler_adds_a_replica_under_load_and_removes_it_after():
    config = AutoscaleConfig(min_replicas=1, max_replicas=2, target_utilisation=0.3, cooldown_s=1.0)
    options = ServeConfig(
        "resnet18", secure=0, public=1, autoscale={"public": config}, gateway=GatewayOptions(autoscale_interval_s=0.5)
    )
    with ModelService(options) as svc:
        stop = threading.Event()
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)

        def load() -> None:
            with Client(svc.gateway.url) as client:
                while not stop.is_set():
                    client.infer(x, secure=False)

        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(svc.replicas) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join()
        assert len(svc.replicas) == 2, svc.decisions
        deadline = time.monotonic() + 30
        while len(svc.replicas) > 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(svc.replicas) == 1, svc.decisions
        assert [d["delta"] for d in svc.decisions] == [1, -1]
        metrics = httpx.get(svc.gateway.url + "/metrics").text
        assert 'serdab_autoscaler_decisions_total{direction="up",kind="public"} 1.0' in metrics
        assert 'serdab_autoscaler_decisions_total{direction="down",kind="public"} 1.0' in metrics
        assert 'serdab_replicas{kind="public"} 1.0' in metrics
