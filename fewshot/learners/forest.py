"""A random forest per task (scikit-learn): the non-meta-learning baseline of few-shot drug discovery.

It has no parameters to meta-train: :meth:`RandomForest.adapt` fits a fresh forest on the
support set (ECFP fingerprints in the recipes, as in the FS-Mol baselines), and
:meth:`RandomForest.predict` returns log class probabilities, so the common evaluator scores it
on the same episodes as every other learner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fewshot.datasets.featurize import MissingDependency
from fewshot.learners.base import Learner
from fewshot.registry import BuildContext, register_learner


class RandomForest(Learner):
    """Random forest on ``x [B, F]`` features.

    Args:
        trees: trees per forest (``n_estimators``).
        seed: the forests' ``random_state`` (the same for every task, so results are reproducible).
    """

    def __init__(self, trees: int = 100, seed: int = 0):
        super().__init__()
        if not (isinstance(trees, int) and trees >= 1):
            raise ValueError(f"trees must be an integer >= 1, got {trees!r}")
        try:
            from sklearn.ensemble import RandomForestClassifier
        except ImportError:
            raise MissingDependency("the random-forest learner needs scikit-learn: pip install -e '.[chem]' (or pip "
                                    "install scikit-learn)") from None
        self._forest_class, self.trees, self.seed = RandomForestClassifier, trees, seed

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None):
        """A forest fitted on the support set ``[S, F]``, ``[S]`` (``steps`` is ignored)."""
        if support_x.dim() != 2:
            raise ValueError(f"the random forest needs feature vectors [S, F], got shape {tuple(support_x.shape)}")
        forest = self._forest_class(n_estimators=self.trees, random_state=self.seed, n_jobs=1)
        return forest.fit(support_x.numpy(), support_y.numpy())

    def predict(self, adapted, query_x: torch.Tensor) -> torch.Tensor:
        """Log class probabilities ``[Q, N]`` (classes absent from the support set get probability 0)."""
        ways = max(int(max(adapted.classes_)) + 1, 2)
        proba = np.zeros((query_x.shape[0], ways))
        proba[:, adapted.classes_] = adapted.predict_proba(query_x.numpy())
        return torch.from_numpy(np.log(np.clip(proba, 1e-6, None))).float()


@dataclass
class ForestOptions:
    """The ``learner`` section of random-forest runs."""

    trees: int = 100

    def validate(self) -> None:
        if self.trees < 1:
            raise ValueError(f"trees must be >= 1, got {self.trees}")


@register_learner("forest", options=ForestOptions, nets=())
def _build(options: ForestOptions, context: BuildContext) -> RandomForest:
    return RandomForest(options.trees, seed=context.seed)
