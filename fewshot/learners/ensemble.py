"""Ensembles: several trained classifiers scored as one, by averaging their class probabilities."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from fewshot.learners.base import Learner


def resize_images(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Images ``[B, C, S, S]`` resized to ``[B, C, size, size]`` (antialiased bilinear, which matches the
    Omniglot loader's Pillow resize from 105 px to within 1/255); unchanged when ``size`` is ``None`` (not
    images) or already ``S``."""
    if size is None or x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


class Ensemble(Learner):
    """Adapt: each member's adapted state. Predict: the log of the members' mean class probabilities
    ``[Q, N]`` (so argmax, cross-entropy and the evaluator's metrics apply unchanged).

    ``sizes[i]``: the image side member ``i`` was trained at (``None`` for non-image inputs); episodes are
    given at the largest side and resized for each member. ``steps[i]``: member ``i``'s own test-time
    inner steps, used when a call passes ``steps=None``. Each member keeps its own way of adapting
    (joint-embedding learners embed support and query together when predicting)."""

    def __init__(self, members: Sequence[Learner], sizes: Sequence[int | None] | None = None,
                 steps: Sequence[int | None] | None = None):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        tasks = {getattr(m, "task", "classification") for m in members}
        if tasks != {"classification"}:
            raise ValueError(f"an ensemble averages class probabilities; its members do {'/'.join(sorted(tasks))}")
        self.members = nn.ModuleList(members)
        self.sizes = list(sizes) if sizes is not None else [None] * len(members)
        self.steps = list(steps) if steps is not None else [None] * len(members)
        if not len(self.sizes) == len(self.steps) == len(members):
            raise ValueError(f"{len(members)} members need as many sizes and steps, got {len(self.sizes)} and "
                             f"{len(self.steps)}")

    def _steps(self, i: int, steps: int | None) -> int | None:
        return steps if steps is not None else self.steps[i]

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> list[Any]:
        return [m.adapt(resize_images(support_x, self.sizes[i]), support_y, steps=self._steps(i, steps))
                for i, m in enumerate(self.members)]

    def predict(self, adapted: list[Any], query_x: torch.Tensor) -> torch.Tensor:
        return mean_log_probs([m.predict(state, resize_images(query_x, self.sizes[i]))
                               for i, (m, state) in enumerate(zip(self.members, adapted))])



def mean_log_probs(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """``log(mean_i softmax(logits_i))``: logits ``[Q, N]`` each -> ``[Q, N]``."""
    stacked = torch.stack([F.log_softmax(x, dim=-1) for x in logits])
    return torch.logsumexp(stacked, dim=0) - math.log(len(logits))
