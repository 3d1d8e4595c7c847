"""The cluster a placement runs on: devices (trusted or not, relative speed, memory) and links.

``speed`` is relative to the host the profile was measured on (a TEE below 1, a GPU above).
A TEE with a ``paging_factor`` can exceed its memory at that slowdown (SGX EPC paging); a
device without one cannot hold a stage larger than its memory (Nitro enclaves, GPUs, CPUs,
confidential VMs and GPUs). Links join hosts; devices on one host talk over ``local`` (shared
memory or vsock); a confidential GPU adds its bounce-buffer toll to every transfer (``channel``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from serdab.cluster.units import parse_bandwidth_bytes_per_s, parse_bytes, parse_seconds
from serdab.errors import ClusterError

__all__ = ["CONFIDENTIAL", "EXAMPLES_DIR", "Cluster", "Device", "Link", "LocalLink", "load_cluster", "resolve_cluster"]

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples" / "clusters"  # in a source checkout

Bytes = Annotated[int, BeforeValidator(parse_bytes)]
BytesPerSecond = Annotated[float, BeforeValidator(parse_bandwidth_bytes_per_s)]
Seconds = Annotated[float, BeforeValidator(parse_seconds)]


CONFIDENTIAL = ("cvm", "cgpu")  # trusted by construction: a confidential VM, a GPU in confidential-computing mode
DEFAULT_SLOWDOWN = {"cvm": 1.10, "cgpu": 1.0}  # against native: see docs/plan.md for the sources


class Device(BaseModel):
    """One device. Kinds: ``tee`` (an SGX or Nitro enclave), ``cpu`` and ``gpu`` (untrusted), ``cvm``
    (a confidential VM, SEV-SNP or TDX: trusted, no EPC cliff, ``native_speed`` / ``slowdown``) and
    ``cgpu`` (a GPU in confidential-computing mode: trusted, and every transfer to or from it goes
    through encrypted bounce buffers, ``transfer_overhead`` per transfer at most ``transfer_bandwidth``).
    ``speed`` is always what the cost model uses: for a confidential device it is derived."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1)
    kind: Literal["tee", "cpu", "gpu", "cvm", "cgpu"]
    trusted: bool
    host: str = Field(min_length=1)
    speed: float = Field(gt=0, description="relative to the profiling host")
    memory_bytes: Bytes = Field(alias="memory", gt=0)
    paging_factor: float | None = Field(None, ge=1.0, description="slowdown when a TEE stage exceeds memory")
    native_speed: float | None = Field(None, gt=0, description="cvm/cgpu: the same machine without confidentiality")
    slowdown: float | None = Field(None, ge=1.0, description="cvm/cgpu: native time x this = confidential time")
    transfer_overhead_s: Seconds = Field(0.0, alias="transfer_overhead", ge=0, description="cgpu: per transfer")
    transfer_bandwidth_bytes_per_s: BytesPerSecond | None = Field(
        None, alias="transfer_bandwidth", gt=0, description="cgpu: encrypted bounce-buffer throughput"
    )
    field_factor: float = Field(
        2.0, ge=1.0, description="a blinding helper: a layer's time in the prime field / its plain time (assumed)"
    )

    @model_validator(mode="before")
    @classmethod
    def _confidential_speed(cls, data: Any) -> Any:
        """A confidential device states its native speed (and slowdown); its ``speed`` follows."""
        if not isinstance(data, dict) or data.get("kind") not in CONFIDENTIAL:
            return data
        data = dict(data)
        if "native_speed" in data:
            if "speed" in data:
                raise ValueError(f"give native_speed (and slowdown) or speed, not both (device {data.get('name')})")
            data.setdefault("slowdown", DEFAULT_SLOWDOWN[data["kind"]])
            native, slowdown = data["native_speed"], data["slowdown"]
            if not isinstance(native, int | float) or not isinstance(slowdown, int | float):
                raise ValueError(f"native_speed and slowdown are numbers (device {data.get('name')})")
            if native <= 0 or slowdown < 1:
                raise ValueError(
                    f"native_speed must be > 0 and slowdown >= 1 (confidential is never faster than native; "
                    f"device {data.get('name')})"
                )
            data["speed"] = native / slowdown
        return data

    @model_validator(mode="after")
    def _kind_rules(self) -> Device:
        if self.paging_factor is not None and self.kind != "tee":
            raise ValueError(f"paging_factor applies to kind tee only, not {self.kind} (device {self.name})")
        if self.kind in CONFIDENTIAL and not self.trusted:
            raise ValueError(f"a {self.kind} is trusted by what it is: set trusted: true (device {self.name})")
        if self.kind not in CONFIDENTIAL and (self.native_speed is not None or self.slowdown is not None):
            raise ValueError(f"native_speed and slowdown apply to kinds cvm and cgpu, not {self.kind} ({self.name})")
        if self.kind != "cgpu" and (self.transfer_overhead_s or self.transfer_bandwidth_bytes_per_s is not None):
            raise ValueError(f"transfer_overhead/transfer_bandwidth apply to kind cgpu, not {self.kind} ({self.name})")
        return self

    def same_hardware(self, other: Device) -> bool:
        """Interchangeable for replication: same kind, trust, speed, memory, paging and transfer toll."""
        return self._hardware() == other._hardware()

    def _hardware(self) -> tuple[object, ...]:
        return (
            self.kind,
            self.trusted,
            self.speed,
            self.memory_bytes,
            self.paging_factor,
            self.transfer_overhead_s,
            self.transfer_bandwidth_bytes_per_s,
            self.field_factor,
        )


