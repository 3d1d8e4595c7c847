"""One-line descriptions of pydantic validation errors, for files users hand to Serdab."""

from __future__ import annotations

from pydantic import ValidationError

__all__ = ["first_error"]


def first_error(exc: ValidationError) -> str:
    """'blocks.3.latency_ms: Input should be a valid number' — the first failing field and why."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "top level"
    return f"{where}: {err['msg'].removeprefix('Value error, ')}"
