"""Balanced same/different pairs for training Siamese networks on pairs directly.

:class:`PairSampler` is a map-style ``torch.utils.data.Dataset``: item ``i`` is a batch of
pairs drawn from a generator seeded by ``(seed, i)``, so it plugs into a plain
``DataLoader`` and every process sees the same batches. Episode-based training of
:class:`~fewshot.learners.siamese.SiameseNet` does not need it (it forms pairs inside
each episode).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from fewshot.datasets.labelled import LabelledData
from fewshot.tasks.seeding import generator


def _below(bounds: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One uniform integer in ``0..bounds[i]-1`` for every entry of ``bounds [P]`` (int64)."""
    return (torch.rand(bounds.shape, generator=g, dtype=torch.float64) * bounds).long()


class PairSampler(Dataset):
    """Batches of ``pairs_per_batch`` pairs, exactly half of them same-class.

    A same-class pair is two distinct examples of one class (drawn uniformly among the
    classes with at least two examples); a different-class pair is one example of each
    of two distinct classes (drawn uniformly among the classes with examples). The
    pairs are shuffled. Only the classes of ``data`` are ever used: pass the training
    split. Inputs stored as ``uint8`` are returned as ``float32`` in ``[0, 1]``.

    Item ``i`` is ``(x1, x2, same)``: ``x1, x2 [P, ...]`` and ``same [P]`` (bool, True for a
    same-class pair), ``P = pairs_per_batch``; it depends only on ``(seed, i)``.

    Args:
        data: the examples to draw from.
        pairs_per_batch: ``P``, an even integer >= 2.
        seed: the stream's seed.
        num_batches: the dataset's length (batches are drawn lazily).
    """

    def __init__(self, data: LabelledData, pairs_per_batch: int, seed: int = 0, num_batches: int = 10**9):
        if not isinstance(pairs_per_batch, int) or pairs_per_batch < 2 or pairs_per_batch % 2:
            raise ValueError(f"pairs_per_batch must be an even integer >= 2 (half same, half different), "
                             f"got {pairs_per_batch!r}")
        if not isinstance(num_batches, int) or num_batches < 1:
            raise ValueError(f"num_batches must be an integer >= 1, got {num_batches!r}")
        counts = torch.bincount(data.y, minlength=data.num_classes)
        self.present = torch.nonzero(counts >= 1).flatten()
        self.repeated = torch.nonzero(counts >= 2).flatten()
        if len(self.present) < 2:
            raise ValueError(f"different-class pairs need examples of at least 2 classes; the data has "
                             f"{len(self.present)}")
        if len(self.repeated) < 1:
            raise ValueError("same-class pairs need a class with at least 2 examples; the data has none")
        self.data, self.pairs_per_batch, self.seed, self.num_batches = data, pairs_per_batch, seed, num_batches
        self._counts = counts
        self._offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)[:-1]])
        self._by_class = torch.argsort(data.y, stable=True)

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch {index} out of range 0..{self.num_batches - 1}")
        g = generator(self.seed, index)
        half = self.pairs_per_batch // 2
        same_a, same_b = self._same_pairs(half, g)
        diff_a, diff_b = self._different_pairs(half, g)
        order = torch.randperm(self.pairs_per_batch, generator=g)
        first, second = torch.cat([same_a, diff_a])[order], torch.cat([same_b, diff_b])[order]
        same = torch.cat([torch.ones(half, dtype=torch.bool), torch.zeros(half, dtype=torch.bool)])[order]
        return self._inputs(first), self._inputs(second), same

    def _example(self, classes: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Example indices of the ``positions``-th examples of ``classes`` (both ``[P]``)."""
        return self._by_class[self._offsets[classes] + positions]

    def _same_pairs(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        classes = self.repeated[_below(torch.full((n,), len(self.repeated)), g)]
        count = self._counts[classes]
        a = _below(count, g)
        b = (a + 1 + _below(count - 1, g)) % count                  # any position but a
        return self._example(classes, a), self._example(classes, b)

    def _different_pairs(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        k = len(self.present)
        i = _below(torch.full((n,), k), g)
        j = (i + 1 + _below(torch.full((n,), k - 1), g)) % k         # any class but i
        c1, c2 = self.present[i], self.present[j]
        return (self._example(c1, _below(self._counts[c1], g)),
                self._example(c2, _below(self._counts[c2], g)))

    def _inputs(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.data.x[idx]
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x
