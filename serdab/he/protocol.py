"""What client and server exchange: the model description, the key upload, the size limits.

The client needs the model's CKKS parameters, where each input value goes in the slot vector,
and where each output value comes back (per cut point, for transfer mode); the server publishes
these as a ``ModelSpec``. Keys travel once per session as one CBOR map of SEAL's serialised
objects; ciphertexts travel as SEAL's own bytes (binary endpoints) or base64 in JSON (the format
of seed 004's PyCrCNN service).
"""

from __future__ import annotations

from typing import Any

import cbor2
import numpy as np
from pydantic import BaseModel

from serdab.errors import ModelError
from serdab.he.backend import HeError
from serdab.he.packing import Layout

__all__ = [
    "MAX_BATCH_BODY",
    "MAX_INFER_BODY",
    "MAX_KEYS_BODY",
    "CutSpec",
    "ModelSpec",
    "decode_keys",
    "encode_keys",
]

MAX_INFER_BODY = 4 * 1024 * 1024  # one packed ciphertext is ~0.45 MB at N=8192, ~1.5 MB at N=16384
MAX_KEYS_BODY = 1024 * 1024 * 1024
MAX_BATCH_BODY = 2 * 1024 * 1024 * 1024


class CutSpec(BaseModel):
    """The encrypted result after ``layer`` modules of the approximated net: where each value lies."""

    layer: int
    shape: list[int]
    positions: list[int]
    rotation_steps: list[int]  # Galois keys a session needs to reach this cut


class ModelSpec(BaseModel):
    name: str
    backend: str
    params: dict[str, Any]
    input_shape: list[int]
    input_positions: list[list[int]]  # per input value, its slot in each replica
    cuts: list[CutSpec]
    recall_layer: int
    transfer_layer: int  # any layer 1..recall_layer is a cut point, in packed and batch mode

    def cut(self, layer: int | None) -> CutSpec:
        wanted = self.recall_layer if layer is None else layer
        for cut in self.cuts:
            if cut.layer == wanted:
                return cut
        raise HeError(f"{self.name} has layers 1..{self.recall_layer}; cannot return its result after {wanted}")

    def pack(self, image: np.ndarray, slots: int) -> np.ndarray:
        """The slot vector the client encrypts: each input value in every replica the model wants."""
        layout = Layout(tuple(self.input_shape), np.asarray(self.input_positions), slots)
        try:
            return layout.pack(image, slots)
        except ModelError:
            raise HeError(f"{self.name} takes {layout.positions.shape[0]} values {layout.shape}") from None

    def unpack(self, vector: np.ndarray, layer: int | None = None) -> np.ndarray:
        cut = self.cut(layer)
        return Layout(tuple(cut.shape), np.asarray(cut.positions)[:, None], len(vector)).unpack(vector)


def encode_keys(model: str, params: dict[str, Any], keys: dict[str, bytes]) -> bytes:
    return cbor2.dumps({"model": model, "params": params, **keys})


def decode_keys(body: bytes) -> tuple[str, dict[str, Any], dict[str, bytes]]:
    """(model, params, keys) from a session upload; HeError says what is wrong."""
    try:
        item = cbor2.loads(body)
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError, MemoryError):
        raise HeError("key upload is not valid CBOR") from None
    if not isinstance(item, dict) or not isinstance(item.get("model"), str) or not isinstance(item.get("params"), dict):
        raise HeError("key upload must be a CBOR map with 'model', 'params' and the three key byte strings")
    keys = {name: item.get(name) for name in ("public_key", "relin_keys", "galois_keys")}
    bad = [name for name, value in keys.items() if not isinstance(value, bytes)]
    if bad:
        raise HeError(f"key upload lacks byte strings {', '.join(bad)}")
    return item["model"], item["params"], keys  # type: ignore[return-value]
