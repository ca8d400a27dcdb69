"""Prototypical networks (Snell et al. 2017)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fewshot.learners.base import JointEmbeddingLearner
from fewshot.tasks.episode import Episode


def prototypes(embeddings: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Class means: embeddings ``[n, D]``, labels ``[n]`` in ``0..ways-1`` -> ``[ways, D]``."""
    one_hot = F.one_hot(labels, ways).to(embeddings.dtype)          # [n, ways]
    return (one_hot.T @ embeddings) / one_hot.sum(0).unsqueeze(1)


def squared_euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise ``||a_i - b_j||^2``: ``[n, D]``, ``[m, D]`` -> ``[n, m]``."""
    return (a.unsqueeze(1) - b.unsqueeze(0)).pow(2).sum(-1)


class ProtoNet(JointEmbeddingLearner):
    """Adapt: the class prototypes of the support embeddings. Predict: logits equal to the
    negative squared Euclidean distance of each query embedding to each prototype.

    Support and query are embedded in one forward pass during meta-training (with the
    library's BatchNorm, both then share one set of batch statistics, at training and at
    test time alike: see :meth:`episode_loss`)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        return prototypes(self.encoder(support_x), support_y, int(support_y.max()) + 1)

    def predict(self, adapted: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        return -squared_euclidean(self.encoder(query_x), adapted)

    def episode_logits(self, episode: Episode) -> torch.Tensor:
        n = episode.support_x.shape[0]
        z = self.encoder(torch.cat([episode.support_x, episode.query_x]))
        protos = prototypes(z[:n], episode.support_y, int(episode.support_y.max()) + 1)
        return -squared_euclidean(z[n:], protos)
