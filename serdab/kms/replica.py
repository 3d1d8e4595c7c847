"""Start one key-service replica in an enclave and supervise it: what `serdab kms start` and a run's
embedded key service share (the CLI only prints)."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serdab.errors import KmsError
from serdab.kms.image import kms_image
from serdab.tee.backend import Enclave, TeeBackend
from serdab.tee.image import measure_image

__all__ = ["KmsReplica", "start_kms_replica"]

ADMIN_TOKEN_ENV = "SERDAB_KMS_ADMIN_TOKEN"


@dataclass
class KmsReplica:
    backend: TeeBackend
    enclave: Enclave
    url: str
    info: dict[str, Any]
    pcrs: dict[int, bytes]
    log_path: Path
    _stopped: threading.Event = field(default_factory=threading.Event)

    def alive(self) -> bool:
        return self.enclave.alive()

    def stop(self) -> None:
        """Terminate the enclave (safe to call twice)."""
        self._stopped.set()
        self.backend.terminate(self.enclave)

    def serve_until_stopped(self, poll_s: float = 0.5) -> None:
        """Block until SIGTERM, Ctrl-C or the enclave's own exit, then stop it; KmsError if it exited by itself."""
        previous = signal.signal(signal.SIGTERM, lambda *_: self._stopped.set())
        try:
            while not self._stopped.is_set() and self.enclave.alive():
                self._stopped.wait(poll_s)
        except KeyboardInterrupt:
            self._stopped.set()
        finally:
            signal.signal(signal.SIGTERM, previous)
            exited = not self.enclave.alive() and not self._stopped.is_set()
            self.stop()
        if exited:
            raise KmsError(f"the key service enclave exited; see {self.log_path}")


def start_kms_replica(
    backend: TeeBackend,
    images: Path,
    *,
    store: str,
    data: Path,
    admin_token: str,
    host: str = "127.0.0.1",
    port: int = 0,
    peers: list[str] | None = None,
    allow_simulated: bool = False,
    timeout_s: float = 60.0,
) -> KmsReplica:
    """Launch the KMS image (built for this runtime under ``images``) and wait until it serves."""
    image = kms_image(images)
    args = ["--store", store, "--data", str(data), "--host", host, "--port", str(port)]
    args += [f"--peer={p}" for p in peers or []]
    if allow_simulated:
        args.append("--allow-simulated")
    data.mkdir(parents=True, exist_ok=True)
    log = data.parent / f"{data.name}.log"
    enclave = backend.launch(image, args, env={ADMIN_TOKEN_ENV: admin_token}, log_path=log)
    try:
        info = backend.wait_ready(enclave, timeout_s)
    except BaseException:
        backend.terminate(enclave)
        raise
    return KmsReplica(backend, enclave, f"https://{host}:{info['port']}", info, measure_image(image), log)
