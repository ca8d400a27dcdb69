"""``fewshot study sensitivity | cost | transfer``: the studies of :mod:`fewshot.report.studies`, each writing a
figure, a Markdown table and ``figures.json`` into ``--out`` (shown by ``fewshot report OUT``); rerunning a
study's command continues it."""

from __future__ import annotations

import argparse
import sys
import time

from fewshot.argtypes import nonnegative_int, positive_float, positive_int

NAME = "study"


def add_parser(sub, parser_class) -> None:
    from fewshot.registry import DOMAINS, LEARNERS

    p = sub.add_parser(NAME, help="studies: hyperparameter sensitivity (Optuna), cost, meta-learning vs transfer")
    kinds = p.add_subparsers(dest="study", required=True)
    omniglot = list(DOMAINS["omniglot"].recipes) if "omniglot" in DOMAINS else list(LEARNERS)

    sens = kinds.add_parser("sensitivity", help="hyperparameter sensitivity: an Optuna study of short real runs, "
                                                "fANOVA importances, a heat map of the two most important")
    sens.add_argument("--algo", choices=list(LEARNERS), default="maml", help="learner (default maml)")
    sens.add_argument("--dataset", choices=list(DOMAINS), default="omniglot", help="domain (default omniglot)")
    sens.add_argument("--trials", type=positive_int, default=30,
                      help="complete trials the study should hold, over all its workers (default 30)")
    sens.add_argument("--steps", type=positive_int, default=100, help="training steps of every trial (default 100)")
    sens.add_argument("--val-every", type=positive_int, default=50, help="validate every so many steps (default 50)")
    sens.add_argument("--val-episodes", type=positive_int, default=100,
                      help="validation episodes a trial is scored on (default 100)")
    sens.add_argument("--storage", help="Optuna storage URL (default sqlite:///OUT/study.db; any RDB URL, e.g. "
                                        "postgresql://..., lets several machines share the study)")
    sens.add_argument("--study-name", default="sensitivity", help="the study's name in the storage")
    sens.add_argument("--workers", type=positive_int, default=1,
                      help="worker processes on this machine sharing the study (default 1)")
    sens.add_argument("--worker", type=nonnegative_int, default=0,
                      help="this worker's index, offsetting the sampler seed (give another per extra process)")
    sens.add_argument("--startup-trials", type=positive_int, default=10,
                      help="random trials before the TPE sampler takes over (default 10)")
    sens.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a fixed option of every trial (e.g. ways=5, shots=1), repeatable")
    sens.add_argument("--no-analysis", action="store_true", help="run trials only (what extra workers do)")
    _common(sens, "runs/study-sensitivity")

    cost = kinds.add_parser("cost", help="accuracy against training time, peak memory and FLOPs of every learner "
                                         "on one budget grid (Omniglot 5-way 1-shot), with the Pareto front")
    cost.add_argument("--learners", nargs="+", choices=omniglot, default=["maml", "fomaml", "anil", "protonet",
                                                                          "matching", "finetune"])
    cost.add_argument("--budgets", nargs="+", type=positive_float, default=[30.0, 60.0, 120.0],
                      help="training seconds of the grid (default 30 60 120)")
    cost.add_argument("--episodes", type=positive_int, default=600, help="test episodes of every run (default 600)")
    _common(cost, "runs/study-cost")

    tr = kinds.add_parser("transfer", help="meta-learning vs the fine-tune transfer baseline at 5/20 ways and 1/5 "
                                           "shots, every learner on one budget")
    tr.add_argument("--learners", nargs="+", choices=omniglot, default=omniglot, help="default: all")
    tr.add_argument("--budget", type=positive_float, default=300.0,
                    help="training seconds per learner (default 300)")
    tr.add_argument("--episodes", type=positive_int, default=600, help="test episodes per setting (default 600)")
    _common(tr, "runs/study-transfer")


def _common(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--out", default=out, help=f"the study's directory (default {out})")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the runs (and of the sampler)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads of each run (default 1)")
    p.add_argument("--data-root", help="directory holding the data (default: as `fewshot train`)")


def run(args: argparse.Namespace) -> None:
    from fewshot.report import studies

    start = time.monotonic()
    studies.set_threads(args.threads)
    if args.study == "sensitivity":
        from fewshot.cli import _set_values

        args.fixed = _set_values(args.set)
        manifest = studies.sensitivity(args)
    else:
        manifest = getattr(studies, args.study)(args)
    if manifest is not None:
        print(f"study {args.study}: {manifest.parent} ({time.monotonic() - start:.1f} s)", file=sys.stderr)
