"""`serdab bench ...`: benchmarks that write JSON + PNG and print the table quoted in docs/benchmarks.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from serdab.bench.profile_bench import plot_profile_bench, run_profile_bench
from serdab.cli.common import console, err_console
from serdab.models import ZOO

__all__ = ["bench_app"]

bench_app = typer.Typer(help="Benchmarks: each writes JSON and a PNG under bench/results/.", no_args_is_help=True)


@bench_app.command("profile")
def bench_profile(
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the JSON result.")] = Path(
        "bench/results/profile.json"
    ),
    repeat: Annotated[int, typer.Option(min=1, help="Timed runs per block.")] = 30,
    threads: Annotated[int, typer.Option(min=1, help="ONNX Runtime intra-op threads.")] = 1,
    quick: Annotated[bool, typer.Option("--quick", help="Small models only (seconds, not minutes).")] = False,
) -> None:
    """Profiling cost of each zoo model and the sum-of-blocks vs whole-model error."""
    models = ["lenet5", "cifar_cnn", "he_cnn6", "he_cnn5", "resnet18"] if quick else list(ZOO)
    with err_console.status("profiling") as status:
        result = run_profile_bench(models, repeat, threads, progress=lambda m: status.update(f"profiling {m}"))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    png = json_path.with_suffix(".png")
    plot_profile_bench(result, png)
    table = Table(title=f"profiling cost (ONNX Runtime, {threads} thread(s), median of {repeat})")
    for column in ("model", "blocks", "load s", "profiling s", "whole ms", "sum of blocks ms", "error"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in result["rows"]:
        table.add_row(
            r["model"],
            str(r["blocks"]),
            f"{r['load_s']:.1f}",
            f"{r['profiling_s']:.1f}",
            f"{r['whole_ms']:.2f}",
            f"{r['sum_blocks_ms']:.2f}",
            f"{100 * r['sum_error']:+.1f}%",
        )
    console.print(table)
    err_console.print(f"wrote {json_path} and {png}")
