"""Homomorphic-encryption inference mode (seed 004): the server computes on CKKS ciphertexts only.

The client keeps its image private by encrypting it; the server holds only public keys. The
seed's CNNs are approximated (x^2, average pooling) and retrained on offline data
(``train``), compiled to packed kernels (``packing``, ``kernels``: one image per ciphertext)
or to batch mode (``batch``: slot = image), served over HTTP (``service``) to ``Client``.
``baseline`` is seed 004's way (one BFV ciphertext per pixel), kept to measure against.
"""

from serdab.he.approx import Square, approximate
from serdab.he.client import Client
from serdab.he.model import HeModel
from serdab.he.params import CkksParams, choose_ckks, multiplicative_depth
from serdab.he.train import TrainResult, digits_28, train_net

__all__ = [
    "CkksParams",
    "Client",
    "HeModel",
    "Square",
    "TrainResult",
    "approximate",
    "choose_ckks",
    "digits_28",
    "multiplicative_depth",
    "train_net",
]
