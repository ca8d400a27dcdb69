"""The evaluator: mean and 95% confidence interval over a fixed, seeded set of episodes.

Episode ``i`` of a task source with a given seed is the same for every learner, so
results of different learners on the same source and seed are paired comparisons.

A task source with a ``metric`` attribute (the assays of :class:`~fewshot.tasks.assays.AssayTasks`)
is scored with that ranking metric (ROC-AUC or ΔAUPRC, :mod:`fewshot.metrics`) of the class-1
scores of the learner's query logits; the episodes of each task (``tasks.episode_task(i)``) are
averaged first, and the result is the mean and standard error over tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from fewshot.faults import pause_point
from fewshot.learners.base import Learner, metric_name
from fewshot.metrics import class1_scores, delta_auprc, roc_auc
from fewshot.tasks.episode import Episode


@dataclass(frozen=True)
class EvalResult:
    """``mean`` and ``ci95 = 1.96 * std / sqrt(n)`` of the per-episode metric ``values`` (or, when ``tasks``
    names them, of the per-task means of ``scored`` episodes)."""

    metric: str
    mean: float
    ci95: float
    values: tuple[float, ...] = field(repr=False)
    tasks: tuple[str, ...] = field(default=(), repr=False)
    scored: int | None = None

    @property
    def episodes(self) -> int:
        return self.scored if self.scored is not None else len(self.values)

    @property
    def stderr(self) -> float:
        """The standard error of the mean, ``std / sqrt(n)``."""
        return self.ci95 / 1.96


def confidence_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the normal 95% interval, ``1.96 * sample std / sqrt(n)``."""
    t = torch.tensor(values, dtype=torch.float64)
    std = float(t.std(unbiased=True)) if len(values) > 1 else 0.0
    return float(t.mean()), 1.96 * std / math.sqrt(len(values))


def _ranking_score(metric: str, logits: torch.Tensor, episode: Episode) -> float:
    scores = class1_scores(logits)
    if metric == "roc_auc":
        return roc_auc(scores, episode.query_y)
    return delta_auprc(scores, episode.query_y)


def evaluate(learner: Learner, tasks: Dataset, episodes: int | None = 600, inner_steps: int | None = None,
             progress: bool = False) -> EvalResult:
    """Score ``learner`` on episodes ``0..episodes-1`` of ``tasks``.

    Args:
        learner: any learner; it is put in eval mode and restored afterwards. Episodes are drawn on the CPU and
            moved to the learner's device (:attr:`~fewshot.learners.base.Learner.device`) one at a time.
        tasks: a task source (``tasks[i]`` is an :class:`~fewshot.tasks.episode.Episode`).
        episodes: how many episodes (600 by default, the field's convention; None: all of a finite source).
        inner_steps: test-time inner steps of gradient-based learners (None: their default).
        progress: show a progress bar.
    """
    if episodes is None:
        episodes = len(tasks)
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if episodes > len(tasks):
        raise ValueError(f"asked for {episodes} episodes but the task source holds {len(tasks)}")
    was_training, device = learner.training, learner.device
    learner.eval()
    ranking = getattr(tasks, "metric", None)
    bar = tqdm(range(episodes), desc="eval", disable=None if progress else True, leave=False)
    try:
        values: list[float] = []
        per_task: dict[str, list[float]] = {}
        for i in bar:
            pause_point("evaluate-episode")
            episode = tasks[i]
            if ranking is None:
                values.append(learner.evaluate_episode(episode.to(device), steps=inner_steps))
            else:
                logits = learner.query_outputs(episode.to(device), steps=inner_steps).cpu()
                score = _ranking_score(ranking, logits, episode)
                per_task.setdefault(tasks.episode_task(i), []).append(score)
    finally:
        learner.train(was_training)
    if ranking is None:
        mean, ci95 = confidence_interval(values)
        return EvalResult(metric_name(learner.task), mean, ci95, tuple(values))
    means = [sum(v) / len(v) for v in per_task.values()]
    mean, ci95 = confidence_interval(means)
    return EvalResult(ranking, mean, ci95, tuple(means), tuple(per_task), scored=episodes)
