"""One verifier for real (AWS Nitro) and simulated attestation documents.

Checks, in order, each failure its own exception with a message saying what did not match:
COSE structure and payload fields; the ES384 signature with the document's certificate; the
chain cabundle[0] -> ... -> certificate ending at a pinned root (the AWS Nitro root G1 for real
documents; a simulated root only when ``allow_simulated`` and then ``tee_type == "simulated"``);
every certificate's validity at the document's time; the timestamp's age; debug (all-zero)
PCRs; expected PCR values; the nonce (equal to the one asked for, and single use through a
``NonceRegistry``); and user_data (e.g. the hash of the TLS certificate the enclave serves).
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from serdab.crypto import CoseError, cert_der, cert_from_der, cert_from_pem, cose_verify1, decode_sign1
from serdab.errors import (
    BadSignatureError,
    CertificateExpiredError,
    DebugEnclaveError,
    MalformedDocumentError,
    NonceError,
    PcrMismatchError,
    SimulatedRootError,
    StaleDocumentError,
    UnknownRootError,
    UserDataMismatchError,
)
from serdab.tee.document import AttestationDocument, decode_payload

__all__ = ["AWS_NITRO_ROOT_SHA256", "NonceRegistry", "VerifiedDocument", "aws_nitro_root", "verify_attestation"]

AWS_NITRO_ROOT_SHA256 = "641A0321A3E244EFE456463195D606317ED7CDCC3C1756E09893F3C68F79BB5B"  # AWS documentation
DEBUG_PCRS = (0, 1, 2)


def aws_nitro_root() -> x509.Certificate:
    """The pinned AWS Nitro Enclaves root G1 (checked against its published SHA-256 fingerprint)."""
    pem = resources.files("serdab.tee").joinpath("roots/aws_nitro_root_g1.pem").read_bytes()
    cert = cert_from_pem(pem)
    if cert.fingerprint(hashes.SHA256()).hex().upper() != AWS_NITRO_ROOT_SHA256:
        raise RuntimeError("the bundled AWS Nitro root does not match its published fingerprint")
    return cert


@dataclass(frozen=True)
class VerifiedDocument:
    tee_type: str  # "nitro" or "simulated"
    document: AttestationDocument

    @property
    def pcrs(self) -> dict[int, bytes]:
        return self.document.pcrs

    @property
    def public_key(self) -> bytes | None:
        return self.document.public_key

    @property
    def user_data(self) -> bytes | None:
        return self.document.user_data

    @property
    def module_id(self) -> str:
        return self.document.module_id


class NonceRegistry:
    """Nonces handed out by a verifier: each accepted once, within ``ttl_s`` of issue."""

    def __init__(self, ttl_s: float = 300.0, clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._issued: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def issue(self) -> bytes:
        nonce = secrets.token_bytes(32)
        with self._lock:
            now = self._clock()
            self._issued = {n: t for n, t in self._issued.items() if now - t <= self.ttl_s}
            self._issued[nonce] = now
        return nonce

    def consume(self, nonce: bytes | None) -> None:
        if nonce is None:
            raise NonceError("the document carries no nonce; ask for one and include it")
        with self._lock:
            issued = self._issued.pop(nonce, None)
        if issued is None:
            raise NonceError(f"nonce {nonce[:8].hex()}... was never issued here or was already used (replay)")
        if self._clock() - issued > self.ttl_s:
            raise NonceError(f"nonce {nonce[:8].hex()}... expired ({self.ttl_s:.0f} s to use it)")


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def _check_chain(chain: list[x509.Certificate], at: dt.datetime) -> None:
    for parent, child in zip(chain, chain[1:], strict=False):
        key = parent.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise UnknownRootError(f"{_name(parent)} does not carry an EC key")
        try:
            key.verify(child.signature, child.tbs_certificate_bytes, ec.ECDSA(child.signature_hash_algorithm))
        except InvalidSignature:
            raise UnknownRootError(
                f"certificate chain broken: {_name(child)} is not signed by {_name(parent)}"
            ) from None
    for cert in chain:
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise CertificateExpiredError(
                f"certificate {_name(cert)} is valid {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not at {at:%Y-%m-%d %H:%M:%S} UTC"
            )


def verify_attestation(
    data: bytes,
    *,
    expected_pcrs: Mapping[int, bytes] | None = None,
    allow_simulated: bool = False,
    allow_debug: bool = False,
    nonce: bytes | None = None,
    nonces: NonceRegistry | None = None,
    user_data: bytes | None = None,
    max_age_s: float = 300.0,
    simulated_roots: Sequence[x509.Certificate] = (),
    now: dt.datetime | None = None,
) -> VerifiedDocument:
    """Verify an attestation document; raises an ``AttestationError`` subclass on any mismatch."""
    try:
        _, payload, _ = decode_sign1(data)
    except CoseError as exc:
        raise MalformedDocumentError(f"not a COSE_Sign1 attestation document: {exc}") from None
    document = decode_payload(payload)
    try:
        leaf = cert_from_der(document.certificate)
        bundle = [cert_from_der(c) for c in document.cabundle]
    except ValueError as exc:
        raise MalformedDocumentError(f"certificate is not DER X.509: {exc}") from None
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise MalformedDocumentError("the signing certificate does not carry an EC key")
    try:
        cose_verify1(data, key)
    except CoseError as exc:
        raise BadSignatureError(str(exc)) from None

    root = bundle[0]
    if cert_der(root) == cert_der(aws_nitro_root()):
        tee_type = "nitro"
    elif any(cert_der(root) == cert_der(r) for r in simulated_roots):
        if not allow_simulated:
            raise SimulatedRootError(
                f"document signed by the simulated root {_name(root)}: not a real TEE; pass allow_simulated "
                "to accept simulated enclaves"
            )
        tee_type = "simulated"
    else:
        raise UnknownRootError(f"the chain ends at {_name(root)}, which is not a pinned root")
    now = now or dt.datetime.now(dt.UTC)
    age = (now - document.time).total_seconds()
    if age > max_age_s or age < -30:
        raise StaleDocumentError(f"document timestamp {document.time:%Y-%m-%d %H:%M:%S} UTC is {age:.0f} s old "
                                 f"(accepted: up to {max_age_s:.0f} s)")  # fmt: skip
    _check_chain([*bundle, leaf], document.time)

    if all(document.pcrs.get(i, bytes(48)) == bytes(48) for i in DEBUG_PCRS) and not allow_debug:
        raise DebugEnclaveError("PCR0-2 are all zero: a debug-mode enclave, whose memory the host can read")
    for index, value in (expected_pcrs or {}).items():
        actual = document.pcrs.get(index)
        if actual != value:
            shown = actual.hex()[:16] if actual else "absent"
            raise PcrMismatchError(f"PCR{index} is {shown}..., expected {value.hex()[:16]}...")
    if nonce is not None and document.nonce != nonce:
        raise NonceError("the document's nonce is not the one this verifier asked for")
    if nonces is not None:
        nonces.consume(document.nonce)
    if user_data is not None and document.user_data != user_data:
        shown = document.user_data.hex()[:16] if document.user_data else "absent"
        raise UserDataMismatchError(f"user_data is {shown}..., expected {user_data.hex()[:16]}...")
    return VerifiedDocument(tee_type, document)
