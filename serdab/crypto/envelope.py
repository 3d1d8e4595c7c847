"""Encrypt a secret to a P-384 public key (ECIES: ephemeral ECDH, HKDF-SHA384, AES-256-GCM).

Used to release keys to an attested enclave: the recipient key is the ``public_key`` of the
enclave's attestation document, so only the process that asked for the document (and holds the
private half in its memory) can open the envelope. ``context`` is bound as associated data.
"""

from __future__ import annotations

import os

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from serdab.crypto.pki import public_der, public_from_der
from serdab.errors import EnvelopeError

__all__ = ["EnvelopeError", "open_envelope", "seal_envelope"]

_INFO = b"serdab-envelope-v1"


def _key(shared: bytes, salt: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA384(), length=32, salt=salt, info=_INFO).derive(shared)


def seal_envelope(plaintext: bytes, recipient: ec.EllipticCurvePublicKey, context: bytes = b"") -> bytes:
    ephemeral = ec.generate_private_key(ec.SECP384R1())
    epk = public_der(ephemeral.public_key())
    key = _key(ephemeral.exchange(ec.ECDH(), recipient), epk)
    nonce = os.urandom(12)
    return cbor2.dumps({"v": 1, "epk": epk, "nonce": nonce, "ct": AESGCM(key).encrypt(nonce, plaintext, context)})


def open_envelope(envelope: bytes, private_key: ec.EllipticCurvePrivateKey, context: bytes = b"") -> bytes:
    try:
        item = cbor2.loads(envelope)
        epk, nonce, ciphertext = item["epk"], item["nonce"], item["ct"]
        key = _key(private_key.exchange(ec.ECDH(), public_from_der(epk)), epk)
        return AESGCM(key).decrypt(nonce, ciphertext, context)
    except InvalidTag:
        raise EnvelopeError("envelope does not open with this key (wrong recipient or tampered)") from None
    except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError, EOFError) as exc:
        raise EnvelopeError(f"malformed envelope: {exc}") from None
