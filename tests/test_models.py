from __future__ import annotations

import pytest
import torch
from torch import nn

from serdab.cli.models_cmd import count_module
from serdab.errors import ModelNotFoundError, NotOnnxError
from serdab.graph import open_chain
from serdab.models import ZOO, build_module, load_model
from serdab.profile.counts import block_macs
from tests.conftest import chain_of

# Published counts (torchvision docs / papers) for the ImageNet models: (params M, GMACs).
PUBLISHED = {
    "alexnet": (61.10, 0.714),
    "vgg16": (138.36, 15.47),
    "resnet18": (11.69, 1.81),
    "mobilenetv2": (3.50, 0.30),
    "squeezenet1_1": (1.24, 0.349),
    "googlenet": (6.62, 1.50),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_imagenet_models_match_published_sizes(name: str) -> None:
    params, macs = count_module(build_module(name), ZOO[name].input_chw)
    want_params, want_gmacs = PUBLISHED[name]
    assert params / 1e6 == pytest.approx(want_params, rel=0.01)
    assert macs / 1e9 == pytest.approx(want_gmacs, rel=0.02)


@pytest.mark.parametrize("name", [n for n in ZOO if n not in ("vgg16", "alexnet")])
def test_onnx_mac_count_equals_torch_count(name: str) -> None:
    chain = chain_of(name)
    onnx_macs = sum(block_macs(chain, b.index) for b in chain.blocks)
    _, torch_macs = count_module(build_module(name), ZOO[name].input_chw)
    assert onnx_macs == torch_macs


def test_seeded_weights_are_reproducible() -> None:
    a, b = build_module("lenet5"), build_module("lenet5")
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("name", list(ZOO))
def test_every_zoo_model_exports_at_its_seed_size(name: str) -> None:
    chain = chain_of(name)
    assert chain.input_shape == (1, *ZOO[name].input_chw)
    assert len(chain.blocks) >= 5


def test_torch_module_works_where_a_model_is_named() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    chain = open_chain(net, (3, 8, 8)).chain
    assert [b.name for b in chain.blocks] == ["Conv", "Relu", "Flatten", "Gemm"]


def test_unknown_name_lists_the_zoo() -> None:
    with pytest.raises(ModelNotFoundError, match="resnet18"):
        load_model("resnet19")


def test_non_onnx_file_is_refused(tmp_path) -> None:
    bad = tmp_path / "weights.onnx"
    bad.write_bytes(b"\x00not a protobuf at all")
    with pytest.raises(NotOnnxError, match="not a valid ONNX model"):
        load_model(bad)
