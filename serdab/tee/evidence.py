"""One evidence model: whatever the hardware, verified evidence is an ``Evidence``, and a policy that
names the kind and the measurements it expects checks it the same way for every kind.

The verifiers stay per format (``serdab.tee.verify`` for AWS Nitro documents, ``serdab.tee.snp``
for AMD SEV-SNP reports, ``serdab.tee.tdx`` for Intel TDX quotes); this module maps what they
verified onto names a policy can use: Nitro's PCRs as ``PCR0``..``PCR31``, SNP's launch digest as
``MEASUREMENT`` and its host data as ``HOST_DATA``, TDX's ``MRTD``, ``RTMR0``-``RTMR3``,
``MRCONFIGID``, ``MROWNER``, ``MROWNERCONFIG`` and ``MRSEAM``. ``verify_evidence`` is the one entry
point the key service, the runtime and the serving client call: it recognises the format, verifies
it, binds nonce, user data and public key the same way for every kind, and applies the policy.

On the wire, Nitro evidence is the COSE_Sign1 document itself. SNP evidence is a CBOR map (an
``SnpEvidence``) carrying the report, its VCEK and ASK (and ARK), and the nonce, user data and public
key in the clear; TDX evidence (a ``TdxEvidence``) the quote, optionally Intel's collateral, and the
same three. The report's (quote's) 64-byte ``report_data`` is SHA-512 over a label and those three,
so the signed report binds them as Nitro's signed payload binds its own fields. SNP reports and TDX
quotes carry no timestamp: their freshness is the nonce alone (TDX collateral has its own dates).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography import x509

from serdab.errors import (
    AttestationError,
    DebugEnclaveError,
    MalformedDocumentError,
    PcrMismatchError,
    SimulatedRootError,
    TcbMismatchError,
)
from serdab.tee.snp import SIMULATED, VerifiedSnpReport, verify_snp_report
from serdab.tee.tdx import VerifiedTdxQuote
from serdab.tee.verify import NonceRegistry, VerifiedDocument, check_binding, verify_attestation

__all__ = [
    "EVIDENCE_ENV",
    "KINDS",
    "Evidence",
    "EvidencePolicy",
    "SIMULATED_KINDS",
    "SnpEvidence",
    "TdxEvidence",
    "binding",
    "evidence_kind",
    "from_nitro",
    "from_snp",
    "from_tdx",
    "image_measurements",
    "verify_evidence",
]

KINDS = ("aws-nitro", "amd-sev-snp", "intel-tdx")
SIMULATED_KINDS = ("aws-nitro", "amd-sev-snp")  # what the simulated backend can attest in
EVIDENCE_ENV = "SERDAB_TEE_EVIDENCE"  # the format simulated enclaves attest in, and consumers expect
_BINDING_LABEL = "serdab-evidence-binding-v1"
_MAX_FIELD = 1024  # as Nitro caps nonce, user_data and public_key
_MAX_CERTIFICATE = 8192
MAX_EVIDENCE_BYTES = 64 * 1024  # a TDX quote with Intel's collateral inside is about 30 KiB


def evidence_kind(kind: str | None = None) -> str:
    """``kind``, or the deployment's (``$SERDAB_TEE_EVIDENCE``, default aws-nitro); an unknown one is refused."""
    chosen = kind or os.environ.get(EVIDENCE_ENV) or "aws-nitro"
    if chosen not in KINDS:
        raise AttestationError(f"unknown evidence kind {chosen!r}; choose one of {', '.join(KINDS)}")
    return chosen


def image_measurements(kind: str, pcrs: Mapping[int, bytes]) -> dict[str, bytes]:
    """How evidence of ``kind`` reports an enclave image with these PCRs: Nitro as the PCRs themselves,
    SNP as the simulated launch digest over PCR0-2 (which cover the whole image; SNP has no
    extendable registers, so PCR16+ are not reported)."""
    kind = evidence_kind(kind)
    if kind == "aws-nitro":
        return {f"PCR{i}": v for i, v in sorted(pcrs.items())}
    if not pcrs:
        return {}
    if kind not in SIMULATED_KINDS:
        raise AttestationError(
            f"{kind} evidence reports no Serdab image PCRs: name the measurements (MRTD, RTMRs) your TD was built with"
        )
    from serdab.tee.snp_firmware import launch_measurement

    if not all(i in pcrs for i in (0, 1, 2)):
        raise AttestationError("an SEV-SNP launch measurement covers PCR0-2: give all three")
    return {"MEASUREMENT": launch_measurement(dict(pcrs))}


