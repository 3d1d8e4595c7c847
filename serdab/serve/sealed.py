"""Sealed requests: end-to-end encryption from the client to an enclave replica through any proxy.

The gateway keeps secure traffic private with TLS terminated inside the enclave and passed
through at L4. An engine that terminates HTTP itself (Ray Serve's proxy and its object store)
cannot pass TLS through, so there the request is sealed at the application layer instead: the
client seals the whole HTTP request (method, path, content type, body) and a fresh reply key to
the service's public key, the one in the certificate that the key service issues and releases
only to enclaves whose image PCRs match (the same key the TLS path uses); the enclave opens it,
runs the request against its own API in-process, and seals the answer under the reply key,
bound to the request it answers. Whatever sits between sees ciphertext, sizes and timing only.

Why hand-written: what is bound to what is the security property; the primitives (ECDH on
P-384 + HKDF + AES-GCM via ``serdab.crypto``'s envelope) come from ``cryptography``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from serdab.crypto import open_envelope, seal_envelope
from serdab.errors import ServeError

__all__ = ["SEALED_PATHS", "SealedRequest", "open_reply", "open_request", "seal_reply", "seal_request"]

REQUEST_CONTEXT = b"serdab-sealed-request-v1"
REPLY_CONTEXT = b"serdab-sealed-reply-v1|"
# what a sealed request may ask of the enclave: inference and its metadata, never the sealing endpoint itself
SEALED_PATHS = ("/v2/models/", "/predict-secure", "/v2/health/")
REQUEST_HEADERS = ("content-type", "inference-header-content-length")
REPLY_HEADERS = ("content-type", "server-timing", "inference-header-content-length")


@dataclass(frozen=True)
class SealedRequest:
    method: str
    path: str
    headers: dict[str, str]  # content type and OIP's binary-extension header only
    body: bytes
    reply_key: bytes


def seal_request(service_key: ec.EllipticCurvePublicKey, method: str, path: str, body: bytes,
                 headers: dict[str, str]) -> tuple[bytes, bytes]:  # fmt: skip
    """The envelope to POST to ``/v1/sealed`` and the reply key to open its answer with."""
    reply_key = AESGCM.generate_key(bit_length=256)
    kept = {k.lower(): v for k, v in headers.items() if k.lower() in REQUEST_HEADERS}
    inner = cbor2.dumps({"method": method, "path": path, "headers": kept, "body": body, "reply": reply_key})
    return seal_envelope(inner, service_key, context=REQUEST_CONTEXT), reply_key


def open_request(envelope: bytes, service_key: ec.EllipticCurvePrivateKey) -> SealedRequest:
    """Inside the enclave: the request, or ``ServeError`` for anything not sealed to this service."""
    try:
        item = cbor2.loads(open_envelope(envelope, service_key, context=REQUEST_CONTEXT))
        headers = {str(k).lower(): str(v) for k, v in dict(item["headers"]).items()}
        request = SealedRequest(str(item["method"]), str(item["path"]),
                                {k: v for k, v in headers.items() if k in REQUEST_HEADERS}, bytes(item["body"]),
                                bytes(item["reply"]))  # fmt: skip
    except Exception:  # a wrong key, a tampered envelope, or not CBOR: all the same to the sender
        raise ServeError("not a request sealed to this service's key") from None
    if len(request.reply_key) != 32 or request.method not in ("GET", "POST"):
        raise ServeError("a sealed request needs GET or POST and a 256-bit reply key")
    if not request.path.startswith(SEALED_PATHS) or ".." in request.path:
        raise ServeError(f"a sealed request may not ask for {request.path!r}")
    return request


def _binding(envelope: bytes) -> bytes:
    return REPLY_CONTEXT + hashlib.sha384(envelope).digest()


def seal_reply(request_envelope: bytes, reply_key: bytes, status: int, headers: dict[str, str], body: bytes) -> bytes:
    """The enclave's answer: AES-GCM under the client's reply key, bound to the request it answers."""
    nonce = os.urandom(12)
    kept = {k: v for k, v in headers.items() if k.lower() in REPLY_HEADERS}
    plain = cbor2.dumps({"status": status, "headers": kept, "body": body})
    return nonce + AESGCM(reply_key).encrypt(nonce, plain, _binding(request_envelope))


def open_reply(request_envelope: bytes, reply_key: bytes, blob: bytes) -> tuple[int, dict[str, str], bytes]:
    """The client's side: status, headers and body, or ``ServeError`` if anything was changed on the way."""
    try:
        plain = AESGCM(reply_key).decrypt(blob[:12], blob[12:], _binding(request_envelope))
        item = cbor2.loads(plain)
        return int(item["status"]), {str(k): str(v) for k, v in item["headers"].items()}, bytes(item["body"])
    except (InvalidTag, ValueError, KeyError, TypeError, cbor2.CBORDecodeError):
        raise ServeError("the sealed answer does not open with this request's reply key: changed on the way") from None
