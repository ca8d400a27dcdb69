"""``fewshot design RUN --support FILE.csv --out DIR``: propose new molecules for an assay from a few measured ones.

The run's learner adapts to the support file's labelled molecules (``smiles,label``, 1 active, 0 inactive); the
genetic algorithm of :mod:`fewshot.drug.design` evolves molecules from them (``--seeds``: the whole support or its
actives), its fitness ``(1 - W) p + W s`` of the adapted model's predicted activity ``p`` and the Tanimoto
similarity ``s`` to the nearest support active (``--similarity-weight W``), keeping only valid molecules that meet
the drug-likeness constraints and lie within ``--min-similarity`` of a support active (the trust region). DIR
receives ``candidates.csv`` (the distinct novel proposals, fittest first, with their predicted activity, similarity
and properties), ``top.png`` (the best as a grid), ``summary.json`` and ``state.json`` (the algorithm's state
after each generation: a rerun with the same settings resumes from it). ``--oracle TASK`` scores the top
candidates with the proxy oracle of :mod:`fewshot.drug.oracle` trained on all of that FS-Mol assay's measurements
(a proxy, not a measurement), and with a second forest trained on them without the support molecules. Neither is
built, nor the assay's measurements read, before the proposals are fixed.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch

from fewshot.argtypes import nonnegative_int, positive_int
from fewshot.datasets.featurize import _assemble, _compute
from fewshot.datasets.molecules import MOLECULE_DATASETS
from fewshot.drug.acquisition import activity
from fewshot.drug.design import GAConfig, GAState, evolve
from fewshot.drug.properties import Constraints, canonical, features, nearest_similarity, tanimoto_diversity
from fewshot.files import atomic_write

NAME = "design"
GRID = 20          # molecules in top.png
JUDGED = 10        # top candidates the oracle scores
SEEDS, MIN_SIMILARITY, SIMILARITY_WEIGHT = "support", 0.0, 0.0     # the generator's defaults (docs: drug-design)


def _range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"give LOW,HIGH, e.g. 200,500; got {text}") from None
    return low, high


def _unit(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"give a number in 0..1, got {text}")
    return value


def add_parser(sub, parser_class) -> None:
    p = sub.add_parser(NAME, help="propose new molecules for an assay with a genetic algorithm guided by a few-shot "
                                  "model")
    p.add_argument("run_dir", metavar="RUN", help="a `fewshot train` run on a molecule dataset")
    p.add_argument("--support", required=True, metavar="FILE.csv", help="the assay's measured molecules: columns "
                                                                         "smiles,label (1 active, 0 inactive)")
    p.add_argument("--out", required=True, metavar="DIR", help="where candidates.csv, top.png, summary.json go")
    p.add_argument("--n", type=positive_int, default=1000, help="proposals judged: the last N (default 1000)")
    p.add_argument("--steps", type=positive_int, default=40, help="generations (default 40)")
    p.add_argument("--population", type=positive_int, default=200, help="children per generation and survivors")
    p.add_argument("--mutation-rate", type=float, default=0.5, help="chance a child is also mutated (default 0.5)")
    p.add_argument("--qed-min", type=float, default=0.4, help="smallest QED proposed (default 0.4)")
    p.add_argument("--sa-max", type=float, default=4.5, help="largest synthetic accessibility score (default 4.5)")
    p.add_argument("--mw", type=_range, default=(200.0, 500.0), help="molecular weight range LOW,HIGH (200,500)")
    p.add_argument("--logp", type=_range, default=(-1.0, 5.0), help="Crippen logP range LOW,HIGH (-1,5)")
    p.add_argument("--seeds", choices=("support", "actives"), default=SEEDS, help="the first population: the whole "
                   f"support or only its actives (default {SEEDS})")
    p.add_argument("--min-similarity", type=_unit, default=MIN_SIMILARITY, help="trust region: propose only molecules "
                   "whose Tanimoto similarity to the nearest support active is at least this (0: no region; default "
                   f"{MIN_SIMILARITY})")
    p.add_argument("--similarity-weight", type=_unit, default=SIMILARITY_WEIGHT, help="fitness (1 - W) * predicted "
                   f"activity + W * similarity to the nearest support active (default {SIMILARITY_WEIGHT})")
    p.add_argument("--fresh-only", action="store_true", help="do not propose again a product that is already in the "
                   "population")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the algorithm")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--data-root", help="directory of the run's data (training molecules, for novelty; the oracle)")
    p.add_argument("--oracle", metavar="TASK", help="judge with a proxy oracle trained on this FS-Mol assay")
    p.add_argument("--oracle-split", default="valid", help="the FS-Mol split of --oracle's assay (default valid)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line last")


def read_support(path: Path) -> tuple[list[str], list[int]]:
    """``(canonical smiles, labels)`` of a support CSV with columns ``smiles`` and ``label`` (0/1)."""
    if not path.is_file():
        raise FileNotFoundError(f"support file {path} not found; pass --support FILE.csv with columns smiles,label")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"smiles", "label"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: expected columns smiles,label (1 active, 0 inactive); got {reader.fieldnames}")
        smiles, labels = [], []
        for line, row in enumerate(reader, start=2):
            text = (row["label"] or "").strip()
            if text not in ("0", "1", "0.0", "1.0"):
                raise ValueError(f"{path}, line {line}: label {text!r} is not 0 or 1")
            mol = canonical((row["smiles"] or "").strip())
            if mol is None:
                raise ValueError(f"{path}, line {line}: RDKit cannot read SMILES {row['smiles']!r}; fix or drop it")
            smiles.append(mol)
            labels.append(int(float(text)))
    if set(labels) != {0, 1}:
        raise ValueError(f"{path}: the support needs at least one active (1) and one inactive (0), got "
                         f"{sum(labels)} actives of {len(labels)}")
    return smiles, labels


def seen_in_training(config, root: str | None, proposals: list[str]) -> set[str]:
    """The proposals (canonical SMILES) that are molecules of the run's training data.

    A molecule can only equal a training molecule with the same folded fingerprint counts, so the training
    features (cached when the run was trained) are looked up by their counts first, and only the training
    SMILES that share a proposal's counts are canonicalised and compared.
    """
    from fewshot.datasets.featurize import FeaturizerSpec
    from fewshot.domains.molecules import assays

    spec = FeaturizerSpec("ecfp", config.fp_radius, config.fp_size, True)
    data = assays(config, "train", root)          # an ecfp run: its store holds the raw counts (bits or not)
    store = data.features
    ptr, idx, val = store.indptr.numpy(), store.indices.numpy(), store.values.numpy()
    mine = _assemble(_compute(proposals, spec, "fingerprints"), spec, None).features
    wanted: dict[bytes, list[str]] = {}
    for k, s in enumerate(proposals):
        a, b = int(mine.indptr[k]), int(mine.indptr[k + 1])
        wanted.setdefault(_key(mine.indices.numpy()[a:b], mine.values.numpy()[a:b]), []).append(s)
    seen = set()
    for row in range(len(data.smiles)):
        key = _key(idx[ptr[row]:ptr[row + 1]], val[ptr[row]:ptr[row + 1]])
        if key in wanted:
            same = canonical(data.smiles[row])
            seen.update(s for s in wanted[key] if s == same)
    return seen


def _key(indices, values) -> bytes:
    return indices.astype("int64").tobytes() + b"|" + values.astype("float32").tobytes()


def run(args: argparse.Namespace) -> None:
    from fewshot.domains.molecules import featurizer
    from fewshot.runs import load_learner

    constraints = Constraints(args.qed_min, args.sa_max, args.mw, args.logp)
    cfg = GAConfig(population=args.population, steps=args.steps, proposals=args.n, mutation_rate=args.mutation_rate,
                   seed=args.seed, min_similarity=args.min_similarity, fresh_only=args.fresh_only)
    if args.oracle and not args.data_root:
        raise ValueError("--oracle reads the assay's measurements from the data root: pass --data-root DIR")
    smiles, labels = read_support(Path(args.support))
    learner, config = load_learner(Path(args.run_dir), args.checkpoint)
    if config.dataset not in MOLECULE_DATASETS:
        raise ValueError(f"run {args.run_dir} is a {config.dataset} run; design needs a molecule run (fsmol, ...)")
    spec = featurizer(config)
    if spec.kind != "ecfp":
        raise ValueError(f"run {args.run_dir} uses {spec.kind} features; design scores proposals with runs on ECFP "
                         "fingerprints (featurizer: ecfp)")
    started = time.time()
    support_x, support_y = features(smiles, spec), torch.tensor(labels)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"run": str(Path(args.run_dir).resolve()), "checkpoint": args.checkpoint, "support": smiles,
                "labels": labels, "ga": vars(cfg), "constraints": vars(constraints), "seeds": args.seeds,
                "similarity_weight": args.similarity_weight}
    settings = json.loads(json.dumps(settings))       # as settings.json reads back (tuples become lists)
    _check_settings(out, settings)

    actives = [s for s, y in zip(smiles, labels) if y == 1]

    def predicted(batch: list[str]) -> torch.Tensor:
        return activity(learner, support_x, support_y, features(batch, spec)).float()

    def fitness(batch: list[str]) -> torch.Tensor:
        w = args.similarity_weight
        p = predicted(batch)
        return p if w == 0 else (1 - w) * p + w * nearest_similarity(batch, actives).float()

    state = evolve(actives if args.seeds == "actives" else smiles, fitness, constraints, cfg, out / "state.json",
                   progress=True, anchors=actives)
    summary = _report(state, smiles, labels, lambda found: seen_in_training(config, args.data_root, found), predicted,
                      out, args)
    summary["support_best_predicted"] = float(predicted(actives).max())
    summary["wall_s"] = round(time.time() - started, 1)
    atomic_write(out / "summary.json", (json.dumps(summary, indent=1) + "\n").encode())
    print(json.dumps(summary) if args.json else _line(summary))


def _check_settings(out: Path, settings: dict) -> None:
    path = out / "settings.json"
    if path.is_file() and json.loads(path.read_text()) != settings:
        raise ValueError(f"{out} holds a design run with other settings (support, run, algorithm or constraints); "
                         "rerun with the same settings or pass a new --out directory")
    atomic_write(path, (json.dumps(settings) + "\n").encode())


def _report(state: GAState, smiles: list[str], labels: list[int], in_training, predicted, out: Path,
            args: argparse.Namespace) -> dict:
    """Write candidates.csv and top.png; the summary (validity, uniqueness, novelty, diversity, the oracle's view).
    The candidates are ranked by fitness; ``predicted`` gives the model's predicted activity ``[n]`` of ``n`` SMILES."""
    proposals = state.proposals
    distinct = {}
    for s, f, props in proposals:
        distinct.setdefault(s, (f, props))
    support = set(smiles)
    training = in_training(list(distinct))
    novel = {s: v for s, v in distinct.items() if s not in support and s not in training}
    ranked = sorted(novel.items(), key=lambda kv: -kv[1][0])
    names = [s for s, _ in ranked]
    activity_of = predicted(names).tolist() if names else []
    similarity = nearest_similarity(names, [s for s, y in zip(smiles, labels) if y == 1]).tolist()
    summary = {"proposals": len(proposals), "products": state.products,
               "valid": (state.products - state.invalid) / max(state.products, 1),
               "proposal_valid": sum(canonical(s) is not None for s, _, _ in proposals) / max(len(proposals), 1),
               "passed_constraints": 1 - state.rejected / max(state.products - state.invalid, 1),
               "outside_trust_region": state.outside / max(state.products - state.invalid - state.rejected, 1),
               "unique": len(distinct) / max(len(proposals), 1),
               "novel": len(novel) / max(len(distinct), 1),
               "novel_vs_support": sum(s not in support for s in distinct) / max(len(distinct), 1),
               "diversity": tanimoto_diversity(list(distinct)),
               "generations": state.generation,
               "top10_fitness": _mean([v[0] for _, v in ranked[:JUDGED]]),
               "top10_predicted": _mean(activity_of[:JUDGED]),
               "top10_similarity": _mean(similarity[:JUDGED]),
               "top": names[:JUDGED]}
    oracle_scores = None
    if args.oracle:
        summary["oracle"], oracle_scores = _judge(args, [s for s, _ in ranked[:JUDGED]], smiles, labels)
    with open(out / "candidates.csv.tmp", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["smiles", "fitness", "predicted_activity", "similarity", "qed", "sa", "mw", "logp"]
                        + (["oracle"] if oracle_scores is not None else []))
        for k, (s, (fit, p)) in enumerate(ranked):
            extra = [f"{oracle_scores[k]:.4f}"] if oracle_scores is not None and k < len(oracle_scores) else []
            writer.writerow([s, f"{fit:.4f}", f"{activity_of[k]:.4f}", f"{similarity[k]:.3f}", f"{p['qed']:.3f}",
                             f"{p['sa']:.3f}", f"{p['mw']:.1f}", f"{p['logp']:.2f}"] + extra)
    (out / "candidates.csv.tmp").replace(out / "candidates.csv")
    _grid(ranked[:GRID], activity_of[:GRID], out / "top.png")
    return summary


def _judge(args: argparse.Namespace, top: list[str], smiles: list[str], labels: list[int]) -> tuple[dict, list]:
    """The proxy oracle's scores of the top proposals beside its out-of-bag scores of the support's actives, and
    the view of a second forest trained on the assay's measurements without the support molecules, which scores
    the support's actives and the proposals alike as molecules it has not seen (``support_blind``)."""
    from fewshot.drug.oracle import ProxyOracle, assay_measurements

    assay_smiles, assay_labels = assay_measurements(args.data_root, args.oracle_split, args.oracle)
    oracle = ProxyOracle(assay_smiles, assay_labels, seed=args.seed)
    actives = [s for s, y in zip(smiles, labels) if y == 1]
    view = _oracle_view(oracle, top, actives)
    view.update({"task": args.oracle, "split": args.oracle_split, "measurements": len(assay_labels),
                 "assay_actives_mean": float(oracle.oob[[y == 1 for y in assay_labels]].mean())})
    support = set(smiles)
    rest = [(s, y) for s, y in zip(assay_smiles, assay_labels) if canonical(s) not in support]
    view["support_blind"] = _oracle_view(ProxyOracle(*zip(*rest), seed=args.seed), top, actives)
    return view, oracle.score(top).tolist() if top else []


def _oracle_view(oracle, top: list[str], actives: list[str]) -> dict:
    """How ``oracle`` scores the ``top`` proposals against the support's ``actives``."""
    scores = oracle.score(top).tolist() if top else []
    support = oracle.score(actives)
    best, mean = float(support.max()), _mean(scores)
    return {"top10_mean": mean, "top10_above_best_active": sum(s > best for s in scores),
            "best_support_active": best, "support_actives_mean": float(support.mean()),
            "beats_best_active": mean > best}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _grid(ranked: list, activity_of: list[float], path: Path) -> None:
    from rdkit import Chem
    from rdkit.Chem import Draw

    if not ranked:
        return
    mols = [Chem.MolFromSmiles(s) for s, _ in ranked]
    image = Draw.MolsToGridImage(mols, molsPerRow=5, subImgSize=(250, 250),
                                 legends=[f"p={a:.2f} QED={p['qed']:.2f} SA={p['sa']:.1f}"
                                          for a, (_, (_, p)) in zip(activity_of, ranked)])
    image.save(str(path))


def _line(s: dict) -> str:
    text = (f"{s['proposals']} proposals after {s['generations']} generations: valid {s['valid']:.3f} (of "
            f"{s['products']} products), unique {s['unique']:.3f}, novel {s['novel']:.3f}, diversity "
            f"{s['diversity']:.3f}; top 10 predicted activity {s['top10_predicted']:.3f}")
    if "oracle" in s:
        o = s["oracle"]
        text += (f"; proxy oracle ({o['task']}): top 10 {o['top10_mean']:.3f} vs best support active "
                 f"{o['best_support_active']:.3f} ({o['top10_above_best_active']}/10 above); without the support "
                 f"{o['support_blind']['top10_mean']:.3f} vs {o['support_blind']['best_support_active']:.3f}")
    return text
