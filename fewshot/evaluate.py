"""The evaluator: mean and 95% confidence interval over a fixed, seeded set of episodes.

Episode ``i`` of a task source with a given seed is the same for every learner, so
results of different learners on the same source and seed are paired comparisons.

A task source with a ``metric`` attribute (the assays of :class:`~fewshot.tasks.assays.AssayTasks`)
is scored with that ranking metric (ROC-AUC or ΔAUPRC, :mod:`fewshot.metrics`) of the class-1
scores of the learner's query logits; the episodes of each task (``tasks.episode_task(i)``) are
averaged first, and the result is the mean and standard error over tasks.

With ``calibration=True`` a classifier's result also carries its calibration (:mod:`fewshot.calibration`:
ECE, MCE, NLL and Brier score of the softmax of its query outputs, pooled over the episodes' query predictions
with percentile-bootstrap intervals over episodes; for assays, each task's metrics averaged over tasks, and the
enrichment of actives among the top 10 % of each task's query molecules ranked by expected activity and, for a
learner with a posterior, by an upper confidence bound, :mod:`fewshot.uncertainty`). A regression learner with
predictive intervals (``predict_interval``) is also scored by their coverage and width (:mod:`fewshot.uncertainty`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch.utils.data import Dataset

from fewshot import calibration as calib
from fewshot import uncertainty
from fewshot.faults import pause_point
from fewshot.learners.base import Learner, metric_name, task_metric
from fewshot.metrics import class1_scores, delta_auprc, roc_auc
from fewshot.progress import progress_bar
from fewshot.tasks.episode import Episode


@dataclass(frozen=True)
class EvalResult:
    """``mean`` and ``ci95 = 1.96 * std / sqrt(n)`` of the per-episode metric ``values`` (or, when ``tasks``
    names them, of the per-task means of ``scored`` episodes); ``calibration``: the
    :class:`~fewshot.calibration.Calibration` of ``evaluate(..., calibration=True)`` (else None);
    ``uncertainty``: ``{"coverage", "interval_width"}`` of a regression learner with intervals, or the assays'
    ``{"enrichment_expected", "enrichment_ucb"}`` with ``calibration=True`` (:mod:`fewshot.uncertainty`; else
    None)."""

    metric: str
    mean: float
    ci95: float
    values: tuple[float, ...] = field(repr=False)
    tasks: tuple[str, ...] = field(default=(), repr=False)
    scored: int | None = None
    calibration: calib.Calibration | None = field(default=None, repr=False)
    uncertainty: dict[str, float] | None = field(default=None, repr=False)

    @property
    def episodes(self) -> int:
        return self.scored if self.scored is not None else len(self.values)

    @property
    def stderr(self) -> float:
        """The standard error of the mean, ``std / sqrt(n)``."""
        return self.ci95 / 1.96

    def __str__(self) -> str:
        if self.tasks:
            return (f"{self.mean:.4f} ± {self.stderr:.4f} (standard error over {len(self.tasks)} tasks, "
                    f"{self.episodes} episodes)")
        return f"{self.mean:.4f} ± {self.ci95:.4f} ({self.episodes} episodes)"


def mean_stderr(values: list[float]) -> tuple[float, float]:
    """Mean and standard error ``sample std / sqrt(n)`` of ``values`` (0 for one value)."""
    t = torch.tensor(values, dtype=torch.float64)
    std = float(t.std(unbiased=True)) if len(values) > 1 else 0.0
    return float(t.mean()), std / math.sqrt(len(values))


def confidence_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the normal 95% interval, ``1.96 * sample std / sqrt(n)``."""
    mean, stderr = mean_stderr(values)
    return mean, 1.96 * stderr


def _ranking_score(metric: str, logits: torch.Tensor, episode: Episode) -> float:
    scores = class1_scores(logits)
    if metric == "roc_auc":
        return roc_auc(scores, episode.query_y)
    return delta_auprc(scores, episode.query_y)


def episode_count(tasks: Dataset, episodes: int | None) -> int:
    """``episodes`` checked against the task source (``None``: all of a finite source)."""
    if episodes is None:
        episodes = len(tasks)
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if episodes > len(tasks):
        raise ValueError(f"asked for {episodes} episodes but the task source holds {len(tasks)}")
    return episodes


def scored_episodes(learner: Learner, tasks: Dataset, episodes: int, inner_steps: int | None = None,
                    progress: bool = False) -> Iterator[tuple[int, Episode, torch.Tensor]]:
    """``(i, episode, outputs)`` for episodes ``0..episodes-1``: the query outputs ``predict(adapt(support),
    query)`` on the CPU, computed as every score is (eval mode, the learner's BatchNorm mode, no meta-gradient,
    the episode moved to the learner's device); the learner's mode is restored afterwards."""
    was_training, device = learner.training, learner.device
    learner.eval()
    try:
        for i in progress_bar(range(episodes), desc="eval", enabled=progress, leave=False, every_percent=0):
            pause_point("evaluate-episode")
            episode = tasks[i]
            with learner.normalisation():
                outputs = learner.query_outputs(episode.to(device), steps=inner_steps).cpu()
            yield i, episode, outputs
    finally:
        learner.train(was_training)


