"""The dataflow engine (seed 000 Fig. 2): one long-running worker process per device, running one stage.

Started by an executor as ``python -m serdab.runtime.engine --control HOST:PORT --worker ID`` (an
untrusted device) or as the entrypoint of a measured stage image inside an enclave. It dials the
application manager, proves what it is (an enclave answers the manager's nonce with an
attestation document carrying a fresh public key; the manager sends the configuration, link
keys included, in an envelope to that key), then:

1. loads its stage into ONNX Runtime: an enclave asks the key service for its stage key (the
   KMS attests the enclave's image first) and decrypts the weights only in its own memory;
2. listens for its upstream links, dials its downstream links (``serdab.runtime.link``);
3. runs frames: open, infer, pad to the device's emulated time, seal, send to replica
   ``frame % r`` of the next stage; reports heartbeats and any integrity event to the manager.

A blinded stage (issue 28) runs its quantised blocks with ``serdab.blind``: every linear layer's
masked input goes to its helper over their own link and the answer comes back on another; a wrong
answer (Freivalds) is reported as "wrong-answer" and the frame is dropped, never sent on. The
helper (``role`` "helper") is an untrusted worker that only answers ``W x mod P`` requests.

Loads only numpy, onnxruntime, cryptography and cbor2 (and httpx in an enclave, for the KMS).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import numpy as np

from serdab.errors import SerdabError
from serdab.framing import decode_payload, encode_payload
from serdab.kms.lifecycle import fetch_model
from serdab.runtime.link import LinkIntegrityError, LinkReceiver, LinkSender
from serdab.runtime.protocol import (
    CONFIG_CONTEXT,
    Challenge,
    Channel,
    Configure,
    ErrorReport,
    Heartbeat,
    Hello,
    IntegrityReport,
    LinkHello,
    Message,
    Ready,
    Stop,
    Wire,
    Wired,
    WorkerConfig,
    decode,
)
from serdab.runtime.wire import connect, listen, recv_message, send_message, tune

__all__ = ["TOKEN_ENV", "enclave_main", "main"]

TOKEN_ENV = "SERDAB_WORKER_TOKEN"
HEARTBEAT_S = 0.5
SWITCH_INTERVAL_S = 0.0005


class _Worker:
    def __init__(self, control: Channel, config: WorkerConfig, nsm: Any | None, local_stage_file: str | None) -> None:
        self.control = control
        self.config = config
        self.nsm = nsm
        self.local_stage_file = local_stage_file  # an executor on another node shipped the stage file here
        self.inputs: queue.Queue[tuple[int, bytes, float]] = queue.Queue(maxsize=config.queue_depth)
        self.frames = 0
        self.busy_s = 0.0
        self.stopping = threading.Event()
        self.senders: list[LinkSender] = []
        self.failed: str | None = None  # why the compute loop ended, if it did
        self.frame: int | None = None  # the frame being computed
        self._inbound = {spec.src: spec for spec in config.inbound}
        self._assistants = [a for a in (config.helper, config.wr) if a]
        self._receivers: list[LinkReceiver] = []
        self.frame_senders: list[LinkSender] = []  # the next stage's replicas (or the sink), frame % r
        # a blinded stage: masked inputs to its helper (and masks to its W r device), their answers
        self.assistant_senders: dict[str, LinkSender] = {}
        self.replies: dict[str, queue.Queue[tuple[int, bytes]]] = {a: queue.Queue() for a in self._assistants}
        self.runner: Any = None  # a blinded stage's serdab.blind.blinded.BlindedRunner
        self._blind_shapes: dict[int, tuple[int, ...]] = {}  # linear layer -> the answer's shape
        self._requests = dict.fromkeys(self._assistants, 0)

    # --- set-up ---------------------------------------------------------------------------------
    def load(self) -> float:
        started = time.monotonic()
        cfg = self.config
        if cfg.role != "stage":
            self._load_helper(Path(self.local_stage_file or cfg.stage_file).read_bytes())
            return time.monotonic() - started
        if self.nsm is not None:
            if cfg.kms is None:
                raise SerdabError(f"{cfg.device}: an enclave stage needs the key service's coordinates")
            model, _ = fetch_model(cfg.kms, self.nsm, cfg.stage_file)
            self.nsm.resident(cfg.memory_bytes)
        else:
            model = Path(self.local_stage_file or cfg.stage_file).read_bytes()
        if cfg.blind is not None:
            self._load_blinded(model)
            return time.monotonic() - started
        from serdab.onnxrt import make_session  # loads ONNX Runtime: only once the stage is known

        self.session = make_session(model, cfg.threads)
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        # one inference at deploy time: ONNX Runtime allocates lazily, the first frame would pay for it
        shape = [d if isinstance(d, int) else 1 for d in first.shape]
        self.session.run(None, {first.name: np.zeros(shape, dtype=np.float32)})
        return time.monotonic() - started

    def _quantised(self, model: bytes) -> tuple[Any, tuple[int, ...]]:
        import onnx

        from serdab.blind.quantize import quantize_model

        proto = onnx.load_from_string(model)
        first = proto.graph.input[0]
        self.input_name = first.name
        shape = tuple(max(1, d.dim_value) for d in first.type.tensor_type.shape.dim)
        return quantize_model(proto, f"stage {self.config.stage}"), shape

    def _load_blinded(self, model: bytes) -> None:
        """The enclave's side: the quantised stage, fresh masks (a new key: every start is a new epoch),
        and in the pool mode W r of the frames ahead, sealed outside."""
        from serdab.blind.blinded import BlindedRunner

        blind = self.config.blind
        assert blind is not None
        quantised, shape = self._quantised(model)
        shapes = quantised.linear_shapes(shape)
        self._blind_shapes = {i: out for i, (_, out) in enumerate(shapes)}
        helper, wr = self.config.helper, self.config.wr
        assert helper is not None
        self.runner = BlindedRunner(
            quantised,
            lambda index, masked: self._ask(helper, index, masked),
            mode=blind.mode,
            integrity=blind.integrity,
            helper=(lambda index, r: self._ask(wr, index, r)) if wr else None,
        )
        if blind.mode == "pool":
            self.runner.precompute(range(blind.pool_from, blind.pool_from + blind.pool_frames), shape)

    def _load_helper(self, model: bytes) -> None:
        """The untrusted helper's side: the stage's integer weights (visible to it, as in Slalom), and each
        layer's share of the stage's multiply-accumulates, to pad each answer to its emulated time."""
        quantised, shape = self._quantised(model)
        self.helper_layers = quantised.linear_layers
        macs = [
            int(np.prod(out)) * layer.fan_in
            for layer, (_, out) in zip(self.helper_layers, quantised.linear_shapes(shape), strict=True)
        ]
        total = max(sum(macs), 1)
        self.helper_share = [m / total for m in macs]

    def _ask(self, assistant: str | None, index: int, values: np.ndarray) -> np.ndarray:
        """One blinded layer's round trip with an assistant: the masked input (or, to the W r device, the
        mask) out, ``W v mod P`` back. Each assistant has its own links, queue and request numbers."""
        from serdab.blind.blinded import field_payload, read_field_payload

        assert assistant is not None and self.frame is not None
        kind = "wrong-answer" if assistant == self.config.helper else "wrong-precomputation"
        self._requests[assistant] += 1
        request = self._requests[assistant]
        self.assistant_senders[assistant].put(request, field_payload(index, values, self.frame))
        waited = 0.0
        while True:
            try:
                seq, payload = self.replies[assistant].get(timeout=0.5)
                break
            except queue.Empty:
                waited += 0.5
                if self.stopping.is_set() or waited > 120.0:
                    raise SerdabError(
                        f"{assistant} did not answer blinded layer {index} of frame {self.frame}"
                    ) from None
        try:
            layer, z, _ = read_field_payload(payload)
        except ValueError as exc:
            raise LinkIntegrityError(kind, f"{assistant}'s answer is malformed: {exc}") from None
        if seq != request or layer != index or z.shape != self._blind_shapes.get(index):
            raise LinkIntegrityError(kind, f"{assistant} answered request {seq} layer {layer} for {request}/{index}")
        return z

    def _reply(self, src: str) -> Callable[[int, bytes], None]:
        return lambda frame, payload: self.replies[src].put((frame, payload))

    def listen(self, host: str) -> socket.socket:
        listener = listen(host)
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="accept").start()
        return listener

    def _accept(self, listener: socket.socket) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            tune(sock)
            try:
                hello = decode(recv_message(sock, max_bytes=4096))
            except (OSError, SerdabError):
                sock.close()
                continue
            spec = self._inbound.get(hello.src) if isinstance(hello, LinkHello) else None
            if spec is None:
                sock.close()  # not one of our upstreams; its frames would not authenticate anyway
                continue
            on_frame = self._reply(spec.src) if spec.src in self.replies else self._enqueue
            self._receivers.append(LinkReceiver(sock, spec, on_frame, self._integrity, on_closed=None))

    def wire(self, downstream: tuple[tuple[str, int], ...]) -> None:
        for spec, address in zip(self.config.outbound, downstream, strict=True):
            sock = connect(address)
            send_message(sock, LinkHello(spec.src).to_wire())
            sender = LinkSender(sock, spec, self._link_broken, depth=self.config.queue_depth)
            self.senders.append(sender)  # every link, in the configuration's order: the heartbeat's byte counts
            if spec.dst in self.replies:
                self.assistant_senders[spec.dst] = sender
            else:
                self.frame_senders.append(sender)

    # --- events ---------------------------------------------------------------------------------
    def _enqueue(self, frame: int, payload: bytes) -> None:
        self.inputs.put((frame, payload, time.monotonic()))

    def _integrity(self, exc: LinkIntegrityError) -> None:
        self._report(IntegrityReport(exc.kind, str(exc)))

    def _link_broken(self, message: str) -> None:
        self._report(ErrorReport(message))

    def _report(self, message: Message) -> None:
        with contextlib.suppress(OSError):
            self.control.send(message)

    # --- the stream -----------------------------------------------------------------------------
    def compute(self) -> None:
        """The stage's loop. A frame it cannot compute is reported at once (the run treats it as this
        device's fault); the heartbeat stops with it, so a dead loop never looks alive."""
        try:
            self._compute()
        except Exception as exc:  # ONNX Runtime and numpy raise many kinds; the manager needs one line
            where = f" on frame {self.frame}" if self.frame is not None else ""
            self.failed = f"{self.config.device}: stage {self.config.stage} failed{where}: {type(exc).__name__}: {exc}"
            self._report(ErrorReport(self.failed))

    def _arrivals(self) -> Iterator[tuple[int, bytes, float]]:
        """What the upstream links delivered (frame or request id, payload, arrival time), until stopped."""
        while not self.stopping.is_set():
            try:
                yield self.inputs.get(timeout=0.2)
            except queue.Empty:
                continue

    def _compute(self) -> None:
        if self.config.role != "stage":
            self._serve_helper()
            return
        cfg = self.config
        native, dilation, emulated_s, norm = cfg.native, cfg.dilation, cfg.compute_emulated_s, cfg.normalise
        replicas = len(self.frame_senders)
        for frame, payload, arrived in self._arrivals():
            started = time.monotonic()
            self.frame = frame
            arrays, records = decode_payload(payload)
            x = norm.apply(arrays[0]) if norm is not None and arrays[0].dtype == np.uint8 else arrays[0]
            if self.runner is None:
                outputs = self.session.run(None, {self.input_name: x})
            else:
                try:
                    outputs = [self._blinded(frame, x)]
                except LinkIntegrityError as exc:  # nothing computed from a wrong answer leaves the enclave
                    self._integrity(exc)
                    continue
            host_s = time.monotonic() - started
            target = 0.0
            if not native:
                factor = 1.0
                for f, first in cfg.slowdowns:
                    if frame >= first:
                        factor *= f
                target = emulated_s * dilation * factor
            # the output is encoded inside the padded time (a device's stage time includes handing its
            # result on), so the pad ends when the frame can leave; the record says the padded time
            records[cfg.stage] = (1000 * (started - arrived), 1000 * host_s, 1000 * max(target, host_s) / dilation)
            out = encode_payload(outputs, records)
            elapsed = time.monotonic() - started
            if elapsed < target:
                time.sleep(target - elapsed)
            elif not native and elapsed > target:  # over budget: report what it really took
                records[cfg.stage, 2] = 1000 * elapsed / dilation
                out = encode_payload(outputs, records)
            self.busy_s += time.monotonic() - started
            self.frames += 1
            self.frame_senders[frame % replicas].put(frame, out)

    def _blinded(self, frame: int, x: np.ndarray) -> np.ndarray:
        """The quantised stage, blinded; its output back to floats for the next stage (exact: an integer
        at scale 2^8 below 2^24 is a float32)."""
        from serdab.blind.kernels import dequantise
        from serdab.blind.quantize import ACT_BITS

        misses = self.runner.pool_misses
        ints = self.runner.run(frame, x)
        if self.runner.pool_misses and not misses:  # said once, in the worker's log
            print(
                f"{self.config.device}: the W r pool has no frame {frame}: computing W r in-stream from here "
                "(slower than planned; the pool holds what fits in its budget)",
                file=sys.stderr,
                flush=True,
            )
        return dequantise(ints, ACT_BITS)

    def _serve_helper(self) -> None:
        """Answer masked linear layers: ``W (x + r) mod P``, padded to the layer's share of the helper's
        emulated time; with ``tamper_from`` (fault injection) one element is off by one from that frame."""
        from serdab.blind.blinded import field_payload, read_field_payload
        from serdab.blind.field import P

        cfg = self.config
        blind = cfg.blind
        assert blind is not None
        for request, payload, _ in self._arrivals():
            started = time.monotonic()
            layer, masked, frame = read_field_payload(payload)
            self.frame = frame
            z = np.mod(self.helper_layers[layer].linear(masked), P)
            if blind.tamper_from is not None and frame >= blind.tamper_from:
                z.flat[0] = (z.flat[0] + 1) % P
            out = field_payload(layer, z, frame)
            if not cfg.native:
                target = blind.helper_s * cfg.dilation * self.helper_share[layer]
                if (elapsed := time.monotonic() - started) < target:
                    time.sleep(target - elapsed)
            self.busy_s += time.monotonic() - started
            self.frames += 1
            self.senders[0].put(request, out)

    def heartbeat(self) -> None:
        while not self.stopping.wait(HEARTBEAT_S) and self.failed is None:
            self._report(self.status())

    def status(self) -> Heartbeat:
        return Heartbeat(
            self.frames,
            self.busy_s,
            [s.busy_s for s in self.senders],
            [s.bytes_sent for s in self.senders],
            [s.frames_sent for s in self.senders],
        )


