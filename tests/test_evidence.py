"""One evidence model for Nitro documents and SEV-SNP reports, on genuine vectors of each."""

from __future__ import annotations

import pytest

from serdab.errors import AttestationError, DebugEnclaveError, PcrMismatchError
from serdab.tee.evidence import EvidencePolicy, from_nitro, from_snp
from serdab.tee.snp import verify_snp_report
from serdab.tee.verify import verify_attestation
from tests.test_snp import _vector
from tests.test_verify import _genuine_aws


def test_both_kinds_map_onto_one_model() -> None:
    data, when = _genuine_aws("cape-js-2022-07-12.b64")
    nitro = from_nitro(verify_attestation(data, now=when, allow_debug=True))
    assert (nitro.kind, nitro.simulated, nitro.debug) == ("aws-nitro", False, True)
    assert nitro.identity == "i-029e0eacb65267caa-enc0181f3b11fbd2d84" and len(nitro.public_key or b"") == 32
    assert set(nitro.measurements) == {f"PCR{i}" for i in range(16)}
    report, certs = _vector("milan")
    snp = from_snp(verify_snp_report(report, certs))
    assert (snp.kind, snp.root, snp.debug) == ("amd-sev-snp", "ARK-Milan", False)
    assert set(snp.measurements) == {"MEASUREMENT", "HOST_DATA"} and snp.tcb["microcode"] == 219
    assert snp.user_data is not None and len(snp.user_data) == 64


def test_a_policy_names_the_kind_and_the_measurements_it_expects() -> None:
    report, certs = _vector("genoa")
    evidence = from_snp(verify_snp_report(report, certs))
    measurement = evidence.measurements["MEASUREMENT"]
    EvidencePolicy("amd-sev-snp", {"MEASUREMENT": measurement}, min_tcb={"snp": 23}).check(evidence)
    with pytest.raises(PcrMismatchError, match="MEASUREMENT"):  # the right kind, the wrong measurement
        EvidencePolicy("amd-sev-snp", {"MEASUREMENT": bytes(48)}).check(evidence)
    with pytest.raises(AttestationError, match="policy names aws-nitro"):
        EvidencePolicy("aws-nitro", {"PCR0": measurement}).check(evidence)
    with pytest.raises(AttestationError, match="below"):
        EvidencePolicy("amd-sev-snp", {}, min_tcb={"microcode": 200}).check(evidence)
    data, when = _genuine_aws("brave-p3a-2022-07-26.b64")
    nitro = from_nitro(verify_attestation(data, now=when, allow_debug=True))
    with pytest.raises(DebugEnclaveError):
        EvidencePolicy("aws-nitro", {}).check(nitro)
    EvidencePolicy("aws-nitro", {"PCR4": nitro.measurements["PCR4"]}, allow_debug=True).check(nitro)
