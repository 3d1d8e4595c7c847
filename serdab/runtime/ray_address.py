"""Where a Ray cluster is: checked before ``ray.init``, which retries an unreachable address for minutes.

No Ray import, so a wrong ``--address`` costs the user seconds and one line, not a hang.
"""

from __future__ import annotations

import socket

__all__ = ["check_ray_address"]


def check_ray_address(address: str, timeout_s: float = 3.0) -> None:
    """``ValueError`` for an address that is not ``auto``, ``local``, ``HOST:PORT`` or ``ray://HOST:PORT``;
    ``ConnectionError`` where nothing accepts a TCP connection at an explicit one."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"a Ray address is auto, local, HOST:PORT or ray://HOST:PORT, not {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConnectionError(f"no Ray cluster answers at {address} ({exc.strerror or exc})") from None
