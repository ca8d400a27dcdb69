"""A graph-based genetic algorithm over RDKit molecules, in the manner of Jensen (2019, "A graph-based genetic
algorithm and generative model/Monte Carlo tree search for the exploration of chemical space", Chem. Sci. 10,
3567), written from the paper's description.

Each generation makes ``population`` children. A child comes from two parents drawn from the population with
probability proportional to their fitness (roulette selection): a **crossover** of their graphs, then, with
probability ``mutation_rate``, a **mutation**. Both edit a Kekulé form of the molecule (aromatic rings as
alternating single and double bonds), so that ring bonds can be cut and orders changed like any other bond;
RDKit's sanitization then decides whether the product is a molecule.

- Crossover (half the time each, as in the paper): *non-ring* -- each parent is cut at a random acyclic single
  bond, and one piece of each is joined at the cut; *ring* -- each parent is cut at two non-adjacent single bonds
  of one of its rings, which splits it in two pieces carrying both cut ends, and a piece of each is joined at both
  ends, closing a new ring. When a parent has no place to cut, the operator does not apply and another is tried
  (up to ``tries`` times; failing that, the child is a mutant of its first parent).
- Mutation, one of: append an atom, insert an atom into a bond, change a bond's order, delete a ring bond, close a
  ring of 4 to 6 atoms, delete an atom (a terminal one, or a chain atom whose neighbours are then bonded), change
  an element. New atoms are C, N, O, S, F or Cl; bond orders and elements are chosen among those the atoms'
  hydrogens and usual valences allow.

A product is **valid** when RDKit sanitizes it and reads back its canonical SMILES as one molecule; a valid product
is **proposed** when it also meets the structure rules of the paper's filter (no ring larger than 7 atoms, no
double or aromatic bond in a 3- or 4-membered ring, no allene, 6 to 60 heavy atoms) and the drug-likeness
:class:`~fewshot.drug.properties.Constraints`, and, with ``min_similarity`` > 0, lies inside the **trust region**:
its Tanimoto similarity (Morgan radius 2, 2048 bits) to the nearest of the caller's anchor molecules is at least
``min_similarity`` (for ``fewshot design`` the anchors are the support's actives, so proposals stay analogues of
measured actives, as a medicinal chemist's would). The next population is the ``population`` fittest distinct
molecules among the current one and the proposals (an elitist (mu + lambda) replacement). Fitness is what the
caller gives: for ``fewshot design``, the adapted few-shot model's predicted activity, optionally mixed with the
similarity to the nearest support active.

Everything is drawn from one ``random.Random(seed)``; the state after each generation can be saved and resumed
(:func:`evolve` with ``state``).
"""

from __future__ import annotations

import json
import random
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from fewshot.datasets.featurize import parse_smiles, require_rdkit
from fewshot.drug.properties import Constraints, canonical, nearest_similarity, properties
from fewshot.files import atomic_write
from fewshot.progress import progress_bar

NEW_ATOMS = ("C", "N", "O", "S", "F", "Cl")
NEW_ATOM_WEIGHTS = (0.45, 0.2, 0.2, 0.05, 0.05, 0.05)
_VALENCE = {"C": 4, "N": 3, "O": 2, "S": 2, "F": 1, "Cl": 1}     # the usual valence of each new atom
MUTATIONS = ("append_atom", "insert_atom", "change_bond_order", "delete_ring_bond", "add_ring", "delete_atom",
             "change_atom")
MAX_RING, HEAVY_ATOMS = 7, (6, 60)
#: ``smiles [n] -> fitness [n]`` (higher is fitter; for roulette selection, >= 0).
Fitness = Callable[[list[str]], torch.Tensor]


def _chem():
    return require_rdkit()


def kekulized(mol):
    """An editable Kekulé copy (``RWMol``) of ``mol``, aromatic flags cleared, valences computed."""
    Chem = _chem()
    rw = Chem.RWMol(mol)
    Chem.Kekulize(rw, clearAromaticFlags=True)
    rw.UpdatePropertyCache(strict=False)
    return rw


# -- crossover -------------------------------------------------------------------------------------------


def _pieces(mol, bonds: list[int]):
    """The pieces of ``mol`` cut at ``bonds``, each cut end a dummy atom whose isotope is the cut's number (1, 2)."""
    Chem = _chem()
    cut = Chem.FragmentOnBonds(mol, bonds, addDummies=True, dummyLabels=[(k + 1, k + 1) for k in range(len(bonds))])
    return list(Chem.GetMolFrags(cut, asMols=True, sanitizeFrags=False))


