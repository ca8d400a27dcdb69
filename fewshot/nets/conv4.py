"""Conv-4: the four-block convolutional backbone of few-shot image classification."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Variant = Literal["pool", "strided"]
Norm = Literal["batch", "none"]


def conv_block(in_channels: int, out_channels: int, variant: Variant, norm: Norm) -> nn.Sequential:
    """3x3 convolution (stride 2 for ``strided``), normalisation, 2x2 max-pool (``pool``), ReLU."""
    stride = 2 if variant == "strided" else 1
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)]
    if norm == "batch":
        # Per-batch statistics always (no running averages): each forward pass normalises with
        # the statistics of the batch it is given - one task's support or query set in
        # MAML (the paper's transductive setting), support and query together in ProtoNet.
        layers.append(nn.BatchNorm2d(out_channels, track_running_stats=False))
    if variant == "pool":
        # Max-pool before ReLU: the same function and gradient (ReLU is monotone, so it commutes
        # with max), with the ReLU and its backward on a quarter of the elements.
        layers.append(nn.MaxPool2d(2))
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """Four conv blocks of ``hidden`` filters, spatially averaged, and an optional linear head.

    ``variant="pool"`` is the max-pool network of Prototypical Networks (Snell et al. 2017);
    ``variant="strided"`` the stride-2 network of MAML on Omniglot (Finn et al. 2017). With
    28x28 inputs the pool variant ends at 1x1 and the strided one at 2x2; both are averaged
    to a ``hidden``-dim feature.

    Args:
        in_channels: image channels (1 for Omniglot).
        hidden: filters per block (64 in both papers).
        out_features: size of the linear head (the ways); ``None`` for an embedding network.
        variant: ``"pool"`` or ``"strided"``.
        norm: ``"batch"`` (per-batch statistics, see :func:`conv_block`) or ``"none"``.

    Shapes: ``x [B, C, H, W]`` -> ``[B, out_features]`` (or ``[B, hidden]`` without a head).
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64, out_features: int | None = None,
                 variant: Variant = "pool", norm: Norm = "batch"):
        super().__init__()
        if variant not in ("pool", "strided"):
            raise ValueError(f"unknown Conv4 variant {variant!r}; use 'pool' or 'strided'")
        if norm not in ("batch", "none"):
            raise ValueError(f"unknown norm {norm!r}; use 'batch' or 'none'")
        self.features = nn.Sequential(
            *(conv_block(in_channels if i == 0 else hidden, hidden, variant, norm) for i in range(4)))
        self.head = nn.Linear(hidden, out_features) if out_features else None
        self.embedding_dim = hidden

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, hidden]``."""
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x)
        return self.head(z) if self.head is not None else z
