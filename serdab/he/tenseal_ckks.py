"""CKKS on Microsoft SEAL through ``tenseal.sealapi``.

TenSEAL's high-level vectors hide the scale and the level, and their conv2d_im2col/mm were
measured about 10x slower on the seed 004 nets (issue 5); the packed kernels need rotations by chosen steps,
plaintexts encoded at an exact level and scale, and one rescale per layer. So this backend
talks to SEAL's own objects. SEAL serialises to file paths only: bytes go through a
temporary file in memory-backed /dev/shm where there is one (zstd-compressed, SEAL's default).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from typing import Any

import numpy as np
import tenseal.sealapi as seal

from serdab.he.backend import HeBackend, HeError, register
from serdab.he.params import CkksParams

__all__ = ["TensealCkks", "galois_element"]

_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def galois_element(step: int, n: int) -> int:
    """SEAL's Galois element for a left rotation by ``step`` slots (negative: right)."""
    return pow(3, step % (n // 2), 2 * n)


def _save(obj: Any) -> bytes:
    with tempfile.NamedTemporaryFile(dir=_TMP, prefix="serdab-he-") as handle:
        obj.save(handle.name)
        return handle.read()


def _load(obj: Any, context: Any, data: bytes) -> Any:
    with tempfile.NamedTemporaryFile(dir=_TMP, prefix="serdab-he-") as handle:
        handle.write(data)
        handle.flush()
        try:
            obj.load(context, handle.name)
        except (ValueError, RuntimeError, TypeError) as error:
            raise HeError(f"{type(obj).__name__} does not load under these parameters: {error}") from None
    return obj


@register
class TensealCkks(HeBackend):
    name = "tenseal-ckks"

    def __init__(self, params: CkksParams) -> None:
        super().__init__(params)
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(params.poly_modulus_degree)
        parms.set_coeff_modulus(seal.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_mod_bit_sizes)))
        self.context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
        if not self.context.parameters_set():
            raise HeError(f"SEAL refuses {params.describe()}: {self.context.parameters_error_message()}")
        self._parms_ids: dict[int, Any] = {}
        self._primes: dict[int, int] = {}
        data = self.context.first_context_data()
        while data is not None:
            self._parms_ids[data.chain_index()] = data.parms_id()
            self._primes[data.chain_index()] = data.parms().coeff_modulus()[-1].value()
            data = data.next_context_data()
        self.encoder = seal.CKKSEncoder(self.context)
        self.evaluator = seal.Evaluator(self.context)
        self._secret: Any = None
        self._public: Any = None
        self._relin: Any = None
        self._galois: Any = None
        self._steps: set[int] = set()

    # keys
    def generate_keys(self, rotation_steps: Iterable[int]) -> None:
        keygen = seal.KeyGenerator(self.context)
        self._secret = keygen.secret_key()
        self._public = seal.PublicKey()
        keygen.create_public_key(self._public)
        self._relin = seal.RelinKeys()
        keygen.create_relin_keys(self._relin)
        self._steps = {s % self.slots for s in rotation_steps} - {0}
        self._galois = seal.GaloisKeys()
        if self._steps:
            n = self.params.poly_modulus_degree
            keygen.create_galois_keys(sorted(galois_element(s, n) for s in self._steps), self._galois)

    @property
    def has_secret(self) -> bool:
        return self._secret is not None

    def export_public(self) -> dict[str, bytes]:
        if self._public is None:
            raise HeError("no keys yet: generate_keys first")
        return {
            "public_key": _save(self._public),
            "relin_keys": _save(self._relin),
            "galois_keys": _save(self._galois) if self._steps else b"",
        }

    def load_public(self, keys: dict[str, bytes]) -> None:
        missing = {"public_key", "relin_keys", "galois_keys"} - set(keys)
        if missing:
            raise HeError(f"key upload lacks {', '.join(sorted(missing))}")
        self._public = _load(seal.PublicKey(), self.context, keys["public_key"])
        self._relin = _load(seal.RelinKeys(), self.context, keys["relin_keys"])
        self._galois = seal.GaloisKeys()
        self._steps = set()
        if keys["galois_keys"]:
            _load(self._galois, self.context, keys["galois_keys"])
            n = self.params.poly_modulus_degree
            self._steps = {s for s in range(1, self.slots) if self._galois.has_key(galois_element(s, n))}

    def rotation_steps(self) -> set[int]:
        return set(self._steps)

    # data
    def encrypt(self, values: np.ndarray) -> Any:
        if self._public is None:
            raise HeError("no public key: generate or load keys first")
        plain = seal.Plaintext()
        self.encoder.encode(self._pad(values).tolist(), float(2**self.params.scale_bits), plain)
        ct = seal.Ciphertext()
        encryptor = seal.Encryptor(self.context, self._public)
        encryptor.encrypt(plain, ct)
        return ct

    def decrypt(self, ct: Any) -> np.ndarray:
        if self._secret is None:
            raise HeError("this side holds no secret key and cannot decrypt")
        plain = seal.Plaintext()
        seal.Decryptor(self.context, self._secret).decrypt(ct, plain)
        return np.asarray(self.encoder.decode_double(plain))

    def to_bytes(self, ct: Any) -> bytes:
        return _save(ct)

    def from_bytes(self, data: bytes, level: int | None = None) -> Any:
        if not data:
            raise HeError("empty ciphertext")
        ct = _load(seal.Ciphertext(), self.context, data)
        if ct.size() != 2:
            raise HeError(f"ciphertext has {ct.size()} parts; expected a fresh or relinearised one (2)")
        if level is not None and self.level(ct) != level:
            raise HeError(f"ciphertext is at level {self.level(ct)}; this step needs level {level}")
        return ct

    # evaluation
    def level(self, ct: Any) -> int:
        return self.context.get_context_data(ct.parms_id()).chain_index()

    def _pad(self, values: np.ndarray | float) -> np.ndarray:
        array = np.asarray(values, dtype=np.float64).ravel()
        if array.size > self.slots:
            raise HeError(f"{array.size} values do not fit {self.slots} slots")
        if array.size == self.slots:
            return array
        return np.concatenate([array, np.zeros(self.slots - array.size)])

    def encode_weights(self, values: np.ndarray | float, level: int, scale_level: int | None = None) -> Any:
        plain = seal.Plaintext()
        scale = float(self._primes[level if scale_level is None else scale_level])
        if np.ndim(values) == 0:
            self.encoder.encode(float(values), self._parms_ids[level], scale, plain)
        else:
            self.encoder.encode(self._pad(values).tolist(), self._parms_ids[level], scale, plain)
        return plain

    def encode_like(self, values: np.ndarray | float, ct: Any) -> Any:
        plain = seal.Plaintext()
        if np.ndim(values) == 0:
            self.encoder.encode(float(values), ct.parms_id(), ct.scale, plain)
        else:
            self.encoder.encode(self._pad(values).tolist(), ct.parms_id(), ct.scale, plain)
        return plain

    def multiply_plain(self, ct: Any, pt: Any) -> Any:
        out = seal.Ciphertext()
        self.evaluator.multiply_plain(ct, pt, out)
        return out

    def add(self, a: Any, b: Any) -> Any:
        out = seal.Ciphertext()
        self.evaluator.add(a, b, out)
        return out

    def add_inplace(self, acc: Any, ct: Any) -> None:
        self.evaluator.add_inplace(acc, ct)

    def add_plain_inplace(self, ct: Any, pt: Any) -> None:
        self.evaluator.add_plain_inplace(ct, pt)

    def rotate(self, ct: Any, step: int) -> Any:
        step %= self.slots
        if step == 0:
            return ct  # callers never modify a rotation's result in place
        if step not in self._steps:
            raise HeError(f"no Galois key for a rotation by {step}: the client must generate it")
        out = seal.Ciphertext()
        self.evaluator.rotate_vector(ct, step, self._galois, out)
        return out

    def rescale_inplace(self, ct: Any) -> None:
        self.evaluator.rescale_to_next_inplace(ct)

    def square(self, ct: Any, relinearize: bool = True) -> Any:
        out = seal.Ciphertext()
        self.evaluator.square(ct, out)
        if relinearize:
            self.evaluator.relinearize_inplace(out, self._relin)
            self.evaluator.rescale_to_next_inplace(out)
        return out

    def parts(self, ct: Any) -> int:
        return ct.size()

    def relinearize_inplace(self, ct: Any) -> None:
        if ct.size() > 2:
            self.evaluator.relinearize_inplace(ct, self._relin)