def _join(a, b):
    """``a`` and ``b`` joined by single bonds between the atoms next to their equally numbered dummies, dummies
    removed (``RWMol``), or None when the numbering does not pair up."""
    Chem = _chem()
    rw = Chem.RWMol(Chem.CombineMols(a, b))
    ends: dict[int, list[int]] = {}
    dummies = []
    for atom in rw.GetAtoms():
        if atom.GetAtomicNum() == 0:
            dummies.append(atom.GetIdx())
            ends.setdefault(atom.GetIsotope(), []).append(atom.GetNeighbors()[0].GetIdx())
    if not ends or any(len(v) != 2 for v in ends.values()):
        return None
    for i, j in ends.values():
        if i == j or rw.GetBondBetweenAtoms(i, j) is not None:
            return None
        rw.AddBond(i, j, Chem.BondType.SINGLE)
    for idx in sorted(dummies, reverse=True):
        rw.RemoveAtom(idx)
    return rw


def _acyclic_cut(mol, rng: random.Random):
    Chem = _chem()
    bonds = [b.GetIdx() for b in mol.GetBonds() if not b.IsInRing() and b.GetBondType() == Chem.BondType.SINGLE]
    return [rng.choice(bonds)] if bonds else None


def _ring_cut(mol, rng: random.Random):
    """Two non-adjacent single bonds of one ring of ``mol`` whose cutting splits it in two, or None."""
    Chem = _chem()
    rings = list(mol.GetRingInfo().BondRings())
    rng.shuffle(rings)
    for ring in rings:
        single = [i for i in ring if mol.GetBondWithIdx(i).GetBondType() == Chem.BondType.SINGLE]
        pairs = [(i, j) for k, i in enumerate(single) for j in single[k + 1:]
                 if not {mol.GetBondWithIdx(i).GetBeginAtomIdx(), mol.GetBondWithIdx(i).GetEndAtomIdx()}
                 & {mol.GetBondWithIdx(j).GetBeginAtomIdx(), mol.GetBondWithIdx(j).GetEndAtomIdx()}]
        rng.shuffle(pairs)
        for pair in pairs:
            if len(_pieces(mol, list(pair))) == 2:
                return list(pair)
    return None


def crossover(a, b, rng: random.Random):
    """A child graph of Kekulé molecules ``a`` and ``b`` (``RWMol``, not yet sanitized), or None when the chosen
    crossover does not apply to them."""
    cut = _ring_cut if rng.random() < 0.5 else _acyclic_cut
    bonds_a, bonds_b = cut(a, rng), cut(b, rng)
    if bonds_a is None or bonds_b is None:
        return None
    piece_a, piece_b = rng.choice(_pieces(a, bonds_a)), rng.choice(_pieces(b, bonds_b))
    return _join(piece_a, piece_b)


# -- mutation --------------------------------------------------------------------------------------------


def _new_atom(rng: random.Random) -> str:
    return rng.choices(NEW_ATOMS, NEW_ATOM_WEIGHTS)[0]


def _with_hydrogens(rw) -> list[int]:
    return [a.GetIdx() for a in rw.GetAtoms() if a.GetTotalNumHs() > 0]


