"""Meta-World task families (Yu et al. 2019) through the ``metaworld`` package 3.1.1 (v3 environments, reward
function ``v2``): ``metaworld-ml1`` (one environment, e.g. ``reach-v3``; 50 train and 50 test goals),
``metaworld-ml10`` (10 train and 5 test classes) and ``metaworld-ml45`` (45 and 5), 50 goals per class.

A task is ``{"env": name, "split": "train"|"test", "goal": g}``: goal ``g`` of the benchmark's ``split`` tasks of
that environment class, the benchmark built with a fixed seed (:data:`BENCHMARK_SEED`) so that the goals are the
same on every machine. The goal is hidden from the observation (``[39]``; actions ``[4]`` in [-1, 1]), as in
Meta-World's meta-learning benchmarks; every step reports ``info["success"]``.

The environments are built from Meta-World's classes and its ``Task`` objects directly
(``cls(reward_function_version="v2")`` then ``set_task``), not through ``gymnasium.make("Meta-World/ML1-train")``,
which is broken in 3.1.1, nor ``metaworld.make_ml_envs``, whose ``meta_batch_size`` must divide the 50 goals and
whose environments draw their own tasks on reset. Meta-World refuses to step past ``max_path_length`` (500) without
a reset; :class:`~fewshot.rl.mujoco.GymBatchEnv` resets every ``horizon <= 500`` steps.

The evaluation protocol (Meta-World's ``metalearning_evaluation``): per test goal, 10 adaptation episodes, then 3
evaluation episodes; an episode is a success if ``info["success"]`` is 1 at any step; a goal's success rate is the
fraction of its evaluation episodes that succeed; the result is the mean ± 95 % CI over goals (:func:`success_rates`).

Building a benchmark's goals takes seconds (ML1 about 6 s on a 2-core CPU; ML10 and ML45 longer: a whole tiny
run of either, goals, training and scoring, takes 55 s and 88 s), so it happens on the first
:meth:`MetaWorld.make`, not when tasks are sampled.
"""

from __future__ import annotations

import copy
import pickle
from importlib import metadata
from typing import Sequence

import numpy as np
import torch

from fewshot.rl.family import Task, TaskFamily, task_seeds
from fewshot.rl.mujoco import EnvPool, GymBatchEnv, require, split_key
from fewshot.tasks.seeding import generator

BENCHMARKS = ("ML1", "ML10", "ML45")
ML1_ENVS = ("reach-v3", "push-v3", "pick-place-v3")
GOALS = 50                      # goals per class in every Meta-World benchmark
MAX_PATH = 500                  # Meta-World's max_path_length
REWARD_VERSION = "v2"
BENCHMARK_SEED = 0              # the seed Meta-World draws the benchmark's goals with
RAND_VEC = 12                   # task features pad a goal's random vector to this width
ADAPT_EPISODES, EVAL_EPISODES = 10, 3   # Meta-World's meta-test protocol


