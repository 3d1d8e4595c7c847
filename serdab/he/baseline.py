"""Seed 004's way, kept as the baseline: one BFV ciphertext per pixel (PyCrCNN on Pyfhel/SEAL).

Every pixel is encrypted on its own and every layer is evaluated weight by weight with
ciphertext-plaintext products, exactly the batch-mode schedule with one image instead of N/2.
Values are fixed point: the input times 2^input_bits, each layer's weights times the power of
two that brings its largest weight to 2^weight_bits; the scale doubles at each square, and the
plaintext modulus 2^plain_bits must hold the final logits (no rescaling in BFV). SEAL's default
coefficient modulus for N at 128-bit security. The defaults (4-bit input and weights, t = 2^40)
leave ~60 bits of noise budget on the 5-layer net; with 2^52 and 3 bits, 42 bits were left and
one of three digits was misclassified. The result is decrypted with the noise budget left,
so a parameter set that ran out of budget or range shows as wrong logits, not as a crash.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as seal
from torch import nn

from serdab.he.batch import BatchProgram, compile_batch

__all__ = ["BaselineRun", "BfvPerPixel"]


@dataclass(frozen=True)
class BaselineRun:
    logits: np.ndarray
    client_s: float  # key generation is excluded (once per client); encrypt + serialise + decrypt
    server_s: float
    upload_bytes: int
    download_bytes: int
    noise_budget_bits: int  # left in the worst output ciphertext; <= 0 means garbage


class BfvPerPixel:
    def __init__(
        self,
        model: nn.Sequential,
        input_shape: tuple[int, ...] = (1, 28, 28),
        poly_modulus_degree: int = 8192,
        plain_bits: int = 40,
        input_bits: int = 4,
        weight_bits: int = 4,
    ) -> None:
        self.program: BatchProgram = compile_batch(model, input_shape)
        self.params = {
            "scheme": "BFV",
            "poly_modulus_degree": poly_modulus_degree,
            "plain_modulus": f"2^{plain_bits}",
            "coeff_modulus_bits": None,
            "input_bits": input_bits,
            "weight_bits": weight_bits,
        }
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.BFV)
        parms.set_poly_modulus_degree(poly_modulus_degree)
        parms.set_coeff_modulus(seal.CoeffModulus.BFVDefault(poly_modulus_degree, seal.SEC_LEVEL_TYPE.TC128))
        self.t = 1 << plain_bits
        parms.set_plain_modulus(self.t)
        self.context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
        self.params["coeff_modulus_bits"] = self.context.key_context_data().total_coeff_modulus_bit_count()
        keygen = seal.KeyGenerator(self.context)
        self._secret = keygen.secret_key()
        public = seal.PublicKey()
        keygen.create_public_key(public)
        self._relin = seal.RelinKeys()
        keygen.create_relin_keys(self._relin)
        self.encryptor = seal.Encryptor(self.context, public)
        self.decryptor = seal.Decryptor(self.context, self._secret)
        self.evaluator = seal.Evaluator(self.context)
        self.input_bits = input_bits
        self.weight_bits = weight_bits

    def _plain(self, value: int) -> seal.Plaintext:
        return seal.Plaintext(f"{value % self.t:X}")

    def _bytes(self, ct: seal.Ciphertext) -> int:
        from serdab.he.tenseal_ckks import _save

        return len(_save(ct))

    def run(self, image: np.ndarray) -> BaselineRun:
        started = time.perf_counter()
        pixels = np.rint(np.asarray(image, dtype=np.float64).ravel() * 2**self.input_bits).astype(np.int64)
        cts = []
        for value in pixels:
            ct = seal.Ciphertext()
            self.encryptor.encrypt(self._plain(int(value)), ct)
            cts.append(ct)
        upload = sum(self._bytes(ct) for ct in cts)  # what a client sends: every pixel's ciphertext
        client_s = time.perf_counter() - started
        started = time.perf_counter()
        exponent = self.input_bits
        for op in self.program.ops:
            if op.kind == "square":
                squared = []
                for ct in cts:
                    out = seal.Ciphertext()
                    self.evaluator.square(ct, out)
                    self.evaluator.relinearize_inplace(out, self._relin)
                    squared.append(out)
                cts, exponent = squared, 2 * exponent
            elif op.kind == "sum":
                cts = [self._sum([cts[i] for i in used]) for used, _ in op.rows]
            else:
                largest = max(float(np.abs(weights).max()) for _, weights in op.rows)
                shift = self.weight_bits - math.ceil(math.log2(largest))
                exponent += shift
                cts = [
                    self._affine(cts, used, np.rint(weights * 2.0**shift).astype(np.int64), round(b * 2.0**exponent))
                    for (used, weights), b in zip(op.rows, op.bias, strict=True)
                ]
        server_s = time.perf_counter() - started
        started = time.perf_counter()
        download = sum(self._bytes(ct) for ct in cts)
        logits, budget = [], []
        for ct in cts:
            plain = seal.Plaintext()
            self.decryptor.decrypt(ct, plain)
            value = plain.data(0) if plain.coeff_count() else 0
            value = value - self.t if value >= self.t // 2 else value
            logits.append(value / 2.0**exponent)
            budget.append(self.decryptor.invariant_noise_budget(ct))
        client_s += time.perf_counter() - started
        return BaselineRun(np.asarray(logits), client_s, server_s, upload, download, min(budget))

    def _sum(self, items: list[seal.Ciphertext]) -> seal.Ciphertext:
        if len(items) == 1:
            return items[0]
        total = seal.Ciphertext()
        self.evaluator.add(items[0], items[1], total)
        for item in items[2:]:
            self.evaluator.add_inplace(total, item)
        return total

    def _affine(self, cts: list, used: np.ndarray, weights: np.ndarray, bias: int) -> seal.Ciphertext:
        # multiply by |w| and subtract for w < 0: BFV noise grows with the plaintext as stored in
        # [0, t), so -5 stored as t - 5 would cost ~40 bits of budget instead of ~3
        total = None
        for index, weight in zip(used, weights, strict=True):
            if weight == 0:
                continue
            product = seal.Ciphertext()
            self.evaluator.multiply_plain(cts[index], self._plain(abs(int(weight))), product)
            if total is None:
                total = product
                if weight < 0:
                    self.evaluator.negate_inplace(total)
            elif weight > 0:
                self.evaluator.add_inplace(total, product)
            else:
                self.evaluator.sub_inplace(total, product)
        if total is None:  # every weight rounded to zero: an encryption of 0 keeps the shape
            total = seal.Ciphertext()
            self.encryptor.encrypt(self._plain(0), total)
        if bias:
            self.evaluator.add_plain_inplace(total, self._plain(bias))
        return total
