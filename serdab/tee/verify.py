"""One verifier for real (AWS Nitro) and simulated attestation documents.

Checks, in order, each failure its own ``AttestationError`` subclass (and never anything else,
whatever the input) with a message saying what did not match:

1. size: at most ``MAX_DOCUMENT_BYTES``; COSE_Sign1 per RFC 9052 (tagged or not, exactly one CBOR
   item, no trailing bytes, the unprotected header a map sharing no label with the protected one,
   alg ES384);
2. payload fields and types, timestamp in range, PCR indices 0..31 of 32/48/64 bytes, user_data,
   nonce and public_key opaque bytes of at most 1 KiB each (the NSM API requires no key in
   ``public_key``: genuine documents carry other bytes there, an empty string or an application's
   raw key; a consumer that uses it as a key parses it itself, as the key service does), at most
   7 CA certificates;
3. certificates parse completely (names, extensions, P-256/384/521 EC keys);
4. the ES384 signature with the document's certificate;
5. the root: the pinned AWS Nitro root G1, or a simulated root when ``allow_simulated`` (then the
   module_id must start with ``sim-`` and the signing certificate be issued to that module);
6. the timestamp's age;
7. the X.509 path cabundle[0] -> ... -> certificate (RFC 5280): each issuer is its signer's
   subject, only CA certificates sign, path lengths and keyCertSign usage are honoured, ECDSA with
   SHA-2 signatures verify, the signing certificate is no CA, every certificate valid at the
   document's time; so a leaked enclave key cannot certify further keys;
8. debug (all-zero PCR0-2, of any length), expected PCR values, the nonce (equal to the one asked
   for, single use through a ``NonceRegistry``) and user_data (e.g. a TLS certificate's hash).
"""

from __future__ import annotations

import datetime as dt
import functools
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
    CertificateChainError,
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

__all__ = [
    "AWS_NITRO_ROOT_SHA256",
    "MAX_DOCUMENT_BYTES",
    "NonceRegistry",
    "VerifiedDocument",
    "aws_nitro_root",
    "check_binding",
    "verify_attestation",
]

AWS_NITRO_ROOT_SHA256 = "641A0321A3E244EFE456463195D606317ED7CDCC3C1756E09893F3C68F79BB5B"  # AWS documentation
DEBUG_PCRS = (0, 1, 2)
MAX_DOCUMENT_BYTES = 32 * 1024  # a real Nitro document is about 4.5 KiB


@functools.cache  # read and fingerprinted once per process, not on every document
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


_ECDSA: dict[x509.ObjectIdentifier, hashes.HashAlgorithm] = {
    x509.oid.SignatureAlgorithmOID.ECDSA_WITH_SHA256: hashes.SHA256(),
    x509.oid.SignatureAlgorithmOID.ECDSA_WITH_SHA384: hashes.SHA384(),
    x509.oid.SignatureAlgorithmOID.ECDSA_WITH_SHA512: hashes.SHA512(),
}
_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


