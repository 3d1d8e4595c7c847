"""Transmission operators (seed 000 Fig. 2): one stage's output to the next, encrypted per link.

Every link (sender worker -> receiver worker, one deployment) has its own AES-256-GCM key. A
frame travels as ``{seq, frame, at, ct}``: ``seq`` counts messages on the link from 0, ``frame``
is the stream's frame id, ``at`` the (host monotonic) time the emulated link delivers it. The
stream id, both ends, ``seq``, ``frame`` and ``at`` are associated data and ``seq`` is the nonce,
so the receiver detects a tampered frame (tag fails), a replayed one (seq already seen) and a
dropped or reordered one (seq skips ahead) and reports it; such a frame is never used.

Why hand-written: the check order and what is bound to what are the product's security
property; the primitives (AES-GCM) come from ``cryptography``.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from serdab.errors import LinkIntegrityError
from serdab.framing import message_bytes
from serdab.runtime.wire import WireError, recv_message, send_message

__all__ = [
    "LinkIntegrityError",
    "LinkOpener",
    "LinkReceiver",
    "LinkSealer",
    "LinkSender",
    "LinkShaper",
    "LinkSpec",
]


@dataclass(frozen=True)
class LinkSpec:
    """What both ends of one link know; ``bandwidth_bytes_per_s`` None means not shaped."""

    stream: str
    src: str
    dst: str
    key: bytes
    bandwidth_bytes_per_s: float | None = None
    rtt_s: float = 0.0
    dilation: float = 1.0

    def to_wire(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "src": self.src,
            "dst": self.dst,
            "key": self.key,
            "bandwidth": self.bandwidth_bytes_per_s,
            "rtt": self.rtt_s,
            "dilation": self.dilation,
        }

    @classmethod
    def from_wire(cls, item: dict[str, Any]) -> LinkSpec:
        return cls(
            item["stream"], item["src"], item["dst"], item["key"], item["bandwidth"], item["rtt"], item["dilation"]
        )


def _aad(spec: LinkSpec, seq: int, frame: int, at: float) -> bytes:
    return b"serdab-link-v1|" + cbor2.dumps([spec.stream, spec.src, spec.dst, seq, frame, at])


def _nonce(seq: int) -> bytes:
    return struct.pack(">IQ", 0, seq)


class LinkSealer:
    """The sending end's crypto: one nonce per message, never reused under a key."""

    def __init__(self, spec: LinkSpec) -> None:
        self.spec = spec
        self._aead = AESGCM(spec.key)
        self.seq = 0

    def seal(self, frame: int, payload: bytes, at: float = 0.0) -> dict[str, Any]:
        seq = self.seq
        self.seq += 1
        ct = self._aead.encrypt(_nonce(seq), payload, _aad(self.spec, seq, frame, at))
        return {"seq": seq, "frame": frame, "at": at, "ct": ct}


class LinkOpener:
    """The receiving end's crypto and sequence check; raises ``LinkIntegrityError``, never returns bad data."""

    def __init__(self, spec: LinkSpec) -> None:
        self.spec = spec
        self._aead = AESGCM(spec.key)
        self.expected = 0

    def open(self, message: dict[str, Any]) -> tuple[int, bytes, float]:
        where = f"link {self.spec.src}->{self.spec.dst}"
        try:
            seq, frame, at, ct = int(message["seq"]), int(message["frame"]), float(message["at"]), message["ct"]
            if not isinstance(ct, bytes) or seq < 0:
                raise TypeError
        except (KeyError, TypeError, ValueError, OverflowError):
            raise LinkIntegrityError("tampered", f"{where}: a message that is not a frame") from None
        try:
            payload = self._aead.decrypt(_nonce(seq), ct, _aad(self.spec, seq, frame, at))
        except InvalidTag:
            raise LinkIntegrityError(
                "tampered", f"{where}: frame {frame} (link seq {seq}) failed authentication: tampered"
            ) from None
        if seq < self.expected:
            raise LinkIntegrityError(
                "replayed",
                f"{where}: frame {frame} (link seq {seq}) arrived again after seq {self.expected - 1}: replayed",
            )
        if seq > self.expected:
            missing = f"{self.expected}" if seq == self.expected + 1 else f"{self.expected}..{seq - 1}"
            raise LinkIntegrityError(
                "dropped",
                f"{where}: link seq {missing} never arrived before seq {seq} (frame {frame}): dropped or reordered",
            )
        self.expected = seq + 1
        return frame, payload, at


