"""Child processes, one way: start, alive, wait until ready, last log lines, stop by PID.

Every process Serdab starts and supervises (enclave processes of the simulated TEE, untrusted stage
workers, public serving replicas, ``serdab serve`` under a benchmark) goes through here, so a fix to
how children are stopped or how their failures are reported reaches every caller. Readiness is one
interface whatever the signal: a file the child writes (``ReadyFile``) or an event the parent's side
of a channel sets (``ReadyEvent``, the simulated NSM's ``ready`` call). Children run in their own
session (process group), so a stop that has to SIGKILL takes their own children with them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from serdab.errors import SerdabError

__all__ = ["POLL_S", "STOP_TIMEOUT_S", "Child", "ReadyEvent", "ReadyFile", "Readiness", "log_tail", "start"]

STOP_TIMEOUT_S = 10.0  # SIGTERM, then SIGKILL of the child's process group after this long
POLL_S = 0.02  # how often a wait looks at the child and its readiness signal


class Readiness(Protocol):
    def poll(self) -> dict[str, Any] | None:
        """The child's ready info (e.g. its port) once it is ready; None while it is not yet."""


@dataclass(frozen=True)
class ReadyFile:
    """Ready once the child has written this JSON file (it writes a temp file and renames it)."""

    path: Path

    def poll(self) -> dict[str, Any] | None:
        try:
            info = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else {}


@dataclass(frozen=True)
class ReadyEvent:
    """Ready once the parent's side of a channel to the child sets ``event``; ``info`` says what it sent."""

    event: threading.Event
    info: Callable[[], dict[str, Any]]

    def poll(self) -> dict[str, Any] | None:
        return dict(self.info()) if self.event.is_set() else None


def log_tail(path: Path | None, lines: int = 1) -> str:
    """The last ``lines`` non-blank lines of a log, joined by " | " ("" when there is none)."""
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) if lines > 0 else ""


@dataclass
class Child:
    """A started process and where its output goes."""

    name: str  # says what it is in messages: "public replica public-1", "enclave sim-host-enc0003"
    process: subprocess.Popen
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 1) -> str:
        return log_tail(self.log_path, lines)

    def exit_message(self, what: str = "ready") -> str:
        """'NAME exited with code N before it was WHAT: last log line'."""
        tail = self.log_tail()
        return f"{self.name} exited with code {self.returncode} before it was {what}{': ' + tail if tail else ''}"

    def wait_ready(
        self, readiness: Readiness, timeout_s: float, error: type[SerdabError] = SerdabError
    ) -> dict[str, Any]:
        """Block until ``readiness`` reports; its info. Raises ``error`` (with the log's last line) when
        the child exits first, and stops the child and raises when it is not ready within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            info = readiness.poll()
            if info is not None:
                return info
            if not self.alive():
                raise error(self.exit_message())
            if time.monotonic() > deadline:
                self.stop()
                raise error(f"{self.name} not ready after {timeout_s:.0f} s")
            time.sleep(POLL_S)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL of its process group after ``timeout_s``; safe to call twice or on a dead child."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait()


def start(
    argv: Sequence[str],
    *,
    name: str,
    log_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    error: type[SerdabError] = SerdabError,
) -> Child:
    """Start ``argv`` in its own session with stdout and stderr appended to ``log_path`` (discarded
    without one); ``env`` is added to this process's environment. Raises ``error`` when it cannot start."""
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        process = subprocess.Popen(
            list(argv),
            env={**os.environ, **(env or {})},
            cwd=cwd,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        raise error(f"cannot start {name}: {exc}") from None
    finally:
        if log_path is not None:
            out.close()  # type: ignore[union-attr]
    return Child(name, process, log_path)
