from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes

from serdab.crypto import cert_der, cose_sign1
from serdab.errors import (
    BadSignatureError,
    CertificateChainError,
    CertificateExpiredError,
    DebugEnclaveError,
    EnclaveImageError,
    MalformedDocumentError,
    NonceError,
    PcrMismatchError,
    SealingError,
    SimulatedRootError,
    StaleDocumentError,
    TeeError,
    TeeUnavailableError,
    UnknownRootError,
    UserDataMismatchError,
)
from serdab.tee import (
    EpcMeter,
    HostIdentity,
    NonceRegistry,
    build_image,
    get_backend,
    measure_image,
    verify_attestation,
)
from serdab.tee.image import PCR_APP, PCR_IMAGE, PCR_MODELS, PCR_TLS
from serdab.tee.nsm import NsmDevice
from serdab.tee.sealing import seal, unseal
from serdab.tee.verify import AWS_NITRO_ROOT_SHA256, aws_nitro_root
from serdab.testing import craft_document

APP = """
import time
from serdab.tee import NsmClient

def main(args):
    nsm = NsmClient.from_env()
    nsm.extend(17, b"tls-cert-hash")
    blob = nsm.seal(b"kept secret")
    nsm.resident(60 * 2**20)
    nsm.ready(unsealed=nsm.unseal(blob).decode(), pid_args=args, slowdown=nsm.access())
    time.sleep(60)
"""


@pytest.fixture
def host(tmp_path) -> HostIdentity:
    return HostIdentity.load_or_create(tmp_path / "host")


@pytest.fixture
def image(tmp_path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text(APP)
    (tmp_path / "weights.bin").write_bytes(os.urandom(1000))
    return build_image(tmp_path / "src", tmp_path / "img", "app:main", models={"w.bin": tmp_path / "weights.bin"})


@pytest.fixture
def pcrs(image) -> dict[int, bytes]:
    return measure_image(image)


def _verify(document: bytes, host: HostIdentity, **kw):
    kw.setdefault("allow_simulated", True)
    return verify_attestation(document, simulated_roots=[host.root_cert], **kw)


def test_host_identity_is_created_once_with_private_files(tmp_path) -> None:
    first = HostIdentity.load_or_create(tmp_path / "h")
    again = HostIdentity.load_or_create(tmp_path / "h")
    assert cert_der(first.root_cert) == cert_der(again.root_cert)
    assert "CN=SIMULATED-NOT-A-TEE" in first.root_cert.subject.rfc4514_string()
    for name in ("root.key", "host.key", "sealing.secret"):
        assert stat.S_IMODE((tmp_path / "h" / name).stat().st_mode) == 0o600
    assert len(first.sealing_secret) == 32 and first.sealing_secret != bytes(32)


def test_pcrs_follow_what_changed(tmp_path, image, pcrs) -> None:
    assert all(len(v) == 48 for v in pcrs.values())
    assert pcrs[PCR_TLS] == bytes(48)  # extended at run time, not build time
    (tmp_path / "src2").mkdir()
    (tmp_path / "src2" / "app.py").write_text(APP + "\n# one more line\n")
    other = measure_image(
        build_image(tmp_path / "src2", tmp_path / "img2", "app:main", models={"w.bin": tmp_path / "weights.bin"})
    )
    assert other[PCR_APP] != pcrs[PCR_APP] and other[PCR_IMAGE] != pcrs[PCR_IMAGE]
    assert other[PCR_MODELS] == pcrs[PCR_MODELS]
    debug = measure_image(build_image(tmp_path / "src", tmp_path / "dbg", "app:main", debug=True))
    assert set(debug.values()) == {bytes(48)}


def test_tampered_model_file_is_refused_before_launch(image) -> None:
    (image / "models" / "w.bin").write_bytes(b"swapped weights")
    with pytest.raises(EnclaveImageError, match="does not match its SHA-384"):
        measure_image(image)


def test_simulated_document_verifies_and_says_simulated(host, pcrs) -> None:
    nonce = os.urandom(32)
    document = craft_document(host, pcrs, nonce=nonce, user_data=b"tls-hash")
    verified = _verify(document, host, expected_pcrs={0: pcrs[0], 2: pcrs[2]}, nonce=nonce, user_data=b"tls-hash")
    assert verified.tee_type == "simulated"
    assert verified.module_id.startswith("sim-")
    assert set(cbor2.loads(cbor2.loads(document).value[2])) >= {
        "module_id",
        "digest",
        "timestamp",
        "pcrs",
        "certificate",
        "cabundle",
        "public_key",
        "user_data",
        "nonce",
    }


def test_aws_nitro_root_is_pinned_by_its_published_fingerprint() -> None:
    assert aws_nitro_root().fingerprint(hashes.SHA256()).hex().upper() == AWS_NITRO_ROOT_SHA256


# --- one negative test per failure -----------------------------------------------------------


def test_bad_signature(host, pcrs) -> None:
    item = cbor2.loads(craft_document(host, pcrs))
    protected, unprotected, payload, signature = item.value
    forged = cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected, payload, bytes(96 - 1) + b"\x01"]))
    with pytest.raises(BadSignatureError, match="does not verify"):
        _verify(forged, host)


