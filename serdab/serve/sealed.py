"""Sealed requests: end-to-end encryption from the client to an enclave replica through any proxy.

The gateway keeps secure traffic private with TLS terminated inside the enclave and passed
through at L4. An engine that terminates HTTP itself (Ray Serve's proxy and its object store)
cannot pass TLS through, so there the request is sealed at the application layer instead.

A client opens a *session*: a fresh 256-bit key sealed once (ECDH on P-384, HKDF, AES-GCM) to
the service's public key, the one in the certificate that the key service issues and releases
only to enclaves whose image PCRs match (the same key the TLS path uses). Every request then
carries that session envelope and the whole HTTP request (method, path, content type, body)
under AES-GCM with the session key, bound to the session; the enclave opens the envelope once
and keeps the key (any replica can: they all hold the service key), runs the request against
its own API in-process and seals the answer under the session key, bound to the request it
answers. One key agreement per session instead of one per request is what the gateway's TLS
session does too; whatever sits between sees ciphertext, sizes and timing only.

What it does not stop, as TLS would: an on-path party can replay a sealed request (the enclave
runs the inference again and answers in ciphertext only the client can open) and see sizes and
timing. A request cannot be altered, redirected to another session, or answered with another
request's answer.

Why hand-written: what is bound to what is the security property; the primitives (ECDH +
HKDF + AES-GCM via ``serdab.crypto``'s envelope, AES-GCM) come from ``cryptography``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from serdab.crypto import open_envelope, seal_envelope
from serdab.errors import ServeError
from serdab.web import error_body

__all__ = [
    "SEALED_PATHS",
    "OpenedRequest",
    "SealedSession",
    "SessionKeys",
    "read_frame",
    "write_frame",
    "MAX_FRAME_BYTES",
]

SESSION_CONTEXT = b"serdab-sealed-session-v2"
REQUEST_CONTEXT = b"serdab-sealed-request-v2|"
REPLY_CONTEXT = b"serdab-sealed-reply-v2|"
# what a sealed request may ask of the enclave: inference and its metadata, never the sealing endpoint itself
SEALED_PATHS = ("/v2/models/", "/predict-secure", "/v2/health/")
REQUEST_HEADERS = ("content-type", "inference-header-content-length")
REPLY_HEADERS = ("content-type", "server-timing", "inference-header-content-length")
# random 96-bit nonces under one key stay far inside AES-GCM's bound (2**32 messages) well below this
REQUESTS_PER_SESSION = 2**24


def _digest(data: bytes) -> bytes:
    return hashlib.sha384(data).digest()


@dataclass(frozen=True)
class OpenedRequest:
    """A sealed request as the enclave opened it, with what it needs to seal the answer."""

    method: str
    path: str
    headers: dict[str, str]  # content type and OIP's binary-extension header only
    body: bytes
    session: AESGCM
    binding: bytes  # the reply's associated data: this very request

    def seal_reply(self, status: int, headers: dict[str, str], body: bytes) -> bytes:
        """The answer under the session key, bound to the request it answers."""
        nonce = os.urandom(12)
        kept = {k: v for k, v in headers.items() if k.lower() in REPLY_HEADERS}
        return nonce + self.session.encrypt(
            nonce, cbor2.dumps({"status": status, "headers": kept, "body": body}), self.binding
        )


class SealedSession:
    """The client's side: one key agreement with the service, then AES-GCM per request."""

    def __init__(self, service_key: ec.EllipticCurvePublicKey) -> None:
        key = AESGCM.generate_key(bit_length=256)
        self._aead = AESGCM(key)
        self.envelope = seal_envelope(cbor2.dumps({"session": key}), service_key, context=SESSION_CONTEXT)
        self._context = REQUEST_CONTEXT + _digest(self.envelope)
        self.requests = 0

    @property
    def spent(self) -> bool:
        return self.requests >= REQUESTS_PER_SESSION

    def seal(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        """The request to POST to ``/v1/sealed``; keep it to open the answer."""
        self.requests += 1
        kept = {k.lower(): v for k, v in headers.items() if k.lower() in REQUEST_HEADERS}
        nonce = os.urandom(12)
        inner = cbor2.dumps({"method": method, "path": path, "headers": kept, "body": body})
        return cbor2.dumps(
            {"v": 2, "session": self.envelope, "nonce": nonce, "ct": self._aead.encrypt(nonce, inner, self._context)}
        )

    def open(self, request: bytes, blob: bytes) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body of the answer to ``request``, or ``ServeError`` if anything was changed."""
        try:
            plain = self._aead.decrypt(blob[:12], blob[12:], REPLY_CONTEXT + _digest(request))
            item = cbor2.loads(plain)
            return int(item["status"]), {str(k): str(v) for k, v in item["headers"].items()}, bytes(item["body"])
        except (InvalidTag, ValueError, KeyError, TypeError, AttributeError, cbor2.CBORDecodeError):
            raise ServeError(
                "the sealed answer does not open with this request's session: changed on the way"
            ) from None


class SessionKeys:
    """The enclave's side: opens requests, keeping the sessions it has opened (bounded, least recently used
    first out), so a session costs one key agreement per replica rather than one per request."""

    def __init__(self, service_key: ec.EllipticCurvePrivateKey, capacity: int = 4096) -> None:
        self._service_key = service_key
        self._capacity = capacity
        self._sessions: OrderedDict[bytes, tuple[AESGCM, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def _session(self, envelope: bytes) -> tuple[AESGCM, bytes]:
        digest = _digest(envelope)
        found = self._sessions.get(digest)
        if found is not None:
            self._sessions.move_to_end(digest)
            return found
        key = bytes(cbor2.loads(open_envelope(envelope, self._service_key, context=SESSION_CONTEXT))["session"])
        if len(key) != 32:
            raise ValueError("a session needs a 256-bit key")
        opened = (AESGCM(key), REQUEST_CONTEXT + digest)
        self._sessions[digest] = opened
        if len(self._sessions) > self._capacity:
            self._sessions.popitem(last=False)
        return opened

    def open(self, request: bytes) -> OpenedRequest:
        """The request, or ``ServeError`` for anything not sealed to this service or not allowed through it."""
        try:
            item = cbor2.loads(request)
            aead, context = self._session(bytes(item["session"]))
            inner = cbor2.loads(aead.decrypt(bytes(item["nonce"]), bytes(item["ct"]), context))
            headers = {str(k).lower(): str(v) for k, v in dict(inner["headers"]).items()}
            opened = OpenedRequest(
                str(inner["method"]),
                str(inner["path"]),
                {k: v for k, v in headers.items() if k in REQUEST_HEADERS},
                bytes(inner["body"]),
                aead,
                REPLY_CONTEXT + _digest(request),
            )
        except Exception:  # a wrong key, a tampered request, or not CBOR: all the same to the sender
            raise ServeError("not a request sealed to this service's key") from None
        if opened.method not in ("GET", "POST"):
            raise ServeError("a sealed request needs GET or POST")
        if not opened.path.startswith(SEALED_PATHS) or ".." in opened.path:
            raise ServeError(f"a sealed request may not ask for {opened.path!r}")
        return opened


# --- the sealed stream: a replica's host-side proxy hands sealed requests to its enclave as they are --------------
# A frame is a 4-byte big-endian length and the bytes. No TLS on it: what crosses it is sealed end to end already.
_HEAD = struct.Struct(">I")
MAX_FRAME_BYTES = 80 * 2**20  # a request body at the replica's 64 MiB limit, sealed, fits


async def read_frame(reader: asyncio.StreamReader, max_bytes: int = MAX_FRAME_BYTES) -> bytes | None:
    """The next frame, None when the peer closed between frames; ``ValueError`` for one over ``max_bytes``."""
    try:
        head = await reader.readexactly(_HEAD.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ValueError("the stream closed inside a frame header") from None
        return None
    (size,) = _HEAD.unpack(head)
    if size > max_bytes:
        raise ValueError(f"a frame of {size} bytes is over the {max_bytes}-byte limit")
    return await reader.readexactly(size)


def write_frame(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(_HEAD.pack(len(data)) + data)


class SealedStream:
    """The host side: connections to an enclave's sealed stream, one per request in flight, kept for the
    next, so a sealed request crosses to the enclave as it came, with no HTTP or TLS to redo."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def call(self, request: bytes) -> tuple[int, bytes]:
        """The enclave's status and body; 502 when the enclave is not there to answer (the client retries)."""
        try:
            reader, writer = self.idle.pop() if self.idle else await asyncio.open_connection("127.0.0.1", self.port)
        except OSError as exc:
            return 502, error_body(f"enclave unreachable: {exc}")
        try:
            write_frame(writer, request)
            await writer.drain()
            frame = await read_frame(reader)
            if frame is None:
                raise ConnectionError("the enclave closed its sealed stream")
            answer = cbor2.loads(frame)
        except (OSError, ValueError, asyncio.IncompleteReadError, cbor2.CBORDecodeError) as exc:
            writer.close()
            return 502, error_body(f"enclave stream broken: {exc}")
        self.idle.append((reader, writer))
        return int(answer["status"]), bytes(answer["body"])
