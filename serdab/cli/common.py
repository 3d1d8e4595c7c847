"""Pieces every CLI command shares: options, model opening, progress bars, JSON output."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from serdab.graph import NamedChain
    from serdab.graph.chain import Chain
    from serdab.plan import BlindCosts
    from serdab.privacy.audit import AuditReport
    from serdab.privacy.policy import PrivacyPolicy

__all__ = [
    "AuditOpt",
    "BlindHelperOpt",
    "BlindOpt",
    "IntegrityOpt",
    "blind_costs",
    "check_blind",
    "EvidenceOpt",
    "InputShapeOpt",
    "JsonOpt",
    "ModelArg",
    "PrivacyOpt",
    "ReplicateOpt",
    "TrustedTailOpt",
    "console",
    "evidence_option",
    "open_model",
    "progress_bar",
    "read_audit",
    "use_evidence",
    "write_json",
]

console = Console()
if not console.is_terminal:  # pipes and CI logs: rich would assume 80 columns and wrap the tables
    console = Console(width=132)
err_console = Console(stderr=True)

ModelArg = Annotated[str, typer.Argument(help="Zoo model name (see `serdab models`) or path to an .onnx file.")]
InputShapeOpt = Annotated[
    str | None,
    typer.Option("--input-shape", help="Input shape N,C,H,W or C,H,W; needed when the file leaves H or W dynamic."),
]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON to this path.")]
PrivacyOpt = Annotated[
    str,
    typer.Option(
        help="What an untrusted device may receive: trusted-only, resolution:20, pearson:D, ssim:D, mse:D, "
        "attack-ssim:X, attack-psnr:Y (attack-* read --audit)."
    ),
]
AuditOpt = Annotated[
    Path | None,
    typer.Option(help="A `serdab audit --json` report, for the attack-ssim / attack-psnr policies."),
]
ReplicateOpt = Annotated[
    bool, typer.Option("--replicate", help="Let a stage run round robin on several identical devices.")
]
TrustedTailOpt = Annotated[
    bool, typer.Option("--trusted-tail", help="The last stage runs on a trusted device: labels never leave enclaves.")
]
BlindOpt = Annotated[
    str | None,
    typer.Option(
        "--blind",
        help="Let an untrusted GPU compute an enclave stage's linear layers blinded (docs/blinded.md); where W r "
        "comes from: in-stream (the enclave, per frame), pool (precomputed, sealed outside) or outsourced "
        "(a second device, --blind-helper; assumes it does not collude with the GPU).",
    ),
]
IntegrityOpt = Annotated[
    bool,
    typer.Option("--integrity/--no-integrity", help="With --blind: check every GPU answer (Freivalds) in the enclave."),
]
BlindHelperOpt = Annotated[
    str | None, typer.Option("--blind-helper", help="With --blind outsourced: the device that computes W r.")
]
EvidenceOpt = Annotated[
    str | None,
    typer.Option(
        "--evidence",
        help="Attestation format: aws-nitro or amd-sev-snp. Simulated enclaves attest in it and verifiers "
        "expect it (default: $SERDAB_TEE_EVIDENCE, else aws-nitro).",
    ),
]


def evidence_option(kind: str | None) -> str:
    """The ``--evidence`` given (or the deployment's), checked: an unknown kind is a usage error."""
    from serdab.errors import AttestationError, ConfigError
    from serdab.tee.evidence import evidence_kind

    try:
        return evidence_kind(kind)
    except AttestationError as exc:
        raise ConfigError(f"--evidence: {exc}") from None


def use_evidence(kind: str | None) -> str:
    """Make ``kind`` this process's (and its children's) evidence format; the one in force."""
    import os

    from serdab.tee.evidence import EVIDENCE_ENV

    os.environ[EVIDENCE_ENV] = chosen = evidence_option(kind)
    return chosen


def read_audit(path: Path | None, policy: PrivacyPolicy, chain: Chain | None, model_name: str) -> AuditReport | None:
    """The audit file for an attack-* policy, checked against the model being planned."""
    if path is None:
        return None
    from serdab.privacy.audit import check_audit_for, load_audit, model_digest

    report = load_audit(path)
    if chain is not None:
        check_audit_for(report, model_name, len(chain.blocks), model_digest(chain))
    elif report.model != model_name:
        from serdab.errors import AuditError

        raise AuditError(f"the audit file is for {report.model}, not {model_name}: audit the model you plan")
    if not policy.needs_audit:
        err_console.print(f"[yellow]note: --audit is read only by attack-* policies, not {policy.spec}[/yellow]")
    return report


def open_model(model: str, input_shape: str | None, batch: int | None = None) -> NamedChain:
    """Open a model for a command, with a spinner while exporting or binding shapes."""
    from serdab.graph import open_chain, parse_shape

    shape = parse_shape(input_shape) if input_shape else None
    with err_console.status(f"loading {model} ..."):
        return open_chain(model, shape, batch)


def check_blind(mode: str | None, helper: str | None, devices: list[str]) -> None:
    """Refuse a bad --blind / --blind-helper before any profiling: ConfigError."""
    from serdab.blind import mode_error
    from serdab.errors import ConfigError

    if mode is None:
        if helper is not None:
            raise ConfigError("--blind-helper needs --blind outsourced")
        return
    error = mode_error(mode, helper)
    if error:
        raise ConfigError(f"--blind: {error}")
    if helper is not None and helper not in devices:
        raise ConfigError(f"--blind-helper {helper}: not a device of the cluster ({', '.join(devices)})")


def blind_costs(chain: Any, profile: Any, mode: str | None, integrity: bool, helper: str | None) -> BlindCosts | None:
    """The cost of blinding every block in ``mode`` (measured on this host once, then cached); None without
    --blind. Options checked first with ``check_blind``."""
    if mode is None:
        return None
    from serdab.blind.profile import cached_blinding
    from serdab.plan import BlindCosts

    with progress_bar(f"blinding costs of {profile.model}", len(profile.blocks)) as update:
        measured = cached_blinding(chain, profile, progress=update)
    return BlindCosts.from_profile(measured, mode, integrity, helper)


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int, int, str], None]]:
    """A rich progress bar on stderr; yields a ``progress(done, total, label)`` callback."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[label]}"),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(description, total=total, label="")

        def update(done: int, total_now: int, label: str) -> None:
            bar.update(task, completed=done, total=total_now, label=label)

        yield update


def write_json(path: Path | None, payload: Any) -> None:
    """Write ``payload`` (a pydantic model or plain data) as indented JSON, if a path was given."""
    if path is None:
        return
    text = payload.model_dump_json(indent=2) if hasattr(payload, "model_dump_json") else json.dumps(payload, indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    err_console.print(f"wrote {path}")


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"
