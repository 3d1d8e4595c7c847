"""Brute force: every contiguous placement on every ordered choice of device groups.

The reference the optimal planner is tested against, and a way to check it on your own small
problem. Exponential in blocks and devices; refused past ``MAX_BLOCKS`` / ``MAX_DEVICES``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from serdab.errors import PlanError
from serdab.plan.optimal import device_groups
from serdab.plan.placement import Placement, Stage
from serdab.plan.planner import Planner, PlanRequest, best_placement

__all__ = ["BruteForcePlanner", "all_placements"]

MAX_BLOCKS = 10
MAX_DEVICES = 5


def all_placements(request: PlanRequest, strategy: str = "brute-force") -> Iterator[Placement]:
    """Every structurally valid placement (fewer stages first), valid or not under memory and policy."""
    costs = request.costs
    names = [d.name for d in costs.devices]
    groups = device_groups(request)
    m = costs.blocks
    for k in range(1, min(m, len(names)) + 1):
        for chosen in itertools.permutations(groups, k):
            holding = [i for g in chosen for i in g.devices]
            helping = [g.helper for g in chosen if g.helper is not None]
            if len(holding) != len(set(holding)) or len(helping) != len(set(helping)):
                continue
            for inner in itertools.combinations(range(1, m), k - 1):
                bounds = (0, *inner, m)
                yield Placement(
                    strategy,
                    tuple(
                        Stage(
                            tuple(names[i] for i in g.devices),
                            bounds[j],
                            bounds[j + 1] - 1,
                            names[g.helper] if g.helper is not None else None,
                        )
                        for j, g in enumerate(chosen)
                    ),
                )


class BruteForcePlanner(Planner):
    name = "brute-force"
    summary = f"tries every placement (small problems only: <= {MAX_BLOCKS} blocks, <= {MAX_DEVICES} devices)"

    def plan(self, request: PlanRequest) -> Placement | None:
        m, k = request.costs.blocks, len(request.costs.devices)
        if m > MAX_BLOCKS or k > MAX_DEVICES:
            raise PlanError(
                f"brute-force is for small problems ({m} blocks, {k} devices; at most {MAX_BLOCKS} and "
                f"{MAX_DEVICES}); use --strategy optimal"
            )
        return best_placement(request, all_placements(request, self.name + ("+replicate" if request.replicate else "")))
