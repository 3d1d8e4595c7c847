"""The key service's own enclave image, built once per runtime and reused (same code, same PCRs)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from serdab.tee.image import entrypoint_image, load_manifest, runtime_lock

__all__ = ["kms_image"]


def kms_image(directory: Path) -> Path:
    """The KMS image for this runtime under ``directory`` (built on first use)."""
    lock = hashlib.sha384(runtime_lock().encode()).hexdigest()
    image = Path(directory) / f"kms-{lock[:16]}"
    if (image / "enclave.json").exists() and load_manifest(image).runtime_lock == lock:
        return image
    staging = image.with_name(image.name + ".building")
    if staging.exists():
        import shutil

        shutil.rmtree(staging)
    entrypoint_image(staging, "serdab.kms.enclave:main", name="serdab-kms")
    staging.rename(image)
    return image