@dataclass(frozen=True)
class Evidence:
    kind: str  # one of KINDS
    simulated: bool  # signed by a simulated root (never accepted unless a policy allows it)
    root: str  # what the chain ends at: "AWS Nitro root G1", "ARK-Milan", or a simulated root
    identity: str  # Nitro module id, SNP chip id (hex)
    measurements: Mapping[str, bytes]
    debug: bool
    user_data: bytes | None  # what the caller binds (Nitro user_data; SNP: bound through report_data)
    nonce: bytes | None = None
    public_key: bytes | None = None  # opaque bytes (see serdab.tee.verify); a consumer parses it
    tcb: Mapping[str, int] = field(default_factory=dict)  # SNP: boot_loader, tee, snp, microcode
    time: dt.datetime | None = None  # Nitro's timestamp (an SNP report or a TDX quote has none)
    tcb_status: str | None = None  # TDX: Intel's grading of the platform TCB ("UpToDate", "OutOfDate", ...)

    def summary(self) -> dict[str, object]:
        """What a report or a CLI shows of it (hex bytes)."""
        return {
            "kind": self.kind,
            "simulated": self.simulated,
            "root": self.root,
            "identity": self.identity,
            "measurements": {k: v.hex() for k, v in self.measurements.items() if any(v)},
            "debug": self.debug,
            "tcb": dict(self.tcb),
            "tcb_status": self.tcb_status,
        }


def from_nitro(verified: VerifiedDocument) -> Evidence:
    document = verified.document
    zero = [document.pcrs.get(i) for i in (0, 1, 2)]
    return Evidence(
        kind="aws-nitro",
        simulated=verified.tee_type == "simulated",
        root="AWS Nitro root G1" if verified.tee_type == "nitro" else "simulated root",
        identity=document.module_id,
        measurements={f"PCR{i}": value for i, value in sorted(document.pcrs.items())},
        debug=all(v is None or v == bytes(len(v)) for v in zero),
        user_data=document.user_data,
        nonce=document.nonce,
        public_key=document.public_key,
        time=document.time,
    )


def from_snp(verified: VerifiedSnpReport, bundle: SnpEvidence | None = None) -> Evidence:
    """A verified report; with the bundle it came in, whose nonce, user data and key it binds (without
    one, a bare report's ``report_data`` is its user data)."""
    report = verified.report
    tcb = report.reported_tcb
    return Evidence(
        kind="amd-sev-snp",
        simulated=verified.product == SIMULATED,
        root=f"ARK-{verified.product}" if verified.product != SIMULATED else "simulated ARK",
        identity=report.chip_id.hex(),
        measurements={"MEASUREMENT": report.measurement, "HOST_DATA": report.host_data},
        debug=report.debug,
        user_data=bundle.user_data if bundle else report.report_data,
        nonce=bundle.nonce if bundle else None,
        public_key=bundle.public_key if bundle else None,
        tcb={"boot_loader": tcb.boot_loader, "tee": tcb.tee, "snp": tcb.snp, "microcode": tcb.microcode},
    )


def binding(nonce: bytes | None, user_data: bytes | None, public_key: bytes | None) -> bytes:
    """The 64-byte report_data (SNP) or REPORTDATA (TDX) that binds these three."""
    return hashlib.sha512(cbor2.dumps([_BINDING_LABEL, nonce, user_data, public_key])).digest()


def _load_bundle(data: bytes) -> dict[Any, Any]:
    """A bundle's CBOR map, decoded once (one item spanning all of ``data``)."""
    from serdab.crypto import CoseError
    from serdab.crypto.cose import loads_exact

    try:
        item = loads_exact(data, "evidence bundle")
    except CoseError as exc:
        raise MalformedDocumentError(str(exc)) from None
    if not isinstance(item, dict):
        raise MalformedDocumentError("an evidence bundle is a CBOR map")
    return item


