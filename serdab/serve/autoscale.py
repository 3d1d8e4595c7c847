"""Autoscaling rule for one kind of replica (seed 002 sec. 5.4): a pure decision per cycle.

S3ML scales on the aggregate CPU utilisation of the replicas *in service* (load-balancing weight
not 0, so a replica shed for EPC paging does not count as capacity), with Kubernetes HPA's rule:
desired = ceil(in_service x utilisation / target), within a tolerance, clamped to [min, max].
Utilisation here is each replica's busy fraction (time inside inference, emulated TEE time
included, over wall time): a one-thread model server's CPU use.

Two additions, because an enclave replica takes seconds to start (process, attestation, key
release, model load; measured and passed in as ``start_time_s``): scale-up looks ahead by that
start time along the utilisation trend of the last cycle, and no scale-down happens while a
replica is starting or within ``cooldown_s`` of the last change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, Field, model_validator

from serdab.errors import ServeConfigError

__all__ = ["AutoscaleConfig", "AutoscaleState", "ScaleDecision", "ScaleInput", "decide", "parse_range"]


class AutoscaleConfig(BaseModel):
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_utilisation: float = Field(default=0.6, gt=0, le=1)
    tolerance: float = Field(default=0.1, ge=0, lt=1)
    cooldown_s: float = Field(default=15.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscaleConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        return self


def parse_range(spec: str) -> tuple[int, int]:
    """``MIN:MAX`` as on the command line, e.g. ``1:3``."""
    try:
        low, high = (int(v) for v in spec.split(":"))
    except ValueError:
        raise ServeConfigError(f"--autoscale takes MIN:MAX, e.g. 1:3 (got {spec!r})") from None
    if low < 0 or high < 1 or high < low:
        raise ServeConfigError(f"--autoscale {spec}: need 0 <= MIN <= MAX and MAX >= 1, e.g. 1:3")
    return low, high


@dataclass(frozen=True, kw_only=True)
class ScaleInput:
    now_s: float
    in_service: int  # healthy replicas with weight > 0
    starting: int  # launched, not yet ready
    total: int  # every replica of this kind, shed and starting included
    utilisation: float  # mean busy fraction of the replicas in service, 0..1
    start_time_s: float  # measured start time of one replica of this kind


@dataclass(frozen=True)
class AutoscaleState:
    last_change_s: float = -math.inf
    last_utilisation: float | None = None
    last_sample_s: float | None = None


@dataclass(frozen=True)
class ScaleDecision:
    delta: int  # replicas to add (> 0) or remove (< 0)
    reason: str


def decide(config: AutoscaleConfig, now: ScaleInput, state: AutoscaleState) -> tuple[ScaleDecision, AutoscaleState]:
    """How many replicas to add or remove this cycle, and why (for the log and the metrics)."""
    slope = 0.0
    if state.last_utilisation is not None and state.last_sample_s is not None and now.now_s > state.last_sample_s:
        slope = (now.utilisation - state.last_utilisation) / (now.now_s - state.last_sample_s)
    ahead = max(0.0, now.utilisation + max(0.0, slope) * now.start_time_s)
    sampled = AutoscaleState(state.last_change_s, now.utilisation, now.now_s)
    if now.total < config.min_replicas:
        return _change(config.min_replicas - now.total, f"below min {config.min_replicas}", now, sampled)
    capacity = now.in_service + now.starting
    if capacity == 0:
        if now.total < config.max_replicas:
            return _change(1, "no replica in service", now, sampled)
        return ScaleDecision(0, "no replica in service and at max"), sampled
    ratio = ahead / config.target_utilisation
    if ratio > 1 + config.tolerance and now.starting == 0:
        want = math.ceil(now.in_service * ratio)
        add = min(want - now.in_service, config.max_replicas - now.total)
        if add > 0:
            return _change(
                add,
                f"utilisation {now.utilisation:.0%} (ahead {ahead:.0%} over the "
                f"{now.start_time_s:.1f} s start) > target {config.target_utilisation:.0%}",
                now,
                sampled,
            )
        return ScaleDecision(0, f"utilisation {now.utilisation:.0%} over target, at max {config.max_replicas}"), sampled
    if ratio < 1 - config.tolerance and now.starting == 0:
        if now.now_s - state.last_change_s < config.cooldown_s:
            return ScaleDecision(0, "cooling down"), sampled
        want = max(math.ceil(now.in_service * now.utilisation / config.target_utilisation), 1)
        remove = min(now.in_service - want, now.total - config.min_replicas)  # want >= 1 keeps one in service
        if remove > 0:
            return _change(
                -remove, f"utilisation {now.utilisation:.0%} < target {config.target_utilisation:.0%}", now, sampled
            )
    return ScaleDecision(0, "steady"), sampled


def _change(delta: int, reason: str, now: ScaleInput, state: AutoscaleState) -> tuple[ScaleDecision, AutoscaleState]:
    return ScaleDecision(delta, reason), AutoscaleState(now.now_s, state.last_utilisation, state.last_sample_s)
