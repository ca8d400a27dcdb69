"""Molecule featurization with RDKit (the ``chem`` extra): fingerprints, descriptors, graphs.

A :class:`FeaturizerSpec` names what to compute:

- ``ecfp``: Morgan/ECFP fingerprints folded to ``size`` bits at ``radius``; counts
  (log1p-scaled when an episode is drawn) or, with ``counts=False``, bits.
- ``ecfp+desc``: the fingerprint followed by the RDKit 2D descriptors of :func:`descriptor_functions`,
  standardised with the mean and standard deviation of a reference set (label-free statistics): by default
  the molecules being featurized; for FS-Mol's valid and test files, its training file, so that every split
  is scaled alike. NaN and inf become 0 after standardising, values are clipped to +-10 standard deviations.
  The cache holds the raw descriptors.
- ``graph``: a molecular graph per molecule (categorical atom and bond features, a
  directed bond index), packed into one integer row by :meth:`GraphFeatures.rows`.

SMILES are parsed with default sanitization; a SMILES RDKit rejects is parsed again without
sanitization, its property cache updated non-strictly and every sanitization step but the
valence check run (this recovers e.g. FS-Mol's phosphonates written ``[PH](=O)(=O)``, a
hypervalent phosphorus). Those are reported as *recovered*; the rest as *invalid* and skipped.

Results are cached on disk (safetensors, written atomically) under
``$FEWSHOT_CACHE/molecules`` (default ``~/.cache/fewshot``), keyed by a SHA-256 of the
featurizer settings, the RDKit version and the SMILES themselves, so a second run with the
same file and settings skips RDKit entirely.

Descriptor subset: the 217 descriptors of RDKit 2026.9 took 13.9 ms per molecule (300 FS-Mol
molecules, one core of this project's shared 2-core machine), i.e. about 48 minutes for FS-Mol's
207k training SMILES. :data:`SLOW_DESCRIPTORS` (``qed``, the BCUT2D and E-state indices,
``BertzCT``, ``Ipc``, ``SPS``, partial charges, the higher Chi and Kappa indices, ...; each
measured at 70 us to 2.2 ms per molecule) are left out; the remaining 180 take about 3 ms per
molecule together (the VSA families share cached atom contributions), so the descriptors of
FS-Mol's training set are computed once in about 10 minutes and then read from the cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays
from tqdm import tqdm

from fewshot.files import atomic_write, cache_root

KINDS = ("ecfp", "ecfp+desc", "graph")
_CACHE_FORMAT = 2      # 2: raw descriptors (standardised when read)

#: RDKit descriptors left out for speed (see the module docstring); the rest are ``descriptor_functions()``.
SLOW_DESCRIPTORS = frozenset({
    "qed", "SPS", "BertzCT", "Ipc", "AvgIpc", "BalabanJ", "Phi", "Kappa2", "Kappa3",
    "MaxEStateIndex", "MinEStateIndex", "MaxAbsEStateIndex", "MinAbsEStateIndex",
    "MaxPartialCharge", "MinPartialCharge", "MaxAbsPartialCharge", "MinAbsPartialCharge",
    "BCUT2D_MWHI", "BCUT2D_MWLOW", "BCUT2D_CHGHI", "BCUT2D_CHGLO", "BCUT2D_LOGPHI", "BCUT2D_LOGPLOW",
    "BCUT2D_MRHI", "BCUT2D_MRLOW", "Chi0", "Chi1", "Chi2n", "Chi3n", "Chi4n", "Chi2v", "Chi3v", "Chi4v",
    "FpDensityMorgan1", "FpDensityMorgan2", "FpDensityMorgan3",
    "NumValenceElectrons",
})

# Categorical atom and bond features of the graph featurizer: (name, number of categories).
ELEMENTS = (6, 7, 8, 9, 15, 16, 17, 35, 53, 5, 14, 34)       # C N O F P S Cl Br I B Si Se; anything else: "other"
ATOM_FIELDS = (("element", len(ELEMENTS) + 1), ("degree", 7), ("charge", 5), ("hydrogens", 5),
               ("hybridization", 6), ("aromatic", 2), ("ring", 2))
BOND_FIELDS = (("type", 4), ("conjugated", 2), ("ring", 2))


RDKIT_HINT = "molecule datasets need RDKit: pip install -e '.[chem]' (or pip install rdkit)"


class MissingDependency(ValueError):
    """An optional dependency (the ``chem`` extra: RDKit, scikit-learn) is not installed.

    A ``ValueError``, like every other input the user can fix, so that the ``fewshot`` command answers
    with exit status 2 and one line naming the install command instead of a traceback.
    """


class MissingRDKitError(MissingDependency, ImportError):
    """RDKit is needed but cannot be imported (also an ``ImportError``, as it was before)."""


def _import_rdkit(module: str = "rdkit.Chem"):
    """``module`` of RDKit, imported on first use (``import fewshot`` works without RDKit)."""
    try:
        return __import__(module, fromlist=["__name__"])      # the leaf module, as importlib.import_module
    except ImportError as err:
        absent = isinstance(err, ModuleNotFoundError) and (err.name or "").split(".")[0] == "rdkit"
        raise MissingRDKitError(RDKIT_HINT + ("" if absent else f"; importing {module} failed: {err}")) from None


def require_rdkit():
    """The ``rdkit.Chem`` module, or a :class:`MissingRDKitError` (a :class:`MissingDependency`)."""
    Chem = _import_rdkit("rdkit.Chem")
    _import_rdkit("rdkit.RDLogger").DisableLog("rdApp.*")
    return Chem


@dataclass(frozen=True)
class FeaturizerSpec:
    """What to compute per molecule (see the module docstring)."""

    kind: str = "ecfp"
    radius: int = 2
    size: int = 2048
    counts: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown featurizer {self.kind!r}; choose one of {', '.join(KINDS)}")
        if not (isinstance(self.radius, int) and 0 <= self.radius <= 6):
            raise ValueError(f"fingerprint radius must be an integer in 0..6, got {self.radius!r}")
        if not (isinstance(self.size, int) and 16 <= self.size <= 1 << 15):
            raise ValueError(f"fingerprint size must be an integer in 16..32768, got {self.size!r}")


# -- feature stores: rows(indices) -> a float or integer tensor [B, ...] -------------------------


@dataclass(frozen=True)
class SparseCounts:
    """Folded fingerprint counts of ``M`` molecules in CSR form: molecule ``i`` has counts
    ``values[indptr[i]:indptr[i+1]]`` at bits ``indices[...]``."""

    indptr: torch.Tensor     # int64 [M+1]
    indices: torch.Tensor    # int64 [nnz]
    values: torch.Tensor     # float32 [nnz]
    width: int
    counts: bool

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """``[B] -> [B, width]`` float32: ``log1p(count)`` (counts) or 0/1 (bits)."""
        starts = self.indptr[idx]
        lengths = self.indptr[idx + 1] - starts
        row = torch.repeat_interleave(torch.arange(len(idx)), lengths)
        first = torch.cumsum(lengths, 0) - lengths                       # where each row starts in the output
        pos = torch.repeat_interleave(starts - first, lengths) + torch.arange(len(row))   # positions in the CSR
        out = torch.zeros(len(idx), self.width)
        out[row, self.indices[pos]] = torch.log1p(self.values[pos]) if self.counts else 1.0
        return out

    @property
    def width_out(self) -> int:
        return self.width


@dataclass(frozen=True)
class DenseFeatures:
    """A float32 matrix ``[M, F]``."""

    x: torch.Tensor

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """``[B] -> [B, F]``."""
        return self.x[idx]

    @property
    def width_out(self) -> int:
        return int(self.x.shape[1])


@dataclass(frozen=True)
class ConcatFeatures:
    """Several stores side by side: ``[B] -> [B, F1 + F2 + ...]``."""

    parts: tuple

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.cat([p.rows(idx) for p in self.parts], dim=1)

    @property
    def width_out(self) -> int:
        return sum(p.width_out for p in self.parts)


@dataclass(frozen=True)
class GraphFeatures:
    """Molecular graphs of ``M`` molecules: atoms ``atom_ptr[i]:atom_ptr[i+1]`` of ``atoms [A, len(ATOM_FIELDS)]``
    and directed bonds ``bond_ptr[i]:bond_ptr[i+1]`` of ``bonds [E, 2 + len(BOND_FIELDS)]`` (source and target
    atom, local to the molecule, then the bond's categorical features)."""

    atom_ptr: torch.Tensor
    atoms: torch.Tensor
    bond_ptr: torch.Tensor
    bonds: torch.Tensor

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """``[B] -> [B, L]`` int64, one packed graph per row (see :func:`fewshot.nets.molecules.unpack_graphs`):
        ``[n_atoms, n_bonds, A, E, atoms (A x Fa, padded with -1), bonds (E x (2 + Fb), padded with -1)]`` with
        ``A`` and ``E`` the largest atom and bond counts of the store (so every batch of it has one width)."""
        n_atoms = self.atom_ptr[idx + 1] - self.atom_ptr[idx]
        n_bonds = self.bond_ptr[idx + 1] - self.bond_ptr[idx]
        a_max, e_max = self._sizes
        fa, fb = self.atoms.shape[1], self.bonds.shape[1]
        atoms = torch.full((len(idx), a_max, fa), -1, dtype=torch.long)
        bonds = torch.full((len(idx), e_max, fb), -1, dtype=torch.long)
        for b, i in enumerate(idx.tolist()):
            a0, a1 = int(self.atom_ptr[i]), int(self.atom_ptr[i + 1])
            e0, e1 = int(self.bond_ptr[i]), int(self.bond_ptr[i + 1])
            atoms[b, : a1 - a0] = self.atoms[a0:a1]
            bonds[b, : e1 - e0] = self.bonds[e0:e1]
        header = torch.stack([n_atoms, n_bonds, torch.full_like(n_atoms, a_max), torch.full_like(n_atoms, e_max)], 1)
        return torch.cat([header, atoms.flatten(1), bonds.flatten(1)], dim=1)

    @cached_property
    def _sizes(self) -> tuple[int, int]:
        return int(torch.diff(self.atom_ptr).max()), max(int(torch.diff(self.bond_ptr).max()), 1)

    @property
    def width_out(self) -> int:
        """The length of a packed row."""
        a_max, e_max = self._sizes
        return 4 + a_max * self.atoms.shape[1] + e_max * self.bonds.shape[1]


@dataclass(frozen=True)
class Featurized:
    """Features of ``M`` SMILES. ``features.rows(i)`` for valid ``i`` only; ``invalid`` and ``recovered`` are
    molecule positions (rejected by RDKit / parsed only with partial sanitization)."""

    features: object
    invalid: tuple[int, ...]
    recovered: tuple[int, ...]
    scale: tuple[np.ndarray, np.ndarray] | None = None   # ecfp+desc: the descriptors' (mean, std) [F] each


# -- parsing --------------------------------------------------------------------------------------


def parse_smiles(smiles: str):
    """``(mol, recovered)``: the RDKit molecule (None if unparseable) and whether partial sanitization was needed."""
    Chem = require_rdkit()
    mol = Chem.MolFromSmiles(smiles)
    if mol is not None:
        return mol, False
    mol = Chem.MolFromSmiles(smiles, sanitize=False)
    if mol is None:
        return None, False
    flags = Chem.SanitizeFlags
    try:
        mol.UpdatePropertyCache(strict=False)
        failed = Chem.SanitizeMol(mol, flags.SANITIZE_ALL ^ flags.SANITIZE_PROPERTIES, catchErrors=True)
    except Exception:   # RDKit raises its own exception types from C++
        return None, False
    return (mol, True) if failed == flags.SANITIZE_NONE else (None, False)


def descriptor_functions() -> list[tuple[str, object]]:
    """``(name, function)`` of the RDKit 2D descriptors of :func:`descriptor_functions`, in RDKit's order."""
    require_rdkit()
    Descriptors = _import_rdkit("rdkit.Chem.Descriptors")
    return [(n, f) for n, f in Descriptors._descList if n not in SLOW_DESCRIPTORS]


def _atom_row(atom) -> list[int]:
    z = atom.GetAtomicNum()
    hyb = int(atom.GetHybridization())   # RDKit: 0 unspecified, 1 S, 2 SP, 3 SP2, 4 SP3, 5 SP2D, 6 SP3D, 7 SP3D2
    return [ELEMENTS.index(z) if z in ELEMENTS else len(ELEMENTS), min(atom.GetDegree(), 6),
            min(max(atom.GetFormalCharge(), -2), 2) + 2, min(atom.GetTotalNumHs(), 4),
            {2: 1, 3: 2, 4: 3, 6: 4, 7: 5}.get(hyb, 0), int(atom.GetIsAromatic()), int(atom.IsInRing())]


def _bond_rows(bond) -> list[list[int]]:
    kind = {1.0: 0, 2.0: 1, 3.0: 2, 1.5: 3}.get(bond.GetBondTypeAsDouble(), 0)
    feats = [kind, int(bond.GetIsConjugated()), int(bond.IsInRing())]
    a, b = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
    return [[a, b, *feats], [b, a, *feats]]


def _compute(smiles: Sequence[str], spec: FeaturizerSpec, desc: str) -> dict[str, np.ndarray]:
    """Featurize with RDKit: the arrays of the cache file."""
    require_rdkit()
    rdFingerprintGenerator = _import_rdkit("rdkit.Chem.rdFingerprintGenerator")

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=spec.radius, fpSize=spec.size)
    descriptors = descriptor_functions() if spec.kind == "ecfp+desc" else []
    status = np.zeros(len(smiles), dtype=np.uint8)      # 0 valid, 1 recovered, 2 invalid
    indptr, indices, values = [0], [], []
    desc_rows: list[list[float]] = []
    atom_ptr, atoms, bond_ptr, bonds = [0], [], [0], []
    for i, s in enumerate(tqdm(smiles, desc=desc, unit="mol", mininterval=2.0, disable=None)):
        mol, recovered = parse_smiles(s)
        if mol is None:
            status[i] = 2
        else:
            status[i] = int(recovered)
        if spec.kind == "graph":
            if mol is not None:
                atoms.extend(_atom_row(a) for a in mol.GetAtoms())
                bonds.extend(r for bond in mol.GetBonds() for r in _bond_rows(bond))
            atom_ptr.append(len(atoms))
            bond_ptr.append(len(bonds))
            continue
        if mol is not None:
            elements = sorted(gen.GetCountFingerprint(mol).GetNonzeroElements().items())
            indices.extend(k for k, _ in elements)
            values.extend(min(v, 255) for _, v in elements)
        indptr.append(len(indices))
        if descriptors:
            desc_rows.append([_safe(f, mol) for _, f in descriptors] if mol is not None
                             else [np.nan] * len(descriptors))
    arrays = {"status": status}
    if spec.kind == "graph":
        arrays.update(atom_ptr=np.array(atom_ptr, dtype=np.int64),
                      atoms=np.array(atoms, dtype=np.int8).reshape(-1, len(ATOM_FIELDS)),
                      bond_ptr=np.array(bond_ptr, dtype=np.int64),
                      bonds=np.array(bonds, dtype=np.int16).reshape(-1, 2 + len(BOND_FIELDS)))
        return arrays
    arrays.update(indptr=np.array(indptr, dtype=np.int64), indices=np.array(indices, dtype=np.int16),
                  values=np.array(values, dtype=np.uint8))
    if descriptors:
        raw = np.array(desc_rows, dtype=np.float64)
        arrays["descriptors"] = np.clip(np.where(np.isfinite(raw), raw, np.nan), -1e12, 1e12).astype(np.float32)
    return arrays


