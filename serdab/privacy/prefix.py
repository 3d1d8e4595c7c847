"""The enclave stages in front of a cut as a differentiable torch module, for white-box attacks.

The white-box attacker knows the weights of every stage before the cut (any public model).
Gradients need torch, and the zoo models *are* torch modules, so the prefix is the zoo module
traced with ``torch.fx`` and cut at the node whose value equals the ONNX cut tensor. The match
is numerical (two inputs, 1e-3 relative), not by name, so it does not depend on how the
exporter names nodes, and a wrong match cannot pass silently. ONNX files have no torch source:
for them only the black-box attacks run (the CLI says so).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import fx, nn

from serdab.errors import AuditError

__all__ = ["prefix_modules"]


class _Recorder(fx.Interpreter):
    """Runs the traced graph and keeps every node's tensor value."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.values: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> object:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            self.values[n.name] = result.clone()  # in-place ReLUs overwrite what came before
        return result


def _truncated(traced: fx.GraphModule, node_name: str) -> nn.Module:
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in traced.graph.nodes:
        if node.op == "output":
            break
        env[node] = graph.node_copy(node, lambda n: env[n])
        if node.name == node_name:
            graph.output(env[node])
            break
    prefix = fx.GraphModule(traced, graph)
    prefix.graph.eliminate_dead_code()
    prefix.recompile()
    return prefix.eval()


def _close(a: torch.Tensor, b: np.ndarray) -> bool:
    if tuple(a.shape) != b.shape:
        return False
    ref = torch.from_numpy(b)
    return bool(torch.allclose(a, ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max().clamp(min=1e-6))))


def prefix_modules(
    module: nn.Module, probes: Sequence[np.ndarray], observed: Sequence[dict[int, np.ndarray]]
) -> dict[int, nn.Module]:
    """For each cut in ``observed[0]``: the prefix of ``module`` that computes that cut tensor.

    ``probes`` are model inputs and ``observed[i][cut]`` the ONNX tensor at ``cut`` for probe i.
    """
    traced = fx.symbolic_trace(module.eval())
    runs = []
    with torch.no_grad():
        for probe in probes:
            recorder = _Recorder(traced)
            recorder.run(torch.from_numpy(probe))
            runs.append(recorder.values)
    order = list(runs[0])
    prefixes: dict[int, nn.Module] = {}
    for cut in sorted(observed[0]):
        match = next(
            (
                name
                for name in order
                if all(_close(values[name], seen[cut]) for values, seen in zip(runs, observed, strict=True))
            ),
            None,
        )
        if match is None:
            raise AuditError(f"cut {cut}: no layer of the torch model computes the ONNX tensor there")
        prefixes[cut] = _truncated(traced, match)
    return prefixes