def mutate(mol, rng: random.Random):
    """A mutant of Kekulé molecule ``mol`` by one of :data:`MUTATIONS` (``RWMol``, not yet sanitized), or None when
    the chosen mutation has nowhere to apply."""
    Chem = _chem()
    rw = Chem.RWMol(mol)
    rw.UpdatePropertyCache(strict=False)
    kind = rng.choice(MUTATIONS)
    order = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
    bonds = list(rw.GetBonds())
    if kind == "append_atom":
        sites = _with_hydrogens(rw)
        if not sites:
            return None
        site = rng.choice(sites)
        element = _new_atom(rng)
        free = min(rw.GetAtomWithIdx(site).GetTotalNumHs(), _VALENCE[element])
        new = rw.AddAtom(Chem.Atom(element))
        rw.AddBond(site, new, order[rng.choices((1, 2, 3), (0.8, 0.15, 0.05))[0] if free >= 3 else
                                    rng.choices((1, 2), (0.85, 0.15))[0] if free == 2 else 1])
    elif kind == "insert_atom":
        single = [b for b in bonds if b.GetBondType() == Chem.BondType.SINGLE]
        if not single:
            return None
        bond = rng.choice(single)
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        rw.RemoveBond(i, j)
        new = rw.AddAtom(Chem.Atom(rng.choice(("C", "N", "O", "S"))))
        rw.AddBond(i, new, Chem.BondType.SINGLE)
        rw.AddBond(new, j, Chem.BondType.SINGLE)
    elif kind == "change_bond_order":
        options = []
        for b in bonds:       # orders the two atoms' hydrogens allow
            current = int(b.GetBondTypeAsDouble())
            room = min(b.GetBeginAtom().GetTotalNumHs(), b.GetEndAtom().GetTotalNumHs())
            options += [(b, k) for k in (1, 2, 3) if k != current and k - current <= room]
        if not options:
            return None
        bond, k = rng.choice(options)
        bond.SetBondType(order[k])
    elif kind == "delete_ring_bond":
        ring = [b for b in bonds if b.IsInRing()]
        if not ring:
            return None
        bond = rng.choice(ring)
        rw.RemoveBond(bond.GetBeginAtomIdx(), bond.GetEndAtomIdx())
    elif kind == "add_ring":
        distance = Chem.GetDistanceMatrix(rw)
        sites = _with_hydrogens(rw)
        pairs = [(i, j) for k, i in enumerate(sites) for j in sites[k + 1:] if 3 <= distance[i][j] <= 5]
        if not pairs:
            return None
        rw.AddBond(*rng.choice(pairs), Chem.BondType.SINGLE)
    elif kind == "delete_atom":
        sites = [a for a in rw.GetAtoms() if a.GetDegree() in (1, 2)]
        if not sites or rw.GetNumAtoms() < 2:
            return None
        atom = rng.choice(sites)
        neighbours = [n.GetIdx() for n in atom.GetNeighbors()]
        if len(neighbours) == 2 and rw.GetBondBetweenAtoms(*neighbours) is None:
            rw.AddBond(*neighbours, Chem.BondType.SINGLE)
        rw.RemoveAtom(atom.GetIdx())
    else:  # change_atom
        options = [(a, e) for a in rw.GetAtoms() for e in NEW_ATOMS
                   if e != a.GetSymbol() and a.GetFormalCharge() == 0 and _VALENCE[e] >= a.GetExplicitValence()]
        if not options:
            return None
        atom, element = rng.choice(options)
        atom.SetAtomicNum(Chem.GetPeriodicTable().GetAtomicNumber(element))
        atom.SetNoImplicit(False)
        atom.SetNumExplicitHs(0)
        atom.SetFormalCharge(0)
    return rw


# -- validity and the structure rules --------------------------------------------------------------------


def finish(rw):
    """``(mol, canonical SMILES)`` of an edited graph when it is a valid molecule (module docstring), else None."""
    Chem = _chem()
    mol = rw.GetMol()
    try:
        Chem.SanitizeMol(mol)
    except Exception:   # RDKit raises its own C++ exception types for impossible valences and kekulizations
        return None
    smiles = Chem.MolToSmiles(mol)
    back = Chem.MolFromSmiles(smiles) if "." not in smiles else None
    return (back, smiles) if back is not None else None


_ALLENE = None
_SMALL_RING_DOUBLE = None


def structure_ok(mol) -> bool:
    """The structure rules of the module docstring."""
    global _ALLENE, _SMALL_RING_DOUBLE
    Chem = _chem()
    if _ALLENE is None:
        _ALLENE = Chem.MolFromSmarts("[*]=[*]=[*]")
        _SMALL_RING_DOUBLE = Chem.MolFromSmarts("[r3,r4]=,:[r3,r4]")
    if not HEAVY_ATOMS[0] <= mol.GetNumHeavyAtoms() <= HEAVY_ATOMS[1]:
        return False
    if any(len(ring) > MAX_RING for ring in mol.GetRingInfo().AtomRings()):
        return False
    return not (mol.HasSubstructMatch(_ALLENE) or mol.HasSubstructMatch(_SMALL_RING_DOUBLE))


