"""The fixed choices Serdab offers on its command line and in its APIs, as enums: one home, no imports.

The CLI takes these types directly (Typer checks the value and lists the valid ones in ``--help``),
and the library parses plain strings with the same enums, so a choice is spelled and checked once.
Open-ended choices that plug in by name (planners, balancers, TEE backends) stay registries in
their own packages.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["BadInput", "ExecutorKind", "HeMode", "RayIngress", "ServeEngine"]


class ExecutorKind(StrEnum):
    """Where pipeline workers run (``serdab run --executor``)."""

    LOCAL = "local"  # processes on this host
    RAY = "ray"  # Ray actors placed by device (the ray extra)


class ServeEngine(StrEnum):
    """What serves a model (``serdab serve --engine``)."""

    GATEWAY = "gateway"  # Serdab's own gateway and replica processes
    RAY = "ray"  # Ray Serve applications (the ray extra)


class RayIngress(StrEnum):
    """Ray Serve's front door (``serdab serve --ray-ingress``)."""

    AUTO = "auto"  # HAProxy when Serdab starts Ray, else what the running cluster was started with
    HAPROXY = "haproxy"
    PROXY = "proxy"  # Ray's Python proxy


class HeMode(StrEnum):
    """What an HE client asks for (``serdab he infer --mode``)."""

    RECALL = "recall"  # the class scores
    TRANSFER = "transfer"  # encrypted features of a layer


class BadInput(StrEnum):
    """What `serdab run` does with an input file it cannot decode (serdab.runtime.frames)."""

    SKIP = "skip"  # a result line says why, the rest of the input goes on
    REFUSE = "refuse"  # every file checked first; the run refused, naming every bad file
