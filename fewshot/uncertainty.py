"""Predictive uncertainty beyond class probabilities: regression intervals and uncertainty-aware ranking.

**Regression intervals.** A regression learner with a predictive distribution answers
``predict_interval(adapted, query_x, level=0.95) -> PredictiveInterval`` (mean, lower and upper ends, each
``[Q, d]``): DKT's Gaussian or Student-t predictive (:func:`gaussian_interval`, :func:`student_t_interval`),
BMAML's mixture over particles (:func:`mixture_interval`). The evaluator scores it
(:func:`episode_interval_statistics`) beside the MSE of the learner's point predictions: ``coverage``, the fraction of query targets inside their interval, and
``interval_width``, the mean of ``upper - lower``, both pooled over all query targets of the episodes.

**Ranking (molecules).** The query molecules of an assay are ranked by a score and the top 10 % looked at:
``enrichment = (active fraction among the top ceil(0.1 Q)) / (active fraction among all Q)`` (1: no better than
random; ``1 / active fraction`` at most). Two scores: the expected activity ``p(active)`` (every classifier), and
the upper confidence bound ``mu_1 + beta * s_1`` of the active class's latent (learners with a posterior over
it, :meth:`~fewshot.learners.dkt.DKT.latent`; ``beta`` = :data:`UCB_BETA`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

TOP_FRACTION = 0.1
UCB_BETA = 1.0


class PredictiveInterval(NamedTuple):
    """A predictive mean and the ends of a central interval around it, each ``[Q, d]``."""

    mean: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor


def normal_quantile(level: float) -> float:
    """``z`` with ``P(|N(0, 1)| <= z) = level`` (1.95996... for 0.95)."""
    if not 0 < level < 1:
        raise ValueError(f"the interval's level must lie in (0, 1), got {level}")
    return math.sqrt(2) * float(torch.special.erfinv(torch.tensor(level, dtype=torch.float64)))


def gaussian_interval(mean: torch.Tensor, std: torch.Tensor, level: float = 0.95) -> PredictiveInterval:
    """The central ``level`` interval ``mean ± z std`` of ``N(mean, std^2)`` (``[Q, d]`` each)."""
    half = normal_quantile(level) * std
    return PredictiveInterval(mean, mean - half, mean + half)


def student_t_interval(loc: torch.Tensor, scale: torch.Tensor, df: torch.Tensor, level: float = 0.95
                       ) -> PredictiveInterval:
    """The central ``level`` interval ``loc ± t_df scale`` of a Student-t (``[Q, d]`` each; ``t_df`` its
    ``(1 + level)/2`` quantile with ``df`` degrees of freedom, from SciPy)."""
    from scipy.special import stdtrit

    normal_quantile(level)                                   # checks the level
    t = stdtrit(df.detach().double().cpu().numpy(), (1 + level) / 2)
    half = torch.as_tensor(t, dtype=scale.dtype, device=scale.device) * scale
    return PredictiveInterval(loc, loc - half, loc + half)


def mixture_interval(means: torch.Tensor, std: torch.Tensor | float, level: float = 0.95,
                     iterations: int = 60) -> PredictiveInterval:
    """The central ``level`` interval of the equal-weight mixture ``(1/M) sum_m N(means_m, std^2)``:
    ``means [M, Q, d]``, ``std`` a scalar -> mean and the ``(1 - level)/2`` and ``(1 + level)/2`` quantiles,
    ``[Q, d]`` each, found by bisection on the mixture's CDF (``iterations`` halvings of a bracket that holds
    them: the means' range widened by ``6 std``)."""
    std = torch.as_tensor(std, dtype=means.dtype, device=means.device)
    normal = torch.distributions.Normal(means, std)

    def quantile(q: float) -> torch.Tensor:
        lo = means.min(0).values - 6 * std
        hi = means.max(0).values + 6 * std
        for _ in range(iterations):
            mid = (lo + hi) / 2
            below = normal.cdf(mid.unsqueeze(0)).mean(0) < q
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return (lo + hi) / 2

    tail = (1 - level) / 2
    if not 0 < tail < 0.5:
        raise ValueError(f"the interval's level must lie in (0, 1), got {level}")
    return PredictiveInterval(means.mean(0), quantile(tail), quantile(1 - tail))