def test_altered_payload_breaks_the_signature(host, pcrs) -> None:
    item = cbor2.loads(craft_document(host, pcrs))
    protected, unprotected, payload, signature = item.value
    fields = cbor2.loads(payload)
    fields["pcrs"][2] = bytes(48)
    with pytest.raises(BadSignatureError):
        _verify(cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected, cbor2.dumps(fields), signature])), host)


def test_unknown_root(host, pcrs, tmp_path) -> None:
    stranger = HostIdentity.load_or_create(tmp_path / "another-host")
    with pytest.raises(UnknownRootError, match="not a pinned root"):
        _verify(craft_document(stranger, pcrs), host)


def test_simulated_root_without_allow_simulated(host, pcrs) -> None:
    with pytest.raises(SimulatedRootError, match="not a real TEE"):
        _verify(craft_document(host, pcrs), host, allow_simulated=False)


def test_forged_chain_under_the_aws_root_is_refused(host, pcrs) -> None:
    item = cbor2.loads(craft_document(host, pcrs))
    protected, unprotected, payload, _ = item.value
    fields = cbor2.loads(payload)
    fields["cabundle"] = [cert_der(aws_nitro_root())]  # claim the real root...
    fields["certificate"] = cert_der(host.host_cert)  # ...over a certificate it never signed
    document = cose_sign1(cbor2.dumps(fields), host.host_key)
    with pytest.raises(CertificateChainError, match="names its issuer"):
        _verify(document, host)


def test_expired_certificate(host, pcrs) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    with pytest.raises(CertificateExpiredError, match="is valid"):
        _verify(craft_document(host, pcrs, leaf_from=old, leaf_days=1), host)


def test_wrong_pcr(host, pcrs) -> None:
    with pytest.raises(PcrMismatchError, match="PCR2 is .*, expected"):
        _verify(craft_document(host, pcrs), host, expected_pcrs={2: bytes.fromhex("ab" * 48)})


def test_debug_pcrs(host) -> None:
    zeros = {i: bytes(48) for i in range(18)}
    with pytest.raises(DebugEnclaveError, match="debug-mode"):
        _verify(craft_document(host, zeros), host)
    assert _verify(craft_document(host, zeros), host, allow_debug=True).tee_type == "simulated"


def test_replayed_nonce(host, pcrs) -> None:
    registry = NonceRegistry()
    document = craft_document(host, pcrs, nonce=registry.issue())
    _verify(document, host, nonces=registry)
    with pytest.raises(NonceError, match="replay"):
        _verify(document, host, nonces=registry)


def test_nonce_must_be_the_one_asked_for(host, pcrs) -> None:
    with pytest.raises(NonceError, match="not the one"):
        _verify(craft_document(host, pcrs, nonce=b"a" * 32), host, nonce=b"b" * 32)
    with pytest.raises(NonceError, match="carries no nonce"):
        _verify(craft_document(host, pcrs), host, nonces=NonceRegistry())


def test_expired_nonce(host, pcrs) -> None:
    now = [1000.0]
    registry = NonceRegistry(ttl_s=60, clock=lambda: now[0])
    nonce = registry.issue()
    now[0] += 61
    with pytest.raises(NonceError, match="expired"):
        _verify(craft_document(host, pcrs, nonce=nonce), host, nonces=registry)