def _fields(item: dict[Any, Any], kind: str, body: dict[str, type | tuple[type, ...]]) -> dict[Any, Any]:
    """A bundle's map checked: exactly ``kind``, the body fields of their types, and the three bound fields."""
    names = {"kind", *body, "nonce", "user_data", "public_key"}
    if set(item) != names or item["kind"] != kind:
        raise MalformedDocumentError(f"{kind} evidence is a map of {', '.join(sorted(names))}")
    for name, types in body.items():
        if not isinstance(item[name], types):
            raise MalformedDocumentError(f"{kind} evidence: {name} has the wrong type")
    for name in ("nonce", "user_data", "public_key"):
        value = item[name]
        if value is not None and (not isinstance(value, bytes) or len(value) > _MAX_FIELD):
            raise MalformedDocumentError(f"{kind} evidence: {name} must be bytes of at most {_MAX_FIELD}")
    return item


@dataclass(frozen=True)
class SnpEvidence:
    """An SNP report with its endorsement and the data its ``report_data`` binds."""

    report: bytes
    certificates: Sequence[bytes]  # VCEK, ASK[, ARK] (DER or PEM)
    nonce: bytes | None = None
    user_data: bytes | None = None
    public_key: bytes | None = None

    def encode(self) -> bytes:
        return cbor2.dumps(
            {
                "kind": "amd-sev-snp",
                "report": self.report,
                "certificates": list(self.certificates),
                "nonce": self.nonce,
                "user_data": self.user_data,
                "public_key": self.public_key,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> SnpEvidence:
        return cls.from_item(_load_bundle(data))

    @classmethod
    def from_item(cls, item: dict[Any, Any]) -> SnpEvidence:
        item = _fields(item, "amd-sev-snp", {"report": bytes, "certificates": list})
        certificates = item["certificates"]
        if not all(isinstance(c, bytes) and len(c) <= _MAX_CERTIFICATE for c in certificates):
            raise MalformedDocumentError(
                f"amd-sev-snp evidence: certificates are byte strings of <= {_MAX_CERTIFICATE}"
            )
        return cls(item["report"], certificates, item["nonce"], item["user_data"], item["public_key"])


@dataclass(frozen=True)
class TdxEvidence:
    """A TDX quote, the data its REPORTDATA binds, and (optionally) the Intel collateral to verify it with."""

    quote: bytes
    collateral: str | None = None  # dcap-qvl's collateral JSON; else the verifier's caller supplies it
    nonce: bytes | None = None
    user_data: bytes | None = None
    public_key: bytes | None = None

    def encode(self) -> bytes:
        return cbor2.dumps(
            {
                "kind": "intel-tdx",
                "quote": self.quote,
                "collateral": self.collateral,
                "nonce": self.nonce,
                "user_data": self.user_data,
                "public_key": self.public_key,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> TdxEvidence:
        return cls.from_item(_load_bundle(data))

    @classmethod
    def from_item(cls, item: dict[Any, Any]) -> TdxEvidence:
        item = _fields(item, "intel-tdx", {"quote": bytes, "collateral": (str, type(None))})
        return cls(item["quote"], item["collateral"], item["nonce"], item["user_data"], item["public_key"])


@dataclass(frozen=True)
class EvidencePolicy:
    """What a relying party (the key service, a client) accepts: a kind, the measurements it expects by
    name, and whether debug or simulated evidence may pass. ``check`` raises an AttestationError naming
    the first difference."""

    kind: str
    measurements: Mapping[str, bytes] = field(default_factory=dict)
    allow_debug: bool = False
    allow_simulated: bool = False
    min_tcb: Mapping[str, int] = field(default_factory=dict)
    tcb_statuses: tuple[str, ...] = ("UpToDate",)  # TDX: the grades of Intel's TCB info accepted

    @classmethod
    def for_image(
        cls,
        pcrs: Mapping[int, bytes] | None,
        kind: str | None = None,
        allow_simulated: bool = False,
        allow_debug: bool = False,
    ) -> EvidencePolicy:
        """Evidence of an enclave launched from the image with these PCRs (None: any image), in ``kind``."""
        kind = evidence_kind(kind)
        return cls(kind, image_measurements(kind, pcrs or {}), allow_debug, allow_simulated)

    def check(self, evidence: Evidence) -> None:
        if evidence.kind != self.kind:
            raise AttestationError(f"{evidence.kind} evidence where the policy names {self.kind}")
        if evidence.simulated and not self.allow_simulated:
            raise SimulatedRootError(f"simulated {evidence.kind} evidence ({evidence.root}) without allow_simulated")
        if evidence.debug and not self.allow_debug:
            raise DebugEnclaveError(f"debug-mode {evidence.kind} evidence where the policy allows none")
        for name, value in self.measurements.items():
            actual = evidence.measurements.get(name)
            if actual != value:
                shown = actual.hex()[:16] if actual else "absent"
                raise PcrMismatchError(f"{name} is {shown}..., the policy expects {value.hex()[:16]}...")
        for name, least in self.min_tcb.items():
            if evidence.tcb.get(name, -1) < least:
                raise AttestationError(f"TCB {name} SPL {evidence.tcb.get(name)} is below the policy's {least}")
        if evidence.tcb_status is not None and evidence.tcb_status not in self.tcb_statuses:
            raise TcbMismatchError(
                f"the platform's TCB is {evidence.tcb_status}; the policy accepts {', '.join(self.tcb_statuses)}"
            )


def from_tdx(verified: VerifiedTdxQuote, bundle: TdxEvidence | None = None) -> Evidence:
    """A verified quote; with the bundle it came in, whose nonce, user data and key it binds."""
    return Evidence(
        kind="intel-tdx",
        simulated=False,
        root="Intel SGX Root CA",
        identity=f"FMSPC {verified.fmspc}",
        measurements=verified.measurements,
        debug=verified.debug,
        user_data=bundle.user_data if bundle else verified.report_data,
        nonce=bundle.nonce if bundle else None,
        public_key=bundle.public_key if bundle else None,
        tcb_status=verified.tcb_status,
    )


def verify_evidence(
    data: bytes,
    policy: EvidencePolicy,
    *,
    nonce: bytes | None = None,
    nonces: NonceRegistry | None = None,
    user_data: bytes | None = None,
    max_age_s: float = 300.0,
    simulated_roots: Sequence[x509.Certificate] = (),
    now: dt.datetime | None = None,
    tdx_collateral: str | None = None,
) -> Evidence:
    """Verify Nitro, SNP or TDX evidence and check it against ``policy``: signature and chain to a
    pinned (or, when allowed, simulated) root, the nonce asked for (or one ``nonces`` issued, once),
    the bound ``user_data``, then kind, debug, measurements and TCB. TDX quotes are verified with the
    collateral in their bundle, else ``tdx_collateral``. Raises an ``AttestationError`` subclass on
    any failure, nothing else."""
    if not isinstance(data, bytes | bytearray) or len(data) > MAX_EVIDENCE_BYTES:
        size = len(data) if isinstance(data, bytes | bytearray) else "?"
        raise MalformedDocumentError(f"evidence is bytes of at most {MAX_EVIDENCE_BYTES}, got {size}")
    data = bytes(data)
    item = _load_bundle(data) if data and 0xA0 <= data[0] <= 0xBF else None  # a map; COSE_Sign1 is an array
    if item is not None and item.get("kind") == "intel-tdx":
        from serdab.tee.tdx import verify_tdx_quote

        tdx = TdxEvidence.from_item(item)
        collateral = tdx.collateral or tdx_collateral
        if collateral is None:
            raise MalformedDocumentError("a TDX quote needs Intel's collateral: in its bundle or from the caller")
        evidence = from_tdx(
            verify_tdx_quote(
                tdx.quote,
                collateral,
                report_data=binding(tdx.nonce, tdx.user_data, tdx.public_key),
                allow_debug=policy.allow_debug,
                now=now,
            ),
            tdx,
        )
    elif item is not None:
        bundle = SnpEvidence.from_item(item)
        evidence = from_snp(
            verify_snp_report(
                bundle.report,
                bundle.certificates,
                report_data=binding(bundle.nonce, bundle.user_data, bundle.public_key),
                allow_debug=policy.allow_debug,
                allow_simulated=policy.allow_simulated,
                simulated_roots=simulated_roots,
                now=now,
            ),
            bundle,
        )
    else:
        evidence = from_nitro(
            verify_attestation(
                data,
                allow_simulated=policy.allow_simulated,
                allow_debug=policy.allow_debug,
                max_age_s=max_age_s,
                simulated_roots=simulated_roots,
                now=now,
            )
        )
    policy.check(evidence)
    check_binding(evidence.nonce, evidence.user_data, nonce=nonce, nonces=nonces, user_data=user_data)
    return evidence
