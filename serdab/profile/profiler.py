"""Block profiler: per-block latency on this host with ONNX Runtime, plus static costs.

Each block runs as its own ONNX Runtime session fed with the real output of the block before
it, so the measured time is what a stage holding that block alone would cost. Sessions use a
fixed number of intra-op threads and sequential execution; timings are the median and p95 of
``repeat`` runs after ``warmup`` runs. The sum of block times is compared with the whole model
timed the same way: the gap is the price of cutting (lost operator fusion, per-call overhead).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, Field, model_validator

from serdab.errors import ProfileFileError
from serdab.graph.chain import Chain
from serdab.graph.stages import extract_stage
from serdab.onnxrt import make_session
from serdab.profile.counts import (
    block_macs,
    block_param_bytes,
    block_peak_activation_bytes,
    initializer_bytes,
)
from serdab.validation import load_json_model

__all__ = ["BlockProfile", "Profile", "ProfileFileError", "Progress", "latency_stats", "profile_chain"]

Progress = Callable[[int, int, str], None]
"""progress(done, total, label): called after each timed unit (blocks, then the whole model)."""


class BlockProfile(BaseModel):
    """One block of the profile contract; ``ops`` and ``peak_activation_bytes`` are optional extras.

    Defaults when absent: ``ops`` 1 (a block has at least one node) and ``peak_activation_bytes``
    equal to ``out_bytes`` (the block's output must fit at least), so a profile written to the
    documented contract alone plans (memory checks then rest on weights + outputs).
    """

    index: int
    name: str
    ops: int = 1
    out_shape: list[int]
    out_bytes: int
    resolution: list[int] | None
    macs: int
    params_bytes: int
    peak_activation_bytes: int = -1
    latency_ms: float
    latency_p95_ms: float

    @model_validator(mode="after")
    def _peak_defaults_to_output(self) -> BlockProfile:
        if self.peak_activation_bytes < 0:
            self.peak_activation_bytes = self.out_bytes
        return self


class Profile(BaseModel):
    """The profile JSON contract read by the planners (extra fields beyond the issue's are ours)."""

    model: str
    input_shape: list[int]
    input_bytes: int
    whole_ms: float
    whole_p95_ms: float = 0.0
    sum_blocks_ms: float = 0.0
    sum_error: float = Field(0.0, description="(sum of blocks - whole) / whole")
    batch: int = 1
    threads: int = 1
    repeat: int = 30
    host: dict[str, str] = Field(default_factory=dict)
    profiling_s: float = 0.0
    blocks: list[BlockProfile]

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        """Read a profile JSON, with a one-line error naming the first bad field."""
        return load_json_model(cls, path, "profile", "a Serdab profile", ProfileFileError)


def latency_stats(samples_s: list[float]) -> tuple[float, float]:
    """(median, p95) in milliseconds."""
    ms = np.asarray(samples_s) * 1000.0
    return float(np.median(ms)), float(np.percentile(ms, 95))


def _time_session(
    session: ort.InferenceSession,
    feed: dict[str, np.ndarray],
    warmup: int,
    repeat: int,
    clock: Callable[[], float],
) -> tuple[list[float], list[np.ndarray]]:
    outputs: list[np.ndarray] = []
    for _ in range(warmup):
        outputs = session.run(None, feed)
    samples = []
    for _ in range(repeat):
        start = clock()
        outputs = session.run(None, feed)
        samples.append(clock() - start)
    return samples, outputs


def _resolution(shape: tuple[int, ...]) -> list[int] | None:
    return [int(shape[2]), int(shape[3])] if len(shape) == 4 else None


def profile_chain(
    chain: Chain,
    model_name: str,
    *,
    repeat: int = 30,
    warmup: int = 5,
    threads: int = 1,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.perf_counter,
    seed: int = 0,
) -> Profile:
    """Time every block and the whole model; ``repeat`` >= 1 (the CLI defaults to 30)."""
    if repeat < 1 or warmup < 0 or threads < 1:
        raise ValueError(f"repeat ({repeat}) and threads ({threads}) must be >= 1, warmup ({warmup}) >= 0")
    started = clock()
    batch = chain.input_shape[0]
    rng = np.random.default_rng(seed)
    frame = rng.standard_normal(chain.input_shape).astype(np.float32)
    total = len(chain.blocks) + 1
    sizes = initializer_bytes(chain)
    blocks: list[BlockProfile] = []
    current = frame
    for block in chain.blocks:
        session = make_session(extract_stage(chain, block.index, block.index), threads)
        samples, outputs = _time_session(session, {session.get_inputs()[0].name: current}, warmup, repeat, clock)
        current = outputs[0]
        median, p95 = latency_stats(samples)
        out_shape = chain.out_shape(block.index)
        blocks.append(
            BlockProfile(
                index=block.index,
                name=block.name,
                ops=len(block.nodes),
                out_shape=list(out_shape),
                out_bytes=chain.tensor_bytes(block.output),
                resolution=_resolution(out_shape),
                macs=block_macs(chain, block.index) // batch,
                params_bytes=block_param_bytes(chain, block.index, sizes),
                peak_activation_bytes=block_peak_activation_bytes(chain, block.index),
                latency_ms=median,
                latency_p95_ms=p95,
            )
        )
        if progress:
            progress(block.index + 1, total, block.name)
    whole = make_session(chain.model, threads)
    samples, _ = _time_session(whole, {chain.input_name: frame}, warmup, repeat, clock)
    whole_ms, whole_p95 = latency_stats(samples)
    if progress:
        progress(total, total, "whole model")
    sum_ms = sum(b.latency_ms for b in blocks)
    return Profile(
        model=model_name,
        input_shape=list(chain.input_shape),
        input_bytes=chain.tensor_bytes(chain.input_name),
        whole_ms=whole_ms,
        whole_p95_ms=whole_p95,
        sum_blocks_ms=sum_ms,
        sum_error=(sum_ms - whole_ms) / whole_ms,
        batch=batch,
        threads=threads,
        repeat=repeat,
        host={
            "machine": platform.machine(),
            "processor": platform.processor() or "unknown",
            "onnxruntime": ort.__version__,
        },
        profiling_s=clock() - started,
        blocks=blocks,
    )
