"""The key service inside its enclave: bootstrap the storage key, then serve HTTPS.

Storage-key bootstrap across replicas (seed 002, Fig. 3): a replica first tries its own sealed
copy (sealed to its measurement on this host); otherwise it races to create the bootstrap record
in the store with compare-and-swap. The winner generates the storage key and seals it; every
other replica attests a running peer (its PCRs must equal ours) and is attested by it in turn,
then receives the key in an envelope to the public key of its own document.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

import cbor2

from serdab.crypto import (
    cert_der,
    cert_pem,
    key_pem,
    new_key,
    open_envelope,
    public_der,
    public_from_der,
    seal_envelope,
    self_signed_server,
    sha384,
)
from serdab.errors import KmsError, SerdabError
from serdab.kms.client import attest_kms
from serdab.kms.server import create_app
from serdab.kms.service import KeyService
from serdab.kms.state import BOOTSTRAP_KEY, StateStore, key_id
from serdab.kms.store import Store, open_store
from serdab.tee.evidence import EvidencePolicy
from serdab.tee.host import HostIdentity
from serdab.tee.image import PCR_TLS
from serdab.tee.nsm import NsmClient
from serdab.validation import write_private
from serdab.web import listen_http, serve_app

__all__ = ["MEASURED_PCRS", "main", "obtain_storage_key"]

MEASURED_PCRS = (0, 1, 2, 16)  # what a twin KMS must share with us (PCR17 differs: each has its own TLS cert)
SEALED_FILE = "storage-key.sealed"
ADMIN_TOKEN_ENV = "SERDAB_KMS_ADMIN_TOKEN"


def _from_peer(peer: str, nsm: NsmClient, own: dict[int, bytes], allow_simulated: bool, roots: Sequence) -> bytes:
    kms = attest_kms(peer, expected_pcrs=own, allow_simulated=allow_simulated, simulated_roots=roots)
    try:
        key = new_key()
        document = nsm.attest(nonce=kms.nonce(), public_key=public_der(key.public_key()))
        reply = kms.request(
            "POST",
            "/v1/replica/storage-key",
            content=cbor2.dumps({"document": document}),
            headers={"content-type": "application/cbor"},
        )
        return open_envelope(cbor2.loads(reply.content)["envelope"], key, context=b"storage-key")
    finally:
        kms.close()


def obtain_storage_key(
    store: Store, nsm: NsmClient, data: Path, peers: Sequence[str], allow_simulated: bool, roots: Sequence
) -> tuple[bytes, str]:
    """(storage key, how it was obtained): unsealed, created (CAS winner) or from a peer."""
    sealed = data / SEALED_FILE
    record = store.get(BOOTSTRAP_KEY)
    expected_id = cbor2.loads(record.value)["key_id"] if record else None
    if sealed.exists():
        key = nsm.unseal(sealed.read_bytes())
        if expected_id not in (None, key_id(key)):
            raise KmsError(f"the sealed storage key in {data} belongs to another KMS deployment than this store")
        return key, "unsealed"
    if record is None:
        key = os.urandom(32)
        claim = cbor2.dumps({"key_id": key_id(key), "creator": os.environ.get("SERDAB_ENCLAVE_ID", "?")})
        if store.compare_and_swap(BOOTSTRAP_KEY, 0, claim):
            write_private(sealed, nsm.seal(key))
            return key, "created"
        winner = store.get(BOOTSTRAP_KEY)  # lost the race: the record exists now
        if winner is None:
            raise KmsError("the store lost the bootstrap record another replica just wrote")
        expected_id = cbor2.loads(winner.value)["key_id"]
    own = {i: v for i, v in nsm.describe().items() if i in MEASURED_PCRS}
    errors = []
    for peer in peers:
        try:
            key = _from_peer(peer, nsm, own, allow_simulated, roots)
        except SerdabError as exc:
            errors.append(f"{peer}: {exc}")
            continue
        if key_id(key) != expected_id:
            errors.append(f"{peer}: its storage key is not the one this store was initialised with")
            continue
        write_private(sealed, nsm.seal(key))
        return key, f"from {peer}"
    detail = "; ".join(errors) if errors else "no --peer given"
    raise KmsError(
        f"another replica initialised this store; start with --peer https://HOST:PORT of a running one ({detail})"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serdab-kms-enclave")
    parser.add_argument("--store", required=True)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--peer", action="append", default=[])
    parser.add_argument("--allow-simulated", action="store_true")
    parser.add_argument("--host-dir", type=Path, default=None, help="simulated host identity (for its root cert)")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    admin_token = os.environ.get(ADMIN_TOKEN_ENV, "")
    if len(admin_token) < 16:
        raise KmsError(f"{ADMIN_TOKEN_ENV} must hold an admin token of at least 16 characters")
    nsm = NsmClient.from_env()
    roots = HostIdentity.load_or_create(args.host_dir).simulated_roots() if args.allow_simulated else []
    args.data.mkdir(parents=True, exist_ok=True)
    store = open_store(args.store)
    storage_key, origin = obtain_storage_key(store, nsm, args.data, args.peer, args.allow_simulated, roots)

    tls_key = new_key()  # lives only in this process
    tls_cert = self_signed_server(tls_key, "serdab-kms", ("localhost", "127.0.0.1", args.host))
    tls_hash = sha384(cert_der(tls_cert))
    nsm.extend(PCR_TLS, tls_hash)
    own = {i: v for i, v in nsm.describe().items() if i in MEASURED_PCRS}
    service = KeyService(StateStore(store, storage_key), simulated_roots=roots)

    def share_storage_key(document: bytes) -> bytes:
        verified = service.verify(document, EvidencePolicy.for_image(own, allow_simulated=args.allow_simulated))
        assert verified.public_key is not None  # KeyService.verify refuses a document without an EC key there
        return seal_envelope(storage_key, public_from_der(verified.public_key), context=b"storage-key")

    replica = os.environ.get("SERDAB_ENCLAVE_ID", "kms")
    app = create_app(
        service,
        attest=lambda nonce: nsm.attest(nonce=nonce, user_data=tls_hash),
        admin_token=admin_token,
        share_storage_key=share_storage_key,
        replica_id=replica,
    )
    sock = listen_http(args.host, args.port)
    port = sock.getsockname()[1]
    asyncio.run(
        serve_app(
            app,
            sock,
            lambda: nsm.ready(port=port, storage_key=origin, tls_sha384=tls_hash.hex(), replica=replica),
            tls=(cert_pem(tls_cert), key_pem(tls_key)),
        )
    )
    return 0
