"""The blinded pass: every linear layer on an untrusted GPU, masked; everything else in the enclave.

Per frame and linear layer the enclave draws a fresh mask ``r`` (``masks``), sends ``x + r mod P`` (the
GPU sees uniform field elements, whatever the image), receives ``z = W (x + r) mod P``, optionally
checks it (``freivalds``), subtracts ``u = W r`` and rounds back (``quantize.QLinear.finish``): the
result equals the plaintext integer reference bit for bit while ``|W x| < P/2``. Where ``u`` comes
from is the cost that decides whether blinding pays (Slalom sec. 4.3):

- ``in-stream``: the enclave computes ``W r`` itself, per frame: a whole layer's work, in the enclave;
- ``pool``: computed ahead of the stream and kept outside the enclave sealed (AES-GCM, the (frame,
  layer) pair as associated data), opened as each frame needs it; ``pool_bytes`` says how big it is;
- ``outsourced``: a second untrusted device computes ``W r`` from ``r`` alone (it never sees ``x + r``):
  sound only if the two devices do not collude, which every report must say.
"""

from __future__ import annotations

import os
import struct
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cbor2
import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from serdab.blind import MODES, mode_error
from serdab.blind.field import P
from serdab.blind.freivalds import FreivaldsCheck
from serdab.blind.kernels import mask_into_field, unmask_finish
from serdab.blind.masks import LOW_BITS, MaskSource
from serdab.blind.quantize import QLinear, QuantizedModel
from serdab.errors import LinkIntegrityError

__all__ = ["MODES", "BlindedRunner", "HonestGpu", "field_payload", "read_field_payload"]

Linear = Callable[[int, np.ndarray], np.ndarray]  # (linear layer index, field elements) -> W x mod P


def field_payload(layer: int, values: np.ndarray, frame: int = 0) -> bytes:
    """Field elements on the wire between the enclave and its GPU: 4 bytes each (P < 2^32), with the
    layer and the stream's frame id (public sequencing, as on every link). uint32 values are taken as
    field elements already (what the kernels and ``np.mod(...).astype(np.uint32)`` give)."""
    field_elements = values if values.dtype == np.uint32 else np.mod(np.rint(values), P)
    body = np.ascontiguousarray(field_elements, dtype="<u4").tobytes()
    return cbor2.dumps({"layer": layer, "frame": frame, "shape": list(values.shape), "data": body})


def read_field_payload(payload: bytes) -> tuple[int, np.ndarray, int]:
    """(layer, field elements as uint32, frame) from ``field_payload``; ValueError when malformed or out of
    range. Read in place: the unmasking kernel, the check and ``QLinear.linear`` take any integer dtype."""
    try:
        item = cbor2.loads(payload)
        layer, frame = int(item["layer"]), int(item["frame"])
        shape, body = tuple(int(n) for n in item["shape"]), item["data"]
        values = np.frombuffer(body, dtype="<u4").reshape(shape)
    except (ValueError, TypeError, KeyError, cbor2.CBORDecodeError) as exc:
        raise ValueError(f"malformed field payload: {exc}") from exc
    if values.size and int(values.max()) >= P:
        raise ValueError("field payload holds a value >= P")
    return layer, values, frame


class HonestGpu:
    """The untrusted device's side: it holds the integer weights (they are not secret from it) and
    answers ``W x mod P``; ``seen`` keeps every input it was shown, for tests of what it learns."""

    def __init__(self, model: QuantizedModel, keep: bool = False) -> None:
        self.layers = model.linear_layers
        self.seen: list[np.ndarray] | None = [] if keep else None

    def __call__(self, index: int, masked: np.ndarray) -> np.ndarray:
        if self.seen is not None:
            self.seen.append(masked.copy())
        return np.mod(self.layers[index].linear(masked), P).astype(np.uint32)


