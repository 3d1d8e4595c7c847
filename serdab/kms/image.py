"""The key service's own enclave image, built once per runtime and reused (same code, same PCRs)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from serdab.tee.image import build_image, load_manifest, runtime_lock

__all__ = ["kms_image"]

_ENTRY = (
    '"""Key service enclave: all logic is in the measured Serdab runtime (PCR1)."""\n\n'
    "from serdab.kms.enclave import main  # noqa: F401\n"
)


def kms_image(directory: Path) -> Path:
    """The KMS image for this runtime under ``directory`` (built on first use)."""
    lock = hashlib.sha384(runtime_lock().encode()).hexdigest()
    image = Path(directory) / f"kms-{lock[:16]}"
    if (image / "enclave.json").exists() and load_manifest(image).runtime_lock == lock:
        return image
    source = Path(directory) / "kms-src"
    source.mkdir(parents=True, exist_ok=True)
    (source / "kms_enclave.py").write_text(_ENTRY)
    staging = image.with_name(image.name + ".building")
    if staging.exists():
        import shutil

        shutil.rmtree(staging)
    build_image(source, staging, "kms_enclave:main", name="serdab-kms")
    staging.rename(image)
    return image
