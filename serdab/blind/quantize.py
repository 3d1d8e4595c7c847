"""A model's linear layers as integers: the quantisation scheme and the plaintext integer reference.

Scheme (Slalom's fixed point, sec. 4): activations carry ``ACT_BITS`` fraction bits, weights
``WEIGHT_BITS``; a linear layer computes ``W_q x_q`` exactly (scale 2^(a+w)), adds its bias quantised
at that scale, and rounds back to 2^a (round half up, in integers). ReLU and max pooling act on the
integers unchanged; average pooling is a sum (a linear layer with weights 1, blindable) followed by
a rounded division in the enclave. Batch norm is already folded into the convolutions of the exported
graphs. Everything after the input is integer, so the blinded pass can reproduce this reference bit
for bit; ``run`` here is that reference, and ``dequantised`` its float view for accuracy checks.

Written by hand because no ONNX runtime computes convolutions in a prime field (or in exact integers
on a GPU); the arithmetic itself is torch's float64 convolution, exact for integers below 2^53.
Supports Conv (grouped and depthwise too), Gemm, Relu, Clip, MaxPool, AveragePool, GlobalAveragePool,
Add, Concat, Flatten and Reshape to a batch of vectors: every model of the zoo.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from serdab.blind.field import check_exact

__all__ = ["ACT_BITS", "WEIGHT_BITS", "QLinear", "QOp", "QuantizedModel", "quantize_model"]

ACT_BITS = 8
WEIGHT_BITS = 8


@dataclass
class QOp:
    """A step the enclave runs on integers: relu, clip, maxpool, flatten, divide (after a sum pool),
    globalavg (a rounded mean over the spatial axes: cheap, so not worth blinding), add and concat
    (every activation has the same scale 2^a, so these are exact integer operations)."""

    kind: str
    attrs: dict[str, Any] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    output: str = ""

    def run(self, x: np.ndarray, *more: np.ndarray) -> np.ndarray:
        if self.kind == "add":
            for other in more:
                x = x + other
            return x
        if self.kind == "concat":
            return np.concatenate([x, *more], axis=int(self.attrs["axis"]))
        if self.kind == "clip":
            return np.clip(x, self.attrs["low"], self.attrs["high"])
        if self.kind == "globalavg":
            count = int(np.prod(x.shape[2:]))
            return np.floor_divide(2 * x.sum(axis=tuple(range(2, x.ndim)), keepdims=True) + count, 2 * count)
        if self.kind == "relu":
            return np.maximum(x, 0)
        if self.kind == "flatten":
            return x.reshape(x.shape[0], -1)
        if self.kind == "maxpool":
            from serdab.blind.kernels import max_pool

            a = self.attrs
            return max_pool(x, a["kernel"], a["strides"], a["pads"], a["ceil"])
        if self.kind == "divide":  # round(x / count), half up, in integers
            count = int(self.attrs["count"])
            return np.floor_divide(2 * x + count, 2 * count)
        raise ValueError(f"unknown step {self.kind}")


@dataclass
class QLinear:
    """A linear layer with integer weights: conv, gemm, or a sum pool (weights all 1, no bias)."""

    name: str
    kind: str  # "conv", "gemm", "sumpool"
    weight: np.ndarray | None  # int64, None for a sum pool
    bias: np.ndarray | None  # int64 at scale 2^(a+w)
    attrs: dict[str, Any] = field(default_factory=dict)
    shift: int = WEIGHT_BITS  # bits to round away after the bias: the weights' fraction bits
    clamp: tuple[int | None, int | None] = (None, None)  # a ReLU or Clip folded into the layer (bounds at 2^a)
    residual: str = ""  # a residual Add folded into the layer: the activation added after rounding
    inputs: list[str] = field(default_factory=list)
    output: str = ""
    _weight_t: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def linear(self, x: np.ndarray) -> np.ndarray:
        """``W x`` exactly, for integer-valued float64 ``x`` (the GPU's work: no bias, no rounding)."""
        with torch.no_grad():
            return np.rint(self.linear_t(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))).numpy())

    @property
    def weight_t(self) -> torch.Tensor:
        """The integer weights as a float64 tensor, made once (a layer is applied once per frame or more)."""
        if self._weight_t is None:
            self._weight_t = torch.from_numpy(self.weight.astype(np.float64))  # type: ignore[union-attr]
        return self._weight_t

    def linear_t(self, t: torch.Tensor) -> torch.Tensor:
        """The same map on a float64 tensor (differentiable: Freivalds' check takes its transpose)."""
        if self.kind == "gemm":
            return t @ self.weight_t.T
        pads = self.attrs["pads"]
        if any(pads):
            t = F.pad(t, (pads[1], pads[3], pads[0], pads[2]))
        if self.kind == "conv":
            return F.conv2d(
                t, self.weight_t, None, self.attrs["strides"], 0, self.attrs["dilations"], self.attrs["group"]
            )
        kernel = self.attrs["kernel"]
        return F.avg_pool2d(t, kernel, self.attrs["strides"]) * float(np.prod(kernel))  # a sum of integers

    @property
    def fan_in(self) -> int:
        if self.weight is None:
            return int(np.prod(self.attrs["kernel"]))
        return int(np.prod(self.weight.shape[1:]))

    def finish(self, wx: np.ndarray, skip: np.ndarray | None = None) -> np.ndarray:
        """From ``W x`` (int64) to the next layer's input: add the bias, round back to 2^a, add the
        residual ``skip`` (the activation named by ``residual``), clamp."""
        y = wx.astype(np.int64)
        if self.bias is not None:
            y = y + (self.bias.reshape(1, -1, 1, 1) if self.kind == "conv" else self.bias.reshape(1, -1))
        if self.shift:
            y = np.floor_divide(y + (1 << (self.shift - 1)), 1 << self.shift)
        if skip is not None:
            y = y + skip
        if self.clamp != (None, None):
            y = np.clip(y, *self.clamp)
        return y


