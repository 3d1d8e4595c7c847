"""serdab.runtime.protocol and topology: typed control messages round-trip through CBOR; a placement's
workers and links are computed without sockets."""

from __future__ import annotations

import cbor2
import pytest

from serdab.errors import WireError
from serdab.kms.lifecycle import KmsCoordinates
from serdab.normalisation import IMAGENET
from serdab.runtime.link import LinkSpec
from serdab.runtime.manager import parse_placement
from serdab.runtime.protocol import (
    SINK,
    SOURCE,
    Challenge,
    Configure,
    ErrorReport,
    Heartbeat,
    Hello,
    IntegrityReport,
    LinkHello,
    Ready,
    Stop,
    Wire,
    Wired,
    WorkerConfig,
    decode,
)
from serdab.runtime.topology import topology

LINK = LinkSpec("stream", "source", "e1-s0-tee1", b"k" * 32, bandwidth_bytes_per_s=3.75e6, rtt_s=0.001, dilation=4.0)
CONFIG = WorkerConfig(
    worker="e1-s0-tee1",
    device="tee1",
    stage=0,
    stage_file="stage0-b0-2.onnx",
    native=False,
    dilation=4.0,
    compute_emulated_s=0.012,
    memory_bytes=1 << 20,
    inbound=(LINK,),
    outbound=(LinkSpec("stream", "e1-s0-tee1", "sink", b"j" * 32),),
    slowdowns=((2.0, 30),),
    kms=KmsCoordinates("https://127.0.0.1:8443", "run-1-stage0-abc", {0: b"\x01" * 48, 1: b"\x02" * 48}, True),
    normalise=IMAGENET,
)


@pytest.mark.parametrize(
    "message",
    [
        Challenge(nonce=b"n" * 32),
        Hello(worker="e1-s0-tee1", token="t", pid=42, document=b"cose"),
        Hello(worker="e1-s1-e1", token="t", pid=43),
        Configure(config=CONFIG),
        Configure(envelope=b"sealed"),
        Ready(host="127.0.0.1", port=4242, load_s=0.3),
        Wire(downstream=(("127.0.0.1", 1), ("10.0.0.2", 2))),
        Wired(),
        Heartbeat(frames=3, busy_s=0.5, link_busy_s=[0.1, 0.2]),
        IntegrityReport(kind="replayed", message="frame 7 seen twice"),
        ErrorReport(message="cannot load stage"),
        Stop(),
        LinkHello(src="source"),
    ],
)
def test_every_message_survives_the_wire(message) -> None:
    assert decode(cbor2.loads(cbor2.dumps(message.to_wire()))) == message


def test_the_worker_configuration_survives_its_envelope() -> None:
    assert WorkerConfig.from_wire(cbor2.loads(cbor2.dumps(CONFIG.to_wire()))) == CONFIG


@pytest.mark.parametrize(
    ("wire", "fragment"),
    [
        ({"op": "launch-missiles"}, "unknown control message"),
        ({"no": "op"}, "unknown control message"),
        ({"op": "ready", "port": 1}, "ready message"),
        ({"op": "wire", "downstream": [["host"]]}, "downstream"),
    ],
)
def test_what_is_not_a_message_is_a_wire_error(wire: dict, fragment: str) -> None:
    with pytest.raises(WireError, match=fragment):
        decode(wire)


def test_a_configuration_missing_a_field_is_refused() -> None:
    wire = CONFIG.to_wire()
    del wire["device"]
    with pytest.raises(WireError, match="device"):
        WorkerConfig.from_wire(wire)


def test_a_hang_up_decodes_to_none() -> None:
    assert decode(None) is None


def test_topology_of_a_replicated_placement() -> None:
    shape = topology(parse_placement("tee1[0-2] -> e1+e2[3-9] -> tee2[10-11]"), epoch=3)
    first, (r1, r2), last = shape.stages[0][0], shape.stages[1], shape.stages[2][0]
    assert [w.id for w in shape.workers] == ["e3-s0-tee1", "e3-s1-e1", "e3-s1-e2", "e3-s2-tee2"]
    assert shape.inbound(first) == (SOURCE,) and shape.outbound(first) == (r1.id, r2.id)
    assert shape.inbound(last) == (r1.id, r2.id) and shape.outbound(last) == (SINK,)
    assert sorted(shape.links()) == sorted(
        [(SOURCE, first.id), (first.id, r1.id), (first.id, r2.id), (r1.id, last.id), (r2.id, last.id), (last.id, SINK)]
    )
    assert shape.device_of(r2.id) == "e2" and shape.device_of(SOURCE) is None
