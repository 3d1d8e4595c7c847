"""The enclave's per-activation work, fused: the part of blinding that decides whether it pays.

Blinding moves a layer's multiply-accumulates to the GPU and leaves the enclave a few operations per
activation: add the mask, reduce into the field; later subtract ``W r``, read the signed integer, add
the bias, round, clamp (a ReLU or ReLU6 folded into the layer). Written as numpy expressions these are
ten passes over every tensor and cost about as much as ONNX Runtime's whole convolution on this host,
so blinding gained nothing. Fused into one loop each (numba, compiled once and cached), they touch
every activation once, and Freivalds' check rides along: the masking loop accumulates ``<W^T s, x>``
and the unmasking loop ``<s, W x>`` (checking ``W x`` itself, after ``W r`` is removed, costs one
multiply-add per activation in loops that already read it). Bit for bit the same arithmetic as
``field.decode``, ``QLinear.finish`` and Python's integers (tests/test_blind.py compares them).

Sums of products mod P are reduced lazily: a product of two field elements is below 2^60, and since
``2^30 = 35 (mod P)`` it folds to ``(p >> 30) * 35 + (p & (2^30 - 1))`` < 2^36 without a division, so
2^27 of them could add up in an int64; the loops reduce once per slice or row.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from serdab.blind.field import P

__all__ = ["dequantise", "dot_mod", "mask_into_field", "max_pool", "quantise", "unmask_finish"]

_HALF = P // 2
_LOW30 = (1 << 30) - 1
_FOLD = (1 << 30) - P  # 35: 2^30 mod P
_SLICE = 1 << 16  # products folded and summed between two reductions (each below 2^36: the sum stays < 2^63)
_NO_CHECK = np.zeros(0, dtype=np.uint32)
_NO_SKIP = np.zeros(0, dtype=np.int64)


@njit(cache=True, nogil=True, inline="always")
def _fold(p: np.int64) -> np.int64:  # pragma: no cover - compiled
    return (p >> 30) * _FOLD + (p & _LOW30)


@njit(cache=True, nogil=True)
def _mask(
    h: np.ndarray, words: np.ndarray, fts: np.ndarray, out: np.ndarray
) -> tuple[np.int64, np.int64]:  # pragma: no cover
    # in slices indexed from 0: LLVM vectorises such loops, not ones indexed from a running offset
    total = np.int64(0)
    rejects = np.int64(0)
    for start in range(0, h.size, _SLICE):
        stop = min(start + _SLICE, h.size)
        hs, ws, os_ = h[start:stop], words[start:stop], out[start:stop]
        fs = fts[start:stop] if fts.size > 0 else fts
        acc = np.int64(0)
        for i in range(stop - start):
            x = np.int64(hs[i])
            x = x + P if x < 0 else x
            r = np.int64(ws[i]) & _LOW30
            rejects += np.int64(r >= P)
            v = x + r
            os_[i] = v - P if v >= P else v
            if fs.size > 0:
                acc += _fold(np.int64(fs[i]) * x)
        total = (total + acc) % P
    return total, rejects


def mask_into_field(h: np.ndarray, r: np.ndarray, fts: np.ndarray | None = None) -> tuple[np.ndarray, int, int]:
    """``h + r mod P`` as uint32 (what the GPU multiplies and the wire carries), for ``|h| < P/2``; ``r``
    the mask in [0, P), or the raw key-stream words it comes from (``MaskSource.draw_words``: their low
    30 bits are taken). Returns that, Freivalds' ``<fts, h> mod P`` when ``fts`` (``W^T s``, field
    elements of ``h``'s size) is given (else 0), and how many of ``r``'s 30-bit values were at or
    above P: the caller must then mask again with the redrawn mask (rare: 35 in 2^30)."""
    out = np.empty(h.shape, dtype=np.uint32)
    check = _NO_CHECK if fts is None else fts
    expected, rejects = _mask(np.ascontiguousarray(h).ravel(), np.ascontiguousarray(r).ravel(), check, out.ravel())
    return out, int(expected), int(rejects)


@njit(cache=True, nogil=True)
def _unmask(
    z: np.ndarray,
    u: np.ndarray,
    bias: np.ndarray,
    inner: int,
    channels: int,
    shift: int,
    s: np.ndarray,
    skip: np.ndarray,
    low: int,
    high: int,
    out: np.ndarray,
) -> np.int64:  # pragma: no cover - compiled
    half = (1 << (shift - 1)) if shift > 0 else 0
    total = np.int64(0)
    for row in range(z.size // inner):  # one (image, channel) at a time: the bias is a constant of the inner loop
        b = (bias[row % channels] if bias.size > 0 else 0) + half
        start, stop = row * inner, (row + 1) * inner
        zs, us, os_ = z[start:stop], u[start:stop], out[start:stop]
        acc = np.int64(0)
        # four loops, not one with tests inside: LLVM vectorises each of them
        if s.size > 0 and skip.size > 0:
            ss, ks = s[start:stop], skip[start:stop]
            for i in range(inner):
                d = _difference(zs[i], us[i])
                acc += _fold(np.int64(ss[i]) * d)
                os_[i] = min(max(_signed_round(d, b, shift) + ks[i], low), high)
        elif s.size > 0:
            ss = s[start:stop]
            for i in range(inner):
                d = _difference(zs[i], us[i])
                acc += _fold(np.int64(ss[i]) * d)
                os_[i] = min(max(_signed_round(d, b, shift), low), high)
        elif skip.size > 0:
            ks = skip[start:stop]
            for i in range(inner):
                os_[i] = min(max(_signed_round(_difference(zs[i], us[i]), b, shift) + ks[i], low), high)
        else:
            for i in range(inner):
                os_[i] = min(max(_signed_round(_difference(zs[i], us[i]), b, shift), low), high)
        total = (total + acc) % P
    return total


@njit(cache=True, nogil=True, inline="always")
def _difference(z: np.uint32, u: np.uint32) -> np.int64:  # pragma: no cover - compiled
    d = np.int64(z) - np.int64(u)
    return d + P if d < 0 else d  # W x mod P, in [0, P)


@njit(cache=True, nogil=True, inline="always")
def _signed_round(d: np.int64, b: int, shift: int) -> np.int64:  # pragma: no cover - compiled
    # the signed value, plus the bias and half: an arithmetic shift floors, as floor_divide does
    return ((d - P if d > _HALF else d) + b) >> shift


_UNBOUNDED = (-(1 << 62), 1 << 62)


def unmask_finish(
    z: np.ndarray,
    u: np.ndarray,
    bias: np.ndarray | None,
    shift: int,
    s: np.ndarray | None = None,
    clamp: tuple[int | None, int | None] = (None, None),
    skip: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """``finish(decode(z - u), skip)`` in one pass: the signed ``W x``, plus the bias per channel (axis
    1), rounded half up by ``shift`` bits, plus a folded residual ``skip`` (int64 of ``z``'s shape),
    clamped to ``clamp`` (a folded ReLU: (0, None)); int64 of ``z``'s shape. With Freivalds' ``s``
    (field elements of ``z``'s size) also ``<s, W x> mod P``, else 0."""
    out = np.empty(z.shape, dtype=np.int64)
    channels = z.shape[1] if z.ndim > 1 else 1
    inner = int(np.prod(z.shape[2:])) if z.ndim > 2 else 1
    b = np.zeros(0, dtype=np.int64) if bias is None else np.ascontiguousarray(bias, dtype=np.int64).ravel()
    low = _UNBOUNDED[0] if clamp[0] is None else clamp[0]
    high = _UNBOUNDED[1] if clamp[1] is None else clamp[1]
    got = _unmask(
        np.ascontiguousarray(z).ravel(),
        np.ascontiguousarray(u).ravel(),
        b,
        inner,
        channels,
        shift,
        _NO_CHECK if s is None else s,
        _NO_SKIP if skip is None else np.ascontiguousarray(skip, dtype=np.int64).ravel(),
        low,
        high,
        out.ravel(),
    )
    return out, int(got)


@njit(cache=True, nogil=True)
def _dot(a: np.ndarray, b: np.ndarray) -> np.int64:  # pragma: no cover - compiled
    total = np.int64(0)
    for start in range(0, a.size, _SLICE):
        stop = min(start + _SLICE, a.size)
        as_, bs = a[start:stop], b[start:stop]
        acc = np.int64(0)
        for i in range(stop - start):
            acc += _fold(np.int64(as_[i]) * np.int64(bs[i]))
        total = (total + acc) % P
    return total


def dot_mod(a: np.ndarray, b: np.ndarray) -> int:
    """``<a, b> mod P`` of arrays of field elements (integer values in [0, P), any numeric dtype)."""
    return int(_dot(np.ascontiguousarray(a).ravel(), np.ascontiguousarray(b).ravel()))


@njit(cache=True, nogil=True)
def _quantise(x: np.ndarray, scale: float, out: np.ndarray) -> None:  # pragma: no cover - compiled
    for i in range(x.size):
        out[i] = np.int64(np.rint(np.float64(x[i]) * scale))


def quantise(x: np.ndarray, bits: int) -> np.ndarray:
    """``rint(x * 2^bits)`` as int64 (round half to even, as numpy's ``rint``), in one pass."""
    out = np.empty(np.shape(x), dtype=np.int64)
    _quantise(np.ascontiguousarray(x).ravel(), float(1 << bits), out.ravel())
    return out


@njit(cache=True, nogil=True)
def _dequantise(h: np.ndarray, scale: float, out: np.ndarray) -> None:  # pragma: no cover - compiled
    for i in range(h.size):
        out[i] = np.float32(np.float64(h[i]) * scale)


def dequantise(h: np.ndarray, bits: int) -> np.ndarray:
    """``h / 2^bits`` as float32 (through float64, as the stage hands its output on), in one pass."""
    out = np.empty(h.shape, dtype=np.float32)
    _dequantise(np.ascontiguousarray(h).ravel(), 1.0 / (1 << bits), out.ravel())
    return out


@njit(cache=True, nogil=True)
def _max_pool(
    x: np.ndarray, kh: int, kw: int, sh: int, sw: int, top: int, left: int, out: np.ndarray
) -> None:  # pragma: no cover - compiled
    # per output row: the max over the window's rows for every column (whole rows: a loop LLVM
    # vectorises), then over each window's columns; padding is skipped, never read
    n, c, h, w = x.shape
    _, _, oh, ow = out.shape
    lowest = np.iinfo(np.int64).min
    rows = np.empty(w, dtype=np.int64)
    for b in range(n):
        for ch in range(c):
            plane = x[b, ch]
            for i in range(oh):
                rows[:] = lowest
                for di in range(kh):
                    y = i * sh + di - top
                    if 0 <= y < h:
                        line = plane[y]
                        for xx in range(w):
                            rows[xx] = max(rows[xx], line[xx])
                line = out[b, ch, i]
                for j in range(ow):
                    best = lowest
                    for dj in range(kw):
                        xx = j * sw + dj - left
                        if 0 <= xx < w:
                            best = max(best, rows[xx])
                    line[j] = best


def max_pool(x: np.ndarray, kernel: list[int], strides: list[int], pads: list[int], ceil: bool) -> np.ndarray:
    """ONNX MaxPool on int64 (padding never wins: it is minus infinity), without a round trip through
    floats; the output size as ONNX computes it (floor, or ceil with ``ceil_mode``, a window starting
    in the padding only when it also covers the input)."""
    n, c, h, w = x.shape
    sizes = []
    for size, k, s_, before, after in (
        (h, kernel[0], strides[0], pads[0], pads[2]),
        (w, kernel[1], strides[1], pads[1], pads[3]),
    ):
        span = size + before + after - k
        count = (-(-span // s_) if ceil else span // s_) + 1
        if ceil and (count - 1) * s_ >= size + before:  # PyTorch's rule: the last window must start inside
            count -= 1
        sizes.append(count)
    out = np.empty((n, c, sizes[0], sizes[1]), dtype=np.int64)
    _max_pool(
        np.ascontiguousarray(x, dtype=np.int64), kernel[0], kernel[1], strides[0], strides[1], pads[0], pads[1], out
    )
    return out
