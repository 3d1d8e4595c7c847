"""TEE backends behind one interface: launch an enclave from an image, reach its NSM, terminate it.

Attestation, sealing and memory counters go through the enclave's NSM, so they are the same
calls for every backend. Registered by name in ``BACKENDS``; ``get_backend`` builds one.
"""

from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from serdab.errors import TeeError, TeeUnavailableError
from serdab.proc import Child

__all__ = ["BACKENDS", "Enclave", "Nsm", "TeeBackend", "get_backend"]


class Nsm(Protocol):
    def attest(
        self, nonce: bytes | None = ..., user_data: bytes | None = ..., public_key: bytes | None = ...
    ) -> bytes: ...
    def describe(self) -> dict[int, bytes]: ...
    def extend(self, index: int, data: bytes) -> bytes: ...
    def seal(self, data: bytes, policy: str = ...) -> bytes: ...
    def unseal(self, blob: bytes) -> bytes: ...


@dataclass
class Enclave:
    id: str
    backend: str
    image: Path
    pcrs: dict[int, bytes]
    debug: bool
    child: Child | None = None  # the enclave's process, where the backend runs one on this host
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child else None

    @property
    def log_path(self) -> Path | None:
        return self.child.log_path if self.child else None

    def alive(self) -> bool:
        return self.child is not None and self.child.alive()


class TeeBackend(ABC):
    name: ClassVar[str]
    evidence: str = "aws-nitro"  # the format its enclaves attest in (serdab.tee.evidence.KINDS)

    @abstractmethod
    def launch(
        self,
        image: Path,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> Enclave:
        """Measure ``image`` and start it as an enclave process running its entrypoint with ``args``;
        its output goes to ``log_path`` (``Enclave.log_path``) when given."""

    @abstractmethod
    def wait_ready(self, enclave: Enclave, timeout_s: float = 60.0) -> dict[str, Any]:
        """Block until the enclave reports it is serving; its ready info (e.g. ``port``). Raises
        TeeError (with the last log line) if it exits first or is not ready within ``timeout_s``."""

    @abstractmethod
    def nsm(self, enclave: Enclave) -> Nsm:
        """The host's view of the enclave's security module (documents, PCRs, sealing)."""

    @abstractmethod
    def terminate(self, enclave: Enclave) -> None:
        """Stop the enclave process and release its resources; safe to call twice."""

    def attestation(
        self,
        enclave: Enclave,
        nonce: bytes | None = None,
        user_data: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes:
        return self.nsm(enclave).attest(nonce, user_data, public_key)

    def seal(self, enclave: Enclave, data: bytes, policy: str = "measurement") -> bytes:
        return self.nsm(enclave).seal(data, policy)

    def unseal(self, enclave: Enclave, blob: bytes) -> bytes:
        return self.nsm(enclave).unseal(blob)

    def simulated_roots(self) -> list[Any]:
        """The roots of simulated documents this backend's enclaves produce (none for real TEEs)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional: most backends hold nothing between enclaves
        """Release what the backend holds once its enclaves are terminated."""


class _Unavailable(TeeBackend):
    """A real backend this machine cannot run; constructing it says what is missing."""

    needs: ClassVar[str]
    devices: ClassVar[tuple[str, ...]]
    tools: ClassVar[tuple[str, ...]]

    def __init__(self) -> None:
        missing = [d for d in self.devices if not os.path.exists(d)] + [t for t in self.tools if not shutil.which(t)]
        if missing:
            raise TeeUnavailableError(
                f"{self.name} is not available on this machine: {self.needs} (missing: {', '.join(missing)})"
            )
        raise TeeUnavailableError(f"{self.name}: hardware found, but Serdab has no driver for it yet")

    def launch(
        self,
        image: Path,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> Enclave:
        raise TeeError("unreachable")

    def wait_ready(self, enclave: Enclave, timeout_s: float = 60.0) -> dict[str, Any]:
        raise TeeError("unreachable")

    def nsm(self, enclave: Enclave) -> Nsm:
        raise TeeError("unreachable")

    def terminate(self, enclave: Enclave) -> None:
        raise TeeError("unreachable")


class NitroBackend(_Unavailable):
    name = "nitro"
    needs = "an EC2 parent instance with Nitro Enclaves enabled, /dev/nitro_enclaves and nitro-cli"
    devices = ("/dev/nitro_enclaves",)
    tools = ("nitro-cli",)


class GramineSgxBackend(_Unavailable):
    name = "gramine-sgx"
    needs = "an SGX-capable CPU with the in-kernel driver (/dev/sgx_enclave), Gramine and gramine-sgx"
    devices = ("/dev/sgx_enclave",)
    tools = ("gramine-sgx",)


def _simulated() -> type[TeeBackend]:
    from serdab.tee.simulated import SimulatedBackend

    return SimulatedBackend


BACKENDS: dict[str, Any] = {
    "simulated": _simulated,
    "nitro": lambda: NitroBackend,
    "gramine-sgx": lambda: GramineSgxBackend,
}


def get_backend(name: str, **options: Any) -> TeeBackend:
    """A backend by name; an unknown name lists the valid ones, an unavailable one says what it needs."""
    factory = BACKENDS.get(name)
    if factory is None:
        raise TeeError(f"unknown TEE backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return factory()(**options)
