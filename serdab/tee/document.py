"""Attestation documents in the AWS Nitro format: a COSE_Sign1 over a CBOR map.

Payload fields (as in Nitro's NSM API): module_id, digest ("SHA384"), timestamp (ms since the
epoch), pcrs ({index: 48 bytes}), certificate (DER of the signing certificate), cabundle (DER
certificates from the root down), and the optional public_key, user_data and nonce.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

from serdab.crypto import CoseError, cose_sign1
from serdab.crypto.cose import loads_exact
from serdab.errors import MalformedDocumentError

__all__ = ["AttestationDocument", "decode_payload", "sign_document"]

MAX_FIELD = 1024  # Nitro caps user_data, nonce and public_key at 1 KiB each
MAX_CERTIFICATES = 8  # a Nitro chain is root, zonal, instance, leaf: 4 deep
MAX_CERTIFICATE_BYTES = 4096
MAX_TIMESTAMP_MS = 253_402_300_799_999  # 9999-12-31: datetime's range
MAX_PCR_INDEX = 31


@dataclass(frozen=True)
class AttestationDocument:
    module_id: str
    timestamp_ms: int
    pcrs: dict[int, bytes]
    certificate: bytes
    cabundle: list[bytes]
    public_key: bytes | None = None
    user_data: bytes | None = None
    nonce: bytes | None = None
    digest: str = "SHA384"
    extra: dict = field(default_factory=dict)

    @property
    def time(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.timestamp_ms / 1000, dt.UTC)

    def payload(self) -> bytes:
        return cbor2.dumps(
            {
                "module_id": self.module_id,
                "digest": self.digest,
                "timestamp": self.timestamp_ms,
                "pcrs": dict(self.pcrs),
                "certificate": self.certificate,
                "cabundle": list(self.cabundle),
                "public_key": self.public_key,
                "user_data": self.user_data,
                "nonce": self.nonce,
            }
        )


def sign_document(document: AttestationDocument, key: ec.EllipticCurvePrivateKey) -> bytes:
    for name in ("public_key", "user_data", "nonce"):
        value = getattr(document, name)
        if value is not None and len(value) > MAX_FIELD:
            raise ValueError(f"{name} is {len(value)} bytes; attestation fields are at most {MAX_FIELD}")
    return cose_sign1(document.payload(), key)


def _optional_bytes(payload: dict, name: str) -> bytes | None:
    value = payload.get(name)
    if value is not None and not isinstance(value, bytes):
        raise MalformedDocumentError(f"attestation field {name} must be bytes or null")
    return value


def decode_payload(payload: bytes) -> AttestationDocument:
    """Parse and type-check a Nitro payload; MalformedDocumentError names the bad field."""
    try:
        item = loads_exact(payload, "attestation payload")
    except CoseError as exc:
        raise MalformedDocumentError(str(exc)) from None
    if not isinstance(item, Mapping):
        raise MalformedDocumentError("attestation payload must be a CBOR map")
    item = dict(item)
    expected = {
        "module_id": str,
        "digest": str,
        "timestamp": int,
        "pcrs": Mapping,
        "certificate": bytes,
        "cabundle": list,
    }
    for name, kind in expected.items():
        value = item.get(name)
        if kind is list and isinstance(value, tuple):
            value = list(value)
            item[name] = value
        if not isinstance(value, kind):
            raise MalformedDocumentError(f"attestation field {name} is missing or not {kind.__name__}")
    if item["digest"] != "SHA384":
        raise MalformedDocumentError(f"digest {item['digest']!r} is not SHA384")
    if isinstance(item["timestamp"], bool) or not 0 <= item["timestamp"] <= MAX_TIMESTAMP_MS:
        raise MalformedDocumentError(f"timestamp {item['timestamp']} is not a time in milliseconds since 1970")
    pcrs = item["pcrs"]
    if not pcrs or not all(
        isinstance(k, int)
        and not isinstance(k, bool)
        and 0 <= k <= MAX_PCR_INDEX
        and isinstance(v, bytes)
        and len(v) in (32, 48, 64)
        for k, v in pcrs.items()
    ):
        raise MalformedDocumentError(f"pcrs must map indices 0..{MAX_PCR_INDEX} to 32/48/64-byte values")
    bundle = item["cabundle"]
    if not bundle or len(bundle) >= MAX_CERTIFICATES or not all(isinstance(c, bytes) for c in bundle):
        raise MalformedDocumentError(f"cabundle must list 1..{MAX_CERTIFICATES - 1} DER certificates")
    if any(len(c) > MAX_CERTIFICATE_BYTES for c in [*bundle, item["certificate"]]):
        raise MalformedDocumentError(f"a certificate is over {MAX_CERTIFICATE_BYTES} bytes")
    for name in ("public_key", "user_data", "nonce"):
        value = item.get(name)
        if isinstance(value, bytes) and len(value) > MAX_FIELD:
            raise MalformedDocumentError(f"{name} is {len(value)} bytes; attestation fields are at most {MAX_FIELD}")
    return AttestationDocument(
        module_id=item["module_id"],
        digest=item["digest"],
        timestamp_ms=item["timestamp"],
        pcrs=dict(pcrs),
        certificate=item["certificate"],
        cabundle=list(item["cabundle"]),
        public_key=_optional_bytes(item, "public_key"),
        user_data=_optional_bytes(item, "user_data"),
        nonce=_optional_bytes(item, "nonce"),
    )
