from __future__ import annotations

import cbor2
import pytest

from serdab.crypto import (
    CoseError,
    EnvelopeError,
    cose_sign1,
    cose_verify1,
    decode_sign1,
    new_key,
    open_envelope,
    seal_envelope,
)


def test_cose_sign1_round_trip_is_tagged_es384() -> None:
    key = new_key()
    document = cose_sign1(b"payload", key)
    item = cbor2.loads(document)
    assert item.tag == 18
    protected, _, payload, signature = item.value
    assert cbor2.loads(protected) == {1: -35} and payload == b"payload" and len(signature) == 96
    assert cose_verify1(document, key.public_key()) == b"payload"


def test_untagged_cose_is_accepted_as_real_nitro_documents_are() -> None:
    key = new_key()
    untagged = cbor2.dumps(list(cbor2.loads(cose_sign1(b"x", key)).value))
    assert cose_verify1(untagged, key.public_key()) == b"x"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\x00", "not CBOR"),
        (cbor2.dumps([1, 2]), "array of 4"),
        (cbor2.dumps(cbor2.CBORTag(17, [])), "tag 17"),
        (cbor2.dumps([cbor2.dumps({1: -7}), {}, b"p", b"s"]), "not ES384"),
    ],
)
def test_malformed_cose(data, message) -> None:
    with pytest.raises(CoseError, match=message):
        decode_sign1(data)


def test_cose_signature_by_another_key_fails() -> None:
    with pytest.raises(CoseError, match="does not verify"):
        cose_verify1(cose_sign1(b"x", new_key()), new_key().public_key())


def test_envelope_opens_only_for_its_recipient_and_context() -> None:
    recipient = new_key()
    envelope = seal_envelope(b"service key", recipient.public_key(), b"echo")
    assert open_envelope(envelope, recipient, b"echo") == b"service key"
    with pytest.raises(EnvelopeError, match="wrong recipient or tampered"):
        open_envelope(envelope, new_key(), b"echo")
    with pytest.raises(EnvelopeError, match="wrong recipient or tampered"):
        open_envelope(envelope, recipient, b"other-service")
    with pytest.raises(EnvelopeError, match="malformed"):
        open_envelope(b"junk", recipient)
