"""Meta-reinforcement learning domains: a :class:`~fewshot.rl.family.TaskFamily` behind the domain protocol.

:class:`RLDomain` is parametrised by a family (``family_class``); this module registers ``nav2d`` (the MAML
paper's 2-D navigation, :mod:`fewshot.rl.nav2d`). A new family is a subclass naming its family class, its
recipes and, if it needs them, more data options (a subclass of :class:`RLOptions`) and flags
(:meth:`RLDomain.add_flags` with :func:`add_flag_once`)::

    class CheetahVel(RLDomain):
        name = "cheetah-vel"
        family_class = CheetahVelFamily          # built as family_class(horizon=...)
        recipes = {"maml-trpo": {...}}

    register_domain(CheetahVel())

How a run trains: the training stream :class:`RLTasks` (item ``i``: task ``i``, drawn from the family's
``train`` split with seed ``derive_seed(stream seed, i)``) goes through the one trainer
(:class:`fewshot.train.Trainer`): step ``s`` takes items ``s*T .. s*T+T-1`` (``T`` = ``meta_batch``; under
``torchrun`` each rank its own slice), and the learner samples ``trajectories`` episodes of each, seeded by
:func:`fewshot.rl.sampling.rollout_seed` ``(stream seed, i, phase)``, so a task's episodes are a function of
the run's seed, the task's position and the iteration. Validation scores ``val_episodes`` tasks of a second
stream after ``val_inner_steps`` adaptation steps.

How it is scored (``fewshot eval RUN [--inner-steps K] [--seed S] [--episodes N] --json``): ``N`` held-out
tasks (default ``eval_tasks``) drawn from the family's ``test`` split with seed ``derive_seed(S, 2)``; on each,
the return of ``trajectories`` new episodes before adaptation and after each of ``K`` policy-gradient steps
(default: the run's ``eval_inner_steps``); mean and 95 % interval over tasks per step. The JSON line holds
``metric`` (``return``, or ``success_rate`` for families that report success), ``mean`` and ``ci95`` after
``K`` steps, ``before`` and ``before_ci95`` (no adaptation), ``returns`` (one ``{"steps", "mean", "ci95"}``
per step; ``success`` likewise), ``tasks``, ``adapt_steps``, ``trajectories``, ``horizon``, ``seed``,
``dataset``, ``env``, ``algo`` and ``versions`` (the simulators').
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from fewshot.argtypes import positive_int
from fewshot.domains.base import Domain, episode_seeds
from fewshot.evaluate import EvalResult, confidence_interval
from fewshot.files import atomic_write
from fewshot.registry import register_domain
from fewshot.rl import policy  # noqa: F401  (registers the policy net)
from fewshot.rl.family import Task, TaskFamily
from fewshot.rl.nav2d import Nav2D
from fewshot.tasks.episode import Episode
from fewshot.tasks.seeding import derive_seed

TEST_TASKS_KEY, TEST_ROLLOUT_KEY = 2, 3      # held-out tasks and their episodes: derive_seed(eval seed, key)


@dataclass
class RLOptions:
    """The ``data`` section of a meta-RL run.

    Attributes:
        trajectories: episodes sampled per task for each adaptation step and for the outer objective (the MAML
            paper's nav2d: 20).
        horizon: steps per episode (``None``: the family's own, 100 for nav2d).
        eval_tasks: held-out tasks that ``fewshot train`` scores at its end and ``fewshot eval`` by default.
    """

    trajectories: int = 20
    horizon: int | None = None
    eval_tasks: int = 40

    def validate(self) -> None:
        for name in ("trajectories", "eval_tasks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.horizon is not None and self.horizon < 1:
            raise ValueError(f"horizon must be >= 1 (or left out for the family's own), got {self.horizon}")


class RLTasks(Dataset):
    """A seeded stream of tasks of a family, the task source of a meta-RL run.

    Item ``i`` is an :class:`~fewshot.tasks.episode.Episode` that names task ``i`` to the learner:
    ``support_x`` its features ``[1, task_dim]``, ``support_y`` its index ``[1]`` (int64), ``query_x`` and
    ``query_y`` empty ``[0]``. The learner reads the task itself with :meth:`task` and samples its episodes.

    Args:
        family: the task family.
        seed: the stream's seed (task ``i`` is ``family.sample_tasks(1, derive_seed(seed, i), split)[0]``).
        trajectories: episodes per task and adaptation step.
        split: the family's split the tasks come from.
        num_tasks: the stream's length (validation scores its first ``val_episodes``).
    """

    def __init__(self, family: TaskFamily, seed: int, trajectories: int, split: str = "train",
                 num_tasks: int = 10**9):
        self.family, self.seed, self.trajectories, self.split, self.num_tasks = family, seed, trajectories, split, num_tasks

    def __len__(self) -> int:
        return self.num_tasks

    def task(self, i: int) -> Task:
        return self.family.sample_tasks(1, derive_seed(self.seed, i), self.split)[0]

    def __getitem__(self, i: int) -> Episode:
        if not 0 <= i < self.num_tasks:
            raise IndexError(f"task {i} out of range 0..{self.num_tasks - 1}")
        empty = torch.zeros(0)
        return Episode(self.family.task_features(self.task(i))[None], torch.tensor([i]), empty, empty)

    def score(self, learner, episodes: int, inner_steps: int | None) -> EvalResult:
        """The validation score (:func:`fewshot.evaluate.evaluate` hands it here): the mean return of tasks
        ``0..episodes-1`` after ``inner_steps`` adaptation steps (default: the learner's), ``ci95`` over tasks."""
        steps = learner.inner_steps if inner_steps is None else inner_steps
        tasks = [self.task(i) for i in range(episodes)]
        result = learner.adaptation_returns(tasks, steps, self.trajectories, derive_seed(self.seed, TEST_ROLLOUT_KEY))
        values = result["return"][:, -1].tolist()
        mean, ci95 = confidence_interval(values)
        return EvalResult("return", mean, ci95, tuple(values))


def add_flag_once(parser: argparse.ArgumentParser, flag: str, **kwargs: Any) -> None:
    """Add ``flag`` to ``parser`` unless another RL domain already did (every RL domain offers the shared ones)."""
    if any(flag in action.option_strings for action in parser._actions):
        return
    parser.add_argument(flag, **kwargs)


class RLDomain(Domain):
    """A meta-RL domain over the task family ``family_class`` (see the module docstring).

    Subclasses set ``name``, ``family_class`` and ``recipes``, and may override :meth:`family` (to build the
    family from more options), :meth:`score_tasks` (another evaluation protocol) and :meth:`add_flags`.
    """

    options = RLOptions
    task = "rl"
    nets = ("policy",)
    family_class: type[TaskFamily]
    flags = ("trajectories", "horizon", "eval_tasks")

    # -- configuration -------------------------------------------------------------------------
    def family(self, config) -> TaskFamily:
        """The run's task family (with the run's horizon when it sets one)."""
        return self.family_class() if config.horizon is None else self.family_class(horizon=config.horizon)

    def task_family(self, config) -> TaskFamily:
        return self.family(config)

    def input_shape(self, config) -> tuple[int, ...]:
        """The policy's input: the observation, with the task's features for the ``oracle`` learner."""
        family = self.family(config)
        extra = 0
        if config.algo == "oracle":
            extra = int(family.task_features(family.sample_tasks(1, 0)[0]).numel())
        return (family.obs_dim + extra,)

    def add_flags(self, parser: argparse.ArgumentParser, command: str) -> None:
        if command == "train":
            add_flag_once(parser, "--trajectories", type=positive_int,
                          help="meta-RL: episodes sampled per task for each adaptation step (default 20)")
            add_flag_once(parser, "--horizon", type=positive_int, help="meta-RL: steps per episode (default: the "
                                                                        "task family's)")
        add_flag_once(parser, "--eval-tasks", type=positive_int, dest="eval_tasks",
                      help="meta-RL: held-out tasks to score (default 40; eval's --episodes also sets it)")

    # -- task sources ------------------------------------------------------------------------------
    def train_tasks(self, config) -> RLTasks:
        return RLTasks(self.family(config), episode_seeds(config)[0], config.trajectories, "train")

    def val_tasks(self, config) -> RLTasks:
        return RLTasks(self.family(config), episode_seeds(config)[1], config.trajectories, "train",
                       num_tasks=config.val_episodes)

    def test_tasks(self, config, tasks: int, seed: int) -> list[Task]:
        """The held-out tasks fixed by ``seed``: the family's ``test`` split."""
        return self.family(config).sample_tasks(tasks, derive_seed(seed, TEST_TASKS_KEY), "test")

    # -- scoring -----------------------------------------------------------------------------------------
    def score_tasks(self, learner, config, tasks: list[Task], steps: int, seed: int) -> dict[str, torch.Tensor]:
        """Per-task figures ``[n, steps + 1]`` before and after each adaptation step: ``"return"`` (and
        ``"success"`` for families that report it), from :meth:`RLLearner.adaptation_returns`."""
        return learner.adaptation_returns(tasks, steps, config.trajectories, derive_seed(seed, TEST_ROLLOUT_KEY))

    def result(self, learner, config, tasks: int, steps: int, seed: int) -> dict[str, Any]:
        """The JSON result of scoring ``tasks`` held-out tasks after ``0..steps`` adaptation steps."""
        family = self.family(config)
        was_training = learner.training
        learner.eval()
        try:
            scores = self.score_tasks(learner, config, self.test_tasks(config, tasks, seed), steps, seed)
        finally:
            learner.train(was_training)
        per_step = {name: [dict(zip(("mean", "ci95"), confidence_interval(values[:, j].tolist())), steps=j)
                           for j in range(steps + 1)] for name, values in scores.items()}
        main = "success" if "success" in scores else "return"
        last, first = per_step[main][-1], per_step[main][0]
        out = {"metric": "success_rate" if main == "success" else "return", "mean": last["mean"],
               "ci95": last["ci95"], "tasks": tasks, "adapt_steps": steps, "before": first["mean"],
               "before_ci95": first["ci95"], "returns": per_step["return"]}
        if "success" in per_step:
            out["success"] = per_step["success"]
        out.update(trajectories=config.trajectories, horizon=family.horizon, seed=seed, dataset=config.dataset,
                   env=getattr(config, "env", None) if config.applies("env") else None, algo=config.algo,
                   versions=family.versions)
        return out

    def test_after_training(self, learner, config, out: Path, device) -> None:
        summary = self.result(learner, config, config.eval_tasks, config.test_inner_steps or 0, 0)
        atomic_write(out / "test.json", (json.dumps(summary) + "\n").encode())
        print(f"test: {describe(summary)}")

    def evaluate_runs(self, args, learner, configs, run_dirs, steps) -> None:
        for flag in ("ways", "shots", "queries", "split"):
            if getattr(args, flag, None) is not None:
                raise ValueError(f"--{flag} does not apply to {configs[0].dataset} runs; drop it")
        cfg = configs[0]
        tasks = args.episodes or getattr(args, "eval_tasks", None) or cfg.eval_tasks
        summary = self.result(learner, cfg, tasks, steps or 0, args.seed if args.seed is not None else 0)
        summary["checkpoint"] = args.checkpoint
        print(json.dumps(summary) if args.json else describe(summary))


def describe(summary: dict[str, Any]) -> str:
    """The plain-text form of a result: the figure before and after each adaptation step."""
    steps = "; ".join(f"{r['steps']} steps {r['mean']:.3f} ± {r['ci95']:.3f}" for r in summary["returns"])
    text = f"return over {summary['tasks']} held-out {summary['dataset']} tasks: {steps}"
    if "success" in summary:
        text += "; success rate: " + "; ".join(f"{r['steps']} steps {r['mean']:.3f} ± {r['ci95']:.3f}"
                                               for r in summary["success"])
    return text


_NAV2D = dict(trajectories=20, meta_batch=20, inner_lr=0.1, inner_steps=1, eval_inner_steps=3, steps=500,
              val_every=25, val_episodes=20, log_every=1, checkpoint_every=10)


class Nav2DDomain(RLDomain):
    """The MAML paper's 2-D navigation (section 5.3), settings from its appendix: 20 trajectories per task,
    meta-batch 20, inner step size 0.1, one inner step, TRPO with KL bound 0.01."""

    name = "nav2d"
    family_class = Nav2D
    recipes = {"maml-trpo": {**_NAV2D, "max_kl": 0.01},
               "promp": {**_NAV2D, "lr": 0.001},
               **{algo: {**_NAV2D, "lr": 0.01, "steps": 2000, "val_every": 100, "log_every": 10,
                         "checkpoint_every": 50} for algo in ("pretrained", "oracle")}}


register_domain(Nav2DDomain())
