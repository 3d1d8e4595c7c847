"""The receiving end of the per-hop benchmark, in its own process (imports only the link code).

A hop is measured across processes, as the pipeline's hops are: the time from the sender
starting to seal a tensor to the receiver having opened and decoded it.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from serdab.framing import decode_payload
from serdab.runtime.engine import SWITCH_INTERVAL_S
from serdab.runtime.link import LinkOpener, LinkSpec
from serdab.runtime.wire import listen, recv_message

__all__ = ["receive"]


def receive(spec: LinkSpec, count: int, ports: Any, results: Any) -> None:
    """Accept one link, open ``count`` frames, report (host seconds from seal to decoded) per frame."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)  # as in a worker (the benchmark's own process sets it too)
    listener = listen()
    ports.put(listener.getsockname()[1])
    sock, _ = listener.accept()
    opener = LinkOpener(spec)
    times = []
    for _ in range(count):
        _, payload, started = opener.open(recv_message(sock) or {})
        decode_payload(payload)
        times.append(time.monotonic() - started)
    results.put(times)
    sock.close()
    listener.close()
