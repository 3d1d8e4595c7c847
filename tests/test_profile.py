from __future__ import annotations

import itertools
import json

import pytest

from serdab.profile import Profile, ProfileFileError, profile_chain
from serdab.profile.counts import block_peak_activation_bytes
from tests.conftest import chain_of


def _fake_clock(step_s: float = 0.001):
    ticks = itertools.count()
    return lambda: next(ticks) * step_s


def test_profile_follows_the_json_contract(lenet, tmp_path) -> None:
    profile = profile_chain(lenet, "lenet5", repeat=3, warmup=1)
    path = tmp_path / "p.json"
    profile.save(path)
    data = json.loads(path.read_text())
    assert {"model", "input_shape", "input_bytes", "whole_ms", "blocks"} <= set(data)
    assert data["input_bytes"] == 28 * 28 * 4
    block = data["blocks"][0]
    for key in (
        "index",
        "name",
        "out_shape",
        "out_bytes",
        "resolution",
        "macs",
        "params_bytes",
        "latency_ms",
        "latency_p95_ms",
    ):
        assert key in block
    assert block["resolution"] == [28, 28] and block["out_bytes"] == 6 * 28 * 28 * 4
    assert data["blocks"][6]["resolution"] is None  # Flatten: no spatial axes
    assert Profile.load(path) == profile


def test_latency_is_the_median_of_the_injected_clock(lenet) -> None:
    # Each timed run reads the clock twice; a clock advancing 1 ms per read makes every run 1 ms.
    profile = profile_chain(lenet, "lenet5", repeat=5, warmup=0, clock=_fake_clock())
    assert all(b.latency_ms == pytest.approx(1.0) for b in profile.blocks)
    assert profile.whole_ms == pytest.approx(1.0)
    assert profile.sum_blocks_ms == pytest.approx(len(lenet.blocks))


def test_weights_and_macs_per_block(lenet) -> None:
    profile = profile_chain(lenet, "lenet5", repeat=1, warmup=0)
    conv1 = profile.blocks[0]
    assert conv1.params_bytes == (6 * 1 * 5 * 5 + 6) * 4
    assert conv1.macs == 6 * 28 * 28 * 25
    assert sum(b.params_bytes for b in profile.blocks) == 61706 * 4


def test_peak_activation_of_a_residual_block_holds_the_skip_tensor() -> None:
    chain = chain_of("resnet18")
    block = chain.blocks[3]  # first basic block: input 64x56x56 is live until the Add
    one_map = 64 * 56 * 56 * 4
    assert block_peak_activation_bytes(chain, block.index) >= 3 * one_map


def test_bad_profile_file_names_the_field(tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"model": "x", "input_shape": [1], "input_bytes": 4, "whole_ms": "fast", "blocks": []}))
    with pytest.raises(ProfileFileError, match="whole_ms"):
        Profile.load(path)
    with pytest.raises(ProfileFileError, match="not found"):
        Profile.load(tmp_path / "missing.json")


def test_invalid_settings_are_refused(lenet) -> None:
    with pytest.raises(ValueError, match="repeat"):
        profile_chain(lenet, "lenet5", repeat=0)
