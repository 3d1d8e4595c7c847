"""Length-prefixed CBOR messages over a stream socket: the control channel and the data links share it.

A message is a 4-byte big-endian length and a CBOR map. Sizes above ``max_bytes`` are refused
before anything is allocated, so a peer cannot make a worker buffer without bound.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import cbor2

from serdab.errors import WireError

__all__ = ["MAX_MESSAGE_BYTES", "WireError", "connect", "recv_message", "listen", "send_message", "tune"]

MAX_MESSAGE_BYTES = 256 * 2**20  # a 4x3x1024x1024 float tensor fits; nothing a stage sends is near it
_HEAD = struct.Struct(">I")
SOCKET_BUFFER_BYTES = 256 * 2**10  # measured: 4 MiB buffers made a 3 MiB hop 3x slower than 256 KiB


def _read_exact(sock: socket.socket, size: int) -> bytes | None:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got, socket.MSG_WAITALL)  # one wake-up per message, not per segment
        if n == 0:
            if got == 0:
                return None
            raise WireError(f"connection closed after {got} of {size} bytes")
        got += n
    return bytes(buffer)


def send_message(sock: socket.socket, message: dict[str, Any]) -> int:
    """Head and body in one ``sendmsg`` (no concatenation copy, and the receiver is not woken for a
    4-byte segment alone); the rest, if the socket took only part, with ``sendall``. Returns the
    bytes written."""
    data = cbor2.dumps(message)
    head = _HEAD.pack(len(data))
    sent = sock.sendmsg([head, data])
    if sent < len(head):
        sock.sendall(head[sent:])
        sent = len(head)
    if sent - len(head) < len(data):
        sock.sendall(memoryview(data)[sent - len(head) :])
    return len(head) + len(data)


def recv_message(sock: socket.socket, max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any] | None:
    """The next message, or None when the peer closed cleanly between messages."""
    head = _read_exact(sock, _HEAD.size)
    if head is None:
        return None
    (size,) = _HEAD.unpack(head)
    if size > max_bytes:
        raise WireError(f"message of {size} bytes is over the {max_bytes}-byte limit")
    body = _read_exact(sock, size)
    if body is None:
        raise WireError("connection closed before the message body")
    try:
        message = cbor2.loads(body)
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError) as exc:
        raise WireError(f"not a CBOR message: {exc}") from None
    if not isinstance(message, dict):
        raise WireError("a message must be a CBOR map")
    return message


def tune(sock: socket.socket) -> socket.socket:
    """No Nagle delay, and fixed buffers (the kernel doubles them) sized by measurement: docs/benchmarks.md."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
    return sock


def listen(host: str = "127.0.0.1") -> socket.socket:
    """A listener on a free port; accepted sockets inherit its tuning."""
    return tune(socket.create_server((host, 0)))


def connect(address: tuple[str, int], timeout_s: float = 10.0) -> socket.socket:
    sock = socket.create_connection(address, timeout=timeout_s)
    sock.settimeout(None)
    return tune(sock)
