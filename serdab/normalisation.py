"""How Serdab turns image pixels into a model's input: one set of statistics for every path.

RGB models take ImageNet's mean and standard deviation, one-channel models MNIST's, any other
channel count the raw [0, 1] pixels. Frames of ``serdab run`` travel as uint8 and the first stage
normalises them (``Normalisation.apply``); seed 001's image batches, the leakage metrics and the
attacks use the same numbers. A leaf: numpy only, so enclaves may import it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["IMAGENET", "MNIST", "Normalisation", "normalisation"]


@dataclass(frozen=True)
class Normalisation:
    """uint8 pixels (N x C x H x W) -> the model's float input, ``(p / 255 - mean) / std`` per channel."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        return ((pixels.astype(np.float32) * np.float32(1 / 255) - mean) / std).astype(np.float32)

    def to_wire(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_wire(cls, item: dict[str, list[float]]) -> Normalisation:
        return cls(tuple(item["mean"]), tuple(item["std"]))


IMAGENET = Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
MNIST = Normalisation((0.1307,), (0.3081,))


def normalisation(channels: int) -> Normalisation:
    """ImageNet statistics for RGB models, MNIST's for grey ones, none for other channel counts."""
    if channels == 3:
        return IMAGENET
    if channels == 1:
        return MNIST
    return Normalisation((0.0,) * channels, (1.0,) * channels)
