"""Reconstruction attacks on a cut tensor (He, Zhang, Lee, ACSAC 2019): what an untrusted device
that receives the tensor at a cut can rebuild of the private input image.

Every attack gets a :class:`CutTarget` (the tensors it observed, and what its threat model lets
it know) and returns reconstructions in pixel space, [0, 1], the shape of the input images:

- ``whitebox``: regularised maximum likelihood (rMLE). The attacker knows the weights before the
  cut (public models) and optimises an image so that the prefix maps it to the observed tensor,
  with a total-variation prior; Adam from a grey image, deterministic (no randomness at all).
- ``decoder``: black-box inverse network. The attacker can query the prefix on images of its
  own (disjoint from the victims') and trains a decoder from cut tensors back to images.
- ``baseline``: no attack, the leakage metric's view: the best single feature map, upsampled
  and min-max normalised (picked with the original as an oracle, so it is an upper bound of
  what that view gives).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from serdab.errors import AuditError

__all__ = ["ATTACKS", "Attack", "CutTarget", "parse_attacks"]

Progress = Callable[[int, int], None]


@dataclass
class CutTarget:
    """One cut as the attacker sees it; images are (B, C, H, W) in [0, 1]."""

    observed: torch.Tensor
    image_shape: tuple[int, int, int]
    normalise: Callable[[torch.Tensor], torch.Tensor]
    prefix: nn.Module | None = None
    train_images: torch.Tensor | None = None
    train_observed: torch.Tensor | None = None
    originals: torch.Tensor | None = None  # only the oracle baseline looks at these


class Attack(ABC):
    name: ClassVar[str]
    needs_prefix: ClassVar[bool] = False
    needs_training: ClassVar[bool] = False

    def __init__(self, steps: int | None = None, seed: int = 0) -> None:
        self.steps = steps
        self.seed = seed

    @abstractmethod
    def reconstruct(self, target: CutTarget, progress: Progress | None = None) -> torch.Tensor:
        """(B, C, H, W) reconstructions in [0, 1], one per observed tensor."""


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (the smoothness prior of rMLE)."""
    dh = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    dw = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    return dh + dw


