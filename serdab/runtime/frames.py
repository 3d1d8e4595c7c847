"""Frame sources: a video file (PyAV, FFmpeg in its wheel), a directory of images, a synthetic camera.

Each source is opened eagerly enough to fail before any worker starts (an unreadable video,
an empty directory) and then read lazily, so a long stream never sits in memory. Frames are
resized to the model's input and kept as uint8 pixels; the first stage normalises them as the
model expects (ImageNet for RGB, MNIST for grey). Frames are grouped into chunks of n (seed 000
sec. IV).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from serdab.errors import FrameSourceError
from serdab.normalisation import Normalisation, normalisation

__all__ = [
    "Frame",
    "FrameSource",
    "Normalisation",
    "chunks",
    "normalisation",
    "open_source",
    "synthetic_frame",
    "to_input",
    "to_pixels",
    "write_video",
]

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
_VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".h264"}


@dataclass(frozen=True)
class Frame:
    id: int
    name: str  # where it came from: "synthetic", "img_0001.png", "clip.mp4#12"
    pixels: np.ndarray  # 1 x C x H x W uint8 at the model's input size: what the first stage receives
    norm: Normalisation

    @property
    def tensor(self) -> np.ndarray:
        """The model input, 1 x C x H x W float32 (what the first stage computes from ``pixels``)."""
        return self.norm.apply(self.pixels)


@dataclass
class FrameSource:
    """An opened source: ``describe`` for reports, ``count`` when known, ``frames()`` to read."""

    kind: str
    spec: str
    count: int | None
    _iterator: Iterator[tuple[str, np.ndarray]]
    input_shape: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.kind} {self.spec}" + (f" ({self.count} frames)" if self.count is not None else "")

    def frames(self) -> Iterator[Frame]:
        norm = normalisation(self.input_shape[1])
        for index, (name, pixels) in enumerate(self._iterator):
            yield Frame(index, name, to_pixels(pixels, self.input_shape), norm)


def to_pixels(pixels: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """uint8 or [0, 1] pixels (H x W [x 3]) -> 1 x C x H x W uint8 at the model's input size."""
    from serdab.privacy.images import LabelledImage, _as_float, _drop_alpha, _resized_pixels

    _, channels, height, width = input_shape
    image = LabelledImage("frame", _as_float(_drop_alpha(pixels)))
    resized = _resized_pixels(image, 1 if channels == 1 else 3, height, width)
    if channels not in (1, 3):
        resized = np.repeat(resized.mean(axis=0, keepdims=True), channels, axis=0)
    return np.clip(np.rint(resized * 255), 0, 255).astype(np.uint8)[None]


def to_input(pixels: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """uint8 or [0, 1] pixels (H x W [x 3]) -> the model's normalised 1 x C x H x W float input."""
    return normalisation(input_shape[1]).apply(to_pixels(pixels, input_shape))


def synthetic_frame(index: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A camera-like RGB frame: a lit gradient, a moving square and sensor noise (uint8)."""
    rng = np.random.default_rng(seed * 1_000_003 + index)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin((x + y) / 23.0)], axis=2) * 160
    side = max(4, min(height, width) // 5)
    top = int((height - side) * (0.5 + 0.45 * np.sin(index / 7.0)))
    left = int((width - side) * ((index * 0.037) % 1.0))
    base[top : top + side, left : left + side] = (230, 60, 40)
    noisy = base + rng.normal(0, 6, base.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _synthetic(count: int, shape: tuple[int, ...]) -> Iterator[tuple[str, np.ndarray]]:
    height, width = shape[2], shape[3]
    for i in range(count):
        yield f"synthetic#{i}", synthetic_frame(i, height, width)


def _image_dir(files: list[Path]) -> Iterator[tuple[str, np.ndarray]]:
    import imageio.v3 as iio

    for path in files:
        try:
            pixels = iio.imread(path.read_bytes())
        except Exception as exc:  # imageio/PIL raise many kinds for a corrupt file
            raise FrameSourceError(f"cannot read image {path}: {type(exc).__name__}") from None
        yield path.name, pixels


def _video(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    import av

    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            yield f"{path.name}#{index}", frame.to_ndarray(format="rgb24")


def _check_video(path: Path) -> int | None:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise FrameSourceError(f"{path} has no video stream")
            stream = container.streams.video[0]
            next(iter(container.decode(stream)))
            return int(stream.frames) or None
    except FrameSourceError:
        raise
    except StopIteration:
        raise FrameSourceError(f"{path} holds no decodable video frame") from None
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise FrameSourceError(f"cannot read video {path}: {exc}") from None


def open_source(spec: str, input_shape: tuple[int, ...], limit: int | None = None) -> FrameSource:
    """``synthetic:N``, a directory of images, or a video file; ``limit`` caps the frames read."""
    if len(input_shape) != 4:
        raise FrameSourceError(f"frames need an N,C,H,W model input, this model takes {input_shape}")
    if spec.startswith("synthetic"):
        _, _, count = spec.partition(":")
        if not count.isdigit() or int(count) < 1:
            raise FrameSourceError(f"synthetic source needs a frame count, e.g. synthetic:30 (got {spec!r})")
        n = int(count) if limit is None else min(int(count), limit)
        return FrameSource("synthetic camera", spec, n, _synthetic(n, input_shape), input_shape)
    path = Path(spec)
    if not path.exists():
        raise FrameSourceError(f"input not found: {spec} (give a video file, an image directory or synthetic:N)")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not files:
            raise FrameSourceError(f"no image files ({', '.join(sorted(_IMAGE_SUFFIXES))}) in {path}")
        files = files[:limit] if limit is not None else files
        return FrameSource("image directory", spec, len(files), _image_dir(files), input_shape)
    if path.suffix.lower() in _IMAGE_SUFFIXES:
        return FrameSource("image", spec, 1, _image_dir([path]), input_shape)
    known = _check_video(path)
    frames = _video(path) if limit is None else islice(_video(path), limit)
    known = min(known, limit) if known is not None and limit is not None else known
    return FrameSource("video", spec, known, frames, input_shape)


def chunks(frames: Iterator[Frame], n: int) -> Iterator[list[Frame]]:
    """Consecutive chunks of ``n`` frames (the last may be shorter)."""
    while chunk := list(islice(frames, n)):
        yield chunk


def write_video(path: Path, count: int, height: int = 96, width: int = 128, fps: int = 10) -> Path:
    """A short generated video of synthetic camera frames (MPEG-4), for tests and demos."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(i, height, width), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