class MetaWorld(TaskFamily):
    """A Meta-World meta-learning benchmark as a task family.

    Args:
        benchmark: ``ML1``, ``ML10`` or ``ML45``.
        env: the environment of ``ML1`` (``reach-v3``, ``push-v3``, ``pick-place-v3``, or any v3 name).
        horizon: steps of an episode (at most 500, Meta-World's episode length; training may cut episodes short).
        goal_observable: show the goal in the observation (Meta-World's multi-task setting; its scripted expert
            policies, :mod:`metaworld.policies`, need it). The meta-learning benchmarks hide it.
    """

    obs_dim, act_dim = 39, 4
    has_success = True

    def __init__(self, benchmark: str, env: str | None = None, horizon: int = MAX_PATH,
                 goal_observable: bool = False):
        if benchmark not in BENCHMARKS:
            raise ValueError(f"unknown Meta-World benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
        if not 1 <= horizon <= MAX_PATH:
            raise ValueError(f"a Meta-World episode lasts 1 to {MAX_PATH} steps, got --horizon {horizon}")
        env_dict = require("metaworld.env_dict")
        if benchmark == "ML1":
            if env is None or env not in env_dict.ALL_V3_ENVIRONMENTS:
                raise ValueError(f"metaworld-ml1 needs --env with a v3 environment (e.g. {', '.join(ML1_ENVS)}), "
                                 f"got {env!r}")
            self.classes = {"train": [env], "test": [env]}
        else:
            if env is not None:
                raise ValueError(f"--env selects the environment of metaworld-ml1; {benchmark} has its own classes")
            split_dicts = getattr(env_dict, f"{benchmark}_V3")
            self.classes = {split: list(split_dicts[split]) for split in ("train", "test")}
        self.benchmark, self.env, self.horizon, self.goal_observable = benchmark, env, horizon, goal_observable
        self.name = f"metaworld-{benchmark.lower()}"
        self.all_classes = sorted(set(self.classes["train"]) | set(self.classes["test"]))
        self._tasks: dict[tuple[str, str], list] = {}       # (split, env) -> Meta-World's Task objects, built once
        self.pool = EnvPool(self._build)

    @property
    def versions(self) -> dict[str, str]:
        return {"metaworld": metadata.version("metaworld"), "metaworld_reward": REWARD_VERSION,
                "metaworld_benchmark_seed": str(BENCHMARK_SEED), "mujoco": metadata.version("mujoco"),
                "gymnasium": metadata.version("gymnasium")}

    # -- tasks -----------------------------------------------------------------------------------
    def sample_tasks(self, n: int, seed: int, split: str = "train") -> list[Task]:
        """``n`` tasks of ``split``: the classes in turn (in a seeded order), each class's goals in a seeded order
        (without repeats until all 50 are used), so a meta-batch covers the classes evenly."""
        g = generator(seed, split_key(split))
        names = self.classes[split]
        order = torch.randperm(len(names), generator=g).tolist()
        goals = {name: torch.randperm(GOALS, generator=g).tolist() for name in names}
        return [{"env": names[order[i % len(names)]], "split": split,
                 "goal": goals[names[order[i % len(names)]]][(i // len(names)) % GOALS]} for i in range(n)]

    def all_tasks(self, split: str) -> list[Task]:
        """Every goal of every class of ``split`` (the meta-test protocol scores them all)."""
        split_key(split)
        return [{"env": name, "split": split, "goal": g} for name in self.classes[split] for g in range(GOALS)]

    def task_features(self, task: Task) -> torch.Tensor:
        """``[len(all_classes) + 12]``: the class one-hot (ML10/ML45 only) and the goal's random vector (object
        and goal positions), zero-padded."""
        vec = pickle.loads(self._task(task).data)["rand_vec"]
        if len(vec) > RAND_VEC:
            raise ValueError(f"{task['env']} has a {len(vec)}-wide random vector, wider than {RAND_VEC}")
        feats = np.zeros(RAND_VEC)
        feats[:len(vec)] = vec
        if self.benchmark != "ML1":
            onehot = np.zeros(len(self.all_classes))
            onehot[self.all_classes.index(task["env"])] = 1.0
            feats = np.concatenate([onehot, feats])
        return torch.as_tensor(feats, dtype=torch.float32)

    def _task(self, task: Task):
        """Meta-World's ``Task`` object of ``task``."""
        if task.get("split") not in ("train", "test") or task.get("env") not in self.classes[task["split"]] \
                or not 0 <= int(task.get("goal", -1)) < GOALS:
            raise ValueError(f"{task} is not a task of {self.name}; sample tasks with sample_tasks()")
        if not self._tasks:
            self._tasks.update(self._build_benchmark())
        return self._tasks[task["split"], task["env"]][int(task["goal"])]

    def _build_benchmark(self) -> dict[tuple[str, str], list]:
        metaworld = require("metaworld")
        if self.benchmark == "ML1":
            bench = metaworld.ML1(self.env, seed=BENCHMARK_SEED)
        else:
            bench = getattr(metaworld, self.benchmark)(seed=BENCHMARK_SEED)
        out = {}
        for split, tasks in (("train", bench.train_tasks), ("test", bench.test_tasks)):
            for t in tasks:
                out.setdefault((split, t.env_name), []).append(t)
        return out

    def with_horizon(self, horizon: int) -> "MetaWorld":
        """The same benchmark with ``horizon``-step episodes, sharing the built goals and simulators."""
        if not 1 <= horizon <= MAX_PATH:
            raise ValueError(f"a Meta-World episode lasts 1 to {MAX_PATH} steps, got --horizon {horizon}")
        other = copy.copy(self)
        other.horizon = horizon
        return other

    # -- environments ------------------------------------------------------------------------------
    def _build(self, name: str):
        env_dict = require("metaworld.env_dict")
        return env_dict.ALL_V3_ENVIRONMENTS[name](reward_function_version=REWARD_VERSION)

    def make(self, tasks: Sequence[Task], episodes: int, seed: int | Sequence[int]) -> GymBatchEnv:
        names = [t["env"] for t in tasks for _ in range(episodes)]
        objs = [self._task(t) for t in tasks for _ in range(episodes)]
        envs = self.pool.take(names)
        for env, obj in zip(envs, objs):
            if self.goal_observable:
                data = pickle.loads(obj.data)
                obj = type(obj)(env_name=obj.env_name, data=pickle.dumps({**data, "partially_observable": False}))
            env.set_task(obj)
        return GymBatchEnv(envs, self.horizon, task_seeds(seed, len(tasks)), success=True,
                           release=lambda es: self.pool.give(env_name, es))


def env_name(env) -> str:
    """The v3 name of a Meta-World environment instance (e.g. ``reach-v3``)."""
    env_dict = require("metaworld.env_dict")
    return next(name for name, cls in env_dict.ALL_V3_ENVIRONMENTS.items() if type(env) is cls)


def episode_success(success: torch.Tensor) -> torch.Tensor:
    """``success [T, B]`` (bool, per step of one episode) -> ``[B]``: the episode reached success at any step."""
    return success.any(dim=0)


def success_rates(success: torch.Tensor, tasks: int) -> torch.Tensor:
    """``success [E]`` (bool per evaluation episode, ``E = tasks * episodes``, task-major) -> ``[tasks]``: each
    task's fraction of successful episodes."""
    return success.float().reshape(tasks, -1).mean(dim=1)
