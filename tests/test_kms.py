from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest
from fastapi.testclient import TestClient

from serdab.crypto import new_key, open_envelope, public_der
from serdab.errors import KmsError, KmsRefusedError, KmsUnreachableError, UnknownServiceError
from serdab.kms import KeyService, ReleasedKeys, ServicePolicy, SqliteStore, StateStore, attest_kms, open_store
from serdab.kms.server import MAX_BODY, create_app
from serdab.kms.state import STATE_KEY
from serdab.kms.store import Store
from serdab.tee import HostIdentity
from serdab.tee.nsm import NsmDevice

PCRS = {i: bytes([i]) * 48 for i in range(18)}
OTHER = {**PCRS, 2: b"\x99" * 48}
POLICY = ServicePolicy(pcrs={i: PCRS[i].hex() for i in (0, 1, 2)}, allow_simulated=True)


def _free_port() -> int:  # PostgreSQL takes a port number, not 0: the one place a test picks a port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A real PostgreSQL server for this module, started and stopped by PID (installed by .ci/run)."""
    initdb = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    if initdb is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed; .ci/run installs it")
        pytest.skip("PostgreSQL not installed (apt-get install postgresql)")
    bindir = Path(initdb).parent
    base = Path(tempfile.mkdtemp(prefix="serdab-pg-"))  # pytest's tmp dirs are 0700 root: postgres can't enter
    data = base / "data"
    run_as: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        run_as = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres")
    port = _free_port()
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    server = subprocess.Popen(
        [
            *run_as,
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(data),
            "-c",
            "listen_addresses=127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    deadline = time.monotonic() + 30
    while True:
        try:
            open_store(dsn)
            break
        except KmsError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("PostgreSQL did not start")
            time.sleep(0.2)
    yield dsn
    server.terminate()  # by PID; runuser forwards the signal
    server.wait(timeout=30)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> Store:
    if request.param == "sqlite":
        return open_store(f"sqlite:{tmp_path / 'kms.db'}")
    dsn = request.getfixturevalue("postgres")
    store = open_store(dsn)
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("DELETE FROM serdab_kms")
    return store


def test_compare_and_swap(store) -> None:
    assert store.get("k") is None
    assert store.compare_and_swap("k", 0, b"one")
    assert not store.compare_and_swap("k", 0, b"again")  # already created
    assert store.get("k").version == 1
    assert store.compare_and_swap("k", 1, b"two")
    assert not store.compare_and_swap("k", 1, b"stale writer")  # CAS conflict
    assert store.get("k").value == b"two" and store.get("k").version == 2


def test_two_replicas_racing_lose_no_registration(store) -> None:
    key = os.urandom(32)
    replicas = [KeyService(StateStore(store, key)) for _ in range(2)]
    names = [[f"r{r}-s{i}" for i in range(6)] for r in range(2)]

    def work(r: int) -> None:
        for name in names[r]:
            replicas[r].register(name, POLICY)

    threads = [threading.Thread(target=work, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert replicas[0].services() == sorted(names[0] + names[1])


def test_state_is_encrypted_and_tamper_evident(tmp_path) -> None:
    store = SqliteStore(tmp_path / "kms.db")
    service = KeyService(StateStore(store, os.urandom(32)))
    service.register("echo", POLICY)
    blob = store.get(STATE_KEY)
    assert b"echo" not in blob.value and b"PRIVATE KEY" not in blob.value
    with pytest.raises(KmsError, match="does not decrypt"):
        KeyService(StateStore(store, os.urandom(32))).services()


def test_unknown_store_url() -> None:
    with pytest.raises(KmsError, match="use sqlite:PATH or postgresql://"):
        open_store("redis://localhost")


@pytest.fixture
def host(tmp_path) -> HostIdentity:
    return HostIdentity.load_or_create(tmp_path / "host")


@pytest.fixture
def service(tmp_path, host) -> KeyService:
    service = KeyService(StateStore(SqliteStore(tmp_path / "kms.db"), os.urandom(32)), simulated_roots=[host.root_cert])
    service.register("echo", POLICY)
    return service


def _ask(service: KeyService, device: NsmDevice, name: str = "echo") -> ReleasedKeys:
    key = new_key()
    document = device.attest(nonce=service.issue_nonce(), public_key=public_der(key.public_key()))
    return ReleasedKeys.from_cbor(open_envelope(service.release(name, document), key, context=name.encode()))


def test_keys_go_only_to_enclaves_the_policy_names(service, host) -> None:
    first = _ask(service, NsmDevice(host, "sim-a", PCRS, debug=False))
    second = _ask(service, NsmDevice(host, "sim-b", PCRS, debug=False))
    assert first.key_pem == second.key_pem and first.model_key == second.model_key
    with pytest.raises(KmsRefusedError, match="PcrMismatchError: PCR2"):
        _ask(service, NsmDevice(host, "sim-c", OTHER, debug=False))
    with pytest.raises(KmsRefusedError, match="DebugEnclaveError"):
        _ask(service, NsmDevice(host, "sim-d", PCRS, debug=True))


def test_release_needs_a_kms_nonce_and_a_public_key(service, host) -> None:
    device = NsmDevice(host, "sim-a", PCRS, debug=False)
    public = public_der(new_key().public_key())
    with pytest.raises(KmsRefusedError, match="NonceError"):
        service.release("echo", device.attest(nonce=b"my own nonce", public_key=public))
    with pytest.raises(KmsRefusedError, match="no public_key"):
        service.release("echo", device.attest(nonce=service.issue_nonce()))
    # the verifier takes public_key as opaque bytes (genuine documents carry other bytes there); the key service,
    # which wraps keys to it, parses it and refuses what is not an EC key
    for not_a_key in (b"\x00" * 16, b"not a key", public_der(new_key().public_key())[:-3]):
        with pytest.raises(KmsRefusedError, match="not a DER SubjectPublicKeyInfo EC key"):
            service.release("echo", device.attest(nonce=service.issue_nonce(), public_key=not_a_key))


def test_rotation_keeps_the_model_key(service, host) -> None:
    device = NsmDevice(host, "sim-a", PCRS, debug=False)
    before = _ask(service, device)
    assert service.rotate("echo").generation == 2
    after = _ask(service, device)
    assert after.generation == 2 and after.key_pem != before.key_pem and after.model_key == before.model_key
    with pytest.raises(UnknownServiceError, match="no service named 'nope'"):
        service.rotate("nope")


@pytest.fixture
def api(service, host) -> TestClient:
    device = NsmDevice(host, "sim-kms", PCRS, debug=False)
    app = create_app(
        service,
        attest=lambda nonce: device.attest(nonce=nonce),
        admin_token="t" * 32,
        share_storage_key=lambda document: b"",
        replica_id="sim-kms",
    )
    return TestClient(app)


@pytest.mark.parametrize(
    ("request_kwargs", "status", "message"),
    [
        ({"content": b"\xff\xfe", "headers": {"content-type": "application/cbor"}}, 400, "not valid CBOR"),
        ({"content": cbor2.dumps({"doc": 1}), "headers": {"content-type": "application/cbor"}}, 400, "'document'"),
        ({"content": b"x" * (MAX_BODY + 1), "headers": {"content-type": "application/cbor"}}, 413, "limit"),
        ({"json": {"document": "x"}}, 415, "content type must be application/cbor"),
        (
            {"content": cbor2.dumps({"document": b"forged"}), "headers": {"content-type": "application/cbor"}},
            403,
            "MalformedDocumentError",
        ),
    ],
)
def test_bad_input_is_a_4xx_and_the_server_keeps_serving(api, request_kwargs, status, message) -> None:
    response = api.post("/v1/services/echo/keys", **request_kwargs)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert api.get("/v1/health").json()["status"] == "ok"


def test_unknown_service_and_admin_token(api) -> None:
    missing = api.get("/v1/services/nope/certificate")
    assert missing.status_code == 404 and "no service named 'nope'" in missing.json()["error"]
    body = {"name": "new", "pcrs": {}, "allow_simulated": True}
    assert api.post("/v1/services", json=body).status_code == 401
    assert api.post("/v1/services", json=body, headers={"authorization": "Bearer wrong"}).status_code == 401
    created = api.post("/v1/services", json=body, headers={"authorization": "Bearer " + "t" * 32})
    assert created.status_code == 201 and created.json()["generation"] == 1
    assert (
        api.post(
            "/v1/services", json={"name": "bad name!"}, headers={"authorization": "Bearer " + "t" * 32}
        ).status_code
        == 422
    )


def test_attestation_endpoint_returns_a_document_with_the_nonce(api, host) -> None:
    from serdab.tee import verify_attestation

    response = api.get("/v1/attestation", params={"nonce": "ab" * 16})
    assert response.headers["content-type"] == "application/cbor"
    verified = verify_attestation(
        response.content, allow_simulated=True, simulated_roots=[host.root_cert], nonce=bytes.fromhex("ab" * 16)
    )
    assert verified.module_id == "sim-kms"
    assert api.get("/v1/attestation", params={"nonce": "zz"}).status_code == 400


def test_unreachable_kms() -> None:
    with pytest.raises(KmsUnreachableError, match="no KMS at https://127.0.0.1"):
        attest_kms("https://127.0.0.1:1", allow_simulated=True)
    with pytest.raises(KmsError, match="must look like https://"):
        attest_kms("http://127.0.0.1:1")


# --- the model-key lifecycle (serdab.kms.lifecycle): what the runtime and serving share --------------
def test_kms_coordinates_survive_argv_and_wire() -> None:
    import argparse

    from serdab.kms.lifecycle import KmsCoordinates

    coordinates = KmsCoordinates("https://127.0.0.1:8443", "serve-m-abc", {0: b"\x01" * 48, 2: b"\x02" * 48}, True)
    parser = argparse.ArgumentParser()
    KmsCoordinates.add_arguments(parser)
    assert KmsCoordinates.from_args(parser.parse_args(coordinates.to_argv())) == coordinates
    assert KmsCoordinates.from_wire(coordinates.to_wire()) == coordinates
    with pytest.raises(KmsError, match="must be JSON"):
        KmsCoordinates.from_args(parser.parse_args(["--kms", "u", "--service", "s", "--kms-pcrs", "{0:"]))
    with pytest.raises(KmsError, match="indices to hex"):
        KmsCoordinates.from_wire({**coordinates.to_wire(), "pcrs": {"0": "not hex"}})


def test_a_model_image_holds_only_ciphertext_and_names_its_pcrs(tmp_path) -> None:
    from serdab.kms.lifecycle import MEASURED_PCRS, build_model_image, decrypt_model
    from serdab.tee.image import measure_image

    model = b"an onnx model, in the clear" * 100
    image = build_model_image(model, "m.onnx", tmp_path / "image", "serdab.serve.replica:enclave_main", "serve-m")
    stored = (image.path / "models" / "m.onnx").read_bytes()
    assert model[:27] not in stored
    assert decrypt_model(stored, image.model_key, "m.onnx") == model
    with pytest.raises(KmsError, match="does not decrypt"):
        decrypt_model(stored, bytes(32), "m.onnx")
    with pytest.raises(KmsError, match="does not decrypt"):  # the ciphertext is bound to its file name
        decrypt_model(stored, image.model_key, "other.onnx")
    assert image.pcrs == {i: v for i, v in measure_image(image.path).items() if i in MEASURED_PCRS}
    assert image.service.startswith("serve-m-")
