"""The sinusoid regression task family of the MAML paper (Finn et al. 2017, section 5.1).

Task: ``y = A * sin(x - phi)`` with ``A ~ U[0.1, 5]``, ``phi ~ U[0, pi]``; inputs
``x ~ U[-5, 5]``. Support and query points are drawn independently from the same task.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

from fewshot.tasks.episode import Episode
from fewshot.tasks.seeding import generator


class SinusoidTasks(Dataset):
    """Episode ``i``: ``shots`` support and ``queries`` query points ``x, y`` of shape ``[n, 1]``."""

    kind = "regression"

    def __init__(self, shots: int, queries: int, seed: int = 0, num_episodes: int = 10**9,
                 amplitude: tuple[float, float] = (0.1, 5.0), phase: tuple[float, float] = (0.0, math.pi),
                 x_range: tuple[float, float] = (-5.0, 5.0)):
        for name, value in (("shots", shots), ("queries", queries), ("num_episodes", num_episodes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.shots, self.queries, self.seed, self.num_episodes = shots, queries, seed, num_episodes
        self.ways = 1
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range

    def __len__(self) -> int:
        return self.num_episodes

    def task_parameters(self, index: int) -> tuple[float, float]:
        """Amplitude and phase of episode ``index``."""
        g = generator(self.seed, index)
        u = torch.rand(2, generator=g, dtype=torch.float64)
        amp = self.amplitude[0] + (self.amplitude[1] - self.amplitude[0]) * float(u[0])
        phase = self.phase[0] + (self.phase[1] - self.phase[0]) * float(u[1])
        return amp, phase

    def __getitem__(self, index: int) -> Episode:
        if not 0 <= index < self.num_episodes:
            raise IndexError(f"episode {index} out of range 0..{self.num_episodes - 1}")
        amp, phase = self.task_parameters(index)
        g = generator(self.seed, index, 1)
        lo, hi = self.x_range
        x = lo + (hi - lo) * torch.rand(self.shots + self.queries, 1, generator=g)
        y = amp * torch.sin(x - phase)
        return Episode(x[: self.shots], y[: self.shots], x[self.shots:], y[self.shots:])
