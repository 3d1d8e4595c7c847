"""Serving benchmarks (seeds 001 and 002) and the latency plot `serdab load --json` writes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from serdab.serve.load import Sample  # noqa: E402

__all__ = ["plot_latency"]


def plot_latency(samples: Sequence[Sample], path: Path, title: str) -> None:
    """Latency of each request over the run (secure and public apart), failures marked."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for secure, colour, label in ((True, "tab:red", "secure (enclave)"), (False, "tab:blue", "public")):
        rows = [s for s in samples if s.secure == secure and s.ok]
        if rows:
            ax.scatter([s.start_s for s in rows], [1000 * s.latency_s for s in rows], s=6, c=colour, label=label)
    failed = [s for s in samples if not s.ok]
    if failed:
        ax.scatter([s.start_s for s in failed], [0] * len(failed), marker="x", c="black", label="failed")
    ax.set_xlabel("request start (s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
