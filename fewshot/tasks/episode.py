"""Episodes and task batches: the data a learner consumes.

An episode is one few-shot task: a support set to adapt on and a query set to be
scored on. A task batch stacks ``T`` episodes of identical shapes on a leading task
axis, so learners can process a meta-batch in one call; episodes whose sizes differ
(FS-Mol's training tasks, whose query sets are "up to Q molecules") travel as a
:class:`RaggedTaskBatch`, which learners that go task by task consume the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import torch


@dataclass(frozen=True)
class Episode:
    """One task.

    Attributes:
        support_x: ``[N*K, ...]`` support inputs.
        support_y: ``[N*K]`` support targets: class ids remapped to ``0..N-1`` (int64)
            for classification, values ``[N*K, 1]`` for regression.
        query_x: ``[N*Q, ...]`` query inputs.
        query_y: ``[N*Q]`` (or ``[N*Q, 1]``) query targets, same convention.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    def to(self, device: torch.device | str) -> "Episode":
        return Episode(*(getattr(self, f.name).to(device) for f in fields(self)))


def part_slice(num_tasks: int, parts: int, index: int) -> slice:
    """The ``index``-th of ``parts`` equal contiguous slices of ``num_tasks`` tasks."""
    per = num_tasks // parts
    if per * parts != num_tasks:
        raise ValueError(f"cannot split {num_tasks} tasks into {parts} equal parts")
    return slice(index * per, (index + 1) * per)


@dataclass(frozen=True)
class TaskBatch:
    """``T`` episodes stacked on a leading task axis.

    Attributes:
        support_x: ``[T, N*K, ...]``; support_y: ``[T, N*K]`` (or ``[T, N*K, 1]``).
        query_x: ``[T, N*Q, ...]``; query_y: ``[T, N*Q]`` (or ``[T, N*Q, 1]``).
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    @property
    def num_tasks(self) -> int:
        return int(self.support_x.shape[0])

    def __getitem__(self, t: int) -> Episode:
        return Episode(self.support_x[t], self.support_y[t], self.query_x[t], self.query_y[t])

    def __iter__(self):
        return (self[t] for t in range(self.num_tasks))

    def split(self, parts: int, index: int) -> "TaskBatch":
        """The ``index``-th of ``parts`` contiguous slices of the task axis."""
        sl = part_slice(self.num_tasks, parts, index)
        return TaskBatch(self.support_x[sl], self.support_y[sl], self.query_x[sl], self.query_y[sl])

    def to(self, device: torch.device | str) -> "TaskBatch":
        return TaskBatch(*(getattr(self, f.name).to(device) for f in fields(self)))


@dataclass(frozen=True)
class RaggedTaskBatch:
    """``T`` episodes whose support or query sizes differ, kept as a tuple: the task-by-task interface of
    :class:`TaskBatch` (``num_tasks``, indexing, iteration, ``split``, ``to``) without the stacked tensors."""

    episodes: tuple[Episode, ...]

    @property
    def num_tasks(self) -> int:
        return len(self.episodes)

    def __getitem__(self, t: int) -> Episode:
        return self.episodes[t]

    def __iter__(self):
        return iter(self.episodes)

    def split(self, parts: int, index: int) -> "RaggedTaskBatch":
        """The ``index``-th of ``parts`` contiguous slices of the tasks."""
        return RaggedTaskBatch(self.episodes[part_slice(self.num_tasks, parts, index)])

    def to(self, device: torch.device | str) -> "RaggedTaskBatch":
        return RaggedTaskBatch(tuple(e.to(device) for e in self.episodes))


def stack_episodes(episodes: Sequence[Episode]) -> TaskBatch | RaggedTaskBatch:
    """Stack episodes into a :class:`TaskBatch` (a ``DataLoader`` ``collate_fn``); episodes whose shapes differ
    become a :class:`RaggedTaskBatch`."""
    if not episodes:
        raise ValueError("cannot stack an empty list of episodes")
    columns = [[getattr(e, f.name) for e in episodes] for f in fields(Episode)]
    if any(len({t.shape for t in column}) > 1 for column in columns):
        return RaggedTaskBatch(tuple(episodes))
    return TaskBatch(*(torch.stack(column) for column in columns))
