"""One evidence model: whatever the hardware, verified evidence is an ``Evidence``, and a policy that
names the kind and the measurements it expects checks it the same way for every kind.

The verifiers stay per format (``serdab.tee.verify`` for AWS Nitro documents, ``serdab.tee.snp``
for AMD SEV-SNP reports); this module maps what they verified onto names a policy can use:
Nitro's PCRs as ``PCR0``..``PCR31``, SNP's launch digest as ``MEASUREMENT`` and its host data as
``HOST_DATA``. ``verify_evidence`` is the one entry point the key service, the runtime and the
serving client call: it recognises the format, verifies it, binds nonce, user data and public key
the same way for every kind, and applies the policy.

On the wire, Nitro evidence is the COSE_Sign1 document itself. SNP evidence is a CBOR map (an
``SnpEvidence``) carrying the report, its VCEK and ASK (and ARK), and the nonce, user data and public
key in the clear; the report's 64-byte ``report_data`` is SHA-512 over a label and those three, so
the signed report binds them as Nitro's signed payload binds its own fields. An SNP report has no
timestamp: its freshness is the nonce alone.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import cbor2
from cryptography import x509

from serdab.errors import (
    AttestationError,
    DebugEnclaveError,
    MalformedDocumentError,
    NonceError,
    PcrMismatchError,
    SimulatedRootError,
    UserDataMismatchError,
)
from serdab.tee.snp import SIMULATED, VerifiedSnpReport, verify_snp_report
from serdab.tee.verify import MAX_DOCUMENT_BYTES, NonceRegistry, VerifiedDocument, verify_attestation

__all__ = [
    "EVIDENCE_ENV",
    "KINDS",
    "Evidence",
    "EvidencePolicy",
    "SnpEvidence",
    "evidence_kind",
    "from_nitro",
    "from_snp",
    "image_measurements",
    "verify_evidence",
]

KINDS = ("aws-nitro", "amd-sev-snp")
EVIDENCE_ENV = "SERDAB_TEE_EVIDENCE"  # the format simulated enclaves attest in, and consumers expect
_BINDING_LABEL = "serdab-evidence-binding-v1"
_MAX_FIELD = 1024  # as Nitro caps nonce, user_data and public_key
_MAX_CERTIFICATE = 8192


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
    if evidence_kind(kind) == "aws-nitro":
        return {f"PCR{i}": v for i, v in sorted(pcrs.items())}
    if not pcrs:
        return {}
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
    time: dt.datetime | None = None  # Nitro's timestamp (an SNP report has none)

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


@dataclass(frozen=True)
class SnpEvidence:
    """An SNP report with its endorsement and the data its ``report_data`` binds."""

    report: bytes
    certificates: Sequence[bytes]  # VCEK, ASK[, ARK] (DER or PEM)
    nonce: bytes | None = None
    user_data: bytes | None = None
    public_key: bytes | None = None

    @staticmethod
    def binding(nonce: bytes | None, user_data: bytes | None, public_key: bytes | None) -> bytes:
        """The 64-byte report_data that binds these three."""
        return hashlib.sha512(cbor2.dumps([_BINDING_LABEL, nonce, user_data, public_key])).digest()

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
        from serdab.crypto import CoseError
        from serdab.crypto.cose import loads_exact

        try:
            item = loads_exact(data, "SEV-SNP evidence")
        except CoseError as exc:
            raise MalformedDocumentError(str(exc)) from None
        if not isinstance(item, dict) or set(item) != {
            "kind",
            "report",
            "certificates",
            "nonce",
            "user_data",
            "public_key",
        }:
            raise MalformedDocumentError(
                "SEV-SNP evidence is a map of kind, report, certificates, nonce, user_data, public_key"
            )
        certificates = item["certificates"]
        if (
            item["kind"] != "amd-sev-snp"
            or not isinstance(item["report"], bytes)
            or not isinstance(certificates, list)
            or not all(isinstance(c, bytes) and len(c) <= _MAX_CERTIFICATE for c in certificates)
        ):
            raise MalformedDocumentError("SEV-SNP evidence: report and certificates must be byte strings")
        for name in ("nonce", "user_data", "public_key"):
            value = item[name]
            if value is not None and (not isinstance(value, bytes) or len(value) > _MAX_FIELD):
                raise MalformedDocumentError(f"SEV-SNP evidence: {name} must be bytes of at most {_MAX_FIELD}")
        return cls(item["report"], certificates, item["nonce"], item["user_data"], item["public_key"])


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


def _is_snp_bundle(data: bytes) -> bool:
    return bool(data) and 0xA0 <= data[0] <= 0xBF  # a CBOR map; a COSE_Sign1 is an array or tag 18


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
) -> Evidence:
    """Verify Nitro or SNP evidence and check it against ``policy``: signature and chain to a pinned
    (or, when allowed, simulated) root, the nonce asked for (or one ``nonces`` issued, once), the
    bound ``user_data``, then kind, debug and measurements. Raises an ``AttestationError`` subclass
    on any failure, nothing else."""
    if not isinstance(data, bytes | bytearray) or len(data) > MAX_DOCUMENT_BYTES:
        size = len(data) if isinstance(data, bytes | bytearray) else "?"
        raise MalformedDocumentError(f"evidence is bytes of at most {MAX_DOCUMENT_BYTES}, got {size}")
    data = bytes(data)
    if _is_snp_bundle(data):
        bundle = SnpEvidence.decode(data)
        evidence = from_snp(
            verify_snp_report(
                bundle.report,
                bundle.certificates,
                report_data=SnpEvidence.binding(bundle.nonce, bundle.user_data, bundle.public_key),
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
    if nonce is not None and evidence.nonce != nonce:
        raise NonceError("the evidence's nonce is not the one this verifier asked for")
    if nonces is not None:
        nonces.consume(evidence.nonce)
    if user_data is not None and evidence.user_data != user_data:
        shown = evidence.user_data.hex()[:16] if evidence.user_data else "absent"
        raise UserDataMismatchError(f"user_data is {shown}..., expected {user_data.hex()[:16]}...")
    return evidence
