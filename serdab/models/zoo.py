"""The model zoo: every architecture the seeds evaluate, at its seed input size, with seeded weights.

Weights are random but reproducible (``torch.manual_seed``): no model hub is reachable, and
partitioning, profiling and planning depend on shapes and costs, not on what was learned.
Leakage measured on seeded weights is an estimate for untrained filters; docs say so. One entry,
``lenet5_digits``, is trained (on scikit-learn's bundled digits, seconds, cached) so that the
privacy audit can compare a trained model with its seeded twin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from serdab.errors import ModelNotFoundError
from serdab.models import imagenet, small

__all__ = ["ZOO", "ZooEntry", "build_module", "zoo_entry"]

WEIGHT_SEED = 0


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: how to build it and the input it was evaluated with in its seed paper."""

    name: str
    build: Callable[[], nn.Module]
    input_chw: tuple[int, int, int]
    seeds: str
    description: str
    weights: str = "seeded"  # or what the weights were trained on


def _lenet5_digits() -> nn.Module:
    from serdab.models.digits import cached_fit

    return cached_fit(small.lenet5, "trained", "lenet5-digits", normalise=True)


def _entries() -> dict[str, ZooEntry]:
    rows: list[tuple[str, Callable[[], nn.Module], tuple[int, int, int], str, str]] = [
        ("alexnet", imagenet.alexnet, (3, 224, 224), "000", "AlexNet (ImageNet)"),
        ("vgg16", imagenet.vgg16, (3, 224, 224), "000,002", "VGG16 (ImageNet)"),
        ("resnet18", imagenet.resnet18, (3, 224, 224), "000,001,002", "ResNet-18 (ImageNet)"),
        ("mobilenetv2", imagenet.mobilenet_v2, (3, 224, 224), "000,002", "MobileNetV2 (ImageNet)"),
        ("squeezenet1_1", imagenet.squeezenet1_1, (3, 224, 224), "000", "SqueezeNet 1.1 (ImageNet)"),
        ("googlenet", imagenet.googlenet, (3, 224, 224), "000", "GoogLeNet / Inception v1 (ImageNet)"),
        ("lenet5", small.lenet5, (1, 28, 28), "003", "LeNet-5 (MNIST)"),
        ("cifar_cnn", small.cifar_cnn, (3, 32, 32), "003", "RL-PDNN CIFAR-10 CNN, 6 conv + 2 FC"),
        (
            "vgg16_128",
            partial(imagenet.vgg16, num_classes=196, input_size=128),
            (3, 128, 128),
            "003",
            "VGG16 at 128x128 (Stanford Cars, 196 classes)",
        ),
        ("he_cnn6", small.he_cnn6, (1, 28, 28), "004", "PyCrCNN 6-layer CNN (MNIST)"),
        ("he_cnn5", small.he_cnn5, (1, 28, 28), "004", "PyCrCNN 5-layer CNN (MNIST)"),
    ]
    entries = {name: ZooEntry(name, build, chw, seeds, desc) for name, build, chw, seeds, desc in rows}
    entries["lenet5_digits"] = ZooEntry(
        "lenet5_digits",
        _lenet5_digits,
        (1, 28, 28),
        "003",
        "LeNet-5 trained on digits (the twin of lenet5)",
        weights="scikit-learn digits, 28x28, 30 epochs",
    )
    return entries


ZOO: dict[str, ZooEntry] = _entries()


def zoo_entry(name: str) -> ZooEntry:
    """The zoo entry for ``name``; unknown names list the valid ones."""
    try:
        return ZOO[name]
    except KeyError:
        raise ModelNotFoundError(
            f"no zoo model or file named {name!r}; zoo models: {', '.join(ZOO)} (or a path to an .onnx file)"
        ) from None


def build_module(name: str) -> nn.Module:
    """Build zoo model ``name`` in eval mode with seeded weights (identical on every call)."""
    entry = zoo_entry(name)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(WEIGHT_SEED)
        module = entry.build()
    finally:
        torch.random.set_rng_state(state)
    return module.eval()
