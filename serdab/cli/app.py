"""The `serdab` command: a thin typer app; each command lives in its own module.

Every ``SerdabError`` becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from serdab.cli.bench_cmd import bench_app
from serdab.cli.demo_cmd import demo
from serdab.cli.he_cmd import he_app
from serdab.cli.kms_cmd import kms_app
from serdab.cli.leakage_cmd import leakage
from serdab.cli.models_cmd import models
from serdab.cli.partition_cmd import partition
from serdab.cli.plan_cmd import plan
from serdab.cli.profile_cmd import profile
from serdab.cli.run_cmd import run
from serdab.cli.schedule_cmd import schedule_app
from serdab.cli.tee_cmd import attest, build_image_cmd, measure
from serdab.errors import SerdabError

__all__ = ["app", "main"]

app = typer.Typer(
    name="serdab",
    help="Serdab: run deep neural networks on private images across enclaves and untrusted accelerators.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(models)
app.command()(profile)
app.command()(partition)
app.command()(leakage)
app.command()(plan)
app.command()(run)
app.command()(demo)
app.command("build-image")(build_image_cmd)
app.command()(measure)
app.command()(attest)
app.add_typer(kms_app, name="kms")
app.add_typer(schedule_app, name="schedule")
app.add_typer(he_app, name="he")
app.add_typer(bench_app, name="bench")


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code (2 for any error the user can fix)."""
    try:
        app(args=argv)  # standalone: typer prints usage errors and --help itself, then exits
    except SerdabError as exc:
        print(f"serdab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("serdab: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
