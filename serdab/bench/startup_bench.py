"""How fast the CLI starts and what each entry point imports (issue 11: a light import graph).

Each command runs in a fresh interpreter, ``repeat`` times; wall and CPU seconds are medians. The
import check lists which heavy packages each entry point loads.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from serdab.bench import new_table  # noqa: E402

__all__ = ["COMMANDS", "plot", "report", "run"]

COMMANDS = {
    "serdab --help": ["-m", "serdab.cli.app", "--help"],
    "serdab attest --help": ["-m", "serdab.cli.app", "attest", "--help"],
    "serdab run --help": ["-m", "serdab.cli.app", "run", "--help"],
    "serdab plan --help": ["-m", "serdab.cli.app", "plan", "--help"],
    "import serdab": ["-c", "import serdab"],
}
HEAVY = ("torch", "onnxruntime", "onnx", "skimage", "sklearn", "matplotlib", "tenseal")
ENTRY_POINTS = {
    "import serdab": "import serdab",
    "serdab.crypto + serdab.tee": "import serdab.crypto, serdab.tee",
    "stage worker (engine, KMS client, NSM)": "import serdab.runtime.engine, serdab.kms.client, serdab.tee.nsm",
    "key service enclave": "import serdab.kms.enclave",
    "CLI app (serdab --help)": "from serdab.cli.app import cli",
}


def _timed(args: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], capture_output=True, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run(progress: Callable[[str], None] = lambda _: None, *, repeat: int = 7) -> dict[str, Any]:
    """CLI start-up time and the heavy packages each entry point imports."""
    progress("timing fresh interpreters")
    rows = []
    for label, args in COMMANDS.items():
        _timed(args)  # warm the file cache
        samples = [_timed(args) for _ in range(repeat)]
        rows.append(
            {
                "command": label,
                "wall_s": statistics.median(s[0] for s in samples),
                "cpu_s": statistics.median(s[1] for s in samples),
            }
        )
    imports = {}
    for label, code in ENTRY_POINTS.items():
        probe = f"import sys, json\n{code}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
        loaded = set(json.loads(out.strip().splitlines()[-1]))
        imports[label] = sorted(loaded & set(HEAVY))
    return {"repeat": repeat, "rows": rows, "heavy_imports": imports}


def plot(result: dict[str, Any], path: Path) -> None:
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ys = range(len(rows))
    ax.barh([y + 0.2 for y in ys], [r["wall_s"] for r in rows], height=0.4, label="wall")
    ax.barh([y - 0.2 for y in ys], [r["cpu_s"] for r in rows], height=0.4, label="CPU")
    ax.axvline(0.5, color="grey", ls="--", lw=0.8)
    ax.set_yticks(list(ys), [r["command"] for r in rows])
    ax.set_xlabel("seconds (median, fresh interpreter)")
    ax.set_title("CLI start-up (dashed: the 0.5 s target)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(result: dict[str, Any]) -> list[Any]:
    table = new_table(
        f"start-up, median of {result['repeat']} fresh interpreters", ("command", "wall s", "CPU s"), left=("command",)
    )
    for r in result["rows"]:
        table.add_row(r["command"], f"{r['wall_s']:.3f}", f"{r['cpu_s']:.3f}")
    lines: list[Any] = [table]
    for label, heavy in result["heavy_imports"].items():
        loaded = ", ".join(heavy) if heavy else "none of torch, onnxruntime, onnx, scikit-image, scikit-learn"
        lines.append(f"{label}: loads {loaded}")
    return lines
