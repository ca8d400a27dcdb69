"""The ``fewshot`` command: ``train``, ``eval``, ``download`` and ``bench``.

Bad input exits with status 2 and one line naming the problem and the fix; a failure of
the system (a full disk, an unreachable server) exits with status 1 and one line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from fewshot.config import ALGOS, DATASETS, GRADIENT_ALGOS, MOLECULE_DATASETS, load_yaml

EXIT_BAD_INPUT = 2
EXIT_SYSTEM_ERROR = 1


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (and exit status 2)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _integer_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text}")
        return value
    return parse


_positive_int, _nonnegative_int = _integer_at_least(1), _integer_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _choices(allowed: Sequence[str]):
    """An argparse type: a comma-separated list of names from ``allowed``."""
    def parse(text: str) -> list[str]:
        names = [n for n in text.split(",") if n]
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {','.join(allowed)} (comma-separated)")
        return names
    return parse


def _task_shapes(text: str) -> list[tuple[int, int]]:
    """``5x32,20x4`` -> ``[(5, 32), (20, 4)]`` (ways x meta-batch)."""
    try:
        shapes = [tuple(int(v) for v in part.split("x")) for part in text.split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(sh) != 2 or min(sh) < 1 for sh in shapes):
        raise argparse.ArgumentTypeError(f"{text!r}: give WAYSxMETA_BATCH pairs, e.g. 5x32,20x4")
    return shapes


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
    p.add_argument("--device", default="cpu", help="where torch computes: cpu (default), cuda, cuda:N or mps; "
                                                   "episodes are drawn on the CPU either way")
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
    train.add_argument("--train-ways", type=_positive_int, help="classes per training episode (default: --ways)")
    train.add_argument("--train-queries", type=_positive_int,
                       help="queries per class of training episodes (default: --queries)")
    train.add_argument("--within-alphabet", action="store_true", default=None,
                       help="draw each training and validation episode's classes from one alphabet "
                            "(the Lake one-shot benchmark's setting)")
    train.add_argument("--distort", action="store_true", default=None,
                       help="random affine distortions of Omniglot training images (Koch et al. 2015)")
    train.add_argument("--meta-batch", type=_positive_int, help="tasks per meta-update (T)")
    train.add_argument("--steps", type=_positive_int, help="meta-updates")
    train.add_argument("--inner-lr", type=_positive_float, help="inner step size alpha")
    train.add_argument("--lr", type=_positive_float, help="outer (Adam) learning rate")
    train.add_argument("--time-limit", type=_positive_float, help="stop cleanly after this many seconds")
    train.add_argument("--on-nonfinite", choices=("stop", "skip"),
                       help="a NaN/inf meta-loss or gradient: stop, keeping the last good checkpoint (default), "
                            "or skip that meta-batch")
    train.add_argument("--precision", choices=("float32", "bf16"),
                       help="the training step in float32 (default) or under bfloat16 autocast (weights, "
                            "optimizer and evaluation stay float32)")
    train.add_argument("--featurizer", choices=("ecfp", "ecfp+desc", "graph"),
                       help="molecules: ECFP counts, ECFP and RDKit descriptors, or graphs (with net: graph)")
    train.add_argument("--out", help="run directory (default runs/<time>-<algo>-<dataset>)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    ev = sub.add_parser("eval", help="evaluate a trained run on held-out episodes")
    ev.add_argument("run_dir", help="the --out directory of a `fewshot train` run")
    _episode_flags(ev)
    ev.add_argument("--episodes", type=_positive_int, help="episodes to average (default 600)")
    ev.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint")
    ev.add_argument("--within-alphabet", action="store_true",
                    help="omniglot: draw each episode's classes from one alphabet, as the Lake one-shot runs do "
                         "(with --ways 20: the runs' task on as many episodes as --episodes)")
    ev.add_argument("--augment-support", type=_positive_int, metavar="COPIES",
                    help="images: join each support image with COPIES randomly distorted copies of itself (Koch "
                         "et al.'s affine distortions, drawn from --seed), same label, before adapting (test-time "
                         "augmentation)")
    ev.add_argument("--json", action="store_true", help="print the result as one JSON line")
    ev.add_argument("--ensemble", nargs="+", metavar="RUN_DIR",
                    help="score RUN_DIR together with these runs, averaging their class probabilities (runs "
                         "trained on the same data split; images are resized to each run's image_size)")
    ev.add_argument("--benchmark", choices=("omniglot-lake-runs",),
                    help="score on a fixed benchmark instead of sampled episodes: omniglot-lake-runs = the 20 "
                         "20-way 1-shot within-alphabet runs of Lake et al. 2015, read from "
                         "DATA_ROOT/omniglot/all_runs.zip (or all_runs/)")

    _bench_parser(sub)

    dl = sub.add_parser("download", help="download a dataset (with checksum verification)")
    dl.add_argument("dataset", choices=("omniglot",))
    dl.add_argument("--data-root", required=True, help="directory to download into")
    return parser


def _bench_parser(sub) -> None:
    from fewshot.bench import ALGOS as BENCH_ALGOS, PEERS, VARIANTS

    bench = sub.add_parser("bench", help="benchmarks: meta-step speed and memory, published tables")
    kinds = bench.add_subparsers(dest="bench", required=True, parser_class=_Parser)
    speed = kinds.add_parser("speed", help="meta-step time, tasks/s, peak memory and GFLOP/s, beside "
                                           "learn2learn and higher when installed")
    speed.add_argument("--algos", type=_choices(BENCH_ALGOS), default=list(BENCH_ALGOS),
                       help="comma-separated (default all: maml,fomaml,anil,reptile,protonet)")
    speed.add_argument("--nets", type=_choices(("strided", "pool")), default=["strided"],
                       help="Conv-4 variants, comma-separated (default strided)")
    speed.add_argument("--tasks", type=_task_shapes, default=[(5, 32), (20, 4)],
                       help="WAYSxMETA_BATCH pairs (default 5x32,20x4)")
    speed.add_argument("--shots", type=_positive_int, default=1)
    speed.add_argument("--queries", type=_positive_int, default=15, help="query examples per class (default 15)")
    speed.add_argument("--inner-steps", type=_positive_int, help="inner steps (default: the recipe's)")
    speed.add_argument("--peers", type=_choices(PEERS), default=list(PEERS),
                       help="peer libraries to run when installed (default learn2learn,higher)")
    speed.add_argument("--variants", type=_choices(VARIANTS), default=[],
                       help="fewshot variants to add: checkpoint (inner-loop gradient checkpointing), bf16 "
                            "(autocast), compile (torch.compile; minutes of compilation)")
    speed.add_argument("--repeats", type=_positive_int, default=10, help="timed meta-steps per row (default 10)")
    speed.add_argument("--warmup", type=_nonnegative_int, default=2, help="untimed steps per process (default 2)")
    speed.add_argument("--rounds", type=_positive_int, default=2,
                       help="fresh processes per row, the rows of a configuration taking turns (default 2)")
    speed.add_argument("--seed", type=_nonnegative_int, default=0)
    speed.add_argument("--threads", type=_positive_int, default=1, help="torch threads (default 1)")
    speed.add_argument("--json", action="store_true", help="one JSON object per row")
    rep = kinds.add_parser("reproduce", help="train the papers' recipes (configs/) and print ours beside the "
                                             "published numbers")
    rep.add_argument("--data-root", help="holds omniglot/images_evaluation.zip for the Vinyals test split; "
                                         "without it, Lake background held-out alphabets are used")
    rep.add_argument("--budget", type=_positive_float, help="training seconds per recipe (default 45; 1740 with "
                                                            "--full)")
    rep.add_argument("--full", action="store_true", help="every published row (5/20-way, 1/5-shot), 600 test "
                                                          "episodes, 29 min per recipe by default")
    rep.add_argument("--out", help="directory for the runs (default runs/reproduce-<time>)")
    rep.add_argument("--seed", type=_nonnegative_int, default=0)
    rep.add_argument("--threads", type=_positive_int, help="torch threads")
    rep.add_argument("--json", action="store_true", help="one JSON object per row")


def _bench(args: argparse.Namespace) -> None:
    from fewshot import bench

    if args.bench == "speed":
        try:
            bench.speed(args)
        except bench.WorkerError as e:
            sys.exit(f"fewshot bench: error: {e}")
    else:
        from fewshot.reproduce import reproduce

        reproduce(args)


def _train(args: argparse.Namespace) -> None:
    from fewshot import distributed

    distributed.init_from_env()     # under torchrun: one process of several
    try:
        _train_in_group(args)
    finally:
        distributed.shutdown()


def _train_in_group(args: argparse.Namespace) -> None:
    from fewshot.distributed import Ranks
    from fewshot.evaluate import evaluate
    from fewshot.files import atomic_write
    from fewshot.tasks.sources import test_tasks
    from fewshot.train import Trainer, run_config

    flags = {"algo": args.algo, "dataset": args.dataset, "split": args.split, "ways": args.ways,
             "shots": args.shots, "queries": args.queries, "train_ways": args.train_ways,
             "train_queries": args.train_queries, "within_alphabet": args.within_alphabet, "distort": args.distort,
             "meta_batch": args.meta_batch, "steps": args.steps,
             "inner_steps": args.inner_steps, "inner_lr": args.inner_lr, "lr": args.lr,
             "time_limit": args.time_limit, "seed": args.seed, "data_root": args.data_root,
             "on_nonfinite": args.on_nonfinite, "precision": args.precision,
             "support_size": args.support_size, "support_pos": args.support_pos, "support_neg": args.support_neg,
             "draws": args.draws, "featurizer": args.featurizer}
    file_values = load_yaml(args.config) if args.config else {}
    out = args.out
    if out is None:
        algo = flags["algo"] or file_values.get("algo", "protonet")
        dataset = flags["dataset"] or file_values.get("dataset", "omniglot")
        out = f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{algo}-{dataset}"
    config = run_config(Path(out), file_values, flags)
    trainer = Trainer(config, Path(out), progress=not args.no_progress, device=args.device)
    main = Ranks.current().main
    if main:
        print(f"run directory: {out}", file=sys.stderr)
    result = trainer.run()
    if not main:
        return
    note = " (stopped by --time-limit)" if result.stopped_early else ""
    skipped = f"; skipped {result.skipped} meta-batches with a non-finite loss" if result.skipped else ""
    best = "n/a" if result.best_val is None else f"{result.best_val:.4f}"
    print(f"trained {result.step} steps{note}{skipped}; best validation {best}", file=sys.stderr)
    from fewshot.train import load_learner
    learner, cfg = load_learner(Path(out))
    learner.to(args.device)
    if cfg.dataset in MOLECULE_DATASETS:
        from fewshot.cli_molecules import test_after_training
        return test_after_training(learner, cfg, Path(out))
    name, tasks = test_tasks(cfg)
    res = evaluate(learner, tasks, cfg.test_episodes, inner_steps=cfg.test_inner_steps, progress=True)
    summary = _summary(res, cfg.dataset, name, cfg.ways, cfg.shots)
    atomic_write(Path(out) / "test.json", (json.dumps(summary) + "\n").encode())
    print(f"test {res.metric}: {res.mean:.4f} ± {res.ci95:.4f} ({res.episodes} episodes, "
          f"{cfg.ways}-way {cfg.shots}-shot, {name})")


def _summary(res, dataset: str, split: str, ways: int, shots: int) -> dict:
    return {"metric": res.metric, "mean": res.mean, "ci95": res.ci95, "episodes": res.episodes,
            "dataset": dataset, "split": split, "ways": ways, "shots": shots}


def _eval(args: argparse.Namespace) -> None:
    from fewshot.evaluate import evaluate
    from fewshot.tasks.sources import character, check_held_out_by_all, test_tasks

    if args.benchmark is not None:
        return _eval_benchmark(args)
    learner, configs, steps = _load_runs(args)
    cfg = configs[0]
    if args.dataset not in (None, cfg.dataset):
        raise ValueError(f"run {args.run_dir} was trained on {cfg.dataset}, not {args.dataset}; "
                         "evaluate it on its own dataset")
    if cfg.dataset in MOLECULE_DATASETS:
        from fewshot.cli_molecules import evaluate_run
        return evaluate_run(args, learner, cfg, steps)
    head = _fixed_head(args, configs)
    if args.ways not in (None, cfg.ways) and head:
        raise ValueError(f"{head[1]} run {head[0]} has a {cfg.ways}-way head; evaluate with --ways {cfg.ways}")
    seed = args.seed if args.seed is not None else 0
    name, tasks = test_tasks(cfg, args.split, args.data_root, ways=args.ways, shots=args.shots,
                             queries=args.queries, seed=seed, within_alphabet=args.within_alphabet)
    if args.ensemble and cfg.dataset == "omniglot":
        check_held_out_by_all(list(zip(args.ensemble, configs[1:])), {character(c) for c in tasks.data.class_names},
                              name, "score the ensemble on the test alphabets its runs share (drop --split)",
                              args.data_root)
    res = evaluate(learner, tasks, args.episodes or 600, inner_steps=steps, progress=not args.json)
    summary = _summary(res, cfg.dataset, name, args.ways or cfg.ways, args.shots or cfg.shots)
    if args.within_alphabet:
        summary["within_alphabet"] = True
        name += ", within one alphabet"
    if args.augment_support:
        summary["augment_support"] = args.augment_support
        name += f", support + {args.augment_support} distorted copies"
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{res.metric}: {res.mean:.4f} ± {res.ci95:.4f} ({res.episodes} episodes, "
              f"{summary['ways']}-way {summary['shots']}-shot, {name}, {_steps_text(steps)})")


def _load_runs(args: argparse.Namespace) -> tuple[Any, list, int | None]:
    """The learner ``fewshot eval`` scores (an ensemble with ``--ensemble``; adapting on distorted support copies
    too with ``--augment-support``), the runs' configs (the first is the one episodes are drawn from) and the
    test-time inner steps (``None``: each run's own)."""
    from fewshot.learners.augmented import SupportAugmented
    from fewshot.train import load_ensemble, load_learner

    if args.ensemble:
        learner, configs = load_ensemble([Path(d) for d in _run_dirs(args)], args.checkpoint)
        steps = args.inner_steps
    else:
        learner, cfg = load_learner(Path(args.run_dir), args.checkpoint)
        configs, steps = [cfg], args.inner_steps if args.inner_steps is not None else cfg.test_inner_steps
    if args.augment_support:
        if configs[0].dataset != "omniglot":
            raise ValueError(f"--augment-support distorts images; run {args.run_dir} is a {configs[0].dataset} run, "
                             "so drop the flag")
        learner = SupportAugmented(learner, args.augment_support, args.seed or 0)
    return learner.to(args.device), configs, steps


def _run_dirs(args: argparse.Namespace) -> list[str]:
    """The run directories being scored: RUN_DIR and those of ``--ensemble``."""
    return [args.run_dir, *(args.ensemble or [])]


def _fixed_head(args: argparse.Namespace, configs: list) -> tuple[str, str] | None:
    """(run directory, algo) of the first run being scored whose output head has a fixed width, if any
    (the runs of an ensemble share the first one's ways)."""
    return next(((run, c.algo) for run, c in zip(_run_dirs(args), configs) if c.algo in GRADIENT_ALGOS), None)


def _steps_text(steps: int | None) -> str:
    return "each run's own inner steps" if steps is None else f"{steps} inner steps"


def _eval_benchmark(args: argparse.Namespace) -> None:
    """``fewshot eval RUN_DIR --benchmark omniglot-lake-runs``: the mean one-shot error over Lake's runs."""
    from fewshot.datasets.lake_runs import find_lake_runs, lake_error, load_lake_runs
    from fewshot.tasks.sources import check_held_out_by_all

    fixed = [flag for flag, value in (("--split", args.split), ("--ways", args.ways), ("--shots", args.shots),
                                      ("--queries", args.queries), ("--dataset", args.dataset)) if value is not None]
    if fixed:
        raise ValueError(f"{args.benchmark} fixes its own episodes (20-way 1-shot runs); drop {', '.join(fixed)}")
    learner, configs, steps = _load_runs(args)
    cfg = configs[0]
    if cfg.dataset != "omniglot":
        raise ValueError(f"run {args.run_dir} was trained on {cfg.dataset}; {args.benchmark} needs an omniglot run")
    source = find_lake_runs(args.data_root)
    runs = load_lake_runs(args.data_root, cfg.image_size)
    ways = {run.ways for run in runs}
    head = _fixed_head(args, configs)
    if head and ways != {cfg.ways}:
        raise ValueError(f"{head[1]} run {head[0]} has a {cfg.ways}-way head but the runs are "
                         f"{'/'.join(map(str, sorted(ways)))}-way; train it with --ways 20")
    if all(run.characters is not None for run in runs):
        check_held_out_by_all(list(zip(_run_dirs(args), configs)), {c for run in runs for c in run.characters},
                              f"the runs in {source}", "build them from held-out alphabets "
                              "(python benchmarks/make_lake_runs.py --data-root DIR)")
    else:
        trained_on = "" if cfg.split == "background" else (
            f" This run trained on {cfg.split}, which holds evaluation-set alphabets, the source of the official "
            "runs: the score may be optimistic.")
        print(f"note: {source} has no fixture.json manifest (as the official archive); its characters were not "
              f"checked against this run's training classes.{trained_on}", file=sys.stderr)
    result = lake_error(learner, runs, inner_steps=steps)
    summary = {"benchmark": args.benchmark, **result, "ways": max(ways), "shots": 1, "source": str(source)}
    if args.augment_support:
        summary["augment_support"] = args.augment_support
    if args.json:
        print(json.dumps(summary))
    else:
        copies = f", support + {args.augment_support} distorted copies" if args.augment_support else ""
        print(f"error: {result['mean']:.4f} ± {result['ci95']:.4f} ({result['runs']} runs, "
              f"{'/'.join(map(str, sorted(ways)))}-way 1-shot within one alphabet, {args.benchmark} from {source}"
              f"{copies}, {_steps_text(steps)})")


def _download(args: argparse.Namespace) -> None:
    from fewshot.datasets.download import download_omniglot

    for path in download_omniglot(args.data_root):
        print(path)


def _one_line(error: Exception) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


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
        if hasattr(args, "device"):
            from fewshot.devices import resolve_device

            args.device = resolve_device(args.device)
        {"train": _train, "eval": _eval, "download": _download, "bench": _bench}[args.command](args)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"fewshot {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        print(f"fewshot {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_SYSTEM_ERROR
    except KeyboardInterrupt:
        print(f"fewshot {args.command}: interrupted; resume with the same --out", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
