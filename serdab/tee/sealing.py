"""Sealing: encrypt data so that only the same enclave (or signer) on the same host can read it.

Key = HKDF-SHA384(the host's random sealing secret, info = policy + identity), where identity is
the enclave's measurement (PCR0, PCR1, PCR2, PCR16) or its signer (PCR8); AES-256-GCM with a
random nonce and the header as associated data. Never a constant key: without the host secret
(0600, host side only) nothing opens.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from serdab.errors import SealingError
from serdab.tee.image import PCR_APP, PCR_IMAGE, PCR_MODELS, PCR_RUNTIME, PCR_SIGNER

__all__ = ["SEAL_POLICIES", "seal", "sealing_identity", "unseal"]

SEAL_POLICIES = ("measurement", "signer")
_MAGIC = b"SDSEAL1"


def sealing_identity(pcrs: dict[int, bytes], policy: str) -> bytes:
    if policy == "measurement":
        return b"".join(pcrs[i] for i in (PCR_IMAGE, PCR_RUNTIME, PCR_APP, PCR_MODELS))
    if policy == "signer":
        if pcrs[PCR_SIGNER] == bytes(48):
            raise SealingError("signer sealing needs a signed image (PCR8 is zero)")
        return pcrs[PCR_SIGNER]
    raise SealingError(f"unknown sealing policy {policy!r}; use one of {', '.join(SEAL_POLICIES)}")


def _key(secret: bytes, policy: str, identity: bytes) -> bytes:
    info = b"serdab-seal-v1|" + policy.encode() + b"|" + identity
    return HKDF(algorithm=hashes.SHA384(), length=32, salt=None, info=info).derive(secret)


def seal(secret: bytes, pcrs: dict[int, bytes], data: bytes, policy: str = "measurement") -> bytes:
    identity = sealing_identity(pcrs, policy)
    header = _MAGIC + bytes([SEAL_POLICIES.index(policy)]) + hashlib.sha384(identity).digest()[:16]
    nonce = os.urandom(12)
    return header + nonce + AESGCM(_key(secret, policy, identity)).encrypt(nonce, data, header)


def unseal(secret: bytes, pcrs: dict[int, bytes], blob: bytes) -> bytes:
    head = len(_MAGIC) + 1 + 16
    if len(blob) < head + 12 + 16 or not blob.startswith(_MAGIC) or blob[len(_MAGIC)] >= len(SEAL_POLICIES):
        raise SealingError("not a sealed blob")
    policy = SEAL_POLICIES[blob[len(_MAGIC)]]
    identity = sealing_identity(pcrs, policy)
    if hashlib.sha384(identity).digest()[:16] != blob[len(_MAGIC) + 1 : head]:
        raise SealingError(f"sealed for another enclave ({policy} differs)")
    header, nonce, ciphertext = blob[:head], blob[head : head + 12], blob[head + 12 :]
    try:
        return AESGCM(_key(secret, policy, identity)).decrypt(nonce, ciphertext, header)
    except InvalidTag:
        raise SealingError("sealed blob was tampered with (or sealed on another host)") from None
