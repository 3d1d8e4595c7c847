"""One placement deployed: a worker per device, wired by encrypted links, with the manager at both ends.

The manager's process is the stream's source (it sends frames to the first stage over the
source device's link) and its sink (the last stage sends results back). Each worker dials
the deployment's control port; an enclave must answer a fresh nonce with an attestation
document whose PCRs are its stage image's before it is sent its configuration (link keys
included), sealed to the public key in that document. Every deployment gets new link keys,
so sequence numbers restart without ever reusing a nonce under a key.
"""

from __future__ import annotations

import contextlib
import hmac
import math
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cbor2
import numpy as np

from serdab.cluster import Cluster
from serdab.errors import AttestationError, LinkIntegrityError, SerdabError, WorkerError
from serdab.framing import RECORD_FIELDS, decode_payload, encode_payload, new_records
from serdab.kms.lifecycle import KmsCoordinates
from serdab.normalisation import Normalisation
from serdab.plan import CostModel, Placement
from serdab.proc import log_tail
from serdab.runtime.executor import Executor, WorkerHandle, WorkerSpec
from serdab.runtime.link import LinkReceiver, LinkSender, LinkSpec
from serdab.runtime.protocol import (
    CONFIG_CONTEXT,
    SINK,
    SOURCE,
    BlindConfig,
    Challenge,
    Channel,
    Closed,
    Configure,
    ErrorReport,
    Heartbeat,
    Hello,
    IntegrityReport,
    LinkClosed,
    LinkHello,
    Message,
    Ready,
    Refused,
    Stop,
    Wire,
    Wired,
    WorkerConfig,
    decode,
)
from serdab.runtime.resources import ResourceManager
from serdab.runtime.stages import StageArtifact
from serdab.runtime.topology import Topology, topology
from serdab.runtime.wire import WireError, connect, listen, recv_message, send_message

__all__ = ["Deployment", "FrameResult", "WorkerLost"]

POOL_BUDGET_BYTES = 2 * 2**30  # sealed W r a pool-mode enclave precomputes at most (frames beyond: in-stream)
BLAME = {"wrong-answer": "helper", "wrong-precomputation": "wr"}  # a blinded stage's integrity report -> who
PROBE_FRAMES = 3  # sent one at a time after the warm-up; their median end-to-end time is the measured L


class WorkerLost(WorkerError):
    """A worker exited, broke a link or went silent mid-stream."""

    def __init__(self, device: str, message: str) -> None:
        super().__init__(message)
        self.device = device


@dataclass
class FrameResult:
    frame: int
    outputs: list[np.ndarray]
    records: list[dict[str, Any]]
    sent_s: float
    done_s: float


@dataclass
class _Worker:
    id: str
    device: str
    stage: int
    artifact: StageArtifact
    config: WorkerConfig
    handle: WorkerHandle | None = None
    port: int | None = None
    host: str = "127.0.0.1"  # where the worker listens for its upstream links (it says so when ready)
    wired: bool = False
    channel: Channel | None = None
    load_s: float = 0.0

    @property
    def enclave(self) -> bool:
        """Runs in an enclave from a stage image (a blinded stage's helper never does)."""
        return self.artifact.image is not None and self.config.role == "stage"


@dataclass
class DeploymentContext:
    """What every deployment of one run shares."""

    executor: Executor
    resources: ResourceManager
    cluster: Cluster  # physical: the speeds the workers are padded to
    kms_coordinates: Callable[[str], KmsCoordinates]  # a trusted stage's key service, by its service name
    run_dir: Path
    native: bool
    dilation: float
    slowdowns: dict[str, tuple[float, int]] = field(default_factory=dict)
    allow_simulated: bool = True
    start_timeout_s: float = 120.0
    normalise: Normalisation | None = None  # of the model's input: the first stage applies it to uint8 frames
    # (sender worker, receiver worker, address) -> address to dial: lets tests put a proxy on a link
    route: Callable[[str, str, tuple[str, int]], tuple[str, int]] | None = None
    blind_frames: int = 0  # stream frames a pool-mode blinded stage precomputes W r for (from frame 0)
    tamper: dict[str, int] = field(default_factory=dict)  # fault injection: helper device -> from frame


