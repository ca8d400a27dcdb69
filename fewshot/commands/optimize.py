"""``fewshot optimize RUN``: active selection on held-out assays with a meta-trained molecule run
(:mod:`fewshot.drug.selection`), beside a random forest and random picks on the same starting supports.

The last line with ``--json``: ``{"metric": "hit_rate", "mean", "stderr", "tasks", "rounds", "batch",
"acquisition", "random": {...}, "forest": {...}, ...}`` (see :func:`fewshot.drug.selection.summarise`).
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

from fewshot.argtypes import nonnegative_int, positive_int
from fewshot.datasets.molecules import MOLECULE_DATASETS
from fewshot.drug.acquisition import ACQUISITIONS
from fewshot.drug.selection import SelectionSpec, forest_scorer, learner_scorer, run_campaigns, summarise
from fewshot.tasks.assays import AssayTasks, SupportSpec

NAME = "optimize"


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def add_parser(sub, parser_class) -> None:
    p = sub.add_parser(NAME,
                       help="active selection on held-out assays: pick molecules to measure, round by round")
    p.add_argument("run_dir", metavar="RUN", help="a `fewshot train` run on a molecule dataset")
    p.add_argument("--ensemble", nargs="+", metavar="RUN", help="more runs of the same data: the ensemble's members' "
                                                               "spread is the uncertainty")
    p.add_argument("--dataset", help="the run's dataset (default: the run's own)")
    p.add_argument("--split", default="test", help="held-out assays: FS-Mol test (default) or valid")
    p.add_argument("--support-size", type=positive_int, default=16, help="starting support, stratified (default 16)")
    p.add_argument("--rounds", type=positive_int, default=5, help="rounds of picks (default 5)")
    p.add_argument("--batch", type=positive_int, default=8, help="molecules picked per round (default 8)")
    p.add_argument("--acquisition", choices=ACQUISITIONS, default="greedy",
                   help="greedy (expected activity), ucb (mean + beta * std), ei (expected improvement), random")
    p.add_argument("--draws", type=positive_int, default=10, help="starting supports per assay (default 10)")
    p.add_argument("--beta", type=_nonnegative_float, default=1.0, help="UCB's weight on the standard deviation")
    p.add_argument("--resamples", type=positive_int, default=16,
                   help="bootstrap resamples of the support for a deterministic learner's uncertainty (default 16)")
    p.add_argument("--trees", type=positive_int, default=100, help="trees of the random-forest baseline")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the supports, bootstrap and random picks")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--data-root", help="directory holding fsmol/fsmol_<split>.csv.gz (default: the run's)")
    p.add_argument("--out", help="directory for per-assay results: written as each assay finishes, reused on rerun")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line last")


def run(args: argparse.Namespace) -> None:
    from fewshot.runs import load_ensemble, load_learner

    spec = SelectionSpec(args.rounds, args.batch, args.acquisition, args.beta)
    if args.support_size < 2:
        raise ValueError(f"--support-size must be >= 2 (one active and one inactive), got {args.support_size}")
    if args.ensemble:
        learner, configs = load_ensemble([Path(args.run_dir), *map(Path, args.ensemble)], args.checkpoint)
        config = configs[0]
    else:
        learner, config = load_learner(Path(args.run_dir), args.checkpoint)
    if config.dataset not in MOLECULE_DATASETS:
        raise ValueError(f"run {args.run_dir} is a {config.dataset} run; optimize needs a molecule run (fsmol, tox21, "
                         "...)")
    if args.dataset not in (None, config.dataset):
        raise ValueError(f"run {args.run_dir} was trained on {config.dataset}, not {args.dataset}; use its dataset")
    name, tasks = config.domain.test_tasks(config, args.split, args.data_root,
                                           support=SupportSpec(size=args.support_size), draws=args.draws, seed=args.seed)
    tasks = _large_enough(tasks, args.support_size + spec.picks)
    settings = {"run": str(Path(args.run_dir).resolve()),
                "ensemble": [str(Path(r).resolve()) for r in args.ensemble or []],
                "split": name, "support_size": args.support_size, "draws": args.draws, "seed": args.seed,
                "checkpoint": args.checkpoint, "resamples": args.resamples, "trees": args.trees, **vars(spec)}
    scorers = {"model": learner_scorer(learner, args.resamples), "forest": forest_scorer(args.trees, args.seed),
               "random": None}
    records = run_campaigns(tasks, args.draws, spec, scorers, args.seed, Path(args.out) if args.out else None,
                            settings, progress=True)
    summary = {**summarise(records, spec), "split": name, "support_size": args.support_size, "draws": args.draws}
    if not args.json:
        _print_table(records, summary)
    print(json.dumps(summary) if args.json else _line(summary))


def _large_enough(tasks: AssayTasks, needed: int) -> AssayTasks:
    """``tasks`` without the assays too small for the starting support and every pick (warned by name)."""
    keep = [a.name for a in tasks.assays if len(a.labels) >= needed]
    small = [a.name for a in tasks.assays if len(a.labels) < needed]
    if not keep:
        raise ValueError(f"no assay has the {needed} molecules a support set and all picks need; lower --rounds, "
                         "--batch or --support-size")
    if small:
        warnings.warn(f"{len(small)} assays have fewer than {needed} molecules (support + rounds x batch), skipped: "
                      f"{', '.join(small[:20])}", stacklevel=2)
    return AssayTasks(tasks.data.select(keep), tasks.support, draws=tasks.draws, seed=tasks.seed, metric=tasks.metric)


def _print_table(records: list[dict], summary: dict) -> None:
    print(f"{'task':<16} {'mols':>5} {'active':>7} {'model':>6} {'forest':>6} {'random':>6}  model per round")
    for r in records:
        rounds = " ".join(f"{v:.2f}" for v in r["model"]["per_round"])
        print(f"{r['task']:<16} {r['molecules']:>5} {r['active_fraction']:>7.3f} {r['model']['hit_rate']:>6.3f} "
              f"{r['forest']['hit_rate']:>6.3f} {r['random']['hit_rate']:>6.3f}  {rounds}")


def _line(s: dict) -> str:
    return (f"hit rate ({s['acquisition']}, {s['rounds']} rounds of {s['batch']}, {s['split']}, {s['tasks']} tasks, "
            f"{s['draws']} draws): model {s['mean']:.4f} ± {s['stderr']:.4f}, forest {s['forest']['mean']:.4f} ± "
            f"{s['forest']['stderr']:.4f}, random {s['random']['mean']:.4f} ± {s['random']['stderr']:.4f}; active "
            f"fraction {s['active_fraction']:.4f}, enrichment {s['enrichment']:.2f}; model - forest "
            f"{s['minus_forest']['mean']:+.4f} ± {s['minus_forest']['stderr']:.4f}; cumulative actives "
            + " ".join(f"{v:.2f}" for v in s["cumulative_actives"]))
