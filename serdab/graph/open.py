"""One call from "whatever names a model" to a chain of blocks."""

from __future__ import annotations

import os
from dataclasses import dataclass

from torch import nn

from serdab.graph.bind import bind_input_shape
from serdab.graph.chain import Chain, build_chain
from serdab.models import load_model

__all__ = ["NamedChain", "open_chain"]


@dataclass(frozen=True)
class NamedChain:
    name: str
    chain: Chain


def open_chain(
    model: str | os.PathLike[str] | nn.Module,
    input_shape: tuple[int, ...] | None = None,
    batch: int | None = None,
) -> NamedChain:
    """Load a zoo name / .onnx path / torch module, bind its input shape and find its blocks.

    ``input_shape`` may be (C, H, W) or (N, C, H, W); zoo models default to their seed size.
    """
    chw = None
    if isinstance(model, nn.Module) and input_shape is not None:
        chw = tuple(input_shape[-3:]) if len(input_shape) == 4 else tuple(input_shape)
    loaded = load_model(model, chw)
    shape = input_shape
    if shape is None and loaded.input_chw is not None:
        shape = loaded.input_chw
    return NamedChain(loaded.name, build_chain(bind_input_shape(loaded.proto, shape, batch)))
