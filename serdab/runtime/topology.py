"""A placement as workers and links: one worker per (stage, device), a link from every replica of a
stage to every replica of the next, the manager's source before the first stage and its sink after
the last; a blinded stage's helper is one more worker, linked both ways to its enclave only (the
enclave's last inbound and outbound link). Pure (no sockets, keys or clocks), so the wiring of any
placement is testable on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from serdab.plan import Placement
from serdab.runtime.protocol import SINK, SOURCE

__all__ = ["Topology", "WorkerSlot", "topology"]


@dataclass(frozen=True)
class WorkerSlot:
    id: str  # unique within a run: epoch, stage and device
    device: str
    stage: int
    role: str = "stage"  # or "helper"


@dataclass(frozen=True)
class Topology:
    stages: tuple[tuple[WorkerSlot, ...], ...]
    helpers: tuple[WorkerSlot | None, ...] = ()  # per stage: the blinded stage's helper, or None

    @property
    def workers(self) -> list[WorkerSlot]:
        return [w for group in self.stages for w in group] + [h for h in self.helpers if h is not None]

    def helper_of(self, worker: WorkerSlot) -> WorkerSlot | None:
        """A blinded stage's helper (for its enclave), or the enclave a helper serves."""
        if worker.role == "helper":
            return self.stages[worker.stage][0]
        return self.helpers[worker.stage] if self.helpers else None

    def inbound(self, worker: WorkerSlot) -> tuple[str, ...]:
        """Who sends to ``worker``: the previous stage's replicas, or the source (then its helper's answers)."""
        k = worker.stage
        if worker.role == "helper":
            return (self.stages[k][0].id,)
        frames = tuple(w.id for w in self.stages[k - 1]) if k > 0 else (SOURCE,)
        helper = self.helper_of(worker)
        return frames + ((helper.id,) if helper else ())

    def outbound(self, worker: WorkerSlot) -> tuple[str, ...]:
        """Where ``worker`` sends, in replica order (frame ``f`` goes to ``f % len``): next stage or sink;
        then, for a blinded stage, its helper."""
        k = worker.stage
        if worker.role == "helper":
            return (self.stages[k][0].id,)
        frames = tuple(w.id for w in self.stages[k + 1]) if k + 1 < len(self.stages) else (SINK,)
        helper = self.helper_of(worker)
        return frames + ((helper.id,) if helper else ())

    def links(self) -> list[tuple[str, str]]:
        """Every (sender, receiver), upstream first."""
        return [(src, w.id) for w in self.workers for src in self.inbound(w)] + [(w.id, SINK) for w in self.stages[-1]]

    def device_of(self, name: str) -> str | None:
        """The device a worker runs on; None for the source and the sink (the manager's own ends)."""
        return next((w.device for w in self.workers if w.id == name), None)


def topology(placement: Placement, epoch: int) -> Topology:
    """The workers and links of ``placement`` in deployment ``epoch`` (worker ids carry the epoch, so a
    re-deployment never mistakes an old worker's connection for a new one's)."""
    return Topology(
        tuple(
            tuple(WorkerSlot(f"e{epoch}-s{k}-{device}", device, k) for device in stage.devices)
            for k, stage in enumerate(placement.stages)
        ),
        tuple(
            WorkerSlot(f"e{epoch}-s{k}-{stage.helper}-helper", stage.helper, k, "helper") if stage.helper else None
            for k, stage in enumerate(placement.stages)
        ),
    )
