"""Relation networks (Sung et al. 2018): a learned relation module scores query/class pairs.

The embedding keeps spatial feature maps. A class's feature is the sum of its support
maps (over the K shots); it is concatenated with each query's map along the channels
and the relation module maps the pair to a relation score in ``[0, 1]``, trained by
regression onto the one-hot match (MSE), the paper's choice.

The Omniglot networks of the paper, as built by :func:`relation_encoder` and
:class:`RelationModule`:

* embedding module: four blocks of 3x3 convolution (64 filters), BatchNorm and ReLU;
  the first two end with 2x2 max-pooling, the last two do not. Every convolution is
  padded (as in the library's Conv-4), so a 28x28 image gives ``64x7x7`` maps (the
  authors' code leaves the first two convolutions unpadded and gets ``64x5x5``);
* relation module: two such blocks (64 filters, both pooled: 7x7 -> 3x3 -> 1x1) on
  the ``128``-channel pair, then fully connected layers of 8 units (ReLU) and 1 unit;
  :class:`RelationNet` applies the sigmoid.

BatchNorm uses per-batch statistics, as everywhere in the library: the embedding
module sees support and query together, the relation module all ``Q*N`` pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fewshot.learners.base import JointEmbeddingLearner, task_metric
from fewshot.nets.conv4 import Norm
from fewshot.nets.norm import BatchNorm2d
from fewshot.registry import BuildContext, NoOptions, register_learner, register_net
from fewshot.tasks.episode import Episode


def relation_block(in_channels: int, out_channels: int, pool: bool, norm: Norm = "batch") -> nn.Sequential:
    """Padded 3x3 convolution, normalisation (``"batch"``: per-batch statistics, or ``"none"``), ReLU,
    then 2x2 max-pooling if ``pool``."""
    if norm not in ("batch", "none"):
        raise ValueError(f"unknown norm {norm!r}; use 'batch' or 'none'")
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1)]
    if norm == "batch":
        layers.append(BatchNorm2d(out_channels))
    layers.append(nn.ReLU())
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def relation_encoder(in_channels: int = 1, hidden: int = 64, norm: Norm = "batch") -> nn.Sequential:
    """The embedding module: ``[B, in_channels, H, W] -> [B, hidden, H//4, W//4]`` (28x28 -> 7x7)."""
    return nn.Sequential(*(relation_block(in_channels if i == 0 else hidden, hidden, pool=i < 2, norm=norm)
                           for i in range(4)))


class RelationModule(nn.Module):
    """Two pooled conv blocks and two linear layers: ``[P, 2*channels, s, s] -> [P, 1]`` unnormalised
    relation scores (:class:`RelationNet` applies the sigmoid).

    Args:
        channels: channels of one embedding map (the pair has twice as many).
        spatial: side ``s`` of the embedding maps (``image_size // 4``: 7 for 28x28 Omniglot).
        hidden: units of the first linear layer (8 in the paper).
        norm: ``"batch"`` or ``"none"``.
    """

    def __init__(self, channels: int = 64, spatial: int = 7, hidden: int = 8, norm: Norm = "batch"):
        super().__init__()
        side = spatial // 2 // 2
        if side < 1:
            raise ValueError(f"spatial={spatial} is too small for the relation module's two 2x2 poolings; "
                             "it needs maps of at least 4x4 (images of at least 16x16)")
        self.blocks = nn.Sequential(relation_block(2 * channels, channels, pool=True, norm=norm),
                                    relation_block(channels, channels, pool=True, norm=norm))
        self.fc = nn.Sequential(nn.Linear(channels * side * side, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(pairs).flatten(1))


def class_features(features: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Sum of the support features of each class: ``[S, *F]``, ``[S]`` -> ``[ways, *F]``."""
    one_hot = F.one_hot(labels, ways).to(features.dtype)                # [S, ways]
    return (one_hot.T @ features.flatten(1)).view(ways, *features.shape[1:])


class RelationNet(JointEmbeddingLearner):
    """Adapt: the summed support feature maps of each class, ``[N, C, h, w]``. Predict: the
    relation score of every (query, class) pair, ``[Q, N]`` in ``[0, 1]``.

    The relation scores are the logits: the argmax is the prediction, and
    :meth:`episode_loss` trains them with MSE against one-hot targets (the paper's loss)
    while reporting accuracy. Support and query are embedded in one forward pass.

    Args:
        encoder_feature_map: ``[B, ...] -> [B, C, h, w]`` (:func:`relation_encoder`); any
            ``[B, C, ...]`` features work with a matching relation module.
        relation_module: ``[P, 2C, h, w] -> [P, 1]`` unnormalised scores (:class:`RelationModule`);
            a pair is the class feature followed by the query feature along dim 1.
    """

    def __init__(self, encoder_feature_map: nn.Module, relation_module: nn.Module, *, batchnorm: str = "batch"):
        super().__init__(batchnorm=batchnorm)
        self.encoder = encoder_feature_map
        self.relation = relation_module

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps ``[B, C, h, w]`` (not vectors: the relation module compares maps)."""
        return self.encoder(x)

    def logits(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return self._relations(class_features(support, labels, int(labels.max()) + 1), query)

    def _relations(self, classes: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """``classes [N, C, ...]``, ``queries [Q, C, ...]`` -> sigmoid scores ``[Q, N]``."""
        n, q = classes.shape[0], queries.shape[0]
        pairs = torch.cat([classes.unsqueeze(0).expand(q, *classes.shape),
                           queries.unsqueeze(1).expand(q, n, *queries.shape[1:])], dim=2)   # [Q, N, 2C, ...]
        return torch.sigmoid(self.relation(pairs.flatten(0, 1))).view(q, n)

    def episode_loss(self, episode: Episode) -> tuple[torch.Tensor, dict[str, float]]:
        """MSE of the relation scores against one-hot targets; the metric is accuracy."""
        scores = self.episode_logits(episode)
        loss = F.mse_loss(scores, F.one_hot(episode.query_y, scores.shape[1]).to(scores.dtype))
        return loss, {"loss": float(loss.detach()), "accuracy": task_metric(scores, episode.query_y, self.task)}


@dataclass
class RelationEncoderOptions:
    """The ``model`` section of a relation network: the normalisation of its encoder and relation module."""

    norm: str = "batch"

    def validate(self) -> None:
        if self.norm not in ("batch", "none"):
            raise ValueError(f"unknown norm {self.norm!r}; choose batch or none")


@register_net("relation-conv", options=RelationEncoderOptions)
def _build_encoder(options: RelationEncoderOptions, input_shape: tuple[int, ...], out_features: int | None):
    """The paper's encoder, four conv blocks with two poolings: 64 x 7 x 7 maps on 28x28 images."""
    return relation_encoder(in_channels=input_shape[0], norm=options.norm)


@register_learner("relation", nets=("relation-conv",))
def _build(options: NoOptions, context: BuildContext) -> RelationNet:
    return RelationNet(context.net(), RelationModule(spatial=context.input_shape[-1] // 4,
                                                     norm=context.net_options.norm))
