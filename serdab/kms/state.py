"""The key service's state: services and their PKI, encrypted with the storage key, CAS-versioned.

Only KMS enclaves ever hold the storage key (sealed on their host, or handed between attested
replicas), so the store sees ciphertext. ``update`` re-reads and re-applies a change when another
replica won the race, so concurrent registrations never lose each other.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, Field, field_validator, model_validator

from serdab.errors import KmsError
from serdab.kms.store import Store
from serdab.tee.evidence import EvidencePolicy

__all__ = ["BOOTSTRAP_KEY", "STATE_KEY", "KmsState", "ServicePolicy", "ServiceRecord", "StateStore", "key_id"]

STATE_KEY = "kms/state"
BOOTSTRAP_KEY = "kms/bootstrap"
_AAD = b"serdab-kms-state-v1"


def key_id(storage_key: bytes) -> str:
    return hashlib.sha256(b"serdab-storage-key-id|" + storage_key).hexdigest()[:32]


class ServicePolicy(BaseModel):
    """Which enclaves may receive a service's keys: the evidence kind, the measurements it must show by
    name (hex: ``PCR0``.. for Nitro, ``MEASUREMENT`` for SEV-SNP), simulated/debug allowed. A policy
    stored before kinds existed (``pcrs`` by index) reads as a Nitro one."""

    kind: Literal["aws-nitro", "amd-sev-snp", "intel-tdx"] = "aws-nitro"
    measurements: dict[str, str] = Field(default_factory=dict)
    allow_simulated: bool = False
    allow_debug: bool = False

    @model_validator(mode="before")
    @classmethod
    def _indexed_pcrs(cls, data: Any) -> Any:
        if isinstance(data, dict) and "pcrs" in data:
            data = dict(data)
            data.setdefault("measurements", {f"PCR{int(i)}": v for i, v in data.pop("pcrs").items()})
        return data

    @field_validator("measurements")
    @classmethod
    def _hex(cls, value: dict[str, str]) -> dict[str, str]:
        for name, digest in value.items():
            bytes.fromhex(digest)  # a ValueError here is pydantic's validation error
            if not name.replace("_", "").isalnum():
                raise ValueError(f"measurement name {name!r} is not a name")
        return value

    def evidence_policy(self) -> EvidencePolicy:
        return EvidencePolicy(
            self.kind,
            {name: bytes.fromhex(v) for name, v in self.measurements.items()},
            allow_debug=self.allow_debug,
            allow_simulated=self.allow_simulated,
        )


class ServiceRecord(BaseModel):
    name: str
    policy: ServicePolicy
    generation: int = 1
    ca_cert_pem: str
    ca_key_pem: str
    cert_pem: str
    key_pem: str
    model_key_hex: str


class KmsState(BaseModel):
    services: dict[str, ServiceRecord] = Field(default_factory=dict)


class StateStore:
    def __init__(self, store: Store, storage_key: bytes) -> None:
        self.store = store
        self._aead = AESGCM(storage_key)

    def _encrypt(self, state: KmsState) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, state.model_dump_json().encode(), _AAD)

    def _decrypt(self, blob: bytes) -> KmsState:
        try:
            return KmsState.model_validate_json(self._aead.decrypt(blob[:12], blob[12:], _AAD))
        except InvalidTag:
            raise KmsError("stored state does not decrypt with this storage key (tampered or another KMS)") from None

    def load(self) -> tuple[KmsState, int]:
        current = self.store.get(STATE_KEY)
        return (KmsState(), 0) if current is None else (self._decrypt(current.value), current.version)

    def update(self, change: Callable[[KmsState], KmsState], attempts: int = 20) -> KmsState:
        """Apply ``change`` to the latest state with compare-and-swap, retrying when another replica wrote first."""
        for _ in range(attempts):
            state, version = self.load()
            new = change(state.model_copy(deep=True))
            if self.store.compare_and_swap(STATE_KEY, version, self._encrypt(new)):
                return new
        raise KmsError(f"state update lost {attempts} races in a row; is another replica looping?")
