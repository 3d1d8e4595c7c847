"""`serdab he train`: the seed 004 nets, plain and HE-approximated, trained on bundled data (issue 5, in progress)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.table import Table

from serdab.cli.common import console, err_console
from serdab.he.train import NETS, train_net

__all__ = ["he_app"]

he_app = typer.Typer(help="Homomorphic-encryption mode (seed 004); work in progress.", no_args_is_help=True)


@he_app.command("train")
def train(
    net: Annotated[list[str] | None, typer.Option(help=f"Nets to train: {', '.join(NETS)} (default: both).")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the 1,437 training digits.")] = 30,
    seed: int = 0,
    out: Annotated[
        Path | None, typer.Option(help="Directory for the trained weights (NAME-plain.pt, NAME-approx.pt).")
    ] = None,
) -> None:
    """Train seed 004's CNNs, plain and approximated (x^2, average pooling), and report held-out accuracy."""
    table = Table(title=f"seed 004 nets on scikit-learn digits upscaled to 28x28 ({epochs} epochs, seed {seed})")
    for column in ("net", "model", "accuracy", "seconds"):
        table.add_column(column, justify="left" if column in ("net", "model") else "right")
    for name in net or list(NETS):
        for approximated in (False, True):
            with err_console.status(f"training {name} ({'approximated' if approximated else 'plain'})"):
                result = train_net(name, approximated, epochs=epochs, seed=seed)
            kind = "approx" if approximated else "plain"
            table.add_row(name, kind, f"{result.accuracy:.4f}", f"{result.seconds:.1f}")
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                torch.save(result.model.state_dict(), out / f"{name}-{kind}.pt")
    console.print(table)
