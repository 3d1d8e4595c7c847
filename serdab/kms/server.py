"""The key service over HTTPS (FastAPI), meant to run inside an enclave (``serdab.kms.enclave``).

Endpoints (JSON unless marked CBOR)::

    GET  /v1/health                         liveness, replica id, number of services
    GET  /v1/attestation?nonce=HEX          CBOR: this KMS's evidence, user_data = SHA-384 of its TLS cert
    GET  /v1/nonce                          a single-use nonce to put in an attestation document
    POST /v1/services                       (admin) register a service + policy (evidence kind, measurements)
                                            [+ owner's model key]; PKI made here
    POST /v1/services/{name}/rotate         (admin) new PKI generation
    GET  /v1/services/{name}/certificate    the service CA and certificate (public)
    POST /v1/services/{name}/keys           CBOR {document: evidence} -> CBOR {envelope}: keys for an attested enclave
    POST /v1/replica/storage-key            CBOR {document} -> CBOR {envelope}: the storage key for a twin KMS

Bad input is a 4xx with an ``error`` message (415 wrong content type, 413 over 64 KiB, 400 bad
CBOR, 401 admin token, 403 refused by policy, 404 unknown service); the server keeps serving.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import cbor2
from fastapi import FastAPI, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from serdab.errors import AttestationError, KmsRefusedError, SerdabError, UnknownServiceError
from serdab.kms.service import KeyService
from serdab.kms.state import ServicePolicy
from serdab.web import HttpError, install_errors, read_body

__all__ = ["MAX_BODY", "RegisterRequest", "create_app"]

MAX_BODY = 64 * 1024
CBOR = "application/cbor"


class RegisterRequest(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    kind: str = Field("aws-nitro", description="the evidence kind: aws-nitro, amd-sev-snp or intel-tdx")
    measurements: dict[str, str] = Field(default_factory=dict, description='by name, hex: {"PCR0": ...}')
    pcrs: dict[int, str] | None = Field(None, description="Nitro PCRs by index (older clients); or measurements")
    allow_simulated: bool = False
    allow_debug: bool = False
    model_key: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="the owner's AES-256 key, hex")


async def _cbor_body(request: Request) -> dict[str, Any]:
    body = await read_body(request, (CBOR,), MAX_BODY)
    try:
        item = cbor2.loads(body)
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError):
        raise HttpError(400, "body is not valid CBOR") from None
    if not isinstance(item, dict) or not isinstance(item.get("document"), bytes):
        raise HttpError(400, "body must be a CBOR map with a byte-string 'document'")
    return item


def create_app(
    service: KeyService,
    *,
    attest: Callable[[bytes | None], bytes],
    admin_token: str,
    share_storage_key: Callable[[bytes], bytes],
    replica_id: str,
) -> FastAPI:
    """``attest(nonce)`` returns this KMS's own document; ``share_storage_key(document)`` an envelope."""
    app = FastAPI(title="Serdab key service", version="1", docs_url=None, redoc_url=None)

    def status_of(exc: Exception) -> int:
        if isinstance(exc, UnknownServiceError):
            return 404
        return 403 if isinstance(exc, KmsRefusedError | AttestationError) else 400

    install_errors(app, {SerdabError: status_of})

    def _admin(request: Request) -> None:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not given or not hmac.compare_digest(given.encode(), admin_token.encode()):
            raise HttpError(401, "admin token missing or wrong (Authorization: Bearer <token>)")

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "replica": replica_id, "services": len(service.services())}

    @app.get("/v1/attestation")
    def attestation(nonce: str | None = Query(None, max_length=128)) -> Response:
        try:
            raw = bytes.fromhex(nonce) if nonce else None
        except ValueError:
            raise HttpError(400, "nonce must be hex") from None
        return Response(attest(raw), media_type=CBOR)

    @app.get("/v1/nonce")
    def nonce() -> dict[str, str]:
        return {"nonce": service.issue_nonce().hex()}

    @app.post("/v1/services", status_code=201)
    def register(body: RegisterRequest, request: Request) -> dict[str, Any]:
        _admin(request)
        fields = body.model_dump(exclude={"name", "model_key"}, exclude_none=True)
        if body.pcrs is not None and body.measurements:
            raise HttpError(422, "give measurements by name or pcrs by index, not both")
        try:
            policy = ServicePolicy.model_validate(fields)
        except ValueError:
            raise HttpError(
                422,
                "kind must be aws-nitro, amd-sev-snp or intel-tdx; measurements map names to hex "
                "(pcrs: indices to hex)",
            ) from None
        record = service.register(body.name, policy, bytes.fromhex(body.model_key) if body.model_key else None)
        return {"name": record.name, "generation": record.generation, "policy": record.policy.model_dump()}

    @app.post("/v1/services/{name}/rotate")
    def rotate(name: str, request: Request) -> dict[str, Any]:
        _admin(request)
        record = service.rotate(name)
        return {"name": record.name, "generation": record.generation}

    @app.get("/v1/services/{name}/certificate")
    def certificate(name: str) -> dict[str, Any]:
        record = service.record(name)
        return {
            "service": name,
            "generation": record.generation,
            "ca_pem": record.ca_cert_pem,
            "cert_pem": record.cert_pem,
            "policy": record.policy.model_dump(),  # a client checks which code may hold the service key
        }

    @app.post("/v1/services/{name}/keys")
    async def keys(name: str, request: Request) -> Response:
        body = await _cbor_body(request)
        envelope = service.release(name, body["document"])
        return Response(cbor2.dumps({"envelope": envelope}), media_type=CBOR)

    @app.post("/v1/replica/storage-key")
    async def storage_key(request: Request) -> Response:
        body = await _cbor_body(request)
        envelope = share_storage_key(body["document"])
        return Response(cbor2.dumps({"envelope": envelope}), media_type=CBOR)

    return app
