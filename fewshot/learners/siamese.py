"""Siamese networks: a shared encoder and a distance between two inputs.

Two forms:

* ``distance="euclidean"``, ``loss="contrastive"`` (Hadsell, Chopra & LeCun 2006): the
  Euclidean distance between embeddings, trained with :func:`contrastive_loss`;
* ``distance="l1-weighted"``, ``loss="bce"`` (Koch, Zemel & Salakhutdinov 2015): the
  verification head ``p(same) = sigmoid(w . |z1 - z2| + b)`` trained with binary
  cross-entropy. Its "distance" is the negative logit ``-(w . |z1 - z2| + b)``, so
  ``p(same) = sigmoid(-distance)``, and smaller means more alike as for the Euclidean one.

N-way classification is by the nearest support example: the logit of class ``c`` is
minus the distance to the closest support example of class ``c``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from fewshot.learners.base import JointEmbeddingLearner, embedding_width, task_metric
from fewshot.registry import BuildContext, register_learner
from fewshot.tasks.episode import Episode

Distance = Literal["euclidean", "l1-weighted"]
PairLoss = Literal["contrastive", "bce"]
LOSS_OF = {"euclidean": "contrastive", "l1-weighted": "bce"}


def contrastive_loss(d: torch.Tensor, same: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Per-pair contrastive loss ``L = s * D^2 + (1 - s) * max(0, m - D)^2``: ``[B]``, ``[B]`` -> ``[B]``.

    Label convention: ``s = 1`` (or ``True``) marks a **same-class** pair, pulled together
    (``L = D^2``); ``s = 0`` a different-class pair, pushed apart until its distance
    reaches the margin (``L = (m - D)^2`` inside it, 0 beyond). Hadsell et al. (2006,
    eq. 4) write it with ``Y = 1 - s`` (``Y = 0`` for similar pairs) and a factor 1/2; a
    widely read write-up of this loss reverses the labels, which would push same-class
    pairs apart. Check the convention before comparing numbers.

    Args:
        d: distances ``D >= 0``.
        same: 1/True for same-class pairs, 0/False otherwise.
        margin: ``m > 0``.
    """
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    s = same.to(d.dtype)
    return s * d.pow(2) + (1 - s) * (margin - d).clamp_min(0).pow(2)


