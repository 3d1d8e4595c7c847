"""Blinded linear layers (serdab.blind): the blinded pass equals the quantised model bit for bit, masks
are never reused, the GPU's view does not depend on the image, and Freivalds' check catches a wrong
answer."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from serdab.blind.blinded import BlindedRunner, HonestGpu
from serdab.blind.field import P, check_exact
from serdab.blind.masks import MaskReuseError, MaskSource
from serdab.blind.quantize import quantize_model
from serdab.errors import LinkIntegrityError
from serdab.models.load import load_model
from serdab.onnxrt import make_session


def _is_prime(n: int) -> bool:  # trial division: n < 2^30 needs divisors up to 2^15
    return n > 1 and all(n % d for d in range(2, int(n**0.5) + 1))


def test_the_field_is_the_largest_prime_below_2_30_and_bounds_are_enforced() -> None:
    assert _is_prime(P) and not any(_is_prime(n) for n in range(P + 1, 2**30))
    check_exact(25_088, 256, "vgg16 fc6")  # VGG-16's widest layer fits
    with pytest.raises(ValueError, match="exceed 2\\^53"):
        check_exact(25_088, 400, "too wide")


@pytest.fixture(scope="module", params=["lenet5", "alexnet"])
def quantised(request):
    loaded = load_model(request.param)
    return loaded, quantize_model(loaded.proto, request.param)


@pytest.mark.parametrize("mode", ["in-stream", "pool", "outsourced"])
def test_the_blinded_pass_equals_the_quantised_model_bit_for_bit(quantised, mode: str) -> None:
    loaded, model = quantised
    x = np.random.default_rng(3).standard_normal((1, *loaded.input_chw)).astype(np.float32)
    runner = BlindedRunner(model, HonestGpu(model), mode=mode, integrity=True, helper=HonestGpu(model), seed=0)
    if mode == "pool":
        runner.precompute(range(5, 6), x.shape)
        assert runner.pool_bytes > 0
    blinded = runner.run(5, x)
    assert blinded.dtype == np.int64 and np.array_equal(blinded, model.run(x))
    if mode == "pool":
        assert runner.pool_bytes == 0  # each precomputed W r is used once, with its mask


def test_the_quantised_lenet_agrees_with_the_float_model_on_digits() -> None:
    from serdab.models.digits import digits_28

    loaded = load_model("lenet5")
    model = quantize_model(loaded.proto, "lenet5")
    images = digits_28()[2][:200].numpy()
    float_top1 = make_session(loaded.proto).run(None, {"input": images})[0].argmax(1)
    quantised_top1 = model.dequantised(images).argmax(1)
    assert (quantised_top1 == float_top1).mean() >= 0.98  # 8 fraction bits cost almost nothing here


def test_masks_are_fresh_per_frame_and_layer_and_across_restarts() -> None:
    source = MaskSource(key=bytes(32))
    masks = {(f, layer): source.draw(f, layer, (4, 8)) for f in range(20) for layer in range(5)}
    flat = {m.tobytes() for m in masks.values()}
    assert len(flat) == len(masks)  # no two (frame, layer) pairs share a mask
    assert all(m.min() >= 0 and m.max() < P for m in masks.values())
    with pytest.raises(MaskReuseError, match="frame 3, layer 2"):
        source.draw(3, 2, (4, 8))
    assert np.array_equal(source.regenerate(3, 2, (4, 8)), masks[(3, 2)])  # for precomputing W r only
    restarted = MaskSource()  # a new epoch: a fresh key
    assert not np.array_equal(restarted.draw(3, 2, (4, 8)), masks[(3, 2)])


def test_what_the_gpu_sees_does_not_depend_on_the_image() -> None:
    loaded = load_model("lenet5")
    model = quantize_model(loaded.proto, "lenet5")
    views = []
    for image in (np.zeros((1, 1, 28, 28), np.float32), np.full((1, 1, 28, 28), 2.0, np.float32)):
        gpu = HonestGpu(model, keep=True)
        BlindedRunner(model, gpu, masks=MaskSource(key=bytes(range(32)) if not views else bytes(32))).run(0, image)
        views.append(np.concatenate([v.ravel() for v in gpu.seen or []]) / P)
    for view in views:  # uniform in [0, 1) whatever the image
        assert stats.kstest(view, "uniform").pvalue > 0.01
    assert stats.ks_2samp(views[0], views[1]).pvalue > 0.01  # two very different images, one distribution


def test_freivalds_catches_a_gpu_that_answers_wrongly() -> None:
    loaded = load_model("lenet5")
    model = quantize_model(loaded.proto, "lenet5")
    honest = HonestGpu(model)

    def tampering(change: int, at_layer: int):
        def gpu(index: int, masked: np.ndarray) -> np.ndarray:
            z = honest(index, masked)
            if index == at_layer:
                z.flat[3] = (z.flat[3] + change) % P
            return z

        return gpu

    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    unchecked = BlindedRunner(model, tampering(1 << 12, 4)).run(0, x)
    assert not np.array_equal(unchecked, model.run(x))  # the tampering changes the answer...
    for change, layer in ((1 << 12, 4), (1, 1)):  # ...and the check catches it, even a change rounding would hide
        with pytest.raises(LinkIntegrityError, match="fails Freivalds' check") as caught:
            BlindedRunner(model, tampering(change, layer), integrity=True, seed=1).run(0, x)
        assert caught.value.kind == "wrong-answer"
    # outsourced: a wrong W r from the second device is caught by the same check, and blamed on it
    outsourced = BlindedRunner(model, honest, mode="outsourced", helper=tampering(1, 2), integrity=True, seed=1)
    with pytest.raises(LinkIntegrityError, match="W r device") as caught:
        outsourced.run(0, x)
    assert caught.value.kind == "wrong-precomputation"
    # ...and with an honest W r device, a wrong GPU answer is blamed on the GPU, not on it
    outsourced = BlindedRunner(model, tampering(1, 2), mode="outsourced", helper=honest, integrity=True, seed=1)
    with pytest.raises(LinkIntegrityError, match="GPU's answer") as caught:
        outsourced.run(0, x)
    assert caught.value.kind == "wrong-answer"


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "squeezenet1_1"])
def test_residual_depthwise_and_concatenating_models_are_blinded_bit_for_bit(name: str) -> None:
    loaded = load_model(name)  # Add (ResNet), Clip and depthwise convolutions (MobileNetV2), Concat (SqueezeNet)
    model = quantize_model(loaded.proto, name)
    x = np.random.default_rng(4).standard_normal((1, *loaded.input_chw)).astype(np.float32)
    assert np.array_equal(BlindedRunner(model, HonestGpu(model), integrity=True, seed=0).run(0, x), model.run(x))
    if name == "resnet18":  # every residual Add and ReLU folded into a convolution, done while unmasking
        assert not [s for s in model.steps if s.kind in ("add", "relu")]
        assert sum(bool(getattr(s, "residual", "")) for s in model.steps) == 8  # one per basic block


def test_an_operation_without_an_integer_form_is_refused_by_name() -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["input"], ["output"], name="squash")],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])],
    )
    with pytest.raises(ValueError, match="Sigmoid \\(squash\\) is not supported"):
        quantize_model(helper.make_model(graph), "g")


def test_the_fused_enclave_kernels_equal_the_numpy_arithmetic() -> None:
    from serdab.blind.field import decode
    from serdab.blind.kernels import dequantise, dot_mod, mask_into_field, quantise, unmask_finish
    from serdab.blind.quantize import QLinear

    def exact_dot(a: np.ndarray, b: np.ndarray) -> int:  # Python's unbounded integers: the reference
        return sum(int(x) * int(y) for x, y in zip(a.ravel(), b.ravel(), strict=True)) % P

    rng = np.random.default_rng(5)
    h = rng.integers(-(P // 2) + 1, P // 2, size=(1, 3, 4, 5))
    r = rng.integers(0, P, size=h.shape).astype(np.uint32)
    fts = rng.integers(0, P, size=h.size).astype(np.uint32)
    fts[:3] = P - 1  # the largest products the lazy reduction folds
    masked, expected, rejects = mask_into_field(h, r, fts)
    assert masked.dtype == np.uint32 and np.array_equal(masked, np.mod(h + r.astype(np.int64), P))
    assert expected == exact_dot(fts, np.mod(h, P)) and rejects == 0 and mask_into_field(h, r)[1] == 0
    words = r | (rng.integers(0, 4, size=r.shape).astype(np.uint32) << np.uint32(30))  # raw key-stream words
    assert np.array_equal(mask_into_field(h, words)[0], masked)  # only their low 30 bits count
    words.flat[[2, 7]] = [P, (1 << 30) - 1]  # 30-bit values at or above P: reported, for a redraw
    assert mask_into_field(h, words)[2] == 2
    z, u = rng.integers(0, P, size=h.shape).astype(np.uint32), rng.integers(0, P, size=h.shape).astype(np.uint32)
    z.flat[:4] = [0, P - 1, P // 2, P // 2 + 1]  # the edges of the signed range
    u.flat[:4] = [P - 1, 0, 0, 0]
    s = rng.integers(0, P, size=h.size).astype(np.uint32)
    for bias, shift, clamp in (
        (rng.integers(-(2**20), 2**20, size=3), 8, (None, None)),
        (None, 0, (None, None)),
        (rng.integers(-(2**20), 2**20, size=3), 8, (0, None)),  # a folded ReLU
        (None, 8, (0, 6 << 8)),  # a folded ReLU6
    ):
        layer = QLinear("l", "conv", None, bias, shift=shift, clamp=clamp)
        wide = z.astype(np.float64) - u.astype(np.float64)
        out, got = unmask_finish(z, u, bias, shift, s, clamp)
        assert np.array_equal(out, layer.finish(decode(wide)))
        assert got == exact_dot(s, np.mod(wide, P).astype(np.int64))
    gemm = QLinear("g", "gemm", None, rng.integers(-100, 100, size=7), shift=8)
    zg, ug = rng.integers(0, P, size=(1, 7)).astype(np.uint32), rng.integers(0, P, size=(1, 7)).astype(np.uint32)
    out, got = unmask_finish(zg, ug, gemm.bias, 8)
    assert np.array_equal(out, gemm.finish(decode(zg.astype(np.float64) - ug))) and got == 0
    a, b = rng.integers(0, P, size=1001), rng.integers(0, P, size=1001).astype(np.float64)
    a[:10] = P - 1
    assert dot_mod(a, b) == exact_dot(a, b)
    x = (rng.standard_normal((2, 3, 5)) * 40).astype(np.float32)
    x.flat[:4] = [0.5 / 256, 1.5 / 256, -2.5 / 256, 3.0]  # ties round to even, as numpy's rint
    q = quantise(x, 8)
    assert np.array_equal(q, np.rint(x.astype(np.float64) * 256).astype(np.int64))
    assert np.array_equal(dequantise(q, 8), (q.astype(np.float64) / 256).astype(np.float32))


def test_a_relu_after_a_linear_layer_is_folded_into_it_and_a_shared_output_is_not() -> None:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(4, dtype=np.float32) * 0.5, "w")
    nodes = [
        helper.make_node("Gemm", ["input", "w"], ["a"], name="fc1", transB=1),
        helper.make_node("Relu", ["a"], ["b"], name="relu1"),  # folded: fc1's output has no other reader
        helper.make_node("Gemm", ["b", "w"], ["c"], name="fc2", transB=1),
        helper.make_node("Relu", ["c"], ["d"], name="relu2"),  # kept: c is also added below
        helper.make_node("Add", ["c", "d"], ["output"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])],
        [w],
    )
    model = quantize_model(helper.make_model(graph), "g")
    assert [s.kind for s in model.steps] == ["gemm", "gemm", "relu", "add"]
    assert model.steps[0].clamp == (0, None) and model.steps[1].clamp == (None, None)
    x = np.array([[1.0, -2.0, 3.0, -4.0]], dtype=np.float32)
    expected = np.maximum(x * 0.25, 0) + x * 0.25 * (x > 0)  # relu(x/2)/2 once more, plus its relu
    assert np.allclose(model.dequantised(x), expected)
    assert np.array_equal(BlindedRunner(model, HonestGpu(model), integrity=True, seed=0).run(0, x), model.run(x))


@pytest.mark.parametrize(
    ("kernel", "strides", "pads", "ceil"),
    [
        ([3, 3], [2, 2], [1, 1, 1, 1], False),
        ([3, 3], [2, 2], [0, 0, 0, 0], True),
        ([2, 2], [2, 2], [0, 0, 0, 0], False),
    ],
)
def test_the_integer_max_pool_equals_torch(kernel, strides, pads, ceil) -> None:
    import torch
    import torch.nn.functional as F

    from serdab.blind.kernels import max_pool

    x = np.random.default_rng(2).integers(-(2**40), 2**40, size=(1, 3, 13, 14))
    t = F.pad(torch.from_numpy(x.astype(np.float64)), (pads[1], pads[3], pads[0], pads[2]), value=float("-inf"))
    expected = F.max_pool2d(t, kernel, strides, ceil_mode=ceil).numpy().astype(np.int64)
    assert np.array_equal(max_pool(x, kernel, strides, pads, ceil), expected)