@dataclass
class _Pool:
    """``W r`` for frames ahead of the stream, sealed outside the enclave."""

    key: bytes = field(default_factory=lambda: os.urandom(32))
    sealed: dict[tuple[int, int], tuple[bytes, tuple[int, ...]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._aead = AESGCM(self.key)

    @staticmethod
    def _aad(frame: int, layer: int) -> bytes:
        return b"serdab-unmask-pool-v1|" + struct.pack(">qI", frame, layer)

    def put(self, frame: int, layer: int, u: np.ndarray) -> None:
        nonce = os.urandom(12)
        body = np.mod(u, P).astype("<u4").tobytes()
        sealed = nonce + self._aead.encrypt(nonce, body, self._aad(frame, layer))
        self.sealed[(frame, layer)] = (sealed, tuple(u.shape))

    def take(self, frame: int, layer: int) -> np.ndarray | None:
        """The sealed ``W r`` of (frame, layer), opened and dropped (used once, as its mask); None if absent."""
        if (frame, layer) not in self.sealed:
            return None
        blob, shape = self.sealed.pop((frame, layer))
        body = self._aead.decrypt(blob[:12], blob[12:], self._aad(frame, layer))
        return np.frombuffer(body, dtype="<u4").reshape(shape)  # the unmasking kernel reads uint32 as is

    @property
    def nbytes(self) -> int:
        return sum(len(blob) for blob, _ in self.sealed.values())


class BlindedRunner:
    """The enclave's side of the blinded pass over a quantised model."""

    def __init__(
        self,
        model: QuantizedModel,
        gpu: Linear,
        *,
        mode: str = "in-stream",
        integrity: bool = False,
        helper: Linear | None = None,
        masks: MaskSource | None = None,
        seed: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(mode_error(mode, None))
        if mode == "outsourced" and helper is None:
            raise ValueError("outsourced precomputation needs a second device (helper) to compute W r")
        self.model, self.gpu, self.mode, self.integrity, self.helper = model, gpu, mode, integrity, helper
        self.masks = masks or MaskSource()
        self._layers = model.linear_layers
        self._rng = np.random.default_rng(seed)  # Freivalds' secret vectors (per runner: one key epoch)
        self._checks: dict[tuple[int, tuple[int, ...]], FreivaldsCheck] = {}
        self._pool = _Pool()
        self.pool_misses = 0
        # outsourced: W r is asked for before the GPU's answer, so the two devices work at the same time
        self._ahead = ThreadPoolExecutor(1, thread_name_prefix="wr") if mode == "outsourced" else None
        self.timings: defaultdict[str, float] = defaultdict(float)  # seconds per part, for the blinding profile

    @property
    def pool_bytes(self) -> int:
        return self._pool.nbytes

    def precompute(self, frames: range, input_shape: tuple[int, ...]) -> None:
        """``pool`` mode: ``W r`` of every linear layer for these frames, ahead of the stream."""
        shapes = [shape for shape, _ in self.model.linear_shapes(input_shape)]
        for frame in frames:
            for index, (layer, shape) in enumerate(zip(self._layers, shapes, strict=True)):
                r = self.masks.regenerate(frame, index, shape)
                self._pool.put(frame, index, layer.linear(r))

    def run(self, frame: int, x: np.ndarray) -> np.ndarray:
        """The last layer's integers (scale 2^a), equal to ``model.run(x)`` bit for bit."""

        clock, timings = time.perf_counter, self.timings

        def blinded(index: int, layer: QLinear, h: np.ndarray, skip: np.ndarray | None) -> np.ndarray:
            check = self._vectors(index, layer, h.shape) if self.integrity else None
            fts = check.fts if check else None
            # x + r mod P for the GPU (|h| < P/2, decode's range); Freivalds' <W^T s, x> on the way
            words = self.masks.draw_words(frame, index, h.size)
            masked, expected, rejects = mask_into_field(h, words, fts)
            if rejects:  # a 30-bit draw at or above P: the mask with it redrawn, as regenerate makes it
                words = self.masks.regenerate(frame, index, h.shape, raw=True)
                masked, expected, _ = mask_into_field(h, words, fts)
            r = None if self.mode == "pool" else (words & np.uint32(LOW_BITS)).reshape(h.shape)
            ahead = self._ahead.submit(self.helper, index, r) if self._ahead and self.helper and r is not None else None
            started = clock()
            z = self.gpu(index, masked)
            unmasking = clock()
            timings["gpu"] += unmasking - started
            u = ahead.result() if ahead is not None else self._unmask(frame, index, layer, h.shape, r)
            timings["unmask"] += clock() - unmasking
            # finish(decode(z - u), skip) in one pass, and <s, W x>: one check of the GPU's answer and W r together
            out, got = unmask_finish(z, u, layer.bias, layer.shift, check.s if check else None, layer.clamp, skip)
            if check is not None and got != expected:
                raise self._culprit(frame, layer, check, masked, z)
            return out

        entered = clock()
        h = self.model.quantise_input(x)
        timings["entry"] += clock() - entered
        return self.model.evaluate(h, blinded, finished=True)

    def _unmask(
        self, frame: int, index: int, layer: QLinear, shape: tuple[int, ...], r: np.ndarray | None
    ) -> np.ndarray:
        if self.mode == "pool":
            u = self._pool.take(frame, index)
            if u is not None:
                return u
            self.pool_misses += 1  # a frame the pool did not foresee: computed here, and counted
            r = self.masks.regenerate(frame, index, shape, raw=True)
        assert r is not None
        return np.mod(layer.linear(r), P).astype(np.uint32)

    def _culprit(
        self, frame: int, layer: QLinear, check: FreivaldsCheck, masked: np.ndarray, z: np.ndarray
    ) -> LinkIntegrityError:
        """Which answer failed the combined check: the GPU's ``W (x + r)``, checked alone with the same
        secret vector; if that one holds, the second device's ``W r`` (the outsourced mode: the pool's is
        sealed and the enclave's own is right), so neither untrusted device is blamed for the other."""
        if self.mode == "outsourced" and check.check(masked, z):
            return LinkIntegrityError(
                "wrong-precomputation", f"the W r device's answer for blinded layer {layer.name} fails Freivalds' check"
            )
        return LinkIntegrityError(
            "wrong-answer", f"the GPU's answer to blinded layer {layer.name} (frame {frame}) fails Freivalds' check"
        )

    def _vectors(self, index: int, layer: QLinear, shape: tuple[int, ...]) -> FreivaldsCheck:
        key = (index, shape)
        if key not in self._checks:
            self._checks[key] = FreivaldsCheck(layer, shape, self._rng)
        return self._checks[key]