def _name(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string()
    except (ValueError, UnicodeDecodeError):
        return "<a certificate whose name is not valid UTF-8>"


def _parse(der: bytes, what: str) -> x509.Certificate:
    """A certificate with everything the checks read decoded up front, so a bad field fails here."""
    try:
        cert = cert_from_der(der)
        cert.subject.rfc4514_string()
        cert.issuer.rfc4514_string()
        _ = cert.extensions, cert.not_valid_before_utc, cert.not_valid_after_utc, cert.signature_algorithm_oid
        key = cert.public_key()
    except (ValueError, UnicodeDecodeError, TypeError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise MalformedDocumentError(f"{what} is not a usable DER X.509 certificate: {exc}") from None
    except Exception as exc:  # cryptography's Rust parser raises its own kinds on hostile DER
        raise MalformedDocumentError(f"{what} is not a usable DER X.509 certificate: {type(exc).__name__}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, _CURVES):
        raise MalformedDocumentError(f"{what} ({_name(cert)}) does not carry a P-256/384/521 EC key")
    return cert


def _extension(cert: x509.Certificate, kind: type) -> object | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _check_chain(chain: list[x509.Certificate], at: dt.datetime) -> None:
    """RFC 5280 path checks: names chain, only CAs sign (basic constraints, path length, key usage),
    ECDSA signatures verify, every certificate is valid at ``at``."""
    for parent, child in zip(chain, chain[1:], strict=False):
        if child.issuer != parent.subject:
            raise CertificateChainError(
                f"{_name(child)} names its issuer {child.issuer.rfc4514_string()}, "
                f"but the certificate above it is {_name(parent)}"
            )
        constraints = _extension(parent, x509.BasicConstraints)
        if not isinstance(constraints, x509.BasicConstraints) or not constraints.ca:
            raise CertificateChainError(f"{_name(parent)} is not a CA certificate, so it may not sign {_name(child)}")
        usage = _extension(parent, x509.KeyUsage)
        if isinstance(usage, x509.KeyUsage) and not usage.key_cert_sign:
            raise CertificateChainError(f"{_name(parent)} has no keyCertSign usage, so it may not sign certificates")
        algorithm = _ECDSA.get(child.signature_algorithm_oid)
        if algorithm is None:
            raise CertificateChainError(
                f"{_name(child)} is signed with {child.signature_algorithm_oid.dotted_string}, not ECDSA with SHA-2"
            )
        key = parent.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)  # _parse checked it
        try:
            key.verify(child.signature, child.tbs_certificate_bytes, ec.ECDSA(algorithm))
        except InvalidSignature:
            raise UnknownRootError(
                f"certificate chain broken: {_name(child)} is not signed by {_name(parent)}"
            ) from None
    for position, parent in enumerate(chain[:-1]):
        constraints = _extension(parent, x509.BasicConstraints)
        below = len(chain) - 2 - position  # CA certificates under this one (the leaf does not count)
        limit = constraints.path_length if isinstance(constraints, x509.BasicConstraints) else None
        if limit is not None and below > limit:
            raise CertificateChainError(f"{_name(parent)} allows {limit} CA(s) below it, the chain has {below}")
    leaf = chain[-1]
    constraints = _extension(leaf, x509.BasicConstraints)
    if isinstance(constraints, x509.BasicConstraints) and constraints.ca:
        raise CertificateChainError(f"the signing certificate {_name(leaf)} is a CA certificate, not an enclave's")
    usage = _extension(leaf, x509.KeyUsage)
    if isinstance(usage, x509.KeyUsage) and not usage.digital_signature:
        raise CertificateChainError(f"the signing certificate {_name(leaf)} has no digitalSignature usage")
    for cert in chain:
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise CertificateExpiredError(
                f"certificate {_name(cert)} is valid {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not at {at:%Y-%m-%d %H:%M:%S} UTC"
            )


def _common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    value = names[0].value if names else None
    return value if isinstance(value, str) else None


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
    """Verify an attestation document; raises an ``AttestationError`` subclass on any mismatch, nothing else."""
    if not isinstance(data, bytes | bytearray) or len(data) > MAX_DOCUMENT_BYTES:
        size = len(data) if isinstance(data, bytes | bytearray) else "?"
        raise MalformedDocumentError(f"an attestation document is bytes of at most {MAX_DOCUMENT_BYTES}, got {size}")
    data = bytes(data)
    try:
        _, payload, _ = decode_sign1(data)
    except CoseError as exc:
        raise MalformedDocumentError(f"not a COSE_Sign1 attestation document: {exc}") from None
    document = decode_payload(payload)
    leaf = _parse(document.certificate, "the signing certificate")
    bundle = [_parse(c, f"cabundle[{i}]") for i, c in enumerate(document.cabundle)]
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)  # _parse checked it
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
        if not document.module_id.startswith("sim-"):
            raise MalformedDocumentError(
                f"module_id {document.module_id!r} under the simulated root must start with sim-"
            )
        if _common_name(leaf) != document.module_id:
            raise CertificateChainError(
                f"the signing certificate is issued to {_common_name(leaf)!r}, not to module {document.module_id!r}"
            )
    else:
        raise UnknownRootError(f"the chain ends at {_name(root)}, which is not a pinned root")
    now = now or dt.datetime.now(dt.UTC)
    age = (now - document.time).total_seconds()
    if age > max_age_s or age < -30:
        raise StaleDocumentError(
            f"document timestamp {document.time:%Y-%m-%d %H:%M:%S} UTC is {age:.0f} s old "
            f"(accepted: up to {max_age_s:.0f} s)"
        )
    _check_chain([*bundle, leaf], document.time)

    zero = [document.pcrs.get(i) for i in DEBUG_PCRS]
    if all(v is None or v == bytes(len(v)) for v in zero) and not allow_debug:
        raise DebugEnclaveError("PCR0-2 are all zero: a debug-mode enclave, whose memory the host can read")
    for index, value in (expected_pcrs or {}).items():
        actual = document.pcrs.get(index)
        if actual != value:
            shown = actual.hex()[:16] if actual else "absent"
            raise PcrMismatchError(f"PCR{index} is {shown}..., expected {value.hex()[:16]}...")
    check_binding(document.nonce, document.user_data, nonce=nonce, nonces=nonces, user_data=user_data)
    return VerifiedDocument(tee_type, document)


def check_binding(
    seen_nonce: bytes | None,
    seen_user_data: bytes | None,
    *,
    nonce: bytes | None = None,
    nonces: NonceRegistry | None = None,
    user_data: bytes | None = None,
) -> None:
    """What evidence of any kind binds, checked once it verified: the nonce asked for (or one ``nonces``
    issued, used once) and the caller's ``user_data``."""
    if nonce is not None and seen_nonce != nonce:
        raise NonceError("the evidence's nonce is not the one this verifier asked for")
    if nonces is not None:
        nonces.consume(seen_nonce)
    if user_data is not None and seen_user_data != user_data:
        shown = seen_user_data.hex()[:16] if seen_user_data else "absent"
        raise UserDataMismatchError(f"user_data is {shown}..., expected {user_data.hex()[:16]}...")
