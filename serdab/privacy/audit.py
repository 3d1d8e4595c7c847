"""`serdab audit`: run reconstruction attacks at each cut and score what the attacker rebuilt.

Scores are computed on the images at the model's input size: SSIM on grey (scikit-image's
definition, as the leakage metric) and PSNR on all channels, mean and worst case (the most
revealing image) over the victim images. ``chance_ssim`` is the SSIM of each reconstruction
against a *different* victim image: what SSIM gives for a picture that is not the input, so a
score near it means the attack learnt nothing about that image. Each (cut, attack) result is
cached under the Serdab cache directory, keyed by the model, images and settings.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel

from serdab.errors import AuditError
from serdab.graph.chain import Chain, expose_cuts
from serdab.onnxrt import make_session
from serdab.privacy.attacks import ATTACKS, CutTarget
from serdab.privacy.images import LabelledImage, attacker_images, normaliser, pixel_batch, victim_images
from serdab.privacy.metrics import resolution_of, ssim_batch

__all__ = [
    "AttackScore",
    "AuditReport",
    "CutAudit",
    "audit_model",
    "check_audit_for",
    "default_cuts",
    "load_audit",
    "model_digest",
    "run_audit",
    "save_grid",
]

_FORMAT = "1"


class AttackScore(BaseModel):
    attack: str
    ssim_mean: float
    ssim_worst: float
    psnr_mean: float
    psnr_worst: float
    chance_ssim: float | None
    per_image: dict[str, list[float]]  # name -> [ssim, psnr]
    seconds: float


class CutAudit(BaseModel):
    """The attacks on the tensor leaving block ``index`` (the cut after that block)."""

    index: int
    name: str
    out_shape: list[int]
    resolution: list[int] | None
    scores: dict[str, AttackScore]

    @property
    def worst_ssim(self) -> float:
        return max(s.ssim_worst for s in self.scores.values())

    @property
    def worst_psnr(self) -> float:
        return max(s.psnr_worst for s in self.scores.values())


class AuditReport(BaseModel):
    model: str
    model_digest: str
    blocks: int
    input_shape: list[int]
    images: list[str]
    train_images: list[str]
    attacks: list[str]
    steps: dict[str, int]
    cuts: list[CutAudit]


def model_digest(chain: Chain) -> str:
    """Identifies the model an audit was run on (its bound ONNX graph)."""
    return hashlib.sha256(chain.model.SerializeToString(deterministic=True)).hexdigest()[:16]


@dataclass
class Reconstructions:
    """What the PNG grid shows: originals and, per (cut, attack), the reconstructions."""

    originals: np.ndarray
    by_cut: dict[tuple[int, str], np.ndarray]


def _observe(chain: Chain, cuts: Sequence[int], inputs: np.ndarray) -> dict[int, np.ndarray]:
    model = expose_cuts(chain)
    session = make_session(model, threads=2)
    names = [o.name for o in session.get_outputs()]
    wanted = {chain.blocks[c].output: c for c in cuts}
    collected: dict[int, list[np.ndarray]] = {c: [] for c in cuts}
    for sample in inputs:
        outputs = dict(zip(names, session.run(None, {chain.input_name: sample[None]}), strict=True))
        for tensor, cut in wanted.items():
            collected[cut].append(outputs[tensor])
    return {c: np.concatenate(v) for c, v in collected.items()}


def _psnr(original: torch.Tensor, rebuilt: torch.Tensor) -> float:
    mse = float((original - rebuilt).pow(2).mean())
    return 99.0 if mse <= 1e-10 else 10.0 * float(np.log10(1.0 / mse))


def _score(
    name: str, images: Sequence[LabelledImage], originals: torch.Tensor, rebuilt: torch.Tensor, seconds: float
) -> AttackScore:
    grey_o, grey_r = originals.mean(dim=1), rebuilt.mean(dim=1)
    ssim = [float(ssim_batch(grey_o[i], grey_r[i][None])[0]) for i in range(len(images))]
    psnr = [_psnr(originals[i], rebuilt[i]) for i in range(len(images))]
    chance = None
    if len(images) > 1:
        chance = float(
            np.mean([float(ssim_batch(grey_o[(i + 1) % len(images)], grey_r[i][None])[0]) for i in range(len(images))])
        )
    return AttackScore(
        attack=name,
        ssim_mean=float(np.mean(ssim)),
        ssim_worst=max(ssim),
        psnr_mean=float(np.mean(psnr)),
        psnr_worst=max(psnr),
        chance_ssim=chance,
        per_image={img.name: [s, p] for img, s, p in zip(images, ssim, psnr, strict=True)},
        seconds=seconds,
    )


def _cache_key(digest: str, cut: int, attack: str, steps: int, images: np.ndarray, train: np.ndarray | None) -> str:
    h = hashlib.sha256(f"{_FORMAT}:{digest}:{cut}:{attack}:{steps}:{torch.__version__}".encode())
    h.update(np.ascontiguousarray(images).tobytes())
    if train is not None:
        h.update(np.ascontiguousarray(train).tobytes())
    return h.hexdigest()[:20]


def _cache_dir() -> Path:
    from serdab.models.load import cache_dir

    return cache_dir() / "audits"


def _read_cache(key: str) -> tuple[AttackScore, np.ndarray] | None:
    base = _cache_dir() / key
    try:
        score = AttackScore.model_validate_json(base.with_suffix(".json").read_text())
        rebuilt = np.load(base.with_suffix(".npy"))
    except (OSError, ValueError):
        return None
    return score, rebuilt


def _write_cache(key: str, score: AttackScore, rebuilt: np.ndarray) -> None:
    folder = _cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{key}.{os.getpid()}.tmp"
    with tmp.open("wb") as fh:
        np.save(fh, rebuilt)
    tmp.replace(folder / f"{key}.npy")
    tmp.write_text(score.model_dump_json())
    tmp.replace(folder / f"{key}.json")


def run_audit(
    chain: Chain,
    model_name: str,
    cuts: Sequence[int],
    attacks: Sequence[str],
    images: Sequence[LabelledImage],
    *,
    module: torch.nn.Module | None = None,
    train_images: Sequence[LabelledImage] = (),
    steps: dict[str, int] | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> tuple[AuditReport, Reconstructions]:
    """Attack every cut in ``cuts`` (block indices) with every attack; progress(label, fraction)."""
    last = len(chain.blocks) - 2
    for cut in cuts:
        if not 0 <= cut <= last:
            raise AuditError(f"no cut {cut} in {model_name}: cuts are 0..{last} (see `serdab profile {model_name}`)")
    if not images:
        raise AuditError("the audit needs at least one image")
    if any(ATTACKS[a].needs_prefix for a in attacks) and module is None:
        raise AuditError(f"the white-box attack needs a zoo model's torch code; {model_name} is an ONNX file")
    asked: dict[str, int] = steps or {}
    defaults: dict[str, int] = {a: getattr(ATTACKS[a], "default_steps", 0) for a in attacks}
    steps = {a: asked.get(a) or defaults[a] for a in attacks}
    shape = chain.input_shape
    pixels = pixel_batch(images, shape)
    normalise = normaliser(shape[1])
    inputs = normalise(pixels).numpy()
    observed = _observe(chain, cuts, inputs)
    digest = model_digest(chain)
    train_pixels = train_observed = None
    if any(ATTACKS[a].needs_training for a in attacks):
        if not train_images:
            raise AuditError("the decoder attack needs training images")
        train_pixels = pixel_batch(train_images, shape)
        train_observed = _observe(chain, cuts, normalise(train_pixels).numpy())
    prefixes: dict[int, torch.nn.Module] = {}
    if module is not None and any(ATTACKS[a].needs_prefix for a in attacks):
        from serdab.privacy.prefix import prefix_modules

        probes = inputs[:2]
        prefixes = prefix_modules(
            module, [p[None] for p in probes], [{c: observed[c][i : i + 1] for c in cuts} for i in range(len(probes))]
        )
    rows, rebuilt_all = [], {}
    jobs = [(c, a) for c in cuts for a in attacks]
    for done, (cut, attack_name) in enumerate(jobs):
        label = f"cut {cut} {attack_name}"
        attack = ATTACKS[attack_name](steps=steps[attack_name] or None)
        key = _cache_key(
            digest,
            cut,
            attack_name,
            steps[attack_name],
            inputs,
            train_pixels.numpy() if train_pixels is not None else None,
        )
        cached = _read_cache(key)
        if cached is not None:
            score, rebuilt_np = cached
        else:
            target = CutTarget(
                observed=torch.from_numpy(observed[cut]),
                image_shape=tuple(pixels.shape[1:]),  # type: ignore[arg-type]
                normalise=normalise,
                prefix=prefixes.get(cut),
                train_images=train_pixels,
                train_observed=torch.from_numpy(train_observed[cut]) if train_observed is not None else None,
                originals=pixels,
            )
            started = time.perf_counter()

            def step(i: int, n: int, done: int = done, label: str = label) -> None:
                if progress:
                    progress(label, (done + i / n) / len(jobs))

            rebuilt = attack.reconstruct(target, step).clamp(0, 1)
            score = _score(attack_name, images, pixels, rebuilt, time.perf_counter() - started)
            rebuilt_np = (rebuilt.numpy() * 255).round().astype(np.uint8)
            _write_cache(key, score, rebuilt_np)
        rebuilt_all[(cut, attack_name)] = rebuilt_np
        if progress:
            progress(label, (done + 1) / len(jobs))
        rows.append((cut, score))
    cut_rows = []
    for cut in cuts:
        block = chain.blocks[cut]
        out_shape = chain.shapes[block.output]
        cut_rows.append(
            CutAudit(
                index=cut,
                name=block.name,
                out_shape=list(out_shape),
                resolution=list(resolution_of(out_shape)) if len(out_shape) == 4 else None,
                scores={s.attack: s for c, s in rows if c == cut},
            )
        )
    report = AuditReport(
        model=model_name,
        model_digest=digest,
        blocks=len(chain.blocks),
        input_shape=list(shape),
        images=[i.name for i in images],
        train_images=[i.name for i in train_images],
        attacks=list(attacks),
        steps=steps,
        cuts=cut_rows,
    )
    originals = (pixels.numpy() * 255).round().astype(np.uint8)
    return report, Reconstructions(originals, rebuilt_all)


def default_cuts(chain: Chain) -> list[int]:
    """The first cut at each spatial resolution: the most revealing tensor of that size."""
    seen, cuts = set(), []
    for block in chain.blocks[:-1]:
        res = resolution_of(chain.shapes[block.output])
        if res not in seen:
            seen.add(res)
            cuts.append(block.index)
    return cuts


def audit_model(
    model: str,
    chain: Chain,
    name: str,
    cuts: Sequence[int],
    attacks: Sequence[str],
    *,
    victims: Sequence[LabelledImage] | None = None,
    attackers: Sequence[LabelledImage] | None = None,
    steps: dict[str, int] | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> tuple[AuditReport, Reconstructions]:
    """``run_audit`` as `serdab audit` runs it: the default images for the model's channels and,
    for the white-box attack, the zoo model's torch module (``model`` names the zoo entry)."""
    from serdab.models.zoo import ZOO, build_module

    whitebox = any(ATTACKS[a].needs_prefix for a in attacks)
    if whitebox and model not in ZOO:
        raise AuditError(
            "the white-box attack needs the model's torch code (zoo models); use --attack decoder,baseline"
        )
    grey = chain.input_shape[1] == 1
    victims = victims or victim_images(grey)
    if any(ATTACKS[a].needs_training for a in attacks):
        attackers = attackers or attacker_images(grey)
        if any(v.pixels.shape == a.pixels.shape and (v.pixels == a.pixels).all() for v in victims for a in attackers):
            raise AuditError("the decoder's training images include a victim image: use disjoint directories")
    module = build_module(model) if whitebox else None
    return run_audit(
        chain, name, cuts, attacks, victims, module=module, train_images=attackers or [], steps=steps, progress=progress
    )


