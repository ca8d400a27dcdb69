"""Test-time support augmentation: a one-shot support set made several-shot by distorted copies.

Each support image is joined by ``copies`` randomly distorted copies of itself (the affine distortions of
Koch et al. 2015, :mod:`fewshot.tasks.augment`), each with the original's label, before the wrapped learner
adapts; queries are left as they are. A prototype network then averages each class's original and
distorted embeddings, a nearest-neighbour learner compares each query with all of them, and a
gradient-based learner fine-tunes on all of them.
"""

from __future__ import annotations

from typing import Any

import torch

from fewshot.learners.base import Learner
from fewshot.tasks.augment import random_affine
from fewshot.tasks.seeding import generator


class SupportAugmented(Learner):
    """``learner`` adapted on ``support_x [n, C, H, W]`` followed by ``copies`` distorted copies of it
    (``[n * (copies + 1), C, H, W]``, labels repeated to match).

    The distortions are drawn from a generator seeded with ``seed`` afresh on every call, so a score does not
    depend on the order in which episodes are scored.
    """

    def __init__(self, learner: Learner, copies: int, seed: int = 0):
        super().__init__(batchnorm=learner.batchnorm)
        if copies < 1:
            raise ValueError(f"support augmentation needs at least one distorted copy, got {copies}")
        self.learner, self.copies, self.seed = learner, copies, seed
        self.task = getattr(learner, "task", "classification")

    def augment(self, support_x: torch.Tensor, support_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The support set with its distorted copies after it: ``[n, ...]``, ``[n]`` -> ``[n * (copies + 1),
        ...]``, ``[n * (copies + 1)]``."""
        copies = random_affine(support_x.repeat(self.copies, *[1] * (support_x.dim() - 1)), generator(self.seed))
        return torch.cat([support_x, copies]), support_y.repeat(self.copies + 1)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Any:
        return self.learner.adapt(*self.augment(support_x, support_y), steps=steps)

    def predict(self, adapted: Any, query_x: torch.Tensor) -> torch.Tensor:
        return self.learner.predict(adapted, query_x)
