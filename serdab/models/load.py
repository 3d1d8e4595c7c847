"""Turn whatever names a model (zoo name, .onnx path, torch module) into one ONNX ModelProto.

Zoo models are exported once and cached under the Serdab cache directory, so later commands
start fast. Export uses torch's TorchScript exporter: it needs no extra packages and gives
plain opset-17 graphs (one node per layer) that cut cleanly.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from serdab.errors import InputShapeError, ModelNotFoundError, NotOnnxError
from serdab.models.zoo import ZOO, build_module, zoo_entry

__all__ = ["LoadedModel", "cache_dir", "export_module", "load_model"]

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "output"
_EXPORT_FORMAT = "1"  # bump when the export recipe changes, so stale caches are ignored


@dataclass(frozen=True)
class LoadedModel:
    """An ONNX model plus what we know of its input (the zoo's seed size, or None for files)."""

    name: str
    proto: onnx.ModelProto
    input_chw: tuple[int, ...] | None


def cache_dir() -> Path:
    """Where exports and profiles are cached: $SERDAB_CACHE_DIR, else ~/.cache/serdab."""
    root = os.environ.get("SERDAB_CACHE_DIR") or Path.home() / ".cache" / "serdab"
    return Path(root)


def export_module(module: nn.Module, input_chw: tuple[int, ...]) -> onnx.ModelProto:
    """Export a torch module to ONNX with a dynamic batch axis."""
    module = module.eval()
    example = torch.zeros(1, *input_chw)
    buffer: Any = io.BytesIO()  # torch accepts a file object; its stubs name only paths
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue())


def _zoo_proto(name: str) -> onnx.ModelProto:
    entry = zoo_entry(name)
    tag = hashlib.sha256(f"{_EXPORT_FORMAT}:{torch.__version__}:{entry}".encode()).hexdigest()[:12]
    path = cache_dir() / "models" / f"{name}-{tag}.onnx"
    if path.exists():
        return onnx.load(path)
    proto = export_module(build_module(name), entry.input_chw)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    onnx.save(proto, tmp)
    tmp.replace(path)  # atomic: concurrent runs never read half a file
    return proto


def _file_proto(path: Path) -> onnx.ModelProto:
    if path.is_dir():
        raise NotOnnxError(f"{path} is a directory, not an ONNX model file (example: models/net.onnx)")
    try:
        proto = onnx.load(path)
        onnx.checker.check_model(proto)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, OSError... all mean "not usable"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NotOnnxError(f"{path} is not a valid ONNX model ({first_line[:120]})") from None
    if not proto.graph.node:
        raise NotOnnxError(f"{path} is an ONNX model with no nodes")
    return proto


def load_model(model: str | os.PathLike[str] | nn.Module, input_chw: tuple[int, ...] | None = None) -> LoadedModel:
    """Resolve a zoo name, an .onnx path or a torch module (then ``input_chw`` is required)."""
    if isinstance(model, nn.Module):
        if input_chw is None:
            raise InputShapeError("a torch module needs input_chw, e.g. (3, 224, 224)")
        return LoadedModel(type(model).__name__, export_module(model, input_chw), tuple(input_chw))
    text = os.fspath(model)
    path = Path(text).expanduser()
    if text not in ZOO and path.exists():
        return LoadedModel(path.stem, _file_proto(path), None)
    if text not in ZOO and (path.suffix or os.sep in text):
        raise ModelNotFoundError(f"model file not found: {text}")
    entry = zoo_entry(text)  # unknown names raise, listing the zoo
    return LoadedModel(text, _zoo_proto(text), entry.input_chw)
