"""What every Serdab HTTP service shares: its socket, its server, its error body and its body reads.

One home, so a fix reaches the replicas, the gateway, the key service and the HE service alike:

- ``listen_http`` makes the listening socket (Nagle off, see there) and ``serve_app`` runs an ASGI
  app on it with uvicorn, TLS or not, with a bounded graceful shutdown, a keep-alive bound, a
  header read timeout and a body read timeout (a slow client cannot hold a connection forever);
- every error answer is the Open Inference Protocol's ``{"error": "..."}`` (``error_response``,
  ``install_errors``: our ``HttpError``, Starlette's 404/405 and FastAPI's validation errors all
  come out that way), and ``error_message`` reads it on the client side;
- ``read_body`` refuses a body (413) as soon as its declared length or the bytes streamed so far
  pass the limit, so an oversized upload never sits whole in memory; the content type is checked
  first (415).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a client that only reads error bodies (error_message) loads no web framework
    from starlette.requests import Request
    from starlette.responses import JSONResponse

__all__ = [
    "HttpError",
    "ServerLimits",
    "error_body",
    "error_message",
    "error_response",
    "install_errors",
    "listen_http",
    "read_body",
    "serve_app",
]


@dataclass(frozen=True)
class ServerLimits:
    """How long a server waits for its clients; the defaults are every Serdab service's."""

    graceful_s: float = 5.0  # on SIGTERM, requests in flight get this long to finish
    keep_alive_s: float = 30.0  # an idle keep-alive connection is closed after this long
    header_timeout_s: float = 30.0  # a request's headers must be complete this long after its first byte
    body_timeout_s: float = 60.0  # each chunk of a request body must arrive within this long of the last
    head_bytes: int = 64 * 1024  # request line and headers together; more is a 431 (nginx: 32 KiB, Triton: 8 KiB)


def listen_http(host: str = "127.0.0.1", port: int = 0, backlog: int = 256) -> socket.socket:
    """A listening socket to hand to uvicorn. Its protocol is named (IPPROTO_TCP) because asyncio
    turns Nagle off only on sockets whose ``proto`` says TCP; with ``proto`` 0 every response waited
    for a delayed ACK (measured: 44 ms per request on loopback, 0.7 ms with this)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(backlog)
    return sock


class HttpError(Exception):
    """An answer other than 2xx, raised anywhere inside a request: ``install_errors`` sends it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_body(message: str) -> bytes:
    """The error body as bytes, for answers that travel inside something else (a sealed response)."""
    return json.dumps({"error": message}).encode()


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The one error body every Serdab service answers with (the Open Inference Protocol's)."""
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=dict(headers) if headers else None)


def install_errors(app: Any, statuses: Mapping[type[Exception], Callable[[Exception], int]] | None = None) -> None:
    """Answer ``HttpError``, Starlette's HTTP errors (404 unknown path, 405) and request validation
    errors (422, first problem named) with ``{"error"}``; ``statuses`` maps further exception types
    (e.g. ``SerdabError``) to the status their instances get."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HttpError)
        return error_response(exc.status, exc.message)

    async def starlette_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return error_response(exc.status_code, str(exc.detail), exc.headers)

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = exc.errors()
        first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        return error_response(422, f"{where}: {first.get('msg', 'invalid')}")

    app.add_exception_handler(HttpError, http_error)
    app.add_exception_handler(HTTPException, starlette_error)
    app.add_exception_handler(RequestValidationError, invalid)
    for kind, status in (statuses or {}).items():

        def handler(_: Request, exc: Exception, status: Callable[[Exception], int] = status) -> JSONResponse:
            return error_response(status(exc), str(exc))

        app.add_exception_handler(kind, handler)


def error_message(response: Any) -> str:
    """What a non-2xx answer says: its ``{"error"}`` (``{"detail"}`` from services that are not ours),
    else its text. ``response`` is an httpx (or requests-like) response."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for field in ("error", "detail"):
            if body.get(field):
                return str(body[field])
    return str(response.text).strip() or f"HTTP {response.status_code}"


