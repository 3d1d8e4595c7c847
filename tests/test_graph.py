from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from serdab.errors import CutOutOfRangeError, InputShapeError, NotACleanCutError
from serdab.graph import bind_input_shape, build_chain, extract_stage, open_chain, parse_cuts, stage_ranges
from serdab.models import ZOO, export_module
from serdab.onnxrt import make_session
from tests.conftest import chain_of


def _run_stages(chain, cuts, frame):
    current = frame
    for first, last in stage_ranges(chain, cuts):
        session = make_session(extract_stage(chain, first, last))
        current = session.run(None, {session.get_inputs()[0].name: current})[0]
    return current


def test_resnet18_cuts_at_every_residual_block_boundary() -> None:
    chain = chain_of("resnet18")
    residual = [b for b in chain.blocks if any(chain.model.graph.node[n].op_type == "Add" for n in b.nodes)]
    assert len(residual) == 8  # 4 stages x 2 basic blocks, each one block
    for block in residual:  # the block ends at the Add, and a ReLU block follows it
        assert chain.model.graph.node[block.nodes[-1]].op_type == "Add"
        assert chain.blocks[block.index + 1].name == "Relu"


def test_googlenet_cuts_at_every_inception_boundary() -> None:
    chain = chain_of("googlenet")
    inception = [b for b in chain.blocks if b.name.endswith("Concat (14)")]
    assert len(inception) == 9
    assert [chain.out_shape(b.index)[1] for b in inception] == [256, 480, 512, 512, 512, 528, 832, 832, 1024]


def test_plain_sequence_gives_one_block_per_layer(lenet) -> None:
    assert [b.name for b in lenet.blocks] == [
        "Conv",
        "Relu",
        "MaxPool",
        "Conv",
        "Relu",
        "MaxPool",
        "Flatten",
        "Gemm",
        "Relu",
        "Gemm",
        "Relu",
        "Gemm",
    ]


@pytest.mark.parametrize("name", list(ZOO))
def test_stage_round_trip_is_exact_for_three_random_cut_sets(name: str) -> None:
    chain = chain_of(name)
    rng = np.random.default_rng(7)
    frame = rng.standard_normal(chain.input_shape).astype(np.float32)
    whole = make_session(chain.model).run(None, {chain.input_name: frame})[0]
    for _ in range(3):
        count = int(rng.integers(1, min(4, len(chain.blocks) - 1) + 1))
        cuts = sorted(rng.choice(len(chain.blocks) - 1, size=count, replace=False).tolist())
        staged = _run_stages(chain, cuts, frame)
        assert staged.shape == whole.shape
        assert np.abs(staged - whole).max() <= 1e-4, cuts


def _skip_graph(order: list[int]) -> onnx.ModelProto:
    """x -> Relu a -> {Sigmoid b, Neg c} -> Add d -> Relu e, nodes stored in ``order``."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="a"),
        helper.make_node("Sigmoid", ["a"], ["b"], name="b"),
        helper.make_node("Neg", ["a"], ["c"], name="c"),
        helper.make_node("Add", ["b", "c"], ["d"], name="d"),
        helper.make_node("Relu", ["d"], ["y"], name="e"),
    ]
    graph = helper.make_graph(
        [nodes[i] for i in order],
        "skip",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("order", [[0, 1, 2, 3, 4], [0, 2, 1, 3, 4]])
def test_cuts_do_not_depend_on_stored_topological_order(order: list[int]) -> None:
    chain = build_chain(bind_input_shape(_skip_graph(order)))
    assert [b.output for b in chain.blocks] == ["a", "d", "y"]


def test_long_skip_from_the_input_leaves_no_cut_inside() -> None:
    class LongSkip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.body(x) + x)

    chain = open_chain(LongSkip(), (3, 8, 8)).chain
    assert len(chain.blocks) == 2  # everything up to the Add, then the final ReLU


def test_shape_arithmetic_from_view_does_not_block_cuts() -> None:
    class ViewNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.fc = nn.Linear(2 * 6 * 6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.conv(x))
            return self.fc(h.view(h.size(0), -1))

    chain = open_chain(ViewNet(), (1, 8, 8)).chain
    assert len(chain.blocks) >= 4
    frame = np.ones(chain.input_shape, np.float32)
    whole = make_session(chain.model).run(None, {chain.input_name: frame})[0]
    assert np.allclose(_run_stages(chain, list(range(len(chain.blocks) - 1)), frame), whole, atol=1e-6)


def test_dynamic_spatial_size_needs_an_input_shape() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    proto = export_module(net, (3, 16, 16))
    for dim in (2, 3):
        proto.graph.input[0].type.tensor_type.shape.dim[dim].dim_param = "side"
    with pytest.raises(InputShapeError, match="--input-shape"):
        bind_input_shape(proto)
    chain = build_chain(bind_input_shape(proto, (3, 20, 20)))
    assert chain.input_shape == (1, 3, 20, 20)
    assert chain.out_shape(0) == (1, 4, 18, 18)


def test_input_shape_that_contradicts_the_model_is_refused(lenet) -> None:
    with pytest.raises(InputShapeError, match="fixes it to 28"):
        bind_input_shape(lenet.model, (1, 32, 32))


def test_batch_axis_can_be_rebound() -> None:
    chain = open_chain("lenet5", batch=4).chain
    assert chain.input_shape == (4, 1, 28, 28)
    assert chain.out_shape(len(chain.blocks) - 1) == (4, 10)


@pytest.mark.parametrize("cuts", [[-1], [11], [3, 3], [5, 2]])
def test_out_of_range_or_unordered_cuts_are_refused(lenet, cuts) -> None:
    with pytest.raises(CutOutOfRangeError):
        stage_ranges(lenet, cuts)


def test_tensor_inside_a_residual_block_is_not_a_clean_cut() -> None:
    chain = chain_of("resnet18")
    inner = chain.model.graph.node[chain.blocks[3].nodes[0]].output[0]
    with pytest.raises(NotACleanCutError, match="not a clean cut"):
        parse_cuts(chain, f"2,{inner}")
    assert parse_cuts(chain, f"1,{chain.blocks[3].output}") == [1, 3]
