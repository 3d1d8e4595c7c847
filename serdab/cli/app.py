"""The `serdab` command: a thin app whose commands load on first use, so `serdab --help` starts fast.

Each command lives in its own module (``serdab.cli.<name>_cmd``) and is imported only when it
runs (or its own ``--help`` is asked for); the top-level help lists the one-line summaries kept
here. Errors map to exit codes (``EXIT_CODES``): 2 for input the user can fix, 3 when a
security check refused something, 4 when a backend or service is unavailable; one line on
stderr, never a traceback.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer.core

from serdab.errors import SerdabError, exit_code

__all__ = ["COMMANDS", "cli", "main"]

# name -> (module, attribute, one-line help); the attribute is a command function or a Typer group
COMMANDS: dict[str, tuple[str, str, str]] = {
    "models": ("serdab.cli.models_cmd", "models", "The zoo: input size, parameters, MACs, which paper uses it."),
    "profile": ("serdab.cli.profile_cmd", "profile", "Per-block latency, bytes out, resolution, MACs; cached."),
    "partition": ("serdab.cli.partition_cmd", "partition", "Cut a model into runnable stage files at clean cuts."),
    "leakage": ("serdab.cli.leakage_cmd", "leakage", "How much each cut's tensor reveals of the input image."),
    "audit": ("serdab.cli.audit_cmd", "audit", "What reconstruction attacks rebuild of the input from each cut."),
    "plan": ("serdab.cli.plan_cmd", "plan", "Place a model's blocks on enclaves and accelerators; predict L, P, T(n)."),
    "run": ("serdab.cli.run_cmd", "run", "Run a placement for real: enclave and untrusted workers, encrypted links."),
    "serve": ("serdab.cli.serve_cmd", "serve", "Serve a model from enclave and public replicas behind one gateway."),
    "infer": ("serdab.cli.serve_cmd", "infer", "Classify images through a gateway: public, or attest-then-send."),
    "load": ("serdab.cli.serve_cmd", "load", "Load a gateway (closed or open loop): latency percentiles, throughput."),
    "stress": ("serdab.cli.serve_cmd", "stress", "Occupy emulated EPC on a serving host so its replicas page (S3ML)."),
    "demo": ("serdab.cli.demo_cmd", "demo", "Profile, partition, plan and run ResNet-18 on the paper cluster."),
    "build-image": ("serdab.cli.tee_cmd", "build_image_cmd", "Build an enclave image from code and weights."),
    "measure": ("serdab.cli.tee_cmd", "measure", "The SHA-384 PCRs of an enclave image."),
    "attest": ("serdab.cli.tee_cmd", "attest", "Fetch, verify and print an enclave's attestation document."),
    "kms": ("serdab.cli.kms_cmd", "kms_app", "The key service: releases keys only to attested enclaves."),
    "schedule": ("serdab.cli.schedule_cmd", "schedule_app", "Online placement of CNN layers on IoT devices (RL-PDNN)."),
    "he": ("serdab.cli.he_cmd", "he_app", "Homomorphic-encryption inference: train, serve, infer."),
    "bench": ("serdab.cli.bench_cmd", "bench_app", "Benchmarks: each writes JSON and a PNG under bench/results/."),
}


class _LazyGroup(typer.core.TyperGroup):
    """Typer's group, with commands imported on first use and the summaries above in the help."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, name: str) -> Any:
        entry = COMMANDS.get(name)
        if entry is None:
            return None
        import typer
        import typer.main

        module, attribute, _ = entry
        target = getattr(importlib.import_module(module), attribute)
        if isinstance(target, typer.Typer):
            command = typer.main.get_command(target)
        else:
            single = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
            single.command(name)(target)
            command = typer.main.get_command(single)
        command.name = name
        return command

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, summary) for name, (_, _, summary) in COMMANDS.items()])


cli = _LazyGroup(
    name="serdab",
    help="Serdab: run deep neural networks on private images across enclaves and untrusted accelerators.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["--help", "-h"]},
)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code (see ``serdab.errors.exit_code``)."""
    try:
        cli.main(args=argv, prog_name="serdab", standalone_mode=True)
    except SerdabError as exc:
        print(f"serdab: error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print("serdab: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
