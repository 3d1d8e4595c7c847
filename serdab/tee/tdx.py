"""Intel TDX quotes (v4; TD 1.0 and 1.5 reports), verified offline with Intel DCAP collateral.

Why a library: DCAP verification is the PCK certificate chain with CRLs, the QE report and its
signature, the quote's ECDSA P-256 signature, TCB info and QE identity (each signed by Intel's TCB
signing key) and the TCB level matching, which ``dcap-qvl`` (Phala Network, MIT, Rust with Python
bindings) implements and keeps current with Intel's formats; ``sgx-dcap-quoteverify`` needs Intel's
C library installed, and no pure-Python package does the TCB level match. Written here: the pinned
root (Intel SGX Root CA, shipped in ``serdab/tee/roots`` and checked by SHA-256 fingerprint, handed
to ``dcap-qvl`` so its own built-in copy is not what we trust), the collateral read as supplied by
the caller (never fetched at verify time), the mapping of every failure onto the same error tree as
the Nitro and SNP verifiers (an ``AttestationError`` subclass, never anything else, whatever the
input), and the checks ``dcap-qvl`` leaves to its caller: debug TDs, the measurements and the
``report_data`` binding.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from serdab.errors import (
    AttestationError,
    BadSignatureError,
    CertificateChainError,
    CertificateExpiredError,
    DebugEnclaveError,
    MalformedDocumentError,
    PcrMismatchError,
    StaleDocumentError,
    TcbMismatchError,
    UnknownRootError,
    UserDataMismatchError,
)

__all__ = ["INTEL_SGX_ROOT_SHA256", "MEASUREMENT_NAMES", "VerifiedTdxQuote", "intel_sgx_root", "verify_tdx_quote"]

# SHA-256 of the DER of "Intel SGX Root CA" (certificates.trustedservices.intel.com), the root of every
# PCK, TCB-signing and CRL chain; the same certificate ends the chains of the vectors in tests/data/tdx
INTEL_SGX_ROOT_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
MAX_QUOTE_BYTES = 16 * 1024
MAX_COLLATERAL_BYTES = 128 * 1024
TD_DEBUG = 1  # TDATTRIBUTES bit 0 (TUD.DEBUG): the host can read and change the TD's memory
# report field -> the name a policy uses (TDX's own names for them)
MEASUREMENT_NAMES = {
    "mr_td": "MRTD",
    "rt_mr0": "RTMR0",
    "rt_mr1": "RTMR1",
    "rt_mr2": "RTMR2",
    "rt_mr3": "RTMR3",
    "mr_config_id": "MRCONFIGID",
    "mr_owner": "MROWNER",
    "mr_owner_config": "MROWNERCONFIG",
    "mr_seam": "MRSEAM",
}
_COLLATERAL_FIELDS = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)


@functools.cache  # read and fingerprinted once per process
def intel_sgx_root() -> bytes:
    """The pinned Intel SGX Root CA (DER), checked against its fingerprint."""
    pem = resources.files("serdab.tee").joinpath("roots/intel_sgx_root_ca.pem").read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    if hashlib.sha256(der).hexdigest() != INTEL_SGX_ROOT_SHA256:
        raise UnknownRootError("the shipped Intel SGX Root CA does not match its pinned fingerprint")
    return der


@dataclass(frozen=True)
class VerifiedTdxQuote:
    tcb_status: str  # "UpToDate", "SWHardeningNeeded", "OutOfDate", ... as Intel's TCB info grades it
    advisory_ids: tuple[str, ...]
    measurements: dict[str, bytes]  # MRTD, RTMR0-3, MRCONFIGID, MROWNER, MROWNERCONFIG, MRSEAM
    report_data: bytes
    td_attributes: bytes
    tee_tcb_svn: bytes
    fmspc: str

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes[0] & TD_DEBUG)


# dcap-qvl's error text -> our error kind (first match wins); anything else is a malformed quote
_ERRORS: tuple[tuple[tuple[str, ...], type[AttestationError]], ...] = (
    (
        ("CrlExpired", "TCBInfo expired", "QEIdentity expired", "TcbInfo expired", "QeIdentity expired"),
        StaleDocumentError,
    ),
    (("expired", "Expired", "not yet valid", "NotValidYet"), CertificateExpiredError),
    (("No matching TCB", "TcbStatus", "Revoked", "revoked"), TcbMismatchError),
    (("UnknownIssuer", "root", "Root"), UnknownRootError),
    (("ignature",), BadSignatureError),
    (("ertificate", "Cert", "chain", "Chain", "Crl", "CRL"), CertificateChainError),
)


def _error(message: str) -> AttestationError:
    for needles, kind in _ERRORS:
        if any(n in message for n in needles):
            if kind is StaleDocumentError:
                return kind(
                    f"TDX collateral expired at the verification time, capture fresh collateral ({message[:200]})"
                )
            return kind(f"TDX quote refused: {message[:300]}")
    return MalformedDocumentError(f"TDX quote refused: {message[:300]}")


def _collateral(collateral: str | bytes | dict[str, Any]) -> Any:
    import dcap_qvl

    try:
        data = collateral if isinstance(collateral, dict) else json.loads(collateral)
    except (ValueError, UnicodeDecodeError):
        raise MalformedDocumentError("TDX collateral is not JSON") from None
    if not isinstance(data, dict) or any(not isinstance(data.get(f), str) for f in _COLLATERAL_FIELDS):
        raise MalformedDocumentError(
            f"TDX collateral is a JSON object with the strings {', '.join(_COLLATERAL_FIELDS)}"
        )
    try:
        return dcap_qvl.QuoteCollateralV3.from_json(json.dumps({f: data[f] for f in _COLLATERAL_FIELDS}))
    except BaseException as exc:  # noqa: BLE001 - a Rust panic is a BaseException; only interrupts pass
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise MalformedDocumentError(f"TDX collateral does not parse: {str(exc)[:200]}") from None


def verify_tdx_quote(
    quote: bytes,
    collateral: str | bytes | dict[str, Any],
    *,
    expected: dict[str, bytes] | None = None,
    report_data: bytes | None = None,
    allow_debug: bool = False,
    now: dt.datetime | None = None,
) -> VerifiedTdxQuote:
    """Verify a TDX ``quote`` with Intel ``collateral`` (dcap-qvl's JSON: PCK CRL and its issuer chain,
    root CA CRL, TCB info, QE identity, their chains and signatures) as of ``now``; raises an
    ``AttestationError`` subclass on any failure, nothing else. ``expected``: measurements by name."""
    import dcap_qvl

    if not isinstance(quote, bytes | bytearray) or not 48 <= len(quote) <= MAX_QUOTE_BYTES:
        size = len(quote) if isinstance(quote, bytes | bytearray) else "?"
        raise MalformedDocumentError(f"a TDX quote is bytes of 48 to {MAX_QUOTE_BYTES}, got {size}")
    if isinstance(collateral, str | bytes) and len(collateral) > MAX_COLLATERAL_BYTES:
        raise MalformedDocumentError(f"TDX collateral over {MAX_COLLATERAL_BYTES} bytes")
    parsed_collateral = _collateral(collateral)
    when = int((now or dt.datetime.now(dt.UTC)).timestamp())
    try:
        verified = dcap_qvl.verify_with_root_ca(bytes(quote), parsed_collateral, intel_sgx_root(), when)
        claims = json.loads(verified.to_json())
    except BaseException as exc:  # noqa: BLE001 - a Rust panic is a BaseException; only interrupts pass
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise _error(str(exc)) from None
    report = claims.get("report") or {}
    kind = next(iter(report), None)
    body = report.get(kind) if kind else None
    while isinstance(body, dict) and "base" in body:  # TD15 and TD15Ex wrap the TD 1.0 fields
        body = body["base"]
    if kind not in ("TD10", "TD15", "TD15Ex") or not isinstance(body, dict):
        raise MalformedDocumentError(f"not a TDX quote (it carries a {kind} report)")
    result = VerifiedTdxQuote(
        tcb_status=str(claims.get("status")),
        advisory_ids=tuple(claims.get("advisory_ids") or ()),
        measurements={name: bytes.fromhex(body[field]) for field, name in MEASUREMENT_NAMES.items()},
        report_data=bytes.fromhex(body["report_data"]),
        td_attributes=bytes.fromhex(body["td_attributes"]),
        tee_tcb_svn=bytes.fromhex(body["tee_tcb_svn"]),
        fmspc=json.loads(parsed_collateral.tcb_info).get("fmspc", ""),
    )
    if result.debug and not allow_debug:
        raise DebugEnclaveError("the TD's attributes allow debugging: the host can read its memory")
    for name, value in (expected or {}).items():
        actual = result.measurements.get(name)
        if actual != value:
            shown = actual.hex()[:16] if actual else "absent"
            raise PcrMismatchError(f"{name} is {shown}..., expected {value.hex()[:16]}...")
    if report_data is not None and result.report_data != report_data.ljust(64, b"\0"):
        raise UserDataMismatchError(f"report_data is {result.report_data.hex()[:16]}..., not the binding asked for")
    return result
