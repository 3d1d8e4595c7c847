"""The results file of a run (JSON Lines, one line per frame) and resuming from one.

A run writes and flushes each line as its frame is answered, so a run stopped by Ctrl-C, SIGTERM,
a crash or a spent fault budget leaves every answer it got. ``--resume FILE`` reads such a file
back: the frames it answers are skipped, after checking that they are this model's answers to
this input (each line names its model and its frame's source), and the rest is appended. A last
line cut off by a crash is dropped first. When the run ends, ``sort_by_frame`` puts the lines in
frame order, so a resumed run's file reads as an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from serdab.errors import ConfigError
from serdab.runtime.frames import Frame

__all__ = ["Answered", "read_answered", "sort_by_frame"]


@dataclass(frozen=True)
class Answered:
    path: Path
    sources: dict[int, str]  # frame id -> the source name the line gives

    @property
    def frames(self) -> frozenset[int]:
        return frozenset(self.sources)

    def skip(self, frames: Iterable[Frame]) -> Iterator[Frame]:
        """The frames still to answer; refuses (ConfigError) a frame this file answers for another source,
        which is another input (checked as frames go by: answered frames usually come first)."""
        for frame in frames:
            name = self.sources.get(frame.id)
            if name is None:
                yield frame
            elif name != frame.name:
                raise ConfigError(
                    f"{self.path} answers frame {frame.id} for {name!r}, but this input's frame {frame.id} is "
                    f"{frame.name!r}: resume with the input the file was made from"
                )


def read_answered(path: Path, model: str) -> Answered:
    """The frames ``path`` answers for ``model``; a last line cut off mid-write is removed from the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Answered(path, {})
    except OSError as exc:
        raise ConfigError(f"cannot read {path} to resume: {exc.strerror}") from None
    keep = data.rfind(b"\n") + 1
    if keep < len(data):  # a crash mid-line: that frame was not (fully) written, so it is not answered
        with path.open("r+b") as f:
            f.truncate(keep)
    sources: dict[int, str] = {}
    for number, raw in enumerate(data[:keep].splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            frame, source, its_model = int(line["frame"]), str(line["source"]), line.get("model")
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                f"{path} line {number} is not a result line of `serdab run`: cannot resume from it"
            ) from None
        if its_model != model:
            raise ConfigError(f"{path} holds results of {its_model!r}, not {model!r}: cannot resume from it")
        if frame in sources:
            raise ConfigError(f"{path} answers frame {frame} twice (lines for the same frame): cannot resume from it")
        sources[frame] = source
    return Answered(path, sources)


def sort_by_frame(path: Path) -> None:
    """Rewrite ``path`` with its lines in frame order (atomically: a crash leaves the old or the new)."""
    lines = [raw for raw in path.read_bytes().splitlines() if raw.strip()]
    lines.sort(key=lambda raw: int(json.loads(raw)["frame"]))
    tmp = path.with_name(path.name + ".sorting")
    tmp.write_bytes(b"".join(raw + b"\n" for raw in lines))
    os.replace(tmp, path)
