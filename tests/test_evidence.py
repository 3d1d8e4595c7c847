"""One evidence model for Nitro documents and SEV-SNP reports: genuine vectors of each mapped onto it, and
simulated SNP-format evidence through ``verify_evidence`` and the key service's release policy."""

from __future__ import annotations

import dataclasses

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serdab.crypto import new_key, open_envelope, public_der
from serdab.errors import (
    AttestationError,
    DebugEnclaveError,
    NonceError,
    PcrMismatchError,
    SimulatedRootError,
    UnknownRootError,
    UserDataMismatchError,
)
from serdab.kms.service import ReleasedKeys
from serdab.tee.evidence import EvidencePolicy, SnpEvidence, from_nitro, from_snp, image_measurements, verify_evidence
from serdab.tee.host import HostIdentity
from serdab.tee.nsm import NsmDevice
from serdab.tee.snp import SIGNED_BYTES, verify_snp_report
from serdab.tee.verify import NonceRegistry, verify_attestation
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


# --- SNP-format simulated evidence, through the one entry point ---------------------------------------
PCRS = {i: bytes([i + 1]) * 48 for i in (0, 1, 2, 16)}


@pytest.fixture(scope="module")
def snp_host(tmp_path_factory):
    host = HostIdentity.load_or_create(tmp_path_factory.mktemp("snp-host"))
    return host, NsmDevice(host, "sim-snp-test", PCRS, False, snp=host.snp_firmware())


def _snp_policy(**overrides) -> EvidencePolicy:
    return EvidencePolicy.for_image(PCRS, "amd-sev-snp", allow_simulated=True, **overrides)


def test_simulated_snp_evidence_verifies_only_when_simulated_evidence_is_allowed(snp_host) -> None:
    host, device = snp_host
    roots = host.simulated_roots()
    assert any(root.subject.rfc4514_string().endswith("CN=SIMULATED-NOT-A-TEE ARK") for root in roots)
    data = device.attest(nonce=b"n" * 32, user_data=b"tls-hash", public_key=b"key")
    evidence = verify_evidence(data, _snp_policy(), nonce=b"n" * 32, user_data=b"tls-hash", simulated_roots=roots)
    assert (evidence.kind, evidence.simulated, evidence.root, evidence.public_key) == (
        "amd-sev-snp",
        True,
        "simulated ARK",
        b"key",
    )
    assert evidence.measurements["MEASUREMENT"] == image_measurements("amd-sev-snp", PCRS)["MEASUREMENT"]
    assert evidence.tcb == {"boot_loader": 4, "tee": 0, "snp": 22, "microcode": 213}
    with pytest.raises(SimulatedRootError):
        verify_evidence(data, EvidencePolicy.for_image(PCRS, "amd-sev-snp"), simulated_roots=roots)
    with pytest.raises(UnknownRootError):  # a verifier that does not know the simulated ARK at all
        verify_evidence(data, _snp_policy())
    with pytest.raises(AttestationError, match="policy names aws-nitro"):
        verify_evidence(data, EvidencePolicy.for_image(PCRS, "aws-nitro", allow_simulated=True), simulated_roots=roots)
    nitro = NsmDevice(host, "sim-nitro-test", PCRS, False).attest(nonce=b"n" * 32)
    with pytest.raises(AttestationError, match="policy names amd-sev-snp"):
        verify_evidence(nitro, _snp_policy(), simulated_roots=roots)


def test_simulated_snp_evidence_refused_for_measurement_binding_nonce_and_debug(snp_host) -> None:
    host, device = snp_host
    roots = host.simulated_roots()
    data = device.attest(nonce=b"n" * 32, user_data=b"tls-hash", public_key=b"key")
    other = {**PCRS, 2: bytes(48)}  # the right kind, another image
    with pytest.raises(PcrMismatchError, match="MEASUREMENT"):
        verify_evidence(
            data, EvidencePolicy.for_image(other, "amd-sev-snp", allow_simulated=True), simulated_roots=roots
        )
    with pytest.raises(UserDataMismatchError):
        verify_evidence(data, _snp_policy(), user_data=b"another certificate", simulated_roots=roots)
    with pytest.raises(NonceError):
        verify_evidence(data, _snp_policy(), nonce=b"m" * 32, simulated_roots=roots)
    registry = NonceRegistry()
    issued = registry.issue()
    fresh = device.attest(nonce=issued, public_key=b"key")
    verify_evidence(fresh, _snp_policy(), nonces=registry, simulated_roots=roots)
    with pytest.raises(NonceError, match="replay"):
        verify_evidence(fresh, _snp_policy(), nonces=registry, simulated_roots=roots)
    # the fields beside the report are bound by report_data: swapping any one is refused
    bundle = SnpEvidence.decode(data)
    for swapped in (
        dataclasses.replace(bundle, nonce=b"m" * 32),
        dataclasses.replace(bundle, user_data=b"x"),
        dataclasses.replace(bundle, public_key=b"attacker's key"),
    ):
        with pytest.raises(UserDataMismatchError, match="report_data"):
            verify_evidence(swapped.encode(), _snp_policy(), simulated_roots=roots)
    debug = NsmDevice(host, "sim-snp-debug", PCRS, True, snp=host.snp_firmware()).attest(nonce=b"n" * 32)
    with pytest.raises(DebugEnclaveError):
        verify_evidence(debug, _snp_policy(), simulated_roots=roots)
    verify_evidence(debug, _snp_policy(allow_debug=True), simulated_roots=roots)


