"""Client side of the key service: attest-then-connect, fail closed.

``attest_kms`` fetches the KMS's TLS certificate, asks the KMS for its evidence (a Nitro document or
an SEV-SNP report) with a fresh nonce, verifies it (measurements, root, age, nonce) and checks that
its user_data is the hash of that very certificate; only then is the certificate pinned for every
later request.
``connect_service`` goes on to fetch a service's CA from the attested KMS and opens TLS to an
enclave serving that service, trusting nothing else.
"""

from __future__ import annotations

import secrets
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import cbor2
import httpx
from cryptography import x509

from serdab.crypto import cert_from_der, cert_pem, open_envelope, public_der, sha384
from serdab.crypto.pki import new_key
from serdab.errors import KmsError, KmsRefusedError, KmsUnreachableError, UnknownServiceError
from serdab.kms.service import ReleasedKeys
from serdab.tee.backend import Nsm
from serdab.tee.evidence import Evidence, EvidencePolicy, evidence_kind, image_measurements, verify_evidence
from serdab.web import error_message

__all__ = ["AttestedKms", "attest_kms", "connect_service", "fetch_certificate", "open_service"]

CBOR = "application/cbor"


def _address(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    if parsed.scheme != "https" or not parsed.hostname:
        raise KmsError(f"KMS URL must look like https://127.0.0.1:8443, got {url!r}")
    return parsed.hostname, parsed.port or 443


def fetch_certificate(url: str, timeout_s: float = 10.0) -> bytes:
    """The DER certificate a TLS server presents (not yet trusted: attestation decides)."""
    host, port = _address(url)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw, context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    except OSError as exc:
        raise KmsUnreachableError(f"no KMS at {url}: {exc}") from None
    if not der:
        raise KmsUnreachableError(f"{url} presented no certificate")
    return der


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    detail = error_message(response)
    if response.status_code == 404 and "service" in str(detail):
        raise UnknownServiceError(str(detail))
    if response.status_code == 403:
        raise KmsRefusedError(str(detail))
    raise KmsError(f"KMS answered {response.status_code}: {detail}")


@dataclass
class AttestedKms:
    """An HTTPS client pinned to a KMS whose attestation verified."""

    url: str
    certificate: x509.Certificate
    attestation: Evidence
    client: httpx.Client

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.client.request(method, self.url.rstrip("/") + path, **kwargs)
        except httpx.HTTPError as exc:
            raise KmsUnreachableError(f"KMS {self.url} did not answer: {exc}") from None
        _raise_for(response)
        return response

    def nonce(self) -> bytes:
        return bytes.fromhex(self.request("GET", "/v1/nonce").json()["nonce"])

    def service_certificate(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/services/{name}/certificate").json()

    def register(
        self,
        name: str,
        admin_token: str,
        pcrs: Mapping[int, bytes],
        allow_simulated: bool = False,
        allow_debug: bool = False,
        model_key: bytes | None = None,
        kind: str | None = None,
        measurements: Mapping[str, bytes] | None = None,
    ) -> dict[str, Any]:
        """Register ``name`` for enclaves of the image with these PCRs, attesting in ``kind`` (default:
        the deployment's, ``serdab.tee.evidence.evidence_kind``); or for evidence showing
        ``measurements`` by name (a real SNP guest's launch digest, a TD's MRTD and RTMRs)."""
        kind = evidence_kind(kind)
        named = dict(measurements) if measurements else image_measurements(kind, pcrs)
        body: dict[str, Any] = {
            "name": name,
            "kind": kind,
            "measurements": {n: v.hex() for n, v in named.items()},
            "allow_simulated": allow_simulated,
            "allow_debug": allow_debug,
        }
        if model_key is not None:
            body["model_key"] = model_key.hex()
        return self.request("POST", "/v1/services", json=body, headers=_bearer(admin_token)).json()

    def rotate(self, name: str, admin_token: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/services/{name}/rotate", headers=_bearer(admin_token)).json()

    def release_keys(self, name: str, nsm: Nsm) -> ReleasedKeys:
        """From inside an enclave: attest with a KMS nonce and a fresh key, receive the service's keys."""
        key = new_key()
        document = nsm.attest(nonce=self.nonce(), public_key=public_der(key.public_key()))
        reply = self.request(
            "POST",
            f"/v1/services/{name}/keys",
            content=cbor2.dumps({"document": document}),
            headers={"content-type": CBOR},
        )
        envelope = cbor2.loads(reply.content)["envelope"]
        return ReleasedKeys.from_cbor(open_envelope(envelope, key, context=name.encode()))

    def close(self) -> None:
        self.client.close()


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def attest_kms(
    url: str,
    *,
    expected_pcrs: Mapping[int, bytes] | None = None,
    allow_simulated: bool = False,
    allow_debug: bool = False,
    simulated_roots: Sequence[x509.Certificate] = (),
    timeout_s: float = 10.0,
    nonce: bytes | None = None,
    kind: str | None = None,
) -> AttestedKms:
    """Verify the KMS at ``url`` (evidence of ``kind``, default the deployment's) and return a client
    pinned to its attested TLS certificate."""
    der = fetch_certificate(url, timeout_s)
    certificate = cert_from_der(der)
    context = ssl.create_default_context(cadata=cert_pem(certificate).decode())
    client = httpx.Client(verify=context, timeout=timeout_s)
    nonce = nonce or secrets.token_bytes(32)
    try:
        response = client.get(url.rstrip("/") + "/v1/attestation", params={"nonce": nonce.hex()})
    except httpx.HTTPError as exc:
        client.close()
        raise KmsUnreachableError(f"KMS {url} did not answer: {exc}") from None
    _raise_for(response)
    try:
        verified = verify_evidence(
            response.content,
            EvidencePolicy.for_image(expected_pcrs, kind, allow_simulated=allow_simulated, allow_debug=allow_debug),
            nonce=nonce,
            user_data=sha384(der),
            simulated_roots=simulated_roots,
        )
    except Exception:
        client.close()
        raise
    return AttestedKms(url, certificate, verified, client)


def connect_service(kms: AttestedKms, service: str, address: tuple[str, int], timeout_s: float = 10.0) -> ssl.SSLSocket:
    """TLS to an enclave serving ``service``, trusting only the service CA the attested KMS gives."""
    ca_pem = kms.service_certificate(service)["ca_pem"]
    context = ssl.create_default_context(cadata=ca_pem)
    try:
        raw = socket.create_connection(address, timeout=timeout_s)
    except OSError as exc:
        raise KmsUnreachableError(f"no enclave of {service} at {address[0]}:{address[1]}: {exc}") from None
    try:
        return context.wrap_socket(raw, server_hostname=address[0])
    except ssl.SSLError as exc:
        raw.close()
        raise KmsError(f"{address[0]}:{address[1]} is not an enclave of {service}: TLS failed ({exc.reason})") from None


def open_service(
    kms_url: str,
    service: str,
    address: tuple[str, int],
    *,
    expected_kms_pcrs: Mapping[int, bytes] | None = None,
    allow_simulated: bool = False,
    simulated_roots: Sequence[x509.Certificate] = (),
    timeout_s: float = 10.0,
    kind: str | None = None,
) -> ssl.SSLSocket:
    """Attest-then-connect in one call: verify the KMS, fetch the service CA, open pinned TLS to the enclave."""
    kms = attest_kms(
        kms_url,
        expected_pcrs=expected_kms_pcrs,
        allow_simulated=allow_simulated,
        simulated_roots=simulated_roots,
        timeout_s=timeout_s,
        kind=kind,
    )
    try:
        return connect_service(kms, service, address, timeout_s)
    finally:
        kms.close()
