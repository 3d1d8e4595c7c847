"""Clean cut points of an ONNX graph, turning any DAG into a chain of blocks.

A tensor t is a clean cut when, after running every ancestor of t, t is the only tensor that
the rest of the graph still needs (weights and constants do not count: every stage carries its
own). Ancestor sets of clean cuts are nested, so sorting them by size gives the chain; the
result does not depend on which topological order the file stores. Residual and inception
blocks therefore become one block each, and a plain layer sequence gives one block per node.

Block indices are 0-based; ``blocks[i].output`` is the tensor that leaves block i, and cut i is
that tensor: it splits between blocks i and i+1, so a model of M blocks has cuts 0..M-2
(docs/partition.md states this once for every command).
Failure modes: a model whose only clean cut is its output is a chain of one block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from serdab.graph.bind import graph_input, tensor_shapes

__all__ = ["Block", "Chain", "build_chain", "expose_cuts", "tensor_bytes"]

_DTYPE_BYTES = {
    onnx.TensorProto.FLOAT: 4,
    onnx.TensorProto.FLOAT16: 2,
    onnx.TensorProto.DOUBLE: 8,
    onnx.TensorProto.INT64: 8,
    onnx.TensorProto.INT32: 4,
    onnx.TensorProto.INT8: 1,
    onnx.TensorProto.UINT8: 1,
    onnx.TensorProto.BOOL: 1,
}


def tensor_bytes(shape: tuple[int, ...], elem_bytes: int = 4) -> int:
    """Bytes of a dense tensor of this shape."""
    return int(np.prod(shape, dtype=np.int64)) * elem_bytes


@dataclass(frozen=True)
class Block:
    """A run of nodes between two clean cuts; ``nodes`` index ``Chain.model.graph.node``."""

    index: int
    name: str
    nodes: tuple[int, ...]
    input: str
    output: str


@dataclass(frozen=True)
class Chain:
    """A model bound to one input shape and seen as an ordered chain of blocks."""

    model: onnx.ModelProto
    input_name: str
    output_names: tuple[str, ...]
    blocks: tuple[Block, ...]
    shapes: dict[str, tuple[int, ...]] = field(repr=False)
    constant_nodes: frozenset[int] = field(repr=False)
    elem_sizes: dict[str, int] = field(repr=False)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.shapes[self.input_name]

    def out_shape(self, index: int) -> tuple[int, ...]:
        """Shape of what leaves block ``index`` (the first output for the last block)."""
        return self.shapes[self.blocks[index].output]

    def elem_bytes(self, name: str) -> int:
        """Bytes per element of tensor ``name`` (float32 when the file does not say)."""
        return self.elem_sizes.get(name, 4)

    def tensor_bytes(self, name: str) -> int:
        """Bytes of tensor ``name`` at the bound shape."""
        return tensor_bytes(self.shapes[name], self.elem_bytes(name))


def _constant_nodes(graph: onnx.GraphProto) -> tuple[frozenset[int], set[str]]:
    constants = {t.name for t in graph.initializer} | {""}
    nodes = set()
    for i, node in enumerate(graph.node):
        if all(name in constants for name in node.input):
            nodes.add(i)
            constants.update(node.output)
    return frozenset(nodes), constants


def _block_name(graph: onnx.GraphProto, nodes: list[int]) -> str:
    ops = [graph.node[i].op_type for i in nodes]
    if len(ops) <= 3:
        return "+".join(ops)
    return f"{ops[0]}..{ops[-1]} ({len(ops)})"


def build_chain(model: onnx.ModelProto) -> Chain:
    """Find every clean cut of a shape-bound model (see ``bind_input_shape``) and build the chain."""
    graph = model.graph
    input_name = graph_input(model).name
    output_names = tuple(o.name for o in graph.output)
    const_nodes, const_tensors = _constant_nodes(graph)
    live = [i for i in range(len(graph.node)) if i not in const_nodes]
    live_index = {node: pos for pos, node in enumerate(live)}

    producer: dict[str, int] = {}
    consumers: dict[str, list[int]] = {}
    for node_id in live:
        node = graph.node[node_id]
        for name in node.output:
            producer[name] = live_index[node_id]
        for name in node.input:
            if name not in const_tensors:
                consumers.setdefault(name, []).append(live_index[node_id])

    # ancestors[p]: bitmask of live nodes that node p needs (itself included), in file order.
    ancestors: list[int] = []
    for pos, node_id in enumerate(live):
        mask = 1 << pos
        for name in graph.node[node_id].input:
            if name in producer:
                mask |= ancestors[producer[name]]
        ancestors.append(mask)

    outputs = set(output_names)
    clean: list[tuple[int, str]] = []
    for pos, node_id in enumerate(live):
        for name in graph.node[node_id].output:
            if name in outputs or name not in consumers:
                continue
            mask = ancestors[pos]
            if _only_crossing(name, mask, live, graph, input_name, consumers, outputs):
                clean.append((mask, name))
    clean.sort(key=lambda item: item[0].bit_count())

    blocks: list[Block] = []
    done = 0
    entering = input_name
    for mask, name in [*clean, ((1 << len(live)) - 1, output_names[0])]:
        members = [live[p] for p in range(len(live)) if (mask & ~done) >> p & 1]
        blocks.append(Block(len(blocks), _block_name(graph, members), tuple(members), entering, name))
        done, entering = mask, name
    elem_sizes = {
        v.name: _DTYPE_BYTES.get(v.type.tensor_type.elem_type, 4)
        for v in [*graph.input, *graph.value_info, *graph.output]
    }
    return Chain(model, input_name, output_names, tuple(blocks), tensor_shapes(model), const_nodes, elem_sizes)


def _only_crossing(
    name: str,
    mask: int,
    live: list[int],
    graph: onnx.GraphProto,
    input_name: str,
    consumers: dict[str, list[int]],
    outputs: set[str],
) -> bool:
    """True when ``name`` is the only tensor made inside ``mask`` (or the input) used outside it."""
    produced = [input_name]
    for pos in range(len(live)):
        if mask >> pos & 1:
            produced.extend(graph.node[live[pos]].output)
    for tensor in produced:
        if tensor == name:
            continue
        if tensor in outputs or any(not (mask >> c & 1) for c in consumers.get(tensor, ())):
            return False
    return True


def expose_cuts(chain: Chain) -> onnx.ModelProto:
    """The whole model with every cut tensor as a graph output: one run yields what each cut reveals."""
    model = onnx.ModelProto()
    model.CopyFrom(chain.model)
    present = {o.name for o in model.graph.output}
    values = {v.name: v for v in model.graph.value_info}
    for block in chain.blocks[:-1]:
        if block.output not in present:
            model.graph.output.append(values[block.output])
    return model
