"""The same flows on SEV-SNP-format evidence: a pipeline run whose stage enclaves and key service attest
with simulated SNP reports, and a secure serving request verified against SNP evidence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from serdab.cli.app import main
from serdab.errors import AttestationError
from serdab.serve.client import Client
from serdab.serve.config import ServeConfig
from serdab.serve.service import ModelService
from serdab.tee.evidence import EVIDENCE_ENV

X = np.random.default_rng(1).standard_normal((2, 1, 28, 28)).astype(np.float32)


def test_a_pipeline_runs_end_to_end_on_snp_format_evidence(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv(EVIDENCE_ENV, "aws-nitro")  # restored after the test (--evidence sets it)
    out, summary = tmp_path / "results.jsonl", tmp_path / "summary.json"
    args = [
        "run",
        "lenet5",
        "--cluster",
        "paper",
        "--input",
        "synthetic:6",
        "--chunk",
        "3",
        "--evidence",
        "amd-sev-snp",
    ]
    code = main([*args, "--out", str(out), "--json", str(summary)])
    assert code == 0, capsys.readouterr().err
    assert [json.loads(line)["frame"] for line in out.read_text().splitlines()] == list(range(6))
    attested = json.loads(summary.read_text())["attested"]
    assert attested and all(
        (e["kind"], e["root"], e["simulated"]) == ("amd-sev-snp", "simulated ARK", True) for e in attested.values()
    )
    assert all(set(e["measurements"]) == {"MEASUREMENT"} for e in attested.values())
    assert "amd-sev-snp evidence under the simulated ARK" in capsys.readouterr().out


def test_an_unknown_evidence_kind_is_a_usage_error(capsys) -> None:
    assert main(["run", "lenet5", "--cluster", "paper", "--evidence", "intel-sgx-epid"]) == 2
    assert "aws-nitro, amd-sev-snp" in capsys.readouterr().err


@pytest.fixture(scope="module")
def snp_service():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(EVIDENCE_ENV, "amd-sev-snp")
        service = ModelService(ServeConfig("lenet5", secure=1, public=1)).start()
        try:
            yield service
        finally:
            service.stop()


def test_a_secure_request_is_verified_against_snp_evidence(snp_service, monkeypatch) -> None:
    monkeypatch.setenv(EVIDENCE_ENV, "aws-nitro")  # the client reads the kind from the trust statement
    trust = snp_service.trust()
    assert trust["evidence"] == "amd-sev-snp" and "SIMULATED-NOT-A-TEE ARK" in _subjects(trust["simulated_root_pem"])
    with Client(snp_service.gateway.url, trust=trust) as client:
        secure = client.infer(X, secure=True)
        public = client.infer(X, secure=False)
        assert client.attested is not None
        assert (client.attested["kind"], client.attested["root"]) == ("amd-sev-snp", "simulated ARK")
    np.testing.assert_allclose(secure, public, rtol=1e-6, atol=1e-6)


def test_a_trust_statement_naming_another_kind_is_refused(snp_service) -> None:
    trust = {**snp_service.trust(), "evidence": "aws-nitro"}
    with Client(snp_service.gateway.url, trust=trust) as client, pytest.raises(AttestationError, match="amd-sev-snp"):
        client.infer(X, secure=True)


def _subjects(pem: str) -> str:
    from cryptography import x509

    return " ".join(c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(pem.encode()))
