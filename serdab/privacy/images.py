"""Images for leakage measurement: real photographs and scans shipped inside scikit-image,
scikit-learn's handwritten digits for small grey models, or the user's own directory.

Nothing is downloaded: every default image is bundled in an installed wheel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from skimage import color, data, transform

from serdab.errors import ImageSetError
from serdab.imaging import IMAGE_SUFFIXES, image_frames, resized_chw
from serdab.models.digits import MNIST_MEAN, MNIST_STD, digits_split
from serdab.normalisation import IMAGENET

__all__ = [
    "PHOTOS",
    "TRAIN_PHOTOS",
    "LabelledImage",
    "attacker_images",
    "default_images",
    "load_image_dir",
    "normaliser",
    "pixel_batch",
    "to_model_input",
    "victim_images",
]

PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "immunohistochemistry")
"""Bundled scikit-image samples: people, animals, objects, and a microscopy scan."""

TRAIN_PHOTOS = (
    "rocket",
    "chelsea",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "coins",
    "moon",
    "clock",
    "brick",
    "grass",
    "gravel",
    "cell",
    "text",
    "page",
)
"""Bundled scikit-image samples an attacker trains on; never the audit's victim images."""

_IMAGENET_MEAN = np.array(IMAGENET.mean, dtype=np.float32)
_IMAGENET_STD = np.array(IMAGENET.std, dtype=np.float32)


@dataclass(frozen=True)
class LabelledImage:
    """An RGB or grey image in [0, 1], (H, W, 3) or (H, W), with a name for reports."""

    name: str
    pixels: np.ndarray


