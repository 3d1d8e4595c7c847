"""``serdab.he.Client``: numpy in, numpy out; keys, encryption and decryption stay here.

The client reads the model's spec from the server, generates every key itself, uploads the
public part once per session and keeps the secret key in this process. Each call records what
it cost (``client.last``): client-side seconds, bytes each way, the server's own seconds.
"""

from __future__ import annotations

import base64
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import cbor2
import httpx
import numpy as np

from serdab.he.backend import HeError, backend_for
from serdab.he.params import CkksParams
from serdab.he.protocol import ModelSpec, encode_keys
from serdab.web import error_message

__all__ = ["CallStats", "Client"]


@dataclass
class CallStats:
    client_s: float = 0.0  # encrypt + serialise + decrypt
    server_s: float = 0.0  # as the server measured it
    round_trip_s: float = 0.0  # HTTP call, this machine
    upload_bytes: int = 0
    download_bytes: int = 0
    images: int = 1


class Client:
    def __init__(
        self,
        url: str = "http://127.0.0.1:8600",
        model: str = "he_cnn5",
        *,
        json: bool = False,
        timeout_s: float = 600,
        layers: list[int] | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        """Open a session on ``model`` with Galois keys for recall, the model's transfer layer and
        ``layers`` (more transfer cut points); ``http`` replaces the HTTP client (tests pass one)."""
        self.url = url.rstrip("/")
        self.json = json
        self._http = http or httpx.Client(base_url=self.url, timeout=timeout_s)
        self.spec = ModelSpec.model_validate(self._call("GET", f"/v1/models/{model}").json())
        self.params = CkksParams.from_dict(self.spec.params)
        self.backend = backend_for(self.params, self.spec.backend)
        started = time.perf_counter()
        wanted = [self.spec.recall_layer, self.spec.transfer_layer, *(layers or [])]
        self.backend.generate_keys(set().union(*(self.spec.cut(layer).rotation_steps for layer in wanted)))
        self.keygen_s = time.perf_counter() - started
        keys = self.backend.export_public()
        self.key_bytes = sum(len(v) for v in keys.values())
        if json:
            upload = {k: base64.b64encode(v).decode() for k, v in keys.items()}
            reply = self._call("POST", "/v1/sessions-json", json={"model": model, "params": self.spec.params, **upload})
        else:
            body = encode_keys(model, self.spec.params, keys)
            reply = self._call("POST", "/v1/sessions", content=body, headers={"content-type": "application/cbor"})
        self.session = reply.json()["session"]
        self.last = CallStats()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(httpx.HTTPError):
            self._http.delete(f"/v1/sessions/{self.session}")
        self._http.close()

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Logits of one image (recall mode)."""
        return self._one(image, None)

    def features(self, image: np.ndarray, layer: int | None = None) -> np.ndarray:
        """The model's features after ``layer`` modules (transfer mode; default: the model's)."""
        return self._one(image, self.spec.transfer_layer if layer is None else layer)

    def predict_batch(self, images: np.ndarray, layer: int | None = None) -> np.ndarray:
        """Slot = image: up to N/2 images per call, one ciphertext per pixel; (images, outputs)."""
        flat = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
        if len(flat) > self.params.slots:
            raise HeError(f"a batch holds at most {self.params.slots} images, got {len(flat)}")
        started = time.perf_counter()
        body = cbor2.dumps([self.backend.to_bytes(self.backend.encrypt(flat[:, i])) for i in range(flat.shape[1])])
        client_s = time.perf_counter() - started
        query = {} if layer is None else {"layer": layer}
        call = time.perf_counter()
        reply = self._call(
            "POST",
            f"/v1/sessions/{self.session}/infer-batch",
            content=body,
            headers={"content-type": "application/cbor"},
            params=query,
        )
        round_trip = time.perf_counter() - call
        started = time.perf_counter()
        cts = [self.backend.from_bytes(item) for item in cbor2.loads(reply.content)]
        out = np.stack([self.backend.decrypt(ct)[: len(flat)] for ct in cts], axis=1)
        cut = self.spec.cut(int(reply.headers["X-Serdab-Layer"]))
        self.last = CallStats(
            client_s + time.perf_counter() - started,
            float(reply.headers["X-Serdab-Server-Seconds"]),
            round_trip,
            len(body),
            len(reply.content),
            len(flat),
        )
        return out.reshape(len(flat), *cut.shape)

    def _one(self, image: np.ndarray, layer: int | None) -> np.ndarray:
        started = time.perf_counter()
        data = self.backend.to_bytes(self.backend.encrypt(self.spec.pack(image, self.params.slots)))
        client_s = time.perf_counter() - started
        query = {} if layer is None else {"layer": layer}
        call = time.perf_counter()
        if self.json:
            reply = self._call(
                "POST",
                f"/v1/sessions/{self.session}/infer-json",
                json={"ciphertext": base64.b64encode(data).decode(), "layer": layer},
            )
            answer = reply.json()
            result, server_s, cut = base64.b64decode(answer["ciphertext"]), answer["server_s"], answer["layer"]
        else:
            reply = self._call(
                "POST",
                f"/v1/sessions/{self.session}/infer",
                content=data,
                headers={"content-type": "application/octet-stream"},
                params=query,
            )
            result = reply.content
            server_s, cut = float(reply.headers["X-Serdab-Server-Seconds"]), int(reply.headers["X-Serdab-Layer"])
        round_trip = time.perf_counter() - call
        started = time.perf_counter()
        values = self.spec.unpack(self.backend.decrypt(self.backend.from_bytes(result)), cut)
        self.last = CallStats(
            client_s + time.perf_counter() - started, server_s, round_trip, len(data), len(reply.content), 1
        )
        return values

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            reply = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise HeError(f"cannot reach the HE service at {self.url}: {error}") from None
        if reply.status_code >= 400:
            raise HeError(f"{self.url}{path} answered {reply.status_code}: {error_message(reply)}")
        return reply
