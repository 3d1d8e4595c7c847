"""One-time masks: fresh for every (frame, layer), from a key that never leaves the enclave.

Why a keyed PRG rather than stored noise: published attacks (2026) recover a model's weights from
systems that reuse precomputed masks across frames or layers, so a mask must never serve twice, and
the enclave must be able to make the same mask again only when it precomputes ``W r`` ahead of the
stream. AES-256-CTR (``cryptography``) with a fresh key per epoch, the (frame, layer) pair as the
counter block's nonce, values drawn uniformly in [0, P) by rejection; a ``MaskSource`` refuses to hand
out a (frame, layer) mask twice, and a new epoch (every restart) draws a new key.
"""

from __future__ import annotations

import os
import struct
import threading

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from serdab.blind.field import P

__all__ = ["MaskReuseError", "MaskSource"]

_BITS = 30  # P < 2^30: a 30-bit draw is below P with probability 1 - 35/2^30


class MaskReuseError(RuntimeError):
    """A (frame, layer) mask was asked for twice: the scheme's one rule, refused."""


class MaskSource:
    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or os.urandom(32)  # a fresh epoch: this key lives only in this process
        self._used: set[tuple[int, int]] = set()
        self._lock = threading.Lock()
        self._zeros = b""  # plaintext for the key stream, kept between draws (a mask per layer and frame)

    def draw(self, frame: int, layer: int, shape: tuple[int, ...], raw: bool = False) -> np.ndarray:
        """The mask for (frame, layer), uniform in [0, P), as float64 (``raw``: uint32); a second draw is
        refused."""
        with self._lock:
            if (frame, layer) in self._used:
                raise MaskReuseError(f"the mask of frame {frame}, layer {layer} was already used")
            self._used.add((frame, layer))
        return self.regenerate(frame, layer, shape, raw)

    def regenerate(self, frame: int, layer: int, shape: tuple[int, ...], raw: bool = False) -> np.ndarray:
        """The same mask again, for precomputing ``W r`` ahead of the stream (never sent anywhere)."""
        count = int(np.prod(shape))
        nonce = struct.pack(">qII", frame, layer, 0)  # warm-up frames have negative ids
        encryptor = Cipher(algorithms.AES(self._key), modes.CTR(nonce)).encryptor()
        if len(self._zeros) < 4 * count:
            self._zeros = bytes(4 * count)
        words = bytearray(4 * count + 15)  # the key stream itself: CTR's encryption of zeros
        encryptor.update_into(memoryview(self._zeros)[: 4 * count], words)
        values = np.frombuffer(words, dtype="<u4", count=count)
        np.bitwise_and(values, np.uint32((1 << _BITS) - 1), out=values)
        while count and int(values.max()) >= P:  # rare (35 in 2^30): redraw those, in stream order
            rejected = np.flatnonzero(values >= P)
            more = np.frombuffer(encryptor.update(bytes(4 * rejected.size)), dtype="<u4") & np.uint32((1 << _BITS) - 1)
            values[rejected] = more
        values = values.reshape(shape)
        return values if raw else values.astype(np.float64)