def _as_float(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == bool:
        return image.astype(np.float32)
    if np.issubdtype(image.dtype, np.integer):
        return (image / np.iinfo(image.dtype).max).astype(np.float32)
    low, high = float(image.min()), float(image.max())
    return ((image - low) / (high - low or 1.0)).astype(np.float32)


def _drop_alpha(image: np.ndarray) -> np.ndarray:
    return image[..., :3] if image.ndim == 3 and image.shape[2] == 4 else image


def default_images(grey_digits: bool = False, count: int | None = None) -> list[LabelledImage]:
    """The bundled photographs; with ``grey_digits`` the ten digit classes come first."""
    images: list[LabelledImage] = []
    if grey_digits:
        from sklearn.datasets import load_digits

        digits = load_digits()
        for label in range(10):
            first = int(np.flatnonzero(digits.target == label)[0])
            images.append(LabelledImage(f"digit-{label}", (digits.images[first] / 16.0).astype(np.float32)))
    for name in PHOTOS:
        images.append(LabelledImage(name, _as_float(_drop_alpha(getattr(data, name)()))))
    return images[:count] if count else images


def load_image_dir(directory: Path) -> list[LabelledImage]:
    """Every readable image file directly inside ``directory``, sorted by name."""
    if not directory.exists():
        raise ImageSetError(f"image directory not found: {directory}")
    if not directory.is_dir():
        raise ImageSetError(f"--images needs a directory of image files, got the file {directory}")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageSetError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {directory}")
    images = []
    for path in files:
        try:
            frames = list(islice(image_frames(path), 2))  # as a viewer shows it (serdab.imaging)
        except OSError as exc:
            raise ImageSetError(f"cannot read image {path}: {exc.strerror or exc}") from None
        except Exception as exc:  # Pillow raises many types for a corrupt file
            raise ImageSetError(f"cannot read image {path}: {type(exc).__name__}") from None
        if len(frames) != 1:
            raise ImageSetError(f"{path} holds several frames (an animation or pages); give one frame per file")
        images.append(LabelledImage(path.stem, _as_float(frames[0][1])))
    return images


def to_model_input(image: LabelledImage, input_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(model input NCHW float32, grey reference HxW in [0, 1]) for an NCHW input shape.

    Three-channel inputs get ImageNet normalisation; one-channel inputs get MNIST's.
    """
    _, channels, height, width = input_shape
    resized = _resized(image, height, width)
    grey = resized if resized.ndim == 2 else color.rgb2gray(resized).astype(np.float32)
    if channels == 3:
        rgb = resized if resized.ndim == 3 else np.repeat(resized[..., None], 3, axis=2)
        tensor = ((rgb - _IMAGENET_MEAN) / _IMAGENET_STD).transpose(2, 0, 1)
    elif channels == 1:
        tensor = ((grey - MNIST_MEAN) / MNIST_STD)[None]
    else:
        tensor = np.repeat(grey[None], channels, axis=0)
    return tensor[None].astype(np.float32), grey


def _victim_digits() -> list[int]:
    """One digit of each class from the held-out split, so a model trained on the digits never saw them."""
    from sklearn.datasets import load_digits

    target = load_digits().target
    test = digits_split()[1]
    return [int(next(i for i in test if target[i] == label)) for label in range(10)]


def victim_images(grey: bool) -> list[LabelledImage]:
    """The audit's default inputs: three photographs, or one held-out digit of each class for grey models."""
    if grey:
        from sklearn.datasets import load_digits

        digits = load_digits()
        return [
            LabelledImage(f"digit-{digits.target[i]}", (digits.images[i] / 16.0).astype(np.float32))
            for i in _victim_digits()
        ]
    return [LabelledImage(name, _as_float(_drop_alpha(getattr(data, name)()))) for name in PHOTOS[:3]]


def attacker_images(grey: bool, count: int = 64, seed: int = 0) -> list[LabelledImage]:
    """The black-box attacker's own images: random crops and flips of TRAIN_PHOTOS, or digits
    other than the victim ones (disjoint from ``victim_images`` by construction)."""
    rng = np.random.default_rng(seed)
    if grey:
        from sklearn.datasets import load_digits

        digits = load_digits()
        victims = set(_victim_digits())
        pool = [i for i in range(len(digits.target)) if i not in victims]
        chosen = rng.choice(pool, size=min(count, len(pool)), replace=False)
        return [LabelledImage(f"digit#{i}", (digits.images[i] / 16.0).astype(np.float32)) for i in chosen]
    sources = [(name, _as_float(_drop_alpha(getattr(data, name)()))) for name in TRAIN_PHOTOS]
    crops = []
    for k in range(count):
        name, image = sources[k % len(sources)]
        side = min(image.shape[:2])
        size = int(rng.uniform(0.4, 1.0) * side)
        top = int(rng.integers(0, image.shape[0] - size + 1))
        left = int(rng.integers(0, image.shape[1] - size + 1))
        crop = image[top : top + size, left : left + size]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crops.append(LabelledImage(f"{name}#{k}", np.ascontiguousarray(crop)))
    return crops


def _resized(image: LabelledImage, height: int, width: int) -> np.ndarray:
    """HxW (grey) or HxWx3 float32 in [0, 1], anti-aliased: the one resize behind inputs and attack targets."""
    pixels = image.pixels
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    return transform.resize(pixels, (height, width), anti_aliasing=True).astype(np.float32)


def _resized_pixels(image: LabelledImage, channels: int, height: int, width: int) -> np.ndarray:
    return resized_chw(image.pixels, channels, height, width)


def pixel_batch(images: Sequence[LabelledImage], input_shape: Sequence[int]) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] at the model's input size: what attacks rebuild and are scored on."""
    _, channels, height, width = input_shape
    if channels not in (1, 3):
        raise ImageSetError(f"attacks need a 1- or 3-channel image input, the model takes {channels} channels")
    return torch.from_numpy(np.stack([_resized_pixels(i, channels, height, width) for i in images]))


def normaliser(channels: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Pixels in [0, 1] -> model input, differentiable (ImageNet statistics for RGB, MNIST's for grey)."""
    if channels == 3:
        mean = torch.from_numpy(_IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.from_numpy(_IMAGENET_STD).view(1, 3, 1, 1)
    else:
        mean, std = torch.tensor(MNIST_MEAN).view(1, 1, 1, 1), torch.tensor(MNIST_STD).view(1, 1, 1, 1)
    return lambda pixels: (pixels - mean) / std
