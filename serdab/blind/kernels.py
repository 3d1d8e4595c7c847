"""The enclave's per-activation work, fused: the part of blinding that decides whether it pays.

Blinding moves a layer's multiply-accumulates to the GPU and leaves the enclave a few operations per
activation: add the mask, reduce into the field; later subtract ``W r``, read the signed integer, add
the bias, round. Written as numpy expressions these are ten passes over every tensor, and on this host
they cost about as much as ONNX Runtime's whole convolution (measured: VGG-16's enclave share was 380
ms against 356 ms in plaintext), so blinding gained nothing. Fused into one loop each (numba, compiled
once and cached), they touch every activation once. Bit for bit the same arithmetic as
``field.decode`` and ``QLinear.finish`` (tests/test_blind.py compares them).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from serdab.blind.field import P

__all__ = ["dot_mod", "mask_into_field", "max_pool", "unmask_finish"]

_HALF = P // 2


@njit(cache=True, nogil=True)
def _mask(h: np.ndarray, r: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    for i in range(h.size):
        v = h[i] + np.int64(r[i])
        if v >= P:
            v -= P
        elif v < 0:
            v += P
        out[i] = v


def mask_into_field(h: np.ndarray, r: np.ndarray) -> np.ndarray:
    """``h + r mod P`` as float64 (what the GPU multiplies), for ``|h| < P/2`` and ``r`` in [0, P)."""
    out = np.empty(h.shape, dtype=np.float64)
    _mask(np.ascontiguousarray(h, dtype=np.int64).ravel(), np.ascontiguousarray(r).ravel(), out.ravel())
    return out


@njit(cache=True, nogil=True)
def _unmask(
    z: np.ndarray, u: np.ndarray, bias: np.ndarray, inner: int, channels: int, shift: int, out: np.ndarray
) -> None:  # pragma: no cover - compiled
    half = (1 << (shift - 1)) if shift > 0 else 0
    rows = z.size // inner
    for row in range(rows):  # one (image, channel) at a time: the bias is a constant of the inner loop
        b = bias[row % channels] if bias.size > 0 else 0
        start = row * inner
        for i in range(start, start + inner):
            v = np.int64(z[i]) - np.int64(u[i])
            if v > _HALF:
                v -= P
            elif v < -_HALF:
                v += P
            v += b
            if shift > 0:
                v = (v + half) >> shift  # an arithmetic shift floors, as floor_divide by 2^shift does
            out[i] = v


def unmask_finish(z: np.ndarray, u: np.ndarray, bias: np.ndarray | None, shift: int) -> np.ndarray:
    """``finish(decode(z - u))`` in one pass: the signed ``W x``, plus the bias per channel (axis 1),
    rounded half up by ``shift`` bits; int64 of ``z``'s shape."""
    out = np.empty(z.shape, dtype=np.int64)
    channels = z.shape[1] if z.ndim > 1 else 1
    inner = int(np.prod(z.shape[2:])) if z.ndim > 2 else 1
    b = np.zeros(0, dtype=np.int64) if bias is None else np.ascontiguousarray(bias, dtype=np.int64).ravel()
    _unmask(np.ascontiguousarray(z).ravel(), np.ascontiguousarray(u).ravel(), b, inner, channels, shift, out.ravel())
    return out


@njit(cache=True, nogil=True)
def _dot(a: np.ndarray, b: np.ndarray) -> int:  # pragma: no cover - compiled
    total = np.int64(0)
    for i in range(a.size):
        total += np.int64(a[i]) * np.int64(b[i])  # below 2^60 each; four of them and a remainder below 2^63
        if (i & 3) == 3:
            total %= P
    return int(total % P)


def dot_mod(a: np.ndarray, b: np.ndarray) -> int:
    """``<a, b> mod P`` of arrays of field elements (integer values in [0, P), any numeric dtype)."""
    return int(_dot(np.ascontiguousarray(a).ravel(), np.ascontiguousarray(b).ravel()))


@njit(cache=True, nogil=True)
def _max_pool(
    x: np.ndarray, kh: int, kw: int, sh: int, sw: int, top: int, left: int, out: np.ndarray
) -> None:  # pragma: no cover - compiled
    n, c, h, w = x.shape
    _, _, oh, ow = out.shape
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    best = np.iinfo(np.int64).min
                    for di in range(kh):
                        y = i * sh + di - top
                        if 0 <= y < h:
                            for dj in range(kw):
                                xx = j * sw + dj - left
                                if 0 <= xx < w and x[b, ch, y, xx] > best:
                                    best = x[b, ch, y, xx]
                    out[b, ch, i, j] = best


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
