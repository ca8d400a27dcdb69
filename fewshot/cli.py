"""The ``fewshot`` command: ``train``, ``eval`` and ``download``.

Bad input exits with status 2 and one line naming the problem and the fix.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from fewshot.config import ALGOS, DATASETS, GRADIENT_ALGOS, MOLECULE_DATASETS, load_yaml

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (and exit status 2)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _episode_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=DATASETS, help="task family")
    p.add_argument("--split", help="Omniglot split: background, evaluation, vinyals-train (train); "
                                   "eval also takes test, val, vinyals-val, vinyals-test")
    p.add_argument("--ways", type=_positive_int, help="classes per episode (N)")
    p.add_argument("--shots", type=_positive_int, help="support examples per class (K)")
    p.add_argument("--queries", type=_positive_int, help="query examples per class (Q)")
    p.add_argument("--inner-steps", type=_nonnegative_int, help="inner gradient steps")
    p.add_argument("--seed", type=_nonnegative_int, help="random seed")
    p.add_argument("--data-root", help="directory holding omniglot/images_background.zip, ... "
                                       "(default: $FEWSHOT_DATA_ROOT, then the embedded background set)")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for torch (default: torch's choice; use 1 "
                                                       "when other jobs share the cores)")
    p.add_argument("--support-size", type=_positive_int, help="molecules: support molecules per task, stratified "
                                                            "by the task's active fraction (FS-Mol: 16, 32, 64, 128)")
    p.add_argument("--support-pos", type=_positive_int, help="molecules: exactly this many actives in the support "
                                                           "set (with --support-neg; the Tox21 protocol)")
    p.add_argument("--support-neg", type=_positive_int, help="molecules: exactly this many inactives")
    p.add_argument("--draws", type=_positive_int, help="molecules: evaluation episodes per task (FS-Mol 10, Tox21 20)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fewshot", description="Meta-learning on PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="meta-train a learner (resumes an existing --out run)")
    train.add_argument("--config", help="YAML file of options (flags override it)")
    train.add_argument("--algo", choices=ALGOS, help="learner (default protonet)")
    _episode_flags(train)
    train.add_argument("--meta-batch", type=_positive_int, help="tasks per meta-update (T)")
    train.add_argument("--steps", type=_positive_int, help="meta-updates")
    train.add_argument("--inner-lr", type=_positive_float, help="inner step size alpha")
    train.add_argument("--lr", type=_positive_float, help="outer (Adam) learning rate")
    train.add_argument("--time-limit", type=_positive_float, help="stop cleanly after this many seconds")
    train.add_argument("--featurizer", choices=("ecfp", "ecfp+desc", "graph"),
                       help="molecules: ECFP counts, ECFP and RDKit descriptors, or graphs (with net: graph)")
    train.add_argument("--out", help="run directory (default runs/<time>-<algo>-<dataset>)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    ev = sub.add_parser("eval", help="evaluate a trained run on held-out episodes")
    ev.add_argument("run_dir", help="the --out directory of a `fewshot train` run")
    _episode_flags(ev)
    ev.add_argument("--episodes", type=_positive_int, help="episodes to average (default 600)")
    ev.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint")
    ev.add_argument("--json", action="store_true", help="print the result as one JSON line")
    ev.add_argument("--benchmark", choices=("omniglot-lake-runs",),
                    help="score on a fixed benchmark instead of sampled episodes: omniglot-lake-runs = the 20 "
                         "20-way 1-shot within-alphabet runs of Lake et al. 2015, read from "
                         "DATA_ROOT/omniglot/all_runs.zip (or all_runs/)")

    dl = sub.add_parser("download", help="download a dataset (with checksum verification)")
    dl.add_argument("dataset", choices=("omniglot",))
    dl.add_argument("--data-root", required=True, help="directory to download into")
    return parser


def _train(args: argparse.Namespace) -> None:
    from fewshot.evaluate import evaluate
    from fewshot.tasks.sources import test_tasks
    from fewshot.train import Trainer, run_config

    flags = {"algo": args.algo, "dataset": args.dataset, "split": args.split, "ways": args.ways,
             "shots": args.shots, "queries": args.queries, "meta_batch": args.meta_batch, "steps": args.steps,
             "inner_steps": args.inner_steps, "inner_lr": args.inner_lr, "lr": args.lr,
             "time_limit": args.time_limit, "seed": args.seed, "data_root": args.data_root,
             "support_size": args.support_size, "support_pos": args.support_pos, "support_neg": args.support_neg,
             "draws": args.draws, "featurizer": args.featurizer}
    file_values = load_yaml(args.config) if args.config else {}
    out = args.out
    if out is None:
        algo = flags["algo"] or file_values.get("algo", "protonet")
        dataset = flags["dataset"] or file_values.get("dataset", "omniglot")
        out = f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{algo}-{dataset}"
    config = run_config(Path(out), file_values, flags)
    trainer = Trainer(config, Path(out), progress=not args.no_progress)
    print(f"run directory: {out}", file=sys.stderr)
    result = trainer.run()
    note = " (stopped by --time-limit)" if result.stopped_early else ""
    best = "n/a" if result.best_val is None else f"{result.best_val:.4f}"
    print(f"trained {result.step} steps{note}; best validation {best}", file=sys.stderr)
    from fewshot.train import load_learner
    learner, cfg = load_learner(Path(out))
    if cfg.dataset in MOLECULE_DATASETS:
        from fewshot.cli_molecules import test_after_training
        return test_after_training(learner, cfg, Path(out))
    name, tasks = test_tasks(cfg)
    res = evaluate(learner, tasks, cfg.test_episodes, inner_steps=cfg.test_inner_steps, progress=True)
    summary = _summary(res, cfg.dataset, name, cfg.ways, cfg.shots)
    (Path(out) / "test.json").write_text(json.dumps(summary) + "\n")
    print(f"test {res.metric}: {res.mean:.4f} ± {res.ci95:.4f} ({res.episodes} episodes, "
          f"{cfg.ways}-way {cfg.shots}-shot, {name})")


def _summary(res, dataset: str, split: str, ways: int, shots: int) -> dict:
    return {"metric": res.metric, "mean": res.mean, "ci95": res.ci95, "episodes": res.episodes,
            "dataset": dataset, "split": split, "ways": ways, "shots": shots}


def _eval(args: argparse.Namespace) -> None:
    from fewshot.evaluate import evaluate
    from fewshot.tasks.sources import test_tasks
    from fewshot.train import load_learner

    if args.benchmark is not None:
        return _eval_benchmark(args)
    learner, cfg = load_learner(Path(args.run_dir), args.checkpoint)
    if args.dataset not in (None, cfg.dataset):
        raise ValueError(f"run {args.run_dir} was trained on {cfg.dataset}, not {args.dataset}; "
                         "evaluate it on its own dataset")
    if cfg.dataset in MOLECULE_DATASETS:
        from fewshot.cli_molecules import evaluate_run
        return evaluate_run(args, learner, cfg)
    if args.ways not in (None, cfg.ways) and cfg.algo in GRADIENT_ALGOS:
        raise ValueError(f"{cfg.algo} run {args.run_dir} has a {cfg.ways}-way head; evaluate with --ways {cfg.ways}")
    seed = args.seed if args.seed is not None else 0
    name, tasks = test_tasks(cfg, args.split, args.data_root, ways=args.ways, shots=args.shots,
                             queries=args.queries, seed=seed)
    steps = args.inner_steps if args.inner_steps is not None else cfg.test_inner_steps
    res = evaluate(learner, tasks, args.episodes or 600, inner_steps=steps, progress=not args.json)
    summary = _summary(res, cfg.dataset, name, args.ways or cfg.ways, args.shots or cfg.shots)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{res.metric}: {res.mean:.4f} ± {res.ci95:.4f} ({res.episodes} episodes, "
              f"{summary['ways']}-way {summary['shots']}-shot, {name}, {steps} inner steps)")


def _eval_benchmark(args: argparse.Namespace) -> None:
    """``fewshot eval RUN_DIR --benchmark omniglot-lake-runs``: the mean one-shot error over Lake's runs."""
    from fewshot.datasets.lake_runs import find_lake_runs, lake_error, load_lake_runs
    from fewshot.tasks.sources import character, omniglot_part
    from fewshot.train import load_learner

    fixed = [flag for flag, value in (("--split", args.split), ("--ways", args.ways), ("--shots", args.shots),
                                      ("--queries", args.queries), ("--dataset", args.dataset)) if value is not None]
    if fixed:
        raise ValueError(f"{args.benchmark} fixes its own episodes (20-way 1-shot runs); drop {', '.join(fixed)}")
    learner, cfg = load_learner(Path(args.run_dir), args.checkpoint)
    if cfg.dataset != "omniglot":
        raise ValueError(f"run {args.run_dir} was trained on {cfg.dataset}; {args.benchmark} needs an omniglot run")
    source = find_lake_runs(args.data_root)
    runs = load_lake_runs(args.data_root, cfg.image_size)
    ways = {run.ways for run in runs}
    if cfg.algo in GRADIENT_ALGOS and ways != {cfg.ways}:
        raise ValueError(f"{cfg.algo} run {args.run_dir} has a {cfg.ways}-way head but the runs are "
                         f"{'/'.join(map(str, sorted(ways)))}-way; train it with --ways 20")
    if all(run.characters is not None for run in runs):
        seen = {character(c) for c in omniglot_part(cfg, "train").class_names}
        overlap = sorted(seen & {c for run in runs for c in run.characters})
        if overlap:
            raise ValueError(f"the runs in {source} share {len(overlap)} characters with this run's training classes "
                             f"(e.g. {overlap[0]}); build them from held-out alphabets "
                             "(python benchmarks/make_lake_runs.py --data-root DIR)")
    else:
        trained_on = "" if cfg.split == "background" else (
            f" This run trained on {cfg.split}, which holds evaluation-set alphabets, the source of the official "
            "runs: the score may be optimistic.")
        print(f"note: {source} has no fixture.json manifest (as the official archive); its characters were not "
              f"checked against this run's training classes.{trained_on}", file=sys.stderr)
    steps = args.inner_steps if args.inner_steps is not None else cfg.test_inner_steps
    result = lake_error(learner, runs, inner_steps=steps)
    summary = {"benchmark": args.benchmark, **result, "ways": max(ways), "shots": 1, "source": str(source)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"error: {result['mean']:.4f} ± {result['ci95']:.4f} ({result['runs']} runs, "
              f"{'/'.join(map(str, sorted(ways)))}-way 1-shot within one alphabet, {args.benchmark} from {source}, "
              f"{steps} inner steps)")


def _download(args: argparse.Namespace) -> None:
    from fewshot.datasets.download import download_omniglot

    for path in download_omniglot(args.data_root):
        print(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fewshot`` command; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        {"train": _train, "eval": _eval, "download": _download}[args.command](args)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"fewshot {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"fewshot {args.command}: interrupted; resume with the same --out", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
