"""COSE_Sign1 (RFC 9052) with ES384, the framing of AWS Nitro attestation documents.

A document is ``Tag(18, [protected, unprotected, payload, signature])`` where ``protected`` is
the CBOR encoding of ``{1: -35}`` (alg ES384) and the signature is the raw ``r || s`` (96 bytes)
of ECDSA P-384 / SHA-384 over ``["Signature1", protected, b"", payload]``. Real Nitro documents
come untagged; both forms are accepted.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from serdab.errors import CoseError

__all__ = ["ALG_ES384", "CoseError", "cose_sign1", "cose_verify1", "decode_sign1", "loads_exact"]

ALG_ES384 = -35
_TAG = 18
_COORD = 48  # bytes per P-384 coordinate


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected, b"", payload])


def cose_sign1(payload: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """Sign ``payload`` with ES384; returns the tagged COSE_Sign1 bytes."""
    protected = cbor2.dumps({1: ALG_ES384})
    der = key.sign(_sig_structure(protected, payload), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    signature = r.to_bytes(_COORD, "big") + s.to_bytes(_COORD, "big")
    return cbor2.dumps(cbor2.CBORTag(_TAG, [protected, {}, payload, signature]))


def loads_exact(data: bytes, what: str) -> object:
    """One CBOR item that spans all of ``data``; anything else (trailing bytes included) is CoseError."""
    if not isinstance(data, bytes | bytearray):
        raise CoseError(f"{what} must be bytes")
    stream = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(stream).decode()
    except Exception as exc:  # a parser boundary: cbor2 raises many kinds on hostile input
        raise CoseError(f"{what} is not CBOR: {type(exc).__name__}: {exc}") from None
    if stream.tell() != len(data):
        raise CoseError(f"{what} has {len(data) - stream.tell()} trailing bytes after its CBOR item")
    return item


def decode_sign1(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(protected, payload, signature) of a COSE_Sign1, tagged or not; CoseError if malformed.

    RFC 9052: the unprotected header is a map and shares no label with the protected one.
    """
    item = loads_exact(data, "COSE_Sign1")
    if isinstance(item, cbor2.CBORTag):
        if item.tag != _TAG:
            raise CoseError(f"CBOR tag {item.tag} is not COSE_Sign1 (18)")
        item = item.value
    if not (isinstance(item, list | tuple) and len(item) == 4):
        raise CoseError("COSE_Sign1 must be an array of 4 items")
    protected, unprotected, payload, signature = item
    if not all(isinstance(x, bytes) for x in (protected, payload, signature)):
        raise CoseError("COSE_Sign1 protected header, payload and signature must be byte strings")
    if not isinstance(unprotected, Mapping):
        raise CoseError("COSE_Sign1 unprotected header must be a map")
    header = loads_exact(protected, "protected header") if protected else {}
    if not isinstance(header, Mapping) or header.get(1) != ALG_ES384:
        raise CoseError(f"algorithm {header.get(1) if isinstance(header, Mapping) else '?'} is not ES384 (-35)")
    shared = sorted(map(str, set(header) & set(unprotected)))
    if shared:
        raise CoseError(f"header label(s) {', '.join(shared)} appear in both the protected and unprotected header")
    return protected, payload, signature


def cose_verify1(data: bytes, public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The payload when the ES384 signature verifies under ``public_key``; CoseError otherwise."""
    protected, payload, signature = decode_sign1(data)
    if len(signature) != 2 * _COORD:
        raise CoseError(f"ES384 signature must be {2 * _COORD} bytes, got {len(signature)}")
    der = encode_dss_signature(int.from_bytes(signature[:_COORD], "big"), int.from_bytes(signature[_COORD:], "big"))
    try:
        public_key.verify(der, _sig_structure(protected, payload), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise CoseError("COSE signature does not verify with the document's certificate") from None
    return payload
