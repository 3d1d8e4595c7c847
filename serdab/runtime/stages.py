"""What a deployment ships to each device: stage files, and for trusted stages an enclave image.

A trusted stage's ONNX file is encrypted with a fresh AES-256-GCM key (one key per stage file)
and sealed into a measured image whose code is only the worker entrypoint (all logic is in
the measured Serdab runtime, PCR1). The key goes to the key service under a service whose
policy is that image's PCR0-2, so only an enclave launched from that very image gets it (seed
000: each enclave receives only its own layers). Untrusted stages are plain ONNX files.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from serdab.graph import Chain, extract_stage
from serdab.plan import Placement
from serdab.runtime.engine import encrypt_weights
from serdab.tee.image import PCR_APP, PCR_IMAGE, PCR_RUNTIME, build_image, measure_image

__all__ = ["MEASURED_PCRS", "StageArtifact", "package_stages", "stage_image"]

MEASURED_PCRS = (PCR_IMAGE, PCR_RUNTIME, PCR_APP)
ENTRYPOINT = (
    '"""A pipeline stage enclave: the logic is the measured Serdab runtime (PCR1)."""\n\n'
    "from serdab.runtime.engine import enclave_main as main  # noqa: F401\n"
)


@dataclass(frozen=True)
class StageArtifact:
    index: int
    first: int
    last: int
    trusted: bool
    stage_file: str  # untrusted: path of the plain ONNX; trusted: file name under the image's models/
    image: Path | None = None
    pcrs: dict[int, bytes] | None = None
    key: bytes | None = None  # the stage file's key: handed to the KMS, never to a worker
    service: str | None = None


def stage_image(out: Path, encrypted: Path, name: str, entrypoint_source: str = ENTRYPOINT) -> Path:
    """A measured image holding one encrypted stage file and the worker entrypoint."""
    code = out.with_name(out.name + "-code")
    code.mkdir(parents=True, exist_ok=True)
    (code / "stage_enclave.py").write_text(entrypoint_source)
    return build_image(code, out, "stage_enclave:main", name=out.name, models={name: encrypted})


def package_stages(
    chain: Chain, placement: Placement, trusted: dict[str, bool], out_dir: Path, run_id: str
) -> list[StageArtifact]:
    """Stage files (and images for trusted stages) of ``placement`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts = []
    for k, stage in enumerate(placement.stages):
        data = extract_stage(chain, stage.first, stage.last).SerializeToString()
        is_trusted = all(trusted[d] for d in stage.devices)
        name = f"stage{k}-b{stage.first}-{stage.last}.onnx"
        if not is_trusted:
            path = out_dir / name
            path.write_bytes(data)
            artifacts.append(StageArtifact(k, stage.first, stage.last, False, str(path)))
            continue
        key = os.urandom(32)
        encrypted = out_dir / f"{name}.enc"
        encrypted.write_bytes(encrypt_weights(data, key, name))
        image = stage_image(out_dir / f"image-stage{k}", encrypted, name)
        encrypted.unlink()
        pcrs = {i: v for i, v in measure_image(image).items() if i in MEASURED_PCRS}
        digest = hashlib.sha256(b"".join(pcrs.values())).hexdigest()[:12]
        artifacts.append(
            StageArtifact(k, stage.first, stage.last, True, name, image, pcrs, key, f"{run_id}-stage{k}-{digest}")
        )
    return artifacts
