"""Serving on Ray Serve: each kind routed right, secure requests sealed end to end, the EPC-aware router
shedding a paging host, and the autoscaling rule scaling up and down. Needs the ray extra."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from serdab.errors import AttestationError, ServeError
from serdab.serve.client import Client
from serdab.testing import RecordingProxy
from tests.conftest import RAY_INGRESS, chain_of

pytestmark = pytest.mark.ray

X = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _service(ray_cluster, *, look_back_s: float = 30.0, stress_dir: str | None = None, **options):
    from serdab.choices import ServeEngine
    from serdab.serve.config import RayOptions, ServeConfig
    from serdab.serve.engine import make_engine

    ray = RayOptions(look_back_s=look_back_s, stress_dir=stress_dir)
    service = make_engine(ServeConfig("lenet5", port=_port(), engine=ServeEngine.RAY, ray=ray, **options)).start()
    if service.ingress != RAY_INGRESS:
        service.stop()
        pytest.fail(f"auto took the {service.ingress} ingress on a cluster started with {RAY_INGRESS}")
    return service


def test_each_kind_is_routed_right_and_secure_requests_travel_sealed(ray_cluster) -> None:
    from serdab.onnxrt import make_session

    chain = chain_of("lenet5")
    expected = make_session(chain.model).run(None, {chain.input_name: X})[0]
    marker = np.full((1, 1, 28, 28), 1.2345678, dtype=np.float32)  # a recognisable pattern
    service = _service(ray_cluster, public=1, secure=1, balancer="sed")
    proxy = RecordingProxy(("127.0.0.1", service.port))  # what Ray's front door and network could read
    try:
        with Client(proxy.url, trust=service.trust()) as client:
            public = client.infer(X, secure=False)
            assert client.served_by and client.served_by.startswith("public-")
            secure = client.infer(X, secure=True)
            assert client.served_by and client.served_by.startswith("enclave-")
            assert client.attested and client.attested["identity"].startswith("sim-")
            answer = client.infer(marker, secure=True)
        assert float(np.abs(public - expected).max()) <= 1e-5 and float(np.abs(secure - expected).max()) <= 1e-5
        seen = proxy.seen()
        assert marker.tobytes()[:64] not in seen and answer.tobytes()[:16] not in seen
        assert b"lenet5/infer" in seen  # the public request did pass in plaintext: the recording works
        with httpx.Client(base_url=service.url) as http:  # plaintext secure routes are refused, not forwarded
            assert http.post("/predict-secure", json={"images": []}).status_code == 403
            assert http.post("/secure/v2/models/lenet5/infer", json={"inputs": []}).status_code == 403
            assert (
                http.post(
                    "/secure/v1/sealed", content=b"junk", headers={"content-type": "application/octet-stream"}
                ).status_code
                == 400
            )
        wrong = service.trust() | {"replica_pcrs": {"0": "00" * 48, "1": "00" * 48, "2": "00" * 48}}
        with Client(service.url, trust=wrong) as client, pytest.raises(AttestationError, match="other enclaves"):
            client.infer(X, secure=True)
    finally:
        proxy.close()
        service.stop()


def test_sealed_sessions_are_attested_with_snp_format_evidence(ray_cluster, monkeypatch) -> None:
    from serdab.tee.evidence import EVIDENCE_ENV

    monkeypatch.setenv(
        EVIDENCE_ENV, "amd-sev-snp"
    )  # the owner's key service and, via the trust statement, the replicas
    service = _service(ray_cluster, public=0, secure=1)
    try:
        trust = service.trust()
        assert trust["evidence"] == "amd-sev-snp"
        monkeypatch.setenv(EVIDENCE_ENV, "aws-nitro")  # the client reads the kind from the trust statement
        with Client(service.url, trust=trust) as client:
            secure = client.infer(X, secure=True)
            assert client.attested and (client.attested["kind"], client.attested["root"]) == (
                "amd-sev-snp",
                "simulated ARK",
            )
        assert secure.shape == (1, 10)
        with Client(service.url, trust={**trust, "evidence": "aws-nitro"}) as client, pytest.raises(AttestationError):
            client.infer(X, secure=True)
    finally:
        service.stop()


def test_the_epc_aware_router_sheds_the_host_that_pages(ray_cluster, tmp_path: Path) -> None:
    stress = tmp_path / "stress"
    service = _service(
        ray_cluster,
        public=0,
        secure=2,
        balancer="epc-aware:2000:0.7:3",
        monitor_interval_s=0.25,
        stress_dir=str(stress),
    )
    clients = [Client(service.url, trust=service.trust()) for _ in range(3)]  # connections land on either proxy
    try:

        def hosts(n: int) -> set[str]:
            served = set()
            for i in range(n):
                client = clients[i % len(clients)]
                client.infer(X, secure=True)
                served.add(str(client.served_by).split("-")[1])
            return served

        deadline = time.monotonic() + 20  # SED spreads equal replicas (once the routers know both)
        while (served := hosts(6)) != {"h1", "h2"}:
            assert time.monotonic() < deadline, f"only {served} served"
        (stress / "h1").write_text(str(400 * 2**20))  # an enclave takes 400 MiB of h1's 93 MiB EPC
        deadline = time.monotonic() + 20  # Ray Serve forwards routing stats every second or two
        while hosts(6) != {"h2"}:
            assert time.monotonic() < deadline, "h1 was never shed while it paged"
        # SED alone avoids h1 while its slow request is in flight; wait until its weight 0 reached every router
        time.sleep(2.0)
        served = hosts(18)  # every router sheds it, and for as long as the paging lasts
        assert served == {"h2"}, f"{served} served while h1 paged"
        (stress / "h1").write_text("0")  # the interference ends: h1 takes work again
        deadline = time.monotonic() + 20
        while "h1" not in hosts(6):
            assert time.monotonic() < deadline, "h1 never came back after the interference ended"
    finally:
        for client in clients:
            client.close()
        stopping = time.monotonic()
        service.stop()
    # every deployment, the front that answers "/" without public replicas too, drains in seconds (not Ray's 30 s)
    assert time.monotonic() - stopping < 20, f"stopping took {time.monotonic() - stopping:.0f} s"


def test_the_autoscaling_rule_scales_ray_serve_up_and_down(ray_cluster) -> None:
    from serdab.serve.autoscale import AutoscaleConfig

    scaling = {"public": AutoscaleConfig(min_replicas=1, max_replicas=2, cooldown_s=1.0)}
    service = _service(ray_cluster, public=1, secure=0, autoscale=scaling, look_back_s=1.0)
    stop = threading.Event()
    errors: list[Exception] = []

    def load() -> None:
        with Client(service.url) as client:
            while not stop.is_set():
                try:
                    client.infer(np.random.rand(8, 1, 28, 28).astype(np.float32), secure=False)
                except (ServeError, httpx.HTTPError) as exc:
                    errors.append(exc)

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    try:
        assert service.replica_counts()["public"] == 1
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while service.replica_counts()["public"] < 2:
            assert time.monotonic() < deadline, "never scaled up under load"
            time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(timeout=10)
        deadline = time.monotonic() + 60
        while service.replica_counts()["public"] > 1:
            assert time.monotonic() < deadline, "never scaled back down once idle"
            time.sleep(0.5)
        assert not errors, errors[:3]
    finally:
        stop.set()
        service.stop()


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def test_serve_engine_ray_as_a_process_with_haproxy_ingress_and_sigterm_stops_everything(tmp_path: Path) -> None:
    """`serdab serve --engine ray` in its own Ray: HAProxy by default there (a cluster-wide choice)."""
    import json
    import os
    import signal
    import subprocess
    import sys

    pytest.importorskip("ray", reason="the ray extra is not installed")
    port, trust_file = _port(), tmp_path / "trust.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serdab",
            "serve",
            "lenet5",
            "--engine",
            "ray",
            "--secure",
            "1",
            "--public",
            "1",
            "--port",
            str(port),
            "--trust-file",
            str(trust_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    started: set[int] = set()
    try:
        lines = []
        deadline = time.monotonic() + 180
        while not any("Ctrl-C" in line for line in lines):
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)[-2000:]
            lines.append(process.stdout.readline())  # type: ignore[union-attr]
        started = _descendants(process.pid)
        assert any("haproxy ingress" in line for line in lines), "".join(lines)
        with Client(f"http://127.0.0.1:{port}", trust=json.loads(trust_file.read_text())) as client:
            public = client.infer(X, secure=False)
            secure = client.infer(X, secure=True)
            assert client.served_by and client.served_by.startswith("enclave-")
        assert float(np.abs(public - secure).max()) <= 1e-5
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
            process.stdout.close()  # type: ignore[union-attr]
    time.sleep(2)
    left = [p for p in started if Path(f"/proc/{p}").exists() and "zombie" not in Path(f"/proc/{p}/status").read_text()]
    names = {p: Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:120] for p in left}
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert process.returncode == 0 and not left, f"exit {process.returncode}, left running: {names}"
