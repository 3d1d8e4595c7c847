"""``serdab.Client``: numpy in, numpy out, for public replicas and (attest-then-send) enclave replicas.

A secure request goes only where the model owner's trust statement says (the ``trust`` dict that
`serdab serve` writes: key-service URL and PCRs, service name, replica image PCRs; it comes out
of band, never from the gateway). Before the first secure request the client

1. verifies the key service's attestation (its PCRs, its TLS certificate) and reads the service's
   CA certificate and key-release policy from it; the policy must name exactly the replica PCRs
   the owner stated, or the key could be released to other code;
2. opens TLS through the gateway's pass-through port, trusting only that CA (so the peer holds the
   service key, which only attested enclaves receive), and asks that very connection for an
   attestation document: its PCRs must be the replica image's, its nonce ours, and its user data
   the hash of the certificate the TLS session presented.

Any failure refuses to send (fail closed). A request whose connection breaks before an answer (or
whose attestation connection does: an enclave that dies) is sent again on a new connection
(inference is idempotent), at most ``retries`` times; a verification failure is never retried.
"""

from __future__ import annotations

import secrets
import socket
import ssl
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from serdab.errors import AttestationError, NoReplicaError, ServeError
from serdab.serve.protocol import BINARY_HEADER, encode_image, encode_infer_request, parse_infer_response
from serdab.web import error_message

if TYPE_CHECKING:
    from serdab.tee.evidence import EvidencePolicy

__all__ = ["Client", "service_certificate", "service_context"]


def service_context(ca_pem: str) -> ssl.SSLContext:
    """TLS trusting only a service's CA from the key service; no host name check, because that CA
    signs nothing but this service's certificate (held only by attested enclaves)."""
    context = ssl.create_default_context(cadata=ca_pem)
    context.check_hostname = False
    return context


def service_certificate(
    trust: Mapping[str, Any], timeout_s: float = 60.0
) -> tuple[dict[str, Any], EvidencePolicy, list[Any]]:
    """From the key service, attested against the owner's trust statement: the service's CA and release
    policy, which must name exactly the stated evidence kind and replica image; with the policy a
    replica's evidence must satisfy, and the simulated roots the statement names."""
    from cryptography import x509

    from serdab.kms.client import attest_kms
    from serdab.kms.state import ServicePolicy
    from serdab.tee.evidence import EvidencePolicy, evidence_kind

    t = trust
    missing = [k for k in ("kms", "kms_pcrs", "service", "replica_pcrs") if k not in t]
    if missing:
        raise AttestationError(
            f"a secure request needs the owner's trust statement ({', '.join(missing)} "
            "missing): pass trust=json.load(open('serve-trust.json'))"
        )
    allow_simulated = bool(t.get("allow_simulated"))
    kind = evidence_kind(str(t.get("evidence") or "aws-nitro"))  # a statement from before kinds is Nitro's
    pem = str(t.get("simulated_root_pem") or "")
    roots = x509.load_pem_x509_certificates(pem.encode()) if pem else []
    replicas = EvidencePolicy.for_image(
        {int(i): bytes.fromhex(v) for i, v in t["replica_pcrs"].items()}, kind, allow_simulated=allow_simulated
    )
    kms = attest_kms(
        t["kms"],
        expected_pcrs={int(i): bytes.fromhex(v) for i, v in t["kms_pcrs"].items()},
        allow_simulated=allow_simulated,
        simulated_roots=roots,
        timeout_s=timeout_s,
        kind=kind,
    )
    try:
        certificate = kms.service_certificate(t["service"])
    finally:
        kms.close()
    try:
        released_to = ServicePolicy.model_validate(certificate.get("policy") or {}).evidence_policy()
    except ValueError:
        released_to = None
    if released_to is None or (released_to.kind, dict(released_to.measurements)) != (
        replicas.kind,
        dict(replicas.measurements),
    ):
        raise AttestationError(
            f"the key service would release {t['service']}'s keys to other enclaves than the "
            f"replica image's ({kind}): refusing to send"
        )
    return certificate, replicas, roots


