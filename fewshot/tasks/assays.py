"""Few-shot episodes from binary assays: stratified support sets, the rest (or a fixed number) as query.

Labels are ``0`` = inactive and ``1`` = active (two "ways", the same meaning in every episode).
The support set holds ``(positives, negatives)`` molecules given by a :class:`SupportSpec`:
explicit counts (the Tox21 protocol of Altae-Tran et al. 2017: 10+/10-, 5+/10-, 1+/10-, 1+/5-,
1+/1-) or a total size stratified by the task's active fraction (FS-Mol: the positives are
``round(size * active fraction)``, kept within ``1..size-1``, as sklearn's ``StratifiedShuffleSplit``
that FS-Mol uses allocates them up to rounding). The query set is the rest of the task
(evaluation), a fixed number of molecules stratified the same way (training, equal shapes), or
-- ``ragged`` -- up to that number: a task with fewer molecules left after its support set uses
them all (FS-Mol's training sampler, whose tasks are mostly smaller than its 256 queries).

Every episode is a function of ``(seed, index)`` only (:func:`~fewshot.tasks.seeding.generator`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from fewshot.datasets.molecules import Assay, AssayData
from fewshot.tasks.episode import Episode
from fewshot.tasks.pretrain import epoch_batch
from fewshot.tasks.seeding import generator

METRICS = ("delta_auprc", "roc_auc")


@dataclass(frozen=True)
class SupportSpec:
    """A support set: ``size`` molecules stratified by the task's active fraction, or exactly ``positives``
    actives and ``negatives`` inactives."""

    size: int | None = None
    positives: int | None = None
    negatives: int | None = None

    def __post_init__(self) -> None:
        explicit = self.positives is not None or self.negatives is not None
        if explicit == (self.size is not None):
            raise ValueError("give a support size, or positives and negatives, not both")
        if explicit and not (isinstance(self.positives, int) and isinstance(self.negatives, int)
                             and self.positives >= 1 and self.negatives >= 1):
            raise ValueError(f"support positives and negatives must both be integers >= 1, got "
                             f"{self.positives!r} and {self.negatives!r}")
        if not explicit and not (isinstance(self.size, int) and self.size >= 2):
            raise ValueError(f"support size must be an integer >= 2 (one active and one inactive), got {self.size!r}")

    def counts(self, assay: Assay) -> tuple[int, int]:
        """``(positives, negatives)`` of this task's support set."""
        if self.size is None:
            return self.positives, self.negatives
        return stratified(self.size, assay.positives, len(assay.labels))

    def describe(self) -> str:
        return f"{self.size} stratified" if self.size is not None else f"{self.positives}+/{self.negatives}-"


def stratified(size: int, positives: int, total: int) -> tuple[int, int]:
    """``(p, size - p)`` with ``p = round(size * positives / total)`` (halves up), kept within ``1..size-1``."""
    p = math.floor(size * positives / total + 0.5)
    p = min(max(p, 1), size - 1)
    return p, size - p


