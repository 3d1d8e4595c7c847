"""The wire format's arithmetic against the encoders that produce the real bytes."""

from __future__ import annotations

import numpy as np
import pytest

from serdab.framing import (
    encode_payload,
    hop_bytes,
    ingress_bytes,
    message_bytes,
    new_records,
    payload_bytes,
)
from serdab.runtime.link import LinkSealer, LinkSpec
from serdab.runtime.wire import send_message


class _Recorder:
    """Takes what ``send_message`` writes, as a socket would, half of it on the first call."""

    def __init__(self) -> None:
        self.data = b""

    def sendmsg(self, parts: list[bytes]) -> int:
        joined = b"".join(parts)
        self.data += joined[: len(joined) // 2]
        return len(joined) // 2

    def sendall(self, data: bytes) -> None:
        self.data += bytes(data)


@pytest.mark.parametrize(
    ("dtype", "shape"),
    [
        (np.uint8, (1, 3, 224, 224)),
        (np.float32, (1, 64, 56, 56)),
        (np.float32, (1, 1000)),
        (np.float32, (1, 10)),
        (np.uint8, (1, 1, 28, 28)),
        (np.float16, (2, 300, 7)),
        (np.float32, (1, 70000)),
    ],
)
def test_payload_and_message_sizes_are_the_encoders(dtype, shape) -> None:
    array = np.zeros(shape, dtype=dtype)
    payload = encode_payload([array], new_records())
    assert payload_bytes([(np.dtype(dtype), shape)]) == len(payload)
    for seq, frame in [(0, 0), (23, 24), (300, -5), (70_000, 2**31)]:
        sealed = LinkSealer(LinkSpec("s", "a", "b", bytes(32)))
        sealed.seq = seq
        message = sealed.seal(frame, payload, 123.456)
        wire = _Recorder()
        sent = send_message(wire, message)  # type: ignore[arg-type]
        assert sent == len(wire.data)
        assert message_bytes(len(payload), seq, frame) == sent
        assert 0 <= message_bytes(len(payload)) - sent <= 8  # the cost model's width: never under, 8 bytes at most over


def test_a_camera_frame_crosses_the_first_hop_as_uint8() -> None:
    assert ingress_bytes((1, 3, 224, 224)) - 150_528 < 300  # not the 602,112 of a float32 tensor
    assert hop_bytes(np.dtype(np.float32), (1, 3, 224, 224)) - 602_112 < 300
