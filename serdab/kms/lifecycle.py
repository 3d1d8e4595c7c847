"""A model's key from its owner to an enclave: the one home of the enclave key lifecycle.

Owner side: ``encrypt_model`` with a fresh AES-256-GCM key, ``build_model_image`` seals the
ciphertext into a measured image whose own code is a one-line entrypoint (all logic is the measured
Serdab runtime, PCR1), and ``serdab.kms.owner.OwnerSession.register`` hands the key to the key service
under a policy that names the image's PCR0-2 (``MEASURED_PCRS``). So only an enclave launched from
that very image gets the key (seed 000: each enclave receives only its own layers; seed 002 Fig. 2:
the owner uploads encrypted models, only the key service holds their keys).

Enclave side: ``KmsCoordinates`` say where the key service is and what it must attest to (carried on
the enclave's command line or inside its sealed configuration); ``fetch_model`` attests the key
service, has the enclave attested in turn, receives the keys and decrypts the model only in the
enclave's own memory. Pipeline stage enclaves and serving replicas both go through here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serdab.errors import KmsError
from serdab.kms.service import ReleasedKeys
from serdab.tee.backend import Nsm
from serdab.tee.image import PCR_APP, PCR_IMAGE, PCR_RUNTIME, entrypoint_image, measure_image

__all__ = [
    "MEASURED_PCRS",
    "KmsCoordinates",
    "ModelImage",
    "build_model_image",
    "decrypt_model",
    "encrypt_model",
    "fetch_model",
    "image_model_file",
]

MEASURED_PCRS = (PCR_IMAGE, PCR_RUNTIME, PCR_APP)  # what a key-release policy names
MODEL_AAD = b"serdab-stage-weights-v1|"  # binds a ciphertext to its file name (value kept: images stay readable)
MODELS_DIR = "models"  # where an image keeps its model files; an enclave runs with the image as its cwd


def encrypt_model(data: bytes, key: bytes, name: str) -> bytes:
    """12-byte nonce || AES-GCM(data), bound to the file ``name``."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, data, MODEL_AAD + name.encode())


