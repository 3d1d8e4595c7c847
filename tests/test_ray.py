"""Ray as the engine: actor faults, placement by device resource, and the KubeRay manifests.

The stage-equality, exactly-once, tamper and worker-kill tests run over both executors in
tests/test_runtime.py (the ``executor`` fixture); here is what only Ray has.
"""

from __future__ import annotations

import threading
import time

import pytest

from serdab.cluster import load_cluster
from serdab.errors import WorkerError
from serdab.profile import cached_profile
from serdab.runtime.frames import open_source
from serdab.runtime.manager import ApplicationManager, RunOptions
from tests.conftest import chain_of

pytestmark = pytest.mark.ray


def _manager(executor, **options) -> ApplicationManager:
    chain = chain_of("lenet5")
    profile, _ = cached_profile(chain, "lenet5", repeat=3, warmup=1)
    return ApplicationManager(chain, "lenet5", profile, load_cluster("paper"), RunOptions(**options), executor=executor)


def test_killing_an_engine_actor_mid_stream_loses_no_frame(ray_cluster) -> None:
    import ray

    from serdab.runtime.ray_executor import RayExecutor

    executor = RayExecutor()
    manager = _manager(executor, chunk=10, placement="tee1[0-2] -> e1[3-11]", dilation=300.0)
    killed: list[str] = []

    def killer() -> None:
        while not killed:
            d = manager.deployment
            if d is not None and d.frames_sent >= 5:
                worker = next(w for w in d.workers if w.device == "e1")
                ray.kill(worker.handle.actor)  # the actor, not the worker process: Ray loses the engine
                killed.append(worker.id)
            time.sleep(0.01)

    threading.Thread(target=killer, daemon=True).start()
    lines: list[dict] = []
    summary = manager.run(open_source("synthetic:20", (1, 1, 28, 28)).frames(), on_result=lines.append)
    assert killed and [line["frame"] for line in lines] == list(range(20))
    assert [f["device"] for f in summary.faults] == ["e1"]
    assert ray.available_resources().get("serdab_device_e1") == pytest.approx(1.0)  # nothing left holding e1


def test_workers_land_on_the_node_offering_their_device(ray_cluster) -> None:
    import ray

    from serdab.runtime.ray_executor import RayExecutor

    executor = RayExecutor()
    manager = _manager(executor, chunk=4, placement="tee1[0-2] -> gpu2[3-11]", dilation=300.0)
    nodes: dict[str, str] = {}

    def record(_line: dict) -> None:
        d = manager.deployment
        for w in d.workers if d else []:
            nodes.setdefault(
                w.device, ray.get(w.handle.actor.__ray_call__.remote(lambda a: ray.get_runtime_context().get_node_id()))
            )

    manager.run(open_source("synthetic:4", (1, 1, 28, 28)).frames(), on_result=record)
    by_resource = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    assert "serdab_device_tee1" in by_resource[nodes["tee1"]]
    assert "serdab_device_gpu2" in by_resource[nodes["gpu2"]]
    assert nodes["tee1"] != nodes["gpu2"]


def test_a_device_no_node_offers_is_a_clear_error(ray_cluster, tmp_path) -> None:
    from serdab.runtime.ray_executor import RayExecutor

    path = tmp_path / "far.yaml"
    path.write_text(
        "source: tee1\ndevices:\n"
        "  - {name: tee1, kind: tee, trusted: true, host: h1, speed: 0.5, memory: 93MiB, paging_factor: 5.0}\n"
        "  - {name: faraway, kind: cpu, trusted: false, host: h9, speed: 1.0, memory: 8GiB}\n"
        "links:\n  - {a: h1, b: h9, bandwidth: 1Gbit, rtt: 1ms}\n"
    )
    chain = chain_of("lenet5")
    profile, _ = cached_profile(chain, "lenet5", repeat=3, warmup=1)
    options = RunOptions(chunk=4, placement="tee1[0-2] -> faraway[3-11]", dilation=300.0, fault_budget=0)
    manager = ApplicationManager(chain, "lenet5", profile, load_cluster(path), options, executor=RayExecutor())
    with pytest.raises(WorkerError, match="no Ray node offers serdab_device_faraway"):
        manager.run(open_source("synthetic:4", (1, 1, 28, 28)).frames())


def test_an_unreachable_or_malformed_ray_address_fails_in_seconds_with_one_line(clusters_dir) -> None:
    """`ray.init` retries an address nobody answers at for minutes; the CLI checks it first."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    commands = {
        f"127.0.0.1:{closed}": [
            "run",
            "lenet5",
            "--cluster",
            str(clusters_dir / "paper.yaml"),
            "--executor",
            "ray",
            "--input",
            "synthetic:2",
        ],
        f"ray://127.0.0.1:{closed}": ["serve", "lenet5", "--engine", "ray"],
        "nowhere": ["run", "lenet5", "--cluster", str(clusters_dir / "paper.yaml"), "--executor", "ray"],
    }
    for address, args in commands.items():
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "serdab", *args, "--address", address], capture_output=True, text=True, timeout=120
        )
        errors = [line for line in done.stderr.splitlines() if line.startswith("serdab: error:")]
        assert done.returncode == 2, (address, done.returncode, done.stderr[-1500:])
        assert len(errors) == 1 and ("no Ray cluster answers" in errors[0] or "a Ray address is" in errors[0])
        assert "Traceback" not in done.stderr and time.monotonic() - started < 60


@pytest.mark.ray_alone
def test_executor_ray_without_an_address_starts_a_local_ray_as_ray_init_does(clusters_dir, tmp_path) -> None:
    """No --address and no cluster running (`make test-ray` runs this in a session without the test
    cluster, which Ray would find by its processes): a local Ray is started, as `ray.init()` does,
    and the run goes through."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # Ray's sockets live under it: keep the path short
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": ray_tmp}
    out = tmp_path / "r.jsonl"
    args = ["run", "lenet5", "--cluster", str(clusters_dir / "paper.yaml"), "--executor", "ray"]
    args += ["--input", "synthetic:4", "--placement", "tee1[0-2] -> e1[3-11]", "--out", str(out)]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "serdab", *args], capture_output=True, text=True, timeout=300, env=env
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "workers on Ray (ray.init() default)" in " ".join(done.stdout.split())
    assert [json.loads(line)["frame"] for line in out.read_text().splitlines()] == [0, 1, 2, 3]
