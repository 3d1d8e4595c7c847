"""`serdab models`: the zoo with input size, parameters and MACs."""

from __future__ import annotations

from typing import Annotated, Any

import torch
import typer
from rich.table import Table
from torch import nn

from serdab.cli.common import JsonOpt, console, write_json
from serdab.models import ZOO, build_module

__all__ = ["count_module", "models"]


def count_module(module: nn.Module, input_chw: tuple[int, ...]) -> tuple[int, int]:
    """(parameters, MACs per image) of a torch module, counting Conv2d and Linear as seed 003 eq. 1-2 do."""
    macs = 0

    def hook(layer: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(layer, nn.Conv2d):
            macs += output.numel() * (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1]
        elif isinstance(layer, nn.Linear):
            macs += output.numel() * layer.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with torch.no_grad():
            module(torch.zeros(1, *input_chw))
    finally:
        for handle in handles:
            handle.remove()
    return sum(p.numel() for p in module.parameters()), macs


def models(
    json_path: JsonOpt = None,
    names_only: Annotated[bool, typer.Option("--names", help="Print only the names.")] = False,
) -> None:
    """List the zoo: every model the seed papers evaluate; seeded weights unless trained (nothing downloaded)."""
    if names_only:
        console.print("\n".join(ZOO))
        return
    rows: list[dict[str, Any]] = []
    for entry in ZOO.values():
        params, macs = count_module(build_module(entry.name), entry.input_chw)
        rows.append(
            {
                "name": entry.name,
                "input": list(entry.input_chw),
                "params": params,
                "macs": macs,
                "seeds": entry.seeds,
                "description": entry.description,
                "weights": entry.weights,
            }
        )
    table = Table(title="Serdab model zoo (seeded weights unless marked trained; any .onnx path works too)")
    for column in ("name", "input (C,H,W)", "params", "MACs", "seeds", "description"):
        table.add_column(column, justify="right" if column in ("params", "MACs") else "left")
    for r in rows:
        table.add_row(
            r["name"],
            "x".join(map(str, r["input"])),
            f"{r['params'] / 1e6:.2f} M",
            f"{r['macs'] / 1e6:,.1f} M",
            r["seeds"],
            r["description"],
        )
    console.print(table)
    write_json(json_path, {"models": rows})
