"""What a Ray Serve config's ``args`` may say to Serdab's two application builders, checked.

Importable without Ray (the KubeRay manifests are tested against it). An unknown key is an error,
not silently ignored; the values become the one serving configuration (``ServeConfig``) the
builders read, so a builder and `serdab serve --engine ray` validate the same way.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from serdab.choices import RayIngress, ServeEngine
from serdab.errors import ServeConfigError
from serdab.serve.autoscale import AutoscaleConfig
from serdab.serve.config import RayOptions, ServeConfig

__all__ = ["BuilderArgs"]


class BuilderArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None  # public app: a zoo name or .onnx path
    model_name: str | None = None  # the model's name in the API (secure app: else the trust statement's)
    replicas: int = Field(1, ge=0)
    autoscale: tuple[int, int] | None = None  # [min, max]
    balancer: str = "round-robin"
    threads: int = Field(1, ge=1)
    enclave_speed: float = 1.0
    stats_period_s: float = Field(1.0, gt=0)  # the monitoring cycle (S3ML: once per second)
    cooldown_s: float = Field(15.0, ge=0)
    look_back_s: float = Field(30.0, gt=0)
    ingress: RayIngress = RayIngress.PROXY  # haproxy or proxy: the cluster's front door
    stress_dir: str | None = None  # emulated EPC interference: one control file per host label
    image: str | None = None  # secure app: the replica image directory the owner built and registered
    trust: str | None = None  # secure app: the owner's trust statement file

    @field_validator("ingress")
    @classmethod
    def _known(cls, value: RayIngress) -> RayIngress:
        if value is RayIngress.AUTO:
            raise ValueError("a builder needs the cluster's ingress: haproxy or proxy")
        return value

    @classmethod
    def parse(cls, args: dict) -> BuilderArgs:
        try:
            return cls.model_validate(args)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "args"
            raise ServeConfigError(f"Serve application args: {where}: {first['msg']}") from None

    def config(self, kind: str) -> ServeConfig:
        """The serving configuration this application is part of (``kind``: public or enclave), checked as
        `serdab serve` checks it. How many replicas start is ``replicas`` (clamped into ``autoscale``); the
        configuration counts at least one, since an application of no replica is a front door only."""
        autoscale = {}
        if self.autoscale is not None:
            low, high = self.autoscale
            autoscale = {kind: AutoscaleConfig(min_replicas=low, max_replicas=high, cooldown_s=self.cooldown_s)}
        count = max(1, self.initial_replicas())
        return ServeConfig(
            self.model or self.model_name or "model",
            secure=count if kind == "enclave" else 0,
            public=count if kind == "public" else 0,
            balancer=self.balancer,
            autoscale=autoscale,
            enclave_speed=self.enclave_speed,
            threads=self.threads,
            monitor_interval_s=self.stats_period_s,
            engine=ServeEngine.RAY,
            ray=RayOptions(ingress=self.ingress, look_back_s=self.look_back_s, stress_dir=self.stress_dir),
        )

    def initial_replicas(self) -> int:
        if self.autoscale is None:
            return self.replicas
        return max(self.autoscale[0], min(self.autoscale[1], self.replicas))
