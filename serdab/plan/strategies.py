"""The strategies seed 000 compares in Fig. 12 (sec. VI-C), each as a planner over the shared cost model.

- ``single-tee``: the whole model in the source enclave (the baseline).
- ``neurosurgeon``: the least one-frame latency (n = 1), then run as a stream; like Neurosurgeon
  and the mobile offloading work seed 000 cites, it ignores pipelining. Generalised to any
  devices, in any order.
- ``tee-gpu``: the source enclave plus the fastest untrusted accelerator, cut at the first cut
  the privacy policy allows (seed 000: the first output of <= 20x20 pixels).
- ``two-tees``: the placement tree restricted to trusted devices (source enclave, then one more).
- ``serdab``: seed 000's placement tree, TEE1 -> {E, TEE2 -> E}: the source enclave, optionally a
  second trusted device, optionally one untrusted device; every cut position, O(M^2) paths per
  device choice. With the trusted-tail rule a last trusted level is added (sec. V, step 1).
"""

from __future__ import annotations

from collections.abc import Iterator

from serdab.plan.optimal import min_latency_placement
from serdab.plan.placement import Placement, Stage
from serdab.plan.planner import Planner, PlanRequest, best_placement

__all__ = ["NeurosurgeonPlanner", "SerdabTreePlanner", "SingleTeePlanner", "TeeGpuPlanner", "TwoTeesPlanner"]


def _chains(m: int, devices: tuple[str, ...], strategy: str) -> Iterator[Placement]:
    """Every placement of blocks 0..m-1 on these devices in this order, each device >= 1 block."""
    k = len(devices)

    def cuts(start: int, left: int) -> Iterator[tuple[int, ...]]:
        if left == 0:
            yield ()
            return
        for c in range(start, m - left + 1):
            for rest in cuts(c + 1, left - 1):
                yield (c, *rest)

    for inner in cuts(1, k - 1):
        bounds = (0, *inner, m)
        yield Placement(strategy, tuple(Stage((d,), bounds[i], bounds[i + 1] - 1) for i, d in enumerate(devices)))


def _tree(request: PlanRequest, strategy: str, untrusted: bool) -> Iterator[Placement]:
    cluster = request.costs.cluster
    m = request.costs.blocks
    source = cluster.source
    others = [d.name for d in cluster.devices if d.trusted and d.name != source]
    outside = [d.name for d in cluster.devices if not d.trusted] if untrusted else []
    sequences: list[tuple[str, ...]] = [(source,)]
    sequences += [(source, t) for t in others]
    sequences += [(source, u) for u in outside]
    sequences += [(source, t, u) for t in others for u in outside]
    if request.trusted_tail:  # the extra level: come back to an enclave for the last blocks
        sequences += [(source, u, t) for u in outside for t in others]
    for devices in sequences:
        if len(devices) <= m:
            yield from _chains(m, devices, strategy)


class SingleTeePlanner(Planner):
    name = "single-tee"
    summary = "the whole model in the source enclave (seed 000's 1 TEE baseline)"

    def plan(self, request: PlanRequest) -> Placement | None:
        placement = Placement(self.name, (Stage((request.costs.cluster.source,), 0, request.costs.blocks - 1),))
        return best_placement(request, [placement])


class NeurosurgeonPlanner(Planner):
    name = "neurosurgeon"
    summary = "least one-frame latency on any devices, ignoring pipelining (seed 000's No pipelining)"

    def plan(self, request: PlanRequest) -> Placement | None:
        single = PlanRequest(request.costs, request.allowed, 1, request.policy, request.trusted_tail, False)
        return min_latency_placement(single, self.name)


class TeeGpuPlanner(Planner):
    name = "tee-gpu"
    summary = "source enclave + fastest untrusted accelerator, cut at the first private cut"

    def plan(self, request: PlanRequest) -> Placement | None:
        cluster = request.costs.cluster
        untrusted = [d for d in cluster.devices if not d.trusted]
        m = request.costs.blocks
        first_private = next((c for c in range(1, m) if request.allowed[c]), None)
        if not untrusted or first_private is None or request.trusted_tail:
            return None
        accelerator = max(untrusted, key=lambda d: (d.kind == "gpu", d.speed))
        placement = Placement(
            self.name,
            (Stage((cluster.source,), 0, first_private - 1), Stage((accelerator.name,), first_private, m - 1)),
        )
        return best_placement(request, [placement])


class TwoTeesPlanner(Planner):
    name = "two-tees"
    summary = "placement tree over enclaves only: the source enclave, then a second one"

    def plan(self, request: PlanRequest) -> Placement | None:
        return best_placement(request, _tree(request, self.name, untrusted=False))


class SerdabTreePlanner(Planner):
    name = "serdab"
    summary = "seed 000's placement tree TEE1 -> {E, TEE2 -> E}, every cut, best T(n)"

    def plan(self, request: PlanRequest) -> Placement | None:
        return best_placement(request, _tree(request, self.name, untrusted=True))