def evaluate(learner: Learner, tasks: Dataset, episodes: int | None = 600, inner_steps: int | None = None,
             progress: bool = False, *, warn: bool = True, calibration: bool = False) -> EvalResult:
    """Score ``learner`` on episodes ``0..episodes-1`` of ``tasks``: ``predict(adapt(support), query)`` of each.

    Args:
        learner: any learner; it is put in eval mode (its BatchNorm layers as its ``batchnorm`` mode says:
            by default the statistics of each batch, as in training) and restored afterwards. Episodes are
            drawn on the CPU and moved to the learner's device one at a time.
        tasks: a task source (``tasks[i]`` is an :class:`~fewshot.tasks.episode.Episode`).
        episodes: how many episodes (600 by default, the field's convention; None: all of a finite source).
        inner_steps: test-time inner steps of gradient-based learners (None: their default).
        progress: show a progress bar.
        warn: warn when fewer than 2 episodes (or tasks) leave the confidence interval undefined.
        calibration: also score the calibration of a classifier's probabilities (``.calibration``: ECE, MCE,
            NLL, Brier score and their 95 % intervals, :mod:`fewshot.calibration`): the softmax of its query
            outputs, pooled over all query predictions, the intervals a percentile bootstrap over episodes
            (1000 resamples, seed 0); for assay tasks, the binary metrics of each task averaged over tasks.

    Returns:
        :class:`EvalResult`: ``.mean``, ``.ci95``, ``.episodes`` (and ``.calibration``); ``str()`` gives
        ``0.7351 ± 0.0143 (600 episodes)``.
    """
    episodes = episode_count(tasks, episodes)
    score = getattr(tasks, "score", None)
    if score is not None:       # a source that scores learners itself: meta-RL tasks (fewshot.domains.rl.RLTasks)
        return score(learner, episodes, inner_steps)
    if calibration and learner.task != "classification":
        raise ValueError(f"calibration metrics need class probabilities; this learner does {learner.task} "
                         f"({metric_name(learner.task)})")
    if episodes < 2 and warn:
        warnings.warn(f"evaluating on {episodes} episode gives no confidence interval (ci95 is 0); use 600 "
                      "episodes, the field's convention", stacklevel=2)
    ranking = getattr(tasks, "metric", None)
    values: list[float] = []
    per_task: dict[str, list[float]] = {}
    stats: list[torch.Tensor] = []                   # calibration statistics of each episode
    task_stats: dict[str, torch.Tensor] = {}         # ... summed over each assay task's episodes
    intervals = uncertainty.has_intervals(learner)
    interval_stats = torch.zeros(3, dtype=torch.float64)
    enrichments: dict[str, dict[str, list[float]]] = {}     # score -> task -> enrichment of each episode
    for i, episode, outputs in scored_episodes(learner, tasks, episodes, inner_steps, progress):
        if ranking is None:
            values.append(task_metric(outputs, episode.query_y, learner.task))
            if calibration:
                stats.append(calib.episode_statistics(outputs, episode.query_y))
            if intervals:
                interval_stats += uncertainty.episode_interval_statistics(learner, episode.to(learner.device),
                                                                          inner_steps)
        else:
            task = tasks.episode_task(i)
            per_task.setdefault(task, []).append(_ranking_score(ranking, outputs, episode))
            if calibration:
                row = calib.episode_statistics(outputs, episode.query_y, binary=True)
                task_stats[task] = task_stats[task] + row if task in task_stats else row
                for name, score in uncertainty.ranking_scores(learner, episode, outputs).items():
                    enrichments.setdefault(name, {}).setdefault(task, []).append(
                        uncertainty.enrichment(score, episode.query_y))
    if ranking is None:
        mean, ci95 = confidence_interval(values)
        scores = calib.pooled(torch.stack(stats)) if calibration else None
        return EvalResult(metric_name(learner.task), mean, ci95, tuple(values), calibration=scores,
                          uncertainty=uncertainty.coverage_summary(interval_stats) if intervals else None)
    means = [sum(v) / len(v) for v in per_task.values()]
    mean, ci95 = confidence_interval(means)
    scores = calib.task_mean(torch.stack([task_stats[t] for t in per_task])) if calibration else None
    return EvalResult(ranking, mean, ci95, tuple(means), tuple(per_task), scored=episodes, calibration=scores,
                      uncertainty={f"enrichment_{name}": uncertainty.task_mean_enrichment(by_task)
                                   for name, by_task in enrichments.items()} or None)
