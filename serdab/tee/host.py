"""The simulated TEE host: its root of trust, signing CA and sealing secret, created once per host.

Real Nitro documents chain to the AWS Nitro root; simulated ones chain to a root whose name
says what it is (CN=SIMULATED-NOT-A-TEE), generated on first use under ``$SERDAB_HOME/tee-host``
(default ``~/.serdab/tee-host``), files mode 0600. The host CA certifies a fresh key per enclave,
and that key signs the enclave's attestation documents, as Nitro's per-enclave certificates do.
The sealing secret never leaves the host side (the enclave asks the host's NSM to seal).
"""

from __future__ import annotations

import fcntl
import os
import platform
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from serdab.crypto import cert_from_pem, cert_pem, issue_certificate, key_from_pem, key_pem, new_key, self_signed_ca
from serdab.validation import write_private

if TYPE_CHECKING:
    from serdab.tee.snp_firmware import SimulatedSnpFirmware

__all__ = ["SIMULATED_ROOT_CN", "HostIdentity", "local_simulated_roots", "serdab_home"]

SIMULATED_ROOT_CN = "SIMULATED-NOT-A-TEE"


def serdab_home() -> Path:
    return Path(os.environ.get("SERDAB_HOME") or Path.home() / ".serdab")


@dataclass(frozen=True)
class HostIdentity:
    directory: Path
    root_cert: x509.Certificate
    host_key: ec.EllipticCurvePrivateKey
    host_cert: x509.Certificate
    sealing_secret: bytes

    @classmethod
    def load_or_create(cls, directory: Path | None = None) -> HostIdentity:
        directory = Path(directory or serdab_home() / "tee-host")
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with (directory / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two processes starting at once create one identity
            if not (directory / "host.key").exists():
                cls._create(directory)
        return cls(
            directory=directory,
            root_cert=cert_from_pem((directory / "root.pem").read_bytes()),
            host_key=key_from_pem((directory / "host.key").read_bytes()),
            host_cert=cert_from_pem((directory / "host.pem").read_bytes()),
            sealing_secret=(directory / "sealing.secret").read_bytes(),
        )

    def snp_firmware(self) -> SimulatedSnpFirmware:
        """This host's simulated AMD secure processor (made on first use)."""
        from serdab.tee.snp_firmware import SimulatedSnpFirmware

        return SimulatedSnpFirmware.load_or_create(self.directory)

    def simulated_roots(self) -> list[x509.Certificate]:
        """Every simulated root of this host: the Nitro-format root, and the simulated ARK once made."""
        roots = [self.root_cert]
        if (self.directory / "snp-chain.pem").exists():
            roots.append(x509.load_pem_x509_certificates((self.directory / "snp-chain.pem").read_bytes())[0])
        return roots

    @staticmethod
    def _create(directory: Path) -> None:
        root_key = new_key()
        root = self_signed_ca(root_key, SIMULATED_ROOT_CN, "Serdab simulated TEE (NOT A TEE)", days=3650)
        host_key = new_key()
        host = issue_certificate(
            root_key,
            root,
            host_key.public_key(),
            f"sim-host-{platform.node() or 'local'}",
            organisation="Serdab simulated TEE (NOT A TEE)",
            ca=True,
            days=3650,
        )
        (directory / "root.pem").write_bytes(cert_pem(root))
        write_private(directory / "root.key", key_pem(root_key))
        (directory / "host.pem").write_bytes(cert_pem(host))
        write_private(directory / "sealing.secret", secrets.token_bytes(32))
        write_private(directory / "host.key", key_pem(host_key))  # written last: its presence means complete


def local_simulated_roots(create: bool = False) -> list[x509.Certificate]:
    """This host's simulated root, to recognise (and, only if allowed, accept) simulated documents."""
    directory = serdab_home() / "tee-host"
    if not create and not (directory / "host.key").exists():
        return []
    return HostIdentity.load_or_create(directory).simulated_roots()
