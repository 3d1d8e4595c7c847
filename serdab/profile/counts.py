"""Static per-block costs read off the graph: MACs, weight bytes and peak activation bytes.

MACs count multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul (seed 003 eq. 1-2:
pooling and element-wise layers are neglected). Peak activation bytes replay the block's nodes
in order, freeing each tensor after its last use inside the block; a tensor whose shape is
unknown counts as zero.
"""

from __future__ import annotations

import math

import onnx
from onnx import helper

from serdab.graph.chain import Chain

__all__ = ["initializer_bytes", "block_macs", "block_param_bytes", "block_peak_activation_bytes", "node_macs"]


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def node_macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
    """Multiply-accumulates of one node for the bound batch size; 0 for ops we do not count."""
    try:
        if node.op_type == "Conv":
            out = shapes[node.output[0]]
            weight = shapes[node.input[1]]  # (Cout, Cin/groups, kh, kw)
            return math.prod(out) * math.prod(weight[1:])
        if node.op_type == "ConvTranspose":
            inp = shapes[node.input[0]]
            weight = shapes[node.input[1]]  # (Cin, Cout/groups, kh, kw)
            return math.prod(inp) * math.prod(weight[1:])
        if node.op_type == "Gemm":
            a = shapes[node.input[0]]
            out = shapes[node.output[0]]
            k = a[0] if _attr(node, "transA", 0) else a[1]
            return math.prod(out) * k
        if node.op_type == "MatMul":
            a = shapes[node.input[0]]
            return math.prod(shapes[node.output[0]]) * a[-1]
    except KeyError:
        return 0
    return 0


def block_macs(chain: Chain, index: int) -> int:
    graph = chain.model.graph
    return sum(node_macs(graph.node[n], chain.shapes) for n in chain.blocks[index].nodes)


def initializer_bytes(chain: Chain) -> dict[str, int]:
    """Bytes of every weight tensor, by name."""
    return {
        init.name: math.prod(init.dims) * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        for init in chain.model.graph.initializer
    }


def block_param_bytes(chain: Chain, index: int, sizes: dict[str, int] | None = None) -> int:
    """Bytes of the weights this block reads (each weight once)."""
    sizes = initializer_bytes(chain) if sizes is None else sizes
    graph = chain.model.graph
    used = {name for n in chain.blocks[index].nodes for name in graph.node[n].input if name in sizes}
    return sum(sizes[name] for name in used)


def block_peak_activation_bytes(chain: Chain, index: int) -> int:
    """Largest sum of live activation bytes while the block runs, its input included."""
    graph = chain.model.graph
    block = chain.blocks[index]
    order = list(block.nodes)
    last_use: dict[str, int] = {}
    for step, n in enumerate(order):
        for name in graph.node[n].input:
            last_use[name] = step

    def size(name: str) -> int:
        return chain.tensor_bytes(name) if name in chain.shapes else 0

    live = {block.input: size(block.input)}
    peak = sum(live.values())
    for step, n in enumerate(order):
        for name in graph.node[n].output:
            live[name] = size(name)
        peak = max(peak, sum(live.values()))
        for name in list(live):
            if name != block.output and last_use.get(name, -1) <= step and name not in chain.output_names:
                del live[name]
    return peak
