"""Keep-alive HTTP/1.1 connections from the gateway to one replica, for the public (L7) path.

The HTTP semantics are h11's (python-hyper's sans-I/O HTTP/1.1, the one httpx and uvicorn's h11
mode are built on): it frames the request, parses the answer, skips interim 1xx answers, knows
that an answer to HEAD and a 204/304 carry no body, decodes chunked bodies and says whether the
connection may be reused. This module only moves bytes and keeps idle connections. h11 was
measured side by side with the hand-written forwarder it replaced (docs/benchmarks.md, gateway
overhead); a general client (httpx) cost ~0.9 ms per request on this host, over the 1 ms target.

A connection that fails before any byte of the answer after being reused is retried once on a
fresh one (the replica closed it while idle); any other failure is ``UpstreamError`` and the
gateway moves the request to another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import h11

__all__ = ["HOP_BY_HOP", "UnforwardableRequest", "UpstreamError", "UpstreamPool", "answer_headers", "end_to_end"]

MAX_HEAD_BYTES = 64 * 1024
_READ_BYTES = 256 * 1024
# framing and connection management belong to each hop (RFC 9110 sec. 7.6.1; the proxy ones and
# "trailers" from RFC 2616's list, still sent), h11 writes its own
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)


class UpstreamError(Exception):
    """The replica refused, reset or closed the connection before a whole answer."""


class UnforwardableRequest(Exception):
    """The client's request cannot be written as a valid HTTP/1.1 request (a 400, not the replica's fault)."""


class _Stale(Exception):
    """Nothing came back on this connection: it was closed before our request was read."""


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def end_to_end(
    headers: Sequence[tuple[bytes, bytes]], also: frozenset[bytes] = frozenset()
) -> list[tuple[bytes, bytes]]:
    """The headers a proxy hands on, either way (lowercase names): no hop-by-hop header, none the
    sender's ``Connection`` names, none in ``also``."""
    named = {token.strip().lower() for name, value in headers if name == b"connection" for token in value.split(b",")}
    dropped = HOP_BY_HOP | named | also
    return [(name, value) for name, value in headers if name not in dropped]


def answer_headers(headers: Sequence[tuple[bytes, bytes]], head_request: bool) -> list[tuple[bytes, bytes]]:
    """The replica's answer headers handed on; Content-Length only for HEAD (the server re-frames every
    body it sends, a HEAD answer keeps the length a GET would get)."""
    return end_to_end(headers, frozenset() if head_request else frozenset({b"content-length"}))


class UpstreamPool:
    def __init__(self, address: tuple[str, int], max_idle: int = 64, connect_timeout_s: float = 2.0) -> None:
        self.address = address
        self.host_header = f"{address[0]}:{address[1]}".encode()
        self.max_idle = max_idle
        self.connect_timeout_s = connect_timeout_s
        self._idle: list[_Conn] = []

    async def _open(self) -> _Conn:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*self.address), self.connect_timeout_s)
        except (TimeoutError, OSError) as exc:
            raise UpstreamError(f"cannot connect to {self.address[0]}:{self.address[1]}: {exc}") from None
        return _Conn(reader, writer)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def request(
        self, method: str, target: str, headers: Sequence[tuple[bytes, bytes]], body: bytes, timeout_s: float
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """(status, headers, body) of the replica's answer; raises UpstreamError, UnforwardableRequest
        or TimeoutError. ``headers`` must hold no hop-by-hop header (the gateway strips them)."""
        sent = [(b"host", self.host_header), (b"content-length", str(len(body)).encode()), *headers]
        reused = bool(self._idle)
        conn = self._idle.pop() if self._idle else await self._open()
        try:
            return await asyncio.wait_for(self._exchange(conn, method, target, sent, body), timeout_s)
        except _Stale:
            conn.close()
            if not reused:
                raise UpstreamError(f"{self.address[0]}:{self.address[1]} closed the connection") from None
            conn = await self._open()  # it timed the idle connection out: once more on a new one
            try:
                return await asyncio.wait_for(self._exchange(conn, method, target, sent, body), timeout_s)
            except _Stale:
                conn.close()
                raise UpstreamError(f"{self.address[0]}:{self.address[1]} closed the connection") from None
        except BaseException:
            conn.close()
            raise

    async def _exchange(
        self, conn: _Conn, method: str, target: str, headers: Sequence[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        http = conn.http
        try:
            data = http.send(h11.Request(method=method, target=target, headers=list(headers)))
        except h11.LocalProtocolError as exc:  # the caller closes this connection
            raise UnforwardableRequest(f"the request cannot be forwarded: {exc}") from None
        data = (data or b"") + (http.send(h11.Data(data=body)) or b"") + (http.send(h11.EndOfMessage()) or b"")
        answer: h11.Response | None = None
        parts: list[bytes] = []
        received = False
        try:
            conn.writer.write(data)
            await conn.writer.drain()
            while True:
                event = http.next_event()
                if event is h11.NEED_DATA:
                    chunk = await conn.reader.read(_READ_BYTES)
                    received = received or bool(chunk)
                    http.receive_data(chunk)  # b"" is the end of the stream
                elif isinstance(event, h11.InformationalResponse):
                    continue  # 100 Continue and other interim answers: the final one follows
                elif isinstance(event, h11.Response):
                    answer = event
                elif isinstance(event, h11.Data):
                    parts.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    raise h11.RemoteProtocolError("the replica closed the connection")
        except (ConnectionError, OSError):
            if not received:
                raise _Stale from None
            raise UpstreamError("the replica closed the connection mid-answer") from None
        except h11.RemoteProtocolError as exc:
            if not received:
                raise _Stale from None
            raise UpstreamError(f"not a valid answer from the replica: {exc}") from None
        assert answer is not None  # EndOfMessage follows a Response
        if http.our_state is h11.DONE and http.their_state is h11.DONE and len(self._idle) < self.max_idle:
            http.start_next_cycle()
            self._idle.append(conn)
        else:
            conn.close()
        return answer.status_code, answer_headers(list(answer.headers), method == "HEAD"), b"".join(parts)
