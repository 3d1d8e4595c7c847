"""Intel TDX quotes: genuine ones with the Intel collateral captured beside them (tests/data/tdx/README.md),
verified offline through dcap-qvl against the pinned Intel SGX Root CA; refused today, for another
measurement or binding, an unappraisable TCB, tampered collateral, and every byte anything signs;
fuzzed so that only attestation errors come out."""

from __future__ import annotations

import datetime as dt
import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serdab.errors import (
    AttestationError,
    DebugEnclaveError,
    MalformedDocumentError,
    PcrMismatchError,
    StaleDocumentError,
    TcbMismatchError,
    UserDataMismatchError,
)
from serdab.tee.evidence import EvidencePolicy, TdxEvidence, from_tdx, verify_evidence
from serdab.tee.tdx import MEASUREMENT_NAMES, verify_tdx_quote

DATA = Path(__file__).parent / "data" / "tdx"
VECTORS = {  # name -> (a time inside its collateral's validity, MRTD prefix, TD report kind's signed bytes)
    "phala-tdx10-2025-06": (dt.datetime(2025, 6, 20, tzinfo=dt.UTC), "91eb2b44d141d4ec", 48 + 584),
    "phala-td15ex-2026-10": (dt.datetime(2026, 10, 9, tzinfo=dt.UTC), "2a674327c50218db", None),
}


def _vector(name: str) -> tuple[bytes, str]:
    return (DATA / f"{name}.quote").read_bytes(), (DATA / f"{name}.collateral.json").read_text()


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_a_genuine_quote_verifies_offline_at_its_time_and_maps_onto_the_evidence_model(name: str) -> None:
    quote, collateral = _vector(name)
    when, mrtd, _ = VECTORS[name]
    verified = verify_tdx_quote(quote, collateral, now=when)
    assert verified.tcb_status == "UpToDate" and not verified.debug and verified.fmspc == "B0C06F000000"
    assert verified.measurements["MRTD"].hex().startswith(mrtd)
    assert set(verified.measurements) == set(MEASUREMENT_NAMES.values())
    assert all(len(v) == 48 for v in verified.measurements.values())
    evidence = from_tdx(verified)
    assert (evidence.kind, evidence.root, evidence.simulated, evidence.tcb_status) == (
        "intel-tdx",
        "Intel SGX Root CA",
        False,
        "UpToDate",
    )
    EvidencePolicy("intel-tdx", {"MRTD": verified.measurements["MRTD"], "RTMR0": verified.measurements["RTMR0"]}).check(
        evidence
    )
    with pytest.raises(PcrMismatchError, match="RTMR0"):  # the right kind, the wrong measurement
        EvidencePolicy("intel-tdx", {"RTMR0": bytes(48)}).check(evidence)
    with pytest.raises(TcbMismatchError, match="UpToDate"):
        EvidencePolicy("intel-tdx", {}, tcb_statuses=("SWHardeningNeeded",)).check(evidence)
    with pytest.raises(AttestationError, match="policy names amd-sev-snp"):
        EvidencePolicy("amd-sev-snp", {}).check(evidence)


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_a_genuine_quote_is_refused_today_for_another_measurement_or_binding(name: str) -> None:
    quote, collateral = _vector(name)
    when = VECTORS[name][0]
    with pytest.raises(StaleDocumentError, match="expired"):  # its collateral is months old by now
        verify_tdx_quote(quote, collateral)
    with pytest.raises(PcrMismatchError, match="MRTD"):
        verify_tdx_quote(quote, collateral, now=when, expected={"MRTD": bytes(48)})
    with pytest.raises(UserDataMismatchError):
        verify_tdx_quote(quote, collateral, now=when, report_data=b"a nonce and a key hash")
    # through the one entry point: a bundle's nonce, user data and key must be what REPORTDATA binds
    with pytest.raises(UserDataMismatchError, match="report_data"):
        verify_evidence(TdxEvidence(quote, collateral, nonce=b"n" * 32).encode(), EvidencePolicy("intel-tdx"), now=when)
    with pytest.raises(MalformedDocumentError, match="collateral"):
        verify_evidence(TdxEvidence(quote).encode(), EvidencePolicy("intel-tdx"), now=when)


def test_a_quote_whose_tcb_the_collateral_cannot_appraise_is_refused() -> None:
    quote = (DATA / "phala-tdx10-outdated-2026-02.quote").read_bytes()
    collateral = (DATA / "phala-tdx10-outdated-2026-02.collateral.json").read_text()
    with pytest.raises(TcbMismatchError, match="No matching TCB level"):
        verify_tdx_quote(quote, collateral, now=dt.datetime(2026, 2, 19, tzinfo=dt.UTC))


