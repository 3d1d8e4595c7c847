"""Load-balancing policies for the gateway: which replica takes the next request (or connection).

Every policy is a pure function of a frozen view of the replicas and its own state: ``choose``
returns the replica's name (None when no replica may take work) and the next state; ``tick``
runs once per monitoring cycle (the gateway samples paging activity every second, as S3ML does)
and returns the next state. No clock, I/O or globals inside, so tests drive them with fake
replicas and fake cycles, and the same code serves the gateway and a Ray Serve router.

Weights follow IPVS: a replica with weight 0 takes no new work. Round robin and least
connections skip weight-0 replicas; SED is IPVS's shortest expected delay, (C_i + 1) / W_i; the
EPC-aware policy is seed 002 sec. 5.3: SED whose weights it sets itself, 0 for a replica whose
host's paging throughput stayed above ``fraction`` x ``boundary`` for ``cycles`` consecutive
monitoring cycles, back to 1 when no interfering enclave is left on that host.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from serdab.errors import ServeConfigError

__all__ = [
    "BALANCERS",
    "BalancingPolicy",
    "EpcAware",
    "EpcAwareState",
    "HostSample",
    "LeastConnections",
    "PagingRate",
    "ReplicaView",
    "RoundRobin",
    "ShortestExpectedDelay",
    "get_balancer",
]


@dataclass(frozen=True)
class ReplicaView:
    """What a policy may know of one replica at the moment of a decision."""

    name: str
    host: str = "local"
    in_flight: int = 0  # requests (or open connections) it is serving now
    weight: float = 1.0  # configured capacity; 0 = no new work
    healthy: bool = True


@dataclass(frozen=True)
class HostSample:
    """One monitoring cycle's reading of a host: EPC paging throughput and whether an enclave other
    than the service's replicas is resident there (emulated EPC: see ``serdab.tee.epc``)."""

    paging_pages_per_s: float
    interference: bool


class PagingRate:
    """Pages swapped per second on one host, from the EPC's running page counts between two readings
    (the monitoring cycle of the gateway and of a Ray Serve enclave replica alike); 0 on the first."""

    def __init__(self) -> None:
        self._last: tuple[float, int] | None = None

    def sample(self, pages: int, now: float) -> float:
        last, self._last = self._last, (now, pages)
        return (pages - last[1]) / (now - last[0]) if last and now > last[0] else 0.0


def _eligible(replicas: Sequence[ReplicaView], weights: Mapping[str, float] | None = None) -> list[ReplicaView]:
    def weight(r: ReplicaView) -> float:
        return r.weight * (weights.get(r.name, 1.0) if weights else 1.0)

    return [replace(r, weight=weight(r)) for r in replicas if r.healthy and weight(r) > 0]


class BalancingPolicy(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]

    def initial(self) -> Any:
        """The state before the first decision."""
        return None

    @abstractmethod
    def choose(self, replicas: Sequence[ReplicaView], state: Any) -> tuple[str | None, Any]:
        """The replica for the next request and the next state; None when no replica may take it."""

    def tick(self, samples: Mapping[str, HostSample], state: Any) -> Any:
        """One monitoring cycle (``samples`` by host); most policies ignore it."""
        return state

    def weights(self, state: Any) -> dict[str, float]:
        """Replica weights this policy set itself (exported as metrics); empty when it sets none."""
        return {}


def _sed_score(r: ReplicaView) -> float:
    return (r.in_flight + 1) / r.weight


def _pick(eligible: Sequence[ReplicaView], score: Callable[[ReplicaView], float], turn: int) -> str:
    """The lowest score wins; ties are taken in turn, so equal replicas share the work."""
    best = min(score(r) for r in eligible)
    tied = sorted((r for r in eligible if score(r) == best), key=lambda r: r.name)
    return tied[turn % len(tied)].name


class _InTurn(BalancingPolicy):
    """A policy that is a score per replica; its state is the turn counter that breaks ties."""

    @staticmethod
    def score(replica: ReplicaView) -> float:
        return 0.0

    def initial(self) -> int:
        return 0

    def choose(self, replicas: Sequence[ReplicaView], state: int) -> tuple[str | None, int]:
        eligible = _eligible(replicas)
        if not eligible:
            return None, state
        return _pick(eligible, self.score, state), state + 1


