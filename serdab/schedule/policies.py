"""Placement policies for one layer at a time, behind one interface (seed 003 and its baselines).

- ``greedy``: among devices that may take the layer now (resources and privacy), the one that
  finishes it first (transfer from the previous device + compute); load-aware, privacy-aware.
- ``static``: seed 003's reference [25]: the most performant devices, chosen offline per CNN and
  participant set, ignoring current load and privacy: consecutive layers fill the fastest device
  (by its total capacity) before moving to the next.
- ``random``: any participant, as a floor.
- ``dqn`` (``serdab.schedule.agent``): a trained Stable-Baselines3 DQN, masked or not.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from serdab.schedule.system import Request, SystemState

__all__ = ["GreedyPolicy", "Policy", "RandomPolicy", "StaticPolicy"]


class Policy(ABC):
    name: str  # set by the class (or, for a trained agent, per instance)

    @abstractmethod
    def choose(self, state: SystemState, request: Request, layer: int) -> int:
        """The participant (0..D-1) to compute ``layer`` of ``request``."""


def layer_finish_s(state: SystemState, request: Request, layer: int) -> np.ndarray:
    """Per participant: seconds to receive the input (if it moves) and compute the layer."""
    p = state.participants
    previous = request.devices[layer - 1]
    moving = np.arange(p) != previous
    transfer = moving * request.cnn.layers[layer - 1].out_bytes / state.rate[previous]
    return transfer + request.cnn.layers[layer].mults / state.speed[:p]


class GreedyPolicy(Policy):
    name = "greedy"

    def choose(self, state: SystemState, request: Request, layer: int) -> int:
        finish = np.where(state.feasible(request, layer), layer_finish_s(state, request, layer), np.inf)
        best = np.flatnonzero(finish == finish.min())
        return int(best[np.argmax(state.speed[best])])  # ties (e.g. a ReLU: no work) go to the fastest


class RandomPolicy(Policy):
    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def choose(self, state: SystemState, request: Request, layer: int) -> int:
        return int(self.rng.integers(state.participants))


class StaticPolicy(Policy):
    name = "static"

    def __init__(self) -> None:
        self._plans: dict[tuple[int, str], list[int]] = {}

    def choose(self, state: SystemState, request: Request, layer: int) -> int:
        key = (state.generation, request.cnn.name)
        if key not in self._plans:
            self._plans[key] = self._plan(state, request)
        return self._plans[key][layer]

    @staticmethod
    def _plan(state: SystemState, request: Request) -> list[int]:
        p = state.participants
        order = sorted(range(p), key=lambda i: -state.speed[i])
        plan = [-1] * request.cnn.depth
        k, used_mults, used_mem = 0, 0.0, 0.0
        for layer in range(1, request.cnn.depth - 1):
            spec = request.cnn.layers[layer]
            while k < p - 1 and (
                used_mults + spec.mults > state.cap_compute[order[k]]
                or used_mem + spec.weight_bytes > state.cap_memory[order[k]]
            ):
                k, used_mults, used_mem = k + 1, 0.0, 0.0
            plan[layer] = order[k]
            used_mults += spec.mults
            used_mem += spec.weight_bytes
        return plan
