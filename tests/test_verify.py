"""The verifier against forged and malformed documents: X.509 path rules, COSE structure, limits, fuzzing."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serdab.crypto import cert_der, cose_sign1, issue_certificate, new_key, public_der
from serdab.errors import (
    AttestationError,
    CertificateChainError,
    DebugEnclaveError,
    MalformedDocumentError,
    NonceError,
    PcrMismatchError,
    StaleDocumentError,
)
from serdab.kms import KeyService, ServicePolicy, SqliteStore, StateStore
from serdab.kms.server import create_app
from serdab.tee import HostIdentity, verify_attestation
from serdab.tee.document import AttestationDocument
from serdab.tee.nsm import NsmDevice

PCRS = {i: bytes([i + 1]) * 48 for i in range(3)}


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> HostIdentity:
    return HostIdentity.load_or_create(tmp_path_factory.mktemp("host"))


def _verify(document: bytes, host: HostIdentity, **kw):
    return verify_attestation(document, allow_simulated=True, simulated_roots=[host.root_cert], **kw)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    issuer: x509.Name,
    public_key,
    signer,
    *,
    ca: bool | None,
    path: int | None = None,
    usage: x509.KeyUsage | None = None,
    algorithm=hashes.SHA384(),
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=path), critical=True)
    if usage is not None:
        builder = builder.add_extension(usage, critical=True)
    return builder.sign(signer, algorithm)


def _document(
    host: HostIdentity,
    leaf: x509.Certificate,
    key,
    bundle: list[x509.Certificate] | None = None,
    module_id: str = "sim-test-enc0000",
    **fields,
) -> bytes:
    document = AttestationDocument(
        module_id=module_id,
        timestamp_ms=int(dt.datetime.now(dt.UTC).timestamp() * 1000),
        pcrs=PCRS,
        certificate=cert_der(leaf),
        cabundle=[cert_der(c) for c in bundle or [host.root_cert, host.host_cert]],
        **fields,
    )
    return cose_sign1(document.payload(), key)


def _leaf(host: HostIdentity, module_id: str = "sim-test-enc0000"):
    key = new_key()
    return issue_certificate(host.host_key, host.host_cert, key.public_key(), module_id, days=1), key


def test_the_genuine_document_verifies(host) -> None:
    leaf, key = _leaf(host)
    assert _verify(_document(host, leaf, key), host).module_id == "sim-test-enc0000"


# --- X.509 path rules -------------------------------------------------------------------------------
def test_a_leaked_leaf_key_cannot_certify_another_key(host) -> None:
    leaf, leaf_key = _leaf(host)
    minted_key = new_key()
    minted = _cert("sim-test-enc0000", leaf.subject, minted_key.public_key(), leaf_key, ca=False)
    document = _document(host, minted, minted_key, [host.root_cert, host.host_cert, leaf])
    with pytest.raises(CertificateChainError, match="is not a CA certificate"):
        _verify(document, host)


def test_path_length_is_honoured(host) -> None:
    sub_key = new_key()  # the host CA has pathLen 0: it may not certify another CA
    sub = _cert("sub-ca", host.host_cert.subject, sub_key.public_key(), host.host_key, ca=True)
    leaf_key = new_key()
    leaf = _cert("sim-test-enc0000", sub.subject, leaf_key.public_key(), sub_key, ca=False)
    with pytest.raises(CertificateChainError, match="allows 0 CA"):
        _verify(_document(host, leaf, leaf_key, [host.root_cert, host.host_cert, sub]), host)


def test_a_ca_without_key_cert_sign_may_not_sign(host, tmp_path) -> None:
    root_key = new_key()
    no_sign = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    root = _cert("root", _name("root"), root_key.public_key(), root_key, ca=True, usage=no_sign)
    leaf_key = new_key()
    leaf = _cert("sim-test-enc0000", root.subject, leaf_key.public_key(), root_key, ca=False)
    with pytest.raises(CertificateChainError, match="keyCertSign"):
        verify_attestation(_document(host, leaf, leaf_key, [root]), allow_simulated=True, simulated_roots=[root])


def test_issuer_must_be_the_signers_subject(host) -> None:
    key = new_key()
    leaf = _cert("sim-test-enc0000", _name("somebody else"), key.public_key(), host.host_key, ca=False)
    with pytest.raises(CertificateChainError, match="names its issuer"):
        _verify(_document(host, leaf, key), host)


def test_the_signing_certificate_must_not_be_a_ca(host) -> None:
    key = new_key()
    leaf = _cert("sim-test-enc0000", host.host_cert.subject, key.public_key(), host.host_key, ca=True, path=0)
    with pytest.raises(CertificateChainError, match="is a CA certificate"):
        _verify(_document(host, leaf, key), host)


def test_an_ed25519_signed_certificate_is_refused_cleanly(host) -> None:
    ed_key = ed25519.Ed25519PrivateKey.generate()
    root = _cert("ed-root", _name("ed-root"), ed_key.public_key(), ed_key, ca=True, algorithm=None)
    leaf_key = new_key()
    leaf = _cert("sim-test-enc0000", root.subject, leaf_key.public_key(), ed_key, ca=False, algorithm=None)
    with pytest.raises(MalformedDocumentError, match="EC key"):
        verify_attestation(_document(host, leaf, leaf_key, [root]), allow_simulated=True, simulated_roots=[root])
    mixed = _cert("sim-test-enc0000", host.host_cert.subject, leaf_key.public_key(), ed_key, ca=False, algorithm=None)
    with pytest.raises(CertificateChainError, match="not ECDSA"):
        _verify(_document(host, mixed, leaf_key), host)


def test_a_leaf_with_an_rsa_key_is_refused(host) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = _cert("sim-test-enc0000", host.host_cert.subject, rsa_key.public_key(), host.host_key, ca=False)
    with pytest.raises(MalformedDocumentError, match="EC key"):
        _verify(_document(host, leaf, new_key()), host)


def test_a_certificate_name_that_is_not_utf8(host) -> None:
    leaf, key = _leaf(host)
    der = cert_der(leaf).replace(b"sim-test-enc0000", b"\xff\xfe" + b"x" * 14)
    document = cbor2.loads(_document(host, leaf, key))
    fields = cbor2.loads(document.value[2])
    fields["certificate"] = der
    with pytest.raises(MalformedDocumentError, match="not a usable DER X.509"):
        _verify(cose_sign1(cbor2.dumps(fields), key), host)


# --- the document itself -----------------------------------------------------------------------------
def _resigned(host: HostIdentity, change) -> bytes:
    leaf, key = _leaf(host)
    fields = cbor2.loads(cbor2.loads(_document(host, leaf, key)).value[2])
    change(fields)
    return cose_sign1(cbor2.dumps(fields), key)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.update(timestamp=2**63), "not a time"),
        (lambda f: f.update(timestamp=-5), "not a time"),
        (lambda f: f.update(user_data=b"u" * 1025), "user_data is 1025 bytes"),
        (lambda f: f.update(nonce=b"n" * 2000), "nonce is 2000 bytes"),
        (lambda f: f.update(public_key=b"k" * 1025), "public_key is 1025 bytes"),
        (lambda f: f.update(pcrs={99: bytes(48)}), "indices 0..31"),
        (lambda f: f.update(module_id="i-0123-enc4567"), "must start with sim-"),
        (lambda f: f.update(cabundle=[b"x"] * 9), "cabundle must list"),
    ],
)
def test_malformed_fields_are_refused_with_the_verifiers_own_error(host, change, message) -> None:
    with pytest.raises(MalformedDocumentError, match=message):
        _verify(_resigned(host, change), host)


def test_module_id_must_be_the_one_the_certificate_names(host) -> None:
    leaf, key = _leaf(host, module_id="sim-other")
    with pytest.raises(CertificateChainError, match="issued to 'sim-other'"):
        _verify(_document(host, leaf, key), host)


def test_debug_pcrs_of_any_length(host) -> None:
    for size in (32, 48, 64):
        document = _resigned(host, lambda f, n=size: f.update(pcrs={i: bytes(n) for i in range(3)}))
        with pytest.raises(DebugEnclaveError):
            _verify(document, host)


def test_cose_structure(host) -> None:
    leaf, key = _leaf(host)
    genuine = _document(host, leaf, key)
    tag = cbor2.loads(genuine)
    protected, _, payload, signature = tag.value
    for bad, message in [
        (genuine + b"\x00", "trailing bytes"),
        (cbor2.dumps(cbor2.CBORTag(18, [protected, [1, 2], payload, signature])), "unprotected header must be a map"),
        (cbor2.dumps(cbor2.CBORTag(18, [protected, {1: -7}, payload, signature])), "appear in both"),
        (b"\x00" * 40_000, "at most"),
    ]:
        with pytest.raises(MalformedDocumentError, match=message):
            _verify(bad, host)


# --- the key service answers 4xx to all of it -----------------------------------------------------------
def test_the_kms_release_endpoint_never_answers_500(host, tmp_path) -> None:
    service = KeyService(StateStore(SqliteStore(tmp_path / "kms.db"), os.urandom(32)), simulated_roots=[host.root_cert])
    service.register("echo", ServicePolicy(pcrs={i: v.hex() for i, v in PCRS.items()}, allow_simulated=True))
    device = NsmDevice(host, "sim-kms", PCRS, debug=False)
    api = TestClient(
        create_app(
            service,
            attest=lambda nonce: device.attest(nonce=nonce),
            admin_token="t" * 32,
            share_storage_key=lambda document: b"",
            replica_id="sim-kms",
        )
    )
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_public = rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    documents = [
        _resigned(host, lambda f: f.update(timestamp=2**63)),
        _resigned(host, lambda f: f.update(public_key=b"not a key")),
        device.attest(nonce=service.issue_nonce(), public_key=rsa_public),  # a key, but not one to encrypt to
        b"\xa0" * 100,
    ]
    for document in documents:
        response = api.post(
            "/v1/services/echo/keys",
            content=cbor2.dumps({"document": document}),
            headers={"content-type": "application/cbor"},
        )
        assert 400 <= response.status_code < 500, response.text
    assert api.get("/v1/health").status_code == 200


# --- fuzzing genuine documents ---------------------------------------------------------------------------
FIELDS = ["module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle", "public_key", "user_data", "nonce"]
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.binary(max_size=80),
    st.text(max_size=20),
    st.lists(st.binary(max_size=40), max_size=3),
    st.dictionaries(st.integers(-3, 40), st.binary(max_size=70), max_size=3),
)


@pytest.fixture(scope="module")
def genuine(host) -> tuple[bytes, dict, ec.EllipticCurvePrivateKey]:
    key = new_key()
    leaf = issue_certificate(host.host_key, host.host_cert, key.public_key(), "sim-test-enc0000", days=1)
    document = _document(host, leaf, key, public_key=public_der(new_key().public_key()), nonce=b"n" * 32)
    return document, cbor2.loads(cbor2.loads(document).value[2]), key


def _outcome(document: bytes, host: HostIdentity, original: dict | None) -> None:
    """An AttestationError, or success: with exactly the genuine payload's content when ``original``
    is given (a forger without the key changed it), with any content otherwise (signed by the key)."""
    try:
        verified = _verify(document, host)
    except AttestationError:
        return
    if original is not None:
        assert verified.document.payload() == AttestationDocument(**_as_fields(original)).payload()


def _as_fields(f: dict) -> dict:
    return {
        "module_id": f["module_id"],
        "timestamp_ms": f["timestamp"],
        "pcrs": f["pcrs"],
        "certificate": f["certificate"],
        "cabundle": list(f["cabundle"]),
        "public_key": f["public_key"],
        "user_data": f["user_data"],
        "nonce": f["nonce"],
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzz_bytes_of_a_genuine_document(host, genuine, data) -> None:
    document, fields, _ = genuine
    raw = bytearray(document)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[at] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del raw[at : at + data.draw(st.integers(1, 64))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        if not raw:
            raw = bytearray(b"\x00")
    _outcome(bytes(raw), host, fields)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzz_fields_headers_and_certificates(host, genuine, data) -> None:
    document, fields, key = genuine
    protected, unprotected, payload, signature = cbor2.loads(document).value
    changed = dict(fields)
    target = data.draw(st.sampled_from(["field", "field-resigned", "header", "certificate"]))
    if target.startswith("field"):
        changed[data.draw(st.sampled_from(FIELDS))] = data.draw(VALUES)
        payload = cbor2.dumps(changed)
        if target == "field-resigned":  # what a holder of a leaked leaf key could sign: never a crash
            _outcome(cose_sign1(payload, key), host, None)
            return
    elif target == "header":
        unprotected = data.draw(st.one_of(VALUES, st.dictionaries(st.integers(-2, 6), VALUES, max_size=2)))
        if data.draw(st.booleans()):
            protected = cbor2.dumps(data.draw(st.dictionaries(st.integers(-2, 6), VALUES, max_size=2)))
    else:
        certs = [fields["certificate"], *fields["cabundle"]]
        which = data.draw(st.integers(0, len(certs) - 1))
        der = bytearray(certs[which])
        der[data.draw(st.integers(0, len(der) - 1))] ^= data.draw(st.integers(1, 255))
        if which == 0:
            changed["certificate"] = bytes(der)
        else:
            bundle = list(fields["cabundle"])
            bundle[which - 1] = bytes(der)
            changed["cabundle"] = bundle
        payload = cbor2.dumps(changed)
    _outcome(cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected, payload, signature])), host, fields)


# --- genuine AWS documents, published by others (tests/data/nitro/README.md says where from) ----------------
NITRO_VECTORS = Path(__file__).parent / "data" / "nitro"


def _genuine_aws(name: str) -> tuple[bytes, dt.datetime]:
    import base64

    from serdab.crypto import decode_sign1
    from serdab.tee.document import decode_payload

    data = base64.b64decode((NITRO_VECTORS / name).read_text().strip())
    return data, decode_payload(decode_sign1(data)[1]).time


GENUINE_AWS = {  # file -> (module_id, public_key, user_data, nonce hex, PCR4 prefix)
    "brave-p3a-2022-07-26.b64": (
        "i-0936512d5ae6ee91a-enc01823bcde8eb8a8a",
        b"",  # an empty byte string, not a key
        bytes(32),
        "831493346b44132e2ffb7988bce351f593eeb8dd",
        "5a3e54bd0a5f50b1b5ec641e063a1f1e",
    ),
    "cape-js-2022-07-12.b64": (
        "i-029e0eacb65267caa-enc0181f3b11fbd2d84",
        bytes.fromhex("81613310f630246dfebe8bbab763bd835a2736b9be839bb8677e9065ce3ce161"),  # 32 raw bytes
        None,
        "efdf3cd3cf76f39ef6f7cefd",
        "28c7ea32aec0384948c7b6373fb6ec54",
    ),
}


@pytest.mark.parametrize("name", sorted(GENUINE_AWS))
def test_a_genuine_aws_document_verifies_at_its_own_time_as_what_it_is(name: str) -> None:
    module_id, public_key, user_data, nonce, pcr4 = GENUINE_AWS[name]
    data, when = _genuine_aws(name)
    verified = verify_attestation(data, now=when, allow_debug=True, nonce=bytes.fromhex(nonce))
    assert verified.tee_type == "nitro" and verified.module_id == module_id
    assert verified.public_key == public_key and verified.user_data == user_data  # opaque bytes, accepted
    assert [i for i, v in sorted(verified.pcrs.items()) if any(v)] == [4]  # PCR0-2 zero: debug mode
    assert verified.pcrs[4].hex().startswith(pcr4)
    with pytest.raises(DebugEnclaveError):  # refused unless debug is allowed
        verify_attestation(data, now=when)
    with pytest.raises(StaleDocumentError):  # today
        verify_attestation(data, allow_debug=True)
    with pytest.raises(PcrMismatchError, match="PCR0"):
        verify_attestation(data, now=when, allow_debug=True, expected_pcrs={0: b"\x01" * 48})
    with pytest.raises(NonceError):
        verify_attestation(data, now=when, allow_debug=True, nonce=b"another nonce")


@pytest.mark.parametrize("name", sorted(GENUINE_AWS))
def test_every_byte_of_a_genuine_aws_document_is_covered(name: str) -> None:
    """Flip each byte of a genuine document in turn: every copy is refused, always with an attestation
    error and nothing else (a byte COSE leaves unsigned could only be accepted as the same document)."""
    data, when = _genuine_aws(name)
    accepted = []
    for i in range(len(data)):
        copy = bytearray(data)
        copy[i] ^= 0x01
        try:
            verified = verify_attestation(bytes(copy), now=when, allow_debug=True)
        except AttestationError:
            continue
        accepted.append((i, verified.module_id))
    assert accepted == [], accepted
