"""Faults while streaming: the fault budget, the source enclave, the key service, kills during re-deploys.

Every test kills real processes by PID (SIGKILL) at chosen moments of a real run and checks that
every frame is answered exactly once with the labels of a fault-free run.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from serdab.cluster import load_cluster
from serdab.errors import FaultBudgetError
from serdab.onnxrt import make_session
from serdab.profile import cached_profile
from serdab.runtime.deployment import Deployment
from serdab.runtime.faults import FaultBudget
from serdab.runtime.frames import open_source
from serdab.runtime.manager import ApplicationManager, RunOptions
from tests.conftest import chain_of

SHAPE = (1, 1, 28, 28)
PLACEMENT = "tee1[0-2] -> e1[3-11]"


def _manager(**options) -> ApplicationManager:
    chain = chain_of("lenet5")
    profile, _ = cached_profile(chain, "lenet5", repeat=3, warmup=1)
    defaults = {"chunk": 30, "placement": PLACEMENT, "dilation": 300.0, "repartition": None, "fault_backoff_s": 0.05}
    return ApplicationManager(chain, "lenet5", profile, load_cluster("paper"), RunOptions(**(defaults | options)))


def _labels(n: int) -> list[list[int]]:
    """The whole model's top-5 classes on each frame: what a fault-free run answers."""
    chain = chain_of("lenet5")
    whole = make_session(chain.model)
    out = []
    for frame in open_source(f"synthetic:{n}", SHAPE).frames():
        logits = whole.run(None, {chain.input_name: frame.tensor})[0].reshape(-1)
        out.append([int(i) for i in np.argsort(-logits)[:5]])
    return out


def _kill(deployment: Deployment, device: str) -> int | None:
    worker = next((w for w in deployment.workers if w.device == device), None)
    if worker is None or worker.handle is None or not worker.handle.pid:
        return None
    os.kill(worker.handle.pid, signal.SIGKILL)
    return worker.handle.pid


def _in_background(step: Callable[[], bool]) -> threading.Thread:
    """Call ``step`` every 10 ms until it says it is done (or 60 s pass)."""

    def loop() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not step():
            time.sleep(0.01)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def _check_every_frame_once(lines: list[dict], n: int) -> None:
    assert [line["frame"] for line in lines] == list(range(n))
    assert [[c["class"] for c in line["top5"]] for line in lines] == _labels(n)


def test_the_source_enclave_killed_three_times_in_one_chunk_is_restarted_each_time() -> None:
    manager = _manager()
    killed: list[Deployment] = []

    def step() -> bool:
        d = manager.deployment
        if d is not None and d not in [k for k in killed] and d.frames_sent >= 4 and _kill(d, "tee1"):
            killed.append(d)
        return len(killed) == 3

    thread = _in_background(step)
    lines: list[dict] = []
    summary = manager.run(open_source("synthetic:30", SHAPE).frames(), on_result=lines.append)
    thread.join()
    assert len(killed) == 3
    _check_every_frame_once(lines, 30)
    assert [f["device"] for f in summary.faults] == ["tee1"] * 3
    assert all(f["action"].startswith("restarted the workers") for f in summary.faults)
    assert summary.placements == [PLACEMENT] and summary.answered == 30


def test_a_kill_during_the_re_deploy_is_charged_to_the_device_that_failed() -> None:
    manager = _manager()
    first: list[Deployment] = []

    def step() -> bool:
        d = manager.deployment
        if d is None:
            return False
        if not first:
            if d.frames_sent >= 4 and _kill(d, "e1"):
                first.append(d)
            return False
        # the next deployment, while it sets up (no probe latency yet): its new source worker dies
        return d is not first[0] and d.latency_s is None and _kill(d, "tee1") is not None

    thread = _in_background(step)
    lines: list[dict] = []
    summary = manager.run(open_source("synthetic:30", SHAPE).frames(), on_result=lines.append)
    thread.join()
    _check_every_frame_once(lines, 30)
    assert [f["device"] for f in summary.faults] == ["e1", "tee1"]
    assert "e1" in summary.placements[-1]  # the healthy device was not given up


