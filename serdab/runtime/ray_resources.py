"""The Ray custom resources that place Serdab's workers: one module, no Ray import, so the KubeRay
manifests' test (and ``ray start --resources`` docs) check against exactly what the executor asks for."""

from __future__ import annotations

from serdab.cluster import Cluster

__all__ = ["ENCLAVE_RESOURCE", "device_resource", "host_resource", "node_resources"]

ENCLAVE_RESOURCE = "enclave"  # a node with a TEE; an enclave serving replica takes a whole one (one EPC each)


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
