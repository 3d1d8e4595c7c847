"""CKKS parameters for 128-bit security, the smallest ring that gives a model the depth it needs.

The maximum total coefficient-modulus size per ring dimension N comes from the Homomorphic
Encryption Standard (homomorphicencryption.org, 128-bit classical security, ternary secrets),
the table Microsoft SEAL enforces. A CKKS circuit of multiplicative depth d needs one prime of
``scale_bits`` per rescale, a first prime with room for the integer part of the result and a
special prime for key switching: ``first + d * scale + special`` bits.

The special prime bounds the noise every rotation adds: with it only 4 bits above the first
prime, a rotation at N=8192 was off by 3e-3 (measured); 11 bits above, by 7e-5. So the helper
walks N upwards and, for each N, the scale downwards from 2^40 to 2^25 (the precision floor),
and takes the first choice whose special prime is at least ``special_margin`` bits above the first.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from serdab.errors import ModelError
from serdab.he.approx import Square

__all__ = ["MAX_COEFF_BITS_128", "CkksParams", "choose_ckks", "multiplicative_depth"]

MAX_COEFF_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
_MAX_PRIME_BITS = 60  # SEAL's limit for one prime


@dataclass(frozen=True)
class CkksParams:
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    depth: int
    security_bits: int = 128

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    def as_dict(self) -> dict[str, object]:
        return {
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "scale_bits": self.scale_bits,
            "depth": self.depth,
            "security_bits": self.security_bits,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> CkksParams:
        try:
            return cls(
                int(data["poly_modulus_degree"]),  # type: ignore[call-overload]
                tuple(int(b) for b in data["coeff_mod_bit_sizes"]),  # type: ignore[attr-defined]
                int(data["scale_bits"]),  # type: ignore[call-overload]
                int(data["depth"]),  # type: ignore[call-overload]
                int(data.get("security_bits", 128)),  # type: ignore[call-overload]
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ModelError(f"malformed CKKS parameters {data!r}: {error}") from None

    def describe(self) -> str:
        return (
            f"N={self.poly_modulus_degree} ({self.slots} slots), moduli {list(self.coeff_mod_bit_sizes)} = "
            f"{self.total_bits} bits <= {MAX_COEFF_BITS_128[self.poly_modulus_degree]} for 128-bit security, "
            f"scale 2^{self.scale_bits}, depth {self.depth}"
        )


def multiplicative_depth(model: nn.Module) -> int:
    """Rescales a forward pass needs: one per run of affine layers (conv, pooling, linear), one per square."""
    depth = 0
    in_affine = False
    for module in model.modules():
        if isinstance(module, nn.ReLU | nn.MaxPool2d):
            raise ModelError(f"{type(module).__name__} cannot run under HE: approximate the model first")
        if isinstance(module, nn.Conv2d | nn.Linear | nn.AvgPool2d):
            depth += not in_affine
            in_affine = True
        elif isinstance(module, Square):
            depth += 1
            in_affine = False
    return depth


def choose_ckks(
    depth: int,
    slots_needed: int = 1,
    integer_bits: int = 9,
    poly_modulus_degree: int | None = None,
    special_margin: int = 10,
) -> CkksParams:
    """The smallest ring (or the given one) with ``depth`` rescales and ``slots_needed`` slots at 128 bits."""
    if depth < 1 or slots_needed < 1 or not 0 <= integer_bits <= 20:
        raise ModelError(f"need depth >= 1, slots >= 1 and 0 <= integer_bits <= 20 (got {depth}, {slots_needed})")
    rings = [poly_modulus_degree] if poly_modulus_degree else list(MAX_COEFF_BITS_128)
    for n in rings:
        if n not in MAX_COEFF_BITS_128:
            raise ModelError(f"poly_modulus_degree must be one of {', '.join(map(str, MAX_COEFF_BITS_128))}")
        if n // 2 < slots_needed:
            continue
        for scale in range(40, 24, -1):
            first = min(scale + integer_bits, _MAX_PRIME_BITS)
            special = min(_MAX_PRIME_BITS, MAX_COEFF_BITS_128[n] - first - depth * scale)
            if special >= min(first + special_margin, _MAX_PRIME_BITS):
                return CkksParams(n, (first, *([scale] * depth), special), scale, depth)
    where = f"N={poly_modulus_degree}" if poly_modulus_degree else "N=32768"
    raise ModelError(
        f"depth {depth} with {slots_needed} slots needs more coefficient bits than 128-bit security allows at "
        f"{where} (scale >= 2^25): lower the model's depth"
    )
