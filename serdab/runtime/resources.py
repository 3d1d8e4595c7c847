"""The resource manager (seed 000 Fig. 2): which devices a run may use, and which stopped answering.

Starts from the cluster file; devices can be registered or deregistered while a run goes on.
Workers' heartbeats arrive through the application manager; a device whose worker has been
silent for ``lost_after_s`` (or whose worker could not be restarted) is lost, and the next plan
leaves it out. Time is injected (``clock``) so the rule is tested without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from serdab.cluster import Cluster, Device
from serdab.errors import ClusterError

__all__ = ["ResourceManager"]


class ResourceManager:
    def __init__(
        self, cluster: Cluster, lost_after_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._base = cluster
        self._devices: dict[str, Device] = {d.name: d for d in cluster.devices}
        self._lost: dict[str, str] = {}
        self._seen: dict[str, float] = {}
        self.lost_after_s = lost_after_s
        self._clock = clock

    def register(self, device: Device) -> None:
        """Add (or bring back) a device; its host must be one the cluster's links know."""
        if device.host not in {d.host for d in self._base.devices}:
            raise ClusterError(f"device {device.name}: host {device.host!r} has no links in cluster {self._base.name}")
        self._devices[device.name] = device
        self._lost.pop(device.name, None)

    def deregister(self, name: str, reason: str = "deregistered") -> None:
        if name not in self._devices:
            raise ClusterError(f"no device named {name!r}; devices: {', '.join(self._devices)}")
        if name == self._base.source:
            raise ClusterError(f"{name} is the source where frames arrive; it cannot leave the run")
        self._lost[name] = reason

    def heartbeat(self, name: str) -> None:
        self._seen[name] = self._clock()

    def forget(self, name: str) -> None:
        """Stop expecting heartbeats (its worker was stopped on purpose)."""
        self._seen.pop(name, None)

    def silent(self) -> list[str]:
        """Devices whose worker has not been heard from for ``lost_after_s``."""
        now = self._clock()
        return [n for n, t in self._seen.items() if now - t > self.lost_after_s]

    def lost(self) -> dict[str, str]:
        return dict(self._lost)

    def cluster(self, speeds: dict[str, float] | None = None) -> Cluster:
        """The cluster of available devices, with measured speeds where given."""
        speeds = speeds or {}
        devices = [
            d.model_copy(update={"speed": speeds[d.name]}) if d.name in speeds else d
            for n, d in self._devices.items()
            if n not in self._lost
        ]
        return self._base.model_copy(update={"devices": devices})
