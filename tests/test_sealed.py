"""Sealed requests (serdab.serve.sealed): only the service key opens them, answers are bound to their request."""

from __future__ import annotations

import pytest

from serdab.crypto import new_key
from serdab.errors import ServeError
from serdab.serve.sealed import open_reply, open_request, seal_reply, seal_request


def test_a_sealed_request_opens_only_with_the_service_key_and_its_answer_only_with_its_reply_key() -> None:
    service, other = new_key(), new_key()
    envelope, reply_key = seal_request(service.public_key(), "POST", "/v2/models/m/infer", b"tensor bytes",
                                       {"content-type": "application/octet-stream", "x-other": "dropped"})  # fmt: skip
    assert b"tensor bytes" not in envelope and b"/v2/models" not in envelope
    opened = open_request(envelope, service)
    assert (opened.method, opened.path, opened.body, opened.reply_key) == ("POST", "/v2/models/m/infer",
                                                                          b"tensor bytes", reply_key)  # fmt: skip
    assert opened.headers == {"content-type": "application/octet-stream"}
    with pytest.raises(ServeError, match="not a request sealed to this service"):
        open_request(envelope, other)
    flipped = bytearray(envelope)
    flipped[-5] ^= 1
    with pytest.raises(ServeError, match="not a request sealed"):
        open_request(bytes(flipped), service)

    answer = seal_reply(envelope, reply_key, 200, {"content-type": "application/json", "set-cookie": "x"}, b"{}")
    assert b"{}" not in answer[12:]
    assert open_reply(envelope, reply_key, answer) == (200, {"content-type": "application/json"}, b"{}")
    another, _ = seal_request(service.public_key(), "POST", "/v2/models/m/infer", b"other", {})
    with pytest.raises(ServeError, match="changed on the way"):
        open_reply(another, reply_key, answer)  # an answer cannot be passed off as another request's


def test_a_sealed_request_may_only_ask_for_inference() -> None:
    service = new_key()
    for path in ("/v1/sealed", "/metrics", "/v2/models/../../v1/sealed"):
        envelope, _ = seal_request(service.public_key(), "POST", path, b"", {})
        with pytest.raises(ServeError, match="may not ask for"):
            open_request(envelope, service)
