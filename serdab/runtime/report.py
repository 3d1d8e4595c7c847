"""What a run reports: per chunk, measured L, P and T(n) beside the cost model's prediction.

Measured times are host seconds divided by the run's dilation (emulated seconds; host seconds
in native mode). ``T(n)`` runs from the first frame of the chunk leaving the source to the last
result arriving; ``L`` is one frame end to end through the empty pipeline (eq. 1's latency):
the median of probe frames sent one at a time when the placement was deployed; ``P`` is the
mean gap between results after the first. The chunk's first frame is reported too: on this host
it shares the cores with the transport of the frames streaming behind it (every emulated device
and the source run on the same few cores), so it pays for their work as well.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

__all__ = ["ChunkReport", "HopReport", "RunSummary", "StageReport", "top_k"]


class HopReport(BaseModel):
    """One hop of a placement: the bytes per frame its links carried beside what the cost model charges."""

    placement: str
    src: list[str]
    dst: list[str]
    cut: int | None  # the tensor it carries (None: the input frame)
    frames: int
    measured_bytes: float  # per frame, on the socket
    predicted_bytes: int


class StageReport(BaseModel):
    stage: int
    devices: list[str]
    blocks: str
    predicted_ms: float
    measured_ms: float  # median per frame on one replica
    utilisation: float  # busy share of the chunk's span, per replica


class ChunkReport(BaseModel):
    index: int
    frames: int
    first_frame: int
    placement: str
    interrupted: bool = Field(description="a worker failed during the chunk: its times include the recovery")
    measured_chunk_s: float
    measured_latency_s: float = Field(description="median of probe frames through the empty pipeline")
    first_frame_latency_s: float = Field(0.0, description="the chunk's first frame, other frames right behind it")
    measured_period_s: float = Field(description="mean gap between results after the first")
    measured_path_latencies_s: list[float] = Field(default_factory=list, description="probes down each replica path")
    predicted_chunk_s: float
    predicted_latency_s: float
    predicted_period_s: float = Field(description="the same mean gap from the model: (T(n) - L) / (n - 1)")
    predicted_path_latencies_s: list[float] = Field(default_factory=list)
    paths: list[str] = Field(default_factory=list, description="each replica path's devices: 'tee2 -> e1'")
    steady_period_s: float = Field(0.0, description="the model's period P of a long stream (eq. 2)")
    predicted_bottleneck: str
    simulated_chunk_s: float = Field(description="the event simulator's T(n): discrete frames, shared links")
    stages: list[StageReport]

    @property
    def measured_bottleneck(self) -> str:
        busiest = max(self.stages, key=lambda s: s.utilisation)
        return "+".join(busiest.devices)


class RunSummary(BaseModel):
    model: str
    cluster: str
    policy: str
    chunk: int
    emulation: str = ""
    dilation: float = 1.0
    frames: int = 0
    answered: int = 0  # result lines handed on (equals frames unless the run stopped early)
    answered_frames: str = ""  # which, in short form: "0-41, 45"
    run_dir: str | None = None  # kept for a post-mortem (--keep-run-dir)
    wall_s: float = 0.0
    placements: list[str] = Field(default_factory=list)
    chunks: list[ChunkReport] = Field(default_factory=list)
    switches: list[dict] = Field(default_factory=list)
    faults: list[dict] = Field(default_factory=list)
    hops: list[HopReport] = Field(default_factory=list)
    skipped: list[dict] = Field(default_factory=list)  # bad input: frame, source, why
    attested: dict[str, dict] = Field(default_factory=dict)  # enclave device -> its verified evidence (kind, root)

    def steady(self) -> list[ChunkReport]:
        """Full-size, uninterrupted chunks of the last placement: what measured-vs-predicted compares."""
        last = self.placements[-1] if self.placements else None
        full = [c for c in self.chunks if c.placement == last and not c.interrupted and c.frames == self.chunk]
        return full or [c for c in self.chunks if c.placement == last and not c.interrupted] or self.chunks[-1:]

    def measured_vs_predicted(self) -> dict[str, dict[str, float]]:
        """Means over the steady chunks: {"L": {"measured": s, "predicted": s}, "P": ..., "T": ...}; ``L_first``
        is the chunks' first frames against the same predicted L."""
        chunks = self.steady()
        if not chunks:
            return {}

        def mean(attr: str) -> float:
            return float(np.mean([getattr(c, attr) for c in chunks]))

        rows = {
            name: {"measured": mean(f"measured_{attr}_s"), "predicted": mean(f"predicted_{attr}_s")}
            for name, attr in (("L", "latency"), ("P", "period"), ("T", "chunk"))
        } | {
            "L_first": {"measured": mean("first_frame_latency_s"), "predicted": mean("predicted_latency_s")},
            "T_simulated": {"measured": mean("measured_chunk_s"), "predicted": mean("simulated_chunk_s")},
        }
        last = chunks[-1]
        if len(last.measured_path_latencies_s) > 1:  # replicas: each path's probes beside its prediction
            for j, (measured, predicted) in enumerate(
                zip(last.measured_path_latencies_s, last.predicted_path_latencies_s, strict=False)
            ):
                rows[f"L_path{j}: {last.paths[j]}"] = {"measured": measured, "predicted": predicted}
        return rows


def top_k(logits: np.ndarray, k: int = 5) -> list[dict[str, float]]:
    """The k best classes with softmax scores."""
    flat = np.asarray(logits, dtype=np.float64).reshape(-1)
    shifted = np.exp(flat - flat.max())
    probs = shifted / shifted.sum()
    best = np.argsort(-probs)[:k]
    return [{"class": int(i), "score": round(float(probs[i]), 6)} for i in best]