def _safe(function, mol) -> float:
    try:
        return float(function(mol))
    except Exception:   # a descriptor that fails on an odd molecule is missing, not fatal
        return float("nan")


def descriptor_scale(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` ``[F]`` of the finite entries of ``x[rows]`` (``x [M, F]`` raw descriptors, NaN = missing);
    a column without spread gets std 1."""
    ref = x[rows].astype(np.float64)
    with np.errstate(all="ignore"):
        mean = np.nanmean(ref, axis=0) if len(ref) else np.zeros(x.shape[1])
        std = np.nanstd(ref, axis=0) if len(ref) else np.ones(x.shape[1])
    mean = np.nan_to_num(mean)
    return mean, np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)


def standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` column-wise (``x [M, F]``); missing (NaN) entries become 0, results are clipped to
    +-10; float32."""
    z = np.nan_to_num((x.astype(np.float64) - mean) / std, nan=0.0)
    return np.clip(z, -10, 10).astype(np.float32)


# -- the cache -------------------------------------------------------------------------------------


def cache_path(smiles: Sequence[str], spec: FeaturizerSpec, name: str, cache_dir: str | Path | None) -> Path:
    """The cache file of these SMILES and settings."""
    try:
        import rdkit
        version = rdkit.__version__
    except ImportError:
        version = "none"
    h = hashlib.sha256()
    settings = {k: v for k, v in asdict(spec).items() if k != "counts"}   # counts vs bits: same stored arrays
    h.update(json.dumps({"format": _CACHE_FORMAT, "spec": settings, "rdkit": version,
                         "descriptors": sorted(SLOW_DESCRIPTORS)}, sort_keys=True).encode())
    h.update("\n".join(smiles).encode())
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    return cache_root(cache_dir) / "molecules" / f"{safe}-{spec.kind.replace('+', '-')}-{h.hexdigest()[:16]}.safetensors"


def featurize(smiles: Sequence[str], spec: FeaturizerSpec, name: str = "molecules",
              cache_dir: str | Path | None = None,
              scale: tuple[np.ndarray, np.ndarray] | None = None) -> Featurized:
    """Features of ``smiles`` (``M`` strings), from the cache when present.

    Args:
        smiles: the molecules.
        spec: what to compute.
        name: a label for the cache file and the progress bar (e.g. ``"fsmol-train"``).
        cache_dir: ``None``: ``$FEWSHOT_CACHE``, else ``~/.cache/fewshot``.
        scale: ``ecfp+desc``: the ``(mean, std)`` to standardise the descriptors with (another set's
            :attr:`Featurized.scale`); ``None``: these molecules' own.
    """
    path = cache_path(smiles, spec, name, cache_dir)
    arrays = _read(path)
    if arrays is None:
        arrays = _compute(smiles, spec, f"featurizing {name} ({spec.kind})")
        try:
            atomic_write(path, save_arrays(arrays))
        except OSError as err:
            import warnings
            warnings.warn(f"cannot write the feature cache {path} ({err}); set FEWSHOT_CACHE", stacklevel=2)
    return _assemble(arrays, spec, scale)


def _read(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        return load_arrays(path.read_bytes())
    except (OSError, SafetensorError, ValueError) as err:
        import warnings
        warnings.warn(f"ignoring unreadable feature cache {path} ({err}); featurizing again", stacklevel=3)
        return None


def _assemble(arrays: dict[str, np.ndarray], spec: FeaturizerSpec,
              scale: tuple[np.ndarray, np.ndarray] | None) -> Featurized:
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    status = arrays["status"]
    invalid = tuple(np.nonzero(status == 2)[0].tolist())
    recovered = tuple(np.nonzero(status == 1)[0].tolist())
    if spec.kind == "graph":
        features = GraphFeatures(t["atom_ptr"], t["atoms"].long(), t["bond_ptr"], t["bonds"].long())
    else:
        features = SparseCounts(t["indptr"], t["indices"].long(), t["values"].float(), spec.size, spec.counts)
        if spec.kind == "ecfp+desc":
            scale = scale or descriptor_scale(arrays["descriptors"], status != 2)
            desc = torch.from_numpy(standardise(arrays["descriptors"], *scale))
            features = ConcatFeatures((features, DenseFeatures(desc)))
    return Featurized(features, invalid, recovered, scale)
