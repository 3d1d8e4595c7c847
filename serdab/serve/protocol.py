"""Wire formats of a replica: Open Inference Protocol v2 (KServe/Triton) and seed 001's image batches.

OIP v2 REST: an inference request names input tensors (name, shape, datatype) whose data is a
flat JSON list or, with the binary-tensor extension, raw little-endian bytes appended after the
JSON header (its length in the ``Inference-Header-Content-Length`` header, each input's size in
``parameters.binary_data_size``). Outputs come back the same way, binary when the request asks
(``binary_data_output``). Seed 001's format: ``{"images": [base64 image file, ...]}`` in, the top
classes per image out.

Pure: numpy and pydantic only (Pillow when an image is decoded), so the enclave loads little.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from serdab.errors import InferenceRequestError
from serdab.normalisation import normalisation

__all__ = [
    "BINARY_HEADER",
    "DATATYPES",
    "ImageBatch",
    "InferInput",
    "InferRequest",
    "TensorSpec",
    "decode_images",
    "datatype_of",
    "decode_tensor",
    "encode_image",
    "encode_infer_request",
    "encode_infer_response",
    "parse_infer_request",
    "parse_infer_response",
    "top_k",
]

BINARY_HEADER = "inference-header-content-length"
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("bool"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_NAMES = {v: k for k, v in DATATYPES.items()}


def datatype_of(dtype: np.dtype) -> str | None:
    """The OIP datatype of a numpy dtype (either byte order), None when it has none."""
    return _NAMES.get(dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype)


MAX_IMAGES = 64
MAX_ELEMENTS = 2**31  # per input tensor; a body is capped far below it anyway


class TensorSpec(BaseModel):
    """A model input or output as ``/v2/models/{name}`` describes it (-1 = any size)."""

    name: str
    datatype: str
    shape: list[int]


Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"
]


class InferInput(BaseModel):
    name: str = Field(min_length=1, max_length=256)
    shape: list[int] = Field(max_length=8)
    datatype: Datatype  # OIP's numeric types (BYTES is not a tensor a vision model takes)
    data: list[Any] | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferOutputRequest(BaseModel):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(BaseModel):
    id: str | None = Field(None, max_length=256)
    inputs: list[InferInput] = Field(min_length=1, max_length=16)
    outputs: list[InferOutputRequest] | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class ImageBatch(BaseModel):
    """Seed 001's request: a batch of base64-encoded image files (PNG, JPEG, ...)."""

    images: list[str] = Field(min_length=1, max_length=MAX_IMAGES)
    top_k: int = Field(5, ge=1, le=1000)