def decrypt_model(blob: bytes, key: bytes, name: str) -> bytes:
    """``encrypt_model`` undone; KmsError when the key (or the name) is not the one it was sealed with."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        return AESGCM(key).decrypt(blob[:12], blob[12:], MODEL_AAD + name.encode())
    except (InvalidTag, ValueError):
        raise KmsError(f"model {name} does not decrypt with the released key") from None


@dataclass(frozen=True)
class ModelImage:
    """A measured image with one encrypted model inside, and what the owner registers for it."""

    path: Path
    model_file: str  # its name under the image's models/
    pcrs: dict[int, bytes]  # PCR0-2: what the key service's policy names
    model_key: bytes  # handed to the key service, never to an enclave
    service: str  # the key service's name for enclaves of this image (carries the PCRs' digest)


def build_model_image(model: bytes, model_file: str, out: Path, entrypoint: str, service_prefix: str) -> ModelImage:
    """Encrypt ``model`` under a fresh key into a new image at ``out`` whose code only imports
    ``entrypoint`` ("package.module:function", part of the measured runtime)."""
    key = os.urandom(32)
    with tempfile.TemporaryDirectory(prefix="serdab-model-") as staging:
        encrypted = Path(staging) / f"{model_file}.enc"
        encrypted.write_bytes(encrypt_model(model, key, model_file))
        entrypoint_image(out, entrypoint, models={model_file: encrypted})
    pcrs = {i: v for i, v in measure_image(out).items() if i in MEASURED_PCRS}
    digest = hashlib.sha256(b"".join(pcrs.values())).hexdigest()[:12]
    return ModelImage(out, model_file, pcrs, key, f"{service_prefix}-{digest}")


def _pcrs_from_hex(pcrs: Mapping[Any, Any]) -> dict[int, bytes]:
    try:
        return {int(i): v if isinstance(v, bytes) else bytes.fromhex(str(v)) for i, v in pcrs.items()}
    except ValueError:
        raise KmsError('key service PCRs must map indices to hex, e.g. {"0": "ab12..."}') from None


def _kind(value: Any) -> str:
    from serdab.tee.evidence import KINDS

    kind = str(value or "aws-nitro")
    if kind not in KINDS:
        raise KmsError(f"key service evidence kind {kind!r} is not one of {', '.join(KINDS)}")
    return kind


@dataclass(frozen=True)
class KmsCoordinates:
    """Where an enclave finds its key service and what that service must attest to."""

    url: str
    service: str
    pcrs: dict[int, bytes]
    allow_simulated: bool = False
    evidence: str = "aws-nitro"  # the kind the key service attests in (serdab.tee.evidence.KINDS)

    def to_wire(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "service": self.service,
            "pcrs": {str(i): v.hex() for i, v in sorted(self.pcrs.items())},
            "allow_simulated": self.allow_simulated,
            "evidence": self.evidence,
        }

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> KmsCoordinates:
        try:
            return cls(
                str(wire["url"]),
                str(wire["service"]),
                _pcrs_from_hex(wire["pcrs"]),
                bool(wire["allow_simulated"]),
                _kind(wire.get("evidence")),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise KmsError(f"key service coordinates lack {exc}: need url, service, pcrs, allow_simulated") from None

    def to_argv(self) -> list[str]:
        args = ["--kms", self.url, "--service", self.service, "--kms-pcrs", json.dumps(self.to_wire()["pcrs"])]
        args += ["--kms-evidence", self.evidence]
        return args + (["--allow-simulated"] if self.allow_simulated else [])

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """The options ``to_argv`` writes, for an enclave entrypoint's parser."""
        parser.add_argument("--kms", required=True, help="https URL of the key service")
        parser.add_argument("--service", required=True, help="the key service's name for this image")
        parser.add_argument("--kms-pcrs", required=True, help="JSON {index: hex} the key service must show")
        parser.add_argument("--kms-evidence", default="aws-nitro", help="the kind of evidence it attests with")
        parser.add_argument("--allow-simulated", action="store_true")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> KmsCoordinates:
        try:
            pcrs = json.loads(args.kms_pcrs)
        except ValueError:
            raise KmsError(f"--kms-pcrs must be JSON, got {args.kms_pcrs!r}") from None
        return cls(args.kms, args.service, _pcrs_from_hex(pcrs), bool(args.allow_simulated), _kind(args.kms_evidence))


def image_model_file(name: str | None = None) -> Path:
    """Inside a running image: the model file ``name``, or its only one."""
    models = Path(MODELS_DIR)
    if name is not None:
        return models / name
    files = sorted(p for p in models.iterdir() if p.is_file()) if models.is_dir() else []
    if len(files) != 1:
        raise KmsError(f"the image holds {len(files)} model files; name the one to fetch")
    return files[0]


def fetch_model(
    coordinates: KmsCoordinates, nsm: Nsm, name: str | None = None, roots: Sequence[Any] | None = None
) -> tuple[bytes, ReleasedKeys]:
    """Inside an enclave: attest the key service, be attested by it, receive the service's keys and
    decrypt the image's model with them. ``roots``: simulated roots to trust (default: this host's,
    when the coordinates allow simulated documents)."""
    from serdab.kms.client import attest_kms

    if roots is None:
        from serdab.tee.host import HostIdentity

        roots = HostIdentity.load_or_create().simulated_roots() if coordinates.allow_simulated else []
    kms = attest_kms(
        coordinates.url,
        expected_pcrs=coordinates.pcrs,
        allow_simulated=coordinates.allow_simulated,
        simulated_roots=roots,
        kind=coordinates.evidence,
    )
    try:
        keys = kms.release_keys(coordinates.service, nsm)
    finally:
        kms.close()
    path = image_model_file(name)
    return decrypt_model(path.read_bytes(), keys.model_key, path.name), keys
