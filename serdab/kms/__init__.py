"""The key service (S3ML's AECS, seed 002 sec. 4): attestation-gated key release, CAS-stored state.

How the pieces fit: ``service`` is the logic (no sockets), ``server`` serves it over HTTPS inside
its own enclave (``enclave``, launched by ``replica`` from the image ``image`` builds), ``state`` and
``store`` keep it. ``lifecycle`` is the one home of a model key's way from owner to enclave (encrypt,
measured model image, ``KmsCoordinates``, ``fetch_model`` inside the enclave) and ``owner`` the
owner's attested session that registers images; ``client`` is what both sides speak. The pipeline
runtime and model serving both use ``lifecycle`` and ``owner``. Depends only on ``tee`` and ``crypto``.
"""

from serdab.kms.client import AttestedKms, attest_kms, connect_service, fetch_certificate, open_service
from serdab.kms.image import kms_image
from serdab.kms.lifecycle import (
    MEASURED_PCRS,
    KmsCoordinates,
    ModelImage,
    build_model_image,
    decrypt_model,
    encrypt_model,
    fetch_model,
)
from serdab.kms.owner import OwnerSession
from serdab.kms.service import KeyService, ReleasedKeys
from serdab.kms.state import KmsState, ServicePolicy, ServiceRecord, StateStore
from serdab.kms.store import PostgresStore, SqliteStore, Store, Versioned, open_store

__all__ = [
    "MEASURED_PCRS",
    "AttestedKms",
    "KeyService",
    "KmsCoordinates",
    "KmsState",
    "ModelImage",
    "OwnerSession",
    "PostgresStore",
    "ReleasedKeys",
    "ServicePolicy",
    "ServiceRecord",
    "SqliteStore",
    "StateStore",
    "Store",
    "Versioned",
    "attest_kms",
    "build_model_image",
    "connect_service",
    "decrypt_model",
    "encrypt_model",
    "fetch_certificate",
    "fetch_model",
    "kms_image",
    "open_service",
    "open_store",
]
