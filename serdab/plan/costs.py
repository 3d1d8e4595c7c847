"""The one cost model (../shared/DESIGN.md; seed 000 sec. V eq. 1-2) used by every planner and the simulator.

Compute of blocks a..e on device d: ``sum(profile time) / speed[d]``, times the device's
``paging_factor`` when it is a TEE and the stage's weights + peak activations exceed its
memory; a device without a paging factor cannot hold such a stage at all (infinite cost).
A hop carries the tensor before the receiving stage's first block, as many bytes as the runtime
puts on the socket for it (``serdab.framing.hop_bytes``: the first hop a uint8 camera frame, later
ones the stage output, framing, records and AEAD tag included): ``bytes / bandwidth + rtt`` of
the link between the hosts (``local`` on one host; none at all on the same device). A stage replicated on r identical
devices counts compute / r towards the period; a hop into or out of replicas counts, per
physical link, the share of frames that cross it. Links are assumed to be separate resources
for separate hops (the formula; the simulator checks it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from serdab.blind import MODES, mode_error
from serdab.cluster import Cluster, Device
from serdab.framing import hop_bytes, ingress_bytes
from serdab.plan.placement import BlindedShare, HopCost, Placement, PlanCost, Stage, StageCost
from serdab.profile import Profile

if TYPE_CHECKING:
    from serdab.blind.profile import BlindingProfile

__all__ = ["PRECOMPUTATION", "BlindCosts", "CostModel", "Workload", "link_key"]

PRECOMPUTATION = MODES  # where W r comes from


@dataclass(frozen=True, eq=False)
class BlindCosts:
    """Per block, what its linear layers cost blinded (issue 28; measured by ``serdab.blind.profile``).

    ``enclave_s`` is the enclave's host seconds per frame in the chosen precomputation ``mode``, with
    Freivalds' check when ``integrity``: in-stream it includes computing ``W r``; pool, opening the
    sealed ``W r`` (its computation ``precompute_s`` happens ahead of the stream and is reported, not
    charged to the stream); outsourced, nothing for ``W r``, which the ``helper`` device computes from
    ``r`` alone in parallel with the GPU (the non-colluding assumption). The GPU's share is the block's
    plain time times the helper device's ``field_factor``.
    """

    mode: str
    integrity: bool
    enclave_s: np.ndarray  # (M,)
    entry_s: np.ndarray  # (M,) quantising the input: paid by the first block of a blinded stage
    exit_s: np.ndarray  # (M,) the output back to floats: paid by its last block
    sent_bytes: np.ndarray  # (M,) enclave -> GPU on the socket per frame
    returned_bytes: np.ndarray  # (M,)
    trips: np.ndarray  # (M,) linear layers: one round trip each
    blindable: np.ndarray  # (M,) bool
    pool_bytes: np.ndarray  # (M,) sealed W r per frame
    precompute_s: np.ndarray  # (M,) host s of W r per frame
    why_not: tuple[str, ...] = ()  # (M,) why a block cannot be blinded ("" when it can)
    helper: str | None = None  # outsourced: the second untrusted device that computes W r

    @classmethod
    def from_profile(
        cls, profile: BlindingProfile, mode: str, integrity: bool, helper: str | None = None
    ) -> BlindCosts:
        error = mode_error(mode, helper)
        if error:
            raise ValueError(error)
        blocks = profile.blocks
        extra = {"in-stream": [b.wr_s for b in blocks], "pool": [b.pool_open_s for b in blocks]}
        enclave = np.array([b.enclave_s for b in blocks]) + np.array(extra.get(mode, [0.0] * len(blocks)))
        if integrity:
            enclave = enclave + np.array([b.check_s for b in blocks])
        return cls(
            mode=mode,
            integrity=integrity,
            enclave_s=enclave,
            entry_s=np.array([b.entry_s for b in blocks]),
            exit_s=np.array([b.exit_s for b in blocks]),
            sent_bytes=np.array([b.sent_bytes for b in blocks], dtype=np.int64),
            returned_bytes=np.array([b.returned_bytes for b in blocks], dtype=np.int64),
            trips=np.array([b.layers for b in blocks], dtype=np.int64),
            blindable=np.array([b.blindable for b in blocks], dtype=bool),
            pool_bytes=np.array([b.pool_bytes if mode == "pool" else 0 for b in blocks], dtype=np.int64),
            precompute_s=np.array([b.wr_s if mode != "in-stream" else 0.0 for b in blocks]),
            why_not=tuple(b.why_not for b in blocks),
            helper=helper,
        )

    def describe(self) -> str:
        where = {
            "in-stream": "W r in the enclave per frame",
            "pool": "W r precomputed into a sealed pool",
            "outsourced": f"W r on {self.helper}, ASSUMED NOT TO COLLUDE with the GPU",
        }[self.mode]
        return f"blinded: {self.mode} ({where}), integrity {'on (Freivalds)' if self.integrity else 'off'}"


@dataclass(frozen=True, eq=False)
class Workload:
    """What the cost model needs from a profile: per-block seconds and bytes, per-boundary tensors."""

    model: str
    block_names: tuple[str, ...]
    block_s: np.ndarray  # (M,) seconds on the profiling host
    params_bytes: np.ndarray  # (M,)
    peak_bytes: np.ndarray  # (M,)
    boundary_bytes: np.ndarray  # (M+1,) bytes a hop ships into block b (boundary 0 = input frame, b > 0 = cut b-1)
    boundary_resolution: tuple[tuple[int, int] | None, ...]  # (M+1,) spatial size, None = no spatial axes
    blind: BlindCosts | None = None  # what blinding each block costs, when the plan may blind

    @property
    def blocks(self) -> int:
        return len(self.block_names)

    @classmethod
    def from_profile(cls, profile: Profile) -> Workload:
        shape = profile.input_shape
        blocks = profile.blocks
        return cls(
            model=profile.model,
            block_names=tuple(b.name for b in blocks),
            block_s=np.array([b.latency_ms / 1000.0 for b in blocks]),
            params_bytes=np.array([b.params_bytes for b in blocks], dtype=np.int64),
            peak_bytes=np.array([b.peak_activation_bytes for b in blocks], dtype=np.int64),
            boundary_bytes=np.array(
                [ingress_bytes(shape) if len(shape) == 4 else hop_bytes(np.dtype(np.float32), shape)]
                + [hop_bytes(_dtype_of(b.out_bytes, b.out_shape), b.out_shape) for b in blocks],
                dtype=np.int64,
            ),
            boundary_resolution=(
                (int(shape[2]), int(shape[3])) if len(shape) == 4 else None,
                *((int(b.resolution[0]), int(b.resolution[1])) if b.resolution else None for b in blocks),
            ),
        )


def _dtype_of(nbytes: int, shape: Sequence[int]) -> np.dtype:
    """A block output's element type, from its bytes per element (profiles record float32 outputs)."""
    elements = int(np.prod(shape, dtype=np.int64))
    size = nbytes // elements if elements else 4
    return np.dtype({1: np.uint8, 2: np.float16, 8: np.float64}.get(size, np.float32))


