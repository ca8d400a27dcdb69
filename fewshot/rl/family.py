"""What a meta-RL task family is: a distribution over tasks (goals, velocities, objects) of one kind of
environment, and batches of environments that step many episodes at once.

A family is deterministic: ``sample_tasks(n, seed)`` returns the same tasks on every machine, and a
:class:`BatchEnv` built with the same seed steps the same episodes, so runs reproduce and resume exactly and
ranks of a distributed run sample disjoint tasks.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

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

    def make(self, tasks: Sequence[Task], episodes: int, seed: int) -> BatchEnv:
        """Environments for ``episodes`` episodes of each of ``tasks`` (``B = len(tasks) * episodes``), their
        randomness (initial states) seeded by ``seed``."""
        raise NotImplementedError
