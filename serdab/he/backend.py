"""The HE backend interface the packed kernels are written against, and its registry.

A backend wraps one CKKS parameter set. The client side generates keys and keeps the secret;
the server side loads only the public, relinearisation and Galois keys the client sent, so it
can evaluate but never decrypt. Levels count the rescales a ciphertext has left (top = depth).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np

from serdab.errors import HeError
from serdab.he.params import CkksParams

__all__ = ["BACKENDS", "HeBackend", "HeError", "backend_for"]


class HeBackend(ABC):
    """One CKKS context: key material, encryption, and the handful of operations kernels need."""

    name: ClassVar[str]

    def __init__(self, params: CkksParams) -> None:
        self.params = params

    @property
    def slots(self) -> int:
        return self.params.slots

    @property
    def top_level(self) -> int:
        return self.params.depth

    # keys
    @abstractmethod
    def generate_keys(self, rotation_steps: Iterable[int]) -> None:
        """Create a secret key and the public material for exactly these rotation steps."""

    @property
    @abstractmethod
    def has_secret(self) -> bool: ...

    @abstractmethod
    def export_public(self) -> dict[str, bytes]:
        """Public, relinearisation and Galois keys, serialised (what a client uploads once)."""

    @abstractmethod
    def load_public(self, keys: dict[str, bytes]) -> None:
        """Install a client's public material; raises HeError if it does not fit the parameters."""

    @abstractmethod
    def rotation_steps(self) -> set[int]: ...

    # data
    @abstractmethod
    def encrypt(self, values: np.ndarray) -> Any: ...

    @abstractmethod
    def decrypt(self, ct: Any) -> np.ndarray: ...

    @abstractmethod
    def to_bytes(self, ct: Any) -> bytes: ...

    @abstractmethod
    def from_bytes(self, data: bytes, level: int | None = None) -> Any:
        """Load and validate a ciphertext; ``level`` demands it sit at that level (fresh input: top)."""

    # evaluation
    @abstractmethod
    def level(self, ct: Any) -> int: ...

    @abstractmethod
    def encode_weights(self, values: np.ndarray | float, level: int, scale_level: int | None = None) -> Any:
        """Plaintext for multiply_plain at ``level``, scaled by the prime the rescale drops that
        leaves ``scale_level`` (default ``level``: the next one)."""

    @abstractmethod
    def encode_like(self, values: np.ndarray | float, ct: Any) -> Any:
        """Plaintext at ``ct``'s level and exact scale, for add_plain."""

    @abstractmethod
    def multiply_plain(self, ct: Any, pt: Any) -> Any: ...

    @abstractmethod
    def add(self, a: Any, b: Any) -> Any: ...

    @abstractmethod
    def add_inplace(self, acc: Any, ct: Any) -> None: ...

    @abstractmethod
    def add_plain_inplace(self, ct: Any, pt: Any) -> None: ...

    @abstractmethod
    def rotate(self, ct: Any, step: int) -> Any: ...

    @abstractmethod
    def rescale_inplace(self, ct: Any) -> None: ...

    @abstractmethod
    def square(self, ct: Any, relinearize: bool = True) -> Any:
        """ct^2, relinearised and rescaled (one level). With ``relinearize=False`` a raw square:
        3 parts, not rescaled (rescaling a 3-part ciphertext multiplies its error by about 100,
        measured), for a next layer that relinearises and rescales once per output."""

    @abstractmethod
    def relinearize_inplace(self, ct: Any) -> None:
        """Back to 2 parts (a no-op when it is already); rotations need it."""

    @abstractmethod
    def parts(self, ct: Any) -> int: ...


BACKENDS: dict[str, type[HeBackend]] = {}


def register(cls: type[HeBackend]) -> type[HeBackend]:
    BACKENDS[cls.name] = cls
    return cls


def backend_for(params: CkksParams, name: str = "tenseal-ckks") -> HeBackend:
    """A fresh backend instance; importing the implementations registers them."""
    from serdab.he import tenseal_ckks  # noqa: F401  (registers)

    if name not in BACKENDS:
        raise HeError(f"unknown HE backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name](params)
