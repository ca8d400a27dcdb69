"""Meta-training on several processes with ``torch.distributed`` (launched by ``torchrun``).

Each meta-batch of ``T`` tasks is split across the ``W`` ranks: rank ``r`` takes the
contiguous slice :func:`task_slice` of the step's task indices, so the ranks draw
disjoint, deterministic episodes (episode ``i`` depends only on ``(seed, i)``). Each rank
backpropagates the losses of its own ``T_r`` tasks divided by ``T``
(``meta_backward(batch, total_tasks=T)``), and :meth:`Ranks.reduce_step` sums the
gradients over the ranks: the mean over all ``T`` tasks, the meta-gradient of one process
with the same meta-batch up to the order of the floating-point additions. Every rank then
takes the same optimizer step, so the parameters stay equal on every rank.
Rank 0 alone writes the run directory, validates and prints.

One process (no ``torchrun``) is the case ``W = 1``, where every method is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


def init_from_env() -> None:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1), on the gloo backend."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def task_slice(tasks: int, rank: int, world: int) -> range:
    """The positions ``0..tasks-1`` of a meta-batch that ``rank`` of ``world`` processes: a
    contiguous block, the blocks of all ranks disjoint and covering every task once."""
    if tasks < world:
        raise ValueError(f"meta_batch={tasks} cannot be split over {world} processes; use a meta-batch of at "
                         f"least {world} tasks or fewer processes")
    return range(rank * tasks // world, (rank + 1) * tasks // world)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of a run: ``rank`` of ``world``."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> "Ranks":
        """The ranks of the initialised process group, or a single process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that writes files and validates."""
        return self.rank == 0

    def reduce_step(self, params: list[torch.Tensor], metrics: dict[str, float], local: int,
                    total: int) -> dict[str, float]:
        """Sum the ``.grad`` of ``params`` (this rank's ``local`` tasks, each divided by ``total``) over
        the ranks, giving every rank the meta-gradient of all ``total`` tasks; return the metrics
        (this rank's means over its tasks) as means over all tasks.
        """
        if self.world == 1:
            return metrics
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads]).cpu()     # gloo reduces CPU tensors; a GPU's come back
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()
        keys = list(metrics)
        values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64) * (local / total)
        dist.all_reduce(values)
        return dict(zip(keys, values.tolist()))

    def from_main(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (a figure read from one clock, so that every rank uses the same)."""
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        dist.broadcast(tensor, src=0)
        return float(tensor.item())

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (so that every rank takes the same decision)."""
        if self.world == 1:
            return flag
        value = torch.tensor([float(flag)])
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())
