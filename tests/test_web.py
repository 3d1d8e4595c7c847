"""serdab.web: the one way every service runs, answers errors and reads bodies, tested over real sockets
with curl and raw HTTP (clients we did not write)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel

from serdab.errors import ServeError
from serdab.web import HttpError, ServerLimits, error_message, install_errors, listen_http, read_body, serve_app

LIMITS = ServerLimits(graceful_s=1, keep_alive_s=5, header_timeout_s=1.0, body_timeout_s=1.0)


class Item(BaseModel):
    count: int


def _app() -> FastAPI:
    app = FastAPI()
    install_errors(app, {ServeError: lambda _: 409})

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        body = await read_body(request, ("application/octet-stream",), 1024)
        return {"bytes": len(body)}

    @app.post("/item")
    def item(value: Item) -> dict[str, int]:
        return {"count": value.count}

    @app.get("/refuse")
    def refuse() -> None:
        raise ServeError("refused on purpose")

    return app


@pytest.fixture
def server() -> Iterator[str]:
    sock = listen_http()
    port = sock.getsockname()[1]
    started = threading.Event()
    box: dict = {}

    async def main() -> None:
        box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.Event()
        await serve_app(_app(), sock, started.set, should_exit=box["stop"], limits=LIMITS)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10)
    yield f"http://127.0.0.1:{port}"
    box["loop"].call_soon_threadsafe(box["stop"].set)
    thread.join(10)
    assert not thread.is_alive()


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "fragment"),
    [
        ("GET", "/nowhere", {}, 404, "Not Found"),
        ("GET", "/echo", {}, 405, "Method Not Allowed"),
        ("POST", "/echo", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "content type"),
        (
            "POST",
            "/echo",
            {"content": b"x" * 2000, "headers": {"content-type": "application/octet-stream"}},
            413,
            "1024",
        ),
        ("POST", "/item", {"json": {"count": "many"}}, 422, "body.count"),
        ("GET", "/refuse", {}, 409, "refused on purpose"),
    ],
)
def test_every_error_is_one_json_shape(
    server: str, method: str, path: str, kwargs: dict, status: int, fragment: str
) -> None:
    reply = httpx.request(method, server + path, **kwargs)
    assert reply.status_code == status
    assert list(reply.json()) == ["error"] and fragment in reply.json()["error"]
    assert fragment in error_message(reply)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_gets_the_error_body_and_a_body_under_the_limit(server: str) -> None:
    ok = subprocess.run(
        ["curl", "-s", "-H", "content-type: application/octet-stream", "--data-binary", "abc", server + "/echo"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    assert json.loads(ok.stdout) == {"bytes": 3}
    missing = subprocess.run(["curl", "-s", server + "/none"], capture_output=True, text=True, timeout=20, check=True)
    assert json.loads(missing.stdout) == {"error": "Not Found"}


def test_a_client_that_never_finishes_its_headers_is_cut_off(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n")  # no blank line: headers never complete
        started = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server
    assert time.monotonic() - started < LIMITS.header_timeout_s + 3


def test_a_stalled_body_ends_in_408(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\ncontent-type: application/octet-stream\r\ncontent-length: 100\r\n\r\nab"
        )
        raw = b""
        while b'"}' not in raw and (chunk := sock.recv(4096)):
            raw += chunk
    answer = raw.decode()
    assert answer.startswith("HTTP/1.1 408") and '"error"' in answer and "stalled" in answer


def test_error_message_reads_foreign_and_plain_bodies() -> None:
    assert error_message(httpx.Response(400, json={"detail": "theirs"})) == "theirs"
    assert error_message(httpx.Response(502, text="bad gateway")) == "bad gateway"
    assert error_message(httpx.Response(500)) == "HTTP 500"


def test_http_error_carries_status_and_message() -> None:
    error = HttpError(418, "teapot")
    assert (error.status, error.message, str(error)) == (418, "teapot", "teapot")


def _raw(server: str, data: bytes) -> bytes:
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)  # the server reads a refused request to its end: no reset loses its answer
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    return raw


@pytest.mark.parametrize("size", [60 * 1024, 1024 * 1024])
def test_request_heads_are_bounded(server: str, size: int) -> None:
    headers = b"".join(b"x-h%d: %s\r\n" % (i, b"a" * 1000) for i in range(size // 1000))
    raw = _raw(server, b"GET /refuse HTTP/1.1\r\nHost: x\r\n" + headers + b"connection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    if size <= LIMITS.head_bytes:
        assert head.startswith(b"HTTP/1.1 409")  # read whole and served (the route refuses on purpose)
    else:
        assert head.startswith(b"HTTP/1.1 431") and b"application/json" in head
        assert "65536 bytes" in json.loads(body)["error"]


def test_a_request_that_is_not_http_gets_a_json_400(server: str) -> None:
    raw = _raw(server, b"HELLO THERE\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and json.loads(body) == {"error": "not a valid HTTP/1.1 request"}
