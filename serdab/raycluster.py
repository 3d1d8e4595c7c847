"""Where Serdab meets a Ray cluster, without importing Ray: shared by the pipeline on Ray actors
(``serdab.runtime.ray_executor``) and serving on Ray Serve (``serdab.serve.ray``).

- ``check_ray_address`` runs before ``ray.init``, which retries an unreachable address for minutes,
  so a wrong ``--address`` costs the user seconds and one line, not a hang;
- the custom resources that place Serdab's workers, so the KubeRay manifests' test (and the
  ``ray start --resources`` docs) check against exactly what the executor and the engine ask for;
- ``TEE_BACKEND_ENV``: a node knows its own TEE hardware and names its backend there.
"""

from __future__ import annotations

import socket

from serdab.cluster import Cluster

__all__ = [
    "ENCLAVE_RESOURCE",
    "TEE_BACKEND_ENV",
    "check_ray_address",
    "device_resource",
    "host_resource",
    "node_resources",
]

ENCLAVE_RESOURCE = "enclave"  # a node with a TEE; an enclave serving replica takes a whole one (one EPC each)
TEE_BACKEND_ENV = "SERDAB_TEE_BACKEND"


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


def device_resource(device: str) -> str:
    return f"serdab_device_{device}"


def host_resource(host: str) -> str:
    return f"serdab_host_{host}"


def node_resources(cluster: Cluster, host: str) -> dict[str, float]:
    """What a Ray node holding cluster-file host ``host`` offers (``ray start --resources``)."""
    resources = {host_resource(host): 1.0}
    resources.update({device_resource(d.name): 1.0 for d in cluster.devices if d.host == host})
    if any(d.trusted for d in cluster.devices if d.host == host):
        resources[ENCLAVE_RESOURCE] = 1.0
    return resources
