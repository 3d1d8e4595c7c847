"""Small CNNs of seeds 003 (RL-PDNN's LeNet, CIFAR CNN) and 004 (PyCrCNN's 6- and 5-layer nets).

Seed 003 names the CIFAR network only as "6 convolutional and 2 fully connected layers" on
32x32 RGB images; the widths below (32-32-64-64-128-128, FC 128) are our choice and are stated
in docs. Seed 004 gives the HE nets layer by layer (section VI-A); its text lists no
activation for the 6-layer net, so we place ReLU after each conv and the first FC as in the
5-layer net (the HE mode replaces them with polynomials).
"""

from __future__ import annotations

from torch import nn

__all__ = ["cifar_cnn", "he_cnn5", "he_cnn6", "lenet5"]


def lenet5(num_classes: int = 10) -> nn.Module:
    """LeNet-5 on 28x28 grey images (2 conv + 3 FC)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def cifar_cnn(num_classes: int = 10) -> nn.Module:
    """Seed 003's CIFAR-10 network: 6 conv + 2 FC on 32x32 RGB."""
    layers: list[nn.Module] = []
    channels = 3
    for width in (32, 64, 128):
        layers += [
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        channels = width
    layers += [nn.Flatten(), nn.Linear(128 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, num_classes)]
    return nn.Sequential(*layers)


def he_cnn6(num_classes: int = 10) -> nn.Module:
    """Seed 004's 6-layer CNN on 28x28 grey: conv8 3x3, pool 2x2/3, conv16 3x3/2, pool 2x2, FC16, FC10."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3),
        nn.ReLU(),
        nn.MaxPool2d(2, stride=3),
        nn.Conv2d(8, 16, 3, stride=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 2 * 2, 16),
        nn.ReLU(),
        nn.Linear(16, num_classes),
    )


def he_cnn5(num_classes: int = 10) -> nn.Module:
    """Seed 004's 5-layer CNN on 28x28 grey: conv16 3x3/3 + ReLU, max pool 3x3/3, FC72, FC10.

    As the seed lists it: one activation, after the convolution (its 6-layer net lists none; the
    zoo's he_cnn6 keeps a ReLU after each convolution and the hidden layer, the deeper HE case)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, stride=3),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=3),
        nn.Flatten(),
        nn.Linear(16 * 3 * 3, 72),
        nn.Linear(72, num_classes),
    )
