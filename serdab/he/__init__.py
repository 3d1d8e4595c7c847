"""Homomorphic-encryption inference mode (seed 004, PyCrCNN) — work in progress (issue 5).

Here so far: the HE-friendly approximation of the seed's CNNs (square activations, average
pooling) and their seeded training on data shipped with scikit-learn. The CKKS kernels, the
service and the benchmark are not written yet.
"""

from serdab.he.approx import Square, approximate
from serdab.he.train import TrainResult, digits_28, train_net

__all__ = ["Square", "TrainResult", "approximate", "digits_28", "train_net"]
