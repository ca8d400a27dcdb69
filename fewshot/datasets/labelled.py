"""A labelled dataset held in memory: the input of every episode sampler."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class LabelledData:
    """Examples with integer class labels.

    Attributes:
        x: inputs, ``[M, ...]`` (images are ``uint8`` ``[M, 1, H, W]``; they are
            turned into ``float32`` in ``[0, 1]`` when an episode is drawn).
        y: class ids ``[M]`` (``int64``), each in ``0..len(class_names) - 1``.
        class_names: a unique, human-readable name per class, e.g.
            ``"Greek/character03/rot090"``.
        class_groups: the group each class belongs to (the Omniglot alphabet), one
            per class; splits and within-group episodes use it.
    """

    x: torch.Tensor
    y: torch.Tensor
    class_names: tuple[str, ...]
    class_groups: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} examples but y has {self.y.shape[0]} labels")
        if len(self.class_names) != len(self.class_groups):
            raise ValueError("class_names and class_groups must have one entry per class")
        if self.y.numel() and (int(self.y.min()) < 0 or int(self.y.max()) >= len(self.class_names)):
            raise ValueError("labels must lie in 0..len(class_names) - 1")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def select_classes(self, keep: Sequence[int]) -> "LabelledData":
        """The subset of these classes, in the order given, relabelled ``0..len(keep) - 1``."""
        keep = list(keep)
        remap = torch.full((self.num_classes,), -1, dtype=torch.long)
        remap[torch.as_tensor(keep, dtype=torch.long)] = torch.arange(len(keep))
        new_y = remap[self.y]
        mask = new_y >= 0
        return LabelledData(
            x=self.x[mask],
            y=new_y[mask],
            class_names=tuple(self.class_names[i] for i in keep),
            class_groups=tuple(self.class_groups[i] for i in keep),
        )

    def select_groups(self, groups: Sequence[str]) -> "LabelledData":
        """The classes whose group is in ``groups`` (class order kept)."""
        wanted = set(groups)
        unknown = wanted - set(self.class_groups)
        if unknown:
            raise ValueError(f"unknown groups {sorted(unknown)}; known: {sorted(set(self.class_groups))}")
        return self.select_classes([i for i, g in enumerate(self.class_groups) if g in wanted])

    @property
    def groups(self) -> list[str]:
        """Distinct groups, sorted."""
        return sorted(set(self.class_groups))
