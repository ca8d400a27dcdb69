"""What a meta-RL task family is: a distribution over tasks (goals, velocities, objects) of one kind of
environment, and batches of environments that step many episodes at once.

A family is deterministic: ``sample_tasks(n, seed)`` returns the same tasks on every machine, and a
:class:`BatchEnv` built with the same seed steps the same episodes, so runs reproduce and resume exactly and
ranks of a distributed run sample disjoint tasks.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from fewshot.tasks.seeding import derive_seed

Task = dict[str, Any]   # a task's parameters, JSON-serialisable (e.g. {"goal": [0.1, -0.3]}, {"velocity": 1.2})


class BatchEnv:
    """``len(tasks) * episodes`` environments stepped together; environment ``b`` runs task ``b // episodes``.

    Attributes:
        batch: the number of environments ``B``.
        obs_dim, act_dim: sizes of one observation and one action.
        horizon: steps of one episode (every episode runs this long; ``done`` marks its last step).
    """

    batch: int
    obs_dim: int
    act_dim: int
    horizon: int

    def reset(self) -> torch.Tensor:
        """Start every environment's episode; observations ``[B, obs_dim]`` (float32)."""
        raise NotImplementedError

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Apply ``actions [B, act_dim]`` (float32; the env clips them to its action space); returns
        ``(obs [B, obs_dim], reward [B], done [B] bool, info)``, where ``info`` may hold ``"success" [B]`` (bool)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release simulator resources."""


class TaskFamily:
    """A distribution over tasks of one environment.

    Attributes:
        name: the ``dataset`` value that selects it (``nav2d``, ``cheetah-vel``, ...).
        obs_dim, act_dim, horizon: as in :class:`BatchEnv`.
        has_success: its environments report ``info["success"]`` (Meta-World).
        versions: versions of the simulators it runs on (recorded in every run and result).
    """

    name: str
    obs_dim: int
    act_dim: int
    horizon: int
    has_success: bool = False

    @property
    def versions(self) -> dict[str, str]:
        return {}

    def sample_tasks(self, n: int, seed: int, split: str = "train") -> list[Task]:
        """``n`` tasks drawn from the family's ``split`` (``train`` or ``test``; for Meta-World the benchmark's
        train or test goals and classes), the same for the same ``(n, seed, split)``."""
        raise NotImplementedError

    def task_features(self, task: Task) -> torch.Tensor:
        """The task's parameters as a float vector ``[task_dim]`` (the ``oracle`` baseline's extra input)."""
        raise NotImplementedError

    def make(self, tasks: Sequence[Task], episodes: int, seed: int | Sequence[int]) -> BatchEnv:
        """Environments for ``episodes`` episodes of each of ``tasks`` (``B = len(tasks) * episodes``), their
        randomness (initial states) seeded by ``seed``: one int for the whole batch, or one per task, so that a
        task's episodes do not depend on the other tasks of the batch (what :mod:`fewshot.rl.sampling` passes).
        :func:`task_seeds` turns either form into one seed per task; seed episode ``e`` of task ``t`` with
        ``derive_seed(task_seeds(seed, n)[t], e)``."""
        raise NotImplementedError


def task_seeds(seed: int | Sequence[int], tasks: int) -> list[int]:
    """One seed per task from ``make``'s ``seed`` argument: the list itself (checked to have ``tasks`` entries),
    or ``derive_seed(seed, t)`` for ``t < tasks`` when one int is given."""
    if isinstance(seed, int):
        return [derive_seed(seed, t) for t in range(tasks)]
    seeds = [int(s) for s in seed]
    if len(seeds) != tasks:
        raise ValueError(f"got {len(seeds)} seeds for {tasks} tasks; pass one seed per task or a single int")
    return seeds