class Deployment:
    def __init__(
        self,
        ctx: DeploymentContext,
        placement: Placement,
        artifacts: list[StageArtifact],
        epoch: int,
        physical: CostModel,
    ) -> None:
        self.ctx = ctx
        self.placement = placement
        self.epoch = epoch
        self.stream = f"{os.getpid()}-{epoch}-{secrets.token_hex(4)}"
        self.events: queue.Queue[tuple[str, Message]] = queue.Queue()  # (worker id, SOURCE or SINK; what happened)
        self.results: queue.Queue[FrameResult] = queue.Queue()
        self._token = secrets.token_hex(16)
        self._stopping = False
        self.latency_s: float | None = None  # median of probe frames through the empty pipeline (host s)
        self.path_latency_s: list[float] = []  # the same on every replica path (path 0's is latency_s)
        self.attested: dict[str, dict[str, object]] = {}  # enclave device -> what its evidence showed
        self._sent: dict[int, float] = {}
        self._traffic: dict[tuple[str, str], tuple[int, int]] = {}
        self._ingress: list[LinkSender] = []
        self._receivers: list[LinkReceiver] = []
        self._control = socket.create_server((ctx.executor.bind_host, 0))
        self._sink = listen(ctx.executor.bind_host)
        self.workers = self._plan_workers(artifacts, physical)
        self._by_id = {w.id: w for w in self.workers}

    # --- wiring ----------------------------------------------------------------------------------
    def _link(self, src: str, dst: str) -> LinkSpec:
        """A fresh key for the link, and its shaping as the cluster's link between the two devices."""
        a = self.topology.device_of(src) or self.ctx.cluster.source
        b = self.topology.device_of(dst)
        bandwidth, rtt = None, 0.0
        if not self.ctx.native and b is not None and a != b:
            link = self.ctx.cluster.channel(self.ctx.cluster.device(a), self.ctx.cluster.device(b))
            if link is None:
                raise WorkerError(f"no link between {a} and {b} in cluster {self.ctx.cluster.name}")
            bandwidth, rtt = link.bandwidth_bytes_per_s, link.rtt_s
        return LinkSpec(self.stream, src, dst, os.urandom(32), bandwidth, rtt, self.ctx.dilation)

    def _plan_workers(self, artifacts: list[StageArtifact], physical: CostModel) -> list[_Worker]:
        cost = physical.evaluate(self.placement, 1)
        self._predicted = (cost.latency_s, cost.period_s)
        blind = physical.workload.blind
        self.topology: Topology = topology(self.placement, self.epoch, blind.helper if blind else None)
        self._links = {pair: self._link(*pair) for pair in self.topology.links()}
        self._slots = {slot.id: slot for slot in self.topology.workers}
        warm = self.paths_of(self.placement) * (PROBE_FRAMES + 1)  # warm-up and probe frames: negative ids
        workers = {}
        for slot in self.topology.workers:
            k, artifact = slot.stage, artifacts[slot.stage]
            slow = self.ctx.slowdowns.get(slot.device)
            assistants = {a.role: a for a in self.topology.assistants(slot)}
            blind_config = None
            share = cost.stages[k].blinded
            if share is not None and blind is not None:
                helper_s = share.wr_s if slot.role == "wr" else share.gpu_s
                tamper = self.ctx.tamper.get(slot.device) if slot.role != "stage" else None
                frames = warm + self.ctx.blind_frames
                if share.pool_bytes:  # a long stream's pool would not fit in memory: precompute what fits
                    frames = min(frames, max(warm, POOL_BUDGET_BYTES // share.pool_bytes))
                blind_config = BlindConfig(blind.mode, blind.integrity, helper_s, -warm, frames, tamper)
            config = WorkerConfig(
                worker=slot.id,
                device=slot.device,
                stage=k,
                stage_file=artifact.stage_file,
                native=self.ctx.native,
                dilation=self.ctx.dilation,
                compute_emulated_s=cost.stages[k].compute_s,
                memory_bytes=cost.stages[k].memory_bytes,
                inbound=tuple(self._links[(src, slot.id)] for src in self.topology.inbound(slot)),
                outbound=tuple(self._links[(slot.id, dst)] for dst in self.topology.outbound(slot)),
                slowdowns=(slow,) if slow else (),
                kms=self.ctx.kms_coordinates(artifact.image.service)
                if artifact.image and slot.role == "stage"
                else None,
                normalise=self.ctx.normalise if k == 0 and slot.role == "stage" else None,  # uint8 pixels arrive
                role=slot.role,
                helper=assistants["helper"].id if "helper" in assistants else None,
                wr=assistants["wr"].id if "wr" in assistants else None,
                blind=blind_config,
            )
            if slot.role != "stage":
                assert artifact.helper_file is not None
                config = replace(config, stage_file=artifact.helper_file, compute_emulated_s=0.0)
            workers[slot.id] = _Worker(slot.id, slot.device, k, artifact, config)
        self._stages = [[workers[slot.id] for slot in group] for group in self.topology.stages]
        return list(workers.values())

    @staticmethod
    def paths_of(placement: Placement) -> int:
        """Replica paths a frame can take: the lcm of the stages' replica counts."""
        return math.lcm(*(stage.replicas for stage in placement.stages))

    # --- start -----------------------------------------------------------------------------------
    def start(self) -> None:
        threading.Thread(target=self._accept_control, daemon=True, name="control").start()
        threading.Thread(target=self._accept_sink, daemon=True, name="sink").start()
        address = self._control.getsockname()
        for w in self.workers:
            spec = WorkerSpec(
                w.id,
                w.device,
                address,
                self._token,
                self.ctx.run_dir / "logs" / f"{w.id}.log",
                w.artifact.image.path if w.enclave and w.artifact.image else None,
                None if w.enclave else Path(w.config.stage_file),
                (self.ctx.cluster.device(w.device).host,),
            )
            try:
                w.handle = self.ctx.executor.start(spec)
            except SerdabError as exc:  # the executor could not put a worker there: the device is gone
                raise WorkerLost(w.device, f"cannot start the worker for {w.device}: {exc}") from None
        self._await(lambda: all(w.port for w in self.workers), "ready")
        for w in self.workers:
            downstream = [
                self._sink.getsockname()
                if dst == SINK
                else self._address(w.id, dst, (self._by_id[dst].host, self._by_id[dst].port or 0))
                for dst in self.topology.outbound(self._slots[w.id])
            ]
            assert w.channel is not None
            w.channel.send(Wire(tuple(downstream)))
        self._await(lambda: all(w.wired for w in self.workers), "wired")
        for w in self._stages[0]:
            sock = connect((w.host, w.port or 0))
            send_message(sock, LinkHello(SOURCE).to_wire())
            self._ingress.append(LinkSender(sock, self._links[(SOURCE, w.id)], self._ingress_broken, depth=2))
        for w in self.workers:
            self.ctx.resources.heartbeat(w.device)

    def warm(self, input_shape: tuple[int, ...], probes: int = PROBE_FRAMES) -> None:
        """Push throw-away frames (negative ids, one per replica path) through every stage and link
        before the stream: the first real frame then finds warm code paths, connections and buffers,
        as the workers' first inference at load time does for ONNX Runtime (measured: the first frame
        of a run paid 2-6 ms more than the first frame of later chunks). Then ``probes`` frames one at
        a time down each replica path through the empty pipeline: their median end-to-end time is
        that path's measured latency, path 0's is the measured ``L`` (the path the cost model's L
        follows). Frame ``i`` takes path ``i % c``; the ids ``j - c m`` (m >= 1) are negative and do."""
        c = self.paths
        zeros = np.zeros(input_shape, dtype=np.uint8)
        self._through([j - c for j in range(c)], zeros)
        times: list[list[float]] = [[] for _ in range(c)]
        for m in range(2, probes + 2):
            for j in range(c):
                result = self._through([j - c * m], zeros)[0]
                times[j].append(result.done_s - result.sent_s)
        self.path_latency_s = [float(np.median(t)) for t in times] if probes else []
        self.latency_s = self.path_latency_s[0] if self.path_latency_s else None

    @property
    def paths(self) -> int:
        return self.paths_of(self.placement)

    def expected_host_s(self, frames: int) -> float:
        """Host seconds ``frames`` sent together should take, by the prediction: waits for frames scale
        with it (an enclave at seed 000's speed, at the dilation its GPU helper needs, takes minutes)."""
        latency, period = self._predicted
        expected = (latency + max(frames - 1, 0) * period) * self.ctx.dilation
        return expected if math.isfinite(expected) else 0.0

    def _through(self, ids: list[int], pixels: np.ndarray) -> list[FrameResult]:
        """Send throw-away frames and wait until every one came out."""
        self.feed([(i, pixels) for i in ids], threading.Event())
        seen: dict[int, FrameResult] = {}
        allowed = self.ctx.start_timeout_s + 2 * self.expected_host_s(len(ids))
        deadline = time.monotonic() + allowed
        while len(seen) < len(ids):
            with contextlib.suppress(queue.Empty):
                result = self.results.get(timeout=0.1)
                seen[result.frame] = result
            self.check()
            if time.monotonic() > deadline:
                raise WorkerError(f"warm-up frames did not come out of the pipeline within {allowed:.0f} s")
        for i in ids:
            self._sent.pop(i, None)
        return [seen[i] for i in ids]

    def _address(self, src: str, dst: str, address: tuple[str, int]) -> tuple[str, int]:
        return self.ctx.route(src, dst, address) if self.ctx.route else address

    def _await(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.ctx.start_timeout_s
        while not done():
            try:
                worker_id, event = self.events.get(timeout=0.1)
            except queue.Empty:
                pass
            else:
                self._handle_setup(worker_id, event)
            for w in self.workers:
                if w.handle is not None and not w.handle.alive():
                    raise WorkerLost(
                        w.device, f"the worker for {w.device} exited before it was {what}{self._log_tail(w)}"
                    )
            if time.monotonic() > deadline:
                late = [w.device for w in self.workers if not (w.port if what == "ready" else w.wired)]
                raise WorkerLost(
                    late[0], f"workers on {', '.join(late)} not {what} after {self.ctx.start_timeout_s:.0f} s"
                )

    def _handle_setup(self, worker_id: str, event: Message) -> None:
        w = self._by_id.get(worker_id)
        if isinstance(event, Ready) and w:
            w.port, w.load_s, w.host = int(event.port), float(event.load_s), str(event.host or w.host)
        elif isinstance(event, Wired) and w:
            w.wired = True
        elif isinstance(event, Refused):
            raise WorkerError(event.message)  # the wrong code: no restart will make it the right one
        elif isinstance(event, ErrorReport):
            # another worker's death explains a failed set-up best (the reporter may just have lost its link)
            self._raise_for_dead(grace_s=0.5, besides=worker_id)
            raise WorkerLost(w.device, event.message) if w else WorkerError(event.message)
        elif isinstance(event, Closed) and w:
            raise WorkerLost(w.device, f"the worker for {w.device} hung up during set-up{self._log_tail(w)}")

    def _log_tail(self, w: _Worker) -> str:
        tail = log_tail(self.ctx.run_dir / "logs" / f"{w.id}.log")
        return f": {tail}" if tail else ""

    def _accept_control(self) -> None:
        while True:
            try:
                sock, _ = self._control.accept()
            except OSError:
                return
            threading.Thread(target=self._serve_worker, args=(sock,), daemon=True).start()

    def _serve_worker(self, sock: socket.socket) -> None:
        channel = Channel(sock)
        nonce = secrets.token_bytes(32)
        try:
            channel.send(Challenge(nonce))
            hello = channel.recv()
        except (OSError, SerdabError):
            channel.close()
            return
        w = self._by_id.get(hello.worker) if isinstance(hello, Hello) else None
        if w is None or not isinstance(hello, Hello) or not hmac.compare_digest(hello.token, self._token):
            channel.close()  # not one of ours
            return
        try:
            if w.enclave:
                channel.send(Configure(envelope=self._sealed_config(w, hello, nonce)))
            else:
                channel.send(Configure(config=w.config))
        except AttestationError as exc:
            message = f"the enclave for {w.device} is not the stage image it should run, refused: "
            self.events.put((w.id, Refused(f"{message}{type(exc).__name__}: {exc}")))
            channel.close()
            return
        except OSError:
            channel.close()
            return
        w.channel = channel
        while True:
            try:
                received = channel.recv()
            except (OSError, SerdabError):
                received = None
            if received is None:
                self.events.put((w.id, Closed()))
                return
            self.events.put((w.id, received))

    def _sealed_config(self, w: _Worker, hello: Hello, nonce: bytes) -> bytes:
        from cryptography.exceptions import UnsupportedAlgorithm

        from serdab.crypto import public_from_der, seal_envelope
        from serdab.errors import MalformedDocumentError
        from serdab.tee.evidence import EvidencePolicy, verify_evidence

        if w.artifact.image is None:
            raise MalformedDocumentError(f"{w.device} runs an untrusted stage: it has no image to attest to")
        if not isinstance(hello.document, bytes):
            raise MalformedDocumentError("the worker sent no attestation document")
        verified = verify_evidence(
            hello.document,  # the deployment's evidence kind ($SERDAB_TEE_EVIDENCE), as its backends attest
            EvidencePolicy.for_image(w.artifact.image.pcrs, allow_simulated=self.ctx.allow_simulated),
            nonce=nonce,
            simulated_roots=self.ctx.executor.simulated_roots(),
        )
        self.attested[w.device] = verified.summary()
        try:  # public_key is opaque to the verifier; the configuration is sealed to it, so it must be a key
            key = public_from_der(verified.public_key or b"")
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise MalformedDocumentError(
                "the attestation evidence's public_key is not a DER EC public key to seal the configuration to"
            ) from None
        return seal_envelope(cbor2.dumps(w.config.to_wire()), key, context=CONFIG_CONTEXT)

    def _accept_sink(self) -> None:
        last = {w.id for w in self._stages[-1]}
        while True:
            try:
                sock, _ = self._sink.accept()
            except OSError:
                return
            try:
                hello = decode(recv_message(sock, max_bytes=4096))
            except (OSError, WireError):
                sock.close()
                continue
            src = hello.src if isinstance(hello, LinkHello) else ""
            if src not in last:
                sock.close()
                continue
            spec = self._links[(src, SINK)]
            closed = self._sink_closed(src)
            self._receivers.append(LinkReceiver(sock, spec, self._result, self._integrity, closed))

    def _result(self, frame: int, payload: bytes) -> None:
        outputs, records = decode_payload(payload)
        self.results.put(
            FrameResult(frame, outputs, self._records(frame, records), self._sent.get(frame, 0.0), time.monotonic())
        )

    def _records(self, frame: int, records: np.ndarray) -> list[dict[str, Any]]:
        """Each stage's timing row, with the worker that handled the frame (replica ``frame % r``)."""
        named = []
        for k, group in enumerate(self._stages):
            w = group[frame % len(group)]
            row = {"stage": k, "device": w.device, "worker": w.id}
            named.append(row | {name: float(v) for name, v in zip(RECORD_FIELDS, records[k], strict=True)})
        return named

    def _integrity(self, exc: LinkIntegrityError) -> None:
        self.events.put((SINK, IntegrityReport(exc.kind, str(exc))))

    def _sink_closed(self, src: str) -> Callable[[str], None]:
        def closed(message: str) -> None:
            if not self._stopping:
                self.events.put((src, LinkClosed(message)))

        return closed

    def _ingress_broken(self, message: str) -> None:
        if not self._stopping:
            self.events.put((SOURCE, ErrorReport(message)))

    # --- streaming -------------------------------------------------------------------------------
    @property
    def frames_sent(self) -> int:
        """Stream frames sent to the first stage so far (warm-up and probe frames are not counted)."""
        return len(self._sent)

    def feed(self, frames: list[tuple[int, np.ndarray]], stop: threading.Event) -> None:
        """Send frames to the first stage (replica ``frame % r``), blocking on back-pressure."""
        for frame, tensor in frames:
            payload = encode_payload([tensor], new_records())
            sender = self._ingress[frame % len(self._ingress)]
            self._sent[frame] = time.monotonic()
            while not sender.put(frame, payload, timeout_s=0.2):
                if stop.is_set():
                    return

    def check(self) -> None:
        """Raise for anything that went wrong since the last call (lost worker, integrity event)."""
        while True:
            try:
                worker_id, event = self.events.get_nowait()
            except queue.Empty:
                break
            w = self._by_id.get(worker_id)
            device = w.device if w else worker_id
            if isinstance(event, Heartbeat):
                self.ctx.resources.heartbeat(device)
                self._count(worker_id, event)
            elif (
                isinstance(event, IntegrityReport)
                and event.kind in BLAME
                and w
                and getattr(w.config, BLAME[event.kind])
            ):
                # the enclave caught a wrong answer and answered nothing with it: the untrusted device's fault
                culprit = self._by_id[getattr(w.config, BLAME[event.kind])].device
                raise WorkerLost(culprit, f"{culprit} returned a wrong answer to a blinded layer: {event.message}")
            elif isinstance(event, IntegrityReport):
                raise LinkIntegrityError(event.kind, f"{event.message} (reported by {device})")
            elif isinstance(event, ErrorReport | LinkClosed):
                self._raise_for_dead(grace_s=0.5)  # a dead process explains a broken link best
                raise WorkerLost(device, event.message)
            elif isinstance(event, Closed):
                self._raise_for_dead(grace_s=0.5)
                raise WorkerLost(device, f"the worker for {device} hung up")
        self._raise_for_dead()
        silent = [d for d in self.ctx.resources.silent() if d in {w.device for w in self.workers}]
        if silent:
            raise WorkerLost(silent[0], f"no heartbeat from {silent[0]} for {self.ctx.resources.lost_after_s:.0f} s")

    def _count(self, worker_id: str, beat: Heartbeat) -> None:
        w = self._by_id.get(worker_id)
        if w is not None:  # the heartbeat lists the worker's outbound links in its configuration's order
            for spec, nbytes, frames in zip(w.config.outbound, beat.link_bytes, beat.link_frames, strict=False):
                self._traffic[(worker_id, spec.dst)] = (int(nbytes), int(frames))

    def traffic(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(sender worker, receiver worker) -> (bytes, frames) each link has carried, framing included:
        the source's links counted here, the workers' as their heartbeats (and last words) said."""
        ingress = {
            (SOURCE, w.id): (s.bytes_sent, s.frames_sent) for w, s in zip(self._stages[0], self._ingress, strict=False)
        }
        return ingress | self._traffic

    def _last_words(self, timeout_s: float) -> None:
        waiting = {w.id for w in self.workers if w.channel is not None and w.handle is not None and w.handle.alive()}
        deadline = time.monotonic() + timeout_s
        while waiting and time.monotonic() < deadline:
            try:
                worker_id, event = self.events.get(timeout=0.05)
            except queue.Empty:
                continue
            if isinstance(event, Heartbeat):
                self._count(worker_id, event)
            elif isinstance(event, Closed):
                waiting.discard(worker_id)

    def _raise_for_dead(self, grace_s: float = 0.0, besides: str | None = None) -> None:
        deadline = time.monotonic() + grace_s
        while True:
            for w in self.workers:
                if w.id != besides and w.handle is not None and not w.handle.alive():
                    raise WorkerLost(w.device, f"the worker for {w.device} (pid {w.handle.pid}) exited")
            if time.monotonic() >= deadline:
                return
            time.sleep(0.02)

    def stop(self, last_words_s: float = 1.0) -> None:
        """Stop every worker; the live ones first say what their links carried (``last_words_s`` at most)."""
        self._stopping = True
        for w in self.workers:
            if w.channel is not None:
                with contextlib.suppress(OSError):
                    w.channel.send(Stop())
        self._last_words(last_words_s)
        for sender in self._ingress:
            sender.close()
        for w in self.workers:
            if w.handle is not None:
                self.ctx.executor.stop(w.handle)
            if w.channel is not None:
                w.channel.close()
            self.ctx.resources.forget(w.device)
        for sock in (self._control, self._sink):
            sock.close()
        for receiver in self._receivers:
            with contextlib.suppress(OSError):
                receiver.sock.close()
