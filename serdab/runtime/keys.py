"""The key service a run uses: an embedded KMS enclave started for the run, or one already running.

The application manager is the data owner's process: it verifies the KMS's attestation (and
its TLS certificate) before it uploads any stage key, then registers one service per trusted
stage whose policy is that stage image's PCRs. Stage enclaves fetch their key themselves; the
manager never hands a stage key to a worker.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from cryptography import x509

from serdab.errors import KmsError, KmsUnreachableError
from serdab.kms import AttestedKms, attest_kms
from serdab.kms.replica import start_kms_replica
from serdab.runtime.stages import MEASURED_PCRS, StageArtifact
from serdab.tee import get_backend

__all__ = ["RunKms"]


class RunKms:
    """An attested, admin-authenticated session with the run's key service."""

    def __init__(
        self, kms: AttestedKms, token: str, pcrs: dict[int, bytes], allow_simulated: bool, stop: object | None = None
    ) -> None:
        self.kms = kms
        self.token = token
        self.pcrs = pcrs
        self.allow_simulated = allow_simulated
        self._stop = stop

    @property
    def url(self) -> str:
        return self.kms.url

    @classmethod
    def embedded(cls, directory: Path, roots: list[x509.Certificate], images: Path, timeout_s: float = 60.0) -> RunKms:
        """Start a KMS replica in a simulated enclave with a fresh SQLite store under ``directory``."""
        backend = get_backend("simulated")
        token = secrets.token_hex(24)
        directory.mkdir(parents=True, exist_ok=True)
        try:
            replica = start_kms_replica(
                backend,
                images,
                store=f"sqlite:{directory / 'kms.db'}",
                data=directory / "replica",
                admin_token=token,
                allow_simulated=True,
                timeout_s=timeout_s,
            )
        except BaseException:
            backend.close()
            raise
        try:
            pcrs = {i: v for i, v in replica.pcrs.items() if i in MEASURED_PCRS}
            roots = [*roots, *backend.simulated_roots()]
            kms = attest_kms(replica.url, expected_pcrs=pcrs, allow_simulated=True, simulated_roots=roots)
        except BaseException:
            replica.stop()
            backend.close()
            raise

        def stop() -> None:
            replica.stop()
            backend.close()

        return cls(kms, token, pcrs, True, stop)

    @classmethod
    def external(
        cls,
        url: str,
        token_file: Path,
        roots: list[x509.Certificate],
        pcrs: dict[int, bytes],
        allow_simulated: bool,
        timeout_s: float = 10.0,
    ) -> RunKms:
        """A running KMS (``serdab kms start``): verified before anything is sent to it."""
        try:
            kms = attest_kms(
                url,
                expected_pcrs=pcrs or None,
                allow_simulated=allow_simulated,
                simulated_roots=roots,
                timeout_s=timeout_s,
            )
        except KmsUnreachableError as exc:
            raise KmsUnreachableError(f"the key service is down, so no enclave stage can get its key: {exc}") from None
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            kms.close()
            raise KmsError(f"cannot read the KMS admin token {token_file}: {exc.strerror}") from None
        return cls(kms, token, pcrs if pcrs else dict(kms.attestation.pcrs), allow_simulated)

    def register(self, artifact: StageArtifact) -> None:
        """Upload a trusted stage's key under a policy that names its image's PCRs."""
        if artifact.service is None or artifact.key is None or artifact.pcrs is None:
            raise KmsError(f"stage {artifact.index} runs untrusted: it has no key to register")
        self.kms.register(
            artifact.service, self.token, artifact.pcrs, allow_simulated=self.allow_simulated, model_key=artifact.key
        )

    def worker_view(self, service: str) -> dict[str, Any]:
        """What a stage enclave needs to find and verify this KMS."""
        return {
            "url": self.url,
            "service": service,
            "pcrs": {i: v for i, v in self.pcrs.items() if i in MEASURED_PCRS},
            "allow_simulated": self.allow_simulated,
        }

    def close(self) -> None:
        self.kms.close()
        if callable(self._stop):
            self._stop()
