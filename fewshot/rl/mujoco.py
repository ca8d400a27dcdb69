"""MuJoCo locomotion task families on gymnasium's ``HalfCheetah-v5``, as in MAML (Finn et al. 2017) and ProMP
(Rothfuss et al. 2019): ``cheetah-vel`` (run at a target velocity drawn uniformly from [0, 2]) and ``cheetah-dir``
(run forward, direction +1, or backward, -1). Episodes last 200 steps.

Rewards come from the step's ``info`` (gymnasium's own forward velocity and control cost, the environment built
with ``ctrl_cost_weight=0.05``, so ``info["reward_ctrl"] = -0.05·Σa²`` as in the papers):

- ``cheetah-vel``: ``-|x_velocity - v| - 0.05·Σa²``
- ``cheetah-dir``: ``d·x_velocity - 0.05·Σa²``

:class:`Cheetah` is the :class:`~fewshot.rl.family.TaskFamily`; :class:`CheetahEnv` is one task as a
``gymnasium`` environment (``sample_tasks`` / ``set_task``), which the family's batches step.

:class:`GymBatchEnv` steps a batch of gymnasium environments in one loop and is shared with the Meta-World
families (:mod:`fewshot.rl.metaworld`). It reuses the simulator instances of a family across batches (a Meta-World
environment takes about half a second to compile its model), which gymnasium's vector classes, owning their
environments, do not allow; their ``autoreset`` would also have to be disabled for the fixed-horizon contract.

Needs the ``rl`` extra: ``pip install 'fewshot[rl]'``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from fewshot.rl.family import BatchEnv, Task, TaskFamily, task_seeds
from fewshot.tasks.seeding import derive_seed, generator

try:
    import gymnasium
except ImportError:     # the rl extra is optional; the families say how to install it when used
    gymnasium = None

SPLIT_KEYS = {"train": 0, "test": 1}
CTRL_COST = 0.05        # MAML / ProMP: 0.5 · 1e-1 · Σa²
HORIZON = 200


def require(module: str):
    """Import ``module`` of the ``rl`` extra, or say how to install it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ValueError(f"the RL environments need {module!r} ({err}); install them with "
                         f"pip install 'fewshot[rl]'") from None


def split_key(split: str) -> int:
    if split not in SPLIT_KEYS:
        raise ValueError(f"unknown split {split!r}; choose train or test")
    return SPLIT_KEYS[split]


