"""The simulated TEE backend: an enclave is a separate OS process started from a measured image.

Honest about what it is: documents chain to CN=SIMULATED-NOT-A-TEE and carry module ids that
start with "sim-"; memory limits and paging are emulated (``EpcMeter``); the process is not
isolated from the host's root user. What is real: the measurement of the image, the crypto, the
document format and the separation between the enclave process and the keys it cannot read.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from serdab.errors import EnclaveImageError, TeeError
from serdab.tee.backend import Enclave, TeeBackend, stop_process
from serdab.tee.epc import EpcMeter
from serdab.tee.host import HostIdentity
from serdab.tee.image import load_manifest, measure_image, runtime_lock
from serdab.tee.nsm import NSM_SOCKET_ENV, NsmDevice, NsmServer

__all__ = ["SimulatedBackend"]

_counter = itertools.count()


class SimulatedBackend(TeeBackend):
    name = "simulated"

    def __init__(self, host: HostIdentity | None = None, epc: EpcMeter | None = None) -> None:
        self.host = host or HostIdentity.load_or_create()
        self.epc = epc or EpcMeter()
        self._devices: dict[str, NsmDevice] = {}
        self._servers: dict[str, NsmServer] = {}
        self._sockets = Path(tempfile.mkdtemp(prefix="serdab-nsm-"))

    def launch(
        self,
        image: Path,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> Enclave:
        image = Path(image).resolve()
        manifest = load_manifest(image)
        pcrs = measure_image(image)
        if manifest.runtime_lock != hashlib.sha384(runtime_lock().encode()).hexdigest():
            raise EnclaveImageError(
                f"{image} was built for another runtime (Python, Serdab source or packages differ): rebuild it"
            )
        enclave_id = f"sim-{platform.node() or 'host'}-{os.getpid()}-enc{next(_counter):04d}"
        device = NsmDevice(self.host, enclave_id, pcrs, manifest.debug, self.epc)
        socket_path = self._sockets / f"{enclave_id}.sock"
        server = NsmServer(socket_path, device)
        child_env = {**os.environ, **(env or {}), NSM_SOCKET_ENV: str(socket_path), "SERDAB_ENCLAVE_ID": enclave_id}
        log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "serdab.tee.runner", str(image), *(args or [])],
                env=child_env,
                cwd=image,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        except OSError as exc:
            server.close()
            raise TeeError(f"cannot start enclave process: {exc}") from None
        finally:
            if log_path:
                log.close()  # type: ignore[union-attr]
        self._devices[enclave_id] = device
        self._servers[enclave_id] = server
        return Enclave(enclave_id, self.name, image, device.describe(), manifest.debug, process, log_path)

    def simulated_roots(self) -> list[Any]:
        return [self.host.root_cert]

    def nsm(self, enclave: Enclave) -> NsmDevice:
        try:
            return self._devices[enclave.id]
        except KeyError:
            raise TeeError(f"enclave {enclave.id} is not running on this backend") from None

    def wait_ready(self, enclave: Enclave, timeout_s: float = 60.0) -> dict[str, Any]:
        """Block until the enclave calls ``NsmClient.ready``; its info (e.g. port). Fails if it exits first."""
        device = self.nsm(enclave)
        waited = 0.0
        while not device.ready.wait(0.1):
            waited += 0.1
            if not enclave.alive():
                tail = enclave.log_path.read_text()[-800:] if enclave.log_path and enclave.log_path.exists() else ""
                code = enclave.process.returncode if enclave.process else None
                raise TeeError(
                    f"enclave {enclave.id} exited with code {code} before it was "
                    f"ready{': ' + tail.strip().splitlines()[-1] if tail.strip() else ''}"
                )
            if waited > timeout_s:
                raise TeeError(f"enclave {enclave.id} not ready after {timeout_s:.0f} s")
        enclave.info.update(device.ready_info)
        return device.ready_info

    def terminate(self, enclave: Enclave) -> None:
        stop_process(enclave.process)
        server = self._servers.pop(enclave.id, None)
        if server is not None:
            server.close()
        device = self._devices.pop(enclave.id, None)
        if device is not None:
            device.resident(0)

    def close(self) -> None:
        for enclave_id in list(self._servers):
            self._servers.pop(enclave_id).close()
