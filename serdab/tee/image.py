"""Enclave images and their measurements (SHA-384 PCRs in the style of AWS Nitro).

An image is a directory::

    enclave.json    manifest: name, entrypoint "module:function", runtime_lock, models, debug, signer
    runtime.lock    the runtime it was built for (Python, Serdab source digest, package versions)
    code/           the application code (the entrypoint module lives here)
    models/         weight files, listed with their SHA-384 in the manifest

PCRs (each the Nitro-style extend of a zero register with the SHA-384 of its content):
PCR0 the whole image, PCR1 the runtime lock, PCR2 the application code, PCR8 the signer's
certificate (zero when unsigned), PCR16 the model manifest; PCR17 is extended at run time with
the hash of the enclave's TLS certificate. A debug image reports every PCR as zero, as Nitro does.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
from importlib import metadata
from pathlib import Path

from pydantic import BaseModel, Field

from serdab.errors import EnclaveImageError
from serdab.validation import load_json_model

__all__ = [
    "entrypoint_image",
    "pack_image",
    "unpack_image",
    "PCR_APP",
    "PCR_IMAGE",
    "PCR_MODELS",
    "PCR_RUNTIME",
    "PCR_SIGNER",
    "PCR_TLS",
    "ImageManifest",
    "build_image",
    "extend",
    "load_manifest",
    "measure_image",
    "runtime_lock",
    "runtime_packages",
]

PCR_IMAGE, PCR_RUNTIME, PCR_APP, PCR_SIGNER, PCR_MODELS, PCR_TLS = 0, 1, 2, 8, 16, 17
PCR_COUNT = 18  # 0..15 as on Nitro, 16..17 our extendable registers
ZERO = bytes(48)
MANIFEST = "enclave.json"
LOCK = "runtime.lock"
# what stage workers and the key service import (and the optional imports of those: httpx's command line,
# which it loads whenever click and rich are installed, its brotli decoder, loaded whenever brotli is
# installed (the dev tools' Triton client brings it), and FastAPI's telemetry, which loads OpenTelemetry
# whenever it is installed, as the ray extra does); their requirements are added by ``runtime_packages``
_RUNTIME_PACKAGES = (
    "cryptography",
    "cbor2",
    "fastapi",
    "uvicorn",
    "httptools",
    "uvloop",
    "httpx",
    "brotli",
    "numpy",
    "onnxruntime",
    "pydantic",
    "psycopg",
    "dcap-qvl",  # a key service in an enclave verifies TDX quotes with it
    "torch",  # a blinded stage's enclave computes its integer layers (serdab.blind) with it
    "onnx",  # ... and quantises its stage from the ONNX graph
    "numba",  # ... and runs its per-activation arithmetic compiled (serdab.blind.kernels)
    "click",
    "rich",
    "pygments",
    "prometheus-client",
    "pillow",
    "grpcio",  # OIP over gRPC (serve --grpc)
    "protobuf",
    "opentelemetry-api",
    "opentelemetry-sdk",
    "opentelemetry-proto",
    "opentelemetry-semantic-conventions",
    "opentelemetry-exporter-prometheus",
)


class ImageManifest(BaseModel):
    name: str = Field(min_length=1)
    entrypoint: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="module:function in code/")
    runtime_lock: str = Field(pattern=r"^[0-9a-f]{96}$")
    models: dict[str, str] = Field(default_factory=dict, description="path under models/ -> SHA-384 hex")
    debug: bool = False
    signer: str | None = Field(None, description="PEM certificate of the image signer, relative to the image")


def extend(register: bytes, data: bytes) -> bytes:
    """Nitro's PCR extend: SHA384(register || data)."""
    return hashlib.sha384(register + data).digest()


def _file_hash(path: Path) -> str:
    digest = hashlib.sha384()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tree_hash(root: Path) -> bytes:
    """SHA-384 over (relative path, content hash) of every file, in sorted order."""
    digest = hashlib.sha384()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + _file_hash(path).encode() + b"\n")
    return digest.digest()


def runtime_lock() -> str:
    """The runtime this process would give an enclave: Python, Serdab's own source, package versions."""
    source = _tree_hash(Path(__file__).resolve().parents[1]).hex()  # the serdab package directory
    lines = [f"python=={platform.python_version()}", f"serdab-source=={source}"]
    lines += [f"{name}=={version}" for name, version in runtime_packages()]
    return "\n".join(lines) + "\n"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_packages() -> list[tuple[str, str]]:
    """(distribution, version) of what enclave processes load: the runtime packages and their
    requirements, transitively, so PCR1 changes when code an enclave imports changes (a test checks
    that a stage worker and the key service load nothing outside this list)."""
    versions: dict[str, str] = {}
    todo = list(_RUNTIME_PACKAGES)
    while todo:
        name = _canonical(todo.pop())
        if name in versions:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
            continue
        versions[name] = dist.version
        for requirement in dist.requires or []:
            if "extra ==" not in requirement:
                todo.append(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0])
    return sorted(versions.items())


