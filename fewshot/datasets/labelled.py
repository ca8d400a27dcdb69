"""Labelled examples: what every episode sampler draws from.

:class:`LabelledData` holds its inputs in memory (Omniglot, image folders, a user's tensors or NumPy
arrays); :class:`DatasetExamples` reads a user's map-style ``torch.utils.data.Dataset`` lazily, loading only
the examples an episode draws. Both answer ``y``, ``num_classes``, ``class_names``, ``class_groups`` and
``take(indices)``; :func:`as_examples` turns whatever a user passes into one of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    """``value`` as a tensor; NumPy's float64 (its default) becomes float32, torch's default."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(value))
        return tensor.float() if tensor.dtype == torch.float64 else tensor
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{what} must be a tensor, a NumPy array or a number, got {type(value).__name__}; give "
                         "the dataset a transform that returns tensors (an image as [C, H, W] floats)") from None


def _class_labels(y: torch.Tensor, what: str) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Labels ``[M]`` of any integer values remapped to ``0..C-1`` in sorted order, and the original values as
    class names."""
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"{what} must be integer class labels of shape [M], got dtype {y.dtype} and shape "
                         f"{tuple(y.shape)}")
    values, remapped = torch.unique(y.long(), sorted=True, return_inverse=True)
    return remapped, tuple(str(int(v)) for v in values)


class _Labels:
    """What both kinds of examples answer from their labels ``y [M]`` and ``class_names``."""

    y: torch.Tensor
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class LabelledData(_Labels):
    """Examples with integer class labels, held in memory.

    Attributes:
        x: inputs, ``[M, ...]`` (images are ``uint8`` ``[M, C, H, W]``; they are turned into ``float32`` in
            ``[0, 1]`` when an episode is drawn). A NumPy array is taken as it is.
        y: class ids ``[M]`` (``int64``), each in ``0..num_classes - 1``.
        class_names: a unique, human-readable name per class, e.g. ``"Greek/character03/rot090"``
            (default: ``"0"``, ``"1"``, ...).
        class_groups: the group each class belongs to (the Omniglot alphabet), one per class, or ``None``
            when the data has no groups; within-group episodes need them.
    """

    x: torch.Tensor
    y: torch.Tensor
    class_names: tuple[str, ...] | None = None
    class_groups: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "x", _as_tensor(self.x, "x"))
        y = _as_tensor(self.y, "y")
        if y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(f"y must be integer class labels of shape [M], got dtype {y.dtype} and shape "
                             f"{tuple(y.shape)}")
        object.__setattr__(self, "y", y.long())
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} examples but y has {self.y.shape[0]} labels")
        if self.class_names is None:
            count = int(self.y.max()) + 1 if self.y.numel() else 0
            object.__setattr__(self, "class_names", tuple(str(c) for c in range(count)))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.class_groups is not None:
            object.__setattr__(self, "class_groups", tuple(self.class_groups))
            if len(self.class_names) != len(self.class_groups):
                raise ValueError("class_names and class_groups must have one entry per class")
        if self.y.numel() and (int(self.y.min()) < 0 or int(self.y.max()) >= len(self.class_names)):
            raise ValueError("labels must lie in 0..len(class_names) - 1")

    @classmethod
    def from_arrays(cls, x: Any, y: Any) -> "LabelledData":
        """Inputs ``[M, ...]`` and integer labels ``[M]`` of any values (tensors or NumPy arrays); labels are
        remapped to ``0..C-1`` in sorted order and their values kept as class names."""
        labels, names = _class_labels(_as_tensor(y, "y"), "y")
        return cls(_as_tensor(x, "x"), labels, names)

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        """The inputs of examples ``indices [n]``: ``[n, ...]``, on the device the inputs are held on."""
        return self.x[indices.to(self.x.device)]

    def to(self, device: torch.device | str) -> "LabelledData":
        """These examples with the inputs held on ``device`` (labels stay on the CPU, where episodes are drawn)."""
        return dataclasses.replace(self, x=self.x.to(device))

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
            class_groups=None if self.class_groups is None else tuple(self.class_groups[i] for i in keep),
        )

    def select_groups(self, groups: Sequence[str]) -> "LabelledData":
        """The classes whose group is in ``groups`` (class order kept)."""
        if self.class_groups is None:
            raise ValueError("this data has no class groups; pass class_groups to select by group")
        wanted = set(groups)
        unknown = wanted - set(self.class_groups)
        if unknown:
            raise ValueError(f"unknown groups {sorted(unknown)}; known: {sorted(set(self.class_groups))}")
        return self.select_classes([i for i, g in enumerate(self.class_groups) if g in wanted])

    @property
    def groups(self) -> list[str]:
        """Distinct groups, sorted (none without class groups)."""
        return sorted(set(self.class_groups or ()))


@dataclass(frozen=True)
class DatasetExamples(_Labels):
    """A map-style dataset whose items are ``(x, y)`` pairs, read lazily: only the examples an episode draws
    are loaded. Labels come from ``dataset.targets`` when it has them, else from one pass over the items;
    they may be any integers (remapped to ``0..C-1`` in sorted order; class names are the original values,
    or ``dataset.classes[value]`` when the dataset has that list).

    Attributes:
        dataset: the dataset.
        y: class ids ``[M]`` in ``0..num_classes - 1``.
        class_names: one per class.
        class_groups: ``None`` (a plain dataset has no groups).
    """

    dataset: Dataset
    y: torch.Tensor = field(init=False)
    class_names: tuple[str, ...] = field(init=False)
    class_groups: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        try:
            size = len(self.dataset)
        except TypeError:
            raise ValueError(f"{type(self.dataset).__name__} has no len(): episodes need a map-style dataset "
                             "(with __len__ and __getitem__), not an iterable one") from None
        if size == 0:
            raise ValueError(f"{type(self.dataset).__name__} is empty")
        targets = getattr(self.dataset, "targets", None)
        if targets is None:
            targets = [self._label(i) for i in range(size)]
        labels = _as_tensor(targets if not isinstance(targets, list) else torch.tensor(targets), "dataset.targets")
        if labels.shape != (size,):
            raise ValueError(f"dataset.targets has shape {tuple(labels.shape)}, not one label per item ({size})")
        y, names = _class_labels(labels, "the dataset's labels")
        classes = getattr(self.dataset, "classes", None)
        if isinstance(classes, (list, tuple)) and all(0 <= int(n) < len(classes) for n in names):
            names = tuple(str(classes[int(n)]) for n in names)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "class_names", names)

    def _label(self, index: int) -> int:
        item = self.dataset[index]
        if not (isinstance(item, (tuple, list)) and len(item) >= 2):
            raise ValueError(f"item {index} of {type(self.dataset).__name__} is a {type(item).__name__}; episodes "
                             "need items (x, y) with an integer label y")
        label = item[1]
        if isinstance(label, torch.Tensor) and label.numel() == 1:
            label = label.item()
        if isinstance(label, np.generic):
            label = label.item()
        if not isinstance(label, int) or isinstance(label, bool):
            raise ValueError(f"item {index} of {type(self.dataset).__name__} has label {label!r}; episodes need "
                             "integer class labels")
        return label

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        """The inputs of examples ``indices [n]``, loaded now and stacked: ``[n, ...]``."""
        inputs = [_as_tensor(self.dataset[int(i)][0], f"the input of item {int(i)}") for i in indices]
        shapes = {tuple(x.shape) for x in inputs}
        if len(shapes) > 1:
            raise ValueError(f"the dataset's inputs differ in shape ({sorted(shapes)[:2]}); resize them to one "
                             "shape in the dataset (e.g. a transform) so that an episode can be stacked")
        return torch.stack(inputs)


Examples = LabelledData | DatasetExamples


def as_examples(data: Any) -> Examples:
    """:class:`LabelledData` or :class:`DatasetExamples` from what a user passes: either of those, a pair
    ``(x, y)`` of tensors or NumPy arrays, or a map-style dataset of ``(x, y)`` items."""
    if isinstance(data, (LabelledData, DatasetExamples)):
        return data
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(v, (torch.Tensor, np.ndarray)) for v in data):
        return LabelledData.from_arrays(*data)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return DatasetExamples(data)
    raise ValueError(f"cannot draw episodes from a {type(data).__name__}: pass a map-style Dataset of (x, y) items, "
                     "a pair (x, y) of tensors or NumPy arrays, or LabelledData")
