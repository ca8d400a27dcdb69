"""N-way K-shot Q-query episodes over any labelled dataset.

:class:`ClassificationTasks` is a map-style ``torch.utils.data.Dataset``: item ``i`` is
episode ``i``, drawn from a generator seeded by ``(seed, i)``, so it plugs into a plain
``DataLoader`` (with workers, with ``collate_fn=stack_episodes``) and every process sees
the same episodes. It draws from a user's map-style dataset lazily (only the examples an
episode draws are loaded), from a pair of tensors or NumPy arrays, or from the library's
:class:`~fewshot.datasets.labelled.LabelledData`.
"""

from __future__ import annotations

import copy

import torch
from torch.utils.data import Dataset

from fewshot.datasets.labelled import LabelledData, as_examples
from fewshot.tasks.augment import random_affine
from fewshot.tasks.episode import Episode
from fewshot.tasks.seeding import generator


class ClassificationTasks(Dataset):
    """Episodes of ``ways`` classes with ``shots`` support and ``queries`` query examples each.

    Support and query are ordered class by class; labels are the classes' positions in
    a random order, i.e. remapped to ``0..ways-1``. Inputs stored as ``uint8`` are
    returned as ``float32`` in ``[0, 1]``.

    Args:
        data: the examples to draw from: a map-style ``Dataset`` of ``(x, y)`` items with integer labels (read
            lazily; labels from ``dataset.targets`` when present, else one pass), a pair ``(x, y)`` of tensors or
            NumPy arrays, or :class:`~fewshot.datasets.labelled.LabelledData` (only its classes are ever used).
        ways, shots, queries: N, K and Q.
        seed: the stream's seed; episode ``i`` depends only on ``(seed, i)``.
        num_episodes: the dataset's length (episodes are drawn lazily).
        within_group: draw each episode's classes from one group (``data.class_groups``,
            the Omniglot alphabet), as Lake et al. (2015) do: episode ``i`` first draws a
            group uniformly among the groups with at least ``ways`` eligible classes
            (classes with ``shots + queries`` examples), then ``ways`` of its classes.
        distort: give every image of an episode its own random affine distortion
            (:func:`~fewshot.tasks.augment.random_affine`, Koch et al. 2015), drawn after the examples,
            so the episode's classes and examples are those of the undistorted stream.
        name: what the data is, for error messages (e.g. "the validation alphabets").
    """

    kind = "classification"

    def __init__(self, data, ways: int, shots: int, queries: int, seed: int = 0,
                 num_episodes: int = 10**9, within_group: bool = False, distort: bool = False,
                 name: str = "this data"):
        for argument, value, low in (("ways", ways, 2), ("shots", shots, 1), ("queries", queries, 1),
                                     ("num_episodes", num_episodes, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{argument} must be an integer >= {low}, got {value!r}")
        data = as_examples(data)
        counts = torch.bincount(data.y, minlength=data.num_classes)
        need = shots + queries
        eligible = torch.nonzero(counts >= need).flatten()
        if ways > data.num_classes:
            raise ValueError(f"ways={ways} exceeds the {data.num_classes} classes of {name}; "
                             f"ask for at most {data.num_classes} ways")
        if len(eligible) < ways:
            raise ValueError(f"shots + queries = {shots} + {queries} = {need} exceed the examples of a class: "
                             f"only {len(eligible)} classes have {need} or more (the largest has "
                             f"{int(counts.max())}); lower shots or queries")
        self.data, self.ways, self.shots, self.queries = data, ways, shots, queries
        self.seed, self.num_episodes = seed, num_episodes
        self.eligible = eligible
        self.within_group, self.distort, self.name = within_group, distort, name
        if within_group and data.class_groups is None:
            raise ValueError("within-group episodes need class groups (LabelledData(..., class_groups=...)); "
                             "this data has none: turn off within-group episodes")
        self._groups: list[torch.Tensor] = []   # eligible classes of each group big enough, by group name
        if within_group:
            by_group: dict[str, list[int]] = {}
            for c in eligible.tolist():
                by_group.setdefault(data.class_groups[c], []).append(c)
            self._groups = [torch.tensor(by_group[name]) for name in sorted(by_group) if len(by_group[name]) >= ways]
            if not self._groups:
                largest = max((len(v) for v in by_group.values()), default=0)
                raise ValueError(f"within-group episodes need a group (alphabet) with at least ways={ways} classes "
                                 f"of {need} or more examples, but the largest group has {largest}; lower ways "
                                 f"(or shots + queries), or turn off within-group episodes")
        order = torch.argsort(data.y, stable=True)
        self._offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
        self._by_class = order

    def __len__(self) -> int:
        return self.num_episodes

    def __getitem__(self, index: int) -> Episode:
        if not 0 <= index < self.num_episodes:
            raise IndexError(f"episode {index} out of range 0..{self.num_episodes - 1}")
        g = generator(self.seed, index)
        classes = self._draw_classes(g)
        need = self.shots + self.queries
        picks = []
        for c in classes:
            start, stop = int(self._offsets[c]), int(self._offsets[c + 1])
            picks.append(self._by_class[start + torch.randperm(stop - start, generator=g)[:need]])
        picks = torch.stack(picks)                                  # [N, K+Q] example indices
        labels = torch.arange(self.ways).unsqueeze(1).expand(-1, need)
        support, query = picks[:, : self.shots].reshape(-1), picks[:, self.shots:].reshape(-1)
        support_x, query_x = self._inputs(support), self._inputs(query)
        if self.distort:
            support_x, query_x = random_affine(support_x, g), random_affine(query_x, g)
        return Episode(support_x, labels[:, : self.shots].reshape(-1), query_x, labels[:, self.shots:].reshape(-1))

    @property
    def in_memory(self) -> bool:
        """The examples are tensors in memory (:class:`~fewshot.datasets.labelled.LabelledData`), not items of a
        map-style ``Dataset`` loaded one by one."""
        return isinstance(self.data, LabelledData)

    def to(self, device: torch.device | str) -> "ClassificationTasks":
        """The same episodes, with the examples held on ``device`` and each episode gathered there by index
        (class and example draws stay on the CPU), so a GPU is not kept waiting for images copied to it."""
        if not self.in_memory:
            raise ValueError("episodes of a map-style Dataset are loaded item by item on the CPU; load the examples "
                             "into fewshot.LabelledData(x, y) to hold them on the device")
        moved = copy.copy(self)
        moved.data = self.data.to(device)
        return moved

    def episode_classes(self, index: int) -> list[int]:
        """The dataset class ids of episode ``index``, in label order (label j is class ``[j]``)."""
        return self._draw_classes(generator(self.seed, index))

    def _draw_classes(self, g: torch.Generator) -> list[int]:
        if self.within_group:
            pool = self._groups[int(torch.randint(len(self._groups), (1,), generator=g))]
            return pool[torch.randperm(len(pool), generator=g)[: self.ways]].tolist()
        return self.eligible[torch.randperm(len(self.eligible), generator=g)[: self.ways]].tolist()

    def _inputs(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.data.take(idx)
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x

    @property
    def pretrain_classes(self) -> int:
        """The classes of the data behind the episodes (the fine-tune baseline's pretraining head)."""
        return self.data.num_classes

    def pretrain_batches(self, batch_size: int) -> "PretrainBatches":
        """Supervised minibatches over all the examples behind these episodes, seeded like them."""
        from fewshot.tasks.pretrain import PretrainBatches

        return PretrainBatches(self.data, batch_size, seed=self.seed)