def _transport(verify: ssl.SSLContext | bool = True) -> httpx.HTTPTransport:
    """No Nagle delay: a request's header and body records would otherwise wait for a delayed ACK (~40 ms)."""
    return httpx.HTTPTransport(verify=verify, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])


class Client:
    def __init__(
        self,
        url: str,
        *,
        trust: Mapping[str, Any] | None = None,
        model: str | None = None,
        timeout_s: float = 60.0,
        retries: int = 2,
        protocol: str = "http",
    ) -> None:
        if protocol not in ("http", "grpc"):
            raise ServeError(f"protocol must be http or grpc, not {protocol!r}")
        self.protocol = protocol  # for infer(): OIP over HTTP (binary tensors) or over gRPC (serve --grpc)
        self._grpc: dict[bool, Any] = {}  # secure -> GrpcOip
        self.url = url.rstrip("/")
        self.trust = dict(trust or {})
        self.model = model or self.trust.get("model")
        self.timeout_s = timeout_s
        self.retries = retries
        self._public = httpx.Client(timeout=timeout_s, transport=_transport())
        self._secure: httpx.Client | None = None
        self._engine: dict[str, Any] | None = None  # the front door's /v1/gateway answer
        self._session: Any = None  # sealed mode: the session sealed to the attested service key
        self.served_by: str | None = None  # the replica that answered the last request, where the engine says
        self.last_timing: str | None = None  # the replica's Server-Timing for the last gRPC call
        self.attested: dict[str, Any] | None = None

    def reconnect(self) -> None:
        """Drop pooled connections (keeping the attestation): the next request opens a new one, which
        the gateway balances afresh (secure traffic is routed by connection)."""
        self._public.close()
        self._public = httpx.Client(timeout=self.timeout_s, transport=_transport())
        for channel in self._grpc.values():
            channel.close()
        self._grpc.clear()
        if self._secure is not None:
            self._secure.close()
            self._secure = httpx.Client(timeout=self.timeout_s, transport=_transport(self._secure_context))

    def close(self) -> None:
        self._public.close()
        if self._secure is not None:
            self._secure.close()
        for channel in self._grpc.values():
            channel.close()
        self._grpc.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- requests -------------------------------------------------------------------------------------
    def infer(self, images: np.ndarray, secure: bool = True, input_name: str = "input") -> np.ndarray:
        """Run the model on a float32 N x C x H x W batch; the first output, as numpy."""
        if self.protocol == "grpc":
            return self._infer_grpc(np.ascontiguousarray(images, dtype=np.float32), secure, input_name)
        body, headers = encode_infer_request({input_name: np.ascontiguousarray(images, dtype=np.float32)})
        reply = self._post(f"/v2/models/{self._model_name(secure)}/infer", body, headers, secure)
        outputs = parse_infer_response(reply.content, reply.headers.get(BINARY_HEADER))
        return next(iter(outputs.values()))

    def predict(self, pixels: Sequence[np.ndarray], secure: bool = True, top_k: int = 5) -> list[list[dict]]:
        """Seed 001's endpoint: uint8 images (H x W [x 3]) in, top classes per image out."""
        import json

        body = json.dumps({"images": [encode_image(p) for p in pixels], "top_k": top_k}).encode()
        path = "/predict-secure" if secure else "/predict-public"
        return self._post(path, body, {"content-type": "application/json"}, secure).json()["predictions"]

    def http(self, secure: bool) -> tuple[httpx.Client, str]:
        """The HTTP client and base URL requests of that kind go to (attesting first for secure ones)."""
        return (self._secure_client(), self._secure_base) if secure else (self._public, self.url)

    def _model_name(self, secure: bool) -> str:
        if self.model is None:
            self.model = self._gateway_info()["model"]
        return str(self.model)

    def _gateway_info(self) -> dict[str, Any]:
        """The front door's ``/v1/gateway`` (model, engine, ports), read once: where to connect only,
        never what to trust (TLS and attestation decide that)."""
        if self._engine is None:
            self._engine = self._public.get(self.url + "/v1/gateway").json()
        return self._engine

    def _post(self, path: str, body: bytes, headers: dict[str, str], secure: bool) -> httpx.Response:
        if secure and self._sealed_engine():
            return self._post_sealed(path, body, headers)
        last: Exception | None = None
        for _ in range(self.retries + 1):
            try:
                client, base = self.http(secure)
            except NoReplicaError as exc:  # the enclave the attestation reached went away: attest again
                last = exc
                continue
            try:
                reply = client.post(base + path, content=body, headers=headers)
            except httpx.TransportError as exc:  # connection refused or broken before an answer: send again
                last = exc
                continue
            if reply.status_code in (502, 503):
                last = ServeError(reply.text)
                continue
            if reply.status_code >= 400:
                raise ServeError(f"{reply.status_code}: {error_message(reply)}")
            self.served_by = reply.headers.get("x-serdab-replica")
            return reply
        raise NoReplicaError(f"no {'enclave' if secure else 'public'} replica answered at {self.url}: {last}")

    # --- OIP over gRPC ----------------------------------------------------------------------------------
    def _infer_grpc(self, images: np.ndarray, secure: bool, input_name: str) -> np.ndarray:
        """A secure call goes over TLS to the gateway's secure gRPC door (passed through to an enclave),
        trusting only the service CA, after the same attestation as HTTPS (an enclave of the stated
        image proved it holds the service certificate, which only such enclaves receive)."""
        import grpc

        last: Exception | None = None
        for _ in range(self.retries + 1):
            try:
                channel = self._grpc_channel(secure)
                outputs, trailing = channel.infer(self._model_name(secure), {input_name: images})
            except NoReplicaError as exc:
                last = exc
                continue
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    last = ServeError(f"{code.name}: {details}")
                    self._grpc.pop(secure).close()  # a new connection: the gateway balances it afresh
                    continue
                raise ServeError(f"{code.name if code else 'gRPC'}: {details}") from None
            self.last_timing = trailing.get("server-timing")
            return next(iter(outputs.values()))
        raise NoReplicaError(f"no {'enclave' if secure else 'public'} replica answered over gRPC at {self.url}: {last}")

    def _grpc_channel(self, secure: bool) -> Any:
        from serdab.serve.grpc_oip import GrpcOip

        if secure not in self._grpc:
            if secure and self._sealed_engine():
                raise ServeError("this engine (Ray Serve) serves no gRPC; use protocol='http'")
            if secure:
                self._secure_client()  # attest (or fail closed) before anything is sent
            port = self._gateway_info().get("secure_grpc_port" if secure else "grpc_port")
            if not port:
                raise ServeError(f"{self.url} serves no gRPC (start it with serdab serve --grpc)")
            host = urlsplit(self.url).hostname or "127.0.0.1"
            ca = self._service_ca if secure else None
            self._grpc[secure] = GrpcOip(f"{host}:{int(port)}", ca_pem=ca, timeout_s=self.timeout_s)
        return self._grpc[secure]

    # --- sealed requests (an engine that terminates HTTP itself: Ray Serve) ----------------------------
    def _sealed_engine(self) -> bool:
        return self._gateway_info().get("secure") == "sealed"

    def _post_sealed(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """Seal the request to the attested service key, send it through the engine, open the answer."""
        from serdab.serve.sealed import SealedSession

        if self._session is None or self._session.spent:
            self._session = SealedSession(self._attest_sealed())
        prefix = str((self._engine or {}).get("secure_prefix", ""))
        last: Exception | None = None
        for _ in range(self.retries + 1):
            request = self._session.seal("POST", path, body, headers)
            try:
                reply = self._public.post(
                    f"{self.url}{prefix}/v1/sealed",
                    content=request,
                    headers={"content-type": "application/octet-stream"},
                )
            except httpx.TransportError as exc:
                last = exc
                continue
            if reply.status_code in (502, 503):
                last = ServeError(reply.text)
                continue
            if reply.status_code != 200:
                raise ServeError(f"{reply.status_code}: {error_message(reply)}")
            self.served_by = reply.headers.get("x-serdab-replica")
            status, answer_headers, content = self._session.open(request, reply.content)
            answer = httpx.Response(status, headers=answer_headers, content=content)
            if status >= 400:
                raise ServeError(f"{status}: {error_message(answer)}")
            return answer
        raise NoReplicaError(f"no enclave replica answered at {self.url}: {last}")

    def _attest_sealed(self) -> Any:
        """The service key to seal to: its certificate must come from the service CA the attested key
        service holds, and an enclave of the stated image must attest, for our nonce, to holding it."""
        from cryptography import x509

        from serdab.crypto import cert_der, sha384
        from serdab.tee.evidence import verify_evidence

        certificate, replicas, roots = self._service_certificate()
        prefix = str((self._engine or {}).get("secure_prefix", ""))
        try:
            pem = self._public.get(f"{self.url}{prefix}/v1/service-certificate")
            pem.raise_for_status()
            service = x509.load_pem_x509_certificate(pem.content)
            ca = x509.load_pem_x509_certificate(certificate["ca_pem"].encode())
            service.verify_directly_issued_by(ca)
        except httpx.HTTPError as exc:
            raise NoReplicaError(f"no enclave replica answered at {self.url}: {exc}") from None
        except (ValueError, TypeError) as exc:
            raise AttestationError(f"the service certificate is not the service CA's: {exc}") from None
        nonce = secrets.token_bytes(32)
        reply = self._public.get(f"{self.url}{prefix}/v1/attestation", params={"nonce": nonce.hex()})
        if reply.status_code != 200:
            raise NoReplicaError(f"no enclave replica attested at {self.url}: {reply.status_code} {reply.text}")
        verified = verify_evidence(
            reply.content,
            replicas,
            simulated_roots=roots,
            nonce=nonce,
            user_data=sha384(cert_der(service)),
        )
        self.attested = verified.summary()
        return service.public_key()

    # --- attest, then send ----------------------------------------------------------------------------
    def _secure_client(self) -> httpx.Client:
        if self._secure is None:
            self._secure = self._attest()
        return self._secure

    def _service_certificate(self) -> tuple[dict[str, Any], EvidencePolicy, list[Any]]:
        return service_certificate(self.trust, self.timeout_s)

    def _attest(self) -> httpx.Client:
        from serdab.crypto import sha384
        from serdab.tee.evidence import verify_evidence

        certificate, replicas, roots = self._service_certificate()
        context = service_context(certificate["ca_pem"])
        self._service_ca = str(certificate["ca_pem"])
        host = urlsplit(self.url).hostname or "127.0.0.1"
        self._secure_base = f"https://{host}:{int(self._gateway_info()['secure_port'])}"
        self._secure_context = context
        client = httpx.Client(timeout=self.timeout_s, transport=_transport(context))
        nonce = secrets.token_bytes(32)
        try:
            reply = client.get(self._secure_base + "/v1/attestation", params={"nonce": nonce.hex()}, extensions={})
            peer = reply.extensions["network_stream"].get_extra_info("ssl_object").getpeercert(True)
            reply.raise_for_status()
            verified = verify_evidence(
                reply.content,
                replicas,
                simulated_roots=roots,
                nonce=nonce,
                user_data=sha384(peer),
            )
        except httpx.HTTPError as exc:
            client.close()
            raise NoReplicaError(f"no enclave replica answered at {self._secure_base}: {exc}") from None
        except Exception:
            client.close()
            raise
        self.attested = verified.summary()
        return client
