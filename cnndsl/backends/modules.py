"""The few torch modules cnndsl needs beyond `torch.nn` (layer `build`s receive this module)."""
from __future__ import annotations

from torch import nn


class FlattenLinear(nn.Linear):
    """FC: flattens its input (C×H×W → C·H·W), then a Linear.

    A subclass rather than Sequential(Flatten, Linear) so that its parameters are
    named `fc6.weight` and `fc6.bias`, as in torchvision's models."""

    def forward(self, x):
        return super().forward(x.flatten(1))
