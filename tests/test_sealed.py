"""Sealed requests (serdab.serve.sealed): only the service key opens a session, requests are bound to their
session and answers to their request, and a session costs one key agreement per replica."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response

from serdab.crypto import new_key
from serdab.errors import ServeError
from serdab.serve.sealed import SealedSession, SessionKeys

INFER = "/v2/models/m/infer"


def test_a_sealed_request_opens_only_with_the_service_key_and_its_answer_only_for_its_request() -> None:
    service, other = new_key(), new_key()
    session = SealedSession(service.public_key())
    request = session.seal(
        "POST", INFER, b"tensor bytes", {"content-type": "application/octet-stream", "x-other": "dropped"}
    )
    assert b"tensor bytes" not in request and INFER.encode() not in request
    opened = SessionKeys(service).open(request)
    assert (opened.method, opened.path, opened.body) == ("POST", INFER, b"tensor bytes")
    assert opened.headers == {"content-type": "application/octet-stream"}
    with pytest.raises(ServeError, match="not a request sealed to this service"):
        SessionKeys(other).open(request)
    flipped = bytearray(request)
    flipped[-5] ^= 1
    with pytest.raises(ServeError, match="not a request sealed"):
        SessionKeys(service).open(bytes(flipped))

    answer = opened.seal_reply(200, {"content-type": "application/json", "set-cookie": "x"}, b"{}")
    assert b"{}" not in answer[12:]
    assert session.open(request, answer) == (200, {"content-type": "application/json"}, b"{}")
    another = session.seal("POST", INFER, b"other", {})
    with pytest.raises(ServeError, match="changed on the way"):
        session.open(another, answer)  # an answer cannot be passed off as another request's
    with pytest.raises(ServeError, match="changed on the way"):
        SealedSession(service.public_key()).open(request, answer)  # nor opened by another session


def test_a_request_cannot_be_moved_to_another_session_and_sessions_are_opened_once() -> None:
    import cbor2

    service = new_key()
    keys = SessionKeys(service, capacity=2)
    first, second, third = (SealedSession(service.public_key()) for _ in range(3))
    request = cbor2.loads(first.seal("POST", INFER, b"x", {}))
    keys.open(second.seal("POST", INFER, b"y", {}))
    moved = cbor2.dumps({**request, "session": second.envelope})  # first's ciphertext under second's session
    with pytest.raises(ServeError, match="not a request sealed"):
        keys.open(moved)
    for _ in range(3):
        keys.open(first.seal("POST", INFER, b"x", {}))
    assert len(keys) == 2  # first and second, each opened once
    keys.open(third.seal("POST", INFER, b"z", {}))
    assert len(keys) == 2  # bounded: the least recently used session went, and opens again when it comes back
    assert keys.open(second.seal("POST", INFER, b"y", {})).body == b"y"


def test_a_sealed_request_may_only_ask_for_inference() -> None:
    service = new_key()
    session = SealedSession(service.public_key())
    for method, path in (
        ("POST", "/v1/sealed"),
        ("POST", "/metrics"),
        ("POST", "/v2/models/../../v1/sealed"),
        ("DELETE", INFER),
    ):
        with pytest.raises(ServeError, match="may not ask for|needs GET or POST"):
            SessionKeys(service).open(session.seal(method, path, b"", {}))


def test_the_sealed_stream_answers_sealed_requests_and_refuses_the_rest() -> None:
    """The enclave's sealed stream (what a Ray Serve replica forwards on): a sealed request is answered
    through the app in-process, junk gets the same 400 as at /v1/sealed, an oversized frame ends the
    connection, and the host side reconnects and answers 502 when the enclave is gone."""
    import asyncio
    import json
    import struct

    from serdab.serve.replica import SealedHandler
    from serdab.serve.sealed import SealedStream
    from serdab.web import listen_http

    service = new_key()
    app = FastAPI()

    @app.post(INFER)
    async def echo(request: Request) -> Response:
        return Response(b"seen:" + await request.body(), media_type="application/octet-stream")

    handler = SealedHandler(app, service)
    session = SealedSession(service.public_key())

    async def scenario() -> None:
        sock = listen_http()
        server = await asyncio.start_server(handler.serve_stream, sock=sock)
        stream = SealedStream(sock.getsockname()[1])
        request = session.seal("POST", INFER, b"pixels", {"content-type": "application/octet-stream"})
        for _ in range(2):  # the second reuses the kept connection
            status, body = await stream.call(request)
            assert status == 200 and b"pixels" not in body
            assert session.open(request, body)[::2] == (200, b"seen:pixels")
        assert len(stream.idle) == 1
        status, body = await stream.call(b"junk")
        assert status == 400 and "not a request sealed" in json.loads(body)["error"]
        reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        writer.write(struct.pack(">I", 2**31))  # a frame over the limit: refused before anything is read
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        server.close()
        await server.wait_closed()
        for idle in stream.idle:
            idle[1].close()
        stream.idle.clear()
        status, body = await stream.call(request)
        assert status == 502 and "enclave unreachable" in json.loads(body)["error"]

    asyncio.run(scenario())
