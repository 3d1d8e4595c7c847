"""How many failures a device may have before the run stops trusting it: a budget per device over a
sliding window, with a backoff that doubles per fault inside the window.

A device within its budget is restarted (after the backoff); past it, an ordinary device is left
out of the next plan, and the source device (where frames arrive, which no plan can leave out)
ends the run with what was answered. A pure rule over explicit state, clock injected, so it is
tested without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["FaultBudget"]


@dataclass
class FaultBudget:
    faults: int = 3  # per device within ``window_s``; the next one spends the budget
    window_s: float = 120.0
    backoff_s: float = 0.25  # before the first restart; doubles with each fault in the window
    max_backoff_s: float = 4.0
    clock: Callable[[], float] = time.monotonic
    _seen: dict[str, list[float]] = field(default_factory=dict)

    def charge(self, device: str) -> int:
        """Count a fault of ``device``; how many it has had within the window, this one included."""
        now = self.clock()
        recent = [t for t in self._seen.get(device, []) if now - t <= self.window_s] + [now]
        self._seen[device] = recent
        return len(recent)

    def spent(self, device: str) -> bool:
        now = self.clock()
        return sum(1 for t in self._seen.get(device, []) if now - t <= self.window_s) > self.faults

    def backoff(self, device: str) -> float:
        """Seconds to wait before restarting ``device``'s workers."""
        count = len(self._seen.get(device, []))
        return min(self.max_backoff_s, self.backoff_s * 2 ** max(0, count - 1))
