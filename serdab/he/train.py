"""Seeded training of seed 004's 6- and 5-layer CNNs, plain and approximated, on offline data.

Data: scikit-learn's bundled handwritten digits (1,797 8x8 images) upscaled bilinearly to 28x28
(the nets' MNIST input size), scaled to [0, 1], split 80/20 stratified with a fixed seed. No
download. Adam, full determinism (one thread, seeded), a few seconds per net on 2 cores.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from serdab.errors import ModelError
from serdab.he.approx import approximate
from serdab.models import small

__all__ = ["NETS", "TRANSFER_LAYER", "TrainResult", "digits_28", "train_net", "trained"]

NETS = {"he_cnn6": small.he_cnn6, "he_cnn5": small.he_cnn5}
# transfer mode default: seed 004 Fig. 4 takes the first 4 layers of the net as the feature
# extractor (6-layer: conv, x^2, pooling, conv; 5-layer: conv, x^2, pooling, flatten)
TRANSFER_LAYER = {"he_cnn6": 4, "he_cnn5": 4}


@dataclass(frozen=True)
class TrainResult:
    net: str
    approximated: bool
    model: nn.Module
    accuracy: float  # on the held-out 20%
    seconds: float


def digits_28(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test); images N x 1 x 28 x 28 in [0, 1]."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)
    labels = torch.tensor(digits.target, dtype=torch.long)
    index = np.arange(len(labels))
    train, test = train_test_split(index, test_size=0.2, random_state=seed, stratify=digits.target)
    return images[train], labels[train], images[test], labels[test]


def train_net(net: str, approximated: bool, epochs: int = 30, seed: int = 0, lr: float = 2e-3) -> TrainResult:
    """Train ``net`` (plain, or with square activations and average pooling) from a seeded start."""
    if net not in NETS:
        raise ModelError(f"unknown HE net {net!r}; choose one of {', '.join(NETS)}")
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = NETS[net]()
        if approximated:
            model = approximate(model)
        x_train, y_train, x_test, y_test = digits_28(seed)
        optimiser = torch.optim.Adam(model.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            model.train()
            for batch in torch.randperm(len(y_train), generator=generator).split(64):
                optimiser.zero_grad()
                loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
                loss.backward()
                optimiser.step()
        model.eval()
        with torch.no_grad():
            accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    finally:
        torch.set_num_threads(threads)
    return TrainResult(net, approximated, model, accuracy, time.perf_counter() - started)


def _sequential(model: nn.Module) -> nn.Sequential:
    if not isinstance(model, nn.Sequential):
        raise ModelError(f"HE nets are nn.Sequential (layer by layer), got {type(model).__name__}")
    return model


def trained(net: str, approximated: bool = True, epochs: int = 30, seed: int = 0) -> nn.Sequential:
    """The trained net from the cache ($SERDAB_CACHE_DIR/he), training it first (seconds) when absent."""
    from serdab.models.load import cache_dir

    if net not in NETS:
        raise ModelError(f"unknown HE net {net!r}; choose one of {', '.join(NETS)}")
    model = NETS[net]()
    if approximated:
        model = approximate(model)
    kind = "approx" if approximated else "plain"
    shape = hashlib.sha256(str(model).encode()).hexdigest()[:8]  # a changed architecture is retrained
    path = cache_dir() / "he" / f"{net}-{kind}-{shape}-e{epochs}-s{seed}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return _sequential(model.eval())
    model = train_net(net, approximated, epochs=epochs, seed=seed).model
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    torch.save(model.state_dict(), partial)
    partial.replace(path)
    return _sequential(model.eval())