async def read_body(request: Request, kinds: tuple[str, ...] | None, limit: int) -> bytes:
    """The whole body, refused early: 415 when ``kinds`` (content types) does not list the request's,
    413 once the declared length or the bytes read so far pass ``limit``. No Content-Type at all reads
    as JSON where JSON is accepted (as Triton and KServe do: the stock Triton client sends none)."""
    if kinds is not None:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not kind and "application/json" in kinds:
            kind = "application/json"
        if kind not in kinds:
            raise HttpError(415, f"content type must be {' or '.join(kinds)}, got {kind or 'none'}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, f"body of {declared} bytes is over the {limit}-byte limit")
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > limit:
            raise HttpError(413, f"body is over the {limit}-byte limit")
    return bytes(chunks)


class _HeadAsGet:
    """ASGI middleware: a HEAD request is answered as its GET (RFC 9110 sec. 9.3.2: every GET resource
    takes HEAD); the server, which saw the HEAD, sends the headers only. FastAPI routes are GET-only."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}
        await self.app(scope, receive, send)


class _BodyTimeout:
    """ASGI middleware: a request body that stalls for ``timeout_s`` ends in 408 (``HttpError``
    raised from ``receive``); once the body is complete, waits (for a disconnect) are not bounded."""

    def __init__(self, app: Any, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        complete = False

        async def timed() -> dict[str, Any]:
            nonlocal complete
            if complete:
                return await receive()
            try:
                async with asyncio.timeout(self.timeout_s):  # no task per receive, unlike wait_for
                    message = await receive()
            except TimeoutError:
                raise HttpError(408, f"the request body stalled for {self.timeout_s:.0f} s") from None
            complete = message.get("type") != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed, send)


class _HeadTooLarge(Exception):
    pass


def _header_timeout_protocol(timeout_s: float, head_bytes: int = 64 * 1024) -> type:
    """uvicorn's httptools protocol with a header read timeout and a bound on the request head, which
    uvicorn lacks: a connection whose request headers are not complete ``timeout_s`` after it opened
    (or after its request began) is closed; a request line and headers over ``head_bytes`` are a 431
    (without it, a megabyte of headers was read, kept and forwarded). Requests llhttp cannot parse get
    ``{"error"}`` JSON like every other Serdab error, not uvicorn's text. Uses the protocol's parser
    callbacks and its 400 writer, the only uvicorn internals Serdab relies on."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None
        _head_seen = 0
        _head_too_large = False

        def _count(self, size: int) -> None:
            self._head_seen += size
            if self._head_seen > head_bytes:
                self._head_too_large = True
                raise _HeadTooLarge  # llhttp stops; uvicorn answers through send_400_response below

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def send_400_response(self, msg: str) -> None:
            status, reason, text = (
                (431, b"Request Header Fields Too Large", f"the request line and headers are over {head_bytes} bytes")
                if self._head_too_large
                else (400, b"Bad Request", "not a valid HTTP/1.1 request")
            )
            body = json.dumps({"error": text}).encode()
            head = [b"HTTP/1.1 %d %s" % (status, reason)]
            head += [name + b": " + value for name, value in self.server_state.default_headers]
            head += [b"content-type: application/json", b"content-length: %d" % len(body), b"connection: close"]
            self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
            if self.transport.can_write_eof():  # a lingering close: the client reads the answer, not a reset
                self.transport.write_eof()
                self._discarding = True
                self.loop.call_later(2.0, self.transport.close)
            else:
                self.transport.close()

        _discarding = False

        def data_received(self, data: bytes) -> None:
            if not self._discarding:  # the rest of a refused request is read and dropped
                super().data_received(data)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(timeout_s, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            self._arm()
            self._head_seen = 0
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


async def serve_app(
    app: Any,
    sock: socket.socket,
    on_started: Callable[[], None] = lambda: None,
    *,
    tls: tuple[bytes, bytes] | None = None,
    stream: tuple[socket.socket, Callable] | None = None,
    should_exit: asyncio.Event | None = None,
    limits: ServerLimits = ServerLimits(),
) -> None:
    """Run ``app`` on ``sock`` until SIGTERM/SIGINT (or ``should_exit`` is set); ``on_started`` runs
    once it accepts. ``tls`` = (certificate PEM, key PEM) are written to a private temp dir only until
    uvicorn has loaded them; ``stream`` = (listening socket, connection handler) serves a raw stream
    beside it in the same event loop (an enclave replica's sealed stream). A coroutine: a process that
    serves only this runs it with ``asyncio.run``; the gateway runs it beside its other tasks."""
    import uvicorn

    from serdab.validation import write_private

    options: dict[str, Any] = {}
    secrets_dir = None
    if tls is not None:
        secrets_dir = Path(tempfile.mkdtemp(prefix="serdab-tls-"))
        (secrets_dir / "cert.pem").write_bytes(tls[0])
        write_private(secrets_dir / "key.pem", tls[1])
        options = {"ssl_certfile": str(secrets_dir / "cert.pem"), "ssl_keyfile": str(secrets_dir / "key.pem")}
    # on SIGTERM uvicorn closes each TLS connection and waits for the peer's close_notify, which an idle
    # keep-alive client (a Ray replica's pool) never sends: without a bound a server takes asyncio's 30 s
    # to stop; requests in flight get limits.graceful_s to finish
    config = uvicorn.Config(
        _BodyTimeout(_HeadAsGet(app), limits.body_timeout_s),
        http=_header_timeout_protocol(limits.header_timeout_s, limits.head_bytes),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_keep_alive=int(limits.keep_alive_s),
        timeout_graceful_shutdown=int(limits.graceful_s),
        **options,
    )
    server = uvicorn.Server(config)
    if stream is not None:
        await asyncio.start_server(stream[1], sock=stream[0])
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    if secrets_dir is not None:  # loaded: leave neither the key nor the directory on disk (a killed server cannot)
        shutil.rmtree(secrets_dir, ignore_errors=True)
    if server.started:
        on_started()
    if should_exit is not None:
        stop = asyncio.create_task(should_exit.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        stop.cancel()
    await task