def link_key(a: Device, b: Device) -> tuple[str, str, str] | None:
    """The physical channel a transfer a -> b occupies (None: same device, nothing moves)."""
    if a.name == b.name:
        return None
    if a.host == b.host:
        return ("local", a.name, b.name)
    return ("net", a.host, b.host)


class CostModel:
    """Seconds and bytes of any stage or hop of one workload on one cluster."""

    def __init__(self, workload: Workload, cluster: Cluster) -> None:
        self.workload = workload
        self.cluster = cluster
        self.devices: list[Device] = list(cluster.devices)
        self.index = {d.name: i for i, d in enumerate(self.devices)}
        self.source = self.index[cluster.source]
        m = workload.blocks
        self._time_prefix = np.concatenate([[0.0], np.cumsum(workload.block_s)])
        params_prefix = np.concatenate([[0], np.cumsum(workload.params_bytes)])
        # memory[c, c2] for blocks c..c2-1: weights of all + the largest activation peak among them
        memory = np.zeros((m + 1, m + 1), dtype=np.int64)
        peaks = np.zeros((m + 1, m + 1), dtype=np.int64)  # activations only: what a blinded enclave holds
        for c in range(m):
            peaks[c, c + 1 :] = np.maximum.accumulate(workload.peak_bytes[c:])
            memory[c, c + 1 :] = params_prefix[c + 1 :] - params_prefix[c] + peaks[c, c + 1 :]
        self._memory = memory
        self._peaks = peaks
        self._hops: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[np.ndarray, np.ndarray]] = {}

    @property
    def blocks(self) -> int:
        return self.workload.blocks

    # --- stages -------------------------------------------------------------------------------
    def stage_memory(self, first: int, last: int) -> int:
        return int(self._memory[first, last + 1])

    def compute_matrix(self, device: int) -> np.ndarray:
        """C[c, c2]: seconds for blocks c..c2-1 on ``device``; inf where c2 <= c or it cannot fit."""
        d = self.devices[device]
        t = self._time_prefix
        seconds = (t[None, :] - t[:, None]) / d.speed
        over = self._memory > d.memory_bytes
        if d.paging_factor is not None:
            seconds = np.where(over, seconds * d.paging_factor, seconds)
        else:
            seconds = np.where(over, np.inf, seconds)
        return np.where(np.triu(np.ones_like(over), k=1), seconds, np.inf)

    def compute_s(self, device: int, first: int, last: int) -> float:
        d = self.devices[device]
        seconds = (self._time_prefix[last + 1] - self._time_prefix[first]) / d.speed
        if self.stage_memory(first, last) > d.memory_bytes:
            return math.inf if d.paging_factor is None else seconds * d.paging_factor
        return float(seconds)

    # --- blinded stages (issue 28) ---------------------------------------------------------------
    def _blind_memory(self) -> np.ndarray:
        """M[c, c2], what a blinded enclave holds for blocks c..c2-1: activations, and the weights only
        when it computes W r itself (in-stream)."""
        blind = self.workload.blind
        return self._memory if blind is not None and blind.mode == "in-stream" else self._peaks

    def blind_memory(self, first: int, last: int) -> int:
        return int(self._blind_memory()[first, last + 1])

    def _round_trips(self, a: int, b: int) -> np.ndarray:
        """Per block: every linear layer's masked input a -> b and answer b -> a (each message pays the rtt)."""
        blind = self.workload.blind
        assert blind is not None
        there = self.cluster.channel(self.devices[a], self.devices[b])
        back = self.cluster.channel(self.devices[b], self.devices[a])
        if there is None or back is None or a == b:
            return np.full(self.blocks, math.inf)
        return (
            blind.sent_bytes / there.bandwidth_bytes_per_s
            + blind.returned_bytes / back.bandwidth_bytes_per_s
            + blind.trips * (there.rtt_s + back.rtt_s)
        )

    def blind_blocks(self, enclave: int, gpu: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per block, seconds of (the enclave's share, the GPU's share, the round trips) when ``enclave``
        blinds it with ``gpu``; inf where a block cannot be blinded or the two are not linked. Outsourced:
        the enclave waits for the slower of the GPU and the W r helper (the difference counts as GPU)."""
        blind = self.workload.blind
        if blind is None:
            inf = np.full(self.blocks, math.inf)
            return inf, inf, inf
        e, g = self.devices[enclave], self.devices[gpu]
        enclave_s = np.where(blind.blindable, blind.enclave_s / e.speed, math.inf)
        gpu_s = self.workload.block_s * g.field_factor / g.speed
        link_s = self._round_trips(enclave, gpu)
        wr_s = self._wr_blocks()
        if wr_s is not None:
            other = wr_s + self._round_trips(enclave, self.index[blind.helper])  # type: ignore[index]
            gpu_s = np.maximum(gpu_s + link_s, other) - link_s
        return enclave_s, gpu_s, link_s

    def _wr_blocks(self) -> np.ndarray | None:
        """Per block, the outsourced W r device's seconds (None in the other modes)."""
        blind = self.workload.blind
        if blind is None or blind.helper is None:
            return None
        h = self.devices[self.index[blind.helper]]
        return self.workload.block_s * h.field_factor / h.speed

    def blind_matrix(self, enclave: int, gpu: int) -> np.ndarray:
        """B[c, c2]: seconds for blocks c..c2-1 on ``enclave`` blinded by ``gpu`` (the enclave's share times
        its paging factor when its activations overflow it); inf where c2 <= c, unblindable, unlinked."""
        enclave_s, gpu_s, link_s = self.blind_blocks(enclave, gpu)
        e = self.devices[enclave]
        bad = ~np.isfinite(enclave_s + gpu_s + link_s)
        inner = np.concatenate([[0.0], np.cumsum(np.where(bad, 0.0, enclave_s))])
        outer = np.concatenate([[0.0], np.cumsum(np.where(bad, 0.0, gpu_s + link_s))])
        count = np.concatenate([[0], np.cumsum(bad)])
        own = inner[None, :] - inner[:, None]
        blind = self.workload.blind
        assert blind is not None
        ends = np.concatenate([[0.0], np.where(bad, 0.0, blind.exit_s)])  # exit of block c2-1
        own = own + (np.concatenate([np.where(bad, 0.0, blind.entry_s), [0.0]])[:, None] + ends[None, :]) / e.speed
        over = self._blind_memory() > e.memory_bytes
        own = np.where(over, math.inf if e.paging_factor is None else own * e.paging_factor, own)
        seconds = own + (outer[None, :] - outer[:, None])
        seconds = np.where(count[None, :] - count[:, None] > 0, math.inf, seconds)
        return np.where(np.triu(np.ones_like(over), k=1), seconds, math.inf)

    def blind_share(self, enclave: int, gpu: int, first: int, last: int) -> BlindedShare:
        blind = self.workload.blind
        assert blind is not None
        enclave_s, gpu_s, link_s = (part[first : last + 1] for part in self.blind_blocks(enclave, gpu))
        e = self.devices[enclave]
        own = float(enclave_s.sum()) + float(blind.entry_s[first] + blind.exit_s[last]) / e.speed
        if self.blind_memory(first, last) > e.memory_bytes:
            own = math.inf if e.paging_factor is None else own * e.paging_factor
        blocks = slice(first, last + 1)
        wr_s = self._wr_blocks()
        return BlindedShare(
            enclave_s=own,
            gpu_s=float(gpu_s.sum()),
            link_s=float(link_s.sum()),
            sent_bytes=int(blind.sent_bytes[blocks].sum()),
            returned_bytes=int(blind.returned_bytes[blocks].sum()),
            pool_bytes=int(blind.pool_bytes[blocks].sum()),
            precompute_s=float(blind.precompute_s[blocks].sum() / e.speed),
            wr_s=0.0 if wr_s is None else float(wr_s[blocks].sum()),
        )

    def stage_compute_s(self, stage: Stage, replica: int = 0) -> float:
        """One frame of ``stage`` on its ``replica``-th device (blinded stages: the enclave's, its helper's and
        their round trips' time, in turn)."""
        device = self.index[stage.devices[replica]]
        if stage.helper is None:
            return self.compute_s(device, stage.first, stage.last)
        return self.blind_share(device, self.index[stage.helper], stage.first, stage.last).total_s

    # --- hops ---------------------------------------------------------------------------------
    def transfer_s(self, a: int, b: int, nbytes: np.ndarray | int) -> np.ndarray | float:
        """bytes / bandwidth + rtt between two devices (0 on the same device, inf if not linked); a
        confidential GPU's bounce-buffer toll is part of its channel (``Cluster.channel``)."""
        if a == b:
            return nbytes * 0.0
        link = self.cluster.channel(self.devices[a], self.devices[b])
        if link is None:
            return nbytes * 0.0 + math.inf
        return nbytes / link.bandwidth_bytes_per_s + link.rtt_s

    def hop_vectors(self, src: Sequence[int], dst: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(latency, period) of a hop src -> dst for the tensor at every cut c = 0..M.

        Latency is frame 0's transfer (first replica to first replica). With round robin, frame i
        goes from src[i % len(src)] to dst[i % len(dst)]; over one cycle of lcm frames each
        physical link is busy for the sum of its transfers, so its period share is that sum / lcm.
        """
        key = (tuple(src), tuple(dst))
        if key not in self._hops:
            self._hops[key] = self._hop_vectors(*key)
        return self._hops[key]

    def _hop_vectors(self, src: tuple[int, ...], dst: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        nbytes = self.workload.boundary_bytes.astype(float)
        latency = self.transfer_s(src[0], dst[0], nbytes)
        cycle = math.lcm(len(src), len(dst))
        busy: dict[tuple[str, str, str], np.ndarray] = {}
        for i in range(cycle):
            a, b = src[i % len(src)], dst[i % len(dst)]
            channel = link_key(self.devices[a], self.devices[b])
            if channel is not None:
                busy[channel] = busy.get(channel, np.zeros_like(nbytes)) + np.asarray(self.transfer_s(a, b, nbytes))
        period = np.max(np.stack(list(busy.values())), axis=0) / cycle if busy else nbytes * 0.0
        return np.asarray(latency, dtype=float), period

    # --- whole placements ---------------------------------------------------------------------
    def evaluate(self, placement: Placement, chunk: int) -> PlanCost:
        """L, P and T(chunk) of a structurally valid placement (see ``structure_error``)."""
        error = self.structure_error(placement)
        if error:
            raise ValueError(f"invalid placement {placement.describe()}: {error}")
        stages = []
        hops = []
        previous: tuple[int, ...] = (self.source,)
        for stage in placement.stages:
            group = tuple(self.index[n] for n in stage.devices)
            boundary = stage.first
            if group != previous:  # only the first stage, on the source alone, needs no hop
                latency, period = self.hop_vectors(previous, group)
                hops.append(
                    HopCost(
                        src=tuple(self.devices[i].name for i in previous),
                        dst=stage.devices,
                        boundary=boundary,
                        bytes=int(self.workload.boundary_bytes[boundary]),
                        time_s=float(latency[boundary]),
                        period_s=float(period[boundary]),
                    )
                )
            head = self.devices[group[0]]
            share = None
            if stage.helper is None:
                memory = self.stage_memory(stage.first, stage.last)
                compute_s = self.compute_s(group[0], stage.first, stage.last)
            else:
                memory = self.blind_memory(stage.first, stage.last)
                share = self.blind_share(group[0], self.index[stage.helper], stage.first, stage.last)
                compute_s = share.total_s
            stages.append(
                StageCost(
                    stage=stage,
                    compute_s=compute_s,
                    memory_bytes=memory,
                    paged=head.paging_factor is not None and memory > head.memory_bytes,
                    blinded=share,
                )
            )
            previous = group
        return PlanCost(
            placement=placement,
            stages=tuple(stages),
            hops=tuple(hops),
            chunk=chunk,
            path_latencies_s=self._paths(placement),
        )

    def _paths(self, placement: Placement) -> tuple[float, ...]:
        """Latency of one frame along each replica path: frame j takes replica ``j % r`` of every stage."""
        cycle = math.lcm(*(stage.replicas for stage in placement.stages))
        paths = []
        for j in range(cycle):
            previous, total = self.source, 0.0
            for stage in placement.stages:
                device = self.index[stage.devices[j % stage.replicas]]
                total += float(self.transfer_s(previous, device, int(self.workload.boundary_bytes[stage.first])))
                total += self.stage_compute_s(stage, j % stage.replicas)
                previous = device
            paths.append(total)
        return tuple(paths)

    def structure_error(self, placement: Placement) -> str | None:
        """Why a placement is malformed (gaps, unknown or reused devices, mixed replicas), or None."""
        expected = 0
        used: set[str] = set()
        helping: set[str] = set()
        if not placement.stages:
            return "no stages"
        reserved = self.workload.blind.helper if self.workload.blind else None
        for stage in placement.stages:
            if stage.first != expected or stage.last < stage.first:
                return f"stage {stage.first}-{stage.last} does not continue at block {expected}"
            expected = stage.last + 1
            for name in stage.devices:
                if name not in self.index:
                    return f"unknown device {name!r}"
                if name in used:
                    return f"device {name} holds two stages"
                if name == reserved:
                    return f"device {name} computes W r for the blinded stages; it cannot hold a stage"
                used.add(name)
            if stage.helper is not None:
                error = self._blinding_error(stage, helping)
                if error:
                    return error
                helping.add(stage.helper)
            head = self.devices[self.index[stage.devices[0]]]
            if any(not head.same_hardware(self.devices[self.index[n]]) for n in stage.devices[1:]):
                return f"replicas {'+'.join(stage.devices)} are not identical devices"
        if expected != self.blocks:
            return f"stages end at block {expected - 1}, the model has {self.blocks} blocks"
        return None

    def _blinding_error(self, stage: Stage, helping: set[str]) -> str | None:
        """Why a stage cannot be blinded as written: one trusted device, an untrusted helper blinding
        for no other stage, every block with an integer form, a blinding profile to cost it with."""
        blind = self.workload.blind
        helper = stage.helper
        if blind is None:
            return (
                f"stage {stage.first}-{stage.last} is blinded, but the plan has no blinding costs (plan with --blind)"
            )
        if helper not in self.index:
            return f"unknown device {helper!r}"
        if blind.helper is not None and blind.helper not in self.index:
            return f"the W r device {blind.helper} is not available"
        if helper == blind.helper:
            return f"{helper} computes W r (outsourced); the GPU that sees masked inputs must be another device"
        if stage.replicas != 1 or not self.devices[self.index[stage.device]].trusted:
            return f"a blinded stage runs on one trusted device, not {'+'.join(stage.devices)}"
        if self.devices[self.index[helper]].trusted:
            return f"{helper} is trusted: give it the blocks in plaintext rather than blinded"
        if helper in helping or helper in stage.devices:
            return f"device {helper} blinds for two stages"
        for b in range(stage.first, stage.last + 1):
            if not blind.blindable[b]:
                return f"block {b} cannot be blinded: {blind.why_not[b] or 'no integer form'}"
        return None
