"""HE-friendly CNNs (seed 004 sec. III-B): only additions and multiplications survive encryption.

ReLU becomes x^2 (``Square``) and max pooling becomes average pooling (its 1/k^2 can later be
folded into the next layer's weights); the model must then be trained again.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["Square", "approximate"]


class Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


def approximate(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with ReLU -> Square and MaxPool2d -> AvgPool2d (same kernel and stride)."""
    result = copy.deepcopy(model)

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, name, Square())
            elif isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding))
            else:
                swap(child)

    swap(result)
    return result
