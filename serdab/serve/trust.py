"""A served model's chain of trust (S3ML, seed 002 Fig. 2), whichever engine serves it.

The model owner (this process) starts the key service in an enclave and verifies it, builds the
measured replica image with the model encrypted inside, and registers the model key under a
policy naming that image's PCRs. Enclave replicas then fetch the model key and the service's
TLS key from the key service themselves; the owner hands no key to a replica. The owner's trust
statement (``statement``) is what clients verify against, handed to them out of band.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ServiceTrust", "enclave_args"]


def enclave_args(statement: dict[str, Any]) -> list[str]:
    """What an enclave replica needs to find and verify the key service (``replica.enclave_main``),
    from the owner's trust statement."""
    args = [
        "--kms",
        str(statement["kms"]),
        "--service",
        str(statement["service"]),
        "--kms-pcrs",
        json.dumps(statement["kms_pcrs"]),
    ]
    return args + (["--allow-simulated"] if statement.get("allow_simulated") else [])


@dataclass
class ServiceTrust:
    kms: Any  # serdab.runtime.keys.RunKms
    image: Any  # serdab.serve.image.ReplicaImage
    ca_pem: str
    root: Any  # the simulated host root certificate

    @classmethod
    def start(cls, model_name: str, model: bytes, work_dir: Path) -> ServiceTrust:
        from serdab.runtime.keys import RunKms
        from serdab.serve.image import build_replica_image
        from serdab.tee.host import HostIdentity

        host = HostIdentity.load_or_create()
        kms = RunKms.embedded(work_dir / "kms", [host.root_cert], work_dir / "images")
        try:
            image = build_replica_image(model_name, model, work_dir / "replica")
            kms.kms.register(image.service, kms.token, image.pcrs, allow_simulated=True, model_key=image.model_key)
            ca_pem = kms.kms.service_certificate(image.service)["ca_pem"]
        except BaseException:
            kms.close()
            raise
        return cls(kms, image, ca_pem, host.root_cert)

    @property
    def service(self) -> str:
        return str(self.image.service)

    def statement(self, front_door: str | None, model_name: str) -> dict[str, Any]:
        """The owner's statement a client verifies against (out of band, never from the front door)."""
        from serdab.crypto import cert_pem

        return {
            "gateway": front_door,
            "model": model_name,
            "kms": self.kms.url,
            "kms_pcrs": {str(i): v.hex() for i, v in self.kms.pcrs.items()},
            "service": self.service,
            "replica_pcrs": {str(i): v.hex() for i, v in self.image.pcrs.items()},
            "allow_simulated": True,
            "simulated_root_pem": cert_pem(self.root).decode(),
        }

    def enclave_args(self) -> list[str]:
        return enclave_args(self.statement(None, ""))

    def close(self) -> None:
        self.kms.close()
