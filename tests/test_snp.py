"""AMD SEV-SNP reports: genuine ones published by others (tests/data/snp/README.md), verified offline
against the pinned ARKs; every tampered byte, swapped certificate or wrong binding refused with an
attestation error and nothing else (fuzzed)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serdab.errors import (
    AttestationError,
    BadSignatureError,
    CertificateChainError,
    CertificateExpiredError,
    MalformedDocumentError,
    PcrMismatchError,
    TcbMismatchError,
    UnknownRootError,
    UserDataMismatchError,
)
from serdab.tee.snp import REPORT_BYTES, SIGNED_BYTES, verify_snp_report

DATA = Path(__file__).parent / "data" / "snp"
PRODUCTS = ("milan", "genoa")
EXPECTED = {  # product -> (measurement prefix, reported TCB (bl, tee, snp, ucode))
    "milan": ("5feee30d6d7e1a29f403d70a4198237d", (4, 0, 24, 219)),
    "genoa": ("5feee30d6d7e1a29f403d70a4198237d", (10, 0, 23, 84)),
}


def _vector(product: str) -> tuple[bytes, list[bytes]]:
    report = bytes.fromhex((DATA / f"ccf-{product}-report.hex").read_text().strip())
    pem = (DATA / f"ccf-{product}-vcek-ask-ark.pem").read_bytes()
    parts = [b"-----BEGIN" + p for p in pem.split(b"-----BEGIN")[1:]]
    return report, parts


@pytest.mark.parametrize("product", PRODUCTS)
def test_a_genuine_report_verifies_offline_as_what_it_is(product: str) -> None:
    report, certs = _vector(product)
    verified = verify_snp_report(report, certs)
    r = verified.report
    assert verified.product == product.capitalize() and r.version == 3 and not r.debug and r.vmpl == 0
    assert r.measurement.hex().startswith(EXPECTED[product][0])
    tcb = r.reported_tcb
    assert (tcb.boot_loader, tcb.tee, tcb.snp, tcb.microcode) == EXPECTED[product][1]
    verify_snp_report(report, certs[:2], expected_measurement=r.measurement, report_data=r.report_data)


@pytest.mark.parametrize("product", PRODUCTS)
def test_a_genuine_report_is_refused_for_the_wrong_binding_time_or_chain(product: str) -> None:
    report, certs = _vector(product)
    with pytest.raises(PcrMismatchError, match="measurement"):
        verify_snp_report(report, certs, expected_measurement=bytes(48))
    with pytest.raises(UserDataMismatchError):
        verify_snp_report(report, certs, report_data=b"a nonce and a key hash")
    with pytest.raises(CertificateExpiredError):  # before its VCEK was issued
        verify_snp_report(report, certs, now=dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    other_report, other_certs = _vector("genoa" if product == "milan" else "milan")
    with pytest.raises(AttestationError):  # the other product's VCEK: chain or signature refused
        verify_snp_report(report, [other_certs[0], certs[1]])
    with pytest.raises(AttestationError):
        verify_snp_report(report, other_certs)  # a valid chain of another chip
    with pytest.raises(UnknownRootError):
        verify_snp_report(report, [certs[0], certs[1], other_certs[2]])
    with pytest.raises(UnknownRootError):
        verify_snp_report(report, [certs[0], certs[0]])  # the VCEK posing as its ASK: not issued by an ARK
    with pytest.raises(CertificateChainError):
        verify_snp_report(report, [certs[1], certs[1]])  # the ASK posing as the VCEK: the ASK did not sign itself


def test_debug_policy_is_refused_unless_allowed() -> None:
    """The policy is signed: a debug bit cannot be set on a genuine report without breaking it, so the
    refusal order is checked on the parsed policy: signature first, then policy."""
    report, certs = _vector("milan")
    debug = bytearray(report)
    debug[0x0A] |= 0x08  # policy bit 19
    with pytest.raises(BadSignatureError):
        verify_snp_report(bytes(debug), certs, allow_debug=True)


def test_a_vcek_for_another_tcb_is_refused() -> None:
    from serdab.tee import snp

    report, certs = _vector("milan")
    parsed = snp.SnpReport.parse(report)
    vcek = snp._load(certs[0], "the VCEK")
    changed = snp.SnpReport(**{**parsed.__dict__, "reported_tcb": snp.TcbVersion(4, 0, 24, 200)})
    with pytest.raises(TcbMismatchError, match="microcode"):
        snp._check_tcb(vcek, changed)
    other_chip = snp.SnpReport(**{**parsed.__dict__, "chip_id": bytes(64)})
    with pytest.raises(TcbMismatchError, match="another chip"):
        snp._check_tcb(vcek, other_chip)


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda r: r[:-1], MalformedDocumentError),
        (lambda r: r + b"\0", MalformedDocumentError),
        (lambda r: b"\x01\0\0\0" + r[4:], MalformedDocumentError),  # version 1
        (lambda r: r[:0x34] + b"\x02\0\0\0" + r[0x38:], MalformedDocumentError),  # another signature algorithm
        (lambda r: r[:0x48] + b"\x04\0\0\0" + r[0x4C:], MalformedDocumentError),  # signed by a VLEK
        (lambda r: r[:SIGNED_BYTES] + bytes(REPORT_BYTES - SIGNED_BYTES), BadSignatureError),
    ],
)
def test_malformed_reports_are_named(mutate, error) -> None:
    report, certs = _vector("milan")
    with pytest.raises(error):
        verify_snp_report(mutate(report), certs)


def test_every_signed_byte_of_a_genuine_report_is_covered() -> None:
    report, certs = _vector("genoa")
    accepted = []
    for i in range(SIGNED_BYTES + 144):  # every signed byte and the signature itself
        copy = bytearray(report)
        copy[i] ^= 0x01
        try:
            verify_snp_report(bytes(copy), certs)
        except AttestationError:
            continue
        accepted.append(i)
    assert accepted == []


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_reports_and_certificates(data) -> None:
    report, certs = _vector(data.draw(st.sampled_from(PRODUCTS)))
    which = data.draw(st.sampled_from(["report", "vcek", "ask", "ark", "junk"]))
    if which == "junk":
        blob = data.draw(st.binary(max_size=2048))
        report, certs = blob, [data.draw(st.binary(max_size=64)), data.draw(st.binary(max_size=64))]
    else:
        target = report if which == "report" else certs[["vcek", "ask", "ark"].index(which)]
        at = data.draw(st.integers(0, len(target) - 1))
        flipped = target[:at] + bytes([target[at] ^ data.draw(st.integers(1, 255))]) + target[at + 1 :]
        if which == "report":
            report = flipped
        else:
            certs = list(certs)
            certs[["vcek", "ask", "ark"].index(which)] = flipped
    try:
        verify_snp_report(report, certs)
    except AttestationError:
        return
    # accepted: only possible for a byte outside what anything signs or checks (a PEM's base64 padding or
    # line break, the reserved tail of the report's signature field)
    assert which in ("vcek", "ask", "ark", "report")
