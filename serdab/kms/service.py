"""The key service's logic (S3ML's AECS, seed 002 sec. 4): register, rotate, release to attested enclaves.

No sockets here (``serdab.kms.server`` serves it over HTTPS). Keys leave only inside an
envelope encrypted to the public key of verified evidence (a Nitro document or an SEV-SNP report,
``serdab.tee.evidence``) of the kind and measurements the service's policy names, and whose nonce
this KMS issued and has not seen before.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import cbor2
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from serdab.crypto import (
    cert_pem,
    issue_certificate,
    key_pem,
    new_key,
    public_from_der,
    seal_envelope,
    self_signed_ca,
)
from serdab.errors import AttestationError, KmsRefusedError, UnknownServiceError
from serdab.kms.state import KmsState, ServicePolicy, ServiceRecord, StateStore
from serdab.tee.evidence import Evidence, EvidencePolicy, verify_evidence
from serdab.tee.verify import NonceRegistry

__all__ = ["KeyService", "ReleasedKeys", "new_service_record"]

SERVICE_NAMES = ("localhost", "127.0.0.1")


def new_service_record(
    name: str, policy: ServicePolicy, generation: int = 1, model_key_hex: str | None = None
) -> ServiceRecord:
    """A fresh PKI for a service: its CA and a server certificate for the enclaves that serve it."""
    ca_key = new_key()
    ca = self_signed_ca(ca_key, f"serdab service {name} CA (gen {generation})")
    key = new_key()
    cert = issue_certificate(ca_key, ca, key.public_key(), f"serdab service {name}", server_names=SERVICE_NAMES)
    return ServiceRecord(
        name=name,
        policy=policy,
        generation=generation,
        ca_cert_pem=cert_pem(ca).decode(),
        ca_key_pem=key_pem(ca_key).decode(),
        cert_pem=cert_pem(cert).decode(),
        key_pem=key_pem(key).decode(),
        model_key_hex=model_key_hex or os.urandom(32).hex(),
    )


@dataclass(frozen=True)
class ReleasedKeys:
    """What an enclave gets after the envelope is opened."""

    service: str
    generation: int
    ca_cert_pem: str
    cert_pem: str
    key_pem: str
    model_key: bytes

    @classmethod
    def from_cbor(cls, data: bytes) -> ReleasedKeys:
        item = cbor2.loads(data)
        return cls(item["service"], item["generation"], item["ca"], item["cert"], item["key"], item["model_key"])


class KeyService:
    def __init__(
        self,
        state: StateStore,
        simulated_roots: Sequence[x509.Certificate] = (),
        nonces: NonceRegistry | None = None,
        max_age_s: float = 300.0,
    ) -> None:
        self.state = state
        self.simulated_roots = list(simulated_roots)
        self.nonces = nonces or NonceRegistry()
        self.max_age_s = max_age_s

    def issue_nonce(self) -> bytes:
        return self.nonces.issue()

    def register(self, name: str, policy: ServicePolicy, model_key: bytes | None = None) -> ServiceRecord:
        """Create the service (new PKI) or, when it exists, replace its policy (and its model key if given).

        ``model_key`` is the owner's key for the weights the service's enclaves decrypt (for example
        a pipeline stage file); without one the KMS generates it.
        """

        def change(state: KmsState) -> KmsState:
            if name in state.services:
                state.services[name].policy = policy
                if model_key is not None:
                    state.services[name].model_key_hex = model_key.hex()
            else:
                key_hex = model_key.hex() if model_key else None
                state.services[name] = new_service_record(name, policy, model_key_hex=key_hex)
            return state

        return self.state.update(change).services[name]

    def rotate(self, name: str) -> ServiceRecord:
        """New CA, certificate and key for the service; the model key is kept (weights stay readable)."""

        def change(state: KmsState) -> KmsState:
            old = self._record(state, name)
            state.services[name] = new_service_record(name, old.policy, old.generation + 1, old.model_key_hex)
            return state

        return self.state.update(change).services[name]

    def record(self, name: str) -> ServiceRecord:
        return self._record(self.state.load()[0], name)

    def services(self) -> list[str]:
        return sorted(self.state.load()[0].services)

    @staticmethod
    def _record(state: KmsState, name: str) -> ServiceRecord:
        if name not in state.services:
            known = ", ".join(sorted(state.services)) or "none"
            raise UnknownServiceError(f"no service named {name!r} (registered: {known})")
        return state.services[name]

    def verify(self, document: bytes, policy: EvidencePolicy) -> Evidence:
        """Check evidence (any kind) against a policy with a nonce this KMS issued; KmsRefusedError says why not."""
        try:
            verified = verify_evidence(
                document,
                policy,
                nonces=self.nonces,
                max_age_s=self.max_age_s,
                simulated_roots=self.simulated_roots,
            )
        except AttestationError as exc:
            raise KmsRefusedError(f"refused: {type(exc).__name__}: {exc}") from None
        if not verified.public_key:
            raise KmsRefusedError("refused: the evidence carries no public_key to encrypt the keys to")
        try:  # the verifier takes public_key as opaque bytes (NSM requires no key there); here it must be one
            public_from_der(verified.public_key)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise KmsRefusedError(
                "refused: the evidence's public_key is not a DER SubjectPublicKeyInfo EC key to encrypt the keys to"
            ) from None
        return verified

    def release(self, name: str, document: bytes) -> bytes:
        """The service's keys in an envelope for the attested enclave (CBOR, see ``ReleasedKeys``)."""
        record = self.record(name)
        verified = self.verify(document, record.policy.evidence_policy())
        bundle = cbor2.dumps(
            {
                "service": name,
                "generation": record.generation,
                "ca": record.ca_cert_pem,
                "cert": record.cert_pem,
                "key": record.key_pem,
                "model_key": bytes.fromhex(record.model_key_hex),
            }
        )
        assert verified.public_key is not None  # verify() refuses a document without one
        return seal_envelope(bundle, public_from_der(verified.public_key), context=name.encode())
