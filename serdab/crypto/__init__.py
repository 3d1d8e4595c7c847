"""Cryptographic building blocks (a leaf: imports nothing else from Serdab).

COSE_Sign1 with ES384 for attestation documents, an X.509 PKI on P-384 for the simulated
roots, hosts and services, and an envelope (ECDH + HKDF + AES-GCM) that encrypts a secret to
the public key found in an attestation document. All primitives come from ``cryptography``;
only the COSE framing (a few CBOR arrays) is written here.
"""

from serdab.crypto.cose import CoseError, cose_sign1, cose_verify1, decode_sign1
from serdab.crypto.envelope import EnvelopeError, open_envelope, seal_envelope
from serdab.crypto.pki import (
    cert_der,
    cert_from_der,
    cert_from_pem,
    cert_pem,
    issue_certificate,
    key_from_pem,
    key_pem,
    new_key,
    public_der,
    public_from_der,
    self_signed_ca,
    self_signed_server,
    sha384,
)

__all__ = [
    "CoseError",
    "EnvelopeError",
    "cert_der",
    "cert_from_der",
    "cert_from_pem",
    "cert_pem",
    "cose_sign1",
    "cose_verify1",
    "decode_sign1",
    "issue_certificate",
    "key_from_pem",
    "key_pem",
    "new_key",
    "open_envelope",
    "public_der",
    "public_from_der",
    "seal_envelope",
    "self_signed_ca",
    "self_signed_server",
    "sha384",
]
