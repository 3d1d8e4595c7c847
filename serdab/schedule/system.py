"""Seed 003's pervasive IoT system (sec. III-A, IV-A) as plain state: devices, capacities, exposure, time.

Assumptions where the paper is silent (also in docs/schedule.md):
- ``e`` (800 / 560 / 40) is read as 10^6 multiplications per second; that makes VGG16 at
  128x128 take seconds per inference, as in the paper's Fig. 7.
- Capacities are taken when a layer is placed and given back as the request runs: a layer holds
  its multiplications (compute capacity c = e x 1 s) and its weights (memory) on its device until
  it has computed, and the bytes it receives hold the sender's bandwidth (b = rate x 1 s) until
  the transfer is over; the timeline is the request's own (arrival, then eq. 4 layer by layer).
- A request's latency is eq. 4 for that request: sum of c / e plus O / rho of the sender for
  every change of device; no queueing (the capacities are what limits concurrency).
- Sources are cameras on RPi3; each serves one CNN (round robin over the workload's CNNs);
  they run the first and last layer (4.e-f) and are never participants.
- Exposure (4.g): the set of layers of a CNN a participant has computed, over all requests of
  that CNN since it joined. Privacy levels for layer l (1-based, layers 2..l-1 precede it):
  ``none`` always; ``hidden2`` at least two of the preceding layers (all of them when fewer)
  stay hidden from the device; ``half`` the device has seen at most l x 50% of them (eq. 6).
- Every 60 s the participant set is redrawn (new ids, exposure 0); in-flight requests finish.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np

from serdab.errors import SerdabError
from serdab.schedule.workload import CnnSpec

__all__ = ["DEVICE_TYPES", "PRIVACY_LEVELS", "DeviceType", "Request", "SystemConfig", "SystemState"]


@dataclass(frozen=True)
class DeviceType:
    name: str
    mults_per_s: float
    memory_bytes: int
    rate_bytes_s: float


DEVICE_TYPES = {
    "nexus5": DeviceType("nexus5", 800e6, 2 * 2**30, 72.2e6 / 8),
    "rpi3": DeviceType("rpi3", 560e6, 1 * 2**30, 72.2e6 / 8),
    "stm32h7": DeviceType("stm32h7", 40e6, 1 * 2**20, 7.2e6 / 8),
}
PRIVACY_LEVELS = ("none", "hidden2", "half")


@dataclass(frozen=True)
class SystemConfig:
    devices: int = 51
    mix: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)  # nexus5, rpi3, stm32h7
    sources: int = 6
    arrival_rate: float = 3.0  # requests per second (Poisson)
    churn_s: float = 60.0
    privacy: str = "none"

    def __post_init__(self) -> None:
        if self.devices < 1 or self.sources < 1:
            raise SerdabError(f"need at least one participant and one source, got {self.devices} and {self.sources}")
        if len(self.mix) != 3 or min(self.mix) < 0 or abs(sum(self.mix) - 1) > 1e-6:
            raise SerdabError(f"device mix {self.mix} must be three shares (nexus5, rpi3, stm32h7) summing to 1")
        if self.privacy not in PRIVACY_LEVELS:
            raise SerdabError(f"unknown privacy level {self.privacy!r}; choose one of {', '.join(PRIVACY_LEVELS)}")


@dataclass
class Request:
    id: int
    cnn: CnnSpec
    source: int  # index into the source devices
    arrival_s: float
    devices: list[int] = field(default_factory=list)  # device per layer; -1 - s is source s
    failed: bool = False
    held: list[tuple[float, int, int, int, int]] = field(default_factory=list)  # (until, device, mults, weights, sent)
    elapsed_s: float = 0.0  # the request's own timeline: when its last placed layer finishes
    generation: int = 0  # participant set it was placed on


def exposure_bound(level: str, layer: int) -> int | None:
    """The most preceding layers a device may have seen and still compute ``layer`` (0-based); None = no limit.

    The one statement of seed 003's privacy rule (eq. 6); the search, the policies and the exact
    CP-SAT model all use it.
    """
    if level == "none":
        return None
    preceding = max(layer - 1, 0)  # layers 2..l-1 in the paper's 1-based numbering
    if level == "hidden2":
        return preceding - min(2, preceding)
    return math.floor((layer + 1) * 0.5)


def privacy_allows(level: str, layer: int, seen: int) -> bool:
    """May a device that has seen ``seen`` of the layers preceding ``layer`` (0-based) compute it?"""
    bound = exposure_bound(level, layer)
    return bound is None or seen <= bound


class SystemState:
    """Devices (participants then sources), free capacities, exposure, in-flight requests, the clock."""

    def __init__(self, config: SystemConfig, cnns: tuple[CnnSpec, ...], rng: np.random.Generator) -> None:
        self.config = config
        self.cnns = cnns
        self.rng = rng
        self.now = 0.0
        self.generation = 0
        self._releases: list[tuple[float, int, int, tuple[int, int, int, int]]] = []  # (time, seq, gen, hold)
        self._counter = 0
        self.source_cnn = [cnns[s % len(cnns)] for s in range(config.sources)]
        self._draw_participants()

    # --- devices -------------------------------------------------------------------------------
    def _draw_participants(self) -> None:
        types = list(DEVICE_TYPES.values())
        counts = np.floor(np.array(self.config.mix) * self.config.devices).astype(int)
        counts[0] += self.config.devices - counts.sum()
        kinds = [types[k] for k, n in enumerate(counts) for _ in range(n)]
        self.rng.shuffle(kinds)
        source = DEVICE_TYPES["rpi3"]
        self.types = kinds + [source] * self.config.sources
        d = len(self.types)
        self.speed = np.array([t.mults_per_s for t in self.types])
        self.rate = np.array([t.rate_bytes_s for t in self.types])
        self.cap_compute = self.speed.copy()
        self.cap_memory = np.array([t.memory_bytes for t in self.types], dtype=float)
        self.cap_bandwidth = self.rate.copy()
        if self.generation == 0:
            self.free_compute = self.cap_compute.copy()
            self.free_memory = self.cap_memory.copy()
            self.free_bandwidth = self.cap_bandwidth.copy()
        else:  # participants are new; sources keep what their in-flight requests hold
            p = self.config.devices
            self.free_compute = np.concatenate([self.cap_compute[:p], self.free_compute[p:]])
            self.free_memory = np.concatenate([self.cap_memory[:p], self.free_memory[p:]])
            self.free_bandwidth = np.concatenate([self.cap_bandwidth[:p], self.free_bandwidth[p:]])
        self.exposure = np.zeros((d, len(self.cnns), max(c.depth for c in self.cnns)), dtype=bool)
        self.generation += 1

    @property
    def participants(self) -> int:
        return self.config.devices

    def source_device(self, source: int) -> int:
        return self.config.devices + source

    # --- time ----------------------------------------------------------------------------------
    def advance(self, t: float) -> None:
        """Give back what finished layers and transfers held by ``t``; redraw participants at each churn."""
        while True:
            next_churn = self.generation * self.config.churn_s
            release = self._releases[0][0] if self._releases else float("inf")
            if min(next_churn, release) > t:
                break
            if release <= next_churn:
                _, _, generation, hold = heapq.heappop(self._releases)
                self._give_back(generation, *hold)
            else:
                self._draw_participants()
        self.now = t

    def _give_back(self, generation: int, device: int, mults: int, weights: int, sent: int) -> None:
        if device < self.config.devices and generation != self.generation:
            return  # that participant has left; its capacity went with it
        self.free_compute[device] += mults
        self.free_memory[device] += weights
        self.free_bandwidth[device] += sent

    def _release(self, request: Request) -> None:
        for _, device, mults, weights, sent in request.held:
            self._give_back(request.generation, device, mults, weights, sent)
        request.held.clear()

    def new_request(self, source: int, arrival_s: float) -> Request:
        self._counter += 1
        return Request(self._counter, self.source_cnn[source], source, arrival_s, generation=self.generation)

    # --- feasibility and placement -------------------------------------------------------------
    def cnn_index(self, cnn: CnnSpec) -> int:
        return next(i for i, c in enumerate(self.cnns) if c.name == cnn.name)

    def feasible(self, request: Request, layer: int) -> np.ndarray:
        """Which participants may compute ``layer`` of ``request`` now (resources 4.a-c, privacy 4.h)."""
        spec = request.cnn.layers[layer]
        p = self.config.devices
        ok = (self.free_compute[:p] >= spec.mults) & (self.free_memory[:p] >= spec.weight_bytes)
        previous = request.devices[layer - 1]
        sent = request.cnn.layers[layer - 1].out_bytes
        if self.free_bandwidth[previous] < sent:  # the sender cannot ship the input to anyone else
            ok &= np.arange(p) == previous
        if self.config.privacy != "none":
            c = self.cnn_index(request.cnn)
            seen = self.exposure[:p, c, 1:layer].sum(axis=1)
            ok &= np.array([privacy_allows(self.config.privacy, layer, int(s)) for s in seen])
        return ok

    def place(self, request: Request, layer: int, device: int) -> bool:
        """Assign a layer; False (and the request marked failed) when the device may not take it."""
        spec = request.cnn.layers[layer]
        p = self.config.devices
        if layer in (0, request.cnn.depth - 1):
            if device != self.source_device(request.source):
                raise SerdabError("the first and last layers run on the request's source (4.e-f)")
            ok = self.free_compute[device] >= spec.mults and self.free_memory[device] >= spec.weight_bytes
        else:
            ok = device < p and bool(self.feasible(request, layer)[device])
        if layer > 0 and ok:
            previous = request.devices[layer - 1]
            sent = request.cnn.layers[layer - 1].out_bytes if previous != device else 0
            ok = self.free_bandwidth[previous] >= sent
        request.devices.append(device)
        if not ok or request.failed:
            request.failed = True
            return False
        sent = request.cnn.layers[layer - 1].out_bytes if layer > 0 and request.devices[layer - 1] != device else 0
        self.free_compute[device] -= spec.mults
        self.free_memory[device] -= spec.weight_bytes
        if sent:
            sender = request.devices[layer - 1]
            self.free_bandwidth[sender] -= sent
            request.elapsed_s += sent / self.rate[sender]
            request.held.append((request.arrival_s + request.elapsed_s, sender, 0, 0, sent))
        request.elapsed_s += spec.mults / self.speed[device]
        request.held.append((request.arrival_s + request.elapsed_s, device, spec.mults, spec.weight_bytes, 0))
        if device < p:
            self.exposure[device, self.cnn_index(request.cnn), layer] = True
        return True

    def latency(self, request: Request) -> float:
        """Eq. 4 for one request: compute c/e on each device plus O/rho of the sender at every change."""
        total = 0.0
        for layer, device in enumerate(request.devices):
            total += request.cnn.layers[layer].mults / self.speed[device]
            if layer > 0 and request.devices[layer - 1] != device:
                total += request.cnn.layers[layer - 1].out_bytes / self.rate[request.devices[layer - 1]]
        return total

    def shared_bytes(self, request: Request) -> int:
        return sum(
            request.cnn.layers[layer - 1].out_bytes
            for layer in range(1, len(request.devices))
            if request.devices[layer - 1] != request.devices[layer]
        )

    def finish(self, request: Request) -> None:
        """Schedule the give-back of everything the request holds (now, if it failed)."""
        if request.failed:
            self._release(request)
            return
        for until, device, mults, weights, sent in request.held:
            self._counter += 1
            heapq.heappush(self._releases, (until, self._counter, request.generation, (device, mults, weights, sent)))
        request.held.clear()
