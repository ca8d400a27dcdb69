"""Active selection on held-out assays: which molecules to measure next, round by round.

For one assay and one seeded stratified starting support set (:meth:`fewshot.tasks.assays.AssayTasks.draw`), each
of ``rounds`` rounds adapts a model to the molecules measured so far, scores the assay's other molecules, picks
``batch`` of them by the acquisition (:mod:`fewshot.drug.acquisition`), measures them -- the simulated experiment:
:class:`Experiment` reveals the labels of the molecules asked for and of no other -- and adds them to the support
set. Three pickers see the same starting support sets: the meta-trained learner, a random forest on ECFP bits
refitted every round (same acquisition, its uncertainty the trees' spread) and random picks.

Scores, per draw: the hit rate of each round's picks (actives / ``batch``), of all picks, and the cumulative
actives found; per assay the mean over draws, beside the assay's active fraction among the molecules that could
be picked (what random picks find on average) and the enrichment, hit rate / active fraction; over assays the
mean and standard error.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from fewshot.drug.acquisition import ACQUISITIONS, Moments, acquisition_scores, learner_moments, top
from fewshot.evaluate import mean_stderr
from fewshot.files import atomic_write
from fewshot.learners.base import Learner
from fewshot.learners.forest import RandomForest
from fewshot.progress import progress_bar
from fewshot.tasks.assays import AssayTasks
from fewshot.tasks.seeding import generator

PICKERS = ("model", "forest", "random")
#: ``(support_x [S, F], support_y [S], candidates_x [Q, F], generator) -> Moments`` over the candidates.
Scorer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator], Moments]


class Experiment:
    """The simulated experiment on one assay: it holds the labels ``[M]`` and reveals only those asked for.

    :attr:`measured` lists every position revealed, in order; nothing else of the labels is exposed.
    """

    def __init__(self, labels: torch.Tensor):
        self._labels = labels.clone()
        self.measured: list[int] = []

    def __len__(self) -> int:
        return len(self._labels)

    def measure(self, positions: torch.Tensor) -> torch.Tensor:
        """The labels ``[B]`` of the molecules at ``positions [B]`` (recorded in :attr:`measured`)."""
        positions = positions.flatten().long()
        repeated = set(positions.tolist()) & set(self.measured)
        if repeated or len(set(positions.tolist())) != len(positions):
            raise ValueError(f"molecules {sorted(repeated)[:5]} are measured twice; pick each molecule once")
        self.measured.extend(positions.tolist())
        return self._labels[positions].clone()


@dataclass(frozen=True)
class SelectionSpec:
    """What one selection campaign does: ``rounds`` rounds of ``batch`` picks by ``acquisition`` (``beta``: UCB's
    weight on the standard deviation)."""

    rounds: int = 5
    batch: int = 8
    acquisition: str = "greedy"
    beta: float = 1.0

    def __post_init__(self) -> None:
        if self.acquisition not in ACQUISITIONS:
            raise ValueError(f"unknown acquisition {self.acquisition!r}; choose one of {', '.join(ACQUISITIONS)}")
        if self.rounds < 1 or self.batch < 1:
            raise ValueError(f"rounds and batch must be >= 1, got {self.rounds} and {self.batch}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta (UCB's weight on the standard deviation) must be a finite number >= 0, got "
                             f"{self.beta}")

    @property
    def picks(self) -> int:
        return self.rounds * self.batch


def select(scorer: Scorer | None, x: torch.Tensor, experiment: Experiment, support: torch.Tensor,
           spec: SelectionSpec, g: torch.Generator) -> list[list[int]]:
    """One campaign: the positions picked in each round ``[rounds][batch]`` (labels come from ``experiment`` only).

    Args:
        scorer: the model's belief about candidates (unused, may be None, for ``random``).
        x: features of the assay's molecules ``[M, F]``.
        experiment: reveals labels; the starting ``support [S]`` positions are measured first.
        g: the stream of the bootstrap resamples and of random picks.
    """
    measured = support.flatten().long().tolist()
    labels = experiment.measure(support)
    picks = []
    for _ in range(spec.rounds):
        taken = torch.zeros(len(x), dtype=torch.bool)
        taken[measured] = True
        pool = torch.nonzero(~taken).flatten()
        if spec.acquisition == "random":
            scores = acquisition_scores("random", Moments(torch.zeros(len(pool)), torch.zeros(len(pool))), 0.0,
                                        generator=g)
        else:
            known = torch.tensor(measured)
            belief = scorer(x[known], labels, torch.cat([x[pool], x[known]]), g)
            best = float(belief.mean[len(pool):].max())       # the best predicted activity among measured molecules
            scores = acquisition_scores(spec.acquisition, belief[: len(pool)], best, spec.beta)
        chosen = pool[top(scores, spec.batch)]
        labels = torch.cat([labels, experiment.measure(chosen)])
        measured.extend(chosen.tolist())
        picks.append(chosen.tolist())
    return picks


def learner_scorer(learner: Learner, resamples: int) -> Scorer:
    """A :data:`Scorer` from a learner (:func:`~fewshot.drug.acquisition.learner_moments`)."""
    return lambda sx, sy, qx, g: learner_moments(learner, sx, sy, qx, resamples, g)


def forest_scorer(trees: int, seed: int) -> Scorer:
    """A random forest on ECFP bits (the features' non-zero pattern), refitted on every call; its uncertainty is
    the trees' spread."""
    forest = RandomForest(trees, seed=seed)
    return lambda sx, sy, qx, g: learner_moments(forest, (sx > 0).float(), sy, (qx > 0).float())


@dataclass
class Curve:
    """Mean over draws of one picker on one assay: ``hit_rate`` of all picks, ``per_round [R]`` hit rates and
    ``cumulative [R]`` actives found by the end of each round."""

    hit_rate: float
    per_round: list[float]
    cumulative: list[float]


def _curve(hits: list[list[int]], batch: int) -> Curve:
    """Mean curve over draws from the labels of the picks ``[draws][rounds * batch]``."""
    per_draw = torch.tensor(hits, dtype=torch.float64).view(len(hits), -1, batch).sum(-1)     # [D, R] actives
    return Curve(float(per_draw.sum(1).mean() / per_draw.shape[1] / batch), (per_draw.mean(0) / batch).tolist(),
                 per_draw.cumsum(1).mean(0).tolist())


def run_assay(tasks: AssayTasks, index: int, draws: int, spec: SelectionSpec, scorers: dict[str, Scorer | None],
              seed: int) -> dict:
    """Every picker on assay ``index`` of ``tasks`` over ``draws`` starting supports (episodes ``index * draws ..``
    of ``tasks``, whose ``draws`` must be ``draws``); the assay's record (see :func:`summarise`)."""
    hits: dict[str, list[list[int]]] = {name: [] for name in scorers}
    assay = tasks.assays[index]
    x = tasks.data.features.rows(assay.molecules)
    fraction = []
    for d in range(draws):
        _, support, _ = tasks.draw(index * draws + d)
        pool = len(assay.labels) - len(support)
        fraction.append((assay.positives - int(assay.labels[support].sum())) / pool)
        for k, (name, scorer) in enumerate(scorers.items()):
            own = spec if name != "random" else SelectionSpec(spec.rounds, spec.batch, "random")
            experiment = Experiment(assay.labels)
            picks = select(scorer, x, experiment, support, own, generator(seed, index, d, k))
            hits[name].append(assay.labels[torch.tensor(picks).flatten()].tolist())
    active = sum(fraction) / draws
    record = {"task": assay.name, "molecules": len(assay.labels), "active_fraction": active}
    for name in scorers:
        curve = _curve(hits[name], spec.batch)
        record[name] = {**asdict(curve), "enrichment": curve.hit_rate / active if active > 0 else None}
    return record


def _column_mean(rows: list[list[float]]) -> list[float]:
    return torch.tensor(rows, dtype=torch.float64).mean(0).tolist()


def summarise(records: list[dict], spec: SelectionSpec) -> dict:
    """The JSON summary over assays: the model's total hit rate (mean, stderr over assays) and the same for the
    ``random`` and ``forest`` pickers, with the active fraction, enrichment, per-round hit rates, cumulative actives
    and the paired differences model - forest and model - random."""
    def block(name: str) -> dict:
        rates = [r[name]["hit_rate"] for r in records]
        mean, stderr = mean_stderr(rates)
        enrich = [r[name]["enrichment"] for r in records if r[name]["enrichment"] is not None]
        return {"mean": mean, "stderr": stderr, "enrichment": mean_stderr(enrich)[0],
                "per_round": _column_mean([r[name]["per_round"] for r in records]),
                "cumulative_actives": _column_mean([r[name]["cumulative"] for r in records])}

    model = block("model")
    summary = {"metric": "hit_rate", "mean": model["mean"], "stderr": model["stderr"], "tasks": len(records),
               "rounds": spec.rounds, "batch": spec.batch, "acquisition": spec.acquisition,
               "random": block("random"), "forest": block("forest"),
               "active_fraction": mean_stderr([r["active_fraction"] for r in records])[0],
               "enrichment": model["enrichment"], "per_round": model["per_round"],
               "cumulative_actives": model["cumulative_actives"]}
    for other in ("forest", "random"):
        diff = [r["model"]["hit_rate"] - r[other]["hit_rate"] for r in records]
        summary[f"minus_{other}"] = dict(zip(("mean", "stderr"), mean_stderr(diff)))
    return summary


def run_campaigns(tasks: AssayTasks, draws: int, spec: SelectionSpec, scorers: dict[str, Scorer | None],
                  seed: int, out: Path | None = None, settings: dict | None = None,
                  progress: bool = True) -> list[dict]:
    """:func:`run_assay` for every assay of ``tasks``; with ``out``, each assay's record is written to
    ``out/assays/<task>.json`` as it finishes and read back instead of recomputed on a rerun, whose ``settings``
    must equal those of ``out/settings.json``."""
    if out is not None:
        _check_settings(out, settings or {})
    records = []
    bar = progress_bar(range(len(tasks.assays)), desc=f"optimize {spec.acquisition}", enabled=progress,
                       every_percent=0)
    for index in bar:
        name = tasks.assays[index].name
        path = out / "assays" / f"{name}.json" if out is not None else None
        if path is not None and path.is_file():
            records.append(json.loads(path.read_text()))
            continue
        record = run_assay(tasks, index, draws, spec, scorers, seed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, (json.dumps(record) + "\n").encode())
        records.append(record)
        bar.set_postfix_str(f"{name} hit rate {record['model']['hit_rate']:.3f}")
    return records


def _check_settings(out: Path, settings: dict) -> None:
    path = out / "settings.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != settings:
            differ = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
            raise ValueError(f"{out} holds results of other settings ({', '.join(differ)} differ: "
                             f"{', '.join(f'{k}={saved.get(k)!r}' for k in differ)}); resume with the same "
                             "settings or pass a new --out directory")
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(settings, sort_keys=True) + "\n").encode())
