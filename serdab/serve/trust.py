"""A served model's chain of trust (S3ML, seed 002 Fig. 2), whichever engine serves it.

The model owner (this process) starts the key service in an enclave and verifies it, builds the
measured replica image with the model encrypted inside, and registers the model key under a
policy naming that image's PCRs (``serdab.kms``: ``OwnerSession``, ``build_model_image``). Enclave
replicas then fetch the model key and the service's TLS key from the key service themselves; the
owner hands no key to a replica. The owner's trust statement (``statement``) is what clients
verify against, handed to them out of band.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from serdab.kms.lifecycle import KmsCoordinates, ModelImage
from serdab.kms.owner import OwnerSession

__all__ = ["REPLICA_ENTRYPOINT", "ServiceTrust", "statement_coordinates"]

REPLICA_ENTRYPOINT = "serdab.serve.replica:enclave_main"


def statement_coordinates(statement: dict[str, Any]) -> KmsCoordinates:
    """Where an enclave replica finds and verifies the key service, from the owner's trust statement."""
    return KmsCoordinates.from_wire(
        {
            "url": statement["kms"],
            "service": statement["service"],
            "pcrs": statement["kms_pcrs"],
            "allow_simulated": bool(statement.get("allow_simulated")),
            "evidence": statement.get("evidence", "aws-nitro"),
        }
    )


@dataclass
class ServiceTrust:
    kms: OwnerSession
    image: ModelImage
    ca_pem: str
    roots: list[x509.Certificate]  # the simulated host's roots (Nitro-format root, simulated ARK)

    @classmethod
    def start(cls, model_name: str, model: bytes, work_dir: Path) -> ServiceTrust:
        from serdab.kms.lifecycle import build_model_image
        from serdab.tee.host import HostIdentity

        host = HostIdentity.load_or_create()
        kms = OwnerSession.embedded(work_dir / "kms", host.simulated_roots(), work_dir / "images")
        try:
            image = build_model_image(
                model, f"{model_name}.onnx", work_dir / "replica-image", REPLICA_ENTRYPOINT, f"serve-{model_name}"
            )
            kms.register(image)
            ca_pem = kms.kms.service_certificate(image.service)["ca_pem"]
        except BaseException:
            kms.close()
            raise
        return cls(kms, image, ca_pem, host.simulated_roots())  # after the key service: its backend made them

    @property
    def service(self) -> str:
        return self.image.service

    def statement(self, front_door: str | None, model_name: str) -> dict[str, Any]:
        """The owner's statement a client verifies against (out of band, never from the front door)."""
        from serdab.crypto import cert_pem

        coordinates = self.kms.coordinates(self.service).to_wire()
        return {
            "gateway": front_door,
            "model": model_name,
            "kms": coordinates["url"],
            "kms_pcrs": coordinates["pcrs"],
            "service": self.service,
            "replica_pcrs": {str(i): v.hex() for i, v in self.image.pcrs.items()},
            "allow_simulated": coordinates["allow_simulated"],
            "evidence": coordinates["evidence"],  # the kind both the key service and the replicas attest in
            "simulated_root_pem": "".join(cert_pem(root).decode() for root in self.roots),
        }

    def enclave_args(self) -> list[str]:
        return self.kms.coordinates(self.service).to_argv()

    def close(self) -> None:
        self.kms.close()
