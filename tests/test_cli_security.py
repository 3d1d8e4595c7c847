from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serdab.cli.app import main
from serdab.kms.apps import tls_echo


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_build_image_and_measure(tmp_path, capsys) -> None:
    image = tmp_path / "echo"
    assert main(["build-image", tls_echo.__file__, "--out", str(image), "--entrypoint", "tls_echo:main"]) == 0
    assert main(["measure", str(image), "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    pcrs = json.loads((tmp_path / "m.json").read_text())["pcrs"]
    assert pcrs["2"] in out.replace("\n", "").replace("│", "").replace(" ", "")
    assert f"--pcr 2={pcrs['2']}" in out.replace("\n", "")
    assert main(["measure", str(tmp_path)]) == 2
    assert "is not an enclave image: no enclave.json" in _error_line(capsys)
    assert main(["build-image", tls_echo.__file__, "--out", str(image), "--entrypoint", "tls_echo:main"]) == 2
    assert "exists; choose a new directory" in _error_line(capsys)


def test_attest_unreachable_and_bad_pcr_option(capsys) -> None:
    assert main(["attest", "https://127.0.0.1:1"]) == 4  # unavailable: nothing answers there
    assert "no KMS at https://127.0.0.1:1" in _error_line(capsys)
    assert main(["attest", "https://127.0.0.1:1", "--pcr", "2=xyz"]) == 2
    assert "must look like 2=<96 hex digits>" in _error_line(capsys)


@pytest.fixture
def kms_process(tmp_path):
    env = {**os.environ, "SERDAB_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    process = subprocess.Popen(
        [sys.executable, "-m", "serdab", "kms", "start", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if line.startswith("verify it:") or not line:
            break
    text = "".join(lines)
    url = re.search(r"https://127\.0\.0\.1:\d+", text)
    pid = re.search(r"\(pid (\d+)", text)
    assert url and pid, text
    yield url.group(0), int(pid.group(1)), text, env
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    rest = process.stdout.read()
    process.stdout.close()
    assert "key service stopped" in rest
    with pytest.raises(ProcessLookupError):  # stopping the KMS stops its enclave
        os.kill(int(pid.group(1)), 0)


def test_kms_start_attest_register_stop(kms_process, tmp_path, monkeypatch, capsys) -> None:
    url, enclave_pid, banner, env = kms_process
    monkeypatch.setenv("SERDAB_HOME", env["SERDAB_HOME"])
    assert "NOT A TEE" in banner and "storage key" in banner
    pcr2 = re.search(r"PCR2\s+│\s+([0-9a-f]{96})", banner).group(1)
    assert main(["attest", url]) == 3  # a security refusal: simulated root not allowed
    assert "simulated root" in _error_line(capsys)
    assert main(["attest", url, "--allow-simulated", "--pcr", f"2={pcr2}", "--nonce", "ab" * 16]) == 0
    out = capsys.readouterr().out
    assert "verified (aws-nitro, simulated)" in out and "ab" * 16 in out
    assert main(["attest", url, "--allow-simulated", "--pcr", f"2={'00' * 48}"]) == 3  # refused: PCR mismatch
    assert "PCR2 is" in _error_line(capsys)
    image = tmp_path / "echo"
    main(["build-image", tls_echo.__file__, "--out", str(image), "--entrypoint", "tls_echo:main"])
    capsys.readouterr()
    assert main(["kms", "register", "echo", "--url", url, "--image", str(image), "--allow-simulated"]) == 0
    assert "service echo registered (PKI generation 1)" in capsys.readouterr().out
    assert main(["kms", "register", "x", "--url", url, "--allow-simulated"]) == 2
    assert "a policy with no measurements would release keys to any enclave" in _error_line(capsys)
    # a policy for a real TD, named by its measurements, at a key service attesting Nitro-format
    td = ["kms", "register", "td", "--url", url, "--allow-simulated", "--evidence", "intel-tdx"]
    assert main([*td, "--measurement", f"MRTD={'ab' * 48}", "--measurement", f"RTMR0={'cd' * 48}"]) == 0
    assert "service td registered" in capsys.readouterr().out
    assert main([*td, "--measurement", "MRTD=xyz"]) == 2
    assert "must look like MRTD=<hex>" in _error_line(capsys)
    assert main([*td, "--measurement", f"MRTD={'ab' * 48}", "--pcr", f"2={'00' * 48}"]) == 2
    assert "one of --image, --pcr or --measurement" in _error_line(capsys)
    assert Path(env["SERDAB_HOME"], "kms", "admin.token").stat().st_mode & 0o777 == 0o600
    os.kill(enclave_pid, 0)  # the enclave process is alive while the KMS serves
