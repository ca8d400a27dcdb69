"""The evaluator: mean and 95% confidence interval over a fixed, seeded set of episodes.

Episode ``i`` of a task source with a given seed is the same for every learner, so
results of different learners on the same source and seed are paired comparisons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from fewshot.faults import pause_point
from fewshot.learners.base import Learner, metric_name


@dataclass(frozen=True)
class EvalResult:
    """``mean`` and ``ci95 = 1.96 * std / sqrt(n)`` of the per-episode metric ``values``."""

    metric: str
    mean: float
    ci95: float
    values: tuple[float, ...] = field(repr=False)

    @property
    def episodes(self) -> int:
        return len(self.values)


def confidence_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the normal 95% interval, ``1.96 * sample std / sqrt(n)``."""
    t = torch.tensor(values, dtype=torch.float64)
    std = float(t.std(unbiased=True)) if len(values) > 1 else 0.0
    return float(t.mean()), 1.96 * std / math.sqrt(len(values))


def evaluate(learner: Learner, tasks: Dataset, episodes: int = 600, inner_steps: int | None = None,
             progress: bool = False) -> EvalResult:
    """Score ``learner`` on episodes ``0..episodes-1`` of ``tasks``.

    Args:
        learner: any learner; it is put in eval mode and restored afterwards.
        tasks: a task source (``tasks[i]`` is an :class:`~fewshot.tasks.episode.Episode`).
        episodes: how many episodes (600 by default, the field's convention).
        inner_steps: test-time inner steps of gradient-based learners (None: their default).
        progress: show a progress bar.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if episodes > len(tasks):
        raise ValueError(f"asked for {episodes} episodes but the task source holds {len(tasks)}")
    was_training = learner.training
    learner.eval()
    try:
        values = []
        for i in tqdm(range(episodes), desc="eval", disable=None if progress else True, leave=False):
            pause_point("evaluate-episode")
            values.append(learner.evaluate_episode(tasks[i], steps=inner_steps))
    finally:
        learner.train(was_training)
    mean, ci95 = confidence_interval(values)
    return EvalResult(metric_name(learner.task), mean, ci95, tuple(values))
