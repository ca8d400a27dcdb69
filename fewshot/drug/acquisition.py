"""Acquisition functions of active selection, and where their uncertainty comes from.

A model's belief about the candidates is a :class:`Moments`: for each candidate molecule the expected activity
``mean`` (the probability of being active) and its uncertainty ``std``. The acquisitions score candidates from it:

- ``greedy``: the expected activity, ``mean``;
- ``ucb``: the upper confidence bound ``mean + beta * std`` (Srinivas et al. 2010);
- ``ei``: the expected improvement ``E[max(f - best, 0)]`` of ``f ~ N(mean, std^2)`` over the incumbent ``best``,
  ``(mean - best) Phi(z) + std phi(z)`` with ``z = (mean - best) / std`` (Jones et al. 1998), ``max(mean - best, 0)``
  where ``std = 0``. Labels are binary, so the incumbent is the best *predicted* activity among the molecules
  measured so far (the plug-in incumbent of noisy expected improvement), not the best label (which is 1 as soon
  as one active is known, and which no probability can improve on);
- ``random``: uniform scores from a seeded generator.

The uncertainty (:func:`learner_moments`):

- a random forest (:class:`~fewshot.learners.forest.RandomForest`): the mean and standard deviation over its trees
  of their class-1 probabilities (the forest's own prediction is that mean);
- an :class:`~fewshot.learners.ensemble.Ensemble` of runs: the ensemble's prediction and the standard deviation of
  its members' probabilities;
- a learner with a posterior over its outputs' latents (``latent(adapted, query_x) -> (mean, std)``, each
  ``[Q, classes]``: Deep Kernel Transfer's Gaussian-process posterior, :meth:`fewshot.learners.dkt.DKT.latent`):
  the active class's latent mean and standard deviation, so that the acquisitions work on that scale (the
  incumbent of expected improvement too);
- any other learner, e.g. a meta-trained ProtoNet, which is deterministic: the learner's prediction from the whole
  support set, with the standard deviation of its predictions from ``resamples`` bootstrap resamples of the
  support set (each class resampled with replacement within itself, so both classes stay), each adapted to
  through the learner (the bootstrap of Efron 1979 as a stand-in for a posterior over support sets). A
  joint-embedding learner whose encoder has no batch normalisation (ProtoNet over the fingerprint MLP) embeds
  each molecule on its own, so its molecules are embedded once and every resample reuses the embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fewshot.learners.base import JointEmbeddingLearner, Learner
from fewshot.learners.ensemble import Ensemble
from fewshot.learners.forest import RandomForest

ACQUISITIONS = ("greedy", "ucb", "ei", "random")


@dataclass(frozen=True)
class Moments:
    """Belief about ``Q`` candidates: expected activity ``mean [Q]`` (a probability) and its ``std [Q]`` (>= 0)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __getitem__(self, idx) -> "Moments":
        return Moments(self.mean[idx], self.std[idx])


def greedy(m: Moments) -> torch.Tensor:
    """``[Q]``: the expected activity."""
    return m.mean


def ucb(m: Moments, beta: float = 1.0) -> torch.Tensor:
    """``[Q]``: ``mean + beta * std``."""
    return m.mean + beta * m.std


def expected_improvement(m: Moments, best: float) -> torch.Tensor:
    """``[Q]``: ``E[max(f - best, 0)]`` for ``f ~ N(mean, std^2)`` (module docstring)."""
    gain = m.mean.double() - best
    std = m.std.double()
    safe = torch.where(std > 0, std, torch.ones_like(std))
    z = gain / safe
    ei = gain * torch.special.ndtr(z) + safe * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return torch.where(std > 0, ei, gain.clamp(min=0))


