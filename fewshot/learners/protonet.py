"""Prototypical networks (Snell et al. 2017), with the squared Euclidean distance or a regularised
class-covariance Mahalanobis distance (the FS-Mol ProtoNet, Stanley et al. 2021; Simple CNAPS,
Bateni et al. 2020)."""

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


def covariance(x: torch.Tensor) -> torch.Tensor:
    """Maximum-likelihood covariance of the rows of ``x`` ``[n, D]`` -> ``[D, D]`` (zero for one row)."""
    centred = x - x.mean(0, keepdim=True)
    return centred.T @ centred / x.shape[0]


def mahalanobis_logits(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, ways: int,
                       class_weight: float = 0.1, ridge: float = 0.1) -> torch.Tensor:
    """Minus the squared Mahalanobis distance of each query to each class mean: ``[n, D]``, ``[n]``,
    ``[Q, D]`` -> ``[Q, ways]``.

    Class ``c``'s covariance is shrunk towards the support set's: ``S_c = w S_class + (1 - w) S_support
    + ridge I`` with ``w = min(n_c / (n_c + 1), class_weight)``, so it stays invertible however few
    examples a class has; distances are solved through its Cholesky factor.
    """
    means = prototypes(support, labels, ways)
    eye = torch.eye(support.shape[1], dtype=support.dtype, device=support.device)
    pooled = covariance(support)
    logits = []
    for c in range(ways):
        members = support[labels == c]
        w = min(members.shape[0] / (members.shape[0] + 1), class_weight)
        factor = torch.linalg.cholesky(w * covariance(members) + (1 - w) * pooled + ridge * eye)
        diff = (query - means[c]).T                                           # [D, Q]
        logits.append(-torch.linalg.solve_triangular(factor, diff, upper=False).pow(2).sum(0))
    return torch.stack(logits, dim=1)


class ProtoNet(JointEmbeddingLearner):
    """Adapt: the class prototypes of the support embeddings. Predict: logits equal to the
    negative squared Euclidean distance of each query embedding to each prototype.

    Support and query are embedded in one forward pass during meta-training (with the
    library's BatchNorm, both then share one set of batch statistics, at training and at
    test time alike: see :meth:`episode_loss`)."""

    def __init__(self, encoder: nn.Module, distance: str = "euclidean"):
        super().__init__()
        if distance not in ("euclidean", "mahalanobis"):
            raise ValueError(f"unknown ProtoNet distance {distance!r}; use euclidean or mahalanobis")
        self.encoder, self.distance = encoder, distance

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None):
        """Euclidean: the prototypes ``[ways, D]``; Mahalanobis: the support embeddings and labels."""
        z = self.encoder(support_x)
        if self.distance == "mahalanobis":
            return z, support_y
        return prototypes(z, support_y, int(support_y.max()) + 1)

    def predict(self, adapted, query_x: torch.Tensor) -> torch.Tensor:
        return self._logits(adapted, self.encoder(query_x))

    def episode_logits(self, episode: Episode) -> torch.Tensor:
        n = episode.support_x.shape[0]
        z = self.encoder(torch.cat([episode.support_x, episode.query_x]))
        if self.distance == "mahalanobis":
            return self._logits((z[:n], episode.support_y), z[n:])
        return self._logits(prototypes(z[:n], episode.support_y, int(episode.support_y.max()) + 1), z[n:])

    def _logits(self, adapted, query: torch.Tensor) -> torch.Tensor:
        if self.distance == "mahalanobis":
            support, labels = adapted
            return mahalanobis_logits(support, labels, query, int(labels.max()) + 1)
        return -squared_euclidean(query, adapted)
