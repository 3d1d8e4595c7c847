"""Packed and batch CKKS kernels against the plaintext torch layers, on random inputs and weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from serdab.he.approx import Square
from serdab.he.backend import HeError, backend_for
from serdab.he.batch import compile_batch, run_batch
from serdab.he.kernels import encode_program, run_packed
from serdab.he.packing import LinearStep, affine_segments, compile_packed
from serdab.he.params import choose_ckks


def _random(model: nn.Sequential, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    for parameter in model.parameters():
        nn.init.uniform_(parameter, -0.5, 0.5)
    return model.eval()


def _packed_vs_plain(model: nn.Sequential, shape: tuple[int, ...], seed: int = 0, upto: int | None = None):
    params = choose_ckks(len(affine_segments(model)), int(np.prod(shape)))
    program = compile_packed(model, shape, params.slots, params.depth)
    client, server = backend_for(params), backend_for(params)
    client.generate_keys(program.rotation_steps())
    server.load_public(client.export_public())
    x = np.random.default_rng(seed).uniform(-1, 1, shape)
    ct = server.from_bytes(client.to_bytes(client.encrypt(program.input.pack(x, params.slots))))
    steps = len(program.steps) if upto is None else upto
    out = run_packed(encode_program(program, server), server, ct, steps)
    got = program.steps[steps - 1].out.unpack(client.decrypt(out))
    end = program.steps[steps - 1].end
    with torch.no_grad():
        expected = model[:end].double()(torch.tensor(x[None])).numpy()[0]
    return got, expected, program


CASES = {
    "conv 3x3 stride 1, 4 channels (replicas)": (nn.Sequential(nn.Conv2d(1, 4, 3)), (1, 8, 8)),
    "conv 3x3 stride 3, 16 channels (replicas + phases)": (nn.Sequential(nn.Conv2d(1, 16, 3, stride=3)), (1, 28, 28)),
    "conv 2 input channels (spatial)": (nn.Sequential(nn.Conv2d(2, 3, 3, stride=2)), (2, 7, 7)),
    "conv 2 input channels, padding (falls back to folding)": (nn.Sequential(nn.Conv2d(2, 3, 3, padding=1)), (2, 6, 6)),
    "square": (nn.Sequential(nn.Conv2d(1, 2, 2), Square()), (1, 5, 5)),
    "average pooling folded into linear": (
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 5)),
        (1, 8, 8),
    ),
    "linear then linear (periodic input)": (
        nn.Sequential(nn.Flatten(), nn.Linear(36, 20), Square(), nn.Linear(20, 7)),
        (1, 6, 6),
    ),
    "pooling then convolution (folded convolution)": (
        nn.Sequential(nn.Conv2d(1, 2, 3), Square(), nn.AvgPool2d(2), nn.Conv2d(2, 3, 2)),
        (1, 10, 10),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_packed_kernels_match_plaintext(case: str) -> None:
    model, shape = CASES[case]
    got, expected, _ = _packed_vs_plain(_random(model, seed=len(case)), shape, seed=len(case))
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-3 * max(1.0, np.abs(expected).max()), case


def test_padded_convolution_falls_back_to_the_folded_layout() -> None:
    model = _random(nn.Sequential(nn.Conv2d(2, 3, 3, padding=1)), 0)
    assert compile_packed(model, (2, 6, 6), 4096, 1).steps[0].kind == "fold"
    assert compile_packed(CASES["conv 2 input channels (spatial)"][0], (2, 7, 7), 4096, 1).steps[0].kind == "spatial"


def test_spatial_convolution_uses_replicas_and_phases_not_one_rotation_per_weight() -> None:
    model = _random(nn.Sequential(nn.Conv2d(1, 16, 3, stride=3)), 0)
    program = compile_packed(model, (1, 28, 28), 4096, 1)
    step = program.steps[0]
    assert isinstance(step, LinearStep) and step.kind == "spatial"
    assert program.input.positions.shape[1] == 4  # 4 replicas of 784 values in 4096 slots
    assert step.rotations == 8 + 3  # kernel offsets + 3 phases for 4 channel groups
    assert len(program.rotation_steps()) == 11


def test_transfer_cut_returns_that_layers_values() -> None:
    model = _random(nn.Sequential(nn.Flatten(), nn.Linear(16, 8), Square(), nn.Linear(8, 3)), 3)
    got, expected, program = _packed_vs_plain(model, (1, 4, 4), upto=2)
    assert program.cuts() == [2, 3, 4] and got.shape == (8,)
    assert np.abs(got - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())


def test_only_the_needed_rotation_keys_exist_and_a_missing_one_is_refused() -> None:
    model = _random(nn.Sequential(nn.Flatten(), nn.Linear(16, 4)), 1)
    params = choose_ckks(1, 16)
    program = compile_packed(model, (1, 4, 4), params.slots, 1)
    client, server = backend_for(params), backend_for(params)
    client.generate_keys(sorted(program.rotation_steps())[:-1])  # one step short
    server.load_public(client.export_public())
    assert server.rotation_steps() == set(sorted(program.rotation_steps())[:-1])
    ct = client.encrypt(program.input.pack(np.ones(16), params.slots))
    with pytest.raises(HeError, match="no Galois key"):
        run_packed(encode_program(program, server), server, ct)


def test_batch_mode_slot_per_image_matches_plaintext() -> None:
    model = _random(nn.Sequential(nn.Conv2d(1, 2, 2), Square(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8, 3)), 4)
    program = compile_batch(model, (1, 5, 5))
    assert [op.kind for op in program.ops] == ["affine", "square", "sum", "affine"] and program.depth == 3
    params = choose_ckks(3, 1)
    client, server = backend_for(params), backend_for(params)
    client.generate_keys([])
    server.load_public(client.export_public())
    images = np.random.default_rng(0).uniform(-1, 1, (50, 25))
    cts = [client.encrypt(images[:, i]) for i in range(25)]
    out = run_batch(program, server, cts)
    got = np.stack([client.decrypt(ct)[:50] for ct in out], axis=1)
    with torch.no_grad():
        expected = model.double()(torch.tensor(images.reshape(50, 1, 5, 5))).numpy()
    assert np.abs(got - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())
    features = run_batch(program, server, cts, upto=2)  # transfer cut after the square
    assert len(features) == 2 * 4 * 4


def test_malformed_ciphertexts_and_wrong_levels_are_refused() -> None:
    params = choose_ckks(2, 16)
    backend = backend_for(params)
    backend.generate_keys([])
    with pytest.raises(HeError):
        backend.from_bytes(b"not a ciphertext at all")
    with pytest.raises(HeError, match="empty"):
        backend.from_bytes(b"")
    ct = backend.encrypt(np.ones(4))
    other = backend_for(choose_ckks(1, 16))
    with pytest.raises(HeError):
        other.from_bytes(backend.to_bytes(ct))  # different parameters
    squared = backend.square(ct)
    with pytest.raises(HeError, match="level"):
        backend.from_bytes(backend.to_bytes(squared), level=backend.top_level)


def test_bfv_per_pixel_baseline_computes_the_net() -> None:
    from serdab.he.baseline import BfvPerPixel

    model = _random(nn.Sequential(nn.Conv2d(1, 2, 2), Square(), nn.Flatten(), nn.Linear(2 * 3 * 3, 3)), 5)
    image = np.random.default_rng(3).uniform(0, 1, (1, 4, 4))
    run = BfvPerPixel(model, (1, 4, 4), input_bits=6, weight_bits=6).run(image)
    with torch.no_grad():
        expected = model.double()(torch.tensor(image[None])).numpy()[0]
    assert run.noise_budget_bits > 0 and run.upload_bytes > 16 * 100_000  # one ciphertext per pixel
    assert np.abs(run.logits - expected).max() < 0.05 * max(1.0, np.abs(expected).max())  # 6-bit fixed point