class RoundRobin(_InTurn):
    name = "round-robin"
    summary = "each eligible replica in turn"


class LeastConnections(_InTurn):
    name = "least-connections"
    summary = "the eligible replica serving the fewest requests (ties in turn)"

    @staticmethod
    def score(replica: ReplicaView) -> float:
        return replica.in_flight


class ShortestExpectedDelay(_InTurn):
    name = "sed"
    summary = "IPVS shortest expected delay, (in flight + 1) / weight"

    @staticmethod
    def score(replica: ReplicaView) -> float:
        return _sed_score(replica)


@dataclass(frozen=True)
class EpcAwareState:
    turn: int = 0
    streak: Mapping[str, int] = field(default_factory=dict)  # host -> consecutive cycles over the trigger
    shed: frozenset[str] = frozenset()  # hosts whose replicas have weight 0


class EpcAware(BalancingPolicy):
    """Seed 002 sec. 5.3 (S3ML's SGX-aware load balancing), defaults as its evaluation: 70%, 5 cycles."""

    name = "epc-aware"
    summary = "SED; weight 0 on a host that pages above 70% of the boundary for 5 cycles (S3ML)"

    def __init__(self, boundary_pages_per_s: float = 2_000.0, fraction: float = 0.7, cycles: int = 5) -> None:
        if boundary_pages_per_s <= 0 or not 0 < fraction <= 1 or cycles < 1:
            raise ServeConfigError(
                f"epc-aware needs boundary > 0 ({boundary_pages_per_s}), 0 < fraction <= 1 ({fraction}) "
                f"and cycles >= 1 ({cycles}); e.g. epc-aware:2000:0.7:5"
            )
        self.trigger = fraction * boundary_pages_per_s
        self.cycles = cycles

    def initial(self) -> EpcAwareState:
        return EpcAwareState()

    def tick(self, samples: Mapping[str, HostSample], state: EpcAwareState) -> EpcAwareState:
        streak = dict(state.streak)
        shed = set(state.shed)
        for host, sample in samples.items():
            if host in shed:
                if not sample.interference:
                    shed.discard(host)  # the interfering enclave is gone: traffic resumes
                    streak[host] = 0
                continue
            streak[host] = streak.get(host, 0) + 1 if sample.paging_pages_per_s > self.trigger else 0
            if streak[host] >= self.cycles:
                shed.add(host)
        return replace(state, streak=streak, shed=frozenset(shed))

    def choose(self, replicas: Sequence[ReplicaView], state: EpcAwareState) -> tuple[str | None, EpcAwareState]:
        eligible = _eligible(replicas, {r.name: 0.0 for r in replicas if r.host in state.shed})
        if not eligible:
            return None, state
        return _pick(eligible, _sed_score, state.turn), replace(state, turn=state.turn + 1)

    def weights(self, state: EpcAwareState) -> dict[str, float]:
        return {host: 0.0 for host in state.shed}


BALANCERS: dict[str, type[BalancingPolicy]] = {
    p.name: p for p in (RoundRobin, LeastConnections, ShortestExpectedDelay, EpcAware)
}


def get_balancer(spec: str) -> BalancingPolicy:
    """``round-robin``, ``least-connections``, ``sed``, ``epc-aware[:BOUNDARY[:FRACTION[:CYCLES]]]``."""
    name, _, rest = spec.partition(":")
    if name not in BALANCERS:
        raise ServeConfigError(f"unknown balancer {name!r}; choose one of {', '.join(BALANCERS)}")
    if not rest:
        return BALANCERS[name]()
    if name != "epc-aware":
        raise ServeConfigError(f"balancer {name} takes no options (got {spec!r})")
    try:
        values = [float(v) for v in rest.split(":")]
    except ValueError:
        raise ServeConfigError(f"bad epc-aware options {rest!r}; e.g. epc-aware:2000:0.7:5") from None
    if len(values) > 3:
        raise ServeConfigError(f"epc-aware takes at most three options (got {spec!r}); e.g. epc-aware:2000:0.7:5")
    boundary = values[0]
    fraction = values[1] if len(values) > 1 else 0.7
    cycles = int(values[2]) if len(values) > 2 else 5
    return EpcAware(boundary, fraction, cycles)
