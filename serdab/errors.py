"""Serdab's one exception tree; the CLI maps every ``SerdabError`` to exit code 2 and one line.

    SerdabError                      anything the user can cause and fix
    ├── ModelError                   the model cannot be used as given
    │   ├── ModelNotFoundError       no zoo model of that name and no such file
    │   ├── NotOnnxError             the file exists but is not a loadable ONNX model
    │   └── InputShapeError          spatial size unknown/inconsistent; pass --input-shape
    ├── CutError                     a requested partition is impossible
    │   ├── CutOutOfRangeError       the block index does not exist
    │   └── NotACleanCutError        more than one tensor would cross the cut
    └── ImageSetError                an image directory is missing, empty or unreadable

Messages say what was wrong and show a valid example, so they can be printed on one line.
"""

from __future__ import annotations

__all__ = [
    "CutError",
    "CutOutOfRangeError",
    "ImageSetError",
    "InputShapeError",
    "ModelError",
    "ModelNotFoundError",
    "NotACleanCutError",
    "NotOnnxError",
    "SerdabError",
]


class SerdabError(Exception):
    """Base of every error a user can cause; carries a one-line message."""


class ModelError(SerdabError):
    """The model cannot be used as given."""


class ModelNotFoundError(ModelError):
    """Neither a zoo name nor an existing file."""


class NotOnnxError(ModelError):
    """The file is not an ONNX model ONNX can load and check."""


class InputShapeError(ModelError):
    """The input shape is dynamic or does not fit the model."""


class CutError(SerdabError):
    """A partition cannot be made where it was asked for."""


class CutOutOfRangeError(CutError):
    """A cut index outside 0..M-2 (cuts go after a block, never after the last)."""


class NotACleanCutError(CutError):
    """More than one tensor would cross the cut."""


class ImageSetError(SerdabError):
    """An image directory cannot supply images."""