def _flat(data: list[Any]) -> list[Any]:
    """OIP allows nested lists in row-major order; flatten them."""
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def decode_tensor(
    name: str, datatype: str, shape: Sequence[int], raw: memoryview | bytes | None, values: Sequence[Any] | None
) -> np.ndarray:
    """One input tensor from its raw little-endian bytes or its flat values (REST's data, gRPC's typed
    contents), checked: a known datatype, no negative dimension, at most MAX_ELEMENTS, the size the
    shape needs, values that fit the datatype."""
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise InferenceRequestError(
            f"input {name!r}: datatype {datatype!r} is not supported; use one of {', '.join(DATATYPES)}"
        )
    if any(d < 0 for d in shape):
        raise InferenceRequestError(f"input {name!r}: shape {list(shape)} has a negative dimension")
    count = math.prod(shape)  # Python ints: a dimension past 64 bits is a 400, not an overflow
    if count > MAX_ELEMENTS:
        raise InferenceRequestError(f"input {name!r}: shape {list(shape)} is over {MAX_ELEMENTS:,} elements")
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise InferenceRequestError(
                f"input {name!r}: {len(raw)} binary bytes for shape {list(shape)} of {datatype} "
                f"(needs {count * dtype.itemsize})"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    if values is None:
        raise InferenceRequestError(f"input {name!r} has no data")
    if len(values) != count:
        raise InferenceRequestError(f"input {name!r}: {len(values)} values for shape {list(shape)} (needs {count})")
    try:
        return np.asarray(values, dtype=dtype).reshape(shape)
    except (TypeError, ValueError, OverflowError):
        raise InferenceRequestError(f"input {name!r}: data is not {datatype}") from None


def _tensor(spec: InferInput, raw: memoryview | None) -> np.ndarray:
    if raw is None and spec.data is None:
        raise InferenceRequestError(f"input {spec.name!r} has neither data nor parameters.binary_data_size")
    values = _flat(spec.data) if raw is None and spec.data is not None else None
    return decode_tensor(spec.name, spec.datatype, spec.shape, raw, values)


def parse_infer_request(body: bytes, header_length: str | None) -> tuple[InferRequest, dict[str, np.ndarray], bool]:
    """(request, tensors by input name, whether outputs go back binary) from an HTTP body."""
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise InferenceRequestError(f"{BINARY_HEADER} must be an integer (got {header_length!r})") from None
        if not 0 <= split <= len(body):
            raise InferenceRequestError(f"{BINARY_HEADER} {split} is outside the {len(body)}-byte body")
        head, tail = body[:split], memoryview(body)[split:]
    else:
        head, tail = body, memoryview(b"")
    try:
        request = InferRequest.model_validate_json(head)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InferenceRequestError(f"not an OIP v2 inference request: {where}: {first['msg']}") from None
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for spec in request.inputs:
        size = spec.parameters.get("binary_data_size")
        raw = None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(tail):
                raise InferenceRequestError(f"input {spec.name!r}: binary_data_size {size!r} does not fit the body")
            raw = tail[offset : offset + size]
            offset += size
        if spec.name in tensors:
            raise InferenceRequestError(f"input {spec.name!r} is given twice")
        tensors[spec.name] = _tensor(spec, raw)
    if offset != len(tail):
        raise InferenceRequestError(f"{len(tail) - offset} binary bytes after the last input")
    binary = bool(request.parameters.get("binary_data_output")) or any(
        bool(o.parameters.get("binary_data")) for o in request.outputs or []
    )
    return request, tensors, binary


def encode_infer_response(
    model: str, outputs: dict[str, np.ndarray], request_id: str | None, binary: bool
) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers (binary: JSON header, then each output's bytes)."""
    entries, blobs = [], []
    for name, array in outputs.items():
        array = np.ascontiguousarray(array)
        datatype = datatype_of(array.dtype) or "FP32"
        if datatype == "FP32" and array.dtype != np.float32:
            array = array.astype(np.float32)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            data = array.astype(DATATYPES[datatype], copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    answer: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": entries}
    if request_id is not None:  # OIP: the request's id, and no id at all when it had none
        answer["id"] = request_id
    head = json.dumps(answer).encode()
    if not binary:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream", BINARY_HEADER: str(len(head))}


def encode_infer_request(
    inputs: dict[str, np.ndarray], binary: bool = True, request_id: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """A client's request body and headers (binary tensors by default: no float-to-text cost)."""
    entries, blobs = [], []
    for name, array in inputs.items():
        array = np.ascontiguousarray(array)
        datatype = _NAMES.get(array.dtype)
        if datatype is None:
            raise InferenceRequestError(f"input {name!r}: numpy dtype {array.dtype} has no OIP datatype")
        entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype}
        if binary:
            data = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    body: dict[str, Any] = {"inputs": entries, "parameters": {"binary_data_output": binary}}
    if request_id:
        body["id"] = request_id
    head = json.dumps(body).encode()
    if not binary:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream", BINARY_HEADER: str(len(head))}


def parse_infer_response(body: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    split = int(header_length) if header_length is not None else len(body)
    item = json.loads(body[:split])
    tail = memoryview(body)[split:]
    out, offset = {}, 0
    for entry in item["outputs"]:
        dtype = DATATYPES[entry["datatype"]]
        size = (entry.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            out[entry["name"]] = np.frombuffer(tail[offset : offset + size], dtype=dtype).reshape(entry["shape"])
            offset += size
        else:
            out[entry["name"]] = np.asarray(entry["data"], dtype=dtype).reshape(entry["shape"])
    return out


def encode_image(pixels: np.ndarray) -> str:
    """uint8 H x W [x 3] pixels as a base64 PNG (what seed 001's clients send)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decode_images(images: Sequence[str], input_shape: Sequence[int]) -> np.ndarray:
    """Base64 image files -> the model's normalised N x C x H x W float32 batch (ImageNet or MNIST statistics)."""
    from PIL import Image, UnidentifiedImageError

    _, channels, height, width = input_shape
    batch = []
    for k, text in enumerate(images):
        try:
            data = base64.b64decode(text, validate=True)
            with Image.open(io.BytesIO(data)) as opened:
                image = opened.convert("L" if channels == 1 else "RGB").resize(
                    (width, height), Image.Resampling.BILINEAR
                )
        except (binascii.Error, ValueError):
            raise InferenceRequestError(f"image {k} is not valid base64") from None
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
            raise InferenceRequestError(f"image {k} is not an image file Pillow can read (PNG, JPEG, ...)") from None
        pixels = np.asarray(image, dtype=np.uint8)
        batch.append(pixels[None] if channels == 1 else pixels.transpose(2, 0, 1))
    return normalisation(1 if channels == 1 else 3).apply(np.stack(batch))


def top_k(logits: np.ndarray, k: int) -> list[list[dict[str, float]]]:
    """Softmax top-k per row: ``[{"class": i, "score": p}, ...]`` as seed 001's endpoint answers."""
    flat = logits.reshape(logits.shape[0], -1).astype(np.float64)
    shifted = np.exp(flat - flat.max(axis=1, keepdims=True))
    probs = shifted / shifted.sum(axis=1, keepdims=True)
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        [{"class": int(c), "score": round(float(p[c]), 6)} for c in row] for p, row in zip(probs, order, strict=True)
    ]
