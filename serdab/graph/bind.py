"""Fix a model's input shape so every tensor in it has a static shape.

Cut points, byte counts and stage files all need concrete shapes. The batch axis may stay
symbolic in the file; spatial axes must be known, from the file or from ``--input-shape``.
Shape(x) of a statically shaped x is folded to a constant, so shape arithmetic left behind
by exporters never counts as a second tensor crossing a cut.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from serdab.errors import InputShapeError

__all__ = ["bind_input_shape", "graph_input", "parse_shape", "tensor_shapes"]


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse "1,3,224,224" or "3x224x224" into a tuple of positive ints."""
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise InputShapeError(f"--input-shape {text!r} is not a list of integers (example: 1,3,224,224)") from None
    if not dims or any(d <= 0 for d in dims):
        raise InputShapeError(f"--input-shape {text!r} needs positive sizes (example: 1,3,224,224)")
    return dims


def graph_input(proto: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The one runtime input of the graph (initializers listed as inputs do not count)."""
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise InputShapeError(f"Serdab partitions models with exactly one input; this one has {len(inputs)} ({names})")
    return inputs[0]


def _declared_dims(value: onnx.ValueInfoProto) -> list[int | None]:
    dims = value.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]


def _resolve_shape(value: onnx.ValueInfoProto, requested: tuple[int, ...] | None, batch: int | None) -> tuple[int, ...]:
    declared = _declared_dims(value)
    if not declared:
        raise InputShapeError(f"input {value.name!r} declares no shape; pass --input-shape, e.g. 1,3,224,224")
    if requested is None:
        if any(d is None for d in declared[1:]):
            shown = ["?" if d is None else str(d) for d in declared]
            raise InputShapeError(
                f"input {value.name!r} has dynamic size [{', '.join(shown)}]; pass --input-shape, e.g. 1,3,224,224"
            )
        requested = tuple(int(d) for d in declared[1:] if d is not None)  # none is None: checked above
    if len(requested) == len(declared) - 1:
        requested = (batch or declared[0] or 1, *requested)
    elif batch is not None:
        requested = (batch, *requested[1:])
    if len(requested) != len(declared):
        raise InputShapeError(
            f"--input-shape {','.join(map(str, requested))} has {len(requested)} dims; "
            f"input {value.name!r} has {len(declared)}"
        )
    for axis, (want, have) in enumerate(zip(requested, declared, strict=True)):
        if have is not None and want != have:
            what = "batch size" if axis == 0 else f"axis {axis}"
            raise InputShapeError(f"{what} {want} asked for, but the model fixes it to {have}")
    return requested


def _fold_static_shapes(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> bool:
    changed = False
    for i, node in enumerate(proto.graph.node):
        if node.op_type == "Shape" and node.input[0] in shapes:
            full = np.array(shapes[node.input[0]], dtype=np.int64)
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            value = full[attrs.get("start", 0) : attrs.get("end", len(full))]
            const = helper.make_node(
                "Constant",
                [],
                [node.output[0]],
                name=node.name or f"folded_shape_{i}",
                value=numpy_helper.from_array(value, name=node.output[0]),
            )
            proto.graph.node[i].CopyFrom(const)
            changed = True
    return changed


def tensor_shapes(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shapes of every tensor that shape inference could resolve."""
    shapes: dict[str, tuple[int, ...]] = {}
    graph = proto.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if not value.type.tensor_type.HasField("shape"):
            continue
        dims = _declared_dims(value)
        if all(d is not None for d in dims):
            shapes[value.name] = tuple(int(d) for d in dims)  # type: ignore[arg-type]
    for init in graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def bind_input_shape(
    proto: onnx.ModelProto, input_shape: tuple[int, ...] | None = None, batch: int | None = None
) -> onnx.ModelProto:
    """A copy of ``proto`` with a concrete input shape and inferred shapes for every tensor.

    ``input_shape`` may omit the batch axis; ``batch`` overrides whatever batch it names.
    """
    bound = onnx.ModelProto()
    bound.CopyFrom(proto)
    value = graph_input(bound)
    shape = _resolve_shape(value, input_shape, batch)
    if value.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise InputShapeError(f"input {value.name!r} must be float32 images")
    new_value = helper.make_tensor_value_info(value.name, TensorProto.FLOAT, list(shape))
    value.CopyFrom(new_value)
    # Outputs and stale value_info may pin the old symbolic batch; let inference redo them.
    del bound.graph.value_info[:]
    for out in bound.graph.output:
        out.type.tensor_type.ClearField("shape")
    for _ in range(4):  # folding a Shape can unlock further static shapes downstream
        try:
            bound = onnx.shape_inference.infer_shapes(bound, strict_mode=True, data_prop=True)
        except Exception as exc:
            message = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else type(exc).__name__
            raise InputShapeError(
                f"input shape {','.join(map(str, shape))} does not fit the model ({message})"
            ) from None
        if not _fold_static_shapes(bound, tensor_shapes(bound)):
            break
        del bound.graph.value_info[:]
    return bound