def interval_statistics(interval: PredictiveInterval, targets: torch.Tensor) -> torch.Tensor:
    """``[3]`` float64: targets inside their interval, summed widths ``upper - lower``, number of targets
    (``targets`` shaped like the interval's ends); rows of several episodes add up."""
    if interval.lower.shape != targets.shape:
        raise ValueError(f"intervals of shape {tuple(interval.lower.shape)} for targets {tuple(targets.shape)}")
    inside = (targets >= interval.lower) & (targets <= interval.upper)
    return torch.tensor([float(inside.sum()), float((interval.upper - interval.lower).sum()), targets.numel()],
                        dtype=torch.float64)


def coverage_summary(stats: torch.Tensor) -> dict[str, float]:
    """``{"coverage", "interval_width"}`` of summed :func:`interval_statistics` ``[3]``."""
    return {"coverage": float(stats[0] / stats[2]), "interval_width": float(stats[1] / stats[2])}


def has_intervals(learner) -> bool:
    """The learner gives regression intervals (``predict_interval``)."""
    return getattr(learner, "task", None) == "regression" and callable(getattr(learner, "predict_interval", None))


@torch.no_grad()
def episode_interval_statistics(learner, episode, steps: int | None = None, level: float = 0.95) -> torch.Tensor:
    """:func:`interval_statistics` of ``predict_interval(adapt(support), query)`` for one episode (on the
    learner's device, in its BatchNorm mode; the caller sets eval mode)."""
    with learner.normalisation():
        adapted = learner.adapt(episode.support_x, episode.support_y, steps=steps)
        interval = learner.predict_interval(adapted, episode.query_x, level)
    return interval_statistics(interval, episode.query_y)


# -- ranking -------------------------------------------------------------------------------------------------
def enrichment(scores: torch.Tensor, labels: torch.Tensor, fraction: float = TOP_FRACTION) -> float:
    """Active fraction among the ``ceil(fraction * Q)`` highest ``scores [Q]`` over the active fraction of all
    ``labels [Q]`` (1 active, 0 inactive); NaN when no query molecule is active. Ties are broken by position."""
    labels = labels.detach().flatten().double().cpu()
    base = float(labels.mean())
    if base == 0:
        return math.nan
    top = max(1, math.ceil(fraction * labels.numel()))
    order = torch.sort(scores.detach().flatten().double().cpu(), descending=True, stable=True).indices[:top]
    return float(labels[order].mean()) / base


@torch.no_grad()
def ranking_scores(learner, episode, outputs: torch.Tensor, beta: float = UCB_BETA) -> dict[str, torch.Tensor]:
    """``{"expected": p(active) [Q]}`` from the query ``outputs [Q, 2]``, and ``"ucb"``: ``mu_1 + beta * s_1``
    of the active class's latent for a learner with a posterior over it (``learner.latent``; in its BatchNorm
    mode, on its device; the caller sets eval mode)."""
    scores = {"expected": torch.softmax(outputs.double(), dim=1)[:, 1]}
    latent = getattr(getattr(learner, "learner", learner), "latent", None)   # a temperature-scaled learner's own
    if callable(latent):
        device = learner.device
        with learner.normalisation():
            adapted = learner.adapt(episode.support_x.to(device), episode.support_y.to(device))
            mean, std = latent(adapted, episode.query_x.to(device))
        scores["ucb"] = (mean[:, 1] + beta * std[:, 1]).double().cpu()
    return scores


def task_mean_enrichment(by_task: dict[str, list[float]]) -> float:
    """The mean over tasks of each task's mean enrichment over its episodes (episodes without actives skipped)."""
    means = [sum(v) / len(v) for v in ([e for e in values if not math.isnan(e)] for values in by_task.values()) if v]
    return sum(means) / len(means) if means else math.nan
