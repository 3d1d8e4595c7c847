"""Batch mode: slot = image. One ciphertext per input value, each holding up to N/2 images.

No rotations at all: a layer is a sparse linear combination of ciphertexts with plaintext
scalars, so cost grows with the number of weights, not with the packing. Average pooling is a
plain sum here (its 1/k^2 goes into the next layer's weights), so it costs no level and no
product; convolutions are kept separate from the pooling that follows for the same reason. Squares are
left raw (3 parts, not rescaled): the next layer's products and sums take them and relinearise,
then rescale twice, once per output: 1296 squares but 72 relinearisations on the 5-layer net (a
relinearisation costs ~15 squares here).
For throughput jobs (many images, one client); a single image should use the packed mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from serdab.errors import ModelError
from serdab.he.backend import HeBackend
from serdab.he.packing import affine_map, affine_segments

__all__ = ["BatchOp", "BatchProgram", "compile_batch", "run_batch"]


@dataclass
class BatchOp:
    kind: str  # "affine", "sum" or "square"
    rows: list[tuple[np.ndarray, np.ndarray]]  # per output: input indices and weights (affine, sum)
    bias: np.ndarray
    end: int  # modules of the Sequential consumed after this op
    shape: tuple[int, ...]


@dataclass
class BatchProgram:
    input_shape: tuple[int, ...]
    ops: list[BatchOp]

    @property
    def depth(self) -> int:
        return sum(op.kind != "sum" for op in self.ops)


def compile_batch(model: nn.Sequential, in_shape: tuple[int, ...]) -> BatchProgram:
    """One op per square and per run of affine layers (composed, as in the packed mode, so the depth
    is the same); a run's leading average pooling becomes a sum with its 1/k^2 in what follows."""
    ops: list[BatchOp] = []
    shape = tuple(in_shape)
    for kind, start, end in affine_segments(model):
        if kind == "square":
            ops.append(BatchOp("square", [], np.zeros(0), end, shape))
            continue
        modules = list(model)[start:end]
        factor, index = 1.0, 0
        while index < len(modules) and isinstance(modules[index], nn.AvgPool2d | nn.Flatten | nn.Identity):
            if not any(isinstance(m, nn.Conv2d | nn.Linear) for m in modules[index + 1 :]):
                break
            module = modules[index]
            weights, bias, out_shape = affine_map(module, shape)
            if isinstance(module, nn.AvgPool2d):
                values = np.unique(np.round(weights[weights != 0], 12))
                if len(values) != 1 or bias.any():
                    break  # not a plain average (padding): leave it to the composed affine op
                factor *= float(values[0])
                rows = [(np.nonzero(row)[0], np.ones(np.count_nonzero(row))) for row in weights]
                ops.append(BatchOp("sum", rows, bias, start + index + 1, out_shape))
            shape = out_shape
            index += 1
        weights, bias, shape = affine_map(nn.Sequential(*modules[index:]), shape)
        weights = weights * factor
        rows = []
        for row in weights:
            used = np.nonzero(np.abs(row) > 1e-12)[0]
            if used.size == 0:
                raise ModelError(f"layers {start}-{end - 1} have an output that depends on no input")
            rows.append((used, row[used]))
        ops.append(BatchOp("affine", rows, bias, end, shape))
    return BatchProgram(tuple(in_shape), ops)


def run_batch(program: BatchProgram, backend: HeBackend, cts: list[Any], upto: int | None = None) -> list[Any]:
    """Run the ops that end at or before module count ``upto`` (all by default)."""
    ops = [op for op in program.ops if upto is None or op.end <= upto]
    for number, op in enumerate(ops, start=1):
        if op.kind == "square":  # raw unless it is the last op; the next affine op finishes it
            cts = [backend.square(ct, relinearize=number == len(ops)) for ct in cts]
        elif op.kind == "sum":
            cts = [_sum([cts[i] for i in used], backend) for used, _ in op.rows]
        else:
            cts = [
                _affine(cts, used, weights, bias, backend)
                for (used, weights), bias in zip(op.rows, op.bias, strict=True)
            ]
    return cts


def _sum(items: list[Any], backend: HeBackend) -> Any:
    if len(items) == 1:
        return items[0]
    total = backend.add(items[0], items[1])
    for item in items[2:]:
        backend.add_inplace(total, item)
    return total


def _affine(cts: list[Any], used: np.ndarray, weights: np.ndarray, bias: float, backend: HeBackend) -> Any:
    level = backend.level(cts[used[0]])
    raw = backend.parts(cts[used[0]]) == 3  # a raw square: this layer also does its relin and rescale
    scale_level = level - 1 if raw else level
    total = None
    for index, weight in zip(used, weights, strict=True):
        product = backend.multiply_plain(cts[index], backend.encode_weights(float(weight), level, scale_level))
        if total is None:
            total = product
        else:
            backend.add_inplace(total, product)
    backend.relinearize_inplace(total)  # once per output, not once per squared input
    backend.rescale_inplace(total)
    if raw:
        backend.rescale_inplace(total)
    if bias:
        backend.add_plain_inplace(total, backend.encode_like(float(bias), total))
    return total
