"""The HE inference service: FastAPI, bound to 127.0.0.1 by default, holding no secret key.

A client opens a session by uploading its public, relinearisation and Galois keys once (CBOR);
each inference then carries one ciphertext as a binary body (or a CBOR list of them in batch
mode) and gets one back. ``/infer-json`` keeps seed 004's JSON + base64 format. Bad input is a
4xx with an ``error`` message and the server keeps serving: 400 malformed ciphertext or keys,
404 unknown model or session, 413 oversized body, 415 wrong content type, 422 parameters that
do not match the model or a cut point it does not have.

Sessions hold ~120 MB of keys each, so at most ``max_sessions`` live at once; the least
recently used is dropped first (its client gets 404 and opens a new one).
"""

from __future__ import annotations

import base64
import binascii
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import cbor2
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from serdab.he.backend import HeBackend, HeError
from serdab.he.model import HeModel
from serdab.he.params import CkksParams
from serdab.he.protocol import MAX_BATCH_BODY, MAX_INFER_BODY, MAX_KEYS_BODY, decode_keys
from serdab.web import HttpError, install_errors, read_body

__all__ = ["create_app"]

CBOR = "application/cbor"
BINARY = "application/octet-stream"


@dataclass
class Session:
    id: str
    model: HeModel
    backend: HeBackend
    key_bytes: int


class JsonInfer(BaseModel):
    ciphertext: str
    layer: int | None = None


class JsonKeys(BaseModel):
    model: str
    params: dict[str, Any]
    public_key: str
    relin_keys: str
    galois_keys: str


