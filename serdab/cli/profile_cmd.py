"""`serdab profile MODEL`: per-block latency and costs on this host."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from serdab.cli.common import (
    InputShapeOpt,
    JsonOpt,
    ModelArg,
    console,
    human_bytes,
    open_model,
    progress_bar,
    write_json,
)
from serdab.profile import Profile, cached_profile

__all__ = ["profile", "profile_table"]


def profile_table(profile: Profile) -> Table:
    table = Table(
        title=f"{profile.model} {'x'.join(map(str, profile.input_shape))}: {len(profile.blocks)} blocks "
        f"(ONNX Runtime, {profile.threads} thread(s), median of {profile.repeat})"
    )
    for column in ("#", "block", "output", "res", "MACs", "weights", "peak act", "ms", "p95 ms", "cum %"):
        table.add_column(column, justify="left" if column in ("block", "output") else "right")
    total = sum(b.latency_ms for b in profile.blocks) or 1.0
    running = 0.0
    for b in profile.blocks:
        running += b.latency_ms
        res = "x".join(map(str, b.resolution)) if b.resolution else "-"
        table.add_row(
            str(b.index),
            b.name,
            "x".join(map(str, b.out_shape)),
            res,
            f"{b.macs / 1e6:,.1f}M",
            human_bytes(b.params_bytes),
            human_bytes(b.peak_activation_bytes),
            f"{b.latency_ms:.3f}",
            f"{b.latency_p95_ms:.3f}",
            f"{100 * running / total:.0f}",
        )
    return table


def profile(
    model: ModelArg,
    json_path: JsonOpt = None,
    input_shape: InputShapeOpt = None,
    batch: Annotated[int, typer.Option(min=1, help="Batch size to time.")] = 1,
    repeat: Annotated[int, typer.Option(min=1, help="Timed runs per block (median and p95 reported).")] = 30,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs first.")] = 5,
    threads: Annotated[int, typer.Option(min=1, help="ONNX Runtime intra-op threads (fixed for comparability).")] = 1,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Measure again even if a cached profile exists.")
    ] = False,
) -> None:
    """Profile every block of MODEL: latency, output size and resolution, MACs, weights, peak activations."""
    opened = open_model(model, input_shape, batch)
    with progress_bar(f"profiling {opened.name}", len(opened.chain.blocks) + 1) as update:
        result, cache = cached_profile(
            opened.chain,
            opened.name,
            repeat=repeat,
            warmup=warmup,
            threads=threads,
            refresh=no_cache,
            progress=update,
        )
    if cache is not None:
        console.print(f"[dim]cached profile {cache} (--no-cache to measure again)[/dim]")
    console.print(profile_table(result))
    console.print(
        f"whole model {result.whole_ms:.2f} ms (p95 {result.whole_p95_ms:.2f}); sum of blocks "
        f"{result.sum_blocks_ms:.2f} ms ({100 * result.sum_error:+.1f}%); profiled in {result.profiling_s:.1f} s"
    )
    write_json(json_path, result)
