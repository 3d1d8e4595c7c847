"""A placement: contiguous stages of blocks, each on one device or round-robin on identical replicas.

Blocks are the profile's ``index`` values, ranges inclusive (``first``..``last``). Cut ``i`` is
the tensor block ``i`` outputs (as everywhere in Serdab, docs/partition.md). The cost model indexes
tensors by *boundary* ``b`` = 0..M, the one before block ``b``: boundary 0 is the input frame,
boundary ``b`` > 0 is cut ``b - 1`` (``crossing`` says which in words), boundary ``M`` the output.
``devices[0]`` of a replicated stage takes frame 0, ``devices[1]`` frame 1, and so on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["BlindedShare", "HopCost", "Placement", "PlanCost", "Stage", "StageCost", "crossing"]


def crossing(boundary: int) -> str:
    """The tensor at a boundary as users number it: "the input frame" or "the tensor at cut i (after block i)"."""
    return "the input frame" if boundary == 0 else f"the tensor at cut {boundary - 1} (after block {boundary - 1})"


@dataclass(frozen=True)
class Stage:
    """Blocks ``first``..``last`` on ``devices``; with a ``helper``, the stage's one (trusted) device runs them
    with every linear layer computed blinded by the untrusted ``helper`` (docs/blinded.md)."""

    devices: tuple[str, ...]
    first: int
    last: int
    helper: str | None = None

    @property
    def device(self) -> str:
        return self.devices[0]

    @property
    def replicas(self) -> int:
        return len(self.devices)


@dataclass(frozen=True)
class Placement:
    strategy: str
    stages: tuple[Stage, ...]

    @property
    def devices(self) -> list[str]:
        return [d for s in self.stages for d in s.devices]

    @property
    def helpers(self) -> list[str]:
        return [s.helper for s in self.stages if s.helper]

    def describe(self) -> str:
        """'tee1[0-11] -> gpu2[12-21]' (replicas joined with '+', a blinded stage 'tee1(blinded:gpu0)[0-5]')."""
        return " -> ".join(
            f"{'+'.join(s.devices)}{f'(blinded:{s.helper})' if s.helper else ''}[{s.first}-{s.last}]"
            for s in self.stages
        )


@dataclass(frozen=True)
class BlindedShare:
    """Where a blinded stage's time goes, per frame (its ``compute_s`` is ``total_s``: the enclave waits)."""

    enclave_s: float  # non-linear steps, masks, unmasking (and checks, and W r in the in-stream mode)
    gpu_s: float  # the helper's field products
    link_s: float  # every linear layer's round trip between the enclave and its helper
    sent_bytes: int  # enclave -> helper, per frame
    returned_bytes: int
    pool_bytes: int  # sealed W r kept outside the enclave per frame (pool mode)
    precompute_s: float  # W r per frame at the enclave's speed: ahead of the stream (pool), or spared (outsourced)
    wr_s: float = 0.0  # outsourced: the W r device's seconds per frame (it works while the GPU does)

    @property
    def total_s(self) -> float:
        return self.enclave_s + self.gpu_s + self.link_s


@dataclass(frozen=True)
class StageCost:
    stage: Stage
    compute_s: float  # one frame on one replica
    memory_bytes: int  # weights + peak activations of the stage
    paged: bool  # a TEE stage over its memory, charged the paging factor
    blinded: BlindedShare | None = None

    @property
    def period_s(self) -> float:
        return self.compute_s / self.stage.replicas


@dataclass(frozen=True)
class HopCost:
    src: tuple[str, ...]
    dst: tuple[str, ...]
    boundary: int  # the tensor crossing: boundary b lies before block b (0: the input frame)
    bytes: int
    time_s: float  # the hop frame 0 takes (first replica to first replica)
    period_s: float  # busiest physical link of the hop, per frame


@dataclass(frozen=True)
class PlanCost:
    """Seed 000 eq. 1-2 generalised: L = sum of computes and hops, P = max, T(n) = L + (n-1) P.

    Planners rank by eq. 2 (``chunk_time_s``, a stream long enough for the period to be fluid).
    A run's finite chunk is compared with ``paths_time_s``: with replicas, frame ``i`` takes replica
    path ``i % c`` (``c`` the lcm of the replica counts), and paths differ in latency (one replica
    may sit across a link). A path carries every c-th frame, so its last frame of a chunk leaves no
    earlier than ``L_j + (n_j - 1) c P``; and every frame passes the resources that are not
    replicated one after another, so the last leaves no earlier than ``L + (n - 1) P_s`` (``P_s`` the
    slowest of those). ``paths_time_s`` is the larger of the two; without replicas both are eq. 2.
    ``L`` is path 0's.
    """

    placement: Placement
    stages: tuple[StageCost, ...]
    hops: tuple[HopCost, ...]
    chunk: int
    path_latencies_s: tuple[float, ...] = ()  # one frame through each replica path; () = path 0 only
    latency_s: float = field(init=False)
    period_s: float = field(init=False)
    chunk_time_s: float = field(init=False)
    paths_time_s: float = field(init=False)

    def __post_init__(self) -> None:
        latency = sum(s.compute_s for s in self.stages) + sum(h.time_s for h in self.hops)
        period = max([s.period_s for s in self.stages] + [h.period_s for h in self.hops])
        paths = self.path_latencies_s or (latency,)
        c, n = len(paths), self.chunk
        slowest_path = max(paths[j] + (-(-(n - j) // c) - 1) * c * period for j in range(min(c, n)))
        shared = [s.period_s for s in self.stages if s.stage.replicas == 1]
        shared += [h.period_s for h in self.hops if len(h.src) == 1 and len(h.dst) == 1]
        in_turn = latency + (n - 1) * max(shared, default=0.0)
        object.__setattr__(self, "latency_s", latency)
        object.__setattr__(self, "period_s", period)
        object.__setattr__(self, "chunk_time_s", latency + (n - 1) * period)
        object.__setattr__(self, "paths_time_s", max(slowest_path, in_turn))

    @property
    def mean_gap_s(self) -> float:
        """The mean time between a chunk's results after the first to come out, (T(n) - min L_j) / (n - 1)
        with the path-aware T(n): what a run measures as its period (``period_s`` without replicas)."""
        if self.chunk < 2:
            return self.period_s
        paths = self.path_latencies_s or (self.latency_s,)
        return (self.paths_time_s - min(paths[: self.chunk])) / (self.chunk - 1)

    @property
    def bottleneck(self) -> str:
        """What sets the period: a stage's device(s) or a hop."""
        best = max(self.stages, key=lambda s: s.period_s)
        hop = max(self.hops, key=lambda h: h.period_s, default=None)
        if hop is not None and hop.period_s > best.period_s:
            return f"link {'+'.join(hop.src)}->{'+'.join(hop.dst)}"
        return "+".join(best.stage.devices)
