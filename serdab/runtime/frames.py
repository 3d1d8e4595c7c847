"""Frame sources: a video file (PyAV, FFmpeg in its wheel), a directory of images, a synthetic camera.

Each source is opened eagerly enough to fail before any worker starts (an unreadable video,
an empty directory) and then read lazily, so a long stream never sits in memory. Images look as
a viewer shows them (``serdab.imaging``: Pillow's conversion, EXIF orientation; animations and
multi-page TIFFs give one frame per page); a video's display rotation is applied. Frames are
resized to the model's input and kept as uint8 pixels; the first stage normalises them as the
model expects (ImageNet for RGB, MNIST for grey). Frames are grouped into chunks of n (seed 000
sec. IV).

A file that cannot be decoded, or whose frame takes longer than ``DECODE_TIMEOUT_S`` to decode
(decoding runs in a thread the stream only waits for that long), is bad input. ``BadInput.SKIP``
(the default) gives it a frame id and a result line saying why, without sending it anywhere;
``BadInput.REFUSE`` decodes every file before any work and refuses the run naming every bad one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np

from serdab.choices import BadInput
from serdab.errors import FrameSourceError
from serdab.imaging import IMAGE_SUFFIXES, image_frames, resized_chw
from serdab.normalisation import Normalisation, normalisation

__all__ = [
    "DECODE_TIMEOUT_S",
    "BadInput",
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

_MULTI_FRAME = {".gif", ".tif", ".tiff", ".webp"}
_VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".h264"}


DECODE_TIMEOUT_S = 30.0  # per frame: a decode that takes longer is bad input, not a hung run


# what a source's reader yields per frame: pixels, or why there are none
Decoded = tuple[str, "np.ndarray | str"]


@dataclass(frozen=True)
class Frame:
    id: int
    name: str  # where it came from: "synthetic", "img_0001.png", "clip.mp4#12", "anim.gif#3"
    pixels: np.ndarray  # 1 x C x H x W uint8 at the model's input size: what the first stage receives
    norm: Normalisation
    error: str | None = None  # bad input: why this frame has no pixels (it is answered with this)

    @property
    def tensor(self) -> np.ndarray:
        """The model input, 1 x C x H x W float32 (what the first stage computes from ``pixels``)."""
        return self.norm.apply(self.pixels)


@dataclass
class FrameSource:
    """An opened source: ``describe`` for reports, ``count`` when known, ``frames()`` to read."""

    kind: str
    spec: str
    count: int | None  # frames when known (files of a directory, not their pages)
    _iterator: Iterator[Decoded]
    input_shape: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.kind} {self.spec}" + (f" ({self.count} frames)" if self.count is not None else "")

    def frames(self) -> Iterator[Frame]:
        norm = normalisation(self.input_shape[1])
        empty = np.zeros((0,), dtype=np.uint8)
        for index, (name, pixels) in enumerate(self._iterator):
            if isinstance(pixels, str):
                yield Frame(index, name, empty, norm, error=pixels)
            else:
                yield Frame(index, name, to_pixels(pixels, self.input_shape), norm)


def to_pixels(pixels: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """uint8 or [0, 1] pixels (H x W [x 3]) -> 1 x C x H x W uint8 at the model's input size."""
    _, channels, height, width = input_shape
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = pixels[..., :3]
    scaled = pixels.astype(np.float32) / 255.0 if pixels.dtype == np.uint8 else pixels.astype(np.float32)
    resized = resized_chw(scaled, 1 if channels == 1 else 3, height, width)
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


def _bounded(name: str, read: Callable[[], Iterator[tuple[str, np.ndarray]]], timeout_s: float) -> Iterator[Decoded]:
    """``read()``'s frames, decoded in a thread the stream waits at most ``timeout_s`` per frame for; a
    failure or a timeout ends the file with one (name, reason) item. A decoder that hangs is left
    behind (a daemon thread; Python cannot stop it), the stream is not."""
    items: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=2)

    def work() -> None:
        try:
            for item in read():
                items.put(("frame", item))
            items.put(("end", None))
        except Exception as exc:  # Pillow, PyAV and numpy raise many kinds for a corrupt file
            items.put(("error", f"{type(exc).__name__}: {exc}".rstrip(": ")))

    threading.Thread(target=work, daemon=True, name=f"decode {name}").start()
    done = 0
    while True:
        try:
            kind, item = items.get(timeout=timeout_s)
        except queue.Empty:
            yield _next_name(name, done), f"cannot decode: no frame after {timeout_s:.0f} s"
            return
        if kind == "end":
            return
        if kind == "error":
            yield _next_name(name, done), f"cannot decode: {item}"
            return
        assert isinstance(item, tuple)
        done += 1
        yield item


def _next_name(name: str, done: int) -> str:
    return name if done == 0 else f"{name}#{done}"


def _image_dir(files: list[Path], timeout_s: float = DECODE_TIMEOUT_S) -> Iterator[Decoded]:
    for path in files:
        yield from _bounded(path.name, partial(image_frames, path), timeout_s)


def bad_files(files: list[Path], timeout_s: float = DECODE_TIMEOUT_S) -> list[str]:
    """Every file that does not decode (each frame within ``timeout_s``), with why: BadInput.REFUSE's check."""
    return [f"{name} ({pixels})" for name, pixels in _image_dir(files, timeout_s) if isinstance(pixels, str)]


def _video(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Frames as the player shows them: the display matrix's rotation (a phone's portrait video) applied."""
    import av

    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            pixels = frame.to_ndarray(format="rgb24")
            turns = round(frame.rotation / 90) % 4  # counter-clockwise, as PyAV and FFmpeg's display matrix say
            yield f"{path.name}#{index}", np.ascontiguousarray(np.rot90(pixels, turns)) if turns else pixels


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


def open_source(
    spec: str,
    input_shape: tuple[int, ...],
    limit: int | None = None,
    bad_input: BadInput = BadInput.SKIP,
    decode_timeout_s: float = DECODE_TIMEOUT_S,
) -> FrameSource:
    """``synthetic:N``, a directory of images, an image or a video file; ``limit`` caps the frames read."""
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
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FrameSourceError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
        return _images("image directory", spec, files, input_shape, limit, bad_input, decode_timeout_s)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _images("image", spec, [path], input_shape, limit, bad_input, decode_timeout_s)
    known = _check_video(path)
    frames = _bounded(path.name, partial(_video, path), decode_timeout_s)
    frames = frames if limit is None else islice(frames, limit)
    known = min(known, limit) if known is not None and limit is not None else known
    return FrameSource("video", spec, known, frames, input_shape)


def _images(
    kind: str,
    spec: str,
    files: list[Path],
    input_shape: tuple[int, ...],
    limit: int | None,
    bad_input: BadInput,
    timeout_s: float,
) -> FrameSource:
    if bad_input is BadInput.REFUSE:
        bad = bad_files(files, timeout_s)
        if bad:
            raise FrameSourceError(f"{len(bad)} bad image file(s), nothing was run: {'; '.join(bad)}")
    frames = _image_dir(files, timeout_s)
    # a GIF, TIFF or WebP may hold many frames: their count is known only once read
    count = None if any(p.suffix.lower() in _MULTI_FRAME for p in files) else len(files)
    count = min(count, limit) if count is not None and limit is not None else count
    return FrameSource(kind, spec, count, frames if limit is None else islice(frames, limit), input_shape)


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