def test_stale_timestamp(host, pcrs) -> None:
    ten_minutes_ago = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    with pytest.raises(StaleDocumentError, match="s old"):
        _verify(craft_document(host, pcrs, time=ten_minutes_ago), host, max_age_s=300)


def test_user_data_mismatch(host, pcrs) -> None:
    with pytest.raises(UserDataMismatchError, match="expected"):
        _verify(craft_document(host, pcrs, user_data=b"cert-A"), host, user_data=b"cert-B")


@pytest.mark.parametrize("data", [b"not cbor at all \xff", cbor2.dumps({"a": 1})])
def test_malformed_document(host, data) -> None:
    with pytest.raises(MalformedDocumentError):
        _verify(data, host)


# --- sealing, EPC, backends ------------------------------------------------------------------


def test_sealing_binds_to_the_measurement_and_detects_tampering(host, pcrs) -> None:
    blob = seal(host.sealing_secret, pcrs, b"storage key")
    assert b"storage key" not in blob
    assert unseal(host.sealing_secret, pcrs, blob) == b"storage key"
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(SealingError, match="tampered"):
        unseal(host.sealing_secret, pcrs, tampered)
    other = dict(pcrs)
    other[PCR_APP] = bytes(48)
    with pytest.raises(SealingError, match="another enclave"):
        unseal(host.sealing_secret, other, blob)
    with pytest.raises(SealingError, match="tampered"):
        unseal(os.urandom(32), pcrs, blob)
    with pytest.raises(SealingError, match="signed image"):
        seal(host.sealing_secret, pcrs, b"x", policy="signer")


def test_emulated_epc_counts_paging_only_over_budget() -> None:
    epc = EpcMeter(budget_bytes=100 * 4096, paging_slowdown=5.0)
    epc.set_resident("a", 60 * 4096)
    assert epc.access("a") == 1.0 and epc.stats().page_ins == 0
    epc.set_resident("b", 60 * 4096)
    assert epc.access("a") == pytest.approx(1 + 4 * 20 / 120)  # a sixth of the pages are out of the EPC
    epc.set_resident("b", 940 * 4096)
    assert epc.access("a") == pytest.approx(1 + 4 * 900 / 1000)  # far over budget: nearly 5x
    epc.set_resident("b", 60 * 4096)
    stats = epc.stats()
    assert stats.emulated and stats.over_budget and stats.page_ins == stats.page_outs == 10 + 54
    epc.set_resident("b", 0)
    assert epc.access("a") == 1.0


def test_nsm_refuses_to_extend_measured_pcrs(host, pcrs) -> None:
    device = NsmDevice(host, "sim-x", pcrs, debug=False)
    with pytest.raises(TeeError, match="PCR2 is locked"):
        device.extend(2, b"x")
    assert device.extend(PCR_TLS, b"cert") != bytes(48)


@pytest.mark.parametrize(("name", "needs"), [("nitro", "nitro-cli"), ("gramine-sgx", "gramine-sgx")])
def test_real_backends_say_what_they_need(name, needs) -> None:
    with pytest.raises(TeeUnavailableError, match=f"not available on this machine: .*{needs}"):
        get_backend(name)


def test_simulated_enclave_is_a_separate_process(tmp_path, image, pcrs, host) -> None:
    from serdab.tee.simulated import SimulatedBackend

    backend = SimulatedBackend(host=host, epc=EpcMeter(budget_bytes=50 * 2**20))
    enclave = backend.launch(image, ["--flag"], log_path=tmp_path / "enclave.log")
    try:
        info = backend.wait_ready(enclave)
        assert enclave.pid != os.getpid() and enclave.alive()
        assert info["unsealed"] == "kept secret" and info["pid_args"] == ["--flag"]
        assert info["slowdown"] == pytest.approx(1 + 4 * 10 / 60)  # 60 MiB resident over a 50 MiB budget
        document = backend.attestation(enclave, nonce=b"n" * 32)
        verified = _verify(document, host, expected_pcrs={0: pcrs[0], 16: pcrs[16]}, nonce=b"n" * 32)
        assert verified.pcrs[PCR_TLS] != bytes(48)  # the enclave extended it
    finally:
        backend.terminate(enclave)
        backend.close()
    assert not enclave.alive()
