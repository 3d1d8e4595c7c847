"""The model owner's session with a key service: attest it, then register images and upload their keys.

The owner's process (a pipeline run's application manager, or the process that serves a model)
verifies the key service's attestation (and its TLS certificate) before it uploads any key, then
registers one service per model image whose policy is that image's PCRs. Enclaves fetch their keys
themselves (``serdab.kms.lifecycle.fetch_model``); the owner never hands a key to an enclave.
The key service is either embedded (started for this session in a simulated enclave with a fresh
store) or one already running (``serdab kms start``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from serdab.errors import KmsError, KmsUnreachableError
from serdab.kms.client import AttestedKms, attest_kms
from serdab.kms.lifecycle import MEASURED_PCRS, KmsCoordinates, ModelImage
from serdab.kms.replica import KmsReplica, start_kms_replica
from serdab.tee.evidence import evidence_kind

__all__ = ["OwnerSession"]


class OwnerSession:
    """An attested, admin-authenticated session with a key service."""

    def __init__(
        self,
        kms: AttestedKms,
        token: str,
        pcrs: dict[int, bytes],
        allow_simulated: bool,
        stop: Callable[[], None] | None = None,
        revive: Callable[[], AttestedKms | None] | None = None,
        replicas: list[KmsReplica] | None = None,
        evidence: str | None = None,
    ) -> None:
        self.kms = kms
        self.evidence = evidence_kind(evidence)  # what the key service and the enclaves it serves attest in
        self.token = token
        self.pcrs = pcrs  # what the key service attested to; enclaves check the same
        self.allow_simulated = allow_simulated
        self._stop = stop
        self._revive = revive
        self._replicas = replicas or []

    @property
    def pid(self) -> int | None:
        """The embedded key service's enclave process (None for a running service of someone else)."""
        return self._replicas[-1].enclave.pid if self._replicas else None

    @property
    def url(self) -> str:
        return self.kms.url

    @classmethod
    def embedded(
        cls, directory: Path, roots: list[x509.Certificate], images: Path, timeout_s: float = 60.0
    ) -> OwnerSession:
        """Start a key service in a simulated enclave with a fresh SQLite store under ``directory``."""
        from serdab.tee import get_backend

        backend = get_backend("simulated")
        token = secrets.token_hex(24)
        directory.mkdir(parents=True, exist_ok=True)
        replicas: list[KmsReplica] = []

        def start() -> AttestedKms:
            """A replica on the session's store: a restarted one unseals the same state and knows every
            key registered before it died."""
            replica = start_kms_replica(
                backend,
                images,
                store=f"sqlite:{directory / 'kms.db'}",
                data=directory / "replica",
                admin_token=token,
                allow_simulated=True,
                timeout_s=timeout_s,
            )
            replicas.append(replica)
            return attest_kms(
                replica.url,
                expected_pcrs={i: v for i, v in replica.pcrs.items() if i in MEASURED_PCRS},
                allow_simulated=True,
                simulated_roots=[*roots, *backend.simulated_roots()],
                kind=backend.evidence,
            )

        def stop() -> None:
            for replica in replicas:
                replica.stop()
            backend.close()

        def revive() -> AttestedKms | None:
            if replicas and replicas[-1].alive():
                return None
            return start()

        try:
            kms = start()
        except BaseException:
            stop()
            raise
        pcrs = {i: v for i, v in replicas[-1].pcrs.items() if i in MEASURED_PCRS}
        return cls(kms, token, pcrs, True, stop, revive, replicas, backend.evidence)

    @classmethod
    def external(
        cls,
        url: str,
        token_file: Path,
        roots: list[x509.Certificate],
        pcrs: dict[int, bytes],
        allow_simulated: bool,
        timeout_s: float = 10.0,
        evidence: str | None = None,
    ) -> OwnerSession:
        """A running key service (attesting in ``evidence``, default the deployment's): verified before
        anything is sent to it."""
        try:
            kms = attest_kms(
                url,
                expected_pcrs=pcrs or None,
                allow_simulated=allow_simulated,
                simulated_roots=roots,
                timeout_s=timeout_s,
                kind=evidence,
            )
        except KmsUnreachableError as exc:
            raise KmsUnreachableError(f"the key service is down, so no enclave can get its key: {exc}") from None
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            kms.close()
            raise KmsError(f"cannot read the KMS admin token {token_file}: {exc.strerror}") from None
        if not pcrs and kms.attestation.kind != "aws-nitro":
            kms.close()
            raise KmsError(
                f"a key service attesting with {kms.attestation.kind} evidence reports no PCRs: pass its image's PCRs"
            )
        seen = {int(name[3:]): v for name, v in kms.attestation.measurements.items() if name.startswith("PCR")}
        return cls(kms, token, pcrs if pcrs else seen, allow_simulated, evidence=kms.attestation.kind)

    def revive(self) -> bool:
        """Restart an embedded key service that died, from its store (True when it did). A running one
        (``external``) is someone else's to restart: a re-deploy then fails with its error."""
        if self._revive is None:
            return False
        kms = self._revive()
        if kms is None:
            return False
        self.kms.close()
        self.kms = kms
        return True

    def register(self, image: ModelImage) -> None:
        """Upload the image's model key under a policy that names the image's PCRs."""
        self.kms.register(
            image.service,
            self.token,
            image.pcrs,
            allow_simulated=self.allow_simulated,
            model_key=image.model_key,
            kind=self.evidence,
        )

    def coordinates(self, service: str) -> KmsCoordinates:
        """What an enclave of ``service`` needs to find and verify this key service."""
        pcrs = {i: v for i, v in self.pcrs.items() if i in MEASURED_PCRS}
        return KmsCoordinates(self.url, service, pcrs, self.allow_simulated, self.evidence)

    def close(self) -> None:
        self.kms.close()
        if self._stop is not None:
            self._stop()