class Sessions:
    """At most ``limit`` sessions, least recently used dropped first; safe across request threads."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, session: Session) -> None:
        with self._lock:
            self._items[session.id] = session
            while len(self._items) > self.limit:
                self._items.popitem(last=False)

    def get(self, session_id: str) -> Session:
        with self._lock:
            if session_id not in self._items:
                raise HttpError(404, f"no session {session_id!r} (expired or never opened): open a new one")
            self._items.move_to_end(session_id)
            return self._items[session_id]

    def drop(self, session_id: str) -> None:
        with self._lock:
            if self._items.pop(session_id, None) is None:
                raise HttpError(404, f"no session {session_id!r}")

    def __len__(self) -> int:
        return len(self._items)


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HttpError(400, f"{what} is not valid base64") from None


def create_app(models: dict[str, HeModel], max_sessions: int = 4) -> FastAPI:
    app = FastAPI(title="Serdab HE inference", version="1")
    sessions = Sessions(max_sessions)

    install_errors(app, {HeError: lambda _: 400})

    def model_of(name: str) -> HeModel:
        if name not in models:
            raise HttpError(404, f"no model {name!r}; served: {', '.join(models)}")
        return models[name]

    def open_session(name: str, params: dict[str, Any], keys: dict[str, bytes]) -> dict[str, Any]:
        model = model_of(name)
        try:
            theirs = CkksParams.from_dict(params)
        except Exception as error:  # noqa: BLE001  (any malformed field is the client's fault)
            raise HttpError(422, f"parameters: {error}") from None
        if theirs != model.params:
            raise HttpError(422, f"keys are for {theirs.describe()}; {name} runs under {model.params.describe()}")
        backend = model.new_backend()
        backend.load_public(keys)
        missing = model.program.rotation_steps() - backend.rotation_steps()  # at least recall must work
        if missing:
            raise HttpError(422, f"Galois keys lack rotation steps {sorted(missing)[:10]} that {name} needs")
        session = Session(secrets.token_urlsafe(16), model, backend, sum(len(v) for v in keys.values()))
        sessions.add(session)
        return {"session": session.id, "model": name, "key_bytes": session.key_bytes}

    def infer(session: Session, data: bytes, layer: int | None) -> tuple[bytes, float, int]:
        started = time.perf_counter()
        model, backend = session.model, session.backend
        cut = _layer(model, layer)
        ct = backend.from_bytes(data, level=backend.top_level)
        out = model.infer(backend, ct, cut)
        return backend.to_bytes(out), time.perf_counter() - started, cut

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(models), "sessions": len(sessions), "holds_secret_keys": False}

    @app.get("/v1/models")
    def list_models() -> list[dict[str, Any]]:
        return [
            {"name": m.name, "params": m.params.as_dict(), "describe": m.params.describe(), "layers": m.recall_layer}
            for m in models.values()
        ]

    @app.get("/v1/models/{name}")
    def model_spec(name: str) -> dict[str, Any]:
        return model_of(name).spec().model_dump()

    @app.post("/v1/sessions", status_code=201)
    async def create_session(request: Request) -> dict[str, Any]:
        body = await read_body(request, (CBOR,), MAX_KEYS_BODY)
        name, params, keys = decode_keys(body)
        return await run_in_threadpool(open_session, name, params, keys)

    @app.post("/v1/sessions-json", status_code=201)
    async def create_session_json(upload: JsonKeys) -> dict[str, Any]:
        keys = {k: _b64(getattr(upload, k), k) for k in ("public_key", "relin_keys", "galois_keys")}
        return await run_in_threadpool(open_session, upload.model, upload.params, keys)

    @app.delete("/v1/sessions/{session_id}", status_code=204)
    def close_session(session_id: str) -> Response:
        sessions.drop(session_id)
        return Response(status_code=204)

    @app.post("/v1/sessions/{session_id}/infer")
    async def infer_binary(session_id: str, request: Request, layer: int | None = None) -> Response:
        session = sessions.get(session_id)
        body = await read_body(request, (BINARY,), MAX_INFER_BODY)
        data, seconds, cut = await run_in_threadpool(infer, session, body, layer)
        headers = {"X-Serdab-Server-Seconds": f"{seconds:.6f}", "X-Serdab-Layer": str(cut)}
        return Response(data, media_type=BINARY, headers=headers)

    @app.post("/v1/sessions/{session_id}/infer-json")
    async def infer_json(session_id: str, request: JsonInfer) -> dict[str, Any]:
        session = sessions.get(session_id)
        if len(request.ciphertext) > MAX_INFER_BODY * 4 // 3 + 4:
            raise HttpError(413, f"ciphertext is over the {MAX_INFER_BODY}-byte limit")
        data, seconds, cut = await run_in_threadpool(
            infer, session, _b64(request.ciphertext, "ciphertext"), request.layer
        )
        return {"ciphertext": base64.b64encode(data).decode(), "layer": cut, "server_s": seconds}

    @app.post("/v1/sessions/{session_id}/infer-batch")
    async def infer_batch(session_id: str, request: Request, layer: int | None = None) -> Response:
        session = sessions.get(session_id)
        body = await read_body(request, (CBOR,), MAX_BATCH_BODY)

        def run() -> tuple[bytes, float, int]:
            started = time.perf_counter()
            try:
                items = cbor2.loads(body)
            except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError, MemoryError):
                raise HttpError(400, "body is not valid CBOR") from None
            if not isinstance(items, list) or not all(isinstance(i, bytes) for i in items):
                raise HttpError(400, "body must be a CBOR list of ciphertext byte strings")
            model, backend = session.model, session.backend
            cut = _layer(model, layer)
            size = int(np.prod(model.input_shape))
            if len(items) != size:
                raise HttpError(400, f"batch mode takes one ciphertext per input value ({size}), got {len(items)}")
            cts = [backend.from_bytes(item, level=backend.top_level) for item in items]
            out = model.infer_batch(backend, cts, cut)
            return cbor2.dumps([backend.to_bytes(ct) for ct in out]), time.perf_counter() - started, cut

        data, seconds, cut = await run_in_threadpool(run)
        headers = {"X-Serdab-Server-Seconds": f"{seconds:.6f}", "X-Serdab-Layer": str(cut)}
        return Response(data, media_type=CBOR, headers=headers)

    return app


def _layer(model: HeModel, layer: int | None) -> int:
    try:
        return model.layer(layer)
    except HeError as error:
        raise HttpError(422, str(error)) from None
