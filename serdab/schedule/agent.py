"""The RL-PDNN agent: Stable-Baselines3's DQN with seed 003's Table 1, optionally masked.

Table 1: MLP 2 x 64, gamma 0.95, replay buffer 1e5, batch 64, target network updated every
1000 steps, learning rate 5e-4 (1e-4 for VGG and for CIFAR at 50%), epsilon 1 for the first
episodes then multiplied by 0.99 (0.995) after every episode. SB3 expresses all of it; the
per-episode epsilon decay is a callback. Masking (our addition) only changes which actions the
agent may pick, exploring or not: ``MaskedDQN`` draws random actions among the allowed
participants and takes the best allowed Q-value; the TD target is SB3's unmasked one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from stable_baselines3 import DQN
from stable_baselines3.common.callbacks import BaseCallback

from serdab.errors import SerdabError
from serdab.schedule.policies import Policy
from serdab.schedule.system import Request, SystemState

__all__ = ["DqnPolicy", "EpsilonPerEpisode", "MaskedDQN", "make_agent", "train_agent"]


class MaskedDQN(DQN):
    """DQN that never picks a masked device, exploring or exploiting (SB3's ``_sample_action`` hook)."""

    def action_masks(self) -> np.ndarray:
        """(envs, devices): which device each environment may take for its current layer."""
        env = self.env
        if env is None:
            raise RuntimeError("MaskedDQN needs an environment to read action masks from")
        return np.asarray(env.env_method("action_masks"))

    def next_action(self, learning_starts: int = 0) -> np.ndarray:
        """The action for the current observation: a random allowed device while exploring (epsilon,
        or before ``learning_starts`` steps), else the allowed device with the highest Q-value."""
        masks = self.action_masks()
        if self.num_timesteps < learning_starts or np.random.rand() < self.exploration_rate:
            return np.array([np.random.choice(np.flatnonzero(m)) for m in masks])
        obs = torch.as_tensor(self._last_obs, device=self.device)
        with torch.no_grad():
            q = self.q_net(obs).cpu().numpy()
        return np.asarray(np.where(masks, q, -np.inf).argmax(axis=1))

    def _sample_action(self, learning_starts: int, action_noise=None, n_envs: int = 1):  # noqa: ANN001, ANN201
        action = self.next_action(learning_starts)
        return action, action


class EpsilonPerEpisode(BaseCallback):
    """epsilon = 1 for ``warm`` episodes, then x ``decay`` after each episode (floor ``minimum``)."""

    def __init__(
        self, warm: int, decay: float, minimum: float = 0.02, on_episode: Callable[[int, float], None] | None = None
    ) -> None:
        super().__init__()
        self.warm, self.decay, self.minimum = warm, decay, minimum
        self.episodes = 0
        self.epsilon = 1.0
        self.on_episode = on_episode
        self.returns: list[float] = []
        self._running = 0.0

    def _on_step(self) -> bool:
        self._running += float(self.locals["rewards"][0])
        self.model.__dict__["exploration_rate"] = self.epsilon  # DQN's attribute; BaseAlgorithm does not declare it
        if self.locals["dones"][0]:
            self.episodes += 1
            self.returns.append(self._running)
            self._running = 0.0
            if self.episodes > self.warm:
                self.epsilon = max(self.minimum, self.epsilon * self.decay)
            if self.on_episode:
                self.on_episode(self.episodes, self.returns[-1])
        return True


def make_agent(env, masked: bool, learning_rate: float = 5e-4, seed: int = 0) -> DQN:  # noqa: ANN001
    kind = MaskedDQN if masked else DQN
    return kind(
        "MlpPolicy",
        env,
        learning_rate=learning_rate,
        buffer_size=100_000,
        batch_size=64,
        gamma=0.95,
        target_update_interval=1000,
        learning_starts=500,
        train_freq=4,
        exploration_initial_eps=1.0,
        exploration_final_eps=1.0,
        policy_kwargs={"net_arch": [64, 64]},
        seed=seed,
        verbose=0,
        device="cpu",
    )


def train_agent(
    agent: DQN, steps: int, warm_episodes: int, decay: float, on_episode: Callable[[int, float], None] | None = None
) -> list[float]:
    """Train for ``steps`` layer decisions; returns the return of every episode (Fig. 4-5)."""
    callback = EpsilonPerEpisode(warm_episodes, decay, on_episode=on_episode)
    agent.learn(total_timesteps=steps, callback=callback)
    return callback.returns


class DqnPolicy(Policy):
    """A trained agent as a placement policy (with or without the mask)."""

    name = "dqn"

    def __init__(self, agent: DQN, masked: bool, observe: Callable[[SystemState, Request, int], np.ndarray]) -> None:
        self.agent = agent
        self.masked = masked
        self.observe = observe
        self.name = "dqn-masked" if masked else "dqn"

    def choose(self, state: SystemState, request: Request, layer: int) -> int:
        obs = torch.as_tensor(self.observe(state, request, layer)[None], device=self.agent.device)
        with torch.no_grad():
            q = self.agent.q_net(obs).cpu().numpy()[0]
        if self.masked:
            allowed = state.feasible(request, layer)
            if allowed.any():
                q = np.where(allowed, q, -np.inf)
        return int(q.argmax())

    @classmethod
    def load(cls, path: Path, masked: bool, observe) -> DqnPolicy:  # noqa: ANN001
        try:
            agent = DQN.load(path, device="cpu")
        except (FileNotFoundError, IsADirectoryError):
            raise SerdabError(f"policy file not found: {path}") from None
        except Exception as exc:  # SB3 raises many kinds for a corrupt zip
            raise SerdabError(f"{path} is not a saved Serdab scheduling policy ({type(exc).__name__})") from None
        return cls(agent, masked, observe)
