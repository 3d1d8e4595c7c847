"""A placement as workers and links: one worker per (stage, device), a link from every replica of a
stage to every replica of the next, the manager's source before the first stage and its sink after
the last; a blinded stage's helper (and, outsourced, its W r device) is one more worker, linked both
ways to its enclave only (the enclave's last inbound and outbound links). Pure (no sockets, keys or
clocks), so the wiring of any placement is testable on its own.
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
    role: str = "stage"  # or "helper" (a blinded stage's GPU), "wr" (its outsourced W r device)


@dataclass(frozen=True)
class Topology:
    stages: tuple[tuple[WorkerSlot, ...], ...]
    helpers: tuple[tuple[WorkerSlot, ...], ...] = ()  # per stage: a blinded stage's helper (then W r device)

    @property
    def workers(self) -> list[WorkerSlot]:
        return [w for group in self.stages for w in group] + [h for group in self.helpers for h in group]

    def assistants(self, worker: WorkerSlot) -> tuple[WorkerSlot, ...]:
        """A blinded stage's enclave: its helper and its W r device (outsourced); nobody else has any."""
        if worker.role != "stage" or not self.helpers:
            return ()
        return self.helpers[worker.stage]

    def served(self, worker: WorkerSlot) -> WorkerSlot | None:
        """The enclave a helper or W r device works for."""
        return self.stages[worker.stage][0] if worker.role != "stage" else None

    def inbound(self, worker: WorkerSlot) -> tuple[str, ...]:
        """Who sends to ``worker``: the previous stage's replicas, or the source (then its assistants' answers)."""
        k = worker.stage
        if worker.role != "stage":
            return (self.stages[k][0].id,)
        frames = tuple(w.id for w in self.stages[k - 1]) if k > 0 else (SOURCE,)
        return frames + tuple(a.id for a in self.assistants(worker))

    def outbound(self, worker: WorkerSlot) -> tuple[str, ...]:
        """Where ``worker`` sends, in replica order (frame ``f`` goes to ``f % len``): next stage or sink;
        then, for a blinded stage, its assistants."""
        k = worker.stage
        if worker.role != "stage":
            return (self.stages[k][0].id,)
        frames = tuple(w.id for w in self.stages[k + 1]) if k + 1 < len(self.stages) else (SINK,)
        return frames + tuple(a.id for a in self.assistants(worker))

    def links(self) -> list[tuple[str, str]]:
        """Every (sender, receiver), upstream first."""
        return [(src, w.id) for w in self.workers for src in self.inbound(w)] + [(w.id, SINK) for w in self.stages[-1]]

    def device_of(self, name: str) -> str | None:
        """The device a worker runs on; None for the source and the sink (the manager's own ends)."""
        return next((w.device for w in self.workers if w.id == name), None)


def topology(placement: Placement, epoch: int, wr_device: str | None = None) -> Topology:
    """The workers and links of ``placement`` in deployment ``epoch`` (worker ids carry the epoch, so a
    re-deployment never mistakes an old worker's connection for a new one's); ``wr_device`` computes
    W r for every blinded stage (the outsourced mode)."""
    return Topology(
        tuple(
            tuple(WorkerSlot(f"e{epoch}-s{k}-{device}", device, k) for device in stage.devices)
            for k, stage in enumerate(placement.stages)
        ),
        tuple(
            (
                WorkerSlot(f"e{epoch}-s{k}-{stage.helper}-helper", stage.helper, k, "helper"),
                *((WorkerSlot(f"e{epoch}-s{k}-{wr_device}-wr", wr_device, k, "wr"),) if wr_device else ()),
            )
            if stage.helper
            else ()
            for k, stage in enumerate(placement.stages)
        ),
    )
