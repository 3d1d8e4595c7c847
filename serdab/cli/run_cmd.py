"""`serdab run MODEL --cluster FILE`: a placement run for real, frames streaming through enclaves and accelerators."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from serdab.choices import BadInput, ExecutorKind
from serdab.cli.common import (
    AuditOpt,
    BlindHelperOpt,
    BlindOpt,
    EvidenceOpt,
    InputShapeOpt,
    IntegrityOpt,
    JsonOpt,
    PrivacyOpt,
    ReplicateOpt,
    TrustedTailOpt,
    blind_costs,
    check_blind,
    console,
    err_console,
    open_model,
    progress_bar,
    read_audit,
    use_evidence,
    write_json,
)
from serdab.errors import ConfigError, RunError

__all__ = ["parse_slowdown", "run"]


def parse_slowdown(text: str) -> tuple[str, tuple[float, int]]:
    """``gpu2=3`` or ``gpu2=3@40``: the device runs 3x slower from frame 40 on (emulated)."""
    device, _, rest = text.partition("=")
    factor, _, frame = rest.partition("@")
    try:
        value, first = float(factor), int(frame or 0)
    except ValueError:
        value, first = 0.0, -1
    if not device or value <= 0 or first < 0:
        raise ConfigError(f"--slowdown {text!r}: write DEVICE=FACTOR[@FRAME], e.g. tee1=3@40")
    return device, (value, first)


def _parse_tamper(text: str, devices: list[str]) -> tuple[str, int]:
    device, _, frame = text.partition("@")
    if device not in devices or not frame.isdigit():
        raise ConfigError(f"--tamper {text!r}: write DEVICE@FRAME with a device of the cluster ({', '.join(devices)})")
    return device, int(frame)


def _progress_text(update: dict[str, Any]) -> str:
    chunk = update["chunk"]
    fps = chunk.frames / chunk.measured_chunk_s if chunk.measured_chunk_s > 0 else 0.0
    stages = " ".join(f"{'+'.join(s.devices)} {100 * s.utilisation:.0f}%" for s in chunk.stages)
    return f"{fps:.2f} frames/s (emulated) | busy: {stages} | bottleneck {chunk.measured_bottleneck}"


def _summary_table(summary: Any) -> Table:
    table = Table(title=f"measured vs predicted ({summary.emulation.split(':')[0]}; means over steady chunks)")
    for column in ("", "measured", "predicted", "gap"):
        table.add_column(column, justify="left" if not column else "right")
    rows = summary.measured_vs_predicted()
    names = {
        "L": "frame latency L (probe)",
        "P": "period P (mean result gap)",
        "T": f"chunk time T({summary.chunk})",
        "L_first": "first frame of a chunk",
        "T_simulated": f"T({summary.chunk}) vs event simulation",
    }
    for key, value in rows.items():
        gap = value["measured"] / value["predicted"] - 1 if value["predicted"] > 0 else 0.0
        unit = 1000.0 if key.startswith(("L", "P")) else 1.0
        suffix = " ms" if unit == 1000.0 else " s"
        table.add_row(
            names.get(key, key.replace("L_path", "L on path ")),
            f"{unit * value['measured']:.3f}{suffix}",
            f"{unit * value['predicted']:.3f}{suffix}",
            f"{100 * gap:+.1f}%",
        )
    return table


def _hop_lines(summary: Any) -> list[str]:
    """Bytes per frame each hop of the last placement carried, beside what the cost model charges."""
    last = summary.placements[-1] if summary.placements else None
    lines = []
    for hop in (h for h in summary.hops if h.placement == last):
        what = "the input frame" if hop.cut is None else f"cut {hop.cut}"
        lines.append(
            f"hop {'+'.join(hop.src)} -> {'+'.join(hop.dst)} ({what}): {hop.measured_bytes:,.0f} bytes per frame "
            f"on the wire, cost model {hop.predicted_bytes:,}"
        )
    return lines


def _stage_table(summary: Any) -> Table:
    last = summary.steady()[-1]
    table = Table(title=f"stages of {last.placement}")
    for column in ("stage", "devices", "blocks", "measured ms/frame", "predicted ms/frame", "busy"):
        table.add_column(column, justify="left" if column in ("devices", "blocks") else "right")
    for s in last.stages:
        table.add_row(
            str(s.stage),
            "+".join(s.devices),
            s.blocks,
            f"{s.measured_ms:.2f}",
            f"{s.predicted_ms:.2f}",
            f"{100 * s.utilisation:.0f}%",
        )
    return table


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM stops a run as Ctrl-C does (workers stopped, run directory removed, answers kept); a
    second signal while it cleans up is ignored, so the clean-up finishes."""
    stopping = False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stopped(summary: Any, why: BaseException, out: Path | None, json_path: Path | None, before: int) -> None:
    """One line on what a stopped run did and how to go on; the summary of what was done, if asked for."""
    done = summary.answered + before
    which = f" (this run: {summary.answered_frames})" if summary.answered_frames else ""
    where = (
        f"; results in {out}, resume with the same command and --resume {out}"
        if out
        else ("; give --out FILE to keep results and resume")
    )
    reason = "stopped by a signal" if isinstance(why, KeyboardInterrupt) else "stopped"
    kept = f"; run directory kept: {summary.run_dir}" if summary.run_dir else ""
    err_console.print(f"serdab run {reason}: {done} frames answered{which}{where}{kept}")
    write_json(json_path, summary)


