"""CKKS parameters for 128-bit security, the smallest that give a model the depth it needs.

The maximum total coefficient-modulus size per ring dimension N comes from the Homomorphic
Encryption Standard (homomorphicencryption.org, 128-bit classical security, ternary secrets),
the table Microsoft SEAL enforces. A CKKS circuit of multiplicative depth d needs one prime of
``scale_bits`` per rescale plus a first and last prime with room for the integer part:
``first + d * scale + last`` bits. The helper walks N upwards and says what it chose and why.

The default scale is 2^40: with TenSEAL's high-level vectors, scales of 25-30 bits drift by 1-10%
over five rescales, because the rescaling primes then differ from the scale by more (measured;
packed kernels that track the exact scale through ``tenseal.sealapi`` could use smaller ones).
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

    def describe(self) -> str:
        return (
            f"N={self.poly_modulus_degree} ({self.slots} slots), moduli {list(self.coeff_mod_bit_sizes)} = "
            f"{self.total_bits} bits <= {MAX_COEFF_BITS_128[self.poly_modulus_degree]} for 128-bit security, "
            f"scale 2^{self.scale_bits}, depth {self.depth}"
        )


def multiplicative_depth(model: nn.Module) -> int:
    """Rescales a forward pass needs: one per conv, linear and square; average pooling is folded."""
    depth = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear | Square):
            depth += 1
        elif isinstance(module, nn.ReLU | nn.MaxPool2d):
            raise ModelError(f"{type(module).__name__} cannot run under HE: approximate the model first")
    return depth


def choose_ckks(depth: int, slots_needed: int = 1, scale_bits: int = 40, integer_bits: int = 20) -> CkksParams:
    """The smallest ring giving ``depth`` rescales and ``slots_needed`` slots at 128-bit security."""
    if depth < 1 or slots_needed < 1 or not 20 <= scale_bits <= _MAX_PRIME_BITS - 10:
        raise ModelError(
            f"need depth >= 1, slots >= 1 and 20 <= scale_bits <= 50 (got {depth}, {slots_needed}, {scale_bits})"
        )
    edge = min(scale_bits + integer_bits, _MAX_PRIME_BITS)
    moduli = (edge, *([scale_bits] * depth), edge)
    for n, limit in MAX_COEFF_BITS_128.items():
        if sum(moduli) <= limit and n // 2 >= slots_needed:
            return CkksParams(n, moduli, scale_bits, depth)
    raise ModelError(
        f"depth {depth} at scale 2^{scale_bits} needs {sum(moduli)} coefficient bits: more than 128-bit security "
        f"allows at N=32768 ({MAX_COEFF_BITS_128[32768]}); lower scale_bits or the model's depth"
    )
