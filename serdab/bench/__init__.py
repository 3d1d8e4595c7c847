"""Benchmarks (never unit tests): each writes a JSON result and a PNG plot under bench/results/.

How the pieces fit: every ``serdab/bench/*_bench.py`` exports the same three functions, and
``serdab bench NAME`` (``serdab.cli.bench_cmd``: a registry of names, options and modules, and one
command factory) calls them in turn:

- ``run(progress, **options) -> dict``: measure; the dict is the JSON result;
- ``plot(result, path)``: the PNG beside it;
- ``report(result) -> list``: the tables and lines the command prints (rich renderables), the same
  figures docs/benchmarks.md quotes.

``write_result`` writes the JSON and the PNG. Modules load their heavy packages (torch, Ray, SEAL)
only when the benchmark is chosen.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Progress", "new_table", "write_result"]

Progress = Callable[[str], None]


def new_table(title: str, columns: Sequence[str], left: Collection[str] = ()) -> Any:
    """A report table: text columns (``left``) aligned left, figures right."""
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column in left else "right")
    return table


def write_result(result: dict[str, Any], json_path: Path, plot: Callable[[dict[str, Any], Path], None]) -> Path:
    """The JSON result and its PNG beside it; returns the PNG's path."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    png = json_path.with_suffix(".png")
    plot(result, png)
    return png
