"""Compile an approximated CNN into packed CKKS steps: one image per ciphertext.

Every run of affine layers (convolution, average pooling with its 1/k^2, flatten, linear) is one
linear map on the slot vector, taken from the torch modules themselves (applied to a basis), and
evaluated by the generalised diagonal method with baby and giant steps:

    z = sum_g rot( sum_a P[g, a] * rot(x, a), g )        (then optional rotate-and-sum "fold")

Two ways to lay out the result (issue 5, item 3):

- ``spatial`` (the first convolution): the client packs the image into ``copies`` replicas; output
  channel ``co`` sits in replica ``co % copies``, shifted by a small "phase" per channel group into
  the holes a strided convolution leaves. Baby steps are then the kernel offsets, giant steps the
  phases: 8 + 3 rotations for the 5-layer net instead of one per weight.
- ``fold`` (everything after): output j lands on every slot j + t*m (m = next power of two); the
  diagonals are taken mod m and a rotate-and-sum over the input's period finishes the sum. The
  result is periodic, so the next layer folds over m only.

The x^2 activations are elementwise and keep the layout. Only the rotation steps collected here
get Galois keys. This is hand-written because it is what makes HE inference fast (seed 004 used one
ciphertext per pixel); it is pure numpy and knows nothing of the HE library.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from serdab.errors import ModelError
from serdab.he.approx import Square

__all__ = ["BABY", "Layout", "LinearStep", "PackedProgram", "SquareStep", "affine_segments", "compile_packed"]

BABY = 16  # baby-step size for folded layers; a fixed size lets layers share their Galois keys
_AFFINE = (nn.Conv2d, nn.AvgPool2d, nn.Flatten, nn.Linear, nn.Identity)


@dataclass(frozen=True)
class Layout:
    """Where each logical value (flattened C x H x W or features) lives in the slot vector."""

    shape: tuple[int, ...]
    positions: np.ndarray  # (values, copies) slot indices
    period: int  # the slot vector repeats with this period

    def pack(self, values: np.ndarray, slots: int) -> np.ndarray:
        vector = np.zeros(slots)
        flat = np.asarray(values, dtype=np.float64).ravel()
        if flat.size != self.positions.shape[0]:
            raise ModelError(f"expected {self.positions.shape[0]} values of shape {self.shape}, got {flat.size}")
        for copy_index in range(self.positions.shape[1]):
            vector[self.positions[:, copy_index]] = flat
        return vector

    def unpack(self, vector: np.ndarray) -> np.ndarray:
        return np.asarray(vector)[self.positions[:, 0]].reshape(self.shape)


@dataclass
class LinearStep:
    level: int  # level of the input ciphertext
    kind: str  # "spatial" or "fold"
    terms: dict[int, dict[int, np.ndarray]]  # giant step -> baby step -> plaintext values (slots)
    fold: tuple[int, ...]
    bias: np.ndarray
    out: Layout
    end: int  # modules of the Sequential consumed after this step
    rotations: int = field(init=False)

    def __post_init__(self) -> None:
        babies = {a for row in self.terms.values() for a in row} - {0}
        giants = set(self.terms) - {0}
        self.rotations = len(babies) + len(giants) + len(self.fold)

    def steps(self) -> set[int]:
        return ({a for row in self.terms.values() for a in row} | set(self.terms) | set(self.fold)) - {0}


@dataclass
class SquareStep:
    level: int
    out: Layout
    end: int


@dataclass
class PackedProgram:
    slots: int
    input: Layout
    steps: list[LinearStep | SquareStep]

    def rotation_steps(self) -> set[int]:
        result: set[int] = set()
        for step in self.steps:
            if isinstance(step, LinearStep):
                result |= step.steps()
        return result

    def cuts(self) -> list[int]:
        """Module counts at which each step ends."""
        return [step.end for step in self.steps]


def affine_segments(model: nn.Sequential) -> list[tuple[str, int, int]]:
    """(kind, start, end) runs of the Sequential: "affine" runs and single "square" modules."""
    segments: list[tuple[str, int, int]] = []
    start = None
    for index, module in enumerate(model):
        if isinstance(module, _AFFINE):
            start = index if start is None else start
            continue
        if start is not None:
            segments.append(("affine", start, index))
            start = None
        if isinstance(module, Square):
            segments.append(("square", index, index + 1))
        else:
            raise ModelError(
                f"{type(module).__name__} (layer {index}) cannot run under HE: only convolution, average pooling, "
                "flatten, linear and x^2 can (approximate the model first)"
            )
    if start is not None:
        segments.append(("affine", start, len(model)))
    return segments


def affine_map(modules: nn.Module, in_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """(W, b, out_shape) with f(x) = W x + b, read off the modules by applying them to a basis."""
    block = copy.deepcopy(modules).double().eval()
    size = int(np.prod(in_shape))
    with torch.no_grad():
        zero = block(torch.zeros(1, *in_shape, dtype=torch.float64))
        out_shape = tuple(zero.shape[1:])
        bias = zero.reshape(-1).numpy()
        columns = []
        for begin in range(0, size, 1024):
            basis = torch.eye(size, dtype=torch.float64)[begin : begin + 1024].reshape(-1, *in_shape)
            columns.append(block(basis).reshape(basis.shape[0], -1).numpy() - bias)
    return np.concatenate(columns).T, bias, out_shape


def compile_packed(model: nn.Sequential, in_shape: tuple[int, ...], slots: int, top_level: int) -> PackedProgram:
    """The packed program for ``model`` on inputs of ``in_shape`` (C, H, W), starting at ``top_level``."""
    segments = affine_segments(model)
    if len(segments) > top_level:
        raise ModelError(f"the model needs depth {len(segments)} but the parameters give {top_level}")
    layout = _client_layout(model, segments, in_shape, slots)
    program = PackedProgram(slots, layout, [])
    level, shape = top_level, in_shape
    for number, (kind, start, end) in enumerate(segments):
        if kind == "square":
            program.steps.append(SquareStep(level, layout, end))
        else:
            weights, bias, shape = affine_map(model[start:end], layout.shape)
            step = None
            if number == 0 and len(shape) == 3 and len(in_shape) == 3:
                step = _spatial(weights, bias, layout, shape, slots, level, end)
            if step is None:
                step = _fold(weights, bias, layout, shape, slots, level, end)
            program.steps.append(step)
            layout = step.out
        level -= 1
    return program


def _client_layout(model: nn.Sequential, segments: list, in_shape: tuple[int, ...], slots: int) -> Layout:
    """The image row by row, replicated as often as output channels of the first convolution allow."""
    size = int(np.prod(in_shape))
    if size > slots:
        raise ModelError(f"an input of shape {in_shape} ({size} values) does not fit {slots} slots")
    out_channels = 1
    if segments and segments[0][0] == "affine":
        first = model[segments[0][1]]
        if isinstance(first, nn.Conv2d):
            out_channels = first.out_channels
    copies = max(c for c in range(1, out_channels + 1) if out_channels % c == 0 and c * size <= slots)
    positions = np.arange(size)[:, None] + size * np.arange(copies)[None, :]
    return Layout(tuple(in_shape), positions, slots)


def _spatial(
    weights: np.ndarray,
    bias: np.ndarray,
    layout: Layout,
    out_shape: tuple[int, ...],
    slots: int,
    level: int,
    end: int,
) -> LinearStep | None:
    channels, height, width = layout.shape
    out_channels, out_h, out_w = out_shape
    copies = layout.positions.shape[1]
    block = channels * height * width
    groups = out_channels // copies
    rows = weights.reshape(out_channels, out_h * out_w, -1)
    # anchor of each output pixel: the top-left input pixel it reads (same for every channel)
    support = np.abs(rows).sum(axis=(0, 2)) > 0
    if not support.all():
        return None
    anchors = np.zeros(out_h * out_w, dtype=np.int64)
    for pixel in range(out_h * out_w):
        used = np.nonzero(np.abs(rows[:, pixel, :]).sum(axis=0))[0] % (height * width)
        anchors[pixel] = (used // width).min() * width + (used % width).min()
    if len(set(anchors.tolist())) < len(anchors):  # zero padding clips border windows: no shared anchor grid
        return None
    # one phase per channel group, placed in the holes between anchors
    taken: set[int] = set()
    phases: list[int] = []
    candidates = sorted(((dy, dx) for dy in range(8) for dx in range(8)), key=lambda p: (p[0] + p[1], p))
    for _ in range(groups):
        for dy, dx in candidates:
            phase = dy * width + dx
            spots = {a * block + phase + int(p) for a in range(copies) for p in anchors}
            fits = len(spots) == copies * len(anchors) and max(spots) < slots
            if phase not in phases and fits and not spots & taken:
                phases.append(phase)
                taken |= spots
                break
        else:
            return None
    out_positions = np.zeros((out_channels * out_h * out_w, 1), dtype=np.int64)
    terms: dict[int, dict[int, np.ndarray]] = {}
    for co in range(out_channels):
        replica, group = co % copies, co // copies
        giant = (-phases[group]) % slots
        for pixel in range(out_h * out_w):
            j = co * out_h * out_w + pixel
            p = replica * block + phases[group] + anchors[pixel]
            out_positions[j, 0] = p
            for i in np.nonzero(np.abs(rows[co, pixel]) > 1e-12)[0]:
                q = layout.positions[i, 0] + replica * block
                baby = int(q - p - (-phases[group])) % slots
                row = terms.setdefault(giant, {})
                if baby not in row:
                    row[baby] = np.zeros(slots)
                row[baby][p] = rows[co, pixel, i]
    _roll(terms)
    out = Layout(out_shape, out_positions, slots)
    bias_vector = np.zeros(slots)
    bias_vector[out_positions[:, 0]] = bias
    return LinearStep(level, "spatial", terms, (), bias_vector, out, end)


def _fold(
    weights: np.ndarray,
    bias: np.ndarray,
    layout: Layout,
    out_shape: tuple[int, ...],
    slots: int,
    level: int,
    end: int,
) -> LinearStep:
    outputs = weights.shape[0]
    m = 1 << max(0, (outputs - 1).bit_length())
    if m > slots:
        raise ModelError(f"a layer with {outputs} outputs does not fit {slots} slots")
    period = max(layout.period, m)
    baby_size = min(BABY, m)
    q = layout.positions[:, 0] % layout.period
    terms: dict[int, dict[int, np.ndarray]] = {}
    js, iis = np.nonzero(np.abs(weights) > 1e-12)
    d = (q[iis] - js) % m
    k = (q[iis] - d) % period
    for value, dd, kk in zip(weights[js, iis], d, k, strict=True):
        baby = int(dd % baby_size)
        row = terms.setdefault(int(dd - baby), {})
        if baby not in row:
            row[baby] = np.zeros(period)
        row[baby][kk] = value
    for row in terms.values():
        for baby, values in row.items():
            row[baby] = np.tile(values, slots // period)
    _roll(terms)
    fold = []
    step = m
    while step < period:
        fold.append(step)
        step *= 2
    padded = np.zeros(m)
    padded[:outputs] = bias
    out = Layout(out_shape, np.arange(outputs)[:, None], m)
    return LinearStep(level, "fold", terms, tuple(fold), np.tile(padded, slots // m), out, end)


def _roll(terms: dict[int, dict[int, np.ndarray]]) -> None:
    """P[g, a] = rot(D[g, a], -g): the giant rotation is applied after the plaintext product."""
    for giant, row in terms.items():
        for baby in row:
            row[baby] = np.roll(row[baby], giant)
