"""Temperature scaling (Guo et al. 2017): a classifier's logits divided by one temperature ``T > 0``.

``T > 1`` softens over-confident probabilities, ``T < 1`` sharpens under-confident ones; the arg-max, and so
the accuracy, does not change. Fit ``T`` on validation episodes with
:func:`fewshot.calibration.fit_temperature` (``fewshot calibrate RUN``) and apply it with
:class:`TemperatureScaled` (``fewshot eval RUN --temperature fitted``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fewshot.learners.base import Learner


class TemperatureScaled(Learner):
    """``learner`` whose query outputs are divided by ``temperature``: ``predict = learner.predict / T``.

    Adapting is the wrapped learner's own. For a learner whose outputs are log-probabilities (an ensemble, a
    posterior average) the softmax of ``outputs / T`` is ``p^(1/T)`` renormalised, the same scaling.
    """

    def __init__(self, learner: Learner, temperature: float):
        super().__init__(batchnorm=learner.batchnorm)
        if getattr(learner, "task", "classification") != "classification":
            raise ValueError("temperature scaling divides class logits; this learner does regression")
        temperature = float(temperature)
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        self.learner, self.temperature = learner, temperature

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Any:
        return self.learner.adapt(support_x, support_y, steps=steps)

    def predict(self, adapted: Any, query_x: torch.Tensor) -> torch.Tensor:
        return self.learner.predict(adapted, query_x) / self.temperature

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:.4g}"
