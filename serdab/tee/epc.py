"""Emulated enclave memory (SGX's EPC): a per-host budget, resident bytes, paging counters.

SGX has about 93 MiB of usable EPC per host shared by all enclaves (seed 002, sec. 2.2); when
their resident memory exceeds it, pages are swapped with integrity checks, ~5x slower on
average. Nothing here is measured: enclaves declare what they hold, every access while over
budget counts the overflow as pages in and out, and reports carry ``emulated=True``.
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
    slowdown: float  # factor applied to compute while over budget (1.0 when within)
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
            pages = math.ceil((total - self.budget_bytes) * own / total / PAGE)
            self._page_ins += pages
            self._page_outs += pages
            return self.paging_slowdown

    def stats(self) -> EpcStats:
        with self._lock:
            total = sum(self._resident.values())
            return EpcStats(
                budget_bytes=self.budget_bytes,
                resident_bytes=dict(self._resident),
                page_ins=self._page_ins,
                page_outs=self._page_outs,
                slowdown=self.paging_slowdown if total > self.budget_bytes else 1.0,
            )
