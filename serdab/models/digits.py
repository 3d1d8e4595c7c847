"""Offline training data and a seeded training loop: scikit-learn's bundled digits at 28x28.

Every trained weight in Serdab comes from here: no dataset can be downloaded, and the digits
(1,797 8x8 images) ship inside scikit-learn. They are upscaled bilinearly to 28x28 (the MNIST
input size of the seed models), scaled to [0, 1], split 80/20 stratified with a fixed seed.
Training is Adam on one thread with a fixed seed, so the same call gives the same weights.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from serdab.normalisation import MNIST

__all__ = ["MNIST_MEAN", "MNIST_STD", "Fit", "cached_fit", "digits_28", "digits_split", "fit_digits"]

MNIST_MEAN, MNIST_STD = MNIST.mean[0], MNIST.std[0]
"""How Serdab normalises every one-channel input (frames, audits): MNIST's statistics (serdab.normalisation)."""


@dataclass(frozen=True)
class Fit:
    """A model trained on the digits and its accuracy on the held-out 20%."""

    model: nn.Module
    accuracy: float
    seconds: float


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices into ``load_digits()``: 80/20, stratified, fixed seed."""
    target = load_digits().target
    train, test = train_test_split(np.arange(len(target)), test_size=0.2, random_state=seed, stratify=target)
    return train, test


def digits_28(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test); images N x 1 x 28 x 28 in [0, 1]."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)
    labels = torch.tensor(digits.target, dtype=torch.long)
    train, test = digits_split(seed)
    return images[train], labels[train], images[test], labels[test]


def fit_digits(
    build: Callable[[], nn.Module], epochs: int = 30, seed: int = 0, lr: float = 2e-3, normalise: bool = False
) -> Fit:
    """Train ``build()`` (seeded start) on the digits; deterministic for a given seed.

    ``normalise`` feeds (x - MNIST_MEAN) / MNIST_STD, the input Serdab's frames and audits give a
    one-channel model; HE nets train on [0, 1] pixels as seed 004 does.
    """
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = build()
        x_train, y_train, x_test, y_test = digits_28(seed)
        if normalise:
            x_train, x_test = (x_train - MNIST_MEAN) / MNIST_STD, (x_test - MNIST_MEAN) / MNIST_STD
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
    return Fit(model, accuracy, time.perf_counter() - started)


def cached_fit(
    build: Callable[[], nn.Module], folder: str, name: str, epochs: int = 30, seed: int = 0, normalise: bool = False
) -> nn.Module:
    """The trained model from $SERDAB_CACHE_DIR/FOLDER, training it first (seconds) when absent.

    The file name carries a hash of the architecture, so a changed model is retrained.
    """
    from serdab.models.load import cache_dir

    model = build()
    shape = hashlib.sha256(str(model).encode()).hexdigest()[:8]
    norm = "-norm" if normalise else ""
    path: Path = cache_dir() / folder / f"{name}{norm}-{shape}-e{epochs}-s{seed}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    model = fit_digits(build, epochs=epochs, seed=seed, normalise=normalise).model
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(model.state_dict(), partial)
    partial.replace(path)  # atomic: concurrent runs never read half a file
    return model.eval()
