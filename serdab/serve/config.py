"""One serving configuration for both engines, validated once, when it is made.

``ServeConfig`` holds what every engine honours (model, replica counts, balancer, autoscaling,
address, emulated enclave speed, monitoring period); ``GatewayOptions`` and ``RayOptions`` hold what
only one engine can do. A configuration that sets the other engine's part is refused with the
options named, so a flag is never silently ignored. The CLI, both engines and Ray Serve's
``import_path`` builders take this type. The rules both engines apply are here too: which balancer
a kind of replica gets, and the autoscaling range per kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from serdab.choices import RayIngress, ServeEngine
from serdab.errors import ServeConfigError
from serdab.serve.autoscale import AutoscaleConfig
from serdab.serve.balancing import get_balancer

__all__ = ["KINDS", "GatewayOptions", "RayOptions", "ServeConfig", "balancer_for"]

KINDS = ("enclave", "public")


def balancer_for(kind: str, spec: str) -> str:
    """EPC only matters to enclaves: public replicas get plain SED where enclaves get EPC-aware."""
    return "sed" if kind == "public" and spec.split(":")[0] == "epc-aware" else spec


@dataclass(frozen=True)
class GatewayOptions:
    """What only Serdab's gateway engine does (CLI flags in brackets)."""

    secure_port: int = 0  # TLS pass-through port (--secure-port; 0: any free)
    enclave_hosts: int = 0  # simulated hosts the enclaves spread over, an EPC each (--enclave-hosts; 0: auto)
    grpc: bool = False  # OIP over gRPC beside HTTP (--grpc)
    grpc_port: int = 0  # (--grpc-port)
    secure_grpc_port: int = 0  # (--secure-grpc-port)
    autoscale_interval_s: float = 1.0
    start_timeout_s: float = 90.0


@dataclass(frozen=True)
class RayOptions:
    """What only the Ray Serve engine does (CLI flags in brackets)."""

    address: str = "local"  # (--address) local, auto or ray://HOST:PORT
    ingress: RayIngress = RayIngress.AUTO  # (--ray-ingress)
    look_back_s: float = 30.0  # Ray Serve's window over request metrics for autoscaling
    stress_dir: str | None = None  # emulated EPC interference: one control file per host label


_FLAGS = {
    "secure_port": "--secure-port",
    "enclave_hosts": "--enclave-hosts",
    "grpc": "--grpc",
    "grpc_port": "--grpc-port",
    "secure_grpc_port": "--secure-grpc-port",
    "address": "--address",
    "ingress": "--ray-ingress",
}


def _changed(part: Any) -> list[str]:
    default = type(part)()
    return [_FLAGS.get(f.name, f.name) for f in fields(part) if getattr(part, f.name) != getattr(default, f.name)]


@dataclass
class ServeConfig:
    model: str
    secure: int = 1
    public: int = 1
    balancer: str = "round-robin"
    autoscale: Mapping[str, AutoscaleConfig] = field(default_factory=dict)  # by kind
    host: str = "127.0.0.1"
    port: int = 0  # the front door (0: any free port)
    enclave_speed: float = 1.0  # emulated, relative to this host (Nitro: dedicated cores, ~1)
    threads: int = 1
    monitor_interval_s: float = 1.0  # EPC paging samples (S3ML: once per second)
    engine: ServeEngine = ServeEngine.GATEWAY
    gateway: GatewayOptions = field(default_factory=GatewayOptions)
    ray: RayOptions = field(default_factory=RayOptions)

    def __post_init__(self) -> None:
        try:
            self.engine = ServeEngine(self.engine)
        except ValueError:
            raise ServeConfigError(f"unknown engine {self.engine!r}; choose {', '.join(ServeEngine)}") from None
        if self.secure < 0 or self.public < 0 or self.secure + self.public == 0:
            raise ServeConfigError(f"serve at least one replica (--secure {self.secure}, --public {self.public})")
        if not 0 < self.enclave_speed <= 64:
            raise ServeConfigError(f"enclave speed must be in (0, 64], got {self.enclave_speed}")
        if self.monitor_interval_s <= 0:
            raise ServeConfigError(f"the monitoring interval must be positive, got {self.monitor_interval_s}")
        get_balancer(self.balancer)
        for kind, config in self.autoscale.items():
            if kind not in KINDS:
                raise ServeConfigError(f"autoscale kind must be one of {', '.join(KINDS)} (got {kind!r})")
            wanted = self.secure if kind == "enclave" else self.public
            if not config.min_replicas <= wanted <= config.max_replicas:
                raise ServeConfigError(
                    f"{wanted} {kind} replica(s) is outside --autoscale {config.min_replicas}:{config.max_replicas}"
                )
        other, part = (
            ("gateway", self.gateway) if self.engine is ServeEngine.RAY else ("ray", self.ray)  # the one not running
        )
        changed = _changed(part)
        if changed:
            raise ServeConfigError(
                f"{', '.join(changed)} {'is' if len(changed) == 1 else 'are'} the {other} engine's; "
                f"--engine {self.engine} cannot honour {'it' if len(changed) == 1 else 'them'}"
            )
        g = self.gateway
        if not g.grpc and (g.grpc_port or g.secure_grpc_port):
            raise ServeConfigError("--grpc-port and --secure-grpc-port choose the gRPC doors' ports: add --grpc")

    def wants_enclaves(self) -> bool:
        return bool(self.secure) or "enclave" in self.autoscale

    def balancer_for(self, kind: str) -> str:
        return balancer_for(kind, self.balancer)

    def autoscale_range(self, kind: str) -> tuple[int, int] | None:
        config = self.autoscale.get(kind)
        return (config.min_replicas, config.max_replicas) if config else None
