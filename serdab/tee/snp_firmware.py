"""The AMD Secure Processor, simulated: SEV-SNP attestation reports for simulated enclaves.

So the runtime and serving flows can run end to end on SNP-format evidence without SNP hardware.
Honest about what it is: the chain is ARK -> ASK -> VCEK as AMD's (RSA-4096 with RSA-PSS/SHA-384
for the ARK and ASK, an ECDSA P-384 VCEK carrying the chip id and TCB extensions AMD's VCEKs carry),
but the ARK is named ``SIMULATED-NOT-A-TEE ARK``, generated once per host under the simulated host
directory, and no verifier accepts it unless its caller allows simulated evidence. The reports
are the real layout (version 2, 1184 bytes, signed over bytes 0..0x29F), so the verifier that checks
genuine reports (``serdab.tee.snp``) checks these with the same code.

The launch measurement of an image is ``launch_measurement(pcrs)``: SHA-384 over a label and the
image's PCR0-2 (the whole image, the runtime lock, the application code), since a simulated
enclave has no firmware or kernel to measure; a real SNP guest's measurement comes from its
firmware, kernel and command line (AMD's launch digest), which a policy then names instead.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import platform
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from serdab.tee.snp import HWID_OID, POLICY_DEBUG, POLICY_RESERVED_ONE, REPORT_BYTES, SIGNED_BYTES, SPL_OIDS
from serdab.validation import write_private

__all__ = ["SIMULATED_ARK_CN", "SimulatedSnpFirmware", "launch_measurement"]

SIMULATED_ARK_CN = "SIMULATED-NOT-A-TEE ARK"
_ORG = "Serdab simulated TEE (NOT A TEE)"
# a TCB as a 2024 Milan firmware reports it (boot loader, TEE, SNP, microcode SPLs)
TCB = {"boot_loader": 4, "tee": 0, "snp": 22, "microcode": 213}
_LAUNCH_LABEL = b"serdab-simulated-snp-launch-v1"
_POLICY_SMT = 1 << 16


def launch_measurement(pcrs: dict[int, bytes]) -> bytes:
    """The 48-byte MEASUREMENT a simulated SNP guest launched from an image with these PCRs reports."""
    return hashlib.sha384(_LAUNCH_LABEL + b"".join(pcrs[i] for i in (0, 1, 2))).digest()


def _tcb_bytes() -> bytes:
    return bytes([TCB["boot_loader"], TCB["tee"], 0, 0, 0, 0, TCB["snp"], TCB["microcode"]])


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")  # a leading zero keeps it positive
    return bytes([0x02, len(body)]) + body


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name), x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG)]
    )


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def _certificate(
    subject: str, issuer: x509.Name, key: object, signer: rsa.RSAPrivateKey, ca: bool, extensions: list
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(signer, hashes.SHA384(), rsa_padding=_pss())


@dataclass(frozen=True)
class SimulatedSnpFirmware:
    ark: x509.Certificate
    ask: x509.Certificate
    vcek: x509.Certificate
    vcek_key: ec.EllipticCurvePrivateKey
    chip_id: bytes

    @classmethod
    def load_or_create(cls, directory: Path) -> SimulatedSnpFirmware:
        """This host's simulated chip, made on first use (two RSA-4096 keys: a second or two, once)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with (directory / ".snp-lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (directory / "snp-vcek.key").exists():
                cls._create(directory)
        pem = (directory / "snp-chain.pem").read_bytes()
        ark, ask, vcek = x509.load_pem_x509_certificates(pem)
        key = serialization.load_pem_private_key((directory / "snp-vcek.key").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(ark, ask, vcek, key, (directory / "snp-chip-id").read_bytes())

    @staticmethod
    def _create(directory: Path) -> None:
        ark_key = rsa.generate_private_key(65537, 4096)
        ask_key = rsa.generate_private_key(65537, 4096)
        vcek_key = ec.generate_private_key(ec.SECP384R1())
        chip_id = hashlib.sha512(
            b"serdab-simulated-chip|" + platform.node().encode() + secrets.token_bytes(32)
        ).digest()
        ark = _certificate(SIMULATED_ARK_CN, _name(SIMULATED_ARK_CN), ark_key.public_key(), ark_key, True, [])
        ask = _certificate("SIMULATED-NOT-A-TEE ASK", ark.subject, ask_key.public_key(), ark_key, True, [])
        amd = [x509.UnrecognizedExtension(x509.ObjectIdentifier(HWID_OID), chip_id)] + [
            x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), _der_integer(TCB[name]))
            for name, oid in SPL_OIDS.items()
        ]
        vcek = _certificate("SIMULATED-NOT-A-TEE SEV-VCEK", ask.subject, vcek_key.public_key(), ask_key, False, amd)
        chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (ark, ask, vcek))
        (directory / "snp-chain.pem").write_bytes(chain)
        (directory / "snp-chip-id").write_bytes(chip_id)
        pem = vcek_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_private(directory / "snp-vcek.key", pem)  # written last: its presence means complete

    def certificates(self) -> list[bytes]:
        """VCEK, ASK, ARK in DER, as an evidence bundle carries them."""
        return [c.public_bytes(serialization.Encoding.DER) for c in (self.vcek, self.ask, self.ark)]

    def report(self, measurement: bytes, report_data: bytes, debug: bool = False, host_data: bytes = b"") -> bytes:
        """A signed version-2 attestation report (VMPL 0, VCEK-signed, chip id shown)."""
        if len(measurement) != 48 or len(report_data) != 64 or len(host_data) > 32:
            raise ValueError("an SNP report carries a 48-byte measurement, 64-byte report data, <= 32-byte host data")
        raw = bytearray(REPORT_BYTES)
        policy = POLICY_RESERVED_ONE | _POLICY_SMT | (POLICY_DEBUG if debug else 0)
        struct.pack_into("<IIQ", raw, 0, 2, 0, policy)
        struct.pack_into("<II", raw, 0x30, 0, 1)  # VMPL 0, ECDSA P-384 with SHA-384
        tcb = _tcb_bytes()
        raw[0x38:0x40] = tcb  # current
        struct.pack_into("<I", raw, 0x48, 0)  # signed by the VCEK, chip id not masked
        raw[0x50:0x90] = report_data
        raw[0x90:0xC0] = measurement
        raw[0xC0:0xE0] = host_data.ljust(32, b"\0")
        raw[0x140:0x160] = secrets.token_bytes(32)  # report id: this guest's
        raw[0x180:0x188] = tcb  # reported
        raw[0x1A0:0x1E0] = self.chip_id
        raw[0x1E0:0x1E8] = tcb  # committed
        raw[0x1F0:0x1F8] = tcb  # launch
        r, s = decode_dss_signature(self.vcek_key.sign(bytes(raw[:SIGNED_BYTES]), ec.ECDSA(hashes.SHA384())))
        raw[SIGNED_BYTES : SIGNED_BYTES + 72] = r.to_bytes(72, "little")
        raw[SIGNED_BYTES + 72 : SIGNED_BYTES + 144] = s.to_bytes(72, "little")
        return bytes(raw)