class AssayTasks(Dataset):
    """Episodes over the tasks of ``data`` (which must carry features).

    Args:
        data: assays with a feature store (:func:`~fewshot.datasets.molecules.load_assays`).
        support: the support set's composition.
        queries: ``None``: the rest of the task is the query set (needs ``draws``); an integer:
            that many query molecules, stratified like the support set.
        ragged: ``queries`` is an upper bound: a task whose support set leaves no more than ``queries``
            molecules uses all of them as query (episodes then differ in size).
        draws: a finite source of ``draws`` episodes per task, episode ``i`` from task
            ``i // draws`` (evaluation: FS-Mol draws 10 per task, the Tox21 protocol 20);
            ``None``: an endless training stream whose episode ``i`` draws its task uniformly.
        seed: the stream's seed.
        metric: the evaluation metric, ``"delta_auprc"`` (FS-Mol) or ``"roc_auc"``.

    Tasks too small for the support and query sets asked for (they need one molecule of each
    class left for the query) are skipped with a warning naming them (:attr:`skipped`).
    """

    kind = "assay"

    def __init__(self, data: AssayData, support: SupportSpec, queries: int | None = None, draws: int | None = None,
                 seed: int = 0, metric: str = "delta_auprc", ragged: bool = False):
        if data.features is None:
            raise ValueError("AssayTasks needs featurized assays: load them with fewshot.datasets.molecules.load_assays")
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
        if queries is None and draws is None:
            raise ValueError("the rest of each task as query (queries=None) needs a finite number of draws per task")
        if queries is not None and not (isinstance(queries, int) and queries >= 2):
            raise ValueError(f"queries must be an integer >= 2 (one active and one inactive), got {queries!r}")
        if draws is not None and not (isinstance(draws, int) and draws >= 1):
            raise ValueError(f"draws must be an integer >= 1, got {draws!r}")
        if ragged and queries is None:
            raise ValueError("ragged query sets need an upper bound: give queries")
        self.data, self.support, self.queries, self.draws, self.seed, self.metric, self.ragged = \
            data, support, queries, draws, seed, metric, ragged
        self.assays: list[Assay] = []
        self.skipped: list[str] = []
        for a in data.assays:
            (self.assays if self._fits(a) else self.skipped).append(a)
        if self.skipped:
            names = [a.name for a in self.skipped]
            warnings.warn(f"{data.source}: {len(names)} of {len(data.assays)} tasks have too few actives or inactives "
                          f"for a {support.describe()} support set and a query set, skipped: {', '.join(names[:20])}"
                          f"{' ...' if len(names) > 20 else ''}", stacklevel=2)
            self.skipped = names
        if not self.assays:
            raise ValueError(f"{data.source}: no task is large enough for a {support.describe()} support set "
                             f"and {queries or 'a'} query set; lower the support size")

    def _query_counts(self, assay: Assay) -> tuple[int, int]:
        """``(positives, negatives)`` of the query set (the rest of the task when ``queries`` is None)."""
        s_pos, s_neg = self.support.counts(assay)
        rest_pos, rest_neg = assay.positives - s_pos, assay.negatives - s_neg
        if self.queries is None or (self.ragged and rest_pos + rest_neg <= self.queries):
            return rest_pos, rest_neg
        q_pos, q_neg = stratified(self.queries, assay.positives, len(assay.labels))
        if self.ragged:   # stratified up to rounding, within what the support set leaves
            q_pos = min(max(q_pos, self.queries - rest_neg), rest_pos)
            q_neg = self.queries - q_pos
        return q_pos, q_neg

    def _fits(self, assay: Assay) -> bool:
        (s_pos, s_neg), (q_pos, q_neg) = self.support.counts(assay), self._query_counts(assay)
        return q_pos >= 1 and q_neg >= 1 and assay.positives >= s_pos + q_pos and assay.negatives >= s_neg + q_neg

    def __len__(self) -> int:
        return len(self.assays) * self.draws if self.draws is not None else 10**9

    @property
    def pretrain_classes(self) -> int:
        """Two per task, inactive and active (the fine-tune baseline's pretraining head)."""
        return 2 * len(self.data.assays)

    def pretrain_batches(self, batch_size: int) -> "AssayPretrainBatches":
        """Supervised minibatches over every measurement of these tasks (class ``2 * task + label``), seeded
        like the episodes."""
        return AssayPretrainBatches(self.data, batch_size, seed=self.seed)

    def episode_task(self, index: int) -> str:
        """The name of the task episode ``index`` is drawn from."""
        return self._assay(index, generator(self.seed, index)).name

    def _assay(self, index: int, g: torch.Generator) -> Assay:
        if not 0 <= index < len(self):
            raise IndexError(f"episode {index} out of range 0..{len(self) - 1}")
        if self.draws is not None:
            return self.assays[index // self.draws]
        return self.assays[int(torch.randint(len(self.assays), (1,), generator=g))]

    def draw(self, index: int) -> tuple[Assay, torch.Tensor, torch.Tensor]:
        """``(task, support positions, query positions)`` of episode ``index``: positions into the task's
        ``molecules``/``labels``, support first its positives then its negatives."""
        g = generator(self.seed, index)
        assay = self._assay(index, g)
        (s_pos, s_neg), (q_pos, q_neg) = self.support.counts(assay), self._query_counts(assay)
        pos = torch.nonzero(assay.labels == 1).flatten()
        neg = torch.nonzero(assay.labels == 0).flatten()
        pos, neg = pos[torch.randperm(len(pos), generator=g)], neg[torch.randperm(len(neg), generator=g)]
        support = torch.cat([pos[:s_pos], neg[:s_neg]])
        query = torch.cat([pos[s_pos:s_pos + q_pos], neg[s_neg:s_neg + q_neg]])
        return assay, support, query[torch.randperm(len(query), generator=g)]

    def __getitem__(self, index: int) -> Episode:
        assay, support, query = self.draw(index)
        rows = self.data.features.rows
        return Episode(rows(assay.molecules[support]), assay.labels[support],
                       rows(assay.molecules[query]), assay.labels[query])


class AssayPretrainBatches(Dataset):
    """Supervised minibatches over every measurement of ``data``, dressed as episodes (the training stream of the
    fine-tune baseline): item ``i`` is ``Episode(x [B, ...], y [B], x[:0], y[:0])`` with class ``2 * t + label``
    for a measurement in task ``t`` (``2 * len(data.assays)`` classes: which assay, and whether active in it).

    Batch ``i`` is slice ``i mod E`` of epoch ``i // E``'s permutation of the measurements, drawn from
    ``(seed, epoch)`` (:func:`~fewshot.tasks.pretrain.epoch_batch`, as for images).
    """

    def __init__(self, data: AssayData, batch_size: int, seed: int = 0):
        if data.features is None:
            raise ValueError("AssayPretrainBatches needs featurized assays (load_assays)")
        self.molecules = torch.cat([a.molecules for a in data.assays])
        self.classes = torch.cat([2 * t + a.labels for t, a in enumerate(data.assays)])
        if not (isinstance(batch_size, int) and 1 <= batch_size <= len(self.molecules)):
            raise ValueError(f"batch_size must be an integer in 1..{len(self.molecules)}, got {batch_size!r}")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.num_classes = 2 * len(data.assays)

    def __len__(self) -> int:
        return 10**9

    def __getitem__(self, index: int) -> Episode:
        idx = epoch_batch(len(self.molecules), self.batch_size, self.seed, index)
        x, y = self.data.features.rows(self.molecules[idx]), self.classes[idx]
        return Episode(x, y, x[:0], y[:0])
