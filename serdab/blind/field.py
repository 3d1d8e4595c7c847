"""The prime field blinded layers compute in, and the bounds that keep float64 arithmetic exact.

Why float64: a GPU multiplies doubles at full speed and a double holds every integer below 2^53
exactly, so ``W (x + r)`` with integer weights and masked values below ``P`` is exact as long as every
partial sum stays below 2^53 (Slalom's analysis, sec. 4, with doubles instead of its floats). ``P`` is
the largest prime below 2^30: a layer with ``fan_in`` inputs and weights of magnitude at most ``w`` is
exact when ``fan_in * w * P < 2^53`` (VGG-16's widest layer, 25,088 inputs, allows ``w`` up to 300).
"""

from __future__ import annotations

import numpy as np

__all__ = ["EXACT", "P", "check_exact", "decode"]

P = 2**30 - 35  # the largest prime below 2^30 (tests/test_blind.py checks it)
EXACT = 2**53  # doubles hold every integer below this


def decode(y: np.ndarray) -> np.ndarray:
    """The difference of two field elements (integer-valued float64 in (-P, P)) as the signed integer
    in [-P/2, P/2] it stands for (int64): the reference ``kernels.unmask_finish`` fuses and is tested against."""
    v = np.asarray(y, dtype=np.float64)  # in place when y is already float64 (a temporary, at the call)
    v[v > P // 2] -= P
    v[v < -(P // 2)] += P
    return v.astype(np.int64)


def check_exact(fan_in: int, max_weight: int, what: str) -> None:
    """Refuse a layer whose masked product could leave the exact range of a double."""
    if fan_in * max(1, max_weight) * P >= EXACT:
        raise ValueError(
            f"{what}: {fan_in} inputs x weights up to {max_weight} x P exceed 2^53; "
            "quantise its weights with fewer bits"
        )