class GymBatchEnv(BatchEnv):
    """Gymnasium environments stepped together for ``horizon`` steps per episode.

    Args:
        envs: ``B`` gymnasium environments (already set to their tasks).
        horizon: steps of one episode.
        seeds: one per task (:func:`~fewshot.rl.family.task_seeds`); environment ``b`` runs episode
            ``e = b % episodes`` of task ``b // episodes``, and its ``r``-th reset (counting from 0) starts that task's
            episode ``e + r * episodes``, seeded with ``derive_seed(seeds[task], e + r * episodes)``.
        success: report ``info["success"]`` (Meta-World).
        release: called with ``envs`` by :meth:`close` (a family's pool takes them back).
    """

    def __init__(self, envs: Sequence[Any], horizon: int, seeds: Sequence[int], success: bool = False,
                 release: Callable[[list], None] | None = None):
        self.envs, self.horizon, self.seeds = list(envs), horizon, list(seeds)
        self.batch = len(self.envs)
        if not self.seeds or self.batch % len(self.seeds):
            raise ValueError(f"{self.batch} environments cannot be split into {len(self.seeds)} tasks")
        self.episodes = self.batch // len(self.seeds)
        space = self.envs[0].action_space
        self.low, self.high = space.low.astype(np.float32), space.high.astype(np.float32)
        self.act_dim = int(np.prod(space.shape))
        self.obs_dim = int(np.prod(self.envs[0].observation_space.shape))
        self.success, self.release = success, release
        self.resets, self.t = 0, None

    def reset(self) -> torch.Tensor:
        k = self.episodes
        obs = [env.reset(seed=derive_seed(self.seeds[b // k], b % k + self.resets * k))[0]
               for b, env in enumerate(self.envs)]
        self.resets, self.t = self.resets + 1, 0
        return torch.as_tensor(np.stack(obs), dtype=torch.float32)

    def step(self, actions: torch.Tensor):
        if self.t is None or self.t >= self.horizon:
            raise ValueError(f"the episodes are over ({self.horizon} steps) or not started; call reset() first")
        if actions.shape != (self.batch, self.act_dim):
            raise ValueError(f"actions must be [{self.batch}, {self.act_dim}], got {list(actions.shape)}")
        acts = np.clip(actions.detach().cpu().numpy().astype(np.float32), self.low, self.high)
        obs, reward, success = [], [], []
        for env, a in zip(self.envs, acts):
            o, r, _, _, info = env.step(a)
            obs.append(o)
            reward.append(r)
            if self.success:
                success.append(bool(info["success"]))
        self.t += 1
        done = torch.full((self.batch,), self.t == self.horizon)
        out = {"success": torch.tensor(success)} if self.success else {}
        return (torch.as_tensor(np.stack(obs), dtype=torch.float32), torch.tensor(reward, dtype=torch.float32),
                done, out)

    def close(self) -> None:
        if self.release is not None and self.envs:
            self.release(self.envs)
        self.envs = []


class EnvPool:
    """Idle simulator instances by kind, built on first need and reused by later batches."""

    def __init__(self, build: Callable[[str], Any]):
        self.build, self.idle = build, {}

    def take(self, kinds: Sequence[str]) -> list:
        out = []
        for kind in kinds:
            free = self.idle.setdefault(kind, [])
            out.append(free.pop() if free else self.build(kind))
        return out

    def give(self, kind_of: Callable[[Any], str], envs: list) -> None:
        for env in envs:
            self.idle.setdefault(kind_of(env), []).append(env)


def _target(kind: str, task: Task) -> float:
    key = "velocity" if kind == "vel" else "direction"
    if not isinstance(task, dict) or key not in task:
        raise ValueError(f"a cheetah-{kind} task is {{{key!r}: value}}, got {task!r}; draw tasks with sample_tasks")
    return float(task[key])


class Cheetah(TaskFamily):
    """``cheetah-vel`` (``{"velocity": v}``, v ~ U[0, 2]) or ``cheetah-dir`` (``{"direction": ±1}``) on
    ``HalfCheetah-v5``: observations ``[17]``, actions ``[6]`` in [-1, 1], ``horizon`` steps (the papers' 200).
    The train and test splits draw from the same distribution with different streams."""

    obs_dim, act_dim = 17, 6

    def __init__(self, kind: str, horizon: int = HORIZON):
        if kind not in ("vel", "dir"):
            raise ValueError(f"unknown cheetah family {kind!r}; choose vel or dir")
        if not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
        self.kind, self.name, self.horizon = kind, f"cheetah-{kind}", horizon
        self.pool = EnvPool(lambda _: CheetahEnv(kind, horizon=horizon))

    @property
    def versions(self) -> dict[str, str]:
        return {"gymnasium": require("gymnasium").__version__, "mujoco": require("mujoco").__version__,
                "env": "HalfCheetah-v5"}

    def sample_tasks(self, n: int, seed: int, split: str = "train") -> list[Task]:
        g = generator(seed, split_key(split))
        if self.kind == "vel":
            return [{"velocity": float(v)} for v in 2.0 * torch.rand(n, generator=g, dtype=torch.float64)]
        return [{"direction": int(d)} for d in 2 * torch.randint(0, 2, (n,), generator=g) - 1]

    def task_features(self, task: Task) -> torch.Tensor:
        return torch.tensor([_target(self.kind, task)])

    def make(self, tasks: Sequence[Task], episodes: int, seed: int | Sequence[int]) -> GymBatchEnv:
        if gymnasium is None:
            require("gymnasium")
        envs = self.pool.take(["cheetah"] * (len(tasks) * episodes))
        for env, task in zip(envs, [t for t in tasks for _ in range(episodes)]):
            env.set_task(task)
        return GymBatchEnv(envs, self.horizon, task_seeds(seed, len(tasks)),
                           release=lambda es: self.pool.give(lambda e: "cheetah", es))


if gymnasium is not None:
    class CheetahEnv(gymnasium.Wrapper):
        """One ``cheetah-vel`` or ``cheetah-dir`` task as a ``gymnasium`` environment: ``HalfCheetah-v5`` with
        the task's reward, truncated after ``horizon`` steps; ``set_task`` chooses the task (``sample_tasks``
        draws them as :class:`Cheetah` does)."""

        def __init__(self, kind: str, task: Task | None = None, horizon: int = HORIZON):
            from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
            super().__init__(HalfCheetahEnv(ctrl_cost_weight=CTRL_COST))
            self.family = Cheetah(kind, horizon)
            self.set_task(task or self.family.sample_tasks(1, 0)[0])

        def sample_tasks(self, n: int, seed: int = 0, split: str = "train") -> list[Task]:
            return self.family.sample_tasks(n, seed, split)

        def set_task(self, task: Task) -> None:
            self.target, self.task = _target(self.family.kind, task), task

        def reset(self, **kwargs):
            self.t = 0
            return self.env.reset(**kwargs)

        def step(self, action):
            obs, _, terminated, _, info = self.env.step(action)
            if self.family.kind == "vel":
                reward = -abs(info["x_velocity"] - self.target) + info["reward_ctrl"]
            else:
                reward = self.target * info["x_velocity"] + info["reward_ctrl"]
            self.t += 1
            return obs, float(reward), terminated, self.t >= self.family.horizon, info
