"""Meta-World domains (:mod:`fewshot.rl.metaworld`): ``metaworld-ml1`` (``--env reach-v3 | push-v3 |
pick-place-v3``), ``metaworld-ml10`` and ``metaworld-ml45``, scored by Meta-World's meta-test protocol.

``fewshot train --dataset metaworld-ml1 --env reach-v3 --algo maml-trpo|promp|rl2|pretrained|oracle`` trains on
the benchmark's train goals (ML10/ML45: train classes); ``--horizon H`` cuts training episodes to ``H <= 500``
steps, while scoring always runs Meta-World's 500.

The protocol (Yu et al. 2019; ``metaworld.evaluation.metalearning_evaluation``), on each scored goal:
10 adaptation episodes, then 3 evaluation episodes; an episode succeeds if ``info["success"]`` is 1 at any of
its steps, a goal's success rate is the fraction of its 3 evaluation episodes that succeed. A gradient learner
samples the 10 episodes, takes its adaptation steps (each on 10 fresh episodes) and is scored on 3 more; RL²
runs one trial of 13 episodes per goal, its hidden state kept, scored on the last 3. ``fewshot eval RUN
--json`` reports the success rate ± 95 % CI over the held-out (meta-test) goals in ``mean``/``ci95``
(``before``: the adaptation episodes' success), and the same on as many meta-train goals under
``meta_train``, with the Meta-World and reward-function versions under ``versions``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import torch

from fewshot.domains.rl import TEST_ROLLOUT_KEY, TEST_TASKS_KEY, RLDomain, RLOptions, add_flag_once
from fewshot.evaluate import confidence_interval
from fewshot.registry import register_domain
from fewshot.rl.family import Task, TaskFamily
from fewshot.rl.metaworld import ADAPT_EPISODES, EVAL_EPISODES, MAX_PATH, ML1_ENVS, MetaWorld
from fewshot.tasks.seeding import derive_seed

_FAMILIES: dict[tuple[str, str | None, int], TaskFamily] = {}


@dataclass
class MetaWorldOptions(RLOptions):
    """The ``data`` section of a Meta-World run: those of :class:`~fewshot.domains.rl.RLOptions` and ``env``
    (the ML1 environment: ``reach-v3``, ``push-v3``, ``pick-place-v3`` or another v3 name)."""

    trajectories: int = ADAPT_EPISODES
    eval_tasks: int = 50
    env: str | None = None


_MAML = dict(trajectories=10, meta_batch=20, inner_lr=0.05, inner_steps=1, eval_inner_steps=1, steps=300,
             policy_hidden=[100, 100], horizon=150, val_every=10, val_episodes=10, eval_tasks=50, log_every=1,
             checkpoint_every=5)
RECIPES = {"maml-trpo": {**_MAML, "max_kl": 0.01},
           "promp": {**_MAML, "lr": 0.001, "clip_eps": 0.3, "outer_steps": 5},
           "pretrained": {**_MAML, "lr": 0.01},
           "oracle": {**_MAML, "lr": 0.01},
           "rl2": dict(trajectories=2, meta_batch=10, trials=2, inner_steps=1, horizon=150, lr=3e-4,
                       gru_hidden=128, reward_scale=0.1, steps=300, val_every=10, val_episodes=10, eval_tasks=50,
                       log_every=1, checkpoint_every=5)}


class MetaWorldDomain(RLDomain):
    """A Meta-World benchmark (``ML1``, ``ML10`` or ``ML45``) as a meta-RL domain (the module docstring)."""

    options = MetaWorldOptions
    benchmark: str
    recipes = RECIPES
    flags = RLDomain.flags + ("env",)

    def family(self, config, horizon: int | None = None) -> TaskFamily:
        """The run's family (``horizon``: another episode length), built once per process; families of one
        benchmark share its goals and simulators."""
        env = getattr(config, "env", None)
        key = (self.benchmark, env, horizon or config.horizon or MAX_PATH)
        if key not in _FAMILIES:
            sibling = next((f for k, f in _FAMILIES.items() if k[:2] == key[:2]), None)
            _FAMILIES[key] = MetaWorld(self.benchmark, env, key[2]) if sibling is None else \
                sibling.with_horizon(key[2])
        return _FAMILIES[key]

    def validate(self, config) -> None:
        self.family(config)             # refuses a missing or misplaced --env

    def add_flags(self, parser: argparse.ArgumentParser, command: str) -> None:
        super().add_flags(parser, command)
        if command == "train":
            add_flag_once(parser, "--env", help=f"Meta-World ML1: the environment ({', '.join(ML1_ENVS)} or "
                                                "another v3 name)")

    def test_tasks(self, config, tasks: int, seed: int, split: str = "test") -> list[Task]:
        """``tasks`` goals of the benchmark's ``split`` (meta-test by default) fixed by ``seed``: for ML1 with 50
        tasks, every goal once."""
        return self.family(config).sample_tasks(tasks, derive_seed(seed, TEST_TASKS_KEY), split)

    def score_tasks(self, learner, config, tasks: list[Task], steps: int, seed: int) -> dict[str, torch.Tensor]:
        """Meta-World's protocol on ``tasks`` with 500-step episodes: ``{"return", "success"}``, ``[n, steps +
        1]``, column ``j < steps`` the 10 episodes adapted on by step ``j + 1`` (column 0: the adaptation
        episodes), column ``steps`` the 3 evaluation episodes (RL²: ``[n, 2]``, the 10, then the 3)."""
        trained, learner.family = learner.family, self.family(config, MAX_PATH)
        rollout = derive_seed(seed, TEST_ROLLOUT_KEY)
        try:
            if getattr(learner, "adapts_in_context", False):
                per_episode = learner.adaptation_returns(tasks, ADAPT_EPISODES + EVAL_EPISODES - 1, 1, rollout)
                return {k: torch.stack([v[:, :ADAPT_EPISODES].mean(1), v[:, ADAPT_EPISODES:].mean(1)], 1)
                        for k, v in per_episode.items()}
            return learner.adaptation_returns(tasks, steps, ADAPT_EPISODES, rollout, eval_episodes=EVAL_EPISODES)
        finally:
            learner.family = trained

    def result(self, learner, config, tasks: int, steps: int, seed: int) -> dict[str, Any]:
        if getattr(learner, "adapts_in_context", False):
            steps = 1                   # RL²: adaptation episodes, then evaluation episodes
        out = super().result(learner, config, tasks, steps, seed)
        was_training = learner.training
        learner.eval()
        try:
            train = self.score_tasks(learner, config, self.test_tasks(config, tasks, seed, "train"), steps, seed)
        finally:
            learner.train(was_training)
        mean, ci95 = confidence_interval(train["success"][:, -1].tolist())
        before, before_ci95 = confidence_interval(train["success"][:, 0].tolist())
        out["meta_train"] = {"mean": mean, "ci95": ci95, "before": before, "before_ci95": before_ci95,
                             "tasks": tasks, "return": confidence_interval(train["return"][:, -1].tolist())[0]}
        out.update(horizon=MAX_PATH, benchmark=self.benchmark, adapt_episodes=ADAPT_EPISODES,
                   eval_episodes=EVAL_EPISODES)
        return out


class ML1(MetaWorldDomain):
    """``metaworld-ml1 --env NAME``: one environment, 50 train and 50 test goals (the recipes' ``reach-v3``
    when ``--env`` is not given)."""

    name, benchmark = "metaworld-ml1", "ML1"
    recipes = {algo: {**recipe, "env": "reach-v3"} for algo, recipe in RECIPES.items()}


class ML10(MetaWorldDomain):
    """``metaworld-ml10``: 10 train and 5 test classes."""

    name, benchmark = "metaworld-ml10", "ML10"


class ML45(MetaWorldDomain):
    """``metaworld-ml45``: 45 train and 5 test classes."""

    name, benchmark = "metaworld-ml45", "ML45"


for _domain in (ML1(), ML10(), ML45()):
    register_domain(_domain)
