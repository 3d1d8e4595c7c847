"""The serving engines behind one interface, registered by name (``serdab serve --engine``).

An engine starts and stops everything it serves (key service, replica image, replicas, front
door), says where clients connect (``url``), what they trust (``trust``) and how many replicas of
each kind run. ``gateway`` is Serdab's own (``serdab.serve.service.ModelService``); ``ray`` is Ray
Serve (``serdab.serve.ray.service.RayService``, the ray extra), imported only when chosen.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Self

from serdab.choices import ServeEngine
from serdab.errors import ServeConfigError
from serdab.serve.config import ServeConfig

__all__ = ["ENGINES", "ServingEngine", "make_engine"]


class ServingEngine(ABC):
    """What `serdab serve`, the benchmarks and tests drive, whatever serves the model."""

    config: ServeConfig
    model_name: str  # the model's name in the API, known once started
    #: the engine's runtime installs signal handlers of its own when it starts (Ray's driver does)
    handlers_after_start: bool = False
    #: what `serdab serve` says while it starts
    starting: str = "starting"

    def start(self) -> Self:
        """Start everything; on any failure, stop what was started before raising (nothing left running)."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    @abstractmethod
    def _start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None:
        """Stop everything this engine started; safe on a half-started engine and twice."""

    @property
    @abstractmethod
    def url(self) -> str:
        """The front door clients use."""

    @abstractmethod
    def trust(self) -> dict[str, Any]:
        """The owner's statement a client verifies against (handed out of band)."""

    @abstractmethod
    def replica_counts(self) -> dict[str, int]:
        """Running replicas per kind."""

    @abstractmethod
    def doors(self) -> list[str]:
        """One line per front door: what it serves and where (for `serdab serve`'s report)."""

    def replica_rows(self) -> list[dict[str, Any]]:
        """Per-replica detail where the engine has it (id, kind, host, port, grpc_port, pid, start_s)."""
        return []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


# engine -> (module, class, the extra that module needs or None)
ENGINES: dict[ServeEngine, tuple[str, str, str | None]] = {
    ServeEngine.GATEWAY: ("serdab.serve.service", "ModelService", None),
    ServeEngine.RAY: ("serdab.serve.ray.service", "RayService", "ray"),
}


def make_engine(config: ServeConfig, log: Callable[[str], None] | None = None) -> ServingEngine:
    """The engine ``config.engine`` names, not started; ``log`` gets its progress lines."""
    module_name, class_name, extra = ENGINES[config.engine]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if extra is None:
            raise
        raise ServeConfigError(
            f"--engine {config.engine} needs the {extra} extra: pip install 'serdab[{extra}]' ({exc})"
        ) from None
    engine: ServingEngine = getattr(module, class_name)(config, log=log)
    return engine
