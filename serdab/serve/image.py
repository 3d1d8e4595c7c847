"""The measured image an enclave replica launches from: the encrypted model and a one-line entrypoint.

The model's ONNX bytes are encrypted with a fresh AES-256-GCM key (seed 002: the model owner
uploads encrypted models; only the key service holds the key). All logic is the measured Serdab
runtime (PCR1); the image's own code is the entrypoint (PCR2) and its models manifest (PCR16).
The key goes to the key service under a service whose policy is this image's PCR0-2, so only an
enclave launched from this very image receives it, together with the service's TLS key.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from serdab.runtime.engine import encrypt_weights
from serdab.runtime.stages import MEASURED_PCRS
from serdab.tee.image import build_image, measure_image

__all__ = ["ENTRYPOINT", "ReplicaImage", "build_replica_image"]

ENTRYPOINT = (
    '"""A model-serving enclave: the logic is the measured Serdab runtime (PCR1)."""\n\n'
    "from serdab.serve.replica import enclave_main as main  # noqa: F401\n"
)


@dataclass(frozen=True)
class ReplicaImage:
    path: Path
    pcrs: dict[int, bytes]  # PCR0-2: what the key service's policy names
    model_key: bytes  # handed to the key service, never to a replica
    service: str  # the key service's name for this model's replicas


def build_replica_image(model_name: str, model: bytes, out_dir: Path, entrypoint: str = ENTRYPOINT) -> ReplicaImage:
    """Encrypt ``model`` into a measured image under ``out_dir``; the service name carries its PCRs' digest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    key = os.urandom(32)
    name = f"{model_name}.onnx"
    encrypted = out_dir / f"{name}.enc"
    encrypted.write_bytes(encrypt_weights(model, key, name))
    code = out_dir / "replica-code"
    code.mkdir(exist_ok=True)
    (code / "replica_enclave.py").write_text(entrypoint)
    image = build_image(
        code,
        out_dir / "replica-image",
        "replica_enclave:main",
        name=f"serdab-serve-{model_name}",
        models={name: encrypted},
    )
    encrypted.unlink()
    pcrs = {i: v for i, v in measure_image(image).items() if i in MEASURED_PCRS}
    digest = hashlib.sha256(b"".join(pcrs.values())).hexdigest()[:12]
    return ReplicaImage(image, pcrs, key, f"serve-{model_name}-{digest}")