def test_every_byte_of_simulated_snp_evidence_is_covered(snp_host) -> None:
    host, device = snp_host
    roots = host.simulated_roots()
    data = device.attest(nonce=b"n" * 32, user_data=b"u", public_key=b"k")
    bundle = SnpEvidence.decode(data)
    accepted = []
    for i in range(SIGNED_BYTES + 144):
        report = bytearray(bundle.report)
        report[i] ^= 0x01
        try:
            verify_evidence(
                dataclasses.replace(bundle, report=bytes(report)).encode(), _snp_policy(), simulated_roots=roots
            )
        except AttestationError:
            continue
        accepted.append(i)
    assert accepted == []


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_snp_evidence_bundles(snp_host, data) -> None:
    host, device = snp_host
    genuine = device.attest(nonce=b"n" * 32, user_data=b"u", public_key=b"k")
    how = data.draw(st.sampled_from(["flip", "cut", "junk", "field"]))
    if how == "flip":
        at = data.draw(st.integers(0, len(genuine) - 1))
        blob = genuine[:at] + bytes([genuine[at] ^ data.draw(st.integers(1, 255))]) + genuine[at + 1 :]
    elif how == "cut":
        blob = genuine[: data.draw(st.integers(0, len(genuine) - 1))]
    elif how == "junk":
        blob = b"\xa6" + data.draw(st.binary(max_size=4096))  # a CBOR map head: taken as an SNP bundle
    else:
        item = cbor2.loads(genuine)
        key = data.draw(st.sampled_from(sorted(item)))
        item[key] = data.draw(st.one_of(st.none(), st.binary(max_size=2048), st.integers(), st.text(max_size=8)))
        blob = cbor2.dumps(item)
    try:
        verify_evidence(blob, _snp_policy(), simulated_roots=host.simulated_roots())
    except AttestationError:
        return
    assert how == "flip"  # accepted only where a flip left what is signed and bound intact (a PEM-free DER
    # certificate byte cannot be one; the report's reserved signature tail can)
    assert (
        SnpEvidence.decode(blob).report[: SIGNED_BYTES + 144]
        == SnpEvidence.decode(genuine).report[: SIGNED_BYTES + 144]
    )


def test_a_release_policy_names_the_kind_and_refuses_the_wrong_measurement(snp_host, tmp_path) -> None:
    from serdab.errors import KmsRefusedError
    from serdab.kms.service import KeyService
    from serdab.kms.state import ServicePolicy, StateStore
    from serdab.kms.store import open_store

    host, device = snp_host
    service = KeyService(StateStore(open_store(f"sqlite:{tmp_path / 'kms.db'}"), bytes(32)), host.simulated_roots())
    measured = {n: v.hex() for n, v in image_measurements("amd-sev-snp", PCRS).items()}
    service.register("snp", ServicePolicy(kind="amd-sev-snp", measurements=measured, allow_simulated=True))
    wrong = {"MEASUREMENT": "00" * 48}
    service.register("snp-other", ServicePolicy(kind="amd-sev-snp", measurements=wrong, allow_simulated=True))
    nitro_policy = {f"PCR{i}": v.hex() for i, v in PCRS.items()}
    service.register("nitro", ServicePolicy(measurements=nitro_policy, allow_simulated=True))
    key = new_key()

    def evidence() -> bytes:
        return device.attest(nonce=service.issue_nonce(), public_key=public_der(key.public_key()))

    keys = ReleasedKeys.from_cbor(open_envelope(service.release("snp", evidence()), key, context=b"snp"))
    assert keys.service == "snp"
    with pytest.raises(KmsRefusedError, match="PcrMismatchError: MEASUREMENT is"):
        service.release("snp-other", evidence())
    with pytest.raises(KmsRefusedError, match="policy names aws-nitro"):
        service.release("nitro", evidence())
    assert ServicePolicy(pcrs={0: "ab" * 48}).evidence_policy() == EvidencePolicy("aws-nitro", {"PCR0": b"\xab" * 48})
