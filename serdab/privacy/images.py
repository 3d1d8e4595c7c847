"""Images for leakage measurement: real photographs and scans shipped inside scikit-image,
scikit-learn's handwritten digits for small grey models, or the user's own directory.

Nothing is downloaded: every default image is bundled in an installed wheel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from skimage import color, data, transform

from serdab.errors import ImageSetError

__all__ = ["PHOTOS", "LabelledImage", "default_images", "load_image_dir", "to_model_input"]

PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "immunohistochemistry")
"""Bundled scikit-image samples: people, animals, objects, and a microscopy scan."""

_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


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
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in _SUFFIXES)
    if not files:
        raise ImageSetError(f"no image files ({', '.join(sorted(_SUFFIXES))}) in {directory}")
    images = []
    for path in files:
        try:
            pixels = iio.imread(path.read_bytes())  # from bytes: imageio leaks the handle on a corrupt file
        except OSError as exc:
            raise ImageSetError(f"cannot read image {path}: {exc.strerror}") from None
        except Exception as exc:  # imageio/PIL raise many types for a corrupt file
            raise ImageSetError(f"cannot read image {path}: {type(exc).__name__}") from None
        if pixels.ndim == 3 and pixels.shape[0] in (1, 3, 4) and pixels.shape[2] not in (1, 3, 4):
            raise ImageSetError(f"{path} looks like a multi-frame image; give one frame per file")
        images.append(LabelledImage(path.stem, _as_float(_drop_alpha(pixels))))
    return images


def to_model_input(image: LabelledImage, input_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(model input NCHW float32, grey reference HxW in [0, 1]) for an NCHW input shape.

    Three-channel inputs get ImageNet normalisation; one-channel inputs get MNIST's.
    """
    _, channels, height, width = input_shape
    pixels = image.pixels
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    resized = transform.resize(pixels, (height, width), anti_aliasing=True).astype(np.float32)
    grey = resized if resized.ndim == 2 else color.rgb2gray(resized).astype(np.float32)
    if channels == 3:
        rgb = resized if resized.ndim == 3 else np.repeat(resized[..., None], 3, axis=2)
        tensor = ((rgb - _IMAGENET_MEAN) / _IMAGENET_STD).transpose(2, 0, 1)
    elif channels == 1:
        tensor = ((grey - 0.1307) / 0.3081)[None]
    else:
        tensor = np.repeat(grey[None], channels, axis=0)
    return tensor[None].astype(np.float32), grey
