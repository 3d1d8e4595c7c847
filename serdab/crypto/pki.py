"""X.509 on P-384: roots, intermediate/host certificates and leaf certificates, PEM/DER helpers."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "cert_der",
    "cert_from_der",
    "cert_from_pem",
    "cert_pem",
    "issue_certificate",
    "key_from_pem",
    "key_pem",
    "new_key",
    "public_der",
    "public_from_der",
    "self_signed_ca",
    "self_signed_server",
    "sha384",
]


def sha384(data: bytes) -> bytes:
    return hashlib.sha384(data).digest()


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _name(common_name: str, organisation: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
        ]
    )


def _base(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int, now: dt.datetime | None
) -> x509.CertificateBuilder:
    """Subject, issuer, key, serial and validity (from 5 minutes ago, to absorb clock skew)."""
    now = now or dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _server_names(names: tuple[str, ...]) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    return sans


def self_signed_ca(
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    organisation: str = "Serdab",
    days: int = 3650,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    name = _name(common_name, organisation)
    return (
        _base(name, name, key.public_key(), days, now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )


def self_signed_server(
    key: ec.EllipticCurvePrivateKey, common_name: str, server_names: tuple[str, ...], days: int = 30
) -> x509.Certificate:
    """A self-signed TLS certificate a client can pin as its own trust anchor (attestation binds its hash)."""
    name = _name(common_name, "Serdab")
    return (
        _base(name, name, key.public_key(), days, None)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, False, False, False), critical=True)
        .add_extension(x509.SubjectAlternativeName(_server_names(server_names)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA384())
    )


def issue_certificate(
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
    common_name: str,
    *,
    organisation: str = "Serdab",
    ca: bool = False,
    server_names: tuple[str, ...] = (),
    days: int = 365,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """A certificate for ``public_key`` signed by ``issuer``; ``server_names`` become SANs (DNS or IP)."""
    builder = (
        _base(_name(common_name, organisation), issuer.subject, public_key, days, now)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
    if server_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(_server_names(server_names)), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA384())


def cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_from_der(data: bytes) -> x509.Certificate:
    return x509.load_der_x509_certificate(data)


def cert_from_pem(data: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(data)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def key_from_pem(data: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("expected an EC private key")
    return key


def public_der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_from_der(data: bytes) -> ec.EllipticCurvePublicKey:
    key = serialization.load_der_public_key(data)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("expected an EC public key")
    return key
