"""AMD SEV-SNP attestation reports (report version 2 and later), verified offline.

Why by hand: no package on PyPI verifies SNP reports (checked 2026-12: ``sev-snp-measure`` computes
launch digests only, ``pysnp`` is an unrelated statistics package; virtee's ``snpguest`` and
Google's ``go-sev-guest`` are Rust and Go tools). The report is a fixed little-endian structure
(AMD SEV-SNP ABI specification, "ATTESTATION_REPORT"); X.509, RSA-PSS and ECDSA are the
``cryptography`` package's. Checks, in order, each failure an ``AttestationError`` subclass and
never anything else, whatever the input:

1. the report: 1184 bytes, version 2 or later, signature algorithm 1 (ECDSA P-384 with SHA-384),
   signed by a VCEK (a VLEK or no key is refused: only VCEK chains are supported);
2. the certificates (VCEK, ASK, ARK; DER or PEM) parse; the ARK is a pinned AMD root for a supported
   product (Milan, Genoa; shipped in ``serdab/tee/roots`` and checked by SHA-256 fingerprint, never
   fetched), it signs itself and the ASK, the ASK signs the VCEK (RSA-PSS with SHA-384), every
   certificate valid at ``now``;
3. the report's ECDSA P-384 signature (r and s little-endian, 72 bytes each) with the VCEK's key;
4. the VCEK is this chip's at this TCB: its hwID extension equals the report's chip id, and its
   boot loader, TEE, SNP and microcode SPL extensions equal the report's reported TCB;
5. the guest policy: debug refused unless allowed; the measurement (48 bytes) and the report data
   (64 bytes: the caller's binding, e.g. a nonce and a key hash) equal what the caller expects.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from serdab.errors import (
    BadSignatureError,
    CertificateChainError,
    CertificateExpiredError,
    DebugEnclaveError,
    MalformedDocumentError,
    PcrMismatchError,
    SimulatedRootError,
    TcbMismatchError,
    UnknownRootError,
    UserDataMismatchError,
)

__all__ = ["ARK_SHA256", "REPORT_BYTES", "SnpReport", "TcbVersion", "VerifiedSnpReport", "verify_snp_report"]

REPORT_BYTES = 1184
SIGNED_BYTES = 0x2A0
# SHA-256 of the DER of AMD's root keys as AMD's key distribution service serves them
# (kdsintf.amd.com/vcek/v1/{product}/cert_chain); the same certificates sign the published reports in tests/data/snp
ARK_SHA256 = {
    "Milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "Genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
}
SIMULATED = "SIMULATED"  # the product name a simulated ARK's chain reports
POLICY_DEBUG = 1 << 19
POLICY_RESERVED_ONE = 1 << 17
_AMD = "1.3.6.1.4.1.3704.1"
SPL_OIDS = {"boot_loader": f"{_AMD}.3.1", "tee": f"{_AMD}.3.2", "snp": f"{_AMD}.3.3", "microcode": f"{_AMD}.3.8"}
HWID_OID = f"{_AMD}.4"


@dataclass(frozen=True)
class TcbVersion:
    """A TCB version as Milan and Genoa lay it out: boot loader, TEE, 4 reserved bytes, SNP, microcode."""

    boot_loader: int
    tee: int
    snp: int
    microcode: int

    @classmethod
    def from_bytes(cls, raw: bytes) -> TcbVersion:
        return cls(raw[0], raw[1], raw[6], raw[7])


@dataclass(frozen=True)
class SnpReport:
    version: int
    guest_svn: int
    policy: int
    vmpl: int
    signature_algo: int
    current_tcb: TcbVersion
    signing_key: int  # 0 VCEK, 1 VLEK, 7 none
    mask_chip_id: bool
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    report_id: bytes
    reported_tcb: TcbVersion
    chip_id: bytes
    launch_tcb: TcbVersion
    signature_r: int
    signature_s: int
    signed: bytes

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG)

    @classmethod
    def parse(cls, raw: bytes) -> SnpReport:
        if not isinstance(raw, bytes | bytearray) or len(raw) != REPORT_BYTES:
            size = len(raw) if isinstance(raw, bytes | bytearray) else "?"
            raise MalformedDocumentError(f"an SEV-SNP attestation report is {REPORT_BYTES} bytes, got {size}")
        raw = bytes(raw)
        version, guest_svn, policy = struct.unpack_from("<IIQ", raw, 0)
        vmpl, signature_algo = struct.unpack_from("<II", raw, 0x30)
        (flags,) = struct.unpack_from("<I", raw, 0x48)
        if version < 2:
            raise MalformedDocumentError(f"report version {version}: versions 2 and later are supported")
        if not policy & POLICY_RESERVED_ONE:
            raise MalformedDocumentError(f"guest policy {policy:#x} lacks its must-be-one bit 17")
        return cls(
            version=version,
            guest_svn=guest_svn,
            policy=policy,
            vmpl=vmpl,
            signature_algo=signature_algo,
            current_tcb=TcbVersion.from_bytes(raw[0x38:0x40]),
            signing_key=(flags >> 2) & 0x7,
            mask_chip_id=bool(flags & 0x2),
            report_data=raw[0x50:0x90],
            measurement=raw[0x90:0xC0],
            host_data=raw[0xC0:0xE0],
            id_key_digest=raw[0xE0:0x110],
            report_id=raw[0x140:0x160],
            reported_tcb=TcbVersion.from_bytes(raw[0x180:0x188]),
            chip_id=raw[0x1A0:0x1E0],
            launch_tcb=TcbVersion.from_bytes(raw[0x1F0:0x1F8]),
            signature_r=int.from_bytes(raw[0x2A0 : 0x2A0 + 72], "little"),
            signature_s=int.from_bytes(raw[0x2A0 + 72 : 0x2A0 + 144], "little"),
            signed=raw[:SIGNED_BYTES],
        )


@dataclass(frozen=True)
class VerifiedSnpReport:
    report: SnpReport
    product: str  # "Milan" or "Genoa": the pinned ARK the chain ends at ("SIMULATED": a simulated one)

    @property
    def measurement(self) -> bytes:
        return self.report.measurement


@functools.cache  # read and fingerprinted once per process, not on every report
def _ark(product: str) -> x509.Certificate:
    pem = resources.files("serdab.tee").joinpath(f"roots/amd_ark_{product.lower()}.pem").read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    if hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest() != ARK_SHA256[product]:
        raise UnknownRootError(f"the shipped ARK-{product} does not match its pinned fingerprint")
    return cert


def _load(data: bytes, what: str) -> x509.Certificate:
    with warnings.catch_warnings():
        # AMD issues every VCEK with serial number 0, which RFC 5280 forbids; cryptography warns and loads it
        warnings.simplefilter("ignore")
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                cert = x509.load_pem_x509_certificate(data)
            else:
                cert = x509.load_der_x509_certificate(data)
            # cryptography parses lazily: read every part now, so a malformed one is this error, not a later one
            _ = (cert.subject, cert.issuer, cert.not_valid_before_utc, cert.not_valid_after_utc, cert.public_key())
            _ = [ext.value for ext in cert.extensions]
        except (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:
            raise MalformedDocumentError(f"{what} is not an X.509 certificate: {str(exc)[:200]}") from None
        return cert


def _signed_by(child: x509.Certificate, parent: x509.Certificate, what: str) -> None:
    """RSA-PSS (SHA-384) as AMD signs its ARK, ASK and VCEKs; any other scheme is refused."""
    key = parent.public_key()
    try:
        params = child.signature_algorithm_parameters
        algorithm = child.signature_hash_algorithm
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateChainError(f"{what}: unsupported signature algorithm ({exc})") from None
    if not isinstance(key, rsa.RSAPublicKey) or not isinstance(params, padding.PSS) or algorithm is None:
        raise CertificateChainError(f"{what}: not an RSA-PSS signature by an RSA key, as AMD signs")
    if child.issuer != parent.subject:
        raise CertificateChainError(f"{what}: its issuer is not its signer's subject")
    try:
        key.verify(child.signature, child.tbs_certificate_bytes, params, algorithm)
    except (InvalidSignature, ValueError):
        raise CertificateChainError(f"{what}: the signature does not verify") from None


def _spl(cert: x509.Certificate, oid: str) -> int | None:
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    except (x509.ExtensionNotFound, ValueError):
        return None
    raw = getattr(ext.value, "value", b"")
    if len(raw) >= 3 and raw[0] == 0x02 and raw[1] == len(raw) - 2:  # a DER INTEGER
        return int.from_bytes(raw[2:], "big")
    return None


def verify_snp_report(
    report: bytes,
    certificates: Sequence[bytes],
    *,
    expected_measurement: bytes | None = None,
    report_data: bytes | None = None,
    allow_debug: bool = False,
    now: dt.datetime | None = None,
    allow_simulated: bool = False,
    simulated_roots: Sequence[x509.Certificate] = (),
) -> VerifiedSnpReport:
    """Verify ``report`` with ``certificates`` = (VCEK, ASK[, ARK]) in DER or PEM; raises an
    ``AttestationError`` subclass on any failure, nothing else. ``simulated_roots``: simulated ARKs
    (``serdab.tee.snp_firmware``) recognised, and accepted only with ``allow_simulated``."""
    parsed = SnpReport.parse(report)
    if parsed.signature_algo != 1:
        raise MalformedDocumentError(f"signature algorithm {parsed.signature_algo}: only 1 (ECDSA P-384) is known")
    if parsed.signing_key != 0:
        raise MalformedDocumentError(
            f"the report is signed by key kind {parsed.signing_key}; only a VCEK (0) is supported"
        )
    if not 2 <= len(certificates) <= 3 or not all(isinstance(c, bytes | bytearray) for c in certificates):
        raise MalformedDocumentError("give the VCEK and ASK certificates (and optionally the ARK) as bytes")
    vcek = _load(bytes(certificates[0]), "the VCEK")
    ask = _load(bytes(certificates[1]), "the ASK")
    roots = {product: _ark(product) for product in ARK_SHA256}
    product = next((p for p, ark in roots.items() if ask.issuer == ark.subject), None)
    if product is None:
        simulated = next(
            (r for r in simulated_roots if isinstance(r.public_key(), rsa.RSAPublicKey) and ask.issuer == r.subject),
            None,
        )
        if simulated is None:
            raise UnknownRootError(f"the ASK is issued by {ask.issuer.rfc4514_string()}, not a pinned AMD root")
        if not allow_simulated:
            raise SimulatedRootError(
                f"report endorsed by the simulated root {simulated.subject.rfc4514_string()}: not a real TEE; "
                "pass allow_simulated to accept simulated enclaves"
            )
        product, roots[SIMULATED] = SIMULATED, simulated
    ark = roots[product]
    if len(certificates) == 3:
        given = _load(bytes(certificates[2]), "the ARK")
        if given.public_bytes(serialization.Encoding.DER) != ark.public_bytes(serialization.Encoding.DER):
            raise UnknownRootError(f"the ARK given is not the pinned ARK-{product}")
    _signed_by(ark, ark, f"ARK-{product}")
    _signed_by(ask, ark, f"the ASK ({ask.subject.rfc4514_string()})")
    _signed_by(vcek, ask, "the VCEK")
    when = now or dt.datetime.now(dt.UTC)
    for cert, what in ((ark, "the ARK"), (ask, "the ASK"), (vcek, "the VCEK")):
        if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
            raise CertificateExpiredError(
                f"{what} is valid {cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}, "
                f"not at {when:%Y-%m-%d %H:%M} UTC"
            )
    key = vcek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise CertificateChainError("the VCEK's key is not ECDSA P-384")
    try:
        key.verify(
            encode_dss_signature(parsed.signature_r, parsed.signature_s), parsed.signed, ec.ECDSA(hashes.SHA384())
        )
    except (InvalidSignature, ValueError):
        raise BadSignatureError("the report's signature does not verify with the VCEK") from None
    _check_tcb(vcek, parsed)
    if parsed.debug and not allow_debug:
        raise DebugEnclaveError(f"guest policy {parsed.policy:#x} allows debugging: the host can read its memory")
    if expected_measurement is not None and parsed.measurement != expected_measurement:
        raise PcrMismatchError(
            f"measurement is {parsed.measurement.hex()[:16]}..., expected {expected_measurement.hex()[:16]}..."
        )
    if report_data is not None and parsed.report_data != report_data.ljust(64, b"\0"):
        raise UserDataMismatchError(f"report_data is {parsed.report_data.hex()[:16]}..., not the binding asked for")
    return VerifiedSnpReport(parsed, product)


def _check_tcb(vcek: x509.Certificate, report: SnpReport) -> None:
    """The VCEK is derived from the chip and its TCB: it must name this report's chip and reported TCB."""
    if not report.mask_chip_id:
        try:
            hwid = getattr(vcek.extensions.get_extension_for_oid(x509.ObjectIdentifier(HWID_OID)).value, "value", b"")
        except (x509.ExtensionNotFound, ValueError):
            hwid = b""
        if hwid != report.chip_id:
            raise TcbMismatchError("the VCEK was issued for another chip than the report's")
    for name, oid in SPL_OIDS.items():
        certified, reported = _spl(vcek, oid), getattr(report.reported_tcb, name)
        if certified != reported:
            raise TcbMismatchError(f"reported TCB {name} SPL is {reported}, the VCEK certifies {certified}")
