"""The ``fewshot`` command: ``train``, ``eval``, ``calibrate``, ``download``, ``bench`` and the subcommands of
:mod:`fewshot.commands`.

The command parses flags, asks the registries for the learner and the run's domain (:mod:`fewshot.runs`),
trains with the one trainer (:mod:`fewshot.train`) and leaves scoring and reporting to the domain; each domain
adds its own flags. Bad input exits with status 2 and one line naming the problem and the fix; a failure of
the system (a full disk, an unreachable server) exits with status 1 and one line.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import yaml

from fewshot.argtypes import choices, nonnegative_int, positive_float, positive_int, task_shapes
from fewshot.commands import command_modules

EXIT_BAD_INPUT = 2
EXIT_SYSTEM_ERROR = 1

def temperature_arg(text: str) -> str | float:
    """``--temperature``: ``fitted`` (the run's calibration.json) or a finite number > 0."""
    return "fitted" if text == "fitted" else _temperature_number(text)


def _temperature_number(text: str) -> float:
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be 'fitted' or a finite number > 0, got {text}") from None


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (and exit status 2)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _episode_flags(p: argparse.ArgumentParser) -> None:
    from fewshot.registry import DOMAINS

    p.add_argument("--dataset", choices=list(DOMAINS), help="task family (a registered domain)")
    p.add_argument("--split", help="Omniglot split: background, evaluation, vinyals-train (train); "
                                   "eval also takes test, val, vinyals-val, vinyals-test")
    p.add_argument("--ways", type=positive_int, help="classes per episode (N)")
    p.add_argument("--shots", type=positive_int, help="support examples per class (K)")
    p.add_argument("--queries", type=positive_int, help="query examples per class (Q)")
    p.add_argument("--inner-steps", type=nonnegative_int, help="inner gradient steps")
    p.add_argument("--seed", type=nonnegative_int, help="random seed")
    p.add_argument("--data-root", help="directory holding the data (omniglot/images_background.zip, tox21/, an image "
                                       "folder, ...; default: $FEWSHOT_DATA_ROOT, then the embedded background set)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's choice; use 1 "
                                                      "when other jobs share the cores)")
    p.add_argument("--device", default="cpu", help="where torch computes: cpu (default), cuda, cuda:N or mps; "
                                                   "episodes are drawn on the CPU either way")


def _domain_flags(p: argparse.ArgumentParser, command: str) -> None:
    from fewshot.registry import DOMAINS

    for _, domain in DOMAINS.items():
        domain.add_flags(p, command)


def build_parser() -> argparse.ArgumentParser:
    from fewshot import __version__
    from fewshot.registry import LEARNERS

    parser = _Parser(prog="fewshot", description="Meta-learning on PyTorch.")
    parser.add_argument("--version", action="version", version=f"fewshot {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="meta-train a learner (resumes an existing --out run)")
    train.add_argument("--config", help="YAML file of options, in sections or flat (flags override it)")
    train.add_argument("--algo", choices=list(LEARNERS), help="learner (default protonet)")
    _episode_flags(train)
    train.add_argument("--train-ways", type=positive_int, help="classes per training episode (default: --ways)")
    train.add_argument("--train-queries", type=positive_int,
                       help="queries per class of training episodes (default: --queries)")
    train.add_argument("--meta-batch", type=positive_int, help="tasks per meta-update (T)")
    train.add_argument("--steps", type=positive_int, help="meta-updates")
    train.add_argument("--inner-lr", type=positive_float, help="inner step size alpha")
    train.add_argument("--lr", type=positive_float, help="outer (Adam) learning rate")
    train.add_argument("--time-limit", type=positive_float, help="stop cleanly after this many seconds")
    train.add_argument("--on-nonfinite", choices=("stop", "skip"),
                       help="a NaN/inf meta-loss or gradient: stop, keeping the last good checkpoint (default), "
                            "or skip that meta-batch")
    train.add_argument("--precision", choices=("float32", "bf16", "auto"),
                       help="the training step in float32 or under bfloat16 autocast (weights, optimizer and "
                            "evaluation stay float32); auto: bf16 where the device runs it natively (default: "
                            "the recipe's)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any config option (KEY or SECTION.KEY; VALUE read as YAML), repeatable; flags override it")
    train.add_argument("--print-config", action="store_true", help="print the resolved config (YAML) and exit")
    train.add_argument("--out", help="run directory (default runs/<time>-<algo>-<dataset>)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _domain_flags(train, "train")

    ev = sub.add_parser("eval", help="evaluate a trained run on held-out episodes")
    ev.add_argument("run_dir", help="the --out directory of a `fewshot train` run")
    _episode_flags(ev)
    ev.add_argument("--episodes", type=positive_int, help="episodes to average (default 600)")
    ev.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint")
    ev.add_argument("--augment-support", type=positive_int, metavar="COPIES",
                    help="images: join each support image with COPIES randomly distorted copies of itself (Koch "
                         "et al.'s affine distortions, drawn from --seed), same label, before adapting (test-time "
                         "augmentation)")
    ev.add_argument("--json", action="store_true", help="print the result as one JSON line")
    ev.add_argument("--ensemble", nargs="+", metavar="RUN_DIR",
                    help="score RUN_DIR together with these runs, averaging their class probabilities (runs "
                         "trained on the same data split; images are resized to each run's image_size)")
    ev.add_argument("--calibration", action="store_true",
                    help="classifiers: also score calibration (ECE and MCE over 15 confidence bins, NLL, Brier "
                         "score, 95%% bootstrap intervals over episodes)")
    ev.add_argument("--plot", metavar="DIR", help="write the reliability diagram to DIR/reliability.png (implies "
                                                  "--calibration)")
    ev.add_argument("--temperature", type=temperature_arg, metavar="T|fitted",
                    help="divide the logits by T before scoring (temperature scaling; implies --calibration); "
                         "fitted: the temperature `fewshot calibrate RUN_DIR` stored in RUN_DIR/calibration.json")
    _domain_flags(ev, "eval")

    cal = sub.add_parser("calibrate", help="fit a temperature (temperature scaling) on a run's validation episodes")
    cal.add_argument("run_dir", help="the --out directory of a `fewshot train` run")
    cal.add_argument("--episodes", type=positive_int,
                     help="validation episodes to fit on (default 600, or all of a smaller source such as a "
                          "molecule run's validation assays)")
    cal.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint")
    cal.add_argument("--inner-steps", type=nonnegative_int, help="test-time inner steps (default: the run's)")
    cal.add_argument("--data-root", help="directory holding the run's data, if not where it was trained from")
    cal.add_argument("--json", action="store_true", help="print the result as one JSON line")
    cal.add_argument("--threads", type=positive_int, help="CPU threads for torch")
    cal.add_argument("--device", default="cpu", help="where torch computes: cpu (default), cuda, cuda:N or mps")

    _bench_parser(sub)

    dl = sub.add_parser("download", help="download a dataset (with checksum verification)")
    dl.add_argument("dataset", choices=("omniglot",))
    dl.add_argument("--data-root", required=True, help="directory to download into")
    for module in command_modules():
        module.add_parser(sub, _Parser)
    return parser


def _bench_parser(sub) -> None:
    from fewshot.bench import ALGOS as BENCH_ALGOS, PEERS, VARIANTS

    bench = sub.add_parser("bench", help="benchmarks: meta-step speed and memory, published tables")
    kinds = bench.add_subparsers(dest="bench", required=True, parser_class=_Parser)
    speed = kinds.add_parser("speed", help="meta-step time, tasks/s, peak memory and GFLOP/s, beside "
                                           "learn2learn and higher when installed")
    speed.add_argument("--algos", type=choices(BENCH_ALGOS), default=list(BENCH_ALGOS),
                       help="comma-separated (default all: maml,fomaml,anil,reptile,protonet)")
    speed.add_argument("--nets", type=choices(("strided", "pool")), default=["strided"],
                       help="Conv-4 variants, comma-separated (default strided)")
    speed.add_argument("--tasks", type=task_shapes, default=[(5, 32), (20, 4)],
                       help="WAYSxMETA_BATCH pairs (default 5x32,20x4)")
    speed.add_argument("--shots", type=positive_int, default=1)
    speed.add_argument("--queries", type=positive_int, default=15, help="query examples per class (default 15)")
    speed.add_argument("--inner-steps", type=positive_int, help="inner steps (default: the recipe's)")
    speed.add_argument("--peers", type=choices(PEERS), default=list(PEERS),
                       help="peer libraries to run when installed (default learn2learn,higher)")
    speed.add_argument("--variants", type=choices(VARIANTS), default=[],
                       help="fewshot variants to add: checkpoint (inner-loop gradient checkpointing), bf16 "
                            "(autocast), compile (torch.compile; minutes of compilation), vmap (the meta-batch in one "
                            "torch.func.vmap call), cudagraphs (torch.compile mode reduce-overhead; --device cuda)")
    speed.add_argument("--repeats", type=positive_int, default=10, help="timed meta-steps per row (default 10)")
    speed.add_argument("--warmup", type=nonnegative_int, default=2, help="untimed steps per process (default 2)")
    speed.add_argument("--rounds", type=positive_int, default=2,
                       help="fresh processes per row, the rows of a configuration taking turns (default 2)")
    speed.add_argument("--seed", type=nonnegative_int, default=0)
    speed.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    speed.add_argument("--device", default="cpu", help="where the steps compute: cpu (default), cuda or cuda:N")
    speed.add_argument("--json", action="store_true", help="one JSON object per row")
    rep = kinds.add_parser("reproduce", help="train the papers' recipes (configs/) and print ours beside the "
                                             "published numbers")
    rep.add_argument("--data-root", help="holds omniglot/images_evaluation.zip for the Vinyals test split; "
                                         "without it, Lake background held-out alphabets are used")
    rep.add_argument("--budget", type=positive_float, help="training seconds per recipe (default 45; 1740 with "
                                                           "--full)")
    rep.add_argument("--full", action="store_true", help="every published row (5/20-way, 1/5-shot), 600 test "
                                                          "episodes, 29 min per recipe by default")
    rep.add_argument("--out", help="directory for the runs (default runs/reproduce-<time>)")
    rep.add_argument("--seed", type=nonnegative_int, default=0)
    rep.add_argument("--threads", type=positive_int, help="torch threads")
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


def _set_values(pairs: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs as options (each value read as YAML: 0.01, true, [a, b])."""
    from fewshot.config import split_key, yaml_problem

    values = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {pair}: give KEY=VALUE, e.g. --set lr=0.01")
        try:
            values[split_key(key.strip())] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ValueError(f"--set {pair}: the value is not valid YAML ({yaml_problem(e)})") from None
    return values


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    """The options given as flags (the parsed arguments whose names are config options)."""
    from fewshot.config import schema

    options = schema()[0]
    return {key: value for key, value in vars(args).items() if key in options}


def _train(args: argparse.Namespace) -> None:
    from fewshot import distributed

    distributed.init_from_env()     # under torchrun: one process of several
    try:
        _train_in_group(args)
    finally:
        distributed.shutdown()


def _train_in_group(args: argparse.Namespace) -> None:
    from fewshot.config import check_types, load_yaml
    from fewshot.distributed import Ranks
    from fewshot.runs import load_learner, run_config, trainer_for

    flags = _flags(args)
    file_values = load_yaml(args.config) if args.config else {}
    set_values = _set_values(args.set)
    check_types(set_values, source="--set")
    file_values = {**file_values, **set_values}
    out = args.out
    if out is None:
        algo = flags["algo"] or file_values.get("algo", "protonet")
        dataset = flags["dataset"] or file_values.get("dataset", "omniglot")
        out = f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{algo}-{dataset}"
    if Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"run directory {out} is a file; pass a new or existing directory to --out")
    config = run_config(Path(out), file_values, flags)
    if args.print_config:
        print(yaml.safe_dump(config.to_sections(), sort_keys=False), end="")
        return
    main = Ranks.current().main
    trainer = trainer_for(config, out, device=args.device, progress=not args.no_progress)   # refuses bad data first
    if main:
        print(f"run directory: {out}", file=sys.stderr)
    result = trainer.run()
    if not main:
        return
    note = " (stopped by --time-limit)" if result.stopped_early else ""
    skipped = f"; skipped {result.skipped} meta-batches with a non-finite loss" if result.skipped else ""
    best = "n/a" if result.best_val is None else f"{result.best_val:.4f}"
    print(f"trained {result.step} steps{note}{skipped}; best validation {best}", file=sys.stderr)
    learner, cfg = load_learner(Path(out))
    cfg.domain.test_after_training(learner.to(args.device), cfg, Path(out), args.device)
    from fewshot.report.page import run_report

    run_report(Path(out))       # RUN/report/index.html: the learning curves


def _check_domain_flags(args: argparse.Namespace, domain) -> None:
    """Refuse flags of other domains than the run's (e.g. ``--within-alphabet`` for a molecule run)."""
    from fewshot.registry import DOMAINS

    for _, other in DOMAINS.items():
        for dest in other.flags:
            if dest not in domain.flags and getattr(args, dest, None) not in (None, False):
                raise ValueError(f"--{dest.replace('_', '-')} does not apply to {domain.name} runs; drop it")


def _eval(args: argparse.Namespace) -> None:
    if args.temperature is not None and args.ensemble and args.temperature == "fitted":
        raise ValueError(f"--temperature fitted applies the temperature fitted to run {args.run_dir} alone, not to an "
                         "ensemble; give the ensemble's temperature as a number (--temperature T)")
    if args.plot is not None and Path(args.plot).exists() and not Path(args.plot).is_dir():
        raise ValueError(f"--plot {args.plot} is a file; pass a directory to write reliability.png into")
    learner, configs, steps = _load_runs(args)
    cfg = configs[0]
    if args.dataset not in (None, cfg.dataset):
        raise ValueError(f"run {args.run_dir} was trained on {cfg.dataset}, not {args.dataset}; "
                         "evaluate it on its own dataset")
    _check_domain_flags(args, cfg.domain)
    if (args.calibration or args.plot or args.temperature is not None) and getattr(args, "benchmark", None):
        raise ValueError(f"--benchmark {args.benchmark} scores one-shot error only; drop --calibration, --plot "
                         "and --temperature")
    cfg.domain.evaluate_runs(args, learner, configs, _run_dirs(args), steps)


def _load_runs(args: argparse.Namespace) -> tuple[Any, list, int | None]:
    """The learner ``fewshot eval`` scores (an ensemble with ``--ensemble``; adapting on distorted support copies
    too with ``--augment-support``), the runs' configs (the first is the one episodes are drawn from) and the
    test-time inner steps (``None``: each run's own)."""
    from fewshot.learners.augmented import SupportAugmented
    from fewshot.runs import load_ensemble, load_learner

    if args.ensemble:
        learner, configs = load_ensemble([Path(d) for d in _run_dirs(args)], args.checkpoint)
        steps = args.inner_steps
    else:
        learner, cfg = load_learner(Path(args.run_dir), args.checkpoint)
        configs, steps = [cfg], args.inner_steps if args.inner_steps is not None else cfg.test_inner_steps
    if args.augment_support:
        if not configs[0].domain.images:
            raise ValueError(f"--augment-support distorts images; run {args.run_dir} is a {configs[0].dataset} run, "
                             "so drop the flag")
        learner = SupportAugmented(learner, args.augment_support, args.seed or 0)
    calibration_flags = [flag for flag, given in (("--calibration", args.calibration), ("--plot", args.plot),
                                                  ("--temperature", args.temperature is not None)) if given]
    if calibration_flags and configs[0].domain.task != "classification":
        raise ValueError(f"{calibration_flags[0]} scores class probabilities; run {args.run_dir} is a "
                         f"{configs[0].dataset} ({configs[0].domain.task}) run, so drop it")
    if args.temperature is not None:
        from fewshot.learners.temperature import TemperatureScaled

        if args.temperature == "fitted":
            from fewshot.calibration import fitted_temperature

            args.temperature = fitted_temperature(Path(args.run_dir), args.checkpoint)
        learner = TemperatureScaled(learner, args.temperature)
    return learner.to(args.device), configs, steps


def _calibrate(args: argparse.Namespace) -> None:
    """``fewshot calibrate RUN``: fit a temperature on the run's validation episodes (never its test episodes),
    write ``RUN/calibration.json`` and print it."""
    import json

    from fewshot.calibration import CALIBRATION_FILE, calibrate_run

    record = calibrate_run(Path(args.run_dir), args.checkpoint, args.episodes, args.inner_steps, args.data_root,
                           args.device)
    if args.json:
        print(json.dumps(record))
    else:
        print(f"temperature {record['temperature']:.4f} (fitted on {record['episodes']} validation episodes, "
              f"{record['predictions']} predictions, checkpoint {args.checkpoint}): NLL {record['nll_before']:.4f} "
              f"-> {record['nll_after']:.4f}; written to {Path(args.run_dir) / CALIBRATION_FILE}")


def _run_dirs(args: argparse.Namespace) -> list[str]:
    """The run directories being scored: RUN_DIR and those of ``--ensemble``."""
    return [args.run_dir, *(args.ensemble or [])]


def _download(args: argparse.Namespace) -> None:
    from fewshot.datasets.download import download_omniglot

    for path in download_omniglot(args.data_root):
        print(path)


def _one_line(error: Exception) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fewshot`` command; returns the exit status."""
    warnings.formatwarning = lambda message, category, *rest: f"warning: {message}\n"   # one line, no source
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
        commands = {"train": _train, "eval": _eval, "calibrate": _calibrate, "download": _download,
                    "bench": _bench, **{module.NAME: module.run for module in command_modules()}}
        commands[args.command](args)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"fewshot {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        print(f"fewshot {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_SYSTEM_ERROR
    except KeyboardInterrupt:
        resume = "; resume with the same --out" if args.command == "train" else ""
        print(f"fewshot {args.command}: interrupted{resume}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
