"""Acceptance: two KMS replicas and enclaves of one service, all separate processes."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

import serdab.kms.apps.tls_echo as tls_echo
from serdab.errors import KmsError, TeeError
from serdab.kms import attest_kms, connect_service, kms_image, open_service
from serdab.tee import build_image, measure_image
from serdab.tee.simulated import SimulatedBackend

MEASURED = (0, 1, 2)


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.setenv("SERDAB_HOME", str(tmp_path / "home"))
    token = secrets.token_hex(16)
    backend = SimulatedBackend()
    started = []
    clients = []

    def launch(image: Path, args: list[str], name: str):
        enclave = backend.launch(image, args, env={"SERDAB_KMS_ADMIN_TOKEN": token}, log_path=tmp_path / f"{name}.log")
        started.append(enclave)
        return enclave

    yield backend, launch, token, clients, tmp_path
    for client in clients:
        client.close()
    for enclave in started:
        backend.terminate(enclave)
    backend.close()
    assert not any(e.alive() for e in started)


def test_two_replicas_two_enclaves_one_service(world) -> None:
    backend, launch, token, clients, tmp = world
    image = kms_image(tmp / "images")
    kms_pcrs = {i: v for i, v in measure_image(image).items() if i in MEASURED}
    store = f"sqlite:{tmp / 'kms.db'}"
    roots = [backend.host.root_cert]

    def start_kms(name: str, peers: list[str]) -> str:
        args = ["--store", store, "--data", str(tmp / name), "--allow-simulated"]
        enclave = launch(image, args + [f"--peer={p}" for p in peers], name)
        return f"https://127.0.0.1:{backend.wait_ready(enclave)['port']}", enclave

    url_a, kms_a = start_kms("kms-a", [])
    url_b, _ = start_kms("kms-b", [url_a])
    assert kms_a.info["storage_key"] == "created"

    admin = attest_kms(url_a, expected_pcrs=kms_pcrs, allow_simulated=True, simulated_roots=roots)
    clients.append(admin)
    assert admin.attestation.simulated and admin.attestation.kind == "aws-nitro"
    service_image = build_image(Path(tls_echo.__file__), tmp / "echo-image", "tls_echo:main")
    service_pcrs = {i: v for i, v in measure_image(service_image).items() if i in MEASURED}
    admin.register("echo", token, service_pcrs, allow_simulated=True)

    def service_args(url: str) -> list[str]:
        return ["--kms", url, "--service", "echo", "--allow-simulated"] + [
            f"--kms-pcr={i}={v.hex()}" for i, v in kms_pcrs.items()
        ]

    # both enclaves (one per KMS replica) receive the same service key
    first = launch(service_image, service_args(url_a), "echo-1")
    second = launch(service_image, service_args(url_b), "echo-2")
    info = [backend.wait_ready(first), backend.wait_ready(second)]
    assert info[0]["key_sha256"] == info[1]["key_sha256"]

    # a client verifies the KMS and completes a TLS handshake with either enclave
    client = attest_kms(url_b, expected_pcrs=kms_pcrs, allow_simulated=True, simulated_roots=roots)
    clients.append(client)
    for port in (info[0]["port"], info[1]["port"]):
        with connect_service(client, "echo", ("127.0.0.1", port)) as tls:
            tls.sendall(b"frame")
            assert tls.recv(16) == b"frame"
    with pytest.raises(KmsError, match="not an enclave of echo"):  # fails closed on anything else
        connect_service(client, "echo", ("127.0.0.1", int(url_a.rsplit(":", 1)[1])))
    with open_service(
        url_a,
        "echo",
        ("127.0.0.1", info[1]["port"]),
        expected_kms_pcrs=kms_pcrs,
        allow_simulated=True,
        simulated_roots=roots,
    ) as tls:  # the one-call form
        tls.sendall(b"one call")
        assert tls.recv(16) == b"one call"

    # the real server answers bad input with a 4xx and keeps serving
    for kwargs, status in [
        ({"content": b"\xff", "headers": {"content-type": "application/cbor"}}, 400),
        ({"content": b"x" * 70_000, "headers": {"content-type": "application/cbor"}}, 413),
        ({"content": b"{}", "headers": {"content-type": "application/json"}}, 415),
    ]:
        response = client.client.post(url_b + "/v1/services/echo/keys", **kwargs)
        assert response.status_code == status and response.json()["error"]
    assert client.client.get(url_b + "/v1/services/nope/certificate").status_code == 404
    assert client.request("GET", "/v1/health").json()["status"] == "ok"

    # an enclave built from different code is refused
    changed = tmp / "changed.py"
    changed.write_text(Path(tls_echo.__file__).read_text() + "\n# one changed line\n")
    rogue = launch(build_image(changed, tmp / "rogue-image", "changed:main"), service_args(url_a), "rogue")
    with pytest.raises(TeeError, match="refused: PcrMismatchError"):
        backend.wait_ready(rogue)

    # killing a replica and starting it again loses no service
    admin.register("second-service", token, service_pcrs, allow_simulated=True)
    before = admin.service_certificate("echo")
    admin.close()
    backend.terminate(kms_a)
    url_a2, kms_a2 = start_kms("kms-a", [])
    assert kms_a2.info["storage_key"] == "unsealed"
    again = attest_kms(url_a2, expected_pcrs=kms_pcrs, allow_simulated=True, simulated_roots=roots)
    clients.append(again)
    assert again.service_certificate("echo") == before
    assert again.request("GET", "/v1/health").json()["services"] == 2


def test_a_fresh_replica_without_peers_cannot_take_over_the_store(world) -> None:
    backend, launch, _, _, tmp = world
    image = kms_image(tmp / "images")
    store = f"sqlite:{tmp / 'kms.db'}"
    first = launch(image, ["--store", store, "--data", str(tmp / "a"), "--allow-simulated"], "a")
    backend.wait_ready(first)
    second = launch(image, ["--store", store, "--data", str(tmp / "b"), "--allow-simulated"], "b")
    with pytest.raises(TeeError, match="another replica initialised this store; start with --peer"):
        backend.wait_ready(second)
