"""One evidence model: whatever the hardware, verified evidence is an ``Evidence``, and a policy that
names the kind and the measurements it expects checks it the same way for every kind.

The verifiers stay per format (``serdab.tee.verify`` for AWS Nitro documents, ``serdab.tee.snp``
for AMD SEV-SNP reports); this module maps what they verified onto names a policy can use:
Nitro's PCRs as ``PCR0``..``PCR31``, SNP's launch digest as ``MEASUREMENT`` and its host data as
``HOST_DATA``; the caller's binding is ``bound_data`` (Nitro ``user_data``, SNP ``report_data``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from serdab.errors import AttestationError, DebugEnclaveError, PcrMismatchError, SimulatedRootError
from serdab.tee.snp import VerifiedSnpReport
from serdab.tee.verify import VerifiedDocument

__all__ = ["KINDS", "Evidence", "EvidencePolicy", "from_nitro", "from_snp"]

KINDS = ("aws-nitro", "amd-sev-snp")


@dataclass(frozen=True)
class Evidence:
    kind: str  # one of KINDS
    simulated: bool  # signed by a simulated root (never accepted unless a policy allows it)
    root: str  # what the chain ends at: "AWS Nitro root G1", "ARK-Milan", or the simulated root
    identity: str  # Nitro module id, SNP chip id (hex)
    measurements: Mapping[str, bytes]
    debug: bool
    bound_data: bytes | None  # what the caller binds: Nitro user_data, SNP report_data
    nonce: bytes | None = None  # Nitro only (SNP folds its nonce into report_data)
    public_key: bytes | None = None  # Nitro only, opaque bytes (see serdab.tee.verify)
    tcb: Mapping[str, int] = field(default_factory=dict)  # SNP: boot_loader, tee, snp, microcode


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
        bound_data=document.user_data,
        nonce=document.nonce,
        public_key=document.public_key,
    )


def from_snp(verified: VerifiedSnpReport) -> Evidence:
    report = verified.report
    tcb = report.reported_tcb
    return Evidence(
        kind="amd-sev-snp",
        simulated=False,
        root=f"ARK-{verified.product}",
        identity=report.chip_id.hex(),
        measurements={"MEASUREMENT": report.measurement, "HOST_DATA": report.host_data},
        debug=report.debug,
        bound_data=report.report_data,
        tcb={"boot_loader": tcb.boot_loader, "tee": tcb.tee, "snp": tcb.snp, "microcode": tcb.microcode},
    )


@dataclass(frozen=True)
class EvidencePolicy:
    """What a relying party (the key service, a client) accepts: a kind, the measurements it expects by
    name, and whether debug or simulated evidence may pass. ``check`` raises an AttestationError naming
    the first difference."""

    kind: str
    measurements: Mapping[str, bytes]
    allow_debug: bool = False
    allow_simulated: bool = False
    min_tcb: Mapping[str, int] = field(default_factory=dict)

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
