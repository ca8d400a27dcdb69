"""Supervised minibatches dressed as episodes: the training stream of the fine-tune baseline."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from fewshot.datasets.labelled import as_examples
from fewshot.tasks.episode import Episode
from fewshot.tasks.seeding import generator


def epoch_batch(total: int, batch_size: int, seed: int, index: int) -> torch.Tensor:
    """Positions ``[batch_size]`` of batch ``index`` among ``total`` examples: slice ``index mod E`` of epoch
    ``index // E``'s permutation (``E = total // batch_size``, the remainder dropped), drawn from ``(seed, epoch)``."""
    epoch, position = divmod(index, total // batch_size)
    order = torch.randperm(total, generator=generator(seed, epoch))
    return order[position * batch_size:(position + 1) * batch_size]


class PretrainBatches(Dataset):
    """Shuffled minibatches of ``data`` as episodes: item ``i`` is ``Episode(x [B, ...], y [B], x[:0], y[:0])``
    with ``y`` the class ids of ``data`` (``0..data.num_classes-1``: pass ``data.num_classes`` as
    :class:`FineTune`'s ``num_train_classes``).

    Batch ``i`` is slice ``i mod E`` of epoch ``i // E``'s permutation of the examples
    (``E = len(data) // batch_size`` batches an epoch, the remainder dropped), the
    permutation drawn from ``(seed, epoch)``: each epoch sees every example at most once,
    and batch ``i`` depends only on ``(seed, i)``. Inputs stored as ``uint8`` are returned
    as ``float32`` in ``[0, 1]``.
    """

    def __init__(self, data, batch_size: int, seed: int = 0, num_batches: int = 10**9):
        data = as_examples(data)
        if not isinstance(batch_size, int) or not 1 <= batch_size <= len(data):
            raise ValueError(f"batch_size must be an integer in 1..{len(data)} (the examples), got {batch_size!r}")
        if not isinstance(num_batches, int) or num_batches < 1:
            raise ValueError(f"num_batches must be an integer >= 1, got {num_batches!r}")
        self.data, self.batch_size, self.seed, self.num_batches = data, batch_size, seed, num_batches

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, index: int) -> Episode:
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch {index} out of range 0..{self.num_batches - 1}")
        idx = epoch_batch(len(self.data), self.batch_size, self.seed, index)
        x = self.data.take(idx)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
        y = self.data.y[idx]
        return Episode(x, y, x[:0], y[:0])
