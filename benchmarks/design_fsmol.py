"""``fewshot design`` on the first FS-Mol valid assays, judged by the proxy oracle: the table of
docs/guides/drug-design.md.

For each assay, in the order of the valid split: a stratified support of 16 (seed 0) written by
``python -m fewshot.drug.oracle``, then ``fewshot design RUN --support ... --n 1000 --steps S --oracle TASK
--threads 1 --json`` with the design options given after ``--``; ``--jobs`` assays run at a time. Each assay's
summary is ``OUT/TASK/out/summary.json`` (a rerun with the same settings resumes each design run from its state);
it is added, with the design command's wall and CPU minutes, to ``OUT/results.jsonl`` as the assay finishes. The
Markdown table and the count of assays whose top 10 beat the best support active under the oracle (and under the
oracle trained without the support) are printed at the end. ``--diagnose`` prints instead how the model, the
similarity to the support actives and the oracle agree on each assay's own molecules (:func:`diagnose`).

    python benchmarks/design_fsmol.py runs/protonet-fsmol --data-root DATA --out runs/design --steps 40
    python benchmarks/design_fsmol.py RUN --data-root DATA --out OUT --steps 40 -- --seeds actives \\
        --min-similarity 0.4 --similarity-weight 0.5
    python benchmarks/design_fsmol.py runs/protonet-fsmol --data-root DATA --out runs/design --diagnose
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HEADER = ("| assay | measurements | valid | unique | novel | diversity | top 10 predicted | top 10 similarity | "
          "oracle: top 10 | best support active | support actives | oracle without the support: top 10 / best "
          "support active | minutes |")


def valid_tasks(data_root: str, count: int) -> list[str]:
    """The first ``count`` assays of the FS-Mol valid split that the data holds, in its order."""
    from fewshot.datasets.featurize import FeaturizerSpec
    from fewshot.datasets.molecules import load_assays

    return load_assays("fsmol", data_root, FeaturizerSpec(), "valid").task_names[:count]


def design_assay(task: str, args: argparse.Namespace) -> dict:
    """The support file, the design run and its summary for one assay, with its wall and CPU minutes."""
    base = Path(args.out) / task
    support = base / "support.csv"
    subprocess.run([sys.executable, "-m", "fewshot.drug.oracle", "--data-root", args.data_root, "--split", "valid",
                    "--task", task, "--out", str(support)], check=True, capture_output=True)
    argv = [sys.executable, "-m", "fewshot", "design", args.run, "--support", str(support), "--n", "1000",
            "--steps", str(args.steps), "--out", str(base / "out"), "--data-root", args.data_root, "--oracle", task,
            "--threads", "1", "--json", *args.design]
    start = time.monotonic()
    with open(base / "design.log", "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = (base / "design.log").read_text()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed (exit {proc.returncode}):\n{text[-2000:]}")
    summary = json.loads(text.strip().splitlines()[-1])
    summary["wall_min"] = round((time.monotonic() - start) / 60, 1)
    summary["cpu_min"] = round((usage.ru_utime + usage.ru_stime) / 60, 1)
    return summary


DIAGNOSIS = ("| assay | ρ(model, oracle) | ρ(similarity, oracle) | ρ(mix, oracle) | model ROC-AUC | oracle out-of-bag "
             "ROC-AUC | best support active | other actives above it | best 10 measured | 10 nearest measured |")


def diagnose(task: str, args: argparse.Namespace) -> str:
    """One Markdown row of :data:`DIAGNOSIS`, on the assay's molecules outside its support (seed 0, 16): the Spearman
    correlation with the proxy oracle's out-of-bag score of the adapted model's predicted activity ``p``, of the
    similarity ``s`` to the nearest support active and of ``(p + s) / 2``; the ROC-AUC of ``p`` and of the oracle's
    out-of-bag score against the labels; the oracle's score of the best support active, the fraction of the assay's
    other actives scored above it, and the oracle's mean score of the 10 measured molecules it scores highest and of
    the 10 nearest to the support actives."""
    import numpy as np
    import torch
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    from fewshot.domains.molecules import featurizer
    from fewshot.drug.acquisition import activity
    from fewshot.drug.oracle import ProxyOracle, assay_measurements, support_rows
    from fewshot.drug.properties import canonical, features, nearest_similarity
    from fewshot.runs import load_learner

    learner, config = load_learner(Path(args.run), "best")
    spec = featurizer(config)
    smiles, labels = assay_measurements(args.data_root, "valid", task)
    support = support_rows(args.data_root, "valid", task)
    names, ys = [canonical(s) for s, _ in support], [y for _, y in support]
    actives = [s for s, y in zip(names, ys) if y == 1]
    oracle = ProxyOracle(smiles, labels)
    rest = [k for k, s in enumerate(smiles) if canonical(s) not in set(names)]
    others, oob, y = [smiles[k] for k in rest], oracle.oob[rest], np.asarray(labels)[rest]
    p = activity(learner, features(names, spec), torch.tensor(ys), features(others, spec)).numpy()
    sim = nearest_similarity(others, actives).numpy()
    best = float(oracle.score(actives).max())
    cells = [spearmanr(p, oob)[0], spearmanr(sim, oob)[0], spearmanr((p + sim) / 2, oob)[0], roc_auc_score(y, p),
             roc_auc_score(y, oob)]
    cells += [best, (oob[y == 1] > best).mean(), np.sort(oob)[-10:].mean(), oob[np.argsort(-sim)[:10]].mean()]
    return f"| {task} | " + " | ".join(f"{c:.2f}" if k < 5 else f"{c:.3f}" for k, c in enumerate(cells)) + " |"


def row(task: str, s: dict) -> str:
    """One Markdown row of :data:`HEADER`."""
    o, b = s["oracle"], s["oracle"]["support_blind"]
    minutes = f"{s['wall_min']} ({s['cpu_min']})"
    return (f"| {task} | {o['measurements']} | {s['valid']:.3f} | {s['unique']:.3f} | {s['novel']:.3f} | "
            f"{s['diversity']:.3f} | {s['top10_predicted']:.3f} | {s['top10_similarity']:.3f} | "
            f"{o['top10_mean']:.3f} ({o['top10_above_best_active']}/10) | {o['best_support_active']:.3f} | "
            f"{o['support_actives_mean']:.3f} | {b['top10_mean']:.3f} / {b['best_support_active']:.3f} | {minutes} |")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, design = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a `fewshot train` FS-Mol run")
    p.add_argument("--data-root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--tasks", type=int, default=10, help="the first N valid assays (default 10)")
    p.add_argument("--task", nargs="+", help="these valid assays instead")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--jobs", type=int, default=2, help="assays at a time (default 2)")
    p.add_argument("--diagnose", action="store_true", help="print how the model, the similarity to the support "
                   "actives and the oracle agree on each assay's own molecules instead (no design run)")
    args = p.parse_args(ours)
    args.design = design
    tasks = args.task or valid_tasks(args.data_root, args.tasks)
    if args.diagnose:
        print(DIAGNOSIS)
        print("|" + "---|" * (DIAGNOSIS.count(" | ") + 1))
        for task in tasks:
            print(diagnose(task, args), flush=True)
        return 0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results = Path(args.out) / "results.jsonl"

    def one(task: str) -> dict:
        summary = design_assay(task, args)
        with open(results, "a") as f:          # one line per assay as it finishes (a line is one write)
            f.write(json.dumps({"task": task, "design": design, "steps": args.steps, **summary}) + "\n")
        return summary

    with ThreadPoolExecutor(args.jobs) as pool:
        summaries = list(pool.map(one, tasks))
    print(HEADER)
    print("|" + "---|" * (HEADER.count(" | ") + 1))
    for task, s in zip(tasks, summaries):
        print(row(task, s))
    beat = sum(s["oracle"]["beats_best_active"] for s in summaries)
    blind = sum(s["oracle"]["support_blind"]["beats_best_active"] for s in summaries)
    print(f"top 10 mean above the best support active: {beat} of {len(tasks)} assays (oracle), {blind} of "
          f"{len(tasks)} (oracle without the support)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
