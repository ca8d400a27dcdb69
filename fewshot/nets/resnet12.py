"""ResNet-12: the four-stage residual backbone of TADAM (Oreshkin et al. 2018) and MetaOptNet (Lee et al. 2019)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fewshot.nets.conv4 import Norm
from fewshot.nets.norm import BatchNorm2d
from fewshot.registry import register_net

SLOPE = 0.1   # the negative slope of every LeakyReLU


def norm_layer(channels: int, norm: Norm) -> nn.Module:
    """:class:`~fewshot.nets.norm.BatchNorm2d` with per-batch statistics always (no running averages, as in
    :func:`~fewshot.nets.conv4.conv_block`: one task's support or query set in MAML, support and query
    together in ProtoNet), or the identity for ``norm="none"``."""
    return BatchNorm2d(channels) if norm == "batch" else nn.Identity()


class ResidualBlock(nn.Module):
    """Three 3x3 convolutions with normalisation (LeakyReLU after the first two), the third's output added to a
    1x1-convolution shortcut, then LeakyReLU and a 2x2 max-pool.

    Convolutions have a bias only without normalisation (``norm="none"``), where no BatchNorm shift follows.

    Shapes: ``x [B, in_channels, H, W]`` -> ``[B, out_channels, H // 2, W // 2]``.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: Norm):
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)
        self.bn1 = norm_layer(out_channels, norm)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias)
        self.bn2 = norm_layer(out_channels, norm)
        self.conv3 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias)
        self.bn3 = norm_layer(out_channels, norm)
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=bias),
                                      norm_layer(out_channels, norm))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.bn1(self.conv1(x)), SLOPE)
        h = F.leaky_relu(self.bn2(self.conv2(h)), SLOPE)
        h = self.bn3(self.conv3(h))
        return self.pool(F.leaky_relu(h + self.shortcut(x), SLOPE))


class ResNet12(nn.Module):
    """Four residual blocks of widths ``(C, 2C, 4C, 8C)``, the last feature map averaged over space, and an
    optional linear head.

    The feature mapping of TADAM (Oreshkin et al. 2018; ``C = 64``: 64-128-256-512) and MetaOptNet (Lee et
    al. 2019, there with wider stages and DropBlock). Each block (:class:`ResidualBlock`) halves the side with
    a 2x2 max-pool, so inputs need a side of at least 16: 28x28 Omniglot ends at 1x1, 40x40 at 2x2.

    Args:
        in_channels: image channels (1 for Omniglot).
        channels: ``C``, the width of the first block (64 in TADAM).
        out_features: size of the linear head (the ways); ``None`` for an embedding network.
        norm: ``"batch"`` (per-batch statistics, see :func:`norm_layer`) or ``"none"``.

    Shapes: ``x [B, in_channels, H, W]`` -> ``[B, out_features]`` (or ``[B, embedding_dim]`` without a head,
    ``embedding_dim = 8 * channels``).
    """

    def __init__(self, in_channels: int = 1, channels: int = 64, out_features: int | None = None,
                 norm: Norm = "batch"):
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"unknown norm {norm!r}; use 'batch' or 'none'")
        widths = [channels * 2 ** i for i in range(4)]
        self.features = nn.Sequential(
            *(ResidualBlock(in_channels if i == 0 else widths[i - 1], widths[i], norm) for i in range(4)))
        self.embedding_dim = widths[-1]
        self.head = nn.Linear(self.embedding_dim, out_features) if out_features else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, embedding_dim]``."""
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x)
        return self.head(z) if self.head is not None else z


@dataclass
class ResNetOptions:
    """The ``model`` section of a ResNet-12 run: the first block's width and the normalisation."""

    channels: int = 64
    norm: str = "batch"

    def validate(self) -> None:
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")
        if self.norm not in ("batch", "none"):
            raise ValueError(f"unknown norm {self.norm!r}; choose batch or none")


@register_net("resnet12", options=ResNetOptions)
def _build(options: ResNetOptions, input_shape: tuple[int, ...], out_features: int | None) -> ResNet12:
    return ResNet12(in_channels=input_shape[0], channels=options.channels, out_features=out_features,
                    norm=options.norm)
