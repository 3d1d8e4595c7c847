"""`serdab serve` as a user runs it (its own process, stopped by SIGTERM), and `infer`, `load`, `stress` against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from serdab.cli.app import main


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    work = tmp_path_factory.mktemp("serve")
    trust = work / "serve-trust.json"
    log = open(work / "serve.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serdab",
            "serve",
            "lenet5",
            "--secure",
            "1",
            "--public",
            "1",
            "--port",
            "0",
            "--trust-file",
            str(trust),
        ],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not (work / "serve-trust.admin-token").exists():
        assert process.poll() is None, (work / "serve.log").read_text()
        assert time.monotonic() < deadline, "serdab serve did not start"
        time.sleep(0.1)
    yield json.loads(trust.read_text())["gateway"], trust, process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    log.close()


def test_infer_public_and_secure(gateway, capsys):
    url, trust, _ = gateway
    assert main(["infer", url, "synthetic:2"]) == 0
    assert "public predictions" in capsys.readouterr().out
    assert main(["infer", url, "synthetic:1", "--secure", "--trust", str(trust)]) == 0
    out = capsys.readouterr().out
    assert "secure (enclave) predictions" in out and "attested enclave sim-" in out


def test_load_writes_json_and_png(gateway, tmp_path, capsys):
    url, trust, _ = gateway
    out = tmp_path / "load.json"
    code = main(
        [
            "load",
            url,
            "--threads",
            "2",
            "--requests",
            "3",
            "--secure-fraction",
            "0.5",
            "--trust",
            str(trust),
            "--json",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["summary"]["all"]["requests"] == 6 and result["summary"]["all"]["errors"] == 0
    assert out.with_suffix(".png").stat().st_size > 0
    assert "throughput" in capsys.readouterr().out


def test_stress_starts_and_stops_interference(gateway, capsys):
    url, trust, _ = gateway
    token = trust.with_name("serve-trust.admin-token")
    assert main(["stress", url, "--host", "h1", "--epc", "64MiB", "--token-file", str(token)]) == 0
    name = capsys.readouterr().out.split()[1].rstrip(":")
    assert main(["stress", url, "--stop", name, "--token-file", str(token)]) == 0
    assert main(["stress", url, "--host", "h9", "--token-file", str(token)]) == 2
    assert "no enclave replica runs on host 'h9'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["serve", "lenet5", "--secure", "0", "--public", "0"], 2, "serve at least one replica"),
        (["serve", "lenet5", "--balancer", "fastest"], 2, "unknown balancer 'fastest'"),
        (["serve", "lenet5", "--autoscale", "3:1"], 2, "MIN <= MAX"),
        (["serve", "lenet5", "--engine", "ray", "--grpc"], 2, "--grpc is the gateway engine's; --engine ray cannot"),
        (["serve", "lenet5", "--address", "auto"], 2, "--address is the ray engine's; --engine gateway cannot"),
        (["infer", "http://127.0.0.1:9", "synthetic:1"], 4, "no public replica answered"),
        (["infer", "http://127.0.0.1:9", "nothing.png"], 2, "not an image file"),
        (["load", "http://127.0.0.1:9"], 2, "no Serdab gateway answers"),
        (["load", "http://127.0.0.1:9", "--secure-fraction", "1"], 2, "--trust"),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(argv, code, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_secure_infer_without_a_trust_statement_is_refused(gateway, capsys):
    url, _, _ = gateway
    assert main(["infer", url, "synthetic:1", "--secure"]) == 3
    assert "trust statement" in capsys.readouterr().err


def _raw(url: str, request: bytes, timeout_s: float = 10.0, wait_interim: bool = False) -> bytes:
    """One HTTP/1.1 exchange on a plain socket, as curl would do it (Connection: close)."""
    import socket
    import time
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s) as sock:
        head, _, body = request.partition(b"\r\n\r\n")
        sock.sendall(head + b"\r\n\r\n")
        received = b""
        if wait_interim:  # curl waits for 100 Continue (up to 1 s) before it sends the body
            deadline = time.monotonic() + 5
            while b"\r\n\r\n" not in received and time.monotonic() < deadline:
                received += sock.recv(65536)
        sock.sendall(body)
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_the_public_path_speaks_http_as_curl_does(gateway):
    """Expect: 100-continue, HEAD, percent-encoded paths and single Date/Server headers, on raw sockets."""
    import json as _json
    import time

    import numpy as np

    url, _, _ = gateway
    host = url.split("//")[1].encode()
    meta = _json.loads(
        _raw(url, b"GET /v2/models/lenet5 HTTP/1.1\r\nhost: " + host + b"\r\nconnection: close\r\n\r\n").split(
            b"\r\n\r\n", 1
        )[1]
    )
    tensor = meta["inputs"][0]
    shape = [1 if d < 0 else d for d in tensor["shape"]]
    body = _json.dumps(
        {
            "inputs": [
                {
                    "name": tensor["name"],
                    "shape": shape,
                    "datatype": "FP32",
                    "data": np.zeros(shape).reshape(-1).tolist(),
                }
            ]
        }
    ).encode()
    started = time.monotonic()
    answer = _raw(
        url,
        b"POST /v2/models/lenet5/infer HTTP/1.1\r\nhost: " + host + b"\r\ncontent-type: application/json\r\n"
        b"expect: 100-continue\r\nconnection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body,
        wait_interim=True,
    )
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 "), answer[:200]
    assert time.monotonic() - started < 5
    final = answer.split(b"\r\n\r\n", 1)[1]
    head = final.split(b"\r\n\r\n", 1)[0].lower().split(b"\r\n")
    assert sum(line.startswith(b"date:") for line in head) == 1
    assert sum(line.startswith(b"server:") for line in head) <= 1

    started = time.monotonic()
    answer = _raw(url, b"HEAD /v2/models/lenet5 HTTP/1.1\r\nhost: " + host + b"\r\nconnection: close\r\n\r\n")
    assert time.monotonic() - started < 5 and answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    head, _, rest = answer.partition(b"\r\n\r\n")
    lengths = [int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
    assert rest == b"" and len(lengths) == 1 and lengths[0] > 0  # the GET's length, no body

    answer = _raw(url, b"GET /v2/models/my%20model HTTP/1.1\r\nhost: " + host + b"\r\nconnection: close\r\n\r\n")
    status, rest = int(answer.split(b" ", 2)[1]), answer.split(b"\r\n\r\n", 1)[1]
    assert status == 404 and "my model" in _json.loads(rest)["error"]
    again = _raw(url, b"GET /v2/models/lenet5/ready HTTP/1.1\r\nhost: " + host + b"\r\nconnection: close\r\n\r\n")
    assert again.startswith(b"HTTP/1.1 200 ")  # the HEAD did not make the replica look unhealthy


def test_the_admin_api_answers_4xx_to_any_body(gateway):
    """Nested, out-of-range, wrong-typed or huge bodies: one JSON error line, never a 500."""
    url, trust, _ = gateway
    import httpx

    token = trust.with_name("serve-trust.admin-token").read_text().strip()
    auth = {"authorization": f"Bearer {token}"}
    bodies = [
        b"[" * 100_000 + b"]" * 100_000,  # nested past Python's recursion limit
        b'{"host": "h1", "epc_bytes": 1e400}',  # a number out of range
        b'{"host": "h1", "epc_bytes": [[1]]}',
        b'{"host": "h1", "epc_bytes": 99999999999999999999999999999999999999}',
        b'{"host": "h1"}',
        b"not json",
        b'{"a": "' + b"x" * 200_000 + b'"}',  # over the admin body limit
    ]
    for body in bodies:
        answer = httpx.post(f"{url}/v1/admin/stress", headers=auth, content=body, timeout=30)
        assert 400 <= answer.status_code < 500, (body[:40], answer.status_code, answer.text[:200])
        assert set(answer.json()) == {"error"}


def test_sigterm_stops_every_process_it_started(gateway):
    url, trust, process = gateway
    import httpx

    token = trust.with_name("serve-trust.admin-token").read_text().strip()
    replicas = httpx.post(f"{url}/v1/admin/replicas", headers={"authorization": f"Bearer {token}"}).json()["replicas"]
    pids = [r["pid"] for r in replicas]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
