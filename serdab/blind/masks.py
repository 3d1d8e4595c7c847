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
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from serdab.blind.field import P

__all__ = ["LOW_BITS", "MaskReuseError", "MaskSource"]

LOW_BITS = (1 << 30) - 1  # P < 2^30: a 30-bit draw is below P with probability 1 - 35/2^30


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
        self._claim(frame, layer)
        return self.regenerate(frame, layer, shape, raw)

    def draw_words(self, frame: int, layer: int, count: int) -> np.ndarray:
        """The mask for (frame, layer) one step early: its raw 32-bit key-stream words, which the masking
        kernel reduces to 30 bits itself, reporting any at or above P (then ``regenerate`` gives the
        mask with those redrawn); a second draw is refused, as with ``draw``."""
        self._claim(frame, layer)
        return self._stream(frame, layer, count)[1]

    def regenerate(self, frame: int, layer: int, shape: tuple[int, ...], raw: bool = False) -> np.ndarray:
        """The same mask again, for precomputing ``W r`` ahead of the stream (never sent anywhere)."""
        count = int(np.prod(shape))
        encryptor, values = self._stream(frame, layer, count)
        np.bitwise_and(values, np.uint32(LOW_BITS), out=values)
        while count and int(values.max()) >= P:  # rare (35 in 2^30): redraw those, in stream order
            rejected = np.flatnonzero(values >= P)
            more = np.frombuffer(encryptor.update(bytes(4 * rejected.size)), dtype="<u4") & np.uint32(LOW_BITS)
            values[rejected] = more
        values = values.reshape(shape)
        return values if raw else values.astype(np.float64)

    def _claim(self, frame: int, layer: int) -> None:
        with self._lock:
            if (frame, layer) in self._used:
                raise MaskReuseError(f"the mask of frame {frame}, layer {layer} was already used")
            self._used.add((frame, layer))

    def _stream(self, frame: int, layer: int, count: int) -> tuple[CipherContext, np.ndarray]:
        """AES-CTR's key stream for (frame, layer), ``count`` words (and the context, to draw on)."""
        nonce = struct.pack(">qII", frame, layer, 0)  # warm-up frames have negative ids
        encryptor = Cipher(algorithms.AES(self._key), modes.CTR(nonce)).encryptor()
        if len(self._zeros) < 4 * count:
            self._zeros = bytes(4 * count)
        words = bytearray(4 * count + 15)  # CTR's encryption of zeros (update_into wants a block's slack)
        encryptor.update_into(memoryview(self._zeros)[: 4 * count], words)
        return encryptor, np.frombuffer(words, dtype="<u4", count=count)
