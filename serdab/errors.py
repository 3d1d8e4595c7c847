"""Serdab's one exception tree; the CLI maps every ``SerdabError`` to exit code 2 and one line.

    SerdabError                      anything the user can cause and fix
    ├── ModelError                   the model cannot be used as given
    │   ├── ModelNotFoundError       no zoo model of that name and no such file
    │   ├── NotOnnxError             the file exists but is not a loadable ONNX model
    │   └── InputShapeError          spatial size unknown/inconsistent; pass --input-shape
    ├── CutError                     a requested partition is impossible
    │   ├── CutOutOfRangeError       the block index does not exist
    │   └── NotACleanCutError        more than one tensor would cross the cut
    ├── ImageSetError                an image directory is missing, empty or unreadable
    ├── ClusterError                 a cluster YAML is missing or invalid (names the field)
    ├── PolicyError                  a privacy policy string cannot be parsed or applied
    └── PlanError                    a planning request is malformed (unknown strategy, chunk < 1)
        └── InfeasibleError          no placement satisfies memory limits and the privacy policy

Messages say what was wrong and show a valid example, so they can be printed on one line.
"""

from __future__ import annotations

__all__ = [
    "CutError",
    "ClusterError",
    "CutOutOfRangeError",
    "ImageSetError",
    "InfeasibleError",
    "InputShapeError",
    "ModelError",
    "ModelNotFoundError",
    "NotACleanCutError",
    "NotOnnxError",
    "PlanError",
    "PolicyError",
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


class ClusterError(SerdabError):
    """A cluster description cannot be read or is inconsistent."""


class PolicyError(SerdabError):
    """A privacy policy is unknown, malformed or lacks the leakage data it needs."""


class PlanError(SerdabError):
    """A planning request cannot be served as asked."""


class InfeasibleError(PlanError):
    """No placement fits the devices' memory and the privacy policy; the message says why."""
