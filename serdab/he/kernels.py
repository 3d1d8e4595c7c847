"""Evaluate a packed program on a ciphertext with any HE backend (the server side).

The plaintexts of every layer are encoded once, at the level the layer runs at and with the
scale of the prime its rescale drops, so a layer's output keeps its input's scale exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serdab.he.backend import HeBackend
from serdab.he.packing import LinearStep, PackedProgram, SquareStep

__all__ = ["EncodedProgram", "encode_program", "run_packed"]


class EncodedProgram:
    """A program with its weights encoded as plaintexts for one parameter set."""

    def __init__(self, program: PackedProgram, plaintexts: list[dict[int, dict[int, Any]]]) -> None:
        self.program = program
        self.plaintexts = plaintexts


def encode_program(program: PackedProgram, backend: HeBackend) -> EncodedProgram:
    plaintexts: list[dict[int, dict[int, Any]]] = []
    for step in program.steps:
        encoded: dict[int, dict[int, Any]] = {}
        if isinstance(step, LinearStep):
            for giant, row in step.terms.items():
                encoded[giant] = {a: backend.encode_weights(values, step.level) for a, values in row.items()}
        plaintexts.append(encoded)
    return EncodedProgram(program, plaintexts)


def run_packed(encoded: EncodedProgram, backend: HeBackend, ct: Any, upto: int | None = None) -> Any:
    """Run the first ``upto`` steps (all by default) on ``ct``; returns the output ciphertext."""
    steps = encoded.program.steps[:upto]
    for step, plaintexts in zip(steps, encoded.plaintexts, strict=False):
        ct = backend.square(ct) if isinstance(step, SquareStep) else _linear(step, plaintexts, backend, ct)
    return ct


def _linear(step: LinearStep, plaintexts: dict[int, dict[int, Any]], backend: HeBackend, ct: Any) -> Any:
    babies: dict[int, Any] = {}
    total = None
    for giant, row in plaintexts.items():
        inner = None
        for baby, plain in row.items():
            if baby not in babies:
                babies[baby] = ct if baby == 0 else backend.rotate(ct, baby)
            product = backend.multiply_plain(babies[baby], plain)
            if inner is None:
                inner = product
            else:
                backend.add_inplace(inner, product)
        if giant:
            inner = backend.rotate(inner, giant)
        if total is None:
            total = inner
        else:
            backend.add_inplace(total, inner)
    backend.rescale_inplace(total)
    for step_size in step.fold:
        backend.add_inplace(total, backend.rotate(total, step_size))
    if np.any(step.bias):
        backend.add_plain_inplace(total, backend.encode_like(step.bias, total))
    return total
