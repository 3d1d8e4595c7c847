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

    assert multiplicative_depth(approximate(small.he_cnn5())) == 3  # conv, x^2, pool+fc+fc (one affine map)
    assert multiplicative_depth(approximate(small.he_cnn6())) == 7
    with pytest.raises(ModelError, match="approximate the model first"):
        multiplicative_depth(small.he_cnn5())


def test_ckks_parameters_are_the_smallest_secure_ring_and_work_in_seal() -> None:
    import numpy as np
    import pytest

    from serdab.errors import ModelError
    from serdab.he.backend import backend_for
    from serdab.he.params import MAX_COEFF_BITS_128, choose_ckks

    params = choose_ckks(3, slots_needed=784)  # the 5-layer net: 47 + 3 x 38 + 57 = 218 bits fit N=8192
    assert params.poly_modulus_degree == 8192 and params.coeff_mod_bit_sizes == (47, 38, 38, 38, 57)
    assert choose_ckks(4).coeff_mod_bit_sizes == (40, 31, 31, 31, 31, 54)
    assert choose_ckks(5).coeff_mod_bit_sizes == (36, 27, 27, 27, 27, 27, 47)
    assert params.total_bits <= MAX_COEFF_BITS_128[8192]
    six = choose_ckks(7, slots_needed=784)  # the 6-layer net: even 2^25 needs 34 + 175 + 44 > 218
    assert six.poly_modulus_degree == 16384 and six.scale_bits == 40 and six.coeff_mod_bit_sizes[-1] == 60
    assert choose_ckks(1).poly_modulus_degree == 4096
    assert choose_ckks(1, slots_needed=2049).poly_modulus_degree == 8192
    assert choose_ckks(5, poly_modulus_degree=16384).scale_bits == 40
    for depth in range(1, 12):  # the special prime stays 10 bits above the first (rotation noise)
        chosen = choose_ckks(depth)
        assert chosen.coeff_mod_bit_sizes[-1] >= min(60, chosen.coeff_mod_bit_sizes[0] + 10)
        assert chosen.total_bits <= MAX_COEFF_BITS_128[chosen.poly_modulus_degree]
    with pytest.raises(ModelError, match="more coefficient bits than 128-bit security allows"):
        choose_ckks(40)
    with pytest.raises(ModelError, match="N=4096"):
        choose_ckks(5, poly_modulus_degree=4096)
    # SEAL accepts the parameters at 128-bit security and evaluates a depth-5 circuit correctly
    backend = backend_for(params)
    backend.generate_keys([])
    ct = backend.encrypt(np.array([0.5, -1.25, 2.0]))
    for _ in range(params.depth):
        ct = backend.multiply_plain(ct, backend.encode_weights(1.1, backend.level(ct)))
        backend.rescale_inplace(ct)
    assert backend.level(ct) == 0
    assert np.allclose(backend.decrypt(ct)[:3], np.array([0.5, -1.25, 2.0]) * 1.1**params.depth, atol=1e-3)
