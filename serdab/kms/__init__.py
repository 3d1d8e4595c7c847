"""The key service (S3ML's AECS, seed 002 sec. 4): attestation-gated key release, CAS-stored state."""

from serdab.kms.client import AttestedKms, attest_kms, connect_service, fetch_certificate, open_service
from serdab.kms.image import kms_image
from serdab.kms.service import KeyService, ReleasedKeys
from serdab.kms.state import KmsState, ServicePolicy, ServiceRecord, StateStore
from serdab.kms.store import PostgresStore, SqliteStore, Store, Versioned, open_store

__all__ = [
    "AttestedKms",
    "KeyService",
    "KmsState",
    "PostgresStore",
    "ReleasedKeys",
    "ServicePolicy",
    "ServiceRecord",
    "SqliteStore",
    "StateStore",
    "Store",
    "Versioned",
    "attest_kms",
    "connect_service",
    "fetch_certificate",
    "kms_image",
    "open_service",
    "open_store",
]