def check_audit_for(report: AuditReport, model_name: str, blocks: int, digest: str | None = None) -> None:
    """Refuse an audit file made for another model (or another export of it)."""
    if report.blocks != blocks or (digest is not None and report.model_digest != digest):
        raise AuditError(
            f"the audit file is for {report.model} ({report.blocks} blocks, digest {report.model_digest}), "
            f"not for {model_name} ({blocks} blocks{', digest ' + digest if digest else ''}): "
            f"run `serdab audit {model_name} --all --json FILE`"
        )


def save_grid(path: Path, report: AuditReport, recon: Reconstructions) -> None:
    """One row per victim image: the original, then each (cut, attack) reconstruction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [(c.index, a) for c in report.cuts for a in report.attacks]
    n_img = len(report.images)
    fig, axes = plt.subplots(
        n_img, len(columns) + 1, figsize=(1.6 * (len(columns) + 1), 1.7 * n_img + 0.4), squeeze=False
    )
    by_cut = {c.index: c for c in report.cuts}
    for row in range(n_img):
        tiles = [("original", recon.originals[row])]
        for cut, attack in columns:
            s = by_cut[cut].scores[attack].per_image[report.images[row]][0]
            res = "x".join(map(str, by_cut[cut].resolution or [1, 1]))
            tiles.append((f"cut {cut} ({res})\n{attack} SSIM {s:.2f}", recon.by_cut[(cut, attack)][row]))
        for ax, (title, image) in zip(axes[row], tiles, strict=True):
            picture = image.transpose(1, 2, 0)
            ax.imshow(picture[..., 0] if picture.shape[2] == 1 else picture, cmap="gray", vmin=0, vmax=255)
            ax.set_title(title, fontsize=6)
            ax.axis("off")
    fig.suptitle(f"{report.model}: what an attacker rebuilds from each cut tensor", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_audit(path: Path) -> AuditReport:
    from serdab.validation import load_json_model

    return load_json_model(AuditReport, path, "audit", "a `serdab audit --json` report", AuditError)
