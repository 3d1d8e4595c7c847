"""Emulated enclave memory (SGX's EPC): a per-host budget, resident bytes, paging counters.

SGX has about 93 MiB of usable EPC per host shared by all enclaves (seed 002, sec. 2.2); when
their resident memory exceeds it, pages are swapped with integrity checks, ~5x slower on
average. Nothing here is measured: enclaves declare what they hold, every access while over
budget counts the enclave's share of the overflow as pages in and out, and reports carry
``emulated=True``. The slowdown is graded: an access pays ``paging_slowdown`` on the fraction of
its pages that are out of the EPC (the overflow over the total resident, shared in proportion),
so a host just over budget slows its enclaves a little and one far over slows them ~5x.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

__all__ = ["DEFAULT_EPC_BYTES", "EpcMeter", "EpcStats"]

DEFAULT_EPC_BYTES = 93 * 2**20
PAGE = 4096


@dataclass(frozen=True)
class EpcStats:
    budget_bytes: int
    resident_bytes: dict[str, int]
    page_ins: int
    page_outs: int
    slowdown: float  # factor on compute now: 1 within budget, up to paging_slowdown far over it
    emulated: bool = field(default=True)

    @property
    def total_bytes(self) -> int:
        return sum(self.resident_bytes.values())

    @property
    def over_budget(self) -> bool:
        return self.total_bytes > self.budget_bytes


class EpcMeter:
    def __init__(self, budget_bytes: int = DEFAULT_EPC_BYTES, paging_slowdown: float = 5.0) -> None:
        if budget_bytes <= 0 or paging_slowdown < 1:
            raise ValueError(f"EPC budget ({budget_bytes}) must be > 0 and slowdown ({paging_slowdown}) >= 1")
        self.budget_bytes = budget_bytes
        self.paging_slowdown = paging_slowdown
        self._resident: dict[str, int] = {}
        self._page_ins = 0
        self._page_outs = 0
        self._lock = threading.Lock()

    def set_resident(self, enclave: str, nbytes: int) -> None:
        with self._lock:
            if nbytes <= 0:
                self._resident.pop(enclave, None)
            else:
                self._resident[enclave] = int(nbytes)

    def access(self, enclave: str) -> float:
        """One pass over the enclave's memory; returns the compute slowdown that applies now."""
        with self._lock:
            total = sum(self._resident.values())
            own = self._resident.get(enclave, 0)
            if total <= self.budget_bytes or own == 0:
                return 1.0
            overflow = total - self.budget_bytes
            pages = math.ceil(overflow * own / total / PAGE)
            self._page_ins += pages
            self._page_outs += pages
            return 1.0 + (self.paging_slowdown - 1.0) * overflow / total

    def stats(self) -> EpcStats:
        with self._lock:
            total = sum(self._resident.values())
            return EpcStats(
                budget_bytes=self.budget_bytes,
                resident_bytes=dict(self._resident),
                page_ins=self._page_ins,
                page_outs=self._page_outs,
                slowdown=1.0 + (self.paging_slowdown - 1.0) * max(0, total - self.budget_bytes) / max(total, 1),
            )
