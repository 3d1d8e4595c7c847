"""Sealed requests (serdab.serve.sealed): only the service key opens a session, requests are bound to their
session and answers to their request, and a session costs one key agreement per replica."""

from __future__ import annotations

import pytest

from serdab.crypto import new_key
from serdab.errors import ServeError
from serdab.serve.sealed import SealedSession, SessionKeys

INFER = "/v2/models/m/infer"


def test_a_sealed_request_opens_only_with_the_service_key_and_its_answer_only_for_its_request() -> None:
    service, other = new_key(), new_key()
    session = SealedSession(service.public_key())
    request = session.seal("POST", INFER, b"tensor bytes", {"content-type": "application/octet-stream",
                                                             "x-other": "dropped"})  # fmt: skip
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
    for method, path in (("POST", "/v1/sealed"), ("POST", "/metrics"), ("POST", "/v2/models/../../v1/sealed"),
                         ("DELETE", INFER)):  # fmt: skip
        with pytest.raises(ServeError, match="may not ask for|needs GET or POST"):
            SessionKeys(service).open(session.seal(method, path, b"", {}))
