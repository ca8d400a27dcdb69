"""2-D point navigation, the MAML paper's first RL benchmark (Finn et al. 2017, section 5.3).

A point starts at the origin and moves by its action, clipped to ``[-0.1, 0.1]`` per coordinate (as in the
MAML and ProMP code); the reward of a step is minus the distance to the task's goal after the move; a task is
a goal drawn uniformly from ``[-0.5, 0.5]^2``; an episode lasts 100 steps. Observations are the position.

:class:`Nav2D` is the :class:`~fewshot.rl.family.TaskFamily`; its :class:`Nav2DBatch` steps any number of
episodes at once as ``[B, 2]`` tensors. With gymnasium installed, :class:`Nav2DEnv` is the same task as one
``gymnasium.Env`` (``set_task`` / ``sample_tasks``), registered as ``fewshot/Nav2D-v0``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from fewshot.rl.family import BatchEnv, Task, TaskFamily
from fewshot.tasks.seeding import generator

GOAL_RANGE = 0.5      # goals uniform in [-0.5, 0.5]^2
MAX_ACTION = 0.1      # actions clipped to [-0.1, 0.1] per coordinate
HORIZON = 100
SPLITS = ("train", "test")


class Nav2DBatch(BatchEnv):
    """``B = len(goals) * episodes`` point-navigation episodes stepped together (environment ``b`` runs goal
    ``b // episodes``). The dynamics are deterministic: every episode starts at the origin.

    Args:
        goals: ``[n, 2]`` goals.
        episodes: episodes per goal.
        horizon: steps per episode.
    """

    obs_dim = act_dim = 2

    def __init__(self, goals: torch.Tensor, episodes: int, horizon: int = HORIZON):
        self.goals = goals.to(torch.float32).repeat_interleave(episodes, dim=0)     # [B, 2]
        self.batch, self.horizon = int(self.goals.shape[0]), horizon
        self.position = torch.zeros_like(self.goals)
        self.t = 0

    def reset(self) -> torch.Tensor:
        self.position = torch.zeros_like(self.goals)
        self.t = 0
        return self.position.clone()

    def step(self, actions: torch.Tensor):
        if self.t >= self.horizon:
            raise RuntimeError(f"the episodes ended after {self.horizon} steps; call reset() first")
        if tuple(actions.shape) != (self.batch, self.act_dim):
            raise ValueError(f"actions must have shape [{self.batch}, {self.act_dim}], got {tuple(actions.shape)}")
        self.position = self.position + actions.to(torch.float32).clamp(-MAX_ACTION, MAX_ACTION)
        reward = -torch.linalg.vector_norm(self.position - self.goals, dim=-1)
        self.t += 1
        done = torch.full((self.batch,), self.t == self.horizon)
        return self.position.clone(), reward, done, {}


class Nav2D(TaskFamily):
    """The MAML paper's 2-D navigation tasks: ``{"goal": [x, y]}`` with ``x, y ~ U[-0.5, 0.5]``.

    Both splits draw from the same distribution; held-out tasks are those of other seeds (a goal of the
    continuous square is never drawn twice).
    """

    name = "nav2d"
    obs_dim = act_dim = 2

    def __init__(self, horizon: int = HORIZON):
        if not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
        self.horizon = horizon

    @property
    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__.split("+")[0]}

    def sample_tasks(self, n: int, seed: int, split: str = "train") -> list[Task]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; nav2d has {', '.join(SPLITS)}")
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"the number of tasks must be an integer >= 0, got {n!r}")
        goals = (torch.rand(n, 2, generator=generator(seed), dtype=torch.float64) * 2 - 1) * GOAL_RANGE
        return [{"goal": [float(x), float(y)]} for x, y in goals.tolist()]

    def task_features(self, task: Task) -> torch.Tensor:
        return torch.tensor(_goal(task), dtype=torch.float32)

    def make(self, tasks: Sequence[Task], episodes: int, seed: int | Sequence[int] = 0) -> Nav2DBatch:
        """``seed`` is accepted for the interface; nav2d has no randomness of its own."""
        if not tasks:
            raise ValueError("make needs at least one task")
        if not isinstance(episodes, int) or episodes < 1:
            raise ValueError(f"episodes must be an integer >= 1, got {episodes!r}")
        return Nav2DBatch(torch.tensor([_goal(t) for t in tasks]), episodes, self.horizon)


def _goal(task: Task) -> list[float]:
    goal = task.get("goal") if isinstance(task, dict) else None
    if not (isinstance(goal, (list, tuple)) and len(goal) == 2):
        raise ValueError(f"a nav2d task is {{'goal': [x, y]}}, got {task!r}; draw tasks with Nav2D().sample_tasks")
    return [float(goal[0]), float(goal[1])]


try:
    import gymnasium
    from gymnasium import spaces
except ImportError:       # the gymnasium form is optional; the family itself needs only torch
    gymnasium = None

if gymnasium is not None:
    import numpy as np

    class Nav2DEnv(gymnasium.Env):
        """One nav2d task as a ``gymnasium.Env``: ``set_task(task)`` chooses the goal (``sample_tasks(n, seed)``
        draws goals as :class:`Nav2D` does); an episode is truncated after ``horizon`` steps."""

        metadata: dict[str, Any] = {"render_modes": []}

        def __init__(self, horizon: int = HORIZON, task: Task | None = None):
            self.family = Nav2D(horizon)
            self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
            self.action_space = spaces.Box(-MAX_ACTION, MAX_ACTION, (2,), np.float32)
            self.set_task(task or {"goal": [0.0, 0.0]})

        def sample_tasks(self, n: int, seed: int = 0, split: str = "train") -> list[Task]:
            return self.family.sample_tasks(n, seed, split)

        def set_task(self, task: Task) -> None:
            self.task = {"goal": _goal(task)}
            self._env = self.family.make([self.task], 1)

        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
            super().reset(seed=seed)
            return self._env.reset()[0].numpy(), {}

        def step(self, action):
            obs, reward, done, _ = self._env.step(torch.as_tensor(np.asarray(action), dtype=torch.float32)[None])
            return obs[0].numpy(), float(reward[0]), False, bool(done[0]), {}

    if "fewshot/Nav2D-v0" not in gymnasium.registry:
        gymnasium.register("fewshot/Nav2D-v0", entry_point=Nav2DEnv)