class LocalLink(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    bandwidth_bytes_per_s: BytesPerSecond = Field(alias="bandwidth", gt=0)
    rtt_s: Seconds = Field(0.0, alias="rtt")


class Link(LocalLink):
    a: str
    b: str


def _default_local() -> LocalLink:
    # Same-host hand-over: enclave <-> host over shared memory or vsock, a few GB/s.
    return LocalLink.model_validate({"bandwidth": "8Gbit", "rtt": "0.05ms"})


class Cluster(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "cluster"
    source: str = Field(description="the trusted device where frames arrive")
    devices: list[Device] = Field(min_length=1)
    links: list[Link] = Field(default_factory=list)
    local: LocalLink = Field(default_factory=_default_local)

    @model_validator(mode="after")
    def _consistent(self) -> Cluster:
        names = [d.name for d in self.devices]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"device names must be unique; repeated: {', '.join(duplicated)}")
        by_name = {d.name: d for d in self.devices}
        if self.source not in by_name:
            raise ValueError(f"source {self.source!r} is not a device; devices: {', '.join(names)}")
        if not by_name[self.source].trusted:
            raise ValueError(f"source {self.source!r} must be trusted: frames arrive there in the clear")
        hosts = {d.host for d in self.devices}
        seen: set[frozenset[str]] = set()
        for link in self.links:
            for end in (link.a, link.b):
                if end not in hosts:
                    raise ValueError(
                        f"link {link.a}-{link.b}: {end!r} is not a host; hosts: {', '.join(sorted(hosts))}"
                    )
            pair = frozenset((link.a, link.b))
            if len(pair) == 1:
                raise ValueError(f"link {link.a}-{link.b} joins a host to itself; set `local` instead")
            if pair in seen:
                raise ValueError(f"link {link.a}-{link.b} is listed twice")
            seen.add(pair)
        return self

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.devices]

    def device(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(name)

    def link(self, host_a: str, host_b: str) -> LocalLink | None:
        """The link between two hosts (``local`` on one host); None when they are not connected."""
        if host_a == host_b:
            return self.local
        for link in self.links:
            if {link.a, link.b} == {host_a, host_b}:
                return link
        return None

    def channel(self, a: Device, b: Device) -> LocalLink | None:
        """What a transfer from device ``a`` to device ``b`` goes through: the link between their hosts,
        and, at a confidential GPU's end, its encrypted bounce buffers (a fixed toll per transfer, added
        to the round trip, and their throughput, capping the bandwidth). None when not connected."""
        link = self.link(a.host, b.host)
        if link is None:
            return None
        ends = [d for d in ((a, b) if a.name != b.name else ()) if d.kind == "cgpu"]
        if not ends:
            return link
        caps = [d.transfer_bandwidth_bytes_per_s for d in ends if d.transfer_bandwidth_bytes_per_s is not None]
        return LocalLink.model_validate(
            {
                "bandwidth": min([link.bandwidth_bytes_per_s, *caps]),
                "rtt": link.rtt_s + sum(d.transfer_overhead_s for d in ends),
            }
        )


def _where(loc: tuple[object, ...], data: object) -> str:
    """'devices[1].memory' from pydantic's location, naming the device when it has a name."""
    parts: list[str] = []
    node: Any = data
    for item in loc:
        if isinstance(item, int):
            name = node[item].get("name") if isinstance(node, list) and isinstance(node[int(item)], dict) else None
            parts[-1] += f"[{item}]" + (f" ({name})" if name else "")
        else:
            parts.append(str(item))
        if isinstance(node, dict):
            node = node.get(item)
        elif isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node):
            node = node[item]
        else:
            node = None
    return ".".join(parts) or "top level"


def resolve_cluster(name_or_path: str | Path) -> Path:
    """A cluster file path; a bare name such as ``paper`` means examples/clusters/paper.yaml."""
    path = Path(name_or_path)
    if path.exists() or path.suffix:
        return path
    shipped = EXAMPLES_DIR / f"{path.name}.yaml"
    if shipped.exists():
        return shipped
    names = ", ".join(sorted(p.stem for p in EXAMPLES_DIR.glob("*.yaml"))) or "none in this install"
    raise ClusterError(f"cluster file not found: {name_or_path} (shipped examples: {names})")


def load_cluster(path: str | Path) -> Cluster:
    """Read a cluster YAML (or a shipped example by name); problems become a one-line ClusterError."""
    path = resolve_cluster(path)
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ClusterError(f"cluster file not found: {path}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ClusterError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClusterError(f"cannot read cluster {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ClusterError(f"{path}: expected a mapping with source, devices and links (see examples/clusters/)")
    data.setdefault("name", Path(path).stem)
    try:
        return Cluster.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        raise ClusterError(f"{path}: {_where(err['loc'], data)}: {msg}") from None
