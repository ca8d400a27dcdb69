"""Prototypical networks (Snell et al. 2017), with the squared Euclidean distance or a regularised
class-covariance Mahalanobis distance (the FS-Mol ProtoNet, Stanley et al. 2021; Simple CNAPS,
Bateni et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fewshot.learners.base import JointEmbeddingLearner
from fewshot.registry import BuildContext, register_learner


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
    """Prototypical networks: the logits of a query are minus its squared Euclidean distance to each class
    prototype, the mean support embedding of the class.

    Support and query are embedded in one forward pass (with the library's BatchNorm both then share one set
    of batch statistics, in training and scoring alike: :class:`~fewshot.learners.base.JointEmbeddingLearner`).

    Args:
        encoder: ``[B, ...] -> [B, D]``, any ``nn.Module``.
        batchnorm: ``"batch"`` or ``"running"`` (:mod:`fewshot.learners.base`).
    """

    def __init__(self, encoder: nn.Module, *, batchnorm: str = "batch"):
        super().__init__(batchnorm=batchnorm)
        self.encoder = encoder

    def logits(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return -squared_euclidean(query, prototypes(support, labels, int(labels.max()) + 1))


class MahalanobisProtoNet(ProtoNet):
    """ProtoNet with the FS-Mol distance: minus the squared Mahalanobis distance of a query to each class mean
    under the class covariance shrunk towards the support set's (:func:`mahalanobis_logits`)."""

    def logits(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return mahalanobis_logits(support, labels, query, int(labels.max()) + 1)


@dataclass
class ProtoNetOptions:
    """The ``learner`` section of ProtoNet runs."""

    distance: str = "euclidean"   # euclidean | mahalanobis (MahalanobisProtoNet)

    def validate(self) -> None:
        if self.distance not in ("euclidean", "mahalanobis"):
            raise ValueError(f"unknown protonet distance {self.distance!r}; use euclidean or mahalanobis")


@register_learner("protonet", options=ProtoNetOptions)
def _build(options: ProtoNetOptions, context: BuildContext) -> ProtoNet:
    return (MahalanobisProtoNet if options.distance == "mahalanobis" else ProtoNet)(context.net())
