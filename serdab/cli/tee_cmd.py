"""`serdab measure IMAGE_DIR` and `serdab attest URL`: what an enclave is, and proof that it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from serdab.cli.common import EvidenceOpt, JsonOpt, console, use_evidence, write_json
from serdab.errors import EnclaveImageError, PolicyError
from serdab.tee import build_image, load_manifest, measure_image
from serdab.tee.host import local_simulated_roots
from serdab.tee.image import PCR_APP, PCR_IMAGE, PCR_MODELS, PCR_RUNTIME, PCR_SIGNER, PCR_TLS

__all__ = ["attest", "build_image_cmd", "measure", "parse_pcr_options"]

MEANING = {  # short, so a 96-digit value fits a 132-column terminal (docs/security.md has the long form)
    PCR_IMAGE: "whole image",
    PCR_RUNTIME: "runtime lock",
    PCR_APP: "application code",
    PCR_SIGNER: "image signer",
    PCR_MODELS: "model manifest",
    PCR_TLS: "TLS cert (run time)",
}


def parse_pcr_options(values: list[str]) -> dict[int, bytes]:
    """['2=ab..'] -> {2: bytes}; bad values raise a one-line PolicyError."""
    expected = {}
    for value in values:
        index, _, digest = value.partition("=")
        try:
            expected[int(index)] = bytes.fromhex(digest)
        except ValueError:
            raise PolicyError(f"--pcr {value!r} must look like 2=<96 hex digits>") from None
        if len(expected[int(index)]) != 48:
            raise PolicyError(f"--pcr {value!r}: a SHA-384 PCR has 96 hex digits")
    return expected


def build_image_cmd(
    code: Annotated[Path, typer.Argument(help="Application code: a .py file or a directory.")],
    out: Annotated[Path, typer.Option(help="New directory for the image.")],
    entrypoint: Annotated[str, typer.Option(help="module:function in the code, called with the enclave's arguments.")],
    model: Annotated[list[str] | None, typer.Option(help="NAME=PATH of a weight file to include (repeatable).")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Debug image: every PCR reads zero (as on Nitro).")] = False,
) -> None:
    """Build an enclave image (code, runtime lock, model manifest) and print its PCRs."""
    models = {}
    for item in model or []:
        name, _, path = item.partition("=")
        if not name or not path:
            raise EnclaveImageError(f"--model {item!r} must look like weights.onnx=path/to/file")
        models[name] = Path(path)
    build_image(code, out, entrypoint, models=models, debug=debug)
    measure(out)


def measure(
    image: Annotated[
        Path, typer.Argument(help="Enclave image directory (enclave.json, runtime.lock, code/, models/).")
    ],
    json_path: JsonOpt = None,
) -> None:
    """Print an enclave image's PCRs: the values to put in a key-release or client policy."""
    manifest = load_manifest(image)
    pcrs = measure_image(image)
    table = Table(title=f"{manifest.name}: SHA-384 PCRs{' (debug image: all zero)' if manifest.debug else ''}")
    table.add_column("PCR")
    table.add_column("meaning")
    table.add_column("value", overflow="fold")
    for index, meaning in MEANING.items():
        table.add_row(str(index), meaning, pcrs[index].hex())
    console.print(table)
    console.print("policy: " + " ".join(f"--pcr {i}={pcrs[i].hex()}" for i in (PCR_IMAGE, PCR_RUNTIME, PCR_APP)))
    write_json(
        json_path,
        {
            "image": str(image),
            "name": manifest.name,
            "debug": manifest.debug,
            "pcrs": {str(i): v.hex() for i, v in pcrs.items()},
        },
    )


def attest(
    url: Annotated[str, typer.Argument(help="HTTPS address of a Serdab service with /v1/attestation, e.g. a KMS.")],
    nonce: Annotated[str | None, typer.Option(help="Hex nonce to ask for (default: 32 random bytes).")] = None,
    allow_simulated: Annotated[
        bool, typer.Option("--allow-simulated", help="Accept documents from this host's simulated root (NOT a TEE).")
    ] = False,
    pcr: Annotated[list[str] | None, typer.Option(help="Expected PCR, N=HEX (repeatable).")] = None,
    evidence: EvidenceOpt = None,
    json_path: JsonOpt = None,
) -> None:
    """Fetch and verify attestation evidence (a Nitro document or an SEV-SNP report): signature, chain
    to a pinned root, age, nonce, measurements, TLS binding."""
    use_evidence(evidence)
    from serdab.kms import attest_kms  # HTTP client stack: only when a document is fetched

    try:
        raw_nonce = bytes.fromhex(nonce) if nonce else None
    except ValueError:
        raise PolicyError(f"--nonce {nonce!r} is not hex") from None
    roots = local_simulated_roots(create=allow_simulated)  # known either way, so the error can say "simulated"
    kms = attest_kms(
        url,
        expected_pcrs=parse_pcr_options(pcr or []),
        allow_simulated=allow_simulated,
        simulated_roots=roots,
        nonce=raw_nonce,
    )
    kms.close()
    verified = kms.attestation
    shown = verified.summary()
    title = f"attestation of {url}: verified ({verified.kind}, {'simulated' if verified.simulated else verified.root})"
    table = Table(title=title, show_header=False)
    table.add_column("field")
    table.add_column("value")
    table.add_row("kind", verified.kind + ("  (emulated: NOT A TEE)" if verified.simulated else ""))
    table.add_row("root", verified.root)
    table.add_row("identity", verified.identity)
    if verified.time is not None:
        table.add_row("timestamp", f"{verified.time:%Y-%m-%d %H:%M:%S.%f} UTC")
    for name, value in verified.measurements.items():
        if any(value):
            table.add_row(name, value.hex())
    for name, spl in verified.tcb.items():
        table.add_row(f"TCB {name}", str(spl))
    table.add_row("user_data", (verified.user_data or b"").hex() + "  (= SHA-384 of the TLS certificate served)")
    table.add_row("nonce", (verified.nonce or b"").hex())
    console.print(table)
    write_json(
        json_path,
        {
            "url": url,
            **shown,
            "timestamp": verified.time.isoformat() if verified.time else None,
            "user_data": (verified.user_data or b"").hex(),
            "nonce": (verified.nonce or b"").hex(),
        },
    )
