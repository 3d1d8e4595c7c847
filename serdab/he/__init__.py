"""Homomorphic-encryption inference mode (seed 004, PyCrCNN) — work in progress (issue 5).

Here so far: the HE-friendly approximation of the seed's CNNs (square activations, average
pooling), their seeded training on data shipped with scikit-learn, and the choice of CKKS
parameters for 128-bit security. The packed kernels, the service and the benchmark are not
written yet.
"""

from serdab.he.approx import Square, approximate
from serdab.he.params import CkksParams, choose_ckks, multiplicative_depth
from serdab.he.train import TrainResult, digits_28, train_net

__all__ = [
    "CkksParams",
    "Square",
    "TrainResult",
    "approximate",
    "choose_ckks",
    "digits_28",
    "multiplicative_depth",
    "train_net",
]