class WhiteBox(Attack):
    """rMLE: argmin_x ||f(x) - t||^2 / ||t||^2 + tv * TV(x), x in [0, 1]."""

    name = "whitebox"
    needs_prefix = True
    default_steps = 200

    def __init__(self, steps: int | None = None, seed: int = 0, lr: float = 0.05, tv: float = 1.0) -> None:
        super().__init__(steps, seed)
        self.lr, self.tv = lr, tv

    def reconstruct(self, target: CutTarget, progress: Progress | None = None) -> torch.Tensor:
        if target.prefix is None:
            raise AuditError("the white-box attack needs the model's torch prefix (zoo models only)")
        steps = self.steps or self.default_steps
        observed = target.observed
        scale = observed.pow(2).mean(dim=tuple(range(1, observed.dim())), keepdim=True).clamp(min=1e-12)
        batch = observed.shape[0]
        x = torch.full((batch, *target.image_shape), 0.5, requires_grad=True)
        optimiser = torch.optim.Adam([x], lr=self.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
        for param in target.prefix.parameters():
            param.requires_grad_(False)
        for step in range(steps):
            optimiser.zero_grad(set_to_none=True)
            out = target.prefix(target.normalise(x))
            fit = ((out - observed).pow(2) / scale).mean(dim=tuple(range(1, out.dim()))).sum()
            loss = fit + self.tv * batch * total_variation(x)
            loss.backward()
            optimiser.step()
            schedule.step()
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
            if progress:
                progress(step + 1, steps)
        return x.detach()


class _Decoder(nn.Module):
    """Cut tensor -> image: 1x1 projection, then (upsample x2, 3x3 conv) stages to the input size."""

    def __init__(self, in_shape: tuple[int, ...], image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        channels, height = image_shape[0], image_shape[1]
        in_ch, size = (in_shape[0], in_shape[1]) if len(in_shape) == 3 else (in_shape[0], 1)
        self.flat = len(in_shape) != 3
        self.seed_size = max(size, 1)
        if self.flat:  # a vector: project it onto a 4x4 map first
            self.seed_size = 4
            self.project_flat = nn.Linear(in_ch, 64 * 16)
            in_ch = 64
        layers: list[nn.Module] = [nn.Conv2d(in_ch, 64, 1), nn.ReLU()]
        width, size = 64, self.seed_size
        while size < height:
            nxt = max(16, width // 2)
            layers += [nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(width, nxt, 3, padding=1), nn.ReLU()]
            width, size = nxt, size * 2
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, channels, 3, padding=1)]
        self.body = nn.Sequential(*layers)
        self.out_size = image_shape[1:]

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if self.flat:
            t = self.project_flat(t.flatten(1)).view(-1, 64, 4, 4)
        image = self.body(t)
        return torch.sigmoid(F.interpolate(image, size=self.out_size, mode="bilinear"))


class DecoderAttack(Attack):
    """Trains an inverse network on the attacker's own (image, cut tensor) pairs."""

    name = "decoder"
    needs_training = True
    default_steps = 300
    batch = 8

    def reconstruct(self, target: CutTarget, progress: Progress | None = None) -> torch.Tensor:
        if target.train_images is None or target.train_observed is None:
            raise AuditError("the decoder attack needs training images")
        steps = self.steps or self.default_steps
        generator = torch.Generator().manual_seed(self.seed)
        state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)
        try:
            decoder = _Decoder(tuple(target.observed.shape[1:]), target.image_shape)
        finally:
            torch.random.set_rng_state(state)
        optimiser = torch.optim.Adam(decoder.parameters(), lr=2e-3)
        images, observed = target.train_images, target.train_observed
        # tensors have very different ranges cut to cut: standardise by the training statistics
        mean, std = observed.mean(), observed.std().clamp(min=1e-6)
        for step in range(steps):
            pick = torch.randint(0, images.shape[0], (min(self.batch, images.shape[0]),), generator=generator)
            optimiser.zero_grad(set_to_none=True)
            loss = F.mse_loss(decoder((observed[pick] - mean) / std), images[pick])
            loss.backward()
            optimiser.step()
            if progress:
                progress(step + 1, steps)
        with torch.no_grad():
            return decoder.eval()((target.observed - mean) / std)


class Baseline(Attack):
    """The best single feature map per image, upsampled (the oracle picks it by |Pearson|)."""

    name = "baseline"

    def reconstruct(self, target: CutTarget, progress: Progress | None = None) -> torch.Tensor:
        if target.originals is None:
            raise AuditError("the baseline needs the originals to pick its map")
        channels, height, width = target.image_shape
        out = []
        for observed, original in zip(target.observed, target.originals, strict=True):
            maps = observed if observed.dim() == 3 else observed.reshape(-1, 1, 1)[:1]
            resized = F.interpolate(maps[:, None], size=(height, width), mode="bilinear")[:, 0]
            flat = resized.flatten(1)
            low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
            flat = (flat - low) / (high - low).clamp(min=1e-12)
            grey = original.mean(dim=0).flatten()
            centred = flat - flat.mean(dim=1, keepdim=True)
            corr = (centred @ (grey - grey.mean())) / (centred.norm(dim=1) * (grey - grey.mean()).norm()).clamp(
                min=1e-12
            )
            best = int(corr.abs().argmax())
            picture = flat[best] if corr[best] >= 0 else 1.0 - flat[best]
            out.append(picture.view(1, height, width).expand(channels, height, width))
        if progress:
            progress(1, 1)
        return torch.stack(out)


ATTACKS: dict[str, type[Attack]] = {a.name: a for a in (WhiteBox, DecoderAttack, Baseline)}


def parse_attacks(text: str) -> list[str]:
    """'whitebox,baseline' -> ['whitebox', 'baseline']; unknown names list the valid ones."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in ATTACKS]
    if unknown or not names:
        raise AuditError(f"unknown attack {', '.join(unknown) or repr(text)}; use any of {', '.join(ATTACKS)}")
    return list(dict.fromkeys(names))
