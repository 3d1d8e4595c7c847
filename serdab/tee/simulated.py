"""The simulated TEE backend: an enclave is a separate OS process started from a measured image.

Honest about what it is: documents chain to CN=SIMULATED-NOT-A-TEE and carry module ids that
start with "sim-" (or, with ``evidence="amd-sev-snp"``, SEV-SNP reports chain to a simulated ARK,
``serdab.tee.snp_firmware``); memory limits and paging are emulated (``EpcMeter``); the process is not
isolated from the host's root user. What is real: the measurement of the image, the crypto, the
document format and the separation between the enclave process and the keys it cannot read.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from serdab import proc
from serdab.errors import EnclaveImageError, TeeError
from serdab.proc import ReadyEvent
from serdab.tee.backend import Enclave, TeeBackend
from serdab.tee.epc import EpcMeter
from serdab.tee.evidence import EVIDENCE_ENV, SIMULATED_KINDS, evidence_kind
from serdab.tee.host import HostIdentity
from serdab.tee.image import load_manifest, measure_image, runtime_lock
from serdab.tee.nsm import NSM_SOCKET_ENV, NsmDevice, NsmServer

__all__ = ["SimulatedBackend"]

_counter = itertools.count()


class SimulatedBackend(TeeBackend):
    name = "simulated"

    def __init__(
        self, host: HostIdentity | None = None, epc: EpcMeter | None = None, evidence: str | None = None
    ) -> None:
        self.host = host or HostIdentity.load_or_create()
        self.epc = epc or EpcMeter()
        self.evidence = evidence_kind(evidence)  # the format its enclaves attest in ($SERDAB_TEE_EVIDENCE)
        if self.evidence not in SIMULATED_KINDS:
            raise TeeError(f"simulated enclaves attest in {' or '.join(SIMULATED_KINDS)}, not {self.evidence}")
        self.snp = self.host.snp_firmware() if self.evidence == "amd-sev-snp" else None
        self._devices: dict[str, NsmDevice] = {}
        self._servers: dict[str, NsmServer] = {}
        # a Unix socket path must stay under ~108 bytes: a deep TMPDIR falls back to /tmp
        base = tempfile.gettempdir()
        self._sockets = Path(tempfile.mkdtemp(prefix="serdab-nsm-", dir=base if len(base) <= 64 else "/tmp"))

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
        device = NsmDevice(self.host, enclave_id, pcrs, manifest.debug, self.epc, self.snp)
        self._sockets.mkdir(exist_ok=True)  # a backend closed once may launch again
        socket_path = self._sockets / f"{enclave_id}.sock"
        server = NsmServer(socket_path, device)
        child_env = {
            **(env or {}),
            NSM_SOCKET_ENV: str(socket_path),
            "SERDAB_ENCLAVE_ID": enclave_id,
            EVIDENCE_ENV: self.evidence,  # what it expects of its peers (twin key services) by default
        }
        try:
            child = proc.start(
                [sys.executable, "-m", "serdab.tee.runner", str(image), *(args or [])],
                name=f"enclave {enclave_id}",
                log_path=log_path,
                env=child_env,
                cwd=image,
                error=TeeError,
            )
        except TeeError:
            server.close()
            raise
        self._devices[enclave_id] = device
        self._servers[enclave_id] = server
        return Enclave(enclave_id, self.name, image, device.describe(), manifest.debug, child)

    def simulated_roots(self) -> list[Any]:
        return [self.host.root_cert, *([self.snp.ark] if self.snp else [])]

    def nsm(self, enclave: Enclave) -> NsmDevice:
        try:
            return self._devices[enclave.id]
        except KeyError:
            raise TeeError(f"enclave {enclave.id} is not running on this backend") from None

    def wait_ready(self, enclave: Enclave, timeout_s: float = 60.0) -> dict[str, Any]:
        """Block until the enclave calls ``NsmClient.ready``; its info (e.g. port). Fails if it exits first."""
        device = self.nsm(enclave)
        if enclave.child is None:
            raise TeeError(f"enclave {enclave.id} has no process on this host")
        info = enclave.child.wait_ready(ReadyEvent(device.ready, lambda: device.ready_info), timeout_s, TeeError)
        enclave.info.update(info)
        return info

    def terminate(self, enclave: Enclave) -> None:
        if enclave.child is not None:
            enclave.child.stop()
        server = self._servers.pop(enclave.id, None)
        if server is not None:
            server.close()
        device = self._devices.pop(enclave.id, None)
        if device is not None:
            device.resident(0)

    def close(self) -> None:
        for enclave_id in list(self._servers):
            self._servers.pop(enclave_id).close()
        shutil.rmtree(self._sockets, ignore_errors=True)
