"""`serdab partition MODEL --cuts 3,7 --out DIR`: one runnable ONNX file per stage plus a manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from serdab.cli.common import InputShapeOpt, JsonOpt, ModelArg, console, human_bytes, open_model, write_json
from serdab.graph import parse_cuts, write_stages

__all__ = ["partition"]


def partition(
    model: ModelArg,
    cuts: Annotated[
        str,
        typer.Option(
            help="Cuts (cut i = after block i, as `serdab profile` numbers blocks) or tensor names, e.g. 3,7."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Directory for stage0.onnx, stage1.onnx, ... and manifest.json.")],
    input_shape: InputShapeOpt = None,
    json_path: JsonOpt = None,
) -> None:
    """Split MODEL at clean cuts into stage models that run one after another."""
    opened = open_model(model, input_shape)
    cut_list = parse_cuts(opened.chain, cuts)
    specs = write_stages(opened.chain, cut_list, out, opened.name)
    table = Table(title=f"{opened.name}: {len(specs)} stages in {out}")
    for column in ("stage", "file", "blocks", "input", "in bytes", "output", "out bytes"):
        table.add_column(column)
    for s in specs:
        table.add_row(
            str(s.index),
            s.file,
            f"{s.blocks[0]}..{s.blocks[1]}",
            "x".join(map(str, s.input_shape)),
            human_bytes(s.input_bytes),
            "x".join(map(str, s.output_shapes[0])),
            human_bytes(s.output_bytes),
        )
    console.print(table)
    write_json(json_path, json.loads((out / "manifest.json").read_text()))
