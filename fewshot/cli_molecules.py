"""The ``fewshot`` command on molecule runs: ``eval`` and the test at the end of ``train``.

Results are the mean ± standard error over tasks of ΔAUPRC (FS-Mol) or ROC-AUC (the MoleculeNet sets);
``--json`` prints ``{"metric", "mean", "stderr", "tasks", "support_size"}`` (plus ``support_pos`` and
``support_neg`` for explicit supports) as the last line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fewshot.evaluate import evaluate
from fewshot.files import atomic_write
from fewshot.tasks import molecule_sources
from fewshot.tasks.assays import SupportSpec


def _summary(res, support: SupportSpec) -> dict:
    """The JSON line of a molecule evaluation (mean and standard error over tasks)."""
    summary = {"metric": res.metric, "mean": res.mean, "stderr": res.stderr, "tasks": len(res.tasks),
               "support_size": support.size if support.size is not None else support.positives + support.negatives}
    if support.size is None:
        summary.update(support_pos=support.positives, support_neg=support.negatives)
    return summary


def _line(res, name: str, support, steps: int | None = None) -> str:
    """The human-readable result line."""
    inner = f", {steps} inner steps" if steps else ""
    return (f"{res.metric}: {res.mean:.4f} ± {res.stderr:.4f} (standard error over {len(res.tasks)} tasks, "
            f"{res.episodes} episodes, support {support.describe()}, {name}{inner})")


def test_after_training(learner, cfg, out: Path) -> None:
    """The end of ``fewshot train`` on molecules: score the test tasks (FS-Mol without its test file: valid)."""
    split = molecule_sources.default_eval_split(cfg)
    if split != "test":
        print(f"note: {cfg.dataset} test file not in the data root; scoring the official {split} tasks instead",
              file=sys.stderr)
    name, tasks = molecule_sources.test_tasks(cfg, split)
    res = evaluate(learner, tasks, None, inner_steps=cfg.test_inner_steps, progress=True)
    support = cfg.support_spec()
    atomic_write(out / "test.json", (json.dumps({**_summary(res, support), "split": name}) + "\n").encode())
    print(f"test {_line(res, name, support, cfg.test_inner_steps)}")


def evaluate_run(args: argparse.Namespace, learner, cfg, steps: int | None) -> None:
    """``fewshot eval RUN_DIR`` of a molecule run: mean ± standard error over tasks of ΔAUPRC (FS-Mol) or ROC-AUC,
    with ``steps`` test-time inner steps (``None``: each learner's own)."""
    image_flags = [f for f, v in (("--ways", args.ways), ("--shots", args.shots), ("--queries", args.queries),
                                  ("--episodes", args.episodes), ("--within-alphabet", args.within_alphabet or None))
                   if v is not None]
    if image_flags:
        raise ValueError(f"molecule runs are evaluated on every task with --support-size or --support-pos/"
                         f"--support-neg and --draws; drop {', '.join(image_flags)}")
    if args.support_size is not None and (args.support_pos is not None or args.support_neg is not None):
        raise ValueError("give --support-size or --support-pos and --support-neg, not both")
    if args.support_size is not None:
        support = SupportSpec(size=args.support_size)
    elif args.support_pos is not None or args.support_neg is not None:
        support = SupportSpec(positives=args.support_pos, negatives=args.support_neg)
    else:
        support = cfg.support_spec()
    name, tasks = molecule_sources.test_tasks(cfg, args.split, args.data_root, support=support, draws=args.draws,
                                              seed=args.seed if args.seed is not None else 0)
    res = evaluate(learner, tasks, None, inner_steps=steps, progress=not args.json)
    if args.json:
        print(json.dumps(_summary(res, support)))
    else:
        print(_line(res, name, support, steps))
