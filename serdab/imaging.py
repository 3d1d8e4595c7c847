"""Image files as a viewer shows them, and the one resize behind every model input.

Pillow decides what an image looks like: palette, greyscale, greyscale+alpha, RGBA (alpha
dropped, as ``Image.convert`` does), CMYK including Adobe's inverted CMYK JPEGs, with the EXIF
orientation applied; every frame of an animated GIF or a multi-page TIFF is a frame of its own.
16-bit greyscale is scaled to 8 bits (Pillow's own ``convert`` clips it at 255, which would show
a bright image white). Images over ``MAX_PIXELS`` are refused before they are decoded.

A leaf: numpy, Pillow and scikit-image, no torch, so a run's manager stays light.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_SUFFIXES", "MAX_PIXELS", "as_shown", "image_frames", "resized_chw"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
MAX_PIXELS = 16384 * 16384  # per frame; a larger one is refused (a decompression bomb or no photograph)
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


def as_shown(page: object) -> np.ndarray:
    """One Pillow frame -> H x W x 3 uint8 RGB, as a viewer shows it."""
    from PIL import Image, ImageOps

    assert isinstance(page, Image.Image)
    upright = ImageOps.exif_transpose(page) or page
    if upright.mode in _SIXTEEN_BIT or upright.mode == "I":
        values = np.asarray(upright).astype(np.float64)
        top = 65535.0 if upright.mode in _SIXTEEN_BIT or values.max() > 255 else 255.0
        grey = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if upright.mode == "F":
        grey = np.clip(np.rint(np.asarray(upright)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(upright.convert("RGB"))


def image_frames(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, RGB pixels) for every frame of an image file: ``photo.jpg`` for a still image,
    ``anim.gif#3`` for frame 3 of an animation or page 3 of a TIFF. Raises what Pillow raises."""
    from PIL import Image, ImageSequence

    with Image.open(path) as image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ValueError(f"{width}x{height} pixels is over the {MAX_PIXELS:,}-pixel limit")
        count = getattr(image, "n_frames", 1)
        for index, page in enumerate(ImageSequence.Iterator(image)):
            yield (path.name if count == 1 else f"{path.name}#{index}"), as_shown(page)


def resized_chw(pixels: np.ndarray, channels: int, height: int, width: int) -> np.ndarray:
    """H x W (grey) or H x W x 3 floats in [0, 1] -> C x H x W at the model's size, anti-aliased: the one
    resize behind run inputs, leakage references and attack targets (grey by luminance)."""
    from skimage import color, transform

    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    resized = transform.resize(pixels, (height, width), anti_aliasing=True).astype(np.float32)
    if channels == 1:
        grey = resized if resized.ndim == 2 else color.rgb2gray(resized).astype(np.float32)
        return grey[None]
    rgb = resized if resized.ndim == 3 else np.repeat(resized[..., None], 3, axis=2)
    return rgb.transpose(2, 0, 1)