@dataclass
class QuantizedModel:
    name: str
    steps: list[QLinear | QOp]  # in the graph's (topological) order, each naming its inputs and output
    input_name: str = "input"
    output_name: str = "output"
    act_bits: int = ACT_BITS
    _shapes: dict[tuple[int, ...], list[tuple[tuple[int, ...], tuple[int, ...]]]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def linear_layers(self) -> list[QLinear]:
        return [s for s in self.steps if isinstance(s, QLinear)]

    def quantise_input(self, x: np.ndarray) -> np.ndarray:
        from serdab.blind.kernels import quantise

        return quantise(x, self.act_bits)

    def evaluate(
        self,
        h: np.ndarray,
        linear: Callable[[int, QLinear, np.ndarray, np.ndarray | None], np.ndarray],
        finished: bool = False,
    ) -> np.ndarray:
        """The graph on integer input ``h``, with ``linear(index, layer, x, skip)`` giving each linear
        layer's ``W x`` (int64): plainly for the reference, through the GPU for the blinded pass (which,
        with ``finished``, also does ``finish``: bias, rounding, the residual ``skip``, the clamp)."""
        values = {self.input_name: h}
        index = 0
        for step in self.steps:
            args = [values[name] for name in step.inputs]
            if isinstance(step, QLinear):
                skip = values[step.residual] if step.residual else None
                out = linear(index, step, args[0], skip)
                values[step.output] = out if finished else step.finish(out, skip)
                index += 1
            else:
                values[step.output] = step.run(*args)
        return values[self.output_name]

    def linear_shapes(self, input_shape: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """(input shape, output shape) of every linear layer, from a pass of zeros (once per input shape)."""
        if tuple(input_shape) in self._shapes:
            return self._shapes[tuple(input_shape)]
        shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

        def record(_: int, layer: QLinear, h: np.ndarray, __: np.ndarray | None) -> np.ndarray:
            wx = np.rint(layer.linear(h)).astype(np.int64)
            shapes.append((tuple(h.shape), tuple(wx.shape)))
            return wx

        self.evaluate(np.zeros(input_shape, dtype=np.int64), record)
        self._shapes[tuple(input_shape)] = shapes
        return shapes

    def run(self, x: np.ndarray) -> np.ndarray:
        """The plaintext integer reference: float input in, the last layer's integers (scale 2^a) out."""
        return self.evaluate(self.quantise_input(x), lambda _, layer, h, __: np.rint(layer.linear(h)).astype(np.int64))

    def dequantised(self, x: np.ndarray) -> np.ndarray:
        return self.run(x).astype(np.float64) / (1 << self.act_bits)


def _ints(values: list[int] | None, default: list[int]) -> list[int]:
    return list(values) if values else default


def _pool_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
    kernel = list(a["kernel_shape"])
    return {
        "kernel": kernel,
        "strides": _ints(a.get("strides"), [1] * len(kernel)),
        "pads": _ints(a.get("pads"), [0] * 2 * len(kernel)),
        "ceil": bool(a.get("ceil_mode", 0)),
    }


def quantize_model(proto: onnx.ModelProto, name: str = "model") -> QuantizedModel:
    """The integer model of an ONNX graph (chains, residual additions, concatenations); ValueError
    names the first node it cannot take."""
    graph = proto.graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    steps: list[QLinear | QOp] = []
    scale_w = float(1 << WEIGHT_BITS)
    scale_b = float(1 << (ACT_BITS + WEIGHT_BITS))
    scale_a = float(1 << ACT_BITS)
    alias: dict[str, str] = {}  # Identity/Dropout outputs -> the activation they pass on
    for node in graph.node:
        if node.op_type == "Constant":  # a value a later node reads as a weight or a bound
            weights[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            continue
        if node.op_type in ("Identity", "Dropout") and node.input and node.input[0] in weights:
            weights[node.output[0]] = weights[node.input[0]]  # an alias of a weight (shared initialisers)
            continue
        if node.op_type in ("Identity", "Dropout"):
            alias[node.output[0]] = alias.get(node.input[0], node.input[0])
            continue
        inputs = [alias.get(n, n) for n in node.input if n and n not in weights]
        output = node.output[0]
        attrs = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
        label = node.name or f"{node.op_type}{len(steps)}"
        if node.op_type in ("Conv", "Gemm"):
            w = weights[node.input[1]]
            if node.op_type == "Gemm":
                if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                    raise ValueError(f"{name}: {label} is a Gemm with transA/alpha/beta, not a plain linear layer")
                if not attrs.get("transB", 0):
                    w = w.T
            b = weights[node.input[2]] if len(node.input) > 2 and node.input[2] else None
            wq = np.rint(w.astype(np.float64) * scale_w).astype(np.int64)
            bq = None if b is None else np.rint(b.astype(np.float64) * scale_b).astype(np.int64)
            layer_attrs: dict[str, Any] = {}
            if node.op_type == "Conv":
                spatial = wq.ndim - 2
                layer_attrs = {
                    "strides": _ints(attrs.get("strides"), [1] * spatial),
                    "pads": _ints(attrs.get("pads"), [0] * 2 * spatial),
                    "dilations": _ints(attrs.get("dilations"), [1] * spatial),
                    "group": int(attrs.get("group", 1)),
                }
            layer = QLinear(label, node.op_type.lower(), wq, bq, layer_attrs, inputs=inputs, output=output)
            check_exact(layer.fan_in, int(np.abs(wq).max(initial=0)), f"{name}: {label}")
            steps.append(layer)
        elif node.op_type == "Relu":
            steps.append(QOp("relu", inputs=inputs, output=output))
        elif node.op_type == "Clip":
            low = weights.get(node.input[1]) if len(node.input) > 1 and node.input[1] else attrs.get("min")
            high = weights.get(node.input[2]) if len(node.input) > 2 and node.input[2] else attrs.get("max")
            bounds = {
                "low": None if low is None else int(np.rint(float(low) * scale_a)),
                "high": None if high is None else int(np.rint(float(high) * scale_a)),
            }
            steps.append(QOp("clip", bounds, inputs=inputs, output=output))
        elif node.op_type == "MaxPool":
            steps.append(QOp("maxpool", _pool_attrs(node), inputs=inputs, output=output))
        elif node.op_type == "AveragePool":
            pool = _pool_attrs(node)
            if pool["ceil"]:
                raise ValueError(f"{name}: {label} averages with ceil_mode; only exact windows are supported")
            steps.append(QLinear(label, "sumpool", None, None, pool, shift=0, inputs=inputs, output=output + ":sum"))
            steps.append(QOp("divide", {"count": int(np.prod(pool["kernel"]))}, [output + ":sum"], output))
        elif node.op_type == "GlobalAveragePool":
            steps.append(QOp("globalavg", inputs=inputs, output=output))
        elif node.op_type == "Add" and len(inputs) == 2:
            steps.append(QOp("add", inputs=inputs, output=output))
        elif node.op_type == "Concat":
            steps.append(QOp("concat", {"axis": int(attrs.get("axis", 1))}, inputs=inputs, output=output))
        elif node.op_type in ("Flatten", "Reshape"):
            steps.append(QOp("flatten", inputs=inputs[:1], output=output))
        else:
            raise ValueError(f"{name}: {node.op_type} ({label}) is not supported in a blinded model yet")
    output = alias.get(graph.output[0].name, graph.output[0].name)
    steps = _fold(_fold(_fold(steps, output, ("relu", "clip")), output, ("add",)), output, ("relu", "clip"))
    return QuantizedModel(name, steps, graph.input[0].name, output)


def _fold(steps: list[QLinear | QOp], output: str, kinds: tuple[str, ...]) -> list[QLinear | QOp]:
    """Steps of these kinds folded into the linear layer whose output they read, when nothing else reads
    it (as batch norm is folded into convolutions): a ReLU or Clip becomes the layer's clamp, a residual
    Add of two activations its ``residual``, so the enclave does them while it unmasks, in the same
    pass. Folding ReLUs, then Adds, then ReLUs again turns ResNet's conv, add, relu into one layer."""
    readers: dict[str, int] = {output: 1}
    for step in steps:
        for name in step.inputs:
            readers[name] = readers.get(name, 0) + 1
    producers = {s.output: s for s in steps if isinstance(s, QLinear)}
    made_at = {s.output: at for at, s in enumerate(steps)}  # a folded Add's other input must exist by then
    kept: list[QLinear | QOp] = []
    for step in steps:
        folded = False
        if isinstance(step, QOp) and step.kind in kinds:
            for at, name in enumerate(step.inputs[: 2 if step.kind == "add" else 1]):
                layer = producers.get(name)
                # a clamp goes last (after a folded residual); an Add only onto a layer not yet clamped
                if layer is None or readers[name] != 1 or layer.clamp != (None, None):
                    continue
                if step.kind == "add":
                    other = step.inputs[1 - at]
                    if layer.residual or made_at.get(other, -1) > made_at[name]:
                        continue
                    layer.residual = other
                else:
                    layer.clamp = (0, None) if step.kind == "relu" else (step.attrs["low"], step.attrs["high"])
                made_at[step.output] = made_at[name]
                layer.output = step.output
                producers[layer.output] = layer
                folded = True
                break
        if not folded:
            kept.append(step)
    return kept
