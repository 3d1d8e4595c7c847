"""Device emulation at run time: how much slower than real time a run goes, and the native alternative.

The cluster file says how fast each device is relative to this host (a TEE 0.25, a GPU 8). A
worker cannot run faster than this host, so the whole run is dilated: one emulated second lasts
``dilation`` host seconds, every stage is padded to ``dilation x`` its device's emulated time,
and every link is shaped to ``dilation x`` its emulated transfer time. The dilation is chosen so
that the fastest device used still has headroom on this host (``headroom`` x its speed) and the
padded workers together leave CPU to spare on this host's cores. Reports divide host times by
the dilation and say "emulated". ``native`` runs every worker at this host's speed, unshaped.

A dilation below 1 compresses the clock (``compressed_dilation``): for clusters whose enclaves are
far slower than this host (seed 000's run at 0.0073 of it) a real-time run would take hours. Devices
at most ``dilation / HEADROOM`` fast are still emulated exactly; faster ones (GPUs) cannot keep up,
so their stages and links take what they really take on this host, which the run reports as
measured (a stage over its budget shows in the stage table beside its prediction).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

from serdab.cluster import Cluster, Device
from serdab.cluster.spec import LocalLink

__all__ = ["Emulation", "choose_dilation", "compressed_dilation", "native_cluster"]

HOST_FRAME_S = 0.001  # a worker's own cost per frame on this host (decode, encode, hand-over: bench pipeline)
HOST_HOP_BYTES_PER_S = 250e6  # sealing, sending and opening a frame between two processes here (bench pipeline)
HEADROOM = 1.6  # a stage's host time may exceed its profile by 60% (jitter, crypto, 2 shared cores)
CPU_SHARE = 0.6  # padded workers may keep at most this share of the host's cores busy


@dataclass(frozen=True)
class Emulation:
    native: bool
    dilation: float

    def describe(self) -> str:
        if self.native:
            return "native: every worker at this host's speed, links unshaped"
        if self.dilation < 1:
            return (
                f"emulated, clock compressed: 1 emulated s = {self.dilation:.4f} host s; devices faster than "
                f"{self.dilation / HEADROOM:.4f} of this host cannot keep up and count what they really took"
            )
        return (
            f"emulated: device speeds and links from the cluster file, time dilated {self.dilation:.2f}x "
            f"(1 emulated s = {self.dilation:.2f} host s)"
        )


def choose_dilation(devices: Iterable[Device], cores: int | None = None) -> float:
    """The smallest dilation at which every device in ``devices`` can be emulated on this host."""
    speeds = [d.speed for d in devices]
    cores = cores or os.cpu_count() or 1
    return max(1.0, HEADROOM * max(speeds, default=1.0), sum(speeds) / (CPU_SHARE * cores))


def compressed_dilation(
    devices: Iterable[Device],
    cores: int | None = None,
    untrusted_host_s: float = 0.0,
    period_s: float = math.inf,
    hop_bytes: int = 0,
) -> float:
    """The smallest dilation at which the *trusted* devices can still be emulated, when that is below
    ``choose_dilation``'s: the enclaves, which set a pipeline's period, keep their emulated speed. Given
    the plan's predicted period, also large enough that what runs at host speed stays under it: the
    longest untrusted stage (``untrusted_host_s``), the largest hop's sealing and sending (``hop_bytes``),
    and a worker's own per-frame cost, kept to 2% of the period (a compressed clock magnifies every host
    millisecond): then only a frame's latency shows what the faster devices really took."""
    devices = list(devices)
    trusted = [d for d in devices if d.trusted]
    cores = cores or os.cpu_count() or 1
    speeds = [d.speed for d in trusted]
    fast = HEADROOM * max(speeds, default=1.0)
    keep_up = 0.0
    if 0 < period_s < math.inf:
        host_s = max(untrusted_host_s, hop_bytes / HOST_HOP_BYTES_PER_S)
        keep_up = max(HEADROOM * host_s, HOST_FRAME_S / 0.02) / period_s
    return min(choose_dilation(devices, cores), max(fast, keep_up, sum(speeds) / (CPU_SHARE * cores)))


def native_cluster(cluster: Cluster) -> Cluster:
    """The same devices at this host's speed with unlimited memory and free links: what --native predicts."""
    devices = [
        d.model_copy(update={"speed": 1.0, "paging_factor": None, "memory_bytes": 2**50}) for d in cluster.devices
    ]
    free = LocalLink(bandwidth=1e15, rtt=0.0)
    unlimited = {"bandwidth_bytes_per_s": free.bandwidth_bytes_per_s, "rtt_s": 0.0}
    links = [link.model_copy(update=unlimited) for link in cluster.links]
    return cluster.model_copy(update={"devices": devices, "links": links, "local": free})
