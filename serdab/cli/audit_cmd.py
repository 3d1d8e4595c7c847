"""`serdab audit MODEL`: what an attacker rebuilds of the input from each cut tensor."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from serdab.cli.common import InputShapeOpt, JsonOpt, ModelArg, console, err_console, open_model, write_json

__all__ = ["audit", "audit_table"]

if TYPE_CHECKING:
    from serdab.privacy.audit import AuditReport


def audit_table(report: AuditReport) -> Table:
    table = Table(
        title=f"{report.model}: reconstruction attacks at each cut, {len(report.images)} images "
        f"(SSIM 1 = the input rebuilt; chance = SSIM against another image)"
    )
    for column in (
        "cut after",
        "block",
        "resolution",
        "attack",
        "SSIM mean",
        "SSIM worst",
        "chance",
        "PSNR worst",
        "time",
    ):
        table.add_column(column, justify="left" if column in ("block", "attack") else "right")
    for cut in report.cuts:
        res = "x".join(map(str, cut.resolution)) if cut.resolution else "none (1x1)"
        for k, (name, s) in enumerate(cut.scores.items()):
            chance = f"{s.chance_ssim:.3f}" if s.chance_ssim is not None else "-"
            first = k == 0
            table.add_row(
                str(cut.index) if first else "",
                cut.name if first else "",
                res if first else "",
                name,
                f"{s.ssim_mean:.3f}",
                f"{s.ssim_worst:.3f}",
                chance,
                f"{s.psnr_worst:.1f} dB",
                f"{s.seconds:.1f} s",
            )
    return table


def audit(
    model: ModelArg,
    cuts: Annotated[
        str | None,
        typer.Option(help="Cuts to attack (block indices, e.g. 2,11). Default: first cut at each resolution."),
    ] = None,
    all_cuts: Annotated[bool, typer.Option("--all", help="Attack every cut.")] = False,
    attack: Annotated[
        str | None,
        typer.Option(
            help="Attacks: whitebox, decoder, baseline (comma-separated). Default: whitebox,baseline "
            "for zoo models, decoder,baseline for ONNX files."
        ),
    ] = None,
    images: Annotated[Path | None, typer.Option(help="Victim images (a directory). Default: 3 bundled photos.")] = None,
    train_images: Annotated[
        Path | None, typer.Option(help="The decoder attacker's own images. Default: crops of other bundled photos.")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Optimisation steps (white-box: 200) / training steps (decoder: 300).")
    ] = None,
    json_path: JsonOpt = None,
    png: Annotated[Path | None, typer.Option(help="Write a grid of originals and reconstructions here.")] = None,
    input_shape: InputShapeOpt = None,
) -> None:
    """Attack the tensor at each cut and score the reconstructions (SSIM, PSNR; mean and worst image).

    white-box = rMLE with the enclave stages' weights known; decoder = inverse network trained on the
    attacker's own images; baseline = best single feature map (today's leakage metric). Results are cached.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from serdab.errors import AuditError
    from serdab.graph.stages import parse_cuts
    from serdab.models.zoo import ZOO
    from serdab.privacy.attacks import parse_attacks
    from serdab.privacy.audit import audit_model, default_cuts, save_grid
    from serdab.privacy.images import load_image_dir

    victims = load_image_dir(images) if images is not None else None
    attackers = load_image_dir(train_images) if train_images is not None else None
    opened = open_model(model, input_shape)
    chain = opened.chain
    names = parse_attacks(attack or ("whitebox,baseline" if model in ZOO else "decoder,baseline"))
    if all_cuts and cuts:
        raise AuditError("give --cuts or --all, not both")
    chosen = (
        list(range(len(chain.blocks) - 1)) if all_cuts else parse_cuts(chain, cuts) if cuts else default_cuts(chain)
    )
    step_counts = {n: steps for n in names} if steps else None
    columns = (
        TextColumn("audit {task.fields[model]}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[label]}"),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("audit", total=1.0, model=opened.name, label="")
        report, recon = audit_model(
            model,
            chain,
            opened.name,
            chosen,
            names,
            victims=victims,
            attackers=attackers,
            steps=step_counts,
            progress=lambda label, frac: bar.update(task, completed=frac, label=label),
        )
    console.print(audit_table(report))
    write_json(json_path, report)
    if png is not None:
        save_grid(png, report, recon)
        err_console.print(f"wrote {png}")
    else:
        err_console.print("[dim]--png FILE writes the originals next to the reconstructions[/dim]")