def run(
    cluster: Annotated[
        str, typer.Option(help="Cluster YAML or a shipped example: paper, single-tee, edge-cloud.", show_default=False)
    ],
    model: Annotated[str, typer.Argument(help="Zoo model name or path to an .onnx file.")],
    input: Annotated[
        str, typer.Option("--input", help="A video file, a directory of images, or synthetic:N generated frames.")
    ] = "synthetic:30",
    chunk: Annotated[
        int, typer.Option(min=1, help="Frames per chunk (seed 000): placement changes only between chunks.")
    ] = 10,
    strategy: Annotated[str, typer.Option(help="Planner (see `serdab plan --help`).")] = "optimal",
    privacy: PrivacyOpt = "resolution:20",
    trusted_tail: TrustedTailOpt = False,
    replicate: ReplicateOpt = False,
    native: Annotated[
        bool, typer.Option("--native", help="Every worker at this host's real speed, links unshaped (no emulation).")
    ] = False,
    placement: Annotated[
        str | None, typer.Option(help="Run this placement instead of planning, e.g. 'tee1[0-11] -> gpu2[12-21]'.")
    ] = None,
    dilation: Annotated[
        float | None,
        typer.Option(
            min=0.0001,
            help="Host seconds per emulated second (default: chosen from the devices). Below 1 compresses the "
            "clock: slow enclaves keep their emulated speed, devices too fast to keep up count what they took.",
        ),
    ] = None,
    slowdown: Annotated[
        list[str] | None,
        typer.Option(help="Emulate a device getting slower mid-stream: DEVICE=FACTOR[@FRAME] (repeatable)."),
    ] = None,
    repartition_threshold: Annotated[
        float, typer.Option(min=0.01, help="Re-plan when a stage's time is off its prediction by more than this...")
    ] = 0.2,
    repartition_chunks: Annotated[int, typer.Option(min=1, help="...for this many chunks in a row.")] = 3,
    no_repartition: Annotated[bool, typer.Option("--no-repartition", help="Keep the first placement.")] = False,
    kms: Annotated[
        str | None, typer.Option(help="Use a running key service (`serdab kms start`) instead of an embedded one.")
    ] = None,
    frames: Annotated[int | None, typer.Option(min=1, help="Stop after this many frames of the input.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Results as JSON Lines, one line per frame, written as each frame is answered.")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue a stopped run: skip the frames this results file answers (same model and input, "
            "checked) and append the rest to it."
        ),
    ] = None,
    bad_input: Annotated[
        BadInput,
        typer.Option(
            help="A file that does not decode: skip (a result line says why, the rest runs) or refuse (check "
            "every file first and run nothing if one is bad)."
        ),
    ] = BadInput.SKIP,
    keep_run_dir: Annotated[
        bool,
        typer.Option(
            "--keep-run-dir",
            help="Keep the run directory (stage images, worker logs, key-service store) instead of removing it.",
        ),
    ] = False,
    fault_budget: Annotated[
        int, typer.Option(min=0, help="Restarts a device may need within --fault-window before it is given up.")
    ] = 3,
    fault_window: Annotated[float, typer.Option(min=1.0, help="Seconds over which --fault-budget counts.")] = 120.0,
    executor: Annotated[
        ExecutorKind,
        typer.Option(help="Where workers run: local (processes on this host) or ray (actors placed by device)."),
    ] = ExecutorKind.LOCAL,
    address: Annotated[
        str,
        typer.Option(
            help="With --executor ray: empty (the default) connects to RAY_ADDRESS or a cluster running here and "
            "starts a local one otherwise, as ray.init() does; auto (a running cluster only), ray://HOST:PORT, "
            "or local (always a new one).",
            show_default=False,
        ),
    ] = "",
    audit: AuditOpt = None,
    input_shape: InputShapeOpt = None,
    evidence: EvidenceOpt = None,
    blind: BlindOpt = None,
    integrity: IntegrityOpt = True,
    blind_helper: BlindHelperOpt = None,
    tamper: Annotated[
        list[str] | None,
        typer.Option(
            help="Fault injection with --blind: a helper answers one element wrong from a frame on, DEVICE@FRAME "
            "(repeatable); the enclave's check (--integrity) catches it and the run charges that device."
        ),
    ] = None,
    json_path: JsonOpt = None,
) -> None:
    """Run MODEL as a pipeline on the cluster: enclaves first, untrusted accelerators once the tensor is private.

    Plans (or takes --placement), refuses a placement that breaks the privacy policy, starts a key
    service and one worker per device (trusted stages in attested enclaves, their weights
    released only to them), streams the input in chunks through links encrypted per hop, and
    prints measured frame latency, period and chunk time beside the cost model's prediction.
    Device speeds and links are emulated from the cluster file unless --native (docs/runtime.md).
    """
    from serdab.cluster import load_cluster
    from serdab.profile import cached_profile
    from serdab.runtime.frames import open_source
    from serdab.runtime.manager import ApplicationManager, RunOptions
    from serdab.runtime.repartition import Repartitioner
    from serdab.runtime.results import read_answered, sort_by_frame

    use_evidence(evidence)
    spec = load_cluster(cluster)
    slowdowns = dict(parse_slowdown(s) for s in slowdown or [])
    for device in slowdowns:
        if device not in spec.names:
            raise ConfigError(f"--slowdown names {device!r}, not a device of {spec.name} ({', '.join(spec.names)})")
    check_blind(blind, blind_helper, spec.names)
    tampering = dict(_parse_tamper(t, spec.names) for t in tamper or [])
    if tampering and blind is None:
        raise ConfigError("--tamper injects wrong answers of a blinding helper: it needs --blind")
    opened = open_model(model, input_shape)
    source = open_source(input, opened.chain.input_shape, limit=frames, bad_input=bad_input)
    with progress_bar(f"profiling {opened.name}", len(opened.chain.blocks) + 1) as update:
        prof, _ = cached_profile(opened.chain, opened.name, progress=update)
    leakage = None
    from serdab.privacy.policy import parse_policy

    if parse_policy(privacy).needs_leakage:
        from serdab.privacy import default_images, measure_leakage

        images = default_images(grey_digits=opened.chain.input_shape[1] == 1)
        with progress_bar(f"leakage of {opened.name}", len(images)) as update:
            leakage = measure_leakage(opened.chain, opened.name, images, progress=update)
    blinding = blind_costs(opened.chain, prof, blind, integrity, blind_helper)
    options = RunOptions(
        chunk=chunk,
        strategy=strategy,
        privacy=privacy,
        trusted_tail=trusted_tail,
        replicate=replicate,
        native=native,
        dilation=dilation,
        placement=placement,
        slowdowns=slowdowns,
        kms_url=kms,
        repartition=None if no_repartition else Repartitioner(repartition_threshold, repartition_chunks),
        fault_budget=fault_budget,
        fault_window_s=fault_window,
        keep_run_dir=keep_run_dir,
        blind=blinding,
        tamper=tampering,
    )
    audited = read_audit(audit, parse_policy(privacy), opened.chain, opened.name)
    manager = ApplicationManager(opened.chain, opened.name, prof, spec, options, leakage=leakage, audit=audited)
    first = manager.plan()  # fails here, before any process starts, on a bad or refused placement
    if executor is ExecutorKind.RAY:  # after planning: a refused placement never starts Ray
        from serdab.runtime.executor import get_executor

        ray = get_executor(executor, address=address, cluster=spec)
        manager = ApplicationManager(
            opened.chain, opened.name, prof, spec, options, executor=ray, leakage=leakage, audit=audited
        )
    console.print(
        f"[bold]{opened.name}[/bold] on {spec.name}: {first.describe()} (policy {manager.policy.spec}); "
        f"input {source.describe()}, chunks of {chunk}"
        + (f"; workers on Ray ({address or 'ray.init() default'})" if executor is ExecutorKind.RAY else "")
    )
    if resume is not None and out is not None and out.resolve() != resume.resolve():
        raise ConfigError(f"--resume appends to {resume}; leave out --out or give the same file")
    out = resume or out
    answered = read_answered(resume, opened.name) if resume is not None else None
    todo = answered.skip(source.frames()) if answered else source.frames()
    total = source.count - len(answered.frames) if answered and source.count is not None else source.count
    if answered and answered.frames:
        console.print(f"resuming: {len(answered.frames)} frames already answered in {resume}")
    sink = out.open("a" if resume else "w") if out else None
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
    )
    try:
        with Progress(*columns, console=err_console, transient=False) as bar, _stop_on_sigterm():
            task = bar.add_task("starting key service and workers", total=total, info="")

            def on_result(line: dict[str, Any]) -> None:
                if sink:
                    sink.write(json.dumps(line) + "\n")
                    sink.flush()

            def on_progress(update: dict[str, Any]) -> None:
                bar.update(task, completed=update["done"], description="frames", info=_progress_text(update))

            summary = manager.run(todo, total=total, on_result=on_result, progress=on_progress)
    except (KeyboardInterrupt, RunError) as stopped:
        _stopped(manager.summary, stopped, out, json_path, len(answered.frames) if answered else 0)
        if isinstance(stopped, KeyboardInterrupt):
            raise typer.Exit(130) from None
        raise
    finally:
        if sink:
            sink.close()
    if resume is not None:
        sort_by_frame(resume)
    console.print(f"{summary.frames} frames in {summary.wall_s:.1f} s host time; {summary.emulation}")
    if summary.attested:
        kinds = sorted({f"{e['kind']} evidence under the {e['root']}" for e in summary.attested.values()})
        console.print(f"enclaves attested: {', '.join(sorted(summary.attested))} ({'; '.join(kinds)})")
    for switch in summary.switches:
        console.print(
            f"re-partitioned after chunk {switch['after_chunk']} (before frame {switch['before_frame']}): "
            f"{switch['from']} -> {switch['to']}: {switch['reason']}"
        )
    for bad in summary.skipped:
        console.print(f"skipped frame {bad['frame']} ({bad['source']}): {bad['error']}")
    for fault in summary.faults:
        at = f"fault at frame {fault['frame']}" if fault.get("frame") is not None else "fault"
        console.print(f"{at}: {fault['reason']}; {fault['action']}")
    console.print(_summary_table(summary))
    console.print(_stage_table(summary))
    for line in _hop_lines(summary):
        console.print(line)
    if out:
        err_console.print(f"wrote {out}")
    if summary.run_dir:
        err_console.print(f"run directory kept: {summary.run_dir}")
    write_json(json_path, summary)
