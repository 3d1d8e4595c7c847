"""Freivalds' check of a GPU's linear layer: catch a wrong answer without recomputing it.

For a linear map ``f`` and a secret random vector ``s`` (per key epoch, inside the enclave), a correct
answer ``y = f(x)`` satisfies ``<s, y> = <f^T(s), x>`` (mod P); a wrong one passes with probability
at most 1/P. ``f^T(s)`` is computed once per epoch and layer (the gradient of ``<s, f(x)>``, exact in
float64: s < 2^30 and the bound of ``field.check_exact``). The blinded pass checks ``W x`` itself,
after removing ``W r``: both inner products then ride along in the masking and unmasking loops
(``kernels``), and one check covers the GPU's answer and the unmasking vector together; ``check``
(two separate inner products) is what names the culprit when that combined check fails.
"""

from __future__ import annotations

import numpy as np
import torch

from serdab.blind.field import P
from serdab.blind.quantize import QLinear

__all__ = ["FreivaldsCheck"]


def _field(values: np.ndarray) -> np.ndarray:
    return np.mod(np.rint(values).astype(np.int64), P)


class FreivaldsCheck:
    """For one layer and key epoch: ``s`` over its output, ``fts = W^T s`` over its input (flat uint32
    field elements, what the kernels read); ``check(x, y)`` says whether ``y`` is ``layer(x)`` mod P."""

    def __init__(self, layer: QLinear, in_shape: tuple[int, ...], rng: np.random.Generator) -> None:
        x = torch.zeros(in_shape, dtype=torch.float64, requires_grad=True)
        out = layer.linear_t(x)
        s = rng.integers(0, P, size=tuple(out.shape), dtype=np.int64)
        (fts,) = torch.autograd.grad(out, x, grad_outputs=torch.from_numpy(s.astype(np.float64)))
        self.s = s.astype(np.uint32).ravel()
        self.fts = _field(fts.numpy()).astype(np.uint32).ravel()

    def check(self, x: np.ndarray, y: np.ndarray) -> bool:
        """``x`` and ``y`` field elements (values in [0, P): what the link's reader and ``np.mod`` give)."""
        from serdab.blind.kernels import dot_mod

        return dot_mod(self.s, y) == dot_mod(self.fts, x)
