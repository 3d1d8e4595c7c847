"""Freivalds' check of a GPU's linear layer: catch a wrong answer without recomputing it.

For a linear map ``f`` and a secret random vector ``s`` (per key epoch, inside the enclave), a correct
answer ``z = f(x)`` satisfies ``<s, z> = <f^T(s), x>`` (mod P); a wrong one passes with probability
at most 1/P. ``f^T(s)`` is computed once per epoch and layer (the gradient of ``<s, f(x)>``, exact in
float64: s < 2^30 and the bound of ``field.check_exact``); each check then costs two inner products,
in int64 with a reduction after every product so nothing overflows.
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
    """For one layer and key epoch: ``check(x, z)`` says whether ``z`` is ``layer(x)`` mod P."""

    def __init__(self, layer: QLinear, in_shape: tuple[int, ...], rng: np.random.Generator) -> None:
        x = torch.zeros(in_shape, dtype=torch.float64, requires_grad=True)
        out = layer.linear_t(x)
        self._s = rng.integers(0, P, size=tuple(out.shape), dtype=np.int64)
        (fts,) = torch.autograd.grad(out, x, grad_outputs=torch.from_numpy(self._s.astype(np.float64)))
        self._fts = _field(fts.numpy())

    def check(self, x: np.ndarray, z: np.ndarray) -> bool:
        """``x`` and ``z`` field elements (values in [0, P): what the link's reader and ``np.mod`` give)."""
        from serdab.blind.kernels import dot_mod

        return dot_mod(self._s, z) == dot_mod(self._fts, x)
