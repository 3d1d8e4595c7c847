"""Profiling cost of every zoo model, the sum-of-blocks error, and a 60-block model against the 1-minute target."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import nn  # noqa: E402

from serdab.bench import new_table  # noqa: E402
from serdab.graph import open_chain  # noqa: E402
from serdab.models import ZOO  # noqa: E402
from serdab.profile import profile_chain  # noqa: E402

__all__ = ["QUICK_MODELS", "deep_plain_cnn", "plot", "report", "run", "run_profile_bench"]

QUICK_MODELS = ["lenet5", "cifar_cnn", "he_cnn6", "he_cnn5", "resnet18"]


def deep_plain_cnn(layers: int = 30) -> nn.Module:
    """A plain conv net of ``layers`` conv+ReLU pairs (2 x layers blocks) on 3x112x112, for the 60-block target."""
    modules: list[nn.Module] = [nn.Conv2d(3, 32, 3, padding=1), nn.ReLU()]
    for _ in range(layers - 1):
        modules += [nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*modules)


def run_profile_bench(
    models: list[str], repeat: int, threads: int, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    rows = []
    targets = [(name, name, None) for name in models] + [("deep_plain_cnn_60", deep_plain_cnn(30), (3, 112, 112))]
    for label, model, shape in targets:
        if progress:
            progress(label)
        started = time.perf_counter()
        opened = open_chain(model, shape)
        load_s = time.perf_counter() - started
        profile = profile_chain(opened.chain, label, repeat=repeat, threads=threads)
        rows.append(
            {
                "model": label,
                "blocks": len(profile.blocks),
                "input_shape": profile.input_shape,
                "load_s": round(load_s, 3),
                "profiling_s": round(profile.profiling_s, 3),
                "whole_ms": round(profile.whole_ms, 3),
                "sum_blocks_ms": round(profile.sum_blocks_ms, 3),
                "sum_error": round(profile.sum_error, 4),
            }
        )
    return {"repeat": repeat, "threads": threads, "rows": rows, "zoo": list(ZOO)}


def plot(result: dict[str, Any], path: Path) -> None:
    rows = result["rows"]
    assert isinstance(rows, list)
    names = [r["model"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.barh(names, [r["profiling_s"] for r in rows], color="#4472c4")
    left.axvline(60, color="red", linestyle="--", label="1-minute target (60-block model)")
    left.set_xlabel("profiling time (s)")
    left.legend(loc="lower right")
    right.barh(names, [100 * r["sum_error"] for r in rows], color="#ed7d31")
    right.axvline(15, color="red", linestyle="--")
    right.axvline(-15, color="red", linestyle="--", label="+-15% (ResNet-18 target)")
    right.set_xlabel("sum of blocks vs whole model (%)")
    right.legend(loc="lower right")
    fig.suptitle(f"serdab bench profile: ONNX Runtime, {result['threads']} thread(s), median of {result['repeat']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(progress: Callable[[str], None], *, repeat: int = 30, threads: int = 1, quick: bool = False) -> dict[str, Any]:
    """Every zoo model (the small ones and ResNet-18 with ``quick``) and the 60-block plain CNN."""
    return run_profile_bench(QUICK_MODELS if quick else list(ZOO), repeat, threads, progress=progress)


def report(result: dict[str, Any]) -> list[Any]:
    table = new_table(
        f"profiling cost (ONNX Runtime, {result['threads']} thread(s), median of {result['repeat']})",
        ("model", "blocks", "load s", "profiling s", "whole ms", "sum of blocks ms", "error"),
        left=("model",),
    )
    for r in result["rows"]:
        table.add_row(
            r["model"],
            str(r["blocks"]),
            f"{r['load_s']:.1f}",
            f"{r['profiling_s']:.1f}",
            f"{r['whole_ms']:.2f}",
            f"{r['sum_blocks_ms']:.2f}",
            f"{100 * r['sum_error']:+.1f}%",
        )
    return [table]