def acquisition_scores(name: str, m: Moments, best: float, beta: float = 1.0,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """The scores ``[Q]`` of acquisition ``name`` (one of :data:`ACQUISITIONS`); higher is picked first."""
    if name == "greedy":
        return greedy(m)
    if name == "ucb":
        return ucb(m, beta)
    if name == "ei":
        return expected_improvement(m, best)
    if name == "random":
        return torch.rand(len(m.mean), generator=generator, dtype=torch.float64)
    raise ValueError(f"unknown acquisition {name!r}; choose one of {', '.join(ACQUISITIONS)}")


def top(scores: torch.Tensor, batch: int) -> torch.Tensor:
    """Positions ``[batch]`` of the highest ``scores [Q]``, best first; ties go to the earlier position."""
    if not 1 <= batch <= len(scores):
        raise ValueError(f"cannot pick {batch} of {len(scores)} candidates")
    return torch.argsort(scores, descending=True, stable=True)[:batch]


# -- where the uncertainty comes from ----------------------------------------------------------------------


@torch.no_grad()
def activity(learner: Learner, support_x: torch.Tensor, support_y: torch.Tensor,
             query_x: torch.Tensor) -> torch.Tensor:
    """The learner's probability of activity ``[Q]`` for ``query_x [Q, F]`` after adapting to ``support_x [S, F]``,
    ``support_y [S]`` (eval mode, the learner's BatchNorm mode, as the evaluator scores)."""
    was_training = learner.training
    learner.eval()
    try:
        with learner.normalisation():
            outputs = learner.predict(learner.adapt(support_x, support_y), query_x)
    finally:
        learner.train(was_training)
    return torch.softmax(outputs.double(), dim=1)[:, 1]


def forest_moments(forest, query_x: torch.Tensor) -> Moments:
    """Mean and spread over the trees of a fitted scikit-learn forest of their class-1 probabilities ``[Q]``."""
    x = query_x.numpy()
    classes = list(forest.classes_)
    if 1 not in classes:
        zeros = torch.zeros(len(x), dtype=torch.float64)
        return Moments(zeros, zeros.clone())
    column = classes.index(1)
    per_tree = np.stack([tree.predict_proba(x)[:, column] for tree in forest.estimators_])    # [T, Q]
    return Moments(torch.from_numpy(per_tree.mean(0)), torch.from_numpy(per_tree.std(0)))


def bootstrap_support(support_y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Positions ``[S]`` of a bootstrap resample of a support set with labels ``support_y [S]``: each class resampled
    with replacement within itself (class counts kept)."""
    parts = []
    for c in torch.unique(support_y):
        members = torch.nonzero(support_y == c).flatten()
        parts.append(members[torch.randint(len(members), (len(members),), generator=generator)])
    return torch.cat(parts)


def learner_moments(learner: Learner, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                    resamples: int = 16, generator: torch.Generator | None = None) -> Moments:
    """The belief of ``learner`` about ``query_x [Q, F]`` given ``support_x [S, F]``, ``support_y [S]``, with the
    uncertainty source of the module docstring (``resamples``, ``generator``: the bootstrap's)."""
    if isinstance(learner, RandomForest):
        return forest_moments(learner.adapt(support_x, support_y), query_x)
    if isinstance(learner, Ensemble):
        probs = torch.stack([activity(m, support_x, support_y, query_x) for m in learner.members])
        return Moments(probs.mean(0), probs.std(0, correction=0))
    if callable(getattr(learner, "latent", None)):
        was_training = learner.training
        learner.eval()
        try:
            with torch.no_grad(), learner.normalisation():
                mean, std = learner.latent(learner.adapt(support_x, support_y), query_x)
        finally:
            learner.train(was_training)
        return Moments(mean[:, 1].double(), std[:, 1].double())
    if resamples < 2:
        raise ValueError(f"the bootstrap uncertainty needs at least 2 resamples, got {resamples}")
    if _embeds_each_example(learner):
        return _embedded_bootstrap(learner, support_x, support_y, query_x, resamples, generator)
    mean = activity(learner, support_x, support_y, query_x)
    draws = []
    for _ in range(resamples):
        idx = bootstrap_support(support_y, generator)
        draws.append(activity(learner, support_x[idx], support_y[idx], query_x))
    return Moments(mean, torch.stack(draws).std(0, correction=0))


def _embeds_each_example(learner: Learner) -> bool:
    """Whether ``learner`` embeds support and query example by example (a joint-embedding learner whose encoder has
    no batch normalisation), so that one embedding of every molecule serves all bootstrap resamples."""
    return isinstance(learner, JointEmbeddingLearner) and not any(
        isinstance(m, torch.nn.modules.batchnorm._NormBase) for m in learner.encoder.modules())


@torch.no_grad()
def _embedded_bootstrap(learner: JointEmbeddingLearner, support_x: torch.Tensor, support_y: torch.Tensor,
                        query_x: torch.Tensor, resamples: int, generator: torch.Generator | None) -> Moments:
    """The bootstrap of :func:`learner_moments` computed from one embedding of support and query (the same
    resamples, drawn in the same order, as adapting to each through the learner)."""
    was_training = learner.training
    learner.eval()
    try:
        z = learner.embed(torch.cat([support_x, query_x]))
    finally:
        learner.train(was_training)
    zs, zq = z[: len(support_x)], z[len(support_x):]

    def p(idx: torch.Tensor) -> torch.Tensor:
        return torch.softmax(learner.logits(zs[idx], support_y[idx], zq).double(), dim=1)[:, 1]

    mean = p(torch.arange(len(support_y)))
    draws = torch.stack([p(bootstrap_support(support_y, generator)) for _ in range(resamples)])
    return Moments(mean, draws.std(0, correction=0))
