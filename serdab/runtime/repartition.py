"""When to re-plan while streaming (seed 000 sec. V, "Algorithm Steps": engines report stage times,
the application manager re-partitions when they drift from the prediction).

A pure rule over explicit state: after each chunk, every stage's measured compute (median per
frame, emulated seconds) is compared with what the cost model predicted for it. A stage off by
more than ``threshold`` (relative) for ``patience`` consecutive chunks yields a speed estimate for
its devices, ``speed x predicted / measured``, which the manager plans with. Assumes a stage's
time scales with its device's speed (true of the cost model; a stage that pages may not).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Repartitioner", "StageObservation"]


@dataclass(frozen=True)
class StageObservation:
    devices: tuple[str, ...]
    speed: float  # what the plan assumed for these devices
    predicted_s: float
    measured_s: float

    @property
    def deviation(self) -> float:
        return self.measured_s / self.predicted_s - 1.0 if self.predicted_s > 0 else 0.0


@dataclass(frozen=True)
class Repartitioner:
    threshold: float = 0.2
    patience: int = 3

    def __post_init__(self) -> None:
        if self.threshold <= 0 or self.patience < 1:
            raise ValueError(f"threshold ({self.threshold}) must be > 0 and patience ({self.patience}) >= 1")

    def decide(
        self, observations: list[StageObservation], streak: dict[tuple[str, ...], int]
    ) -> tuple[dict[str, float] | None, dict[tuple[str, ...], int], str]:
        """(new speeds per device or None, the streak to carry to the next chunk, why)."""
        new_streak = {}
        for obs in observations:
            if abs(obs.deviation) > self.threshold:
                new_streak[obs.devices] = streak.get(obs.devices, 0) + 1
        due = [o for o in observations if new_streak.get(o.devices, 0) >= self.patience]
        if not due:
            return None, new_streak, ""
        speeds = {d: o.speed * o.predicted_s / o.measured_s for o in due for d in o.devices if o.measured_s > 0}
        reason = "; ".join(
            f"{'+'.join(o.devices)} took {1000 * o.measured_s:.1f} ms per frame, predicted {1000 * o.predicted_s:.1f} "
            f"({100 * o.deviation:+.0f}%) for {new_streak[o.devices]} chunks"
            for o in due
        )
        return speeds, {}, reason