def load_manifest(image: Path) -> ImageManifest:
    path = Path(image) / MANIFEST
    if not path.exists():
        raise EnclaveImageError(f"{image} is not an enclave image: no {MANIFEST}")
    return load_json_model(ImageManifest, path, "manifest", "an enclave image manifest", EnclaveImageError)


def measure_image(image: Path) -> dict[int, bytes]:
    """PCRs 0..17 of an image, after checking it matches its own manifest (lock and model hashes)."""
    image = Path(image)
    manifest = load_manifest(image)
    lock = image / LOCK
    if not lock.exists() or hashlib.sha384(lock.read_bytes()).hexdigest() != manifest.runtime_lock:
        raise EnclaveImageError(f"{image}: {LOCK} is missing or does not match the manifest's runtime_lock")
    for name, expected in manifest.models.items():
        path = image / "models" / name
        if not path.is_file():
            raise EnclaveImageError(f"{image}: model file models/{name} is missing")
        if _file_hash(path) != expected:
            raise EnclaveImageError(f"{image}: models/{name} does not match its SHA-384 in the manifest")
    code = image / "code"
    if not code.is_dir():
        raise EnclaveImageError(f"{image}: no code/ directory")
    pcrs = {i: ZERO for i in range(PCR_COUNT)}
    if manifest.debug:
        return pcrs
    pcrs[PCR_IMAGE] = extend(ZERO, _tree_hash(image))
    pcrs[PCR_RUNTIME] = extend(ZERO, bytes.fromhex(manifest.runtime_lock))
    pcrs[PCR_APP] = extend(ZERO, _tree_hash(code))
    if manifest.signer:
        from serdab.crypto import cert_der, cert_from_pem

        pcrs[PCR_SIGNER] = extend(
            ZERO, hashlib.sha384(cert_der(cert_from_pem((image / manifest.signer).read_bytes()))).digest()
        )
    models = json.dumps(manifest.models, sort_keys=True, separators=(",", ":")).encode()
    pcrs[PCR_MODELS] = extend(ZERO, hashlib.sha384(models).digest())
    return pcrs


def build_image(
    code: Path,
    out: Path,
    entrypoint: str,
    *,
    name: str | None = None,
    models: dict[str, Path] | None = None,
    debug: bool = False,
) -> Path:
    """Copy ``code`` (a file or directory) and ``models`` into a new image at ``out`` with a manifest."""
    code, out = Path(code), Path(out)
    if out.exists():
        raise EnclaveImageError(f"{out} exists; choose a new directory for the image")
    (out / "models").mkdir(parents=True)
    if code.is_dir():
        shutil.copytree(code, out / "code", ignore=shutil.ignore_patterns("__pycache__"))
    elif code.is_file():
        (out / "code").mkdir()
        shutil.copy2(code, out / "code" / code.name)
    else:
        raise EnclaveImageError(f"enclave code not found: {code}")
    listed = {}
    for dest, source in (models or {}).items():
        target = out / "models" / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        listed[dest] = _file_hash(target)
    lock = runtime_lock().encode()
    (out / LOCK).write_bytes(lock)
    manifest = ImageManifest(
        signer=None,
        name=name or out.name,
        entrypoint=entrypoint,
        runtime_lock=hashlib.sha384(lock).hexdigest(),
        models=listed,
        debug=debug,
    )
    (out / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
    return out


def entrypoint_image(
    out: Path, entrypoint: str, *, name: str | None = None, models: dict[str, Path] | None = None
) -> Path:
    """A new image at ``out`` whose code is one module importing ``entrypoint`` ("package.module:function")
    as its main: all logic is then the measured Serdab runtime (PCR1), the image's own code (PCR2) only
    says which function of it runs."""
    import tempfile

    module, _, function = entrypoint.partition(":")
    if not module or not function:
        raise EnclaveImageError(f"entrypoint must look like package.module:function, got {entrypoint!r}")
    source = (
        f'"""An enclave whose logic is the measured Serdab runtime (PCR1): {entrypoint}."""\n\n'
        f"from {module} import {function} as main  # noqa: F401\n"
    )
    with tempfile.TemporaryDirectory(prefix="serdab-entrypoint-") as staging:
        code = Path(staging) / "enclave_entry.py"
        code.write_text(source)
        return build_image(code, out, "enclave_entry:main", name=name, models=models)


def pack_image(image: Path) -> bytes:
    """An image directory as tar bytes, to ship to another node (it is measured again where it launches)."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(image, arcname=".")
    return buffer.getvalue()


def unpack_image(blob: bytes, out: Path) -> Path:
    """``pack_image``'s bytes back into a directory (tar's data filter: no links or paths out of ``out``)."""
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(out, filter="data")
    return out
