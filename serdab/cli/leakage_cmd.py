"""`serdab leakage MODEL`: how much each cut tensor still looks like the input image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from serdab.cli.common import InputShapeOpt, JsonOpt, ModelArg, console, open_model, progress_bar, write_json
from serdab.privacy import LeakageReport, default_images, load_image_dir, measure_leakage
from serdab.privacy.metrics import within_resolution

__all__ = ["leakage", "leakage_table"]


def leakage_table(report: LeakageReport, threshold: int = 20) -> Table:
    table = Table(
        title=f"{report.model}: leakage at each cut, worst of {len(report.images)} images "
        f"(higher Pearson/SSIM, lower MSE = more revealing)"
    )
    for column in ("cut after", "block", "resolution", "Pearson", "SSIM", "MSE", f"<= {threshold}x{threshold}"):
        table.add_column(column, justify="left" if column == "block" else "right")
    for c in report.cuts:
        res = "x".join(map(str, c.resolution)) if c.resolution else "none (1x1)"
        private = "yes" if within_resolution(c.resolution, threshold) else "no"
        table.add_row(str(c.index), c.name, res, f"{c.pearson:.3f}", f"{c.ssim:.3f}", f"{c.mse:.4f}", private)
    return table


def leakage(
    model: ModelArg,
    images: Annotated[Path | None, typer.Option(help="Directory of your own images (png/jpg/...).")] = None,
    json_path: JsonOpt = None,
    input_shape: InputShapeOpt = None,
    exhaustive: Annotated[
        bool,
        typer.Option(
            "--exhaustive", help="Compute SSIM on every feature map, not only the best 32 by Pearson and by MSE."
        ),
    ] = False,
) -> None:
    """Measure seed 000's Sim(I(L1), I(Lx)) at every cut: resolution, Pearson, SSIM and MSE."""
    image_set = load_image_dir(images) if images is not None else None
    opened = open_model(model, input_shape)
    if image_set is None:
        image_set = default_images(grey_digits=opened.chain.input_shape[1] == 1)
    with progress_bar(f"leakage of {opened.name}", len(image_set)) as update:
        report = measure_leakage(
            opened.chain, opened.name, image_set, progress=update, ssim_candidates=None if exhaustive else 32
        )
    console.print(leakage_table(report))
    write_json(json_path, report)
