"""The Nitro Security Module, simulated: what an enclave asks its host for.

On Nitro an enclave gets attestation documents from /dev/nsm, a device the enclave cannot
forge. Here the host side (``NsmDevice``, in the process that launched the enclave) holds the
measured PCRs, the host keys and the sealing secret; the enclave process reaches it only
through a Unix socket (``NsmClient``), so it can ask for documents, extend PCR16+ and seal, but
never change its measurement or read the keys. Messages are length-prefixed CBOR maps.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import socketserver
import struct
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cbor2

from serdab.crypto import cert_der, issue_certificate, new_key
from serdab.errors import SealingError, TeeError
from serdab.tee.document import AttestationDocument, sign_document
from serdab.tee.epc import EpcMeter, EpcStats
from serdab.tee.host import HostIdentity
from serdab.tee.image import PCR_COUNT, extend
from serdab.tee.sealing import seal, unseal

if TYPE_CHECKING:
    from serdab.tee.snp_firmware import SimulatedSnpFirmware

__all__ = ["NSM_SOCKET_ENV", "NsmClient", "NsmDevice", "NsmServer"]

NSM_SOCKET_ENV = "SERDAB_NSM_SOCKET"
_MAX_MESSAGE = 64 * 2**20
FIRST_EXTENDABLE = 16


class NsmDevice:
    """Host-side NSM of one enclave."""

    def __init__(
        self,
        host: HostIdentity,
        module_id: str,
        pcrs: dict[int, bytes],
        debug: bool,
        epc: EpcMeter | None = None,
        snp: SimulatedSnpFirmware | None = None,
    ) -> None:
        self.host = host
        self.snp = snp  # attest in the SEV-SNP report format (through this simulated chip) instead of Nitro's
        self.module_id = module_id
        self.debug = debug
        self._measured = dict(pcrs)  # what sealing binds to
        self._pcrs = dict(pcrs)  # what documents report (PCR16+ may be extended)
        self.epc = epc or EpcMeter()
        self.ready = threading.Event()
        self.ready_info: dict[str, Any] = {}
        self._lock = threading.Lock()

    def describe(self) -> dict[int, bytes]:
        with self._lock:
            return {i: bytes(48) for i in range(PCR_COUNT)} if self.debug else dict(self._pcrs)

    def extend(self, index: int, data: bytes) -> bytes:
        if not FIRST_EXTENDABLE <= index < PCR_COUNT:
            raise TeeError(f"PCR{index} is locked; only PCR{FIRST_EXTENDABLE}..{PCR_COUNT - 1} can be extended")
        with self._lock:
            self._pcrs[index] = extend(self._pcrs[index], data)
            return self._pcrs[index]

    def attest(
        self, nonce: bytes | None = None, user_data: bytes | None = None, public_key: bytes | None = None
    ) -> bytes:
        """A fresh document signed by a per-document key certified by the host CA (as Nitro's leaf certs),
        or, for an SNP enclave, a report binding the three fields in an evidence bundle."""
        if self.snp is not None:
            from serdab.tee.evidence import SnpEvidence, binding
            from serdab.tee.snp_firmware import launch_measurement

            bound = binding(nonce, user_data, public_key)
            report = self.snp.report(launch_measurement(self._measured), bound, debug=self.debug)
            return SnpEvidence(report, self.snp.certificates(), nonce, user_data, public_key).encode()
        key = new_key()
        now = dt.datetime.now(dt.UTC)
        leaf = issue_certificate(
            self.host.host_key,
            self.host.host_cert,
            key.public_key(),
            self.module_id,
            organisation="Serdab simulated TEE (NOT A TEE)",
            days=1,
            now=now,
        )
        document = AttestationDocument(
            module_id=self.module_id,
            timestamp_ms=int(now.timestamp() * 1000),
            pcrs=self.describe(),
            certificate=cert_der(leaf),
            cabundle=[cert_der(self.host.root_cert), cert_der(self.host.host_cert)],
            public_key=public_key,
            user_data=user_data,
            nonce=nonce,
        )
        return sign_document(document, key)

    def seal(self, data: bytes, policy: str = "measurement") -> bytes:
        return seal(self.host.sealing_secret, self._measured, data, policy)

    def unseal(self, blob: bytes) -> bytes:
        return unseal(self.host.sealing_secret, self._measured, blob)

    def resident(self, nbytes: int) -> None:
        self.epc.set_resident(self.module_id, nbytes)

    def access(self) -> float:
        return self.epc.access(self.module_id)

    def stats(self) -> EpcStats:
        return self.epc.stats()

    def mark_ready(self, info: dict[str, Any]) -> None:
        self.ready_info = dict(info)
        self.ready.set()

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "attest":
            return {"document": self.attest(request.get("nonce"), request.get("user_data"), request.get("public_key"))}
        if op == "describe":
            return {"pcrs": self.describe()}
        if op == "extend":
            return {"pcr": self.extend(int(request["index"]), request["data"])}
        if op == "seal":
            return {"blob": self.seal(request["data"], request.get("policy", "measurement"))}
        if op == "unseal":
            return {"data": self.unseal(request["blob"])}
        if op == "resident":
            self.resident(int(request["bytes"]))
            return {}
        if op == "access":
            return {"slowdown": self.access()}
        if op == "stats":
            s = self.stats()
            return {
                "budget": s.budget_bytes,
                "resident": s.resident_bytes,
                "page_ins": s.page_ins,
                "page_outs": s.page_outs,
                "slowdown": s.slowdown,
                "emulated": True,
            }
        if op == "ready":
            self.mark_ready(request.get("info") or {})
            return {}
        raise TeeError(f"unknown NSM operation {op!r}")


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    data = cbor2.dumps(message)
    sock.sendall(struct.pack(">I", len(data)) + data)


def _receive(sock: socket.socket) -> dict[str, Any] | None:
    head = _read_exact(sock, 4)
    if head is None:
        return None
    (size,) = struct.unpack(">I", head)
    if size > _MAX_MESSAGE:
        raise TeeError(f"NSM message of {size} bytes is too large")
    body = _read_exact(sock, size)
    if body is None:
        raise TeeError("NSM connection closed mid-message")
    return cbor2.loads(body)


def _read_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        device: NsmDevice = self.server.device  # type: ignore[attr-defined]
        while True:
            try:
                request = _receive(self.request)
            except (TeeError, ValueError, cbor2.CBORDecodeError, OSError):
                return
            if request is None:
                return
            try:
                reply = {"ok": True, **device.handle(request)}
            except (TeeError, SealingError, KeyError, ValueError, TypeError) as exc:
                reply = {"ok": False, "error": str(exc), "kind": type(exc).__name__}
            _send(self.request, reply)


class NsmServer(socketserver.ThreadingUnixStreamServer):
    """Serves one enclave's NSM on a Unix socket (mode 0600) from a daemon thread."""

    daemon_threads = True

    def __init__(self, path: Path, device: NsmDevice) -> None:
        self.device = device
        super().__init__(str(path), _Handler)
        os.chmod(path, 0o600)
        self._thread = threading.Thread(target=self.serve_forever, name=f"nsm-{device.module_id}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        Path(self.server_address).unlink(missing_ok=True)  # type: ignore[arg-type]


class NsmClient:
    """The enclave's handle on its NSM (``SERDAB_NSM_SOCKET``)."""

    def __init__(self, path: str | Path, timeout_s: float = 30.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise TeeError(f"no NSM at {path}: is this process running inside an enclave?") from None
                time.sleep(0.05)
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> NsmClient:
        path = os.environ.get(NSM_SOCKET_ENV)
        if not path:
            raise TeeError(f"{NSM_SOCKET_ENV} is not set: this process was not launched as an enclave")
        return cls(path)

    def _call(self, **request: Any) -> dict[str, Any]:
        with self._lock:
            _send(self._sock, request)
            reply = _receive(self._sock)
        if reply is None:
            raise TeeError("the NSM closed the connection")
        if not reply.get("ok"):
            kind = SealingError if reply.get("kind") == "SealingError" else TeeError
            raise kind(reply.get("error", "NSM error"))
        return reply

    def attest(
        self, nonce: bytes | None = None, user_data: bytes | None = None, public_key: bytes | None = None
    ) -> bytes:
        return self._call(op="attest", nonce=nonce, user_data=user_data, public_key=public_key)["document"]

    def describe(self) -> dict[int, bytes]:
        return self._call(op="describe")["pcrs"]

    def extend(self, index: int, data: bytes) -> bytes:
        return self._call(op="extend", index=index, data=data)["pcr"]

    def seal(self, data: bytes, policy: str = "measurement") -> bytes:
        return self._call(op="seal", data=data, policy=policy)["blob"]

    def unseal(self, blob: bytes) -> bytes:
        return self._call(op="unseal", blob=blob)["data"]

    def resident(self, nbytes: int) -> None:
        self._call(op="resident", bytes=nbytes)

    def access(self) -> float:
        return self._call(op="access")["slowdown"]

    def stats(self) -> dict[str, Any]:
        return self._call(op="stats")

    def ready(self, **info: Any) -> None:
        """Tell the host the enclave is serving (e.g. ``port=...``)."""
        self._call(op="ready", info=info)

    def close(self) -> None:
        self._sock.close()
