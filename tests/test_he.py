from __future__ import annotations

import torch
from torch import nn

from serdab.cli.app import main
from serdab.he import Square, approximate, digits_28, train_net
from serdab.models import small


def test_approximation_keeps_only_polynomial_layers() -> None:
    for build in (small.he_cnn6, small.he_cnn5):
        plain = build()
        approx = approximate(plain)
        kinds = {type(m) for m in approx.modules()}
        assert nn.ReLU not in kinds and nn.MaxPool2d not in kinds
        assert Square in kinds and nn.AvgPool2d in kinds
        x = torch.rand(2, 1, 28, 28)
        assert approx(x).shape == plain(x).shape == (2, 10)
        assert any(isinstance(m, nn.ReLU) for m in plain.modules())  # the original is untouched


def test_digits_are_offline_28x28_and_split_the_same_way_every_time() -> None:
    x_train, y_train, x_test, y_test = digits_28(seed=0)
    assert x_train.shape[1:] == (1, 28, 28) and float(x_train.min()) >= 0.0 and float(x_train.max()) <= 1.0
    assert len(y_train) + len(y_test) == 1797 and abs(len(y_test) - 360) <= 1
    assert torch.equal(digits_28(seed=0)[3], y_test)


def test_training_is_reproducible_and_learns() -> None:
    first = train_net("he_cnn5", approximated=True, epochs=8, seed=1)
    again = train_net("he_cnn5", approximated=True, epochs=8, seed=1)
    assert first.accuracy == again.accuracy
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert first.accuracy > 0.8  # 10 classes: chance is 0.1


def test_he_train_command(tmp_path, capsys) -> None:
    assert main(["he", "train", "--net", "he_cnn5", "--epochs", "3", "--out", str(tmp_path)]) == 0
    assert "he_cnn5" in capsys.readouterr().out
    assert (tmp_path / "he_cnn5-plain.pt").exists() and (tmp_path / "he_cnn5-approx.pt").exists()
    assert main(["he", "train", "--net", "lenet"]) == 2
    assert "unknown HE net 'lenet'" in capsys.readouterr().err


def test_depth_counts_rescales_and_refuses_non_polynomial_layers() -> None:
    import pytest

    from serdab.errors import ModelError
    from serdab.he.params import multiplicative_depth

    assert multiplicative_depth(approximate(small.he_cnn5())) == 5  # conv, x^2, fc, x^2, fc
    assert multiplicative_depth(approximate(small.he_cnn6())) == 7
    with pytest.raises(ModelError, match="approximate the model first"):
        multiplicative_depth(small.he_cnn5())


def test_ckks_parameters_are_the_smallest_secure_ring_and_work_in_seal() -> None:
    import pytest
    import tenseal as ts

    from serdab.errors import ModelError
    from serdab.he.params import MAX_COEFF_BITS_128, choose_ckks

    params = choose_ckks(5, slots_needed=784)  # 60 + 5 x 40 + 60 = 320 bits: more than N=8192 allows
    assert params.poly_modulus_degree == 16384 and params.total_bits <= MAX_COEFF_BITS_128[16384]
    assert choose_ckks(3).poly_modulus_degree == 16384  # 240 bits > 218
    assert choose_ckks(2, scale_bits=30, integer_bits=10).poly_modulus_degree == 8192  # 40 + 60 + 40 = 140 > 109
    assert choose_ckks(1, scale_bits=30, integer_bits=0, slots_needed=2048).poly_modulus_degree == 4096
    assert choose_ckks(1, scale_bits=30, integer_bits=0, slots_needed=2049).poly_modulus_degree == 8192
    with pytest.raises(ModelError, match="more than 128-bit security allows"):
        choose_ckks(40)
    # SEAL accepts the parameters at 128-bit security and evaluates depth-5 circuits correctly
    context = ts.context(ts.SCHEME_TYPE.CKKS, params.poly_modulus_degree, -1, list(params.coeff_mod_bit_sizes))
    context.global_scale = 2**params.scale_bits
    vector = ts.ckks_vector(context, [0.5, -1.25, 2.0])
    for _ in range(params.depth):
        vector = vector * 1.1
    expected = [x * 1.1**params.depth for x in (0.5, -1.25, 2.0)]
    assert all(abs(a - b) < 1e-4 for a, b in zip(vector.decrypt()[:3], expected, strict=True))
