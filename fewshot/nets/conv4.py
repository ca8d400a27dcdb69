"""Conv-4: the four-block convolutional backbone of few-shot image classification."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fewshot.nets.norm import BatchNorm2d
from fewshot.registry import register_net

Variant = Literal["pool", "strided"]
Norm = Literal["batch", "none"]
Pooling = Literal["mean", "flatten"]


def conv_block(in_channels: int, out_channels: int, variant: Variant, norm: Norm) -> nn.Sequential:
    """3x3 convolution (stride 2 for ``strided``), normalisation, 2x2 max-pool (``pool``), ReLU."""
    stride = 2 if variant == "strided" else 1
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)]
    if norm == "batch":
        # Per-batch statistics always (no running averages): each forward pass normalises with
        # the statistics of the batch it is given - one task's support or query set in
        # MAML (the paper's transductive setting), support and query together in ProtoNet;
        # exact under vmap too (fewshot.nets.norm).
        layers.append(BatchNorm2d(out_channels))
    if variant == "pool":
        # Max-pool before ReLU: the same function and gradient (ReLU is monotone, so it commutes
        # with max), with the ReLU and its backward on a quarter of the elements.
        layers.append(nn.MaxPool2d(2))
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def output_side(image_size: int, variant: Variant) -> int:
    """Side of the last feature map for ``image_size`` inputs: halved (rounded down by a 2x2 max-pool, up by a
    padded stride-2 convolution) by each of the four blocks."""
    side = image_size
    for _ in range(4):
        side = side // 2 if variant == "pool" else (side + 1) // 2
    return side


class Conv4(nn.Module):
    """Four conv blocks of ``hidden`` filters, then the last feature map as a vector, and an optional linear head.

    ``variant="pool"`` is the max-pool network of Prototypical Networks (Snell et al. 2017);
    ``variant="strided"`` the stride-2 network of MAML on Omniglot (Finn et al. 2017). With
    28x28 inputs the pool variant ends at 1x1 and the strided one at 2x2.

    ``pooling="mean"`` averages the last map over space (a ``hidden``-dim feature); ``pooling="flatten"``
    keeps its layout (``hidden * s * s`` with ``s = output_side(image_size, variant)``), as Snell et al. do on
    larger images: at 56x56 the pool variant ends at 3x3, whose average would discard where the strokes are.

    Args:
        in_channels: image channels (1 for Omniglot).
        hidden: filters per block (64 in both papers).
        out_features: size of the linear head (the ways); ``None`` for an embedding network.
        variant: ``"pool"`` or ``"strided"``.
        norm: ``"batch"`` (per-batch statistics, see :func:`conv_block`) or ``"none"``.
        pooling: ``"mean"`` or ``"flatten"``.
        image_size: the input side, which sets the flattened width (``pooling="flatten"`` only).

    Shapes: ``x [B, C, H, W]`` -> ``[B, out_features]`` (or ``[B, embedding_dim]`` without a head).
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64, out_features: int | None = None,
                 variant: Variant = "pool", norm: Norm = "batch", pooling: Pooling = "mean", image_size: int = 28):
        super().__init__()
        if variant not in ("pool", "strided"):
            raise ValueError(f"unknown Conv4 variant {variant!r}; use 'pool' or 'strided'")
        if norm not in ("batch", "none"):
            raise ValueError(f"unknown norm {norm!r}; use 'batch' or 'none'")
        if pooling not in ("mean", "flatten"):
            raise ValueError(f"unknown pooling {pooling!r}; use 'mean' or 'flatten'")
        self.features = nn.Sequential(
            *(conv_block(in_channels if i == 0 else hidden, hidden, variant, norm) for i in range(4)))
        self.pooling = pooling
        self.embedding_dim = hidden * (output_side(image_size, variant) ** 2 if pooling == "flatten" else 1)
        self.head = nn.Linear(self.embedding_dim, out_features) if out_features else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, embedding_dim]``."""
        maps = self.features(x)
        return maps.flatten(1) if self.pooling == "flatten" else maps.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x)
        return self.head(z) if self.head is not None else z


@dataclass
class ConvOptions:
    """The ``model`` section of a Conv-4 run: filters per block, normalisation, how the last map becomes a vector."""

    channels: int = 64
    norm: str = "batch"
    pooling: str = "mean"

    def validate(self) -> None:
        if self.pooling not in ("mean", "flatten"):
            raise ValueError(f"unknown pooling {self.pooling!r}; choose mean or flatten")
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")
        if self.norm not in ("batch", "none"):
            raise ValueError(f"unknown norm {self.norm!r}; choose batch or none")


def _register(variant: Variant) -> None:
    @register_net(f"conv4-{variant}", options=ConvOptions)
    def build(options: ConvOptions, input_shape: tuple[int, ...], out_features: int | None) -> Conv4:
        return Conv4(in_channels=input_shape[0], hidden=options.channels, out_features=out_features, variant=variant,
                     norm=options.norm, pooling=options.pooling, image_size=input_shape[-1])


_register("pool")
_register("strided")
