"""serdab.proc: start, readiness, log tail and stop of real child processes."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from serdab import proc
from serdab.errors import ReplicaError
from serdab.proc import ReadyFile


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_ready_file_gives_the_childs_info_and_stop_ends_it(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    code = f"import json,os,time; open({str(ready)!r},'w').write(json.dumps({{'pid': os.getpid()}})); time.sleep(60)"
    child = proc.start(_python(code), name="sleeper", log_path=tmp_path / "child.log")
    info = child.wait_ready(ReadyFile(ready), 20)
    assert info == {"pid": child.pid} and child.alive()
    child.stop()
    assert not child.alive() and child.returncode is not None
    child.stop()  # twice is fine


def test_a_child_that_exits_first_is_reported_with_its_last_log_line(tmp_path: Path) -> None:
    code = "import sys; print('loading'); print('cannot open model.onnx', file=sys.stderr); sys.exit(3)"
    child = proc.start(_python(code), name="public replica", log_path=tmp_path / "child.log")
    with pytest.raises(ReplicaError, match=r"public replica exited with code 3 before it was ready: cannot open"):
        child.wait_ready(ReadyFile(tmp_path / "never"), 20, ReplicaError)
    assert child.log_tail(2) == "loading | cannot open model.onnx"


def test_not_ready_in_time_stops_the_child(tmp_path: Path) -> None:
    child = proc.start(_python("import time; time.sleep(60)"), name="slow one")
    with pytest.raises(ReplicaError, match="slow one not ready after 1 s"):
        child.wait_ready(ReadyFile(tmp_path / "never"), 1, ReplicaError)
    assert not child.alive()


def test_stop_kills_a_child_that_ignores_sigterm_and_its_own_children(tmp_path: Path) -> None:
    grandchild_pid = tmp_path / "grandchild.pid"
    code = (
        "import signal, subprocess, sys, time, pathlib\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"pathlib.Path({str(grandchild_pid)!r}).write_text(str(g.pid))\n"
        "time.sleep(60)\n"
    )
    child = proc.start(_python(code), name="stubborn")
    deadline = time.monotonic() + 20
    while not grandchild_pid.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(grandchild_pid.read_text())
    started = time.monotonic()
    child.stop(timeout_s=1)
    assert time.monotonic() - started < 5 and not child.alive()
    time.sleep(0.2)
    assert not _running(pid)  # the whole process group went


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan killed here may wait for a reaper that never comes)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_a_missing_program_is_the_callers_error() -> None:
    with pytest.raises(ReplicaError, match="cannot start ghost"):
        proc.start(["/nonexistent/program"], name="ghost", error=ReplicaError)
