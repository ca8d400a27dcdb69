"""The proxy oracle that judges proposed molecules, and the support files of held-out assays.

Nobody can measure a proposed molecule here, so proposals are judged, as GuacaMol-style benchmarks do, by a
*proxy*: a random forest (500 trees, ECFP radius 2, 2048 bits) trained on **all** of a held-out assay's
measurements, which the generator never sees (it is built after the proposals are fixed). Its probability of
activity is a model's opinion, not a measurement. The assay's own molecules are scored out of bag (by the trees
that did not train on them), so that a measured molecule is scored as a new one would be, not from memory.

``python -m fewshot.drug.oracle --data-root DIR --split valid --task CHEMBL... --out support.csv`` writes a seeded
stratified support set of an FS-Mol assay (``smiles,label``) for ``fewshot design --support``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fewshot.datasets.featurize import FeaturizerSpec, MissingDependency
from fewshot.datasets.molecules import load_assays
from fewshot.drug.properties import canonical, features
from fewshot.tasks.assays import AssayTasks, SupportSpec

ORACLE_SPEC = FeaturizerSpec("ecfp", 2, 2048, counts=False)


class ProxyOracle:
    """A random forest fitted on ``smiles [n]`` with labels ``[n]`` (0/1) of one assay (module docstring)."""

    def __init__(self, smiles: Sequence[str], labels: Sequence[int], trees: int = 500, seed: int = 0):
        try:
            from sklearn.ensemble import RandomForestClassifier
        except ImportError:
            raise MissingDependency("the proxy oracle needs scikit-learn: pip install -e '.[chem]'") from None
        y = np.asarray(labels, dtype=np.int64)
        if len(set(y.tolist())) != 2:
            raise ValueError("the proxy oracle needs actives and inactives among the assay's measurements")
        self.known = {canonical(s): i for i, s in enumerate(smiles)}
        self.forest = RandomForestClassifier(n_estimators=trees, oob_score=True, random_state=seed, n_jobs=1)
        self.forest.fit(features(smiles, ORACLE_SPEC).numpy(), y)
        self.oob = self.forest.oob_decision_function_[:, 1]

    def score(self, smiles: Sequence[str]) -> np.ndarray:
        """The oracle's probability of activity ``[n]``: out of bag for the assay's own molecules."""
        out = np.zeros(len(smiles))
        new = [k for k, s in enumerate(smiles) if canonical(s) not in self.known]
        for k, s in enumerate(smiles):
            if k not in new:
                out[k] = self.oob[self.known[canonical(s)]]
        if new:
            out[new] = self.forest.predict_proba(features([smiles[k] for k in new], ORACLE_SPEC).numpy())[:, 1]
        return out


def assay_measurements(data_root: str, split: str, task: str) -> tuple[list[str], list[int]]:
    """``(smiles, labels)`` of FS-Mol assay ``task`` of ``split`` (molecules RDKit reads)."""
    data = load_assays("fsmol", data_root, FeaturizerSpec(), split)
    assay = data.select([task]).assays[0]
    return [data.smiles[i] for i in assay.molecules.tolist()], assay.labels.tolist()


def support_rows(data_root: str, split: str, task: str, size: int = 16, seed: int = 0) -> list[tuple[str, int]]:
    """A stratified support set of ``size`` molecules of FS-Mol assay ``task``, drawn as the evaluation draws its
    first episode with seed ``seed``: ``[(smiles, label)]``."""
    data = load_assays("fsmol", data_root, FeaturizerSpec(), split).select([task])
    tasks = AssayTasks(data, SupportSpec(size=size), draws=1, seed=seed)
    assay, support, _ = tasks.draw(0)
    return [(data.smiles[int(assay.molecules[i])], int(assay.labels[i])) for i in support.tolist()]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fewshot.drug.oracle",
                                description="write a stratified support set of an FS-Mol assay as smiles,label CSV")
    p.add_argument("--data-root", required=True)
    p.add_argument("--split", default="valid")
    p.add_argument("--task", required=True)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        rows = support_rows(args.data_root, args.split, args.task, args.size, args.seed)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["smiles", "label"])
        writer.writerows(rows)
    print(args.out)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
