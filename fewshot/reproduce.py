"""``fewshot bench reproduce``: train the papers' recipes and print our results beside theirs.

Published numbers (test accuracy %, or MSE for the sinusoid): Omniglot on the Vinyals et al.
split (28x28, rotations) for MAML, first-order MAML (Finn et al. 2017), ProtoNet (Snell et al.
2017), Matching networks (Vinyals et al. 2016) and Reptile (Nichol et al. 2018, transductive);
MAML on the 5-shot sinusoid after 1 / 5 / 10 inner steps (Finn et al. 2017, figure 2).

The Vinyals test classes come from ``images_evaluation.zip``. When ``--data-root`` lacks it,
the Omniglot rows train on the Lake background set with alphabets held out and test on those
(the same recipe, different test classes): the output says which data each row used.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from fewshot.datasets.omniglot import resolve_data_root

#: (algo, ways, shots) -> published Omniglot accuracy (%) on the Vinyals split.
PUBLISHED_OMNIGLOT: dict[tuple[str, int, int], float] = {}
for _algo, _values in {"maml": (98.7, 99.9, 95.8, 98.9), "fomaml": (98.3, 99.2, 89.4, 97.9),
                       "protonet": (98.8, 99.7, 96.0, 98.9), "matching": (98.1, 98.9, 93.8, 98.5),
                       "reptile": (95.39, 98.90, 88.14, 96.65)}.items():
    for (_ways, _shots), _value in zip(((5, 1), (5, 5), (20, 1), (20, 5)), _values):
        PUBLISHED_OMNIGLOT[_algo, _ways, _shots] = _value
#: inner steps -> published MAML sinusoid MSE (5-shot).
PUBLISHED_SINUSOID = {1: 0.67, 5: 0.38, 10: 0.35}
#: the configs/ recipe each (algo, ways) starts from (flags then set ways, shots and the budget); the
#: others use the built-in recipe (fewshot.config.RECIPES).
RECIPE_FILES = {("maml", 5): "maml-omniglot-5w1s.yaml", ("maml", 20): "maml-omniglot-20w1s.yaml",
                ("fomaml", 5): "maml-omniglot-5w1s.yaml", ("fomaml", 20): "maml-omniglot-20w1s.yaml",
                ("protonet", 5): "protonet-omniglot.yaml", ("matching", 5): "matching-omniglot.yaml"}


@dataclass
class Plan:
    """What to run: which rows, how long each trains, how many test episodes."""

    settings: list[tuple[str, int, int]]   # (algo, ways, shots); ("sinusoid", 1, 5) for the sinusoid row
    budget_s: float
    episodes: int                           # test episodes (tasks for the sinusoid)
    val_episodes: int = 200                 # validation episodes (every 250 steps and at the end)


def plan(args: argparse.Namespace) -> Plan:
    if args.full:
        rows = [(a, w, s) for a in ("maml", "fomaml", "protonet", "matching", "reptile")
                for w, s in ((5, 1), (5, 5), (20, 1), (20, 5))]
        return Plan(rows + [("sinusoid", 1, 5)], args.budget or 1740.0, 600)
    rows = [(a, 5, 1) for a in ("maml", "fomaml", "protonet", "matching", "reptile")]
    return Plan(rows + [("sinusoid", 1, 5)], args.budget or 45.0, 100, val_episodes=50)


def has_vinyals_test(data_root: str | None) -> bool:
    try:
        root = resolve_data_root(data_root)
    except (FileNotFoundError, ValueError):
        return False
    return any((root / "omniglot" / name).exists() for name in ("images_evaluation.zip", "images_evaluation"))


def _flags(algo: str, ways: int, shots: int, split: str, p: Plan, seed: int, data_root: str | None) -> dict:
    flags = {"algo": algo, "dataset": "sinusoid" if algo == "sinusoid" else "omniglot", "time_limit": p.budget_s,
             "seed": seed, "data_root": data_root, "steps": 60000, "val_episodes": p.val_episodes}
    if algo == "sinusoid":
        flags.update(algo="maml", steps=70000, shots=shots)
        return flags
    flags.update(split=split, ways=ways, shots=shots)
    if algo in ("protonet", "matching"):
        flags["train_ways"] = max(ways, {"protonet": 60, "matching": 20}[algo])
    return flags


def run_row(algo: str, ways: int, shots: int, p: Plan, out: Path, split: str, seed: int,
            data_root: str | None) -> dict:
    """Train one recipe for ``p.budget_s`` seconds and test it; one result dict."""
    from fewshot.config import load_yaml
    from fewshot.evaluate import evaluate
    from fewshot.runs import run_config, trainer_for

    run_dir = out / f"{algo}-{ways}w{shots}s"
    recipe = Path(__file__).resolve().parent.parent / "configs" / RECIPE_FILES.get((algo, ways), "")
    file_values = load_yaml(recipe) if (algo, ways) in RECIPE_FILES and recipe.is_file() else {}
    file_values = {k: v for k, v in file_values.items() if k not in ("algo", "ways", "shots", "split", "steps")}
    config = run_config(run_dir, file_values, _flags(algo, ways, shots, split, p, seed, data_root))
    start = time.monotonic()
    trainer = trainer_for(config, run_dir, progress=False)
    result = trainer.run()
    cfg = config
    name, tasks = cfg.domain.test_tasks(cfg, shots=shots)
    if algo == "sinusoid":
        ours = {k: evaluate(trainer.deployed, tasks, p.episodes, inner_steps=k) for k in PUBLISHED_SINUSOID}
        return {"algo": "maml", "task": "sinusoid 5-shot", "data": "sinusoid", "steps": result.step,
                "seconds": time.monotonic() - start, "metric": "mse",
                "ours": {k: (r.mean, r.ci95) for k, r in ours.items()}, "theirs": PUBLISHED_SINUSOID}
    res = evaluate(trainer.deployed, tasks, p.episodes, inner_steps=cfg.test_inner_steps)
    return {"algo": algo, "task": f"omniglot {ways}w{shots}s", "data": name, "steps": result.step,
            "seconds": time.monotonic() - start, "metric": "accuracy",
            "ours": (100 * res.mean, 100 * res.ci95), "theirs": PUBLISHED_OMNIGLOT[algo, ways, shots]}


def _format(row: dict, episodes: int) -> str:
    head = f"{row['algo']:<9} {row['task']:<16} {row['steps']:>6} steps {row['seconds']:>6.0f} s  "
    if row["metric"] == "mse":
        pairs = "  ".join(f"{k} step{'s' * (k > 1)}: {m:.3f} ± {c:.3f} (paper {row['theirs'][k]:.2f})"
                          for k, (m, c) in row["ours"].items())
        return head + f"MSE {pairs}; {episodes} tasks"
    mean, ci = row["ours"]
    return head + f"{mean:6.2f} ± {ci:.2f} %  (paper {row['theirs']:.2f} %)  on {row['data']}, {episodes} episodes"


def reproduce(args: argparse.Namespace) -> list[dict]:
    """Run ``fewshot bench reproduce``; print each row as it finishes; return the rows."""
    p = plan(args)
    vinyals = has_vinyals_test(args.data_root)
    split = "vinyals-train" if vinyals else "background"
    out = Path(args.out or f"runs/reproduce-{time.strftime('%Y%m%d-%H%M%S')}")
    note = ("Vinyals split (images_evaluation.zip found)" if vinyals else
            "images_evaluation.zip not found under --data-root: the Omniglot rows train on the Lake background "
            "set and test on its held-out alphabets (not the papers' Vinyals test classes)")
    if not args.json:
        print(f"fewshot bench reproduce: {len(p.settings)} recipes, {p.budget_s:.0f} s of training each "
              f"({'--full' if args.full else 'quick size; --full for the real runs'}); {note}; runs in {out}",
              flush=True)
    rows = []
    for algo, ways, shots in p.settings:
        row = run_row(algo, ways, shots, p, out, split, args.seed, args.data_root)
        rows.append(row)
        print(json.dumps(row) if args.json else _format(row, p.episodes), flush=True)
    return rows