# -- the algorithm ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GAConfig:
    """Settings of :func:`evolve`: ``population`` children a generation for ``steps`` generations; the last
    ``proposals`` proposed molecules are its output. With ``min_similarity`` > 0, a product is proposed only inside
    the trust region: its Tanimoto similarity to the nearest anchor of :func:`evolve` is at least that. With
    ``fresh_only``, a product that is already in the population is not proposed again (its fitness is known)."""

    population: int = 200
    steps: int = 20
    proposals: int = 1000
    mutation_rate: float = 0.5
    tries: int = 10
    seed: int = 0
    min_similarity: float = 0.0
    fresh_only: bool = False

    def __post_init__(self) -> None:
        for name in ("population", "steps", "proposals", "tries"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not 0 <= self.mutation_rate <= 1:
            raise ValueError(f"mutation_rate must be in 0..1, got {self.mutation_rate}")
        if not 0 <= self.min_similarity <= 1:
            raise ValueError(f"min_similarity (the trust region's Tanimoto bound) must be in 0..1, got "
                             f"{self.min_similarity}")


@dataclass
class GAState:
    """Where :func:`evolve` stands: the population ``(smiles, fitness)``, the last proposals ``(smiles, fitness,
    properties)``, the counts of products, invalid products, valid ones rejected by the rules or constraints and
    ones that met them outside the trust region, the products already in the population that ``fresh_only`` did
    not propose again, and the random stream's state."""

    generation: int = 0
    population: list = field(default_factory=list)
    proposals: list = field(default_factory=list)
    products: int = 0
    invalid: int = 0
    rejected: int = 0
    outside: int = 0
    repeats: int = 0
    rng: list | None = None

    def save(self, path: Path) -> None:
        atomic_write(path, (json.dumps(asdict(self)) + "\n").encode())


def _child(parents, weights, cfg: GAConfig, rng: random.Random):
    """One product graph: crossover of two roulette-drawn parents (Kekulé molecules) and perhaps a mutation."""
    child = None
    for _ in range(cfg.tries):
        a, b = rng.choices(parents, weights, k=2)
        child = crossover(a, b, rng)
        if child is not None:
            break
    must_mutate = child is None
    if must_mutate:
        child = kekulized(rng.choices(parents, weights)[0])
    if must_mutate or rng.random() < cfg.mutation_rate:
        for _ in range(cfg.tries):
            mutant = mutate(child, rng)
            if mutant is not None:
                return mutant
    return child


def evolve(seeds: Sequence[str], fitness: Fitness, constraints: Constraints, cfg: GAConfig,
           state: Path | None = None, progress: bool = True, anchors: Sequence[str] = ()) -> GAState:
    """Run the genetic algorithm from the molecules ``seeds`` (SMILES); returns the final :class:`GAState`.

    ``anchors`` (SMILES; for ``fewshot design``, the support's actives) centre the trust region of
    ``cfg.min_similarity``; it needs at least one.

    With ``state``, the state is saved there after every generation and a run is resumed from it (it must have been
    written with the same seeds and settings: the caller checks).
    """
    if cfg.min_similarity > 0 and not anchors:
        raise ValueError("a trust region (min_similarity > 0) needs anchor molecules to measure similarity to")
    if state is not None and state.is_file():
        st = GAState(**json.loads(state.read_text()))
    else:
        read = [canonical(s) for s in seeds]
        if None in read:
            raise ValueError(f"RDKit cannot read seed {seeds[read.index(None)]!r}")
        start = sorted(set(read))
        scores = fitness(start).tolist()
        st = GAState(population=sorted(zip(start, scores), key=lambda p: -p[1]))
    rng = random.Random(cfg.seed)
    if st.rng is not None:
        rng.setstate((st.rng[0], tuple(st.rng[1]), st.rng[2]))
    window = deque((tuple(p) for p in st.proposals), maxlen=cfg.proposals)
    bar = progress_bar(range(st.generation, cfg.steps), desc="design", enabled=progress, initial=st.generation,
                       total=cfg.steps, every_percent=10)
    for generation in bar:
        parents = [kekulized(parse_smiles(s)[0]) for s, _ in st.population]
        weights = [max(f, 0.0) + 1e-6 for _, f in st.population]
        members = {s for s, _ in st.population}
        made = []
        for _ in range(cfg.population):
            st.products += 1
            done = finish(_child(parents, weights, cfg, rng))
            if done is None:
                st.invalid += 1
                continue
            mol, smiles = done
            if cfg.fresh_only and smiles in members:
                st.repeats += 1
                continue
            props = properties(mol) if structure_ok(mol) else None
            if props is None or not constraints.met(props):
                st.rejected += 1
                continue
            made.append((smiles, props))
        if made and cfg.min_similarity > 0:
            inside = (nearest_similarity([s for s, _ in made], anchors) >= cfg.min_similarity).tolist()
            st.outside += inside.count(False)
            made = [m for m, ok in zip(made, inside) if ok]
        if made:
            scores = fitness([s for s, _ in made]).tolist()
            window.extend((s, f, p) for (s, p), f in zip(made, scores))
            best = dict(st.population)
            for (s, _), f in zip(made, scores):
                best[s] = f
            st.population = sorted(best.items(), key=lambda p: -p[1])[: cfg.population]
        st.generation = generation + 1
        st.proposals = [list(p) for p in window]
        version, internal, gauss = rng.getstate()
        st.rng = [version, list(internal), gauss]
        if state is not None:
            st.save(state)
        bar.set_postfix_str(f"best {st.population[0][1]:.3f}, proposals {len(window)}")
    return st
