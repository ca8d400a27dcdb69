"""Multi-layer perceptrons (the 1-40-40-1 regressor of MAML's sinusoid experiment)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

from torch import nn

from fewshot.registry import NoOptions, register_net


class MLP(nn.Sequential):
    """Linear layers with ReLU between them: ``[B, in_features] -> [B, out_features]``.

    The last ``Linear`` is named ``head`` so that head-only learners (ANIL) find it.
    """

    def __init__(self, in_features: int = 1, hidden: Sequence[int] = (40, 40), out_features: int = 1):
        layers: list[tuple[str, nn.Module]] = []
        width = in_features
        for i, h in enumerate(hidden):
            layers += [(f"linear{i}", nn.Linear(width, h)), (f"relu{i}", nn.ReLU())]
            width = h
        layers.append(("head", nn.Linear(width, out_features)))
        super().__init__(OrderedDict(layers))
        self.embedding_dim = width


@register_net("mlp")
def _build(options: NoOptions, input_shape: tuple[int, ...], out_features: int | None) -> MLP:
    """MAML's sinusoid regressor: ``in -> 40 -> 40 -> out_features`` (1 when not given)."""
    return MLP(input_shape[0], (40, 40), out_features or 1)
