"""Binary assays over molecules: Tox21, SIDER, MUV, ToxCast and FS-Mol, read from a data root.

Layout under the data root (see ``shared/data/SOURCES.md``)::

    tox21/tox21.csv  sider/sider.csv  muv/muv.csv.gz  toxcast/toxcast.csv.gz
        "wide" tables: first column SMILES, one column per task, labels 0/1, empty = not measured
    fsmol/fsmol_{train,valid,test}.csv.gz
        "long" tables: columns task, smiles, label ("0.0"/"1.0"), ... (one row per measurement)
    fsmol/fsmol-0.1.json
        the official FS-Mol task split {"train": [...], "valid": [...], "test": [...]}

A dataset is an :class:`AssayData`: its unique SMILES and, per task, the positions of the
molecules measured and their labels (1 = active, 0 = inactive). :func:`load_assays` also
featurizes the molecules (:mod:`fewshot.datasets.featurize`), drops those RDKit cannot read
(with a warning giving their number and first examples), and reports tasks left without
molecules or recovered only by partial sanitization by name.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fewshot.datasets.featurize import FeaturizerSpec, featurize

#: The table of each dataset, relative to the data root (FS-Mol: one file per split).
TABLES = {"tox21": "tox21/tox21.csv", "sider": "sider/sider.csv", "muv": "muv/muv.csv.gz",
          "toxcast": "toxcast/toxcast.csv.gz"}
FSMOL_SPLITS = ("train", "valid", "test")
MOLECULE_DATASETS = ("fsmol",) + tuple(TABLES)
#: Test tasks of the few-shot protocols on the MoleculeNet sets: the last columns of each table, as in
#: Altae-Tran et al. 2017 (Tox21: SR-HSE, SR-MMP, SR-p53; SIDER: the last 6; MUV: the last 5) and the
#: 450/167 ToxCast split of later work.
TEST_TASK_COUNT = {"tox21": 3, "sider": 6, "muv": 5, "toxcast": 167}


@dataclass(frozen=True)
class Assay:
    """One binary task: ``molecules [n]`` (positions in :attr:`AssayData.smiles`) and ``labels [n]`` (0/1, int64)."""

    name: str
    molecules: torch.Tensor
    labels: torch.Tensor

    @property
    def positives(self) -> int:
        return int(self.labels.sum())

    @property
    def negatives(self) -> int:
        return len(self.labels) - self.positives


@dataclass(frozen=True)
class AssayData:
    """Tasks over a shared pool of molecules (``smiles``, unique), optionally with their features."""

    smiles: tuple[str, ...]
    assays: tuple[Assay, ...]
    source: str = ""
    features: object = None    # a feature store (``rows(idx [B]) -> [B, ...]``) once featurized

    @property
    def task_names(self) -> list[str]:
        return [a.name for a in self.assays]

    def select(self, names: Sequence[str]) -> "AssayData":
        """The tasks named, in the order given (the molecule pool is shared)."""
        by_name = {a.name: a for a in self.assays}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"{self.source}: unknown tasks {missing[:5]}; known tasks include {self.task_names[:5]}")
        return AssayData(self.smiles, tuple(by_name[n] for n in names), self.source, self.features)


def _open_text(path: Path) -> io.TextIOBase:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return gzip.open(path, "rt", newline="") if path.suffix == ".gz" else open(path, newline="")


def _build(smiles_of_rows: list[str], per_task: dict[str, tuple[list[int], list[int]]], source: str) -> AssayData:
    """Assays from rows of SMILES and, per task, (row positions, labels)."""
    unique = sorted(set(smiles_of_rows))
    position = {s: i for i, s in enumerate(unique)}
    mol_of_row = [position[s] for s in smiles_of_rows]
    assays = tuple(Assay(name, torch.tensor([mol_of_row[r] for r in rows], dtype=torch.long),
                         torch.tensor(labels, dtype=torch.long))
                   for name, (rows, labels) in per_task.items())
    return AssayData(tuple(unique), assays, source)


def _label(text: str, path: Path, line: int) -> int | None:
    text = text.strip()
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path}, line {line}: label {text!r} is not 0, 1 or empty") from None
    if value not in (0.0, 1.0):
        raise ValueError(f"{path}, line {line}: label {text!r} is not 0, 1 or empty")
    return int(value)


def read_table(path: str | Path) -> AssayData:
    """A wide CSV (first column SMILES, then one 0/1/empty column per task); ``.gz`` is decompressed."""
    path = Path(path)
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or len(header) < 2:
            raise ValueError(f"{path}: expected a header 'smiles,<task>,...' with at least one task column")
        tasks = header[1:]
        per_task: dict[str, tuple[list[int], list[int]]] = {t: ([], []) for t in tasks}
        smiles: list[str] = []
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise ValueError(f"{path}, line {line}: {len(row)} fields, expected {len(header)}")
            smiles.append(row[0].strip())
            for t, text in zip(tasks, row[1:]):
                value = _label(text, path, line)
                if value is not None:
                    per_task[t][0].append(len(smiles) - 1)
                    per_task[t][1].append(value)
    return _build(smiles, per_task, str(path))


def read_fsmol(path: str | Path, tasks: Sequence[str] | None = None) -> AssayData:
    """A long FS-Mol CSV (columns ``task``, ``smiles``, ``label``, ...), restricted to ``tasks`` if given."""
    path = Path(path)
    wanted = set(tasks) if tasks is not None else None
    per_task: dict[str, tuple[list[int], list[int]]] = {}
    smiles: list[str] = []
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        if not {"task", "smiles", "label"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: expected columns task, smiles, label; got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            if wanted is not None and row["task"] not in wanted:
                continue
            value = _label(row["label"], path, line)
            if value is None:
                raise ValueError(f"{path}, line {line}: missing label")
            smiles.append(row["smiles"].strip())
            rows, labels = per_task.setdefault(row["task"], ([], []))
            rows.append(len(smiles) - 1)
            labels.append(value)
    return _build(smiles, dict(sorted(per_task.items())), str(path))


def fsmol_path(data_root: str | Path, split: str) -> Path:
    """``DATA_ROOT/fsmol/fsmol_<split>.csv.gz``, or a FileNotFoundError saying how to provide it."""
    if split not in FSMOL_SPLITS:
        raise ValueError(f"unknown FS-Mol split {split!r}; choose one of {', '.join(FSMOL_SPLITS)}")
    path = Path(data_root) / "fsmol" / f"fsmol_{split}.csv.gz"
    if not path.is_file():
        hint = (" The FS-Mol test tasks are not among the shared files: convert the 157 test tasks of the official "
                "release (https://github.com/microsoft/FS-Mol, datasets/test) to this CSV layout (columns task, smiles, "
                "label, ...) and put the file there." if split == "test" else "")
        raise FileNotFoundError(f"FS-Mol {split} file {path} not found; pass --data-root DIR holding "
                                f"fsmol/fsmol_{split}.csv.gz.{hint}")
    return path


def fsmol_split(data_root: str | Path) -> dict[str, list[str]]:
    """The official task split ``DATA_ROOT/fsmol/fsmol-0.1.json``."""
    path = Path(data_root) / "fsmol" / "fsmol-0.1.json"
    if not path.is_file():
        raise FileNotFoundError(f"FS-Mol task split {path} not found; pass --data-root DIR holding fsmol/fsmol-0.1.json")
    split = json.loads(path.read_text())
    if not isinstance(split, dict) or not all(isinstance(split.get(k), list) for k in FSMOL_SPLITS):
        raise ValueError(f"{path} must hold lists 'train', 'valid' and 'test' of task ids")
    return split


def read_dataset(dataset: str, data_root: str | Path, split: str | None = None) -> AssayData:
    """The raw assays of ``dataset`` (FS-Mol: of ``split``, restricted to the official task list)."""
    if dataset == "fsmol":
        split = split or "train"
        path = fsmol_path(data_root, split)
        official = fsmol_split(data_root)[split]
        data = read_fsmol(path, official)
        absent = len(set(official) - set(data.task_names))
        if absent:
            warnings.warn(f"{path}: {absent} of the {len(official)} {split} tasks of fsmol-0.1.json are not in the file",
                          stacklevel=2)
        return data
    if dataset not in TABLES:
        raise ValueError(f"unknown molecule dataset {dataset!r}; choose one of {', '.join(MOLECULE_DATASETS)}")
    path = Path(data_root) / TABLES[dataset]
    if not path.is_file():
        raise FileNotFoundError(f"{dataset} table {path} not found; pass --data-root DIR holding {TABLES[dataset]}")
    return read_table(path)


def load_assays(dataset: str, data_root: str | Path, spec: FeaturizerSpec, split: str | None = None,
                cache_dir: str | Path | None = None) -> AssayData:
    """Read ``dataset``, featurize its molecules (cached) and drop those RDKit cannot read, with warnings.

    FS-Mol's valid and test descriptors are standardised with the training file's statistics (featurizing the
    training file first when its cache is absent), so that a model sees every split on one scale.
    """
    raw = read_dataset(dataset, data_root, split)
    scale = None
    if dataset == "fsmol" and (split or "train") != "train" and spec.kind == "ecfp+desc":
        scale = featurize(read_dataset("fsmol", data_root, "train").smiles, spec, "fsmol-train", cache_dir).scale
    name = f"{dataset}-{split}" if dataset == "fsmol" else dataset
    return attach_features(raw, spec, name, cache_dir, scale)


def attach_features(raw: AssayData, spec: FeaturizerSpec, name: str, cache_dir: str | Path | None = None,
                    scale: tuple[np.ndarray, np.ndarray] | None = None) -> AssayData:
    """``raw`` with features (descriptors standardised with ``scale``, default their own statistics); unreadable
    molecules removed from every task and reported."""
    done = featurize(raw.smiles, spec, name, cache_dir, scale)
    bad = torch.zeros(len(raw.smiles), dtype=torch.bool)
    bad[list(done.invalid)] = True
    recovered = torch.zeros(len(raw.smiles), dtype=torch.bool)
    recovered[list(done.recovered)] = True
    if done.invalid:
        examples = ", ".join(raw.smiles[i] for i in done.invalid[:3])
        warnings.warn(f"{raw.source}: {len(done.invalid)} of {len(raw.smiles)} SMILES could not be read by RDKit and "
                      f"were skipped (e.g. {examples})", stacklevel=2)
    if done.recovered:
        touched = sorted(a.name for a in raw.assays if bool(recovered[a.molecules].any()))
        whole = sorted(a.name for a in raw.assays if bool(recovered[a.molecules].all()))
        entirely = (f", {len(whole)} of which consist of them entirely: {', '.join(whole[:30])}"
                    f"{' ...' if len(whole) > 30 else ''}" if whole else "")
        warnings.warn(f"{raw.source}: {len(done.recovered)} SMILES were read only with partial sanitization (no valence "
                      f"check; e.g. {raw.smiles[done.recovered[0]]}) and kept; they occur in {len(touched)} tasks"
                      f"{entirely}", stacklevel=2)
    assays, emptied = [], []
    for a in raw.assays:
        keep = ~bad[a.molecules]
        if not bool(keep.any()):
            emptied.append(a.name)
            continue
        assays.append(Assay(a.name, a.molecules[keep], a.labels[keep]))
    if emptied:
        warnings.warn(f"{raw.source}: tasks left without readable molecules, skipped: {', '.join(emptied)}",
                      stacklevel=2)
    return AssayData(raw.smiles, tuple(assays), raw.source, done.features)
