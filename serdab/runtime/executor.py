"""Executors start and stop dataflow engines; the application manager never touches processes itself.

An executor knows how to put a worker on a device: ``start`` returns a handle the manager can
poll and stop. Workers dial the manager's control address themselves, so an executor only
launches (locally, or on another node in a later Ray executor). ``LocalExecutor`` is the
embedded default: enclave stages through a ``serdab.tee`` backend, untrusted ones as plain
processes.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cryptography import x509

from serdab import proc
from serdab.choices import ExecutorKind
from serdab.errors import ConfigError, TeeError
from serdab.proc import Child
from serdab.runtime.engine import TOKEN_ENV

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "WorkerHandle", "WorkerSpec", "get_executor"]


@dataclass(frozen=True)
class WorkerSpec:
    """One dataflow engine to start: which worker, on which device, from which image (None: untrusted)."""

    worker: str
    device: str
    control: tuple[str, int]
    token: str
    log_path: Path
    enclave_image: Path | None = None
    stage_file: Path | None = None  # an untrusted stage's ONNX file (an executor on another node ships it)
    hosts: tuple[str, ...] = ()  # the cluster file's host of the device (placement by host)
    extra_args: tuple[str, ...] = ()

    @property
    def args(self) -> list[str]:
        return ["--control", f"{self.control[0]}:{self.control[1]}", "--worker", self.worker, *self.extra_args]


class WorkerHandle(ABC):
    spec: WorkerSpec

    @property
    @abstractmethod
    def pid(self) -> int | None:
        """The OS process id where there is one (tests kill workers by it)."""

    @abstractmethod
    def alive(self) -> bool:
        """True while the worker's process runs."""


class Executor(ABC):
    name: ClassVar[str]

    @abstractmethod
    def start(self, spec: WorkerSpec) -> WorkerHandle:
        """Launch the worker; it dials ``spec.control`` when up. Raises TeeError when it cannot start."""

    @abstractmethod
    def stop(self, handle: WorkerHandle) -> None:
        """Stop the worker and release what it held; safe to call twice and on a dead worker."""

    def simulated_roots(self) -> list[x509.Certificate]:
        """Roots of simulated enclaves this executor launches (empty for real TEEs)."""
        return []

    @property
    def bind_host(self) -> str:
        """Where the manager listens for its workers (control, results): loopback unless they run elsewhere."""
        return "127.0.0.1"

    def close(self) -> None:  # noqa: B027 - optional hook, most executors hold nothing
        """Release the executor itself (after every worker is stopped)."""


@dataclass
class _ProcessHandle(WorkerHandle):
    spec: WorkerSpec
    child: Child | None = None  # an untrusted worker's process
    enclave: Any = None  # a trusted worker's enclave (its process is the backend's)

    @property
    def pid(self) -> int | None:
        if self.enclave is not None:
            return self.enclave.pid
        return self.child.pid if self.child else None

    def alive(self) -> bool:
        if self.enclave is not None:
            return bool(self.enclave.alive())
        return self.child is not None and self.child.alive()


class LocalExecutor(Executor):
    """Workers as processes on this host; enclaves through a TEE backend (``simulated`` by default)."""

    name = "local"

    def __init__(self, tee_backend: str = "simulated") -> None:
        self.tee_backend = tee_backend
        self._tee: Any = None

    @property
    def tee(self) -> Any:
        if self._tee is None:
            from serdab.tee import get_backend

            self._tee = get_backend(self.tee_backend)
        return self._tee

    def simulated_roots(self) -> list[x509.Certificate]:
        return list(self.tee.simulated_roots())

    def start(self, spec: WorkerSpec) -> WorkerHandle:
        env = {TOKEN_ENV: spec.token, "OMP_NUM_THREADS": "1"}
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        if spec.enclave_image is not None:
            enclave = self.tee.launch(spec.enclave_image, spec.args, env=env, log_path=spec.log_path)
            return _ProcessHandle(spec, enclave=enclave)
        child = proc.start(
            [sys.executable, "-m", "serdab.runtime.engine", *spec.args],
            name=f"the worker for {spec.device}",
            log_path=spec.log_path,
            env=env,
            error=TeeError,
        )
        return _ProcessHandle(spec, child=child)

    def stop(self, handle: WorkerHandle) -> None:
        assert isinstance(handle, _ProcessHandle)
        if handle.enclave is not None:
            self.tee.terminate(handle.enclave)
            return
        if handle.child is not None:
            handle.child.stop()

    def close(self) -> None:
        if self._tee is not None:
            self._tee.close()


# kind -> class, or "module:Class" for an optional extra imported only when chosen (Ray is never on the default path)
EXECUTORS: dict[ExecutorKind, type[Executor] | str] = {
    ExecutorKind.LOCAL: LocalExecutor,
    ExecutorKind.RAY: "serdab.runtime.ray_executor:RayExecutor",
}


def get_executor(name: str, **options: Any) -> Executor:
    """An executor by name; an unknown name lists the valid ones, a missing extra says how to get it."""
    try:
        kind = ExecutorKind(name)
    except ValueError:
        raise ConfigError(f"unknown executor {name!r}; choose one of {', '.join(ExecutorKind)}") from None
    target = EXECUTORS[kind]
    if isinstance(target, str):
        import importlib

        module, _, attr = target.partition(":")
        try:
            target = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            raise ConfigError(
                f"the {kind} executor needs the {kind} extra: pip install 'serdab[{kind}]' ({exc})"
            ) from None
    assert isinstance(target, type)
    return target(**options)