def nearest_support_logits(distances: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Minus the distance to the nearest support example of each class: ``[Q, S]``, ``[S]`` -> ``[Q, ways]``."""
    other_class = F.one_hot(labels, ways).T == 0                                  # [ways, S]
    return -distances.unsqueeze(1).masked_fill(other_class, float("inf")).amin(dim=-1)


def balanced_mean(values: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """``(mean over same-class pairs + mean over different-class pairs) / 2`` of ``values [P]``."""
    if bool(same.all()) or not bool(same.any()):
        raise ValueError("balanced_mean needs at least one same-class and one different-class pair")
    return 0.5 * (values[same].mean() + values[~same].mean())


class SiameseNet(JointEmbeddingLearner):
    """A Siamese network as a learner: verification (:meth:`distance`, :meth:`same`), pair
    training (:meth:`pair_loss`) and N-way classification by the nearest support example
    (:meth:`predict` embeds support and query in one forward and returns ``[Q, N]``).

    Training in the episode protocol (:meth:`episode_loss`, so the common loop trains it):
    the ``n = N*(K+Q)`` support and query examples of an episode are embedded in one
    forward pass and every unordered pair ``i < j`` is formed; the pair loss is balanced
    by weighting, the mean over same-class pairs and the mean over different-class pairs
    counting one half each (an episode has far more different-class pairs). The reported
    accuracy is the N-way nearest-support accuracy of the query set on the same embeddings.

    Args:
        encoder: ``[B, ...] -> [B, D]``.
        distance: ``"euclidean"`` or ``"l1-weighted"`` (Koch's verification head).
        loss: ``"contrastive"`` (needs ``"euclidean"``) or ``"bce"`` (needs ``"l1-weighted"``);
            ``None`` picks the one that goes with ``distance``.
        margin: the contrastive margin ``m``.
        feature_dim: ``D`` for the l1-weighted head when the encoder has no ``embedding_dim``.
    """

    def __init__(self, encoder: nn.Module, distance: Distance = "euclidean", loss: PairLoss | None = None,
                 margin: float = 1.0, *, feature_dim: int | None = None, batchnorm: str = "batch"):
        super().__init__(batchnorm=batchnorm)
        if distance not in LOSS_OF:
            raise ValueError(f"unknown distance {distance!r}; use 'euclidean' or 'l1-weighted'")
        loss = LOSS_OF[distance] if loss is None else loss
        if loss not in ("contrastive", "bce"):
            raise ValueError(f"unknown loss {loss!r}; use 'contrastive' or 'bce'")
        if loss != LOSS_OF[distance]:
            raise ValueError(f"loss={loss!r} does not go with distance={distance!r}: the contrastive loss needs "
                             "the Euclidean distance, BCE needs the probability of the l1-weighted head")
        if not margin > 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        self.encoder, self.distance_kind, self.loss_kind, self.margin = encoder, distance, loss, margin
        self.head = nn.Linear(embedding_width(encoder, feature_dim), 1) if distance == "l1-weighted" else None

    # -- distances -------------------------------------------------------------------------
    def _distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distance between embeddings ``[..., D]`` (broadcast) -> ``[...]``."""
        if self.head is None:
            # clamped so that the gradient of the square root stays finite at D = 0
            return (a - b).pow(2).sum(-1).clamp_min(1e-12).sqrt()
        return -self.head((a - b).abs()).squeeze(-1)

    def distance(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Distance of each pair ``x1[i], x2[i]``: ``[B, ...]``, ``[B, ...]`` -> ``[B]`` (small: alike)."""
        if x1.shape != x2.shape:
            raise ValueError(f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and {tuple(x2.shape)}")
        z = self.encoder(torch.cat([x1, x2]))          # one forward: one set of batch statistics
        return self._distance(z[: x1.shape[0]], z[x1.shape[0]:])

    def same(self, x1: torch.Tensor, x2: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
        """``distance(x1, x2) < threshold``, ``[B]`` bool. The default threshold is ``margin / 2``
        (Euclidean) or 0, i.e. ``p(same) > 1/2`` (l1-weighted)."""
        if threshold is None:
            threshold = self.margin / 2 if self.head is None else 0.0
        return self.distance(x1, x2) < threshold

    # -- losses ----------------------------------------------------------------------------
    def _pair_losses(self, d: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
        if self.loss_kind == "contrastive":
            return contrastive_loss(d, same, self.margin)
        return F.binary_cross_entropy_with_logits(-d, same.to(d.dtype), reduction="none")

    def pair_loss(self, x1: torch.Tensor, x2: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
        """Mean loss of a batch of pairs (e.g. from :class:`~fewshot.tasks.pairs.PairSampler`);
        ``same [B]`` is True for same-class pairs."""
        return self._pair_losses(self.distance(x1, x2), same).mean()

    # -- the protocol ----------------------------------------------------------------------
    def logits(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Nearest-support logits ``[Q, N]``: minus the distance to the closest support example of each class."""
        d = self._distance(query.unsqueeze(1), support.unsqueeze(0))       # [Q, S]
        return nearest_support_logits(d, labels, int(labels.max()) + 1)

    def episode_loss(self, episode: Episode) -> tuple[torch.Tensor, dict[str, float]]:
        """The balanced pair loss over all pairs of the episode's examples (see the class docstring)."""
        n = episode.support_x.shape[0]
        z = self.embed(torch.cat([episode.support_x, episode.query_x]))
        y = torch.cat([episode.support_y, episode.query_y])
        i, j = torch.triu_indices(len(y), len(y), offset=1, device=y.device)         # pairs i < j
        same = y[i] == y[j]
        loss = balanced_mean(self._pair_losses(self._distance(z[i], z[j]), same), same)
        with torch.no_grad():
            logits = self.logits(z[:n], episode.support_y, z[n:])
        return loss, {"loss": float(loss.detach()), "accuracy": task_metric(logits, episode.query_y, self.task)}


@dataclass
class SiameseOptions:
    """The ``learner`` section of Siamese runs."""

    distance: str = "euclidean"   # euclidean (contrastive loss) | l1-weighted (Koch's head, BCE)
    margin: float = 1.0           # the contrastive margin

    def validate(self) -> None:
        if self.distance not in LOSS_OF:
            raise ValueError(f"unknown siamese distance {self.distance!r}; use euclidean or l1-weighted")
        if not math.isfinite(self.margin):
            raise ValueError(f"margin must be a finite number, got {self.margin}")
        if not self.margin > 0:
            raise ValueError(f"margin must be > 0, got {self.margin}")


@register_learner("siamese", options=SiameseOptions)
def _build(options: SiameseOptions, context: BuildContext) -> SiameseNet:
    return SiameseNet(context.net(), options.distance, margin=options.margin)