def test_collateral_for_another_quote_or_tampered_is_refused() -> None:
    quote, _ = _vector("phala-tdx10-2025-06")
    _, other = _vector("phala-td15ex-2026-10")
    # collateral is per platform (FMSPC): Intel's TCB info of October 2026 grades the June 2025 platform
    # OutOfDate, with the advisories since; the default policy accepts UpToDate only
    later = verify_tdx_quote(quote, other, now=dt.datetime(2026, 10, 9, tzinfo=dt.UTC))
    assert later.tcb_status == "OutOfDate" and "INTEL-SA-01312" in later.advisory_ids
    with pytest.raises(TcbMismatchError, match="OutOfDate"):
        EvidencePolicy("intel-tdx").check(from_tdx(later))
    good = json.loads(_vector("phala-tdx10-2025-06")[1])
    when = VECTORS["phala-tdx10-2025-06"][0]
    for field in ("tcb_info", "qe_identity"):
        tampered = dict(good)
        tampered[field] = good[field].replace('"UpToDate"', '"OutOfDate"', 1).replace("UpToDate", "Revoked", 1)
        assert tampered[field] != good[field]
        with pytest.raises(AttestationError):
            verify_tdx_quote(quote, tampered, now=when)
    for field in ("tcb_info_signature", "qe_identity_signature"):
        flipped = dict(good)
        flipped[field] = ("0" if good[field][0] != "0" else "1") + good[field][1:]
        with pytest.raises(AttestationError):
            verify_tdx_quote(quote, flipped, now=when)
    with pytest.raises(MalformedDocumentError, match="strings"):
        verify_tdx_quote(quote, {k: v for k, v in good.items() if k != "pck_crl"}, now=when)


def test_debug_tds_are_refused_unless_allowed() -> None:
    quote, collateral = _vector("phala-tdx10-2025-06")
    verified = verify_tdx_quote(quote, collateral, now=VECTORS["phala-tdx10-2025-06"][0])
    debug = type(verified)(**{**verified.__dict__, "td_attributes": b"\x01" + verified.td_attributes[1:]})
    assert debug.debug and not verified.debug
    with pytest.raises(DebugEnclaveError):
        EvidencePolicy("intel-tdx").check(from_tdx(debug))
    # the TD attributes are signed: a debug bit set on the genuine quote is a broken signature, not a pass
    copy = bytearray(quote)
    copy[48 + 16 * 3 + 48 * 2 + 8] ^= 0x01  # TDATTRIBUTES byte 0 in a TD 1.0 report (after TEE_TCB_SVN, MRSEAM...)
    with pytest.raises(AttestationError):
        verify_tdx_quote(bytes(copy), collateral, now=VECTORS["phala-tdx10-2025-06"][0])


def _pem_lines_and_root(quote: bytes) -> set[int]:
    """Bytes of a genuine quote a verifier may ignore: PEM line breaks (a flip makes another whitespace
    character), the copy of the root CA inside the quote (the pinned root is what is trusted), and the
    padding after the declared signature data."""
    (sig_len,) = struct.unpack_from("<I", quote, 632)
    ignorable = {i for i in range(636 + sig_len, len(quote))}
    ignorable |= {i for i, b in enumerate(quote) if b == 0x0A}
    root = quote.rfind(b"-----BEGIN CERTIFICATE-----")
    ignorable |= set(range(root, quote.find(b"-----END CERTIFICATE-----", root) + 27))  # with its \n and NUL
    return ignorable | {632, 764, 765}  # the signature data length's low bit and the cert data type (unsigned)


def test_every_signed_byte_of_a_genuine_quote_is_covered() -> None:
    quote, collateral = _vector("phala-tdx10-2025-06")
    when = VECTORS["phala-tdx10-2025-06"][0]
    accepted = []
    for i in range(len(quote)):
        copy = bytearray(quote)
        copy[i] ^= 0x01
        try:
            verify_tdx_quote(bytes(copy), collateral, now=when)
        except AttestationError:
            continue
        accepted.append(i)
    assert min(accepted) >= 632  # the header and the whole TD report are signed
    assert set(accepted) <= _pem_lines_and_root(quote)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_quotes_and_collateral(data) -> None:
    quote, collateral = _vector(data.draw(st.sampled_from(sorted(VECTORS))))
    how = data.draw(st.sampled_from(["flip", "cut", "junk", "collateral"]))
    if how == "flip":
        at = data.draw(st.integers(0, len(quote) - 1))
        quote = quote[:at] + bytes([quote[at] ^ data.draw(st.integers(1, 255))]) + quote[at + 1 :]
    elif how == "cut":
        quote = quote[: data.draw(st.integers(0, len(quote) - 1))]
    elif how == "junk":
        quote = b"\x04\x00\x02\x00\x81\x00\x00\x00" + data.draw(st.binary(max_size=6000))
    else:
        fields = json.loads(collateral)
        key = data.draw(st.sampled_from(sorted(fields)))
        text = fields[key]
        at = data.draw(st.integers(0, max(0, len(text) - 1)))
        fields[key] = text[:at] + data.draw(st.text(max_size=4)) + text[at + 1 :]
        collateral = json.dumps(fields)
    try:
        verify_tdx_quote(quote, collateral, now=dt.datetime(2026, 10, 9, tzinfo=dt.UTC))
    except AttestationError:
        return
