"""Keep-alive HTTP/1.1 connections from the gateway to one replica, for the public (L7) path.

Why by hand: the gateway's overhead per request is a target (< 1 ms at p50) and a general client
(httpx) cost ~0.9 ms of it on this host; the replicas are our own uvicorn servers, so the gateway
needs only what they speak: a request with Content-Length, a response with Content-Length or
chunked. A connection that fails before any byte of the answer after being reused is retried
once on a fresh one (the replica closed it while idle); any other failure is ``UpstreamError`` and
the gateway moves the request to another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

__all__ = ["UpstreamError", "UpstreamPool"]

MAX_HEAD_BYTES = 64 * 1024


class UpstreamError(Exception):
    """The replica refused, reset or closed the connection before a whole answer."""


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class UpstreamPool:
    def __init__(self, address: tuple[str, int], max_idle: int = 64, connect_timeout_s: float = 2.0) -> None:
        self.address = address
        self.host_header = f"{address[0]}:{address[1]}".encode()
        self.max_idle = max_idle
        self.connect_timeout_s = connect_timeout_s
        self._idle: list[_Conn] = []

    async def _open(self) -> _Conn:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(*self.address, limit=MAX_HEAD_BYTES), self.connect_timeout_s
            )
        except (TimeoutError, OSError) as exc:
            raise UpstreamError(f"cannot connect to {self.address[0]}:{self.address[1]}: {exc}") from None
        return _Conn(reader, writer)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def request(
        self, method: str, target: str, headers: Sequence[tuple[bytes, bytes]], body: bytes, timeout_s: float
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """(status, headers, body) of the replica's answer; raises UpstreamError or asyncio.TimeoutError."""
        head = [
            f"{method} {target} HTTP/1.1".encode(),
            b"host: " + self.host_header,
            b"content-length: " + str(len(body)).encode(),
        ]
        head += [name + b": " + value for name, value in headers]
        data = b"\r\n".join(head) + b"\r\n\r\n" + body
        reused = bool(self._idle)
        conn = self._idle.pop() if self._idle else await self._open()
        no_body = method == "HEAD"
        try:
            return await asyncio.wait_for(self._exchange(conn, data, no_body), timeout_s)
        except _Stale:
            conn.close()
            if not reused:
                raise UpstreamError(f"{self.address[0]}:{self.address[1]} closed the connection") from None
            conn = await self._open()  # it timed the idle connection out: once more on a new one
            try:
                return await asyncio.wait_for(self._exchange(conn, data, no_body), timeout_s)
            except _Stale:
                conn.close()
                raise UpstreamError(f"{self.address[0]}:{self.address[1]} closed the connection") from None
        except BaseException:
            conn.close()
            raise

    async def _exchange(
        self, conn: _Conn, data: bytes, head_request: bool = False
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """One request and its answer. Interim 1xx answers are skipped; a HEAD answer, a 204 and a 304
        have no body whatever their headers say (RFC 9112 sec. 6.3), and a HEAD answer keeps its
        Content-Length (the length a GET would get)."""
        try:
            conn.writer.write(data)
            await conn.writer.drain()
            head = await conn.reader.readuntil(b"\r\n\r\n")
            while head[9:10] == b"1" and head[9:12] != b"101":  # "HTTP/1.1 1xx": an interim answer
                head = await conn.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _Stale from None
            raise UpstreamError("the replica closed the connection mid-answer") from None
        except (ConnectionError, OSError):
            raise _Stale from None
        except asyncio.LimitOverrunError:
            raise UpstreamError("the replica's response head is over 64 KiB") from None
        lines = head[:-4].split(b"\r\n")
        try:
            status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise UpstreamError(f"not an HTTP response: {lines[0][:60]!r}") from None
        headers, length, chunked, keep = [], None, False, True
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                keep = value.lower() != b"close"
            framing = (b"transfer-encoding", b"connection", b"keep-alive") + (
                () if head_request else (b"content-length",)
            )
            if name not in framing:
                headers.append((name, value))
        try:
            if head_request or status in (204, 304):
                body = b""
            elif chunked:
                body = await self._chunks(conn.reader)
            elif length is not None:
                body = await conn.reader.readexactly(length)
            else:
                body, keep = await conn.reader.read(), False
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            raise UpstreamError("the replica closed the connection mid-answer") from None
        if keep and len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn.close()
        return status, headers, body

    @staticmethod
    async def _chunks(reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)


class _Stale(Exception):
    """Nothing came back on this connection: it was closed before our request was read."""