class LinkShaper:
    """Emulates a link as the cost model sees it, ``dilation`` times slower than the cluster file says.

    A hop costs ``bytes / bandwidth + rtt`` (DESIGN.md) and that whole time counts towards the
    period: the link carries one frame at a time, its bytes leave after ``bytes / bandwidth`` and
    arrive ``rtt`` later, and only then is the link free for the next frame (as a transport that
    waits for each frame's acknowledgement). A streaming transport could overlap the rtt of
    consecutive frames; the model does not credit that, so neither does the emulation.
    """

    def __init__(
        self,
        bandwidth_bytes_per_s: float | None,
        rtt_s: float,
        dilation: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.bandwidth = bandwidth_bytes_per_s
        self.rtt_s = rtt_s
        self.dilation = dilation
        self._clock = clock
        self._sleep = sleep
        self._free_at = 0.0

    def depart(self, nbytes: int) -> float:
        """Wait until ``nbytes`` have left on the emulated link; the host time they arrive."""
        now = self._clock()
        if self.bandwidth is None:
            return now
        leave = max(now, self._free_at) + self.dilation * nbytes / self.bandwidth
        self._free_at = leave + self.dilation * self.rtt_s
        if leave > now:
            self._sleep(leave - now)
        return self._free_at


class LinkSender:
    """A thread that seals, shapes and sends the frames put on its bounded queue (back-pressure)."""

    def __init__(self, sock: socket.socket, spec: LinkSpec, on_error: Callable[[str], None], depth: int = 2) -> None:
        self.sock = sock
        self.spec = spec
        self._sealer = LinkSealer(spec)
        self._shaper = LinkShaper(spec.bandwidth_bytes_per_s, spec.rtt_s, spec.dilation)
        self._queue: queue.Queue[tuple[int, bytes] | None] = queue.Queue(maxsize=depth)
        self._on_error = on_error
        self.busy_s = 0.0
        self.bytes_sent = 0  # on the socket, framing included: what the cost model's hop charges
        self.frames_sent = 0
        self._thread = threading.Thread(target=self._run, name=f"send-{spec.src}-{spec.dst}", daemon=True)
        self._thread.start()

    def put(self, frame: int, payload: bytes, timeout_s: float | None = None) -> bool:
        """Queue a frame; blocks while the queue is full (False when ``timeout_s`` passed first)."""
        try:
            self._queue.put((frame, payload), timeout=timeout_s)
        except queue.Full:
            return False
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            frame, payload = item
            started = time.monotonic()
            at = self._shaper.depart(message_bytes(len(payload), self._sealer.seq, frame))
            try:
                sent = send_message(self.sock, self._sealer.seal(frame, payload, at))
            except OSError as exc:
                self._on_error(f"link {self.spec.src}->{self.spec.dst} broke: {exc}")
                return
            self.busy_s += time.monotonic() - started
            self.bytes_sent += sent
            self.frames_sent += 1


class LinkReceiver:
    """A thread that opens frames from one link, waits for their emulated arrival and hands them on."""

    def __init__(
        self,
        sock: socket.socket,
        spec: LinkSpec,
        on_frame: Callable[[int, bytes], None],
        on_integrity: Callable[[LinkIntegrityError], None],
        on_closed: Callable[[str], None] | None = None,
    ) -> None:
        self.sock = sock
        self.spec = spec
        self._opener = LinkOpener(spec)
        self._on_frame = on_frame
        self._on_integrity = on_integrity
        self._on_closed = on_closed
        self._thread = threading.Thread(target=self._run, name=f"recv-{spec.src}-{spec.dst}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                message = recv_message(self.sock)
            except (WireError, OSError) as exc:
                if self._on_closed:
                    self._on_closed(f"link {self.spec.src}->{self.spec.dst}: {exc}")
                return
            if message is None:
                if self._on_closed:
                    self._on_closed(f"link {self.spec.src}->{self.spec.dst} closed")
                return
            try:
                frame, payload, at = self._opener.open(message)
            except LinkIntegrityError as exc:
                self._on_integrity(exc)
                continue
            wait = at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._on_frame(frame, payload)
