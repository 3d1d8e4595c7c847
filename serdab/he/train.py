"""Seeded training of seed 004's 6- and 5-layer CNNs, plain and approximated, on offline data.

Data and loop are ``serdab.models.digits`` (scikit-learn's bundled digits at 28x28, Adam, one
thread, seeded): a few seconds per net on 2 cores, no download.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from serdab.errors import ModelError
from serdab.he.approx import approximate
from serdab.models import small
from serdab.models.digits import cached_fit, digits_28, fit_digits

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


def _builder(net: str, approximated: bool) -> Callable[[], nn.Module]:
    if net not in NETS:
        raise ModelError(f"unknown HE net {net!r}; choose one of {', '.join(NETS)}")
    build = NETS[net]
    return (lambda: approximate(build())) if approximated else build


def train_net(net: str, approximated: bool, epochs: int = 30, seed: int = 0, lr: float = 2e-3) -> TrainResult:
    """Train ``net`` (plain, or with square activations and average pooling) from a seeded start."""
    fit = fit_digits(_builder(net, approximated), epochs=epochs, seed=seed, lr=lr)
    return TrainResult(net, approximated, fit.model, fit.accuracy, fit.seconds)


def _sequential(model: nn.Module) -> nn.Sequential:
    if not isinstance(model, nn.Sequential):
        raise ModelError(f"HE nets are nn.Sequential (layer by layer), got {type(model).__name__}")
    return model


def trained(net: str, approximated: bool = True, epochs: int = 30, seed: int = 0) -> nn.Sequential:
    """The trained net from the cache ($SERDAB_CACHE_DIR/he), training it first (seconds) when absent."""
    kind = "approx" if approximated else "plain"
    return _sequential(cached_fit(_builder(net, approximated), "he", f"{net}-{kind}", epochs=epochs, seed=seed))
