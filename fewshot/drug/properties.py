"""Drug-likeness of molecules: QED, synthetic accessibility, property ranges; canonical SMILES and features.

- **QED**: the quantitative estimate of drug-likeness (Bickerton et al. 2012), ``rdkit.Chem.QED.qed``, 0..1.
- **SA score**: the synthetic accessibility score of Ertl & Schuffenhauer (2009), 1 (easy) .. 10 (hard), from the
  ``sascorer`` module RDKit ships in ``RDConfig.RDContribDir/SA_Score`` (with its fragment scores
  ``fpscores.pkl.gz``); without it, :func:`sa_score` says so.
- **Ranges**: molecular weight (``Descriptors.MolWt``) and Crippen logP (``Crippen.MolLogP``).

:class:`Constraints` holds the bounds a proposed molecule must meet (defaults: QED >= 0.4, SA <= 4.5,
MW 200..500, logP -1..5, the Lipinski ranges).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch

from fewshot.datasets.featurize import FeaturizerSpec, _assemble, _compute, parse_smiles, require_rdkit


@lru_cache(maxsize=1)
def _sascorer():
    """RDKit Contrib's ``sascorer`` module, loaded from its file (no ``sys.path`` change)."""
    require_rdkit()
    from rdkit.Chem import RDConfig

    path = Path(RDConfig.RDContribDir) / "SA_Score" / "sascorer.py"
    if not path.is_file():
        raise ValueError(f"the synthetic accessibility score needs RDKit Contrib's SA_Score ({path} is absent); "
                         "install an RDKit build that ships Contrib (the PyPI rdkit wheel does)")
    spec = importlib.util.spec_from_file_location("fewshot_sascorer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sa_score(mol) -> float:
    """Synthetic accessibility of an RDKit molecule, 1 (easy) .. 10 (hard)."""
    return float(_sascorer().calculateScore(mol))


def properties(mol) -> dict[str, float]:
    """``{"qed", "sa", "mw", "logp"}`` of an RDKit molecule."""
    require_rdkit()
    from rdkit.Chem import QED, Crippen, Descriptors

    return {"qed": float(QED.qed(mol)), "sa": sa_score(mol), "mw": float(Descriptors.MolWt(mol)),
            "logp": float(Crippen.MolLogP(mol))}


@dataclass(frozen=True)
class Constraints:
    """Bounds on :func:`properties`: ``qed >= qed_min``, ``sa <= sa_max``, ``mw`` and ``logp`` within their
    ``(low, high)`` ranges."""

    qed_min: float = 0.4
    sa_max: float = 4.5
    mw: tuple[float, float] = (200.0, 500.0)
    logp: tuple[float, float] = (-1.0, 5.0)

    def __post_init__(self) -> None:
        if not 0 <= self.qed_min <= 1:
            raise ValueError(f"the QED bound must be in 0..1, got {self.qed_min}")
        if not 1 <= self.sa_max <= 10:
            raise ValueError(f"the SA score bound must be in 1..10, got {self.sa_max}")
        for name, (low, high) in (("mw", self.mw), ("logp", self.logp)):
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ValueError(f"the {name} range must be LOW,HIGH with LOW <= HIGH, got {low},{high}")

    def violations(self, props: dict[str, float]) -> list[str]:
        """The bounds ``props`` breaks, by name (empty: it meets them all)."""
        broken = []
        if props["qed"] < self.qed_min:
            broken.append("qed")
        if props["sa"] > self.sa_max:
            broken.append("sa")
        for name, (low, high) in (("mw", self.mw), ("logp", self.logp)):
            if not low <= props[name] <= high:
                broken.append(name)
        return broken

    def met(self, props: dict[str, float]) -> bool:
        return not self.violations(props)


def canonical(smiles: str) -> str | None:
    """RDKit's canonical SMILES of ``smiles``, read as the molecule datasets read theirs
    (:func:`~fewshot.datasets.featurize.parse_smiles`: with partial sanitization when RDKit rejects it); None
    when RDKit cannot read it."""
    Chem = require_rdkit()
    mol, _ = parse_smiles(smiles)
    return Chem.MolToSmiles(mol) if mol is not None else None


def features(smiles: Sequence[str], spec: FeaturizerSpec, scale=None) -> torch.Tensor:
    """Features ``[n, F]`` of ``smiles`` computed as the molecule datasets compute theirs
    (:mod:`fewshot.datasets.featurize`; not cached: proposals are new molecules), float32."""
    if spec.kind == "graph":
        raise ValueError("design scores molecules by feature vectors; a run with featurizer graph is not supported")
    done = _assemble(_compute(list(smiles), spec, "featurizing proposals"), spec, scale)
    if done.invalid:
        raise ValueError(f"RDKit cannot read {len(done.invalid)} of the molecules, e.g. {smiles[done.invalid[0]]}")
    return done.features.rows(torch.arange(len(smiles)))


def fingerprints(smiles: Sequence[str], radius: int = 2, size: int = 2048) -> list:
    """RDKit Morgan bit fingerprints (``radius``, ``size`` bits) of ``smiles``, for Tanimoto similarities; each
    molecule read as :func:`canonical` reads it."""
    require_rdkit()
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=size)
    mols = [parse_smiles(s)[0] for s in smiles]
    if None in mols:
        raise ValueError(f"RDKit cannot read SMILES {smiles[mols.index(None)]!r}; fix or drop it")
    return [gen.GetFingerprint(m) for m in mols]


def nearest_similarity(smiles: Sequence[str], references: Sequence[str]) -> torch.Tensor:
    """The largest Tanimoto similarity ``[n]`` of each of ``smiles [n]`` to any of ``references`` (Morgan radius 2,
    2048 bits, :func:`fingerprints`); 0 for every molecule when there are no references."""
    from rdkit import DataStructs

    refs = fingerprints(references)
    if not refs:
        return torch.zeros(len(smiles), dtype=torch.float64)
    return torch.tensor([max(DataStructs.BulkTanimotoSimilarity(fp, refs)) for fp in fingerprints(smiles)],
                        dtype=torch.float64)


def tanimoto_diversity(smiles: Sequence[str], radius: int = 2, size: int = 2048) -> float:
    """Internal diversity: the mean pairwise Tanimoto distance ``1 - sim`` of the Morgan bit fingerprints of
    ``smiles`` (over the ``n (n - 1) / 2`` distinct pairs; 0 for fewer than two)."""
    if len(smiles) < 2:
        return 0.0
    from rdkit import DataStructs

    fps = fingerprints(smiles, radius, size)
    total = sum(sum(DataStructs.BulkTanimotoSimilarity(fps[i], fps[i + 1:])) for i in range(len(fps) - 1))
    pairs = len(fps) * (len(fps) - 1) / 2
    return 1.0 - total / pairs
