"""The control protocol between the application manager and a dataflow engine, as typed values.

Every message on a control channel is one of the frozen dataclasses below; ``to_wire`` gives the
CBOR map ``serdab.runtime.wire`` frames (an ``op`` names the kind) and ``decode`` reads one back,
refusing an unknown ``op`` or a missing field with ``WireError``. The exchange, in order::

    manager -> engine   Challenge(nonce)
    engine  -> manager  Hello(worker, token, pid, document)   an enclave's document answers the nonce
    manager -> engine   Configure(config | envelope)          an enclave's config is sealed to its key
    engine  -> manager  Ready(host, port, load_s)             stage loaded, listening for upstream links
    manager -> engine   Wire(downstream)                      where the next stage's replicas listen
    engine  -> manager  Wired()
    engine  -> manager  Heartbeat(...) every HEARTBEAT_S; IntegrityReport / ErrorReport when things go wrong
    manager -> engine   Stop()

``Refused``, ``Closed`` and ``LinkClosed`` are events the manager's own threads put beside the
messages it receives (one queue, one type); they never travel. ``WorkerConfig`` is what a worker is
told about its stage, links and emulation, with its defaults stated once here.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from serdab.errors import WireError
from serdab.kms.lifecycle import KmsCoordinates
from serdab.normalisation import Normalisation
from serdab.runtime.link import LinkSpec
from serdab.runtime.wire import recv_message, send_message

__all__ = [
    "CONFIG_CONTEXT",
    "SINK",
    "SOURCE",
    "Challenge",
    "Channel",
    "Closed",
    "Configure",
    "ErrorReport",
    "Heartbeat",
    "Hello",
    "IntegrityReport",
    "LinkClosed",
    "LinkHello",
    "Message",
    "Ready",
    "Refused",
    "Stop",
    "Wire",
    "Wired",
    "BlindConfig",
    "WorkerConfig",
    "decode",
]

SOURCE, SINK = "source", "sink"  # the manager's two ends of the stream, named like workers on links
CONFIG_CONTEXT = b"serdab-stage-config"  # an enclave's configuration envelope is bound to this purpose


@dataclass(frozen=True)
class BlindConfig:
    """A blinded stage's side of issue 28, told to its enclave and to its helper alike.

    ``helper_s`` is the helper's emulated seconds per frame (its field products; each layer is padded
    to its share by multiply-accumulates); the enclave precomputes the pool for the frame ids
    ``pool_from`` .. ``pool_from + pool_frames - 1``; ``tamper_from`` (fault injection, tests and
    demonstrations) makes the helper add 1 to one element of every answer from that frame on."""

    mode: str
    integrity: bool
    helper_s: float
    pool_from: int = 0
    pool_frames: int = 0
    tamper_from: int | None = None

    def to_wire(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> BlindConfig:
        tamper = wire.get("tamper_from")
        return cls(
            mode=str(wire["mode"]),
            integrity=bool(wire["integrity"]),
            helper_s=float(wire["helper_s"]),
            pool_from=int(wire.get("pool_from", 0)),
            pool_frames=int(wire.get("pool_frames", 0)),
            tamper_from=None if tamper is None else int(tamper),
        )


@dataclass(frozen=True)
class WorkerConfig:
    """One dataflow engine's stage, links and emulation."""

    worker: str
    device: str
    stage: int
    stage_file: str  # untrusted: path of the plain ONNX; trusted: the file name inside the enclave image
    native: bool
    dilation: float
    compute_emulated_s: float  # the stage's predicted compute time on its device: frames are padded to it
    memory_bytes: int  # weights + peak activations, as an enclave's EPC sees them (emulated)
    inbound: tuple[LinkSpec, ...] = ()
    outbound: tuple[LinkSpec, ...] = ()
    slowdowns: tuple[tuple[float, int], ...] = ()  # (factor, from frame): injected slowdowns
    kms: KmsCoordinates | None = None  # trusted stages: where the stage key comes from
    normalise: Normalisation | None = None  # first stage: frames arrive as uint8 pixels
    threads: int = 1
    queue_depth: int = 2
    role: str = "stage"  # or "helper" (an untrusted device computing a blinded stage's layers), "wr" (its W r)
    helper: str | None = None  # a blinded stage's enclave: its helper's worker id (the last links each way)
    wr: str | None = None  # ... and, outsourced, its W r device's worker id
    blind: BlindConfig | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "device": self.device,
            "stage": self.stage,
            "stage_file": self.stage_file,
            "native": self.native,
            "dilation": self.dilation,
            "compute_emulated_s": self.compute_emulated_s,
            "memory_bytes": self.memory_bytes,
            "inbound": [spec.to_wire() for spec in self.inbound],
            "outbound": [spec.to_wire() for spec in self.outbound],
            "slowdowns": [list(s) for s in self.slowdowns],
            "kms": self.kms.to_wire() if self.kms else None,
            "normalise": self.normalise.to_wire() if self.normalise else None,
            "threads": self.threads,
            "queue_depth": self.queue_depth,
            "role": self.role,
            "helper": self.helper,
            "wr": self.wr,
            "blind": self.blind.to_wire() if self.blind else None,
        }

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> WorkerConfig:
        try:
            return cls(
                worker=str(wire["worker"]),
                device=str(wire["device"]),
                stage=int(wire["stage"]),
                stage_file=str(wire["stage_file"]),
                native=bool(wire["native"]),
                dilation=float(wire["dilation"]),
                compute_emulated_s=float(wire["compute_emulated_s"]),
                memory_bytes=int(wire["memory_bytes"]),
                inbound=tuple(LinkSpec.from_wire(s) for s in wire["inbound"]),
                outbound=tuple(LinkSpec.from_wire(s) for s in wire["outbound"]),
                slowdowns=tuple((float(f), int(start)) for f, start in wire["slowdowns"]),
                kms=KmsCoordinates.from_wire(wire["kms"]) if wire.get("kms") else None,
                normalise=Normalisation.from_wire(wire["normalise"]) if wire.get("normalise") else None,
                threads=int(wire["threads"]),
                queue_depth=int(wire["queue_depth"]),
                role=str(wire.get("role", "stage")),
                helper=str(wire["helper"]) if wire.get("helper") else None,
                wr=str(wire["wr"]) if wire.get("wr") else None,
                blind=BlindConfig.from_wire(wire["blind"]) if wire.get("blind") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"a worker configuration without a valid {exc}") from None


