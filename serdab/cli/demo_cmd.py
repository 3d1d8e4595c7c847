"""`serdab demo`: the main job on the embedded default, end to end, in under a minute.

Profile a zoo model, find the first cut whose tensor is no longer recognisable (seed 000's
20x20 rule), measure leakage at every cut, split the model there and check that the stages
reproduce the whole model, plan it on seed 000's two edge devices (two enclaves, a CPU and a
GPU), and finally run that placement for real: a key service and one worker per device
(enclaves for the trusted stages) stream a short synthetic camera feed, and the measured
frame latency, period and chunk time are printed beside the prediction.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from serdab.cli.common import console, open_model, progress_bar
from serdab.cli.leakage_cmd import leakage_table
from serdab.cli.plan_cmd import plan_table
from serdab.cli.profile_cmd import profile_table
from serdab.cluster import Cluster, load_cluster
from serdab.graph import NamedChain, write_stages
from serdab.onnxrt import make_session
from serdab.plan.model import plan_model
from serdab.privacy import default_images, measure_leakage
from serdab.privacy.metrics import within_resolution
from serdab.profile import Profile, cached_profile

__all__ = ["demo", "first_private_cut"]

THRESHOLD = 20
CHUNK = 10_800  # seed 000's stream: 3 hours of one frame per second


def first_private_cut(resolutions: list[list[int] | None], threshold: int = THRESHOLD) -> int | None:
    """Index of the first block whose output is at most threshold x threshold (None: never)."""
    return next((i for i, res in enumerate(resolutions[:-1]) if within_resolution(res, threshold)), None)


def demo(
    model: Annotated[str, typer.Argument(help="Zoo model or .onnx path.")] = "resnet18",
    out: Annotated[
        Path | None, typer.Option(help="Keep the stage files here (default: a temporary directory).")
    ] = None,
    repeat: Annotated[int, typer.Option(min=1, help="Timed runs per block.")] = 30,
    cluster: Annotated[str, typer.Option(help="Cluster file or shipped example to plan on.")] = "paper",
    frames: Annotated[
        int, typer.Option(min=0, help="Synthetic frames to stream through the plan (0: plan only).")
    ] = 24,
    chunk: Annotated[int, typer.Option(min=1, help="Frames per chunk of the run.")] = 8,
) -> None:
    """Profile, measure leakage, partition at the first private cut, plan on a cluster, then run the plan."""
    opened = open_model(model, None)
    chain = opened.chain
    console.rule(f"[bold]1. profile {opened.name}")
    with progress_bar("profiling", len(chain.blocks) + 1) as update:
        prof, _ = cached_profile(chain, opened.name, repeat=repeat, progress=update)
    console.print(profile_table(prof))
    console.print(
        f"whole model {prof.whole_ms:.2f} ms, sum of blocks {prof.sum_blocks_ms:.2f} ms ({100 * prof.sum_error:+.1f}%)"
    )

    console.rule("[bold]2. leakage at every cut")
    images = default_images(grey_digits=chain.input_shape[1] == 1)
    with progress_bar("leakage", len(images)) as update:
        report = measure_leakage(chain, opened.name, images, progress=update)
    console.print(leakage_table(report, THRESHOLD))

    console.rule("[bold]3. partition at the first private cut")
    cut = first_private_cut([b.resolution for b in prof.blocks])
    if cut is None:
        console.print(f"no cut of {opened.name} reaches {THRESHOLD}x{THRESHOLD}: everything must stay in the enclave")
        return
    share = sum(b.latency_ms for b in prof.blocks[: cut + 1]) / prof.sum_blocks_ms
    leak = report.cuts[cut]
    console.print(
        f"first cut at or below {THRESHOLD}x{THRESHOLD}: after block {cut} ({prof.blocks[cut].name}, "
        f"{'x'.join(map(str, prof.blocks[cut].out_shape))}); the enclave part is {100 * share:.0f}% of the "
        f"time; leakage there: Pearson {leak.pearson:.2f}, SSIM {leak.ssim:.2f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        target = out or Path(tmp)
        specs = write_stages(chain, [cut], target, opened.name)
        frame = np.random.default_rng(1).standard_normal(chain.input_shape).astype(np.float32)
        whole = make_session(chain.model).run(None, {chain.input_name: frame})[0]
        current = frame
        for spec in specs:
            session = make_session((target / spec.file).read_bytes())
            current = session.run(None, {spec.input: current})[0]
        diff = float(np.abs(whole - current).max())
        for spec in specs:
            console.print(
                f"  {spec.file}: blocks {spec.blocks[0]}..{spec.blocks[1]}, sends {spec.output_bytes:,} bytes on"
            )
        console.print(
            f"stages run one after another reproduce the whole model: max |diff| = {diff:.2e}"
            + (f"; files in {target}" if out else "")
        )

    console.rule(f"[bold]4. plan on the {cluster} cluster ({CHUNK:,} frames, policy resolution:{THRESHOLD})")
    cluster_spec = load_cluster(cluster)
    planned = plan_model(prof, cluster_spec, policy=f"resolution:{THRESHOLD}", chunk=CHUNK, replicate=True)
    request, best = planned.request, planned.cost
    single = plan_model(prof, cluster_spec, strategy="single-tee", policy=f"resolution:{THRESHOLD}", chunk=CHUNK).cost
    console.print(plan_table(best, request))
    console.print(
        f"T({CHUNK}) = {best.chunk_time_s:.0f} s vs {single.chunk_time_s:.0f} s in one enclave: "
        f"{single.chunk_time_s / best.chunk_time_s:.2f}x faster (predicted from emulated enclave/GPU speeds; "
        f"`serdab plan {opened.name} --cluster {cluster}` for more)"
    )

    if frames:
        _run_step(opened, prof, cluster_spec, frames, chunk)


def _run_step(opened: NamedChain, prof: Profile, spec: Cluster, frames: int, chunk: int) -> None:
    from serdab.cli.run_cmd import _hop_lines, _stage_table, _summary_table
    from serdab.runtime.frames import open_source
    from serdab.runtime.manager import ApplicationManager, RunOptions

    console.rule(
        f"[bold]5. run it: {frames} synthetic frames in chunks of {chunk} (`serdab run` does this for any input)"
    )
    options = RunOptions(chunk=chunk, privacy=f"resolution:{THRESHOLD}", replicate=True)
    manager = ApplicationManager(opened.chain, opened.name, prof, spec, options)
    source = open_source(f"synthetic:{frames}", opened.chain.input_shape)
    with progress_bar("streaming (key service, enclaves and workers start first)", frames) as update:
        summary = manager.run(source.frames(), total=frames, progress=lambda u: update(u["done"], frames, ""))
    console.print(
        f"{summary.placements[-1]}: {summary.frames} frames, every one answered once, in "
        f"{summary.wall_s:.1f} s host time; {summary.emulation}"
    )
    console.print(_summary_table(summary))
    console.print(_stage_table(summary))
    for line in _hop_lines(summary):
        console.print(line)
