"""`serdab kms start` and `serdab kms register`: run the key service in a (simulated) enclave, add services."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from serdab.cli.common import EvidenceOpt, console, err_console, evidence_option, use_evidence
from serdab.cli.tee_cmd import parse_pcr_options
from serdab.errors import KmsError
from serdab.kms import attest_kms
from serdab.kms.replica import start_kms_replica
from serdab.tee import get_backend, measure_image
from serdab.tee.host import local_simulated_roots, serdab_home
from serdab.tee.image import PCR_APP, PCR_IMAGE, PCR_RUNTIME
from serdab.validation import write_private

__all__ = ["kms_app"]

kms_app = typer.Typer(
    help="The key service: releases keys only to attested enclaves.", no_args_is_help=True, add_completion=False
)


def _token(path: Path) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, (secrets.token_hex(24) + "\n").encode())
    return path.read_text().strip()


def _default_token() -> Path:
    return serdab_home() / "kms" / "admin.token"


@kms_app.command("start")
def start(
    store: Annotated[
        str | None,
        typer.Option(help="sqlite:PATH or postgresql://user@host:port/db (default: sqlite under $SERDAB_HOME/kms)."),
    ] = None,
    port: Annotated[int, typer.Option(min=0, max=65535, help="HTTPS port (0: any free port).")] = 8443,
    host: Annotated[str, typer.Option(help="Address to bind; keep 127.0.0.1 unless you mean it.")] = "127.0.0.1",
    data: Annotated[
        Path | None, typer.Option(help="This replica's directory for its sealed storage key (one per replica).")
    ] = None,
    peer: Annotated[list[str] | None, typer.Option(help="URL of a running replica (repeatable).")] = None,
    backend: Annotated[str, typer.Option(help="TEE backend: simulated, nitro, gramine-sgx.")] = "simulated",
    admin_token_file: Annotated[Path | None, typer.Option(help="Admin token (created 0600 if absent).")] = None,
    evidence: EvidenceOpt = None,
) -> None:
    """Start one KMS replica inside an enclave and serve until Ctrl-C."""
    kind = use_evidence(evidence)
    home = serdab_home()
    tee = get_backend(backend)
    token_path = admin_token_file or _default_token()
    token = _token(token_path)
    store = store or f"sqlite:{home / 'kms' / 'kms.db'}"
    data = data or home / "kms" / "replica"
    with err_console.status("starting the key service enclave ..."):
        replica = start_kms_replica(
            tee,
            home / "images",
            store=store,
            data=data,
            admin_token=token,
            host=host,
            port=port,
            peers=peer,
            allow_simulated=backend == "simulated",
        )
    enclave, info, pcrs, log, url = replica.enclave, replica.info, replica.pcrs, replica.log_path, replica.url
    table = Table(title=f"Serdab key service at {url}", show_header=False)
    table.add_column("")
    table.add_column("")
    table.add_row(
        "enclave",
        f"{enclave.id} (pid {enclave.pid}, {backend}" + (": emulated, NOT A TEE)" if backend == "simulated" else ")"),
    )
    table.add_row("store", store)
    table.add_row("storage key", str(info["storage_key"]))
    for index in (PCR_IMAGE, PCR_RUNTIME, PCR_APP):
        table.add_row(f"PCR{index}", pcrs[index].hex())
    table.add_row("admin token", str(token_path))
    table.add_row("log", str(log))
    console.print(table)
    console.print(
        f"verify it: serdab attest {url}"
        + (" --allow-simulated" if backend == "simulated" else "")
        + (f" --evidence {kind}" if kind != "aws-nitro" else "")
        # Nitro shows each PCR; an SNP launch measurement covers PCR0-2 together, so all three are needed
        + "".join(
            f" --pcr {i}={pcrs[i].hex()}"
            for i in ((PCR_APP,) if kind == "aws-nitro" else (PCR_IMAGE, PCR_RUNTIME, PCR_APP))
        ),
        soft_wrap=True,
    )
    replica.serve_until_stopped()
    err_console.print("key service stopped")


def _measurement_options(values: list[str]) -> dict[str, bytes]:
    """['MRTD=ab..'] -> {"MRTD": bytes}; a bad one is a one-line usage error."""
    named = {}
    for value in values:
        name, _, digest = value.partition("=")
        try:
            named[name.strip()] = bytes.fromhex(digest)
        except ValueError:
            raise KmsError(f"--measurement {value!r} must look like MRTD=<hex>") from None
        if not name.strip().replace("_", "").isalnum() or not named[name.strip()]:
            raise KmsError(f"--measurement {value!r} must look like MRTD=<hex>")
    return named


@kms_app.command("register")
def register(
    name: Annotated[str, typer.Argument(help="Service name.")],
    url: Annotated[str, typer.Option(help="KMS address, e.g. https://127.0.0.1:8443.")],
    image: Annotated[
        Path | None, typer.Option(help="Enclave image of the service: its PCR0-2 become the policy.")
    ] = None,
    pcr: Annotated[list[str] | None, typer.Option(help="Expected PCR N=HEX instead of --image (repeatable).")] = None,
    measurement: Annotated[
        list[str] | None,
        typer.Option(
            help="Expected measurement NAME=HEX as the evidence names it (MEASUREMENT for SEV-SNP; MRTD, "
            "RTMR0..3 for TDX; PCR0.. for Nitro) instead of --image or --pcr (repeatable)."
        ),
    ] = None,
    allow_simulated: Annotated[
        bool, typer.Option("--allow-simulated", help="Release keys to simulated enclaves too (NOT TEEs).")
    ] = False,
    kms_pcr: Annotated[list[str] | None, typer.Option(help="Expected PCR of the KMS itself, N=HEX.")] = None,
    admin_token_file: Annotated[Path | None, typer.Option(help="Admin token file.")] = None,
    evidence: EvidenceOpt = None,
) -> None:
    """Register a service (or change its policy); the KMS generates its PKI inside its enclave.

    The policy names the evidence kind (--evidence, default $SERDAB_TEE_EVIDENCE or aws-nitro) and the
    measurements evidence of that kind must show: an image's as that kind reports them (Nitro: PCR0-2;
    simulated SEV-SNP: the launch measurement), or named with --measurement (a real SNP guest's
    MEASUREMENT, a TD's MRTD and RTMRs). The key service itself is attested in the deployment's kind."""
    kind = evidence_option(evidence)  # the service's; the key service is attested in the deployment's
    named = _measurement_options(measurement or [])
    if image is not None:
        measured = measure_image(image)
        expected = {i: measured[i] for i in (PCR_IMAGE, PCR_RUNTIME, PCR_APP)}
    else:
        expected = parse_pcr_options(pcr or [])
    if sum(map(bool, (image is not None, pcr, named))) > 1:
        raise KmsError("give one of --image, --pcr or --measurement")
    if not expected and not named:
        raise KmsError(
            "give --image DIR, --pcr N=HEX or --measurement NAME=HEX: a policy with no measurements would "
            "release keys to any enclave"
        )
    roots = local_simulated_roots(create=allow_simulated)
    kms = attest_kms(
        url, expected_pcrs=parse_pcr_options(kms_pcr or []), allow_simulated=allow_simulated, simulated_roots=roots
    )
    try:
        token = _token(admin_token_file or _default_token())
        result = kms.register(name, token, expected, allow_simulated, kind=kind, measurements=named or None)
    finally:
        kms.close()
    console.print(
        f"service {result['name']} registered (PKI generation {result['generation']}); keys go to "
        f"enclaves whose {kind} evidence shows {', '.join(result['policy']['measurements'])} as named"
    )
