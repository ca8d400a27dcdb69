"""Sinusoid regression (Finn et al. 2017, section 5.1): its options, recipes and task sources.

A learner with a predictive distribution (DKT, BMAML) is also scored by its 95 % intervals: ``fewshot eval
RUN --json`` adds ``"coverage"`` (the fraction of query targets inside their interval) and ``"interval_width"``
(the mean width) beside ``"mse"`` (:mod:`fewshot.uncertainty`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fewshot.domains.base import EpisodeDomain, episode_seeds
from fewshot.registry import register_domain
from fewshot.tasks.sinusoid import SinusoidTasks


@dataclass
class SinusoidOptions:
    """The ``data`` section of a sinusoid run: support and query points per task (one output: ``ways`` is 1)."""

    shots: int = 10
    queries: int = 10
    ways: int = 1
    train_ways: int | None = None
    train_queries: int | None = None

    def validate(self) -> None:
        if (self.ways, self.train_ways) not in ((1, None), (1, 1)):
            raise ValueError(f"sinusoid tasks are regression with one output; ways must be 1, got "
                             f"{self.train_ways or self.ways}")
        for name in ("shots", "queries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.train_queries is not None and self.train_queries < 1:
            raise ValueError(f"train_queries must be >= 1, got {self.train_queries}")


_MAML = dict(ways=1, shots=10, queries=10, meta_batch=25, inner_lr=0.01, inner_steps=1, eval_inner_steps=10,
             lr=0.001, steps=40000, val_every=1000, val_episodes=100, checkpoint_every=1000, log_every=100)
# DKT's best measured sinusoid recipe (docs/guides/calibration.md, configs/dkt-linear-taskscale-sinusoid.yaml):
# the linear kernel, trained on the 5-shot predictive, with a per-task scale (95 % coverage 0.977, 20 minutes)
_DKT = dict(ways=1, shots=5, queries=10, meta_batch=25, lr=0.001, steps=70000, val_every=1000, val_episodes=100,
            checkpoint_every=1000, log_every=100, kernel="linear", feature_dim=40, objective="predictive",
            task_scale=True)


class Sinusoid(EpisodeDomain):
    name = "sinusoid"
    options = SinusoidOptions
    task = "regression"
    nets = ("mlp",)
    recipes = {**{algo: _MAML for algo in ("maml", "fomaml", "anil", "metasgd")},
               "reptile": {**_MAML, "inner_steps": 5, "inner_lr": 0.02, "meta_batch": 5}, "dkt": _DKT}

    def input_shape(self, config) -> tuple[int, ...]:
        return (1,)

    def summary(self, res, config, split, ways, shots):
        return {**super().summary(res, config, split, ways, shots), **(res.uncertainty or {})}

    def train_tasks(self, config) -> SinusoidTasks:
        return SinusoidTasks(config.shots, config.train_queries or config.queries, seed=episode_seeds(config)[0])

    def val_tasks(self, config) -> SinusoidTasks:
        return SinusoidTasks(config.shots, config.queries, seed=episode_seeds(config)[1])

    def test_tasks(self, config, split=None, data_root=None, *, ways=None, shots=None, queries=None, seed=0,
                   args=None):
        if split not in (None, "test"):
            raise ValueError(f"sinusoid tasks have no splits (got --split {split}); drop --split")
        return "sinusoid", SinusoidTasks(shots or config.shots, queries or config.queries, seed=seed)


register_domain(Sinusoid())
