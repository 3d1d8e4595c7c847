"""Seed 003's MDP as a gymnasium environment: one episode places one request, one step one layer.

Observation (sec. III-C-2, normalised as the paper suggests): the CNN (one-hot), the layer
(depth fraction), and per participant whether it may take the layer now (resources and
privacy, the paper's binary states) times its free compute, memory and bandwidth shares, plus
its data rate. Action: a participant. Reward (eq. 8, Algorithm 1): minus the layer's latency
(transfer from the previous device + compute; the first step also pays the source's first
layer), plus 1 when the choice respects resources and privacy (C2 x C3). ``action_masks()``
lists the participants that respect them (our addition; the paper's agent is unmasked).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from serdab.schedule.system import Request, SystemConfig, SystemState
from serdab.schedule.workload import CnnSpec

__all__ = ["PlacementEnv", "observe"]


def observe(state: SystemState, request: Request, layer: int) -> np.ndarray:
    """The agent's view before placing ``layer`` of ``request`` (shared by training and evaluation)."""
    p = state.participants
    allowed = state.feasible(request, layer).astype(np.float32)
    cnn = np.zeros(len(state.cnns), dtype=np.float32)
    cnn[state.cnn_index(request.cnn)] = 1.0
    parts = [
        cnn,
        np.array([layer / request.cnn.depth], dtype=np.float32),
        allowed,
        allowed * (state.free_compute[:p] / state.cap_compute[:p]),
        allowed * (state.free_memory[:p] / state.cap_memory[:p]),
        allowed * (state.free_bandwidth[:p] / state.cap_bandwidth[:p]),
        state.rate[:p] / state.rate.max(),
    ]
    return np.clip(np.concatenate(parts).astype(np.float32), 0.0, 1.0)


class PlacementEnv(gym.Env):
    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, config: SystemConfig, cnns: tuple[CnnSpec, ...], seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.cnns = cnns
        self.p = config.devices
        size = len(cnns) + 1 + 5 * self.p
        self.observation_space = gym.spaces.Box(0.0, 1.0, (size,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(self.p)
        self._seed = seed
        self._init(seed)

    def _init(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.state = SystemState(self.config, self.cnns, np.random.default_rng(seed + 1))
        self.clock = 0.0
        self.request: Request | None = None
        self.layer = 0
        self.results: list[tuple[bool, float]] = []  # (valid, latency) per finished request

    @property
    def current(self) -> Request:
        """The request being placed (there is one after ``reset``)."""
        if self.request is None:
            raise RuntimeError("call reset() before step()")
        return self.request

    def _observe(self) -> np.ndarray:
        return observe(self.state, self.current, self.layer)

    def action_masks(self) -> np.ndarray:
        allowed = self.state.feasible(self.current, self.layer)
        return allowed if allowed.any() else np.ones(self.p, dtype=bool)

    def _next_request(self) -> float:
        """Advance to the next arrival, place its first layer on the source; returns that layer's latency."""
        self.clock += self.rng.exponential(1.0 / self.config.arrival_rate)
        self.state.advance(self.clock)
        self.request = self.state.new_request(int(self.rng.integers(self.config.sources)), self.clock)
        source = self.state.source_device(self.request.source)
        self.state.place(self.request, 0, source)
        self.layer = 1
        return self.request.cnn.layers[0].mults / self.state.speed[source]

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is not None:
            self._init(seed)
        self._first_penalty = self._next_request()
        return self._observe(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        s, request, layer = self.state, self.current, self.layer
        device = int(action)
        previous = request.devices[layer - 1]
        penalty = request.cnn.layers[layer].mults / s.speed[device]
        if device != previous:
            penalty += request.cnn.layers[layer - 1].out_bytes / s.rate[previous]
        if layer == 1:
            penalty += self._first_penalty
        ok = s.place(request, layer, device)
        reward = float(ok) - penalty
        self.layer += 1
        terminated = self.layer == request.cnn.depth - 1
        info: dict[str, Any] = {}
        if terminated:
            s.place(request, self.layer, s.source_device(request.source))
            s.finish(request)
            valid = not request.failed
            self.results.append((valid, s.latency(request)))
            info = {"valid": valid, "latency_s": s.latency(request), "shared_bytes": s.shared_bytes(request)}
            self._first_penalty = self._next_request()  # the observation returned is the next request's
        return self._observe(), reward, terminated, False, info
