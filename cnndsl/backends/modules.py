"""The few torch modules cnndsl needs beyond `torch.nn` (layer `build`s receive this module).

Each holds its parameters as the torchvision module it stands for does, so that a
torchvision state_dict maps onto a compiled network tensor for tensor.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class FlattenLinear(nn.Linear):
    """FC: flattens its input (C×H×W → C·H·W), then a Linear.

    A subclass rather than Sequential(Flatten, Linear) so that its parameters are
    named `fc6.weight` and `fc6.bias`, as in torchvision's models."""

    def forward(self, x):
        return super().forward(x.flatten(1))


class LayerNorm2d(nn.LayerNorm):
    """LN on a volume: each position's C values normalised, `weight` and `bias` of shape (C,).

    torchvision's convnext.LayerNorm2d: channels moved last, nn.LayerNorm(C), moved back."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class LayerScale(nn.Module):
    """SCALE: a learnable factor per channel, `weight` of shape (C, 1, 1) on a volume and
    (C,) on a vector (ConvNeXt's `layer_scale`), starting at `init`."""

    def __init__(self, channels: int, init: float, rank: int):
        super().__init__()
        shape = (channels,) + (1,) * (rank - 1)  # broadcasts over height and width
        self.weight = nn.Parameter(torch.full(shape, float(init)))

    def forward(self, x):
        return self.weight * x


class ChannelSplit(nn.Module):
    """SPLIT(part, of): the `part`-th (from 1) of `of` equal groups of channels, a view.

    ShuffleNet v2's `x1, x2 = x.chunk(2, dim=1)`: SPLIT(1, 2) is x1, SPLIT(2, 2) is x2."""

    def __init__(self, part: int, of: int):
        super().__init__()
        self.part, self.of = part, of

    def forward(self, x):
        return x.chunk(self.of, dim=1)[self.part - 1]

    def extra_repr(self) -> str:
        return f"part={self.part}, of={self.of}"


class ChannelShuffle(nn.Module):
    """SHUFFLE(g): torchvision's shufflenetv2.channel_shuffle. The channels, read as a
    g × C/g grid, are transposed, so channel i·C/g + j moves to j·g + i."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        return x.unflatten(1, (self.groups, -1)).transpose(1, 2).flatten(1, 2)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class DropPath(nn.Module):
    """DROPPATH(p): stochastic depth, as torchvision.ops.StochasticDepth(p, "row").

    In training each sample is zeroed whole with probability p and the others are scaled
    by 1/(1 - p); in eval it is the identity. The random draws are torchvision's, in the
    same order, so under the same seed the two give the same tensor."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)
        keep.bernoulli_(survival)
        if survival > 0.0:
            keep.div_(survival)
        return x * keep

    def extra_repr(self) -> str:
        return f"p={self.p}"
