"""What one frame is on a hop: the single definition the runtime encodes with and the cost model charges.

A frame crosses a link as one length-prefixed CBOR message ``{seq, frame, at, ct}``; ``ct`` is
AES-GCM (16-byte tag) over a CBOR payload ``{"t": tensors, "m": timing records}``. Frames enter
the pipeline as uint8 pixels (the first stage normalises them inside its enclave); stage outputs
travel in their own dtype. Timing records have a fixed size (``RECORD_SLOTS`` stages of three
float32 milliseconds), so a hop's size depends only on the tensor it carries: the cost model
charges ``hop_bytes`` for it, the link shaper charges ``message_bytes`` for what it sends, and a
test holds both to the bytes a real run puts on every socket. Hand-written because the CBOR
arithmetic is this product's own wire format; a unit test checks it against cbor2's encoder.

A leaf: numpy and cbor2 only, so enclave workers import it.
"""

from __future__ import annotations

from collections.abc import Sequence

import cbor2
import numpy as np

__all__ = [
    "INGRESS_DTYPE",
    "RECORD_FIELDS",
    "RECORD_SLOTS",
    "decode_payload",
    "encode_payload",
    "hop_bytes",
    "ingress_bytes",
    "message_bytes",
    "new_records",
    "payload_bytes",
]

INGRESS_DTYPE = np.dtype(np.uint8)  # what a camera frame is on the first hop
RECORD_FIELDS = ("queue_ms", "host_ms", "emulated_ms")
RECORD_SLOTS = 8  # stages a frame can record: a placement has at most this many (the manager checks)
_RECORD_DTYPE = np.dtype("<f4")
_RECORD_BYTES = RECORD_SLOTS * len(RECORD_FIELDS) * _RECORD_DTYPE.itemsize
TAG_BYTES = 16  # AES-GCM
LENGTH_PREFIX_BYTES = 4
_INT_BYTES = 5  # seq and frame ids as the cost model counts them: up to 2**32 (smaller ids are 1-4 bytes less)


def new_records() -> np.ndarray:
    """Empty timing records: one row per stage, NaN until that stage has seen the frame."""
    return np.full((RECORD_SLOTS, len(RECORD_FIELDS)), np.nan, dtype=_RECORD_DTYPE)


def encode_payload(arrays: Sequence[np.ndarray], records: np.ndarray) -> bytes:
    """Tensors (dtype, shape, raw bytes) and the frame's timing records as one CBOR payload."""
    tensors = [[a.dtype.str, list(a.shape), np.ascontiguousarray(a).tobytes()] for a in arrays]
    return cbor2.dumps({"t": tensors, "m": np.ascontiguousarray(records, dtype=_RECORD_DTYPE).tobytes()})


def decode_payload(payload: bytes) -> tuple[list[np.ndarray], np.ndarray]:
    """The tensors and a writable copy of the records (a stage fills its own row)."""
    item = cbor2.loads(payload)
    arrays = [np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape) for dtype, shape, data in item["t"]]
    records = np.frombuffer(item["m"], dtype=_RECORD_DTYPE).reshape(RECORD_SLOTS, len(RECORD_FIELDS)).copy()
    return arrays, records


def _head(n: int) -> int:
    """Bytes of a CBOR head carrying the unsigned number ``n`` (a length or an integer)."""
    return 1 if n < 24 else 2 if n < 2**8 else 3 if n < 2**16 else 5 if n < 2**32 else 9


def _int(v: int) -> int:
    return _head(v if v >= 0 else -1 - v)


def _text(s: str) -> int:
    return _head(len(s)) + len(s)


def payload_bytes(tensors: Sequence[tuple[np.dtype, Sequence[int]]]) -> int:
    """Bytes of ``encode_payload`` for tensors of these dtypes and shapes."""
    size = _head(2) + _text("t") + _head(len(tensors))
    for dtype, shape in tensors:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        size += _head(3) + _text(np.dtype(dtype).str) + _head(len(shape)) + sum(_int(int(d)) for d in shape)
        size += _head(nbytes) + nbytes
    return size + _text("m") + _head(_RECORD_BYTES) + _RECORD_BYTES


def message_bytes(payload: int, seq: int | None = None, frame: int | None = None) -> int:
    """Bytes on the socket for a sealed message whose payload is ``payload`` bytes (CBOR map of seq,
    frame, at and ct, with its length prefix). Without ``seq`` and ``frame`` (the cost model, which
    charges every frame alike) they count at their widest common width, up to 8 bytes over."""
    ct = payload + TAG_BYTES
    ids = (_int(seq) if seq is not None else _INT_BYTES) + (_int(frame) if frame is not None else _INT_BYTES)
    fields = _text("seq") + _text("frame") + ids + _text("at") + 9 + _text("ct") + _head(ct) + ct
    return LENGTH_PREFIX_BYTES + _head(4) + fields


def hop_bytes(dtype: np.dtype, shape: Sequence[int]) -> int:
    """What one frame carrying this tensor costs on a link, everything included."""
    return message_bytes(payload_bytes([(dtype, shape)]))


def ingress_bytes(input_shape: Sequence[int]) -> int:
    """The first hop: a camera frame at the model's input size, as uint8 pixels."""
    return hop_bytes(INGRESS_DTYPE, input_shape)