class Message:
    """A control message: ``op`` on the wire names its class."""

    op: ClassVar[str]

    def to_wire(self) -> dict[str, Any]:
        return {"op": self.op, **{f.name: getattr(self, f.name) for f in fields(self)}}  # type: ignore[arg-type]

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Message:
        try:
            return cls(**{f.name: wire[f.name] for f in fields(cls) if f.name in wire})  # type: ignore[arg-type]
        except TypeError as exc:
            raise WireError(f"{cls.op} message: {exc}") from None


@dataclass(frozen=True)
class Challenge(Message):
    op: ClassVar[str] = "challenge"
    nonce: bytes


@dataclass(frozen=True)
class Hello(Message):
    op: ClassVar[str] = "hello"
    worker: str
    token: str
    pid: int
    document: bytes | None = None  # an enclave's attestation document: the challenge's nonce and a fresh key


@dataclass(frozen=True)
class Configure(Message):
    op: ClassVar[str] = "configure"
    config: WorkerConfig | None = None  # an untrusted worker's, in the clear
    envelope: bytes | None = None  # an enclave's, sealed to the public key in its document

    def to_wire(self) -> dict[str, Any]:
        return {"op": self.op, "config": self.config.to_wire() if self.config else None, "envelope": self.envelope}

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Configure:
        config = wire.get("config")
        return cls(WorkerConfig.from_wire(config) if config else None, wire.get("envelope"))


@dataclass(frozen=True)
class Ready(Message):
    op: ClassVar[str] = "ready"
    host: str
    port: int
    load_s: float = 0.0


@dataclass(frozen=True)
class Wire(Message):
    op: ClassVar[str] = "wire"
    downstream: tuple[tuple[str, int], ...]

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Wire:
        try:
            return cls(tuple((str(host), int(port)) for host, port in wire["downstream"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"wire message without valid downstream addresses: {exc}") from None

    def to_wire(self) -> dict[str, Any]:
        return {"op": self.op, "downstream": [list(a) for a in self.downstream]}


@dataclass(frozen=True)
class Wired(Message):
    op: ClassVar[str] = "wired"


@dataclass(frozen=True)
class Heartbeat(Message):
    op: ClassVar[str] = "heartbeat"
    frames: int = 0
    busy_s: float = 0.0
    link_busy_s: list[float] = field(default_factory=list)
    link_bytes: list[int] = field(default_factory=list)  # per outbound link, framing included
    link_frames: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class IntegrityReport(Message):
    """A link's receiver found a frame tampered with, replayed, dropped or reordered."""

    op: ClassVar[str] = "integrity"
    kind: str
    message: str


@dataclass(frozen=True)
class ErrorReport(Message):
    """A worker cannot go on (its stage does not load, a link broke)."""

    op: ClassVar[str] = "error"
    message: str


@dataclass(frozen=True)
class Stop(Message):
    op: ClassVar[str] = "stop"


@dataclass(frozen=True)
class LinkHello(Message):
    """The first message on a data link: which sender it is (its frames authenticate under that link's key)."""

    op: ClassVar[str] = "link"
    src: str


@dataclass(frozen=True)
class Refused(Message):
    """(manager event) an enclave's attestation did not match its stage image."""

    op: ClassVar[str] = "refused"
    message: str


@dataclass(frozen=True)
class Closed(Message):
    """(manager event) a worker's control channel closed."""

    op: ClassVar[str] = "closed"


@dataclass(frozen=True)
class LinkClosed(Message):
    """(manager event) the link from a last stage to the sink closed."""

    op: ClassVar[str] = "link-closed"
    message: str


_KINDS: dict[str, type[Message]] = {
    kind.op: kind
    for kind in (
        Challenge,
        Hello,
        Configure,
        Ready,
        Wire,
        Wired,
        Heartbeat,
        IntegrityReport,
        ErrorReport,
        Stop,
        LinkHello,
    )
}


class Channel:
    """A control connection carrying ``Message`` values; a send lock lets several threads send whole messages."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()

    def send(self, message: Message) -> None:
        with self._lock:
            send_message(self.sock, message.to_wire())

    def recv(self) -> Message | None:
        """The next message (None: the peer hung up); WireError for anything that is not one."""
        return decode(recv_message(self.sock))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def decode(wire: dict[str, Any] | None) -> Message | None:
    """The message a peer sent (None: it hung up); WireError for anything that is not one."""
    if wire is None:
        return None
    kind = _KINDS.get(str(wire.get("op")))
    if kind is None:
        raise WireError(f"unknown control message {wire.get('op')!r}; expected one of {', '.join(_KINDS)}")
    return kind.from_wire(wire)