def run(control_address: tuple[str, int], worker_id: str, nsm: Any | None, stage_file: str | None = None) -> int:
    # receive, compute and send threads hand frames on: a thread waiting for the GIL should not
    # wait Python's default 5 ms, which would add up to a frame's latency at every hop
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    sock = connect(control_address)
    control = Channel(sock)
    challenge = control.recv()
    if not isinstance(challenge, Challenge):
        return 2
    key, document = None, None
    if nsm is not None:
        from serdab.crypto import new_key, public_der

        key = new_key()
        document = nsm.attest(nonce=challenge.nonce, public_key=public_der(key.public_key()))
    control.send(Hello(worker_id, os.environ.get(TOKEN_ENV, ""), os.getpid(), document))
    reply = control.recv()
    if not isinstance(reply, Configure):
        return 2
    if key is not None and reply.envelope is not None:
        from serdab.crypto import open_envelope

        config = WorkerConfig.from_wire(cbor2.loads(open_envelope(reply.envelope, key, context=CONFIG_CONTEXT)))
    elif key is None and reply.config is not None:
        config = reply.config
    else:
        return 2  # an enclave takes its configuration sealed, an untrusted worker in the clear
    worker = _Worker(control, config, nsm, stage_file)
    host = sock.getsockname()[0]  # upstream links reach us the way we reach the manager
    try:
        load_s = worker.load()
        listener = worker.listen(host)
    except (SerdabError, OSError) as exc:
        control.send(ErrorReport(f"{config.device}: {exc}"))
        return 2
    except Exception as exc:  # an ONNX Runtime load failure names the stage, not a traceback
        control.send(ErrorReport(f"{config.device}: cannot load stage: {type(exc).__name__}: {exc}"))
        return 2
    control.send(Ready(host, listener.getsockname()[1], load_s))
    try:
        wiring = control.recv()
    except (OSError, SerdabError):
        wiring = None
    if not isinstance(wiring, Wire):
        return 0
    try:
        worker.wire(wiring.downstream)
    except OSError as exc:
        control.send(ErrorReport(f"{config.device}: cannot reach the next stage: {exc}"))
        return 2
    threading.Thread(target=worker.compute, daemon=True, name="compute").start()
    threading.Thread(target=worker.heartbeat, daemon=True, name="heartbeat").start()
    control.send(Wired())
    try:
        while (message := control.recv()) is not None and not isinstance(message, Stop):
            pass
    except (OSError, SerdabError):
        message = None
    worker.stopping.set()
    if isinstance(message, Stop):  # the last word: what every link carried, for the run's byte accounting
        worker._report(worker.status())
    listener.close()
    return 0


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="serdab-stage-worker")
    parser.add_argument("--control", required=True, help="HOST:PORT of the application manager")
    parser.add_argument("--worker", required=True)
    parser.add_argument("--stage-file", help="this node's copy of an untrusted stage's ONNX file")
    args = parser.parse_args(argv)
    host, _, port = args.control.rpartition(":")
    args.address = (host, int(port))
    return args


def main(argv: list[str] | None = None) -> int:
    """An untrusted device's worker: a plain process."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    return run(args.address, args.worker, None, args.stage_file)


def enclave_main(argv: list[str]) -> int:
    """A trusted device's worker: the entrypoint of a measured stage image, talking to its NSM."""
    from serdab.tee.nsm import NsmClient

    args = _parse(argv)
    return run(args.address, args.worker, NsmClient.from_env())


if __name__ == "__main__":
    sys.exit(main())
