"""What a deployment ships to each device: stage files, and for trusted stages an enclave image.

A trusted stage's ONNX file is sealed into a measured model image (``serdab.kms.lifecycle``: a
fresh key per stage file, the worker entrypoint as the image's only code); its key goes to the key
service under a policy naming that image's PCRs, so only an enclave launched from that very image
gets it (seed 000: each enclave receives only its own layers). Untrusted stages are plain ONNX files,
and so is what a blinded stage's helper gets: the weights of the layers it computes are visible to
it (Slalom's model; docs/blinded.md), the activations never are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from serdab.graph import Chain, extract_stage
from serdab.kms.lifecycle import ModelImage, build_model_image
from serdab.plan import Placement

__all__ = ["STAGE_ENTRYPOINT", "StageArtifact", "package_stages"]

STAGE_ENTRYPOINT = "serdab.runtime.engine:enclave_main"


@dataclass(frozen=True)
class StageArtifact:
    index: int
    first: int
    last: int
    stage_file: str  # untrusted: path of the plain ONNX; trusted: file name under the image's models/
    image: ModelImage | None = None  # trusted stages only
    helper_file: str | None = None  # a blinded stage: the plain ONNX its untrusted helper quantises

    @property
    def trusted(self) -> bool:
        return self.image is not None


def package_stages(
    chain: Chain, placement: Placement, trusted: dict[str, bool], out_dir: Path, run_id: str
) -> list[StageArtifact]:
    """Stage files (and images for trusted stages) of ``placement`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts = []
    for k, stage in enumerate(placement.stages):
        data = extract_stage(chain, stage.first, stage.last).SerializeToString()
        name = f"stage{k}-b{stage.first}-{stage.last}.onnx"
        if not all(trusted[d] for d in stage.devices):
            path = out_dir / name
            path.write_bytes(data)
            artifacts.append(StageArtifact(k, stage.first, stage.last, str(path)))
            continue
        image = build_model_image(data, name, out_dir / f"image-stage{k}", STAGE_ENTRYPOINT, f"{run_id}-stage{k}")
        helper_file = None
        if stage.helper is not None:
            helper_path = out_dir / f"stage{k}-b{stage.first}-{stage.last}-helper.onnx"
            helper_path.write_bytes(data)
            helper_file = str(helper_path)
        artifacts.append(StageArtifact(k, stage.first, stage.last, name, image, helper_file))
    return artifacts
