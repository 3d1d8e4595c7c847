"""Files users hand to Serdab, read into pydantic models with one-line errors (a leaf: pydantic only).

Also the one owner-only file writer: keys, tokens and sealed blobs are created 0600 and never
pass through a world-readable moment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

__all__ = ["first_error", "load_json_model", "write_private"]

M = TypeVar("M", bound=BaseModel)


def first_error(exc: ValidationError) -> str:
    """'blocks.3.latency_ms: Input should be a valid number' — the first failing field and why."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "top level"
    return f"{where}: {err['msg'].removeprefix('Value error, ')}"


def load_json_model(kind: type[M], path: str | Path, noun: str, what: str, error: type[Exception]) -> M:
    """``kind`` from the JSON file at ``path``; a missing, unreadable or invalid file raises ``error``
    with one line naming the file and (for invalid content) the first bad field. ``noun`` names the
    file ("profile"), ``what`` says what it should be ("a Serdab profile")."""
    path = Path(path)
    try:
        return kind.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise error(f"{noun} file not found: {path}") from None
    except IsADirectoryError:
        raise error(f"{path} is a directory, not {what}") from None
    except ValidationError as exc:
        raise error(f"{path} is not {what}: {first_error(exc)}") from None
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None


def write_private(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a file only its owner can read (created 0600, replaced if it exists)."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT: make it private too
    return path