def test_the_key_service_killed_then_an_enclave_worker_the_re_deploy_restarts_it() -> None:
    manager = _manager()
    done: list[str] = []

    def step() -> bool:
        d = manager.deployment
        if d is None or d.frames_sent < 4:
            return False
        if not done:
            kms = manager.key_service
            assert kms is not None
            os.kill(kms.pid, signal.SIGKILL)
            done.append("kms")
            return False
        time.sleep(0.3)
        if _kill(d, "tee1"):
            done.append("tee1")
        return True

    thread = _in_background(step)
    lines: list[dict] = []
    summary = manager.run(open_source("synthetic:30", SHAPE).frames(), on_result=lines.append)
    thread.join()
    assert done == ["kms", "tee1"]
    _check_every_frame_once(lines, 30)
    assert [f["device"] for f in summary.faults] == ["tee1", "key service"]


def test_a_spent_budget_on_the_source_stops_the_run_with_every_answer_handed_on() -> None:
    manager = _manager(fault_budget=1, chunk=40)
    killed: list[Deployment] = []
    lines: list[dict] = []

    def step() -> bool:
        d = manager.deployment
        if d is not None and d not in killed and len(lines) >= 5 * (len(killed) + 1) and _kill(d, "tee1"):
            killed.append(d)
        return len(killed) == 2

    thread = _in_background(step)
    with pytest.raises(FaultBudgetError, match="tee1 failed 2 times .* source where frames arrive"):
        manager.run(open_source("synthetic:40", SHAPE).frames(), on_result=lines.append)
    thread.join()
    answered = [line["frame"] for line in lines]
    assert len(answered) >= 10 and len(set(answered)) == len(answered) and len(answered) < 40
    assert manager.summary.answered == len(answered)


def test_the_fault_budget_counts_within_its_window_and_backs_off() -> None:
    now = [0.0]
    budget = FaultBudget(faults=2, window_s=10.0, backoff_s=0.5, max_backoff_s=1.5, clock=lambda: now[0])
    assert budget.charge("tee1") == 1 and budget.backoff("tee1") == 0.5 and not budget.spent("tee1")
    now[0] = 1.0
    assert budget.charge("tee1") == 2 and budget.backoff("tee1") == 1.0 and not budget.spent("tee1")
    now[0] = 2.0
    assert budget.charge("tee1") == 3 and budget.spent("tee1") and budget.backoff("tee1") == 1.5
    now[0] = 20.0  # the old faults left the window
    assert budget.charge("tee1") == 1 and not budget.spent("tee1") and not budget.spent("e1")


def test_a_stage_that_cannot_compute_reports_at_once_and_stops_its_heartbeat() -> None:
    """The compute loop dies on a frame: the manager hears which device and frame, and no heartbeat
    goes on saying the worker is fine (it used to wait out the 600 s chunk timeout)."""
    from serdab.framing import encode_payload, new_records
    from serdab.runtime.engine import _Worker
    from serdab.runtime.protocol import ErrorReport, WorkerConfig

    sent: list[object] = []

    class Control:
        def send(self, message: object) -> None:
            sent.append(message)

    class Broken:
        def run(self, *_args: object) -> None:
            raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions")

    config = WorkerConfig(
        "e1-s1-e1", "e1", 1, "stage1.onnx", native=True, dilation=1.0, compute_emulated_s=0.0, memory_bytes=0
    )
    worker = _Worker(Control(), config, None, None)  # type: ignore[arg-type]
    worker.session, worker.input_name = Broken(), "x"
    worker.inputs.put((7, encode_payload([np.zeros((1, 3), np.float32)], new_records()), time.monotonic()))
    worker.compute()  # returns: the loop ended
    assert [type(m) for m in sent] == [ErrorReport]
    assert "e1: stage 1 failed on frame 7: RuntimeError" in sent[0].message  # type: ignore[attr-defined]
    worker.heartbeat()  # returns at once instead of beating forever
    assert len(sent) == 1


def test_frame_ranges_say_which_frames_in_one_line() -> None:
    from serdab.runtime.manager import frame_ranges

    assert frame_ranges([]) == ""
    assert frame_ranges([3, 0, 1, 2, 7, 9, 10, 11]) == "0-3, 7, 9-11"
    assert frame_ranges([5]) == "5"
