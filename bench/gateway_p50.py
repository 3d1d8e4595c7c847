"""LeNet-5 one request at a time through the gateway (400 after 50 warm-up), public and secure p50 in ms,
for whichever serdab is imported: `PYTHONPATH=OTHER_CHECKOUT python bench/gateway_p50.py` measures
another commit on the same machine (an A/B when a change must leave serving speed alone)."""

from __future__ import annotations

import json
import time

import numpy as np

import serdab
from serdab.serve.client import Client
from serdab.serve.config import ServeConfig
from serdab.serve.service import ModelService

X = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)


def main() -> None:
    result: dict[str, object] = {"serdab": serdab.__file__}
    with (
        ModelService(ServeConfig("lenet5", secure=1, public=1)) as service,
        Client(service.gateway.url, trust=service.trust()) as client,
    ):
        for secure in (False, True):
            for _ in range(50):
                client.infer(X, secure=secure)
            times = []
            for _ in range(400):
                started = time.perf_counter()
                client.infer(X, secure=secure)
                times.append(time.perf_counter() - started)
            result["secure_p50_ms" if secure else "public_p50_ms"] = round(1000 * float(np.median(times)), 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
