"""What a domain is: the one place that knows a kind of data.

A domain owns the ``data`` section of a run's configuration (its options dataclass), the nets its inputs fit,
its recipes (the papers' settings per learner), its task sources, the settings a run derives from its data,
its command-line flags and how ``fewshot train`` and ``fewshot eval`` score and report a run. The trainer, the
evaluator, the learners and the command never ask which domain they serve.

:class:`EpisodeDomain` is the shared base of the domains scored on N-way (or regression) episodes with a mean
and a 95 % confidence interval: Omniglot, image folders, sinusoid.

``fewshot eval --calibration`` (implied by ``--plot`` and ``--temperature``) adds the calibration of a
classifier (:mod:`fewshot.calibration`) to a domain's result: :func:`report_calibration` puts its keys in the
JSON line, writes the reliability diagram and gives the second line of the plain output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from torch.utils.data import Dataset

from fewshot.calibration import reliability_diagram
from fewshot.evaluate import EvalResult, evaluate
from fewshot.files import atomic_write
from fewshot.registry import LEARNERS
from fewshot.report.records import record_eval
from fewshot.tasks.seeding import derive_seed

TRAIN_SEED_KEY, VAL_SEED_KEY = 0, 1     # episode streams of a run: derive_seed(seed, key)


class Domain:
    """Base class of the domains (see the module docstring); a domain module registers one instance with
    :func:`fewshot.registry.register_domain`.

    Attributes:
        name: the ``dataset`` value that selects it.
        options: the dataclass of its ``data`` section.
        task: ``"classification"`` or ``"regression"``.
        nets: the nets its inputs fit; the first is the default.
        recipes: learner name -> settings (any section's keys) that the papers use on this data.
        images: its inputs are images (test-time support augmentation and ensembles at several sizes apply).
        ensemble_shared: settings every run of an ensemble must share with the first.
        flags: the ``dest`` names of its own command-line flags.
    """

    name: str
    options: type
    task = "classification"
    nets: tuple[str, ...] = ()
    recipes: dict[str, dict[str, Any]] = {}
    images = False
    ensemble_shared: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()

    # -- configuration -------------------------------------------------------------------------
    def validate(self, config) -> None:
        """Refuse settings that cannot work on this data (the data section's own checks run before)."""

    def input_shape(self, config) -> tuple[int, ...]:
        """One example's shape, e.g. ``(1, 28, 28)`` (what the net is built for)."""
        raise NotImplementedError

    def fill_in(self, config) -> None:
        """Settings a new run derives from its data (held-out parts, input widths), written into ``config``."""

    def image_side(self, config) -> int | None:
        """The side images are given at (``None``: not images)."""
        return None

    def task_family(self, config) -> Any:
        """The environments' task family of a meta-RL domain (:mod:`fewshot.domains.rl`; ``None``: not RL)."""
        return None

    # -- command-line flags --------------------------------------------------------------------
    def add_flags(self, parser: argparse.ArgumentParser, command: str) -> None:
        """Add this domain's flags to the ``train`` or ``eval`` parser (their ``dest`` names in :attr:`flags`)."""

    # -- task sources ----------------------------------------------------------------------------
    def train_tasks(self, config) -> Dataset:
        raise NotImplementedError

    def val_tasks(self, config) -> Dataset:
        raise NotImplementedError

    # -- scoring and reporting ---------------------------------------------------------------------
    def test_after_training(self, learner, config, out: Path, device) -> None:
        """The end of ``fewshot train``: score the run's test part, print it and write ``out/test.json``."""
        raise NotImplementedError

    def evaluate_runs(self, args: argparse.Namespace, learner, configs: list, run_dirs: list[str],
                      steps: int | None) -> None:
        """``fewshot eval``: score ``learner`` (one run, or an ensemble of ``run_dirs``) and print the result."""
        raise NotImplementedError


def fixed_head(run_dirs: Sequence[str], configs: Sequence) -> tuple[str, str] | None:
    """(run directory, algo) of the first run whose net ends in a head of fixed width, if any."""
    return next(((run, c.algo) for run, c in zip(run_dirs, configs) if LEARNERS[c.algo].head), None)


def steps_text(steps: int | None) -> str:
    return "each run's own inner steps" if steps is None else f"{steps} inner steps"


class EpisodeDomain(Domain):
    """A domain scored on sampled episodes, mean and 95 % confidence interval over ``--episodes`` of them.

    Subclasses implement :meth:`test_tasks`; ``fewshot eval --json`` prints
    ``{"metric", "mean", "ci95", "episodes", "dataset", "split", "ways", "shots"}``, with ``--calibration`` also
    ``"ece", "mce", "nll", "brier"`` and their ``"*_ci95"`` half-widths (and ``"temperature"`` with
    ``--temperature``).
    """

    def test_tasks(self, config, split: str | None = None, data_root: str | None = None, *, ways: int | None = None,
                   shots: int | None = None, queries: int | None = None, seed: int = 0,
                   args: argparse.Namespace | None = None) -> tuple[str, Dataset]:
        """``(name of the data, episodes)`` to score: the run's test part unless ``split`` names another."""
        raise NotImplementedError

    def check_runs(self, run_dirs: Sequence[str], configs: Sequence, tasks: Dataset, name: str,
                   data_root: str | None) -> None:
        """Refuse to score runs on data any of them trained on (beyond the first run's own held-out part)."""

    def describe(self, args: argparse.Namespace, summary: dict[str, Any]) -> str:
        """Extra words for the result line (and keys for ``summary``) from this domain's eval flags."""
        return ""

    def test_after_training(self, learner, config, out: Path, device) -> None:
        name, tasks = self.test_tasks(config)
        res = evaluate(learner, tasks, config.test_episodes, inner_steps=config.test_inner_steps, progress=True)
        summary = self.summary(res, config, name, config.ways, config.shots)
        atomic_write(out / "test.json", (json.dumps(summary) + "\n").encode())
        record_eval(out, summary, res, seed=0, queries=config.queries if config.applies("queries") else None,
                    inner_steps=config.test_inner_steps)
        print(f"test {res.metric}: {res.mean:.4f} ± {res.ci95:.4f} ({res.episodes} episodes, "
              f"{config.ways}-way {config.shots}-shot, {name})")

    def summary(self, res: EvalResult, config, split: str, ways: int, shots: int) -> dict[str, Any]:
        return {"metric": res.metric, "mean": res.mean, "ci95": res.ci95, "episodes": res.episodes,
                "dataset": config.dataset, "split": split, "ways": ways, "shots": shots}

    def evaluate_runs(self, args, learner, configs, run_dirs, steps) -> None:
        cfg = configs[0]
        head = fixed_head(run_dirs, configs)
        if args.ways not in (None, cfg.ways) and head:
            raise ValueError(f"{head[1]} run {head[0]} has a {cfg.ways}-way head; evaluate with --ways {cfg.ways}")
        seed = args.seed if args.seed is not None else 0
        name, tasks = self.test_tasks(cfg, args.split, args.data_root, ways=args.ways, shots=args.shots,
                                      queries=args.queries, seed=seed, args=args)
        if len(run_dirs) > 1:
            self.check_runs(run_dirs, configs, tasks, name, args.data_root)
        res = evaluate(learner, tasks, args.episodes or 600, inner_steps=steps, progress=not args.json,
                       calibration=wants_calibration(args))
        summary = self.summary(res, cfg, name, args.ways or cfg.ways, args.shots or cfg.shots)
        name += self.describe(args, summary)
        second = report_calibration(args, res, summary, f"{cfg.algo} {name}")
        if len(run_dirs) == 1:          # RUN/evals.jsonl: what `fewshot report` draws test results from
            record_eval(run_dirs[0], summary, res, seed=seed, inner_steps=steps,
                        queries=args.queries or (cfg.queries if cfg.applies("queries") else None))
        if args.json:
            print(json.dumps(summary))
        else:
            print(f"{res.metric}: {res.mean:.4f} ± {res.ci95:.4f} ({res.episodes} episodes, "
                  f"{summary['ways']}-way {summary['shots']}-shot, {name}, {steps_text(steps)})")
            if second:
                print(second)


class ImageDomain(EpisodeDomain):
    """An episode domain of square images, ``[channels, image_size, image_size]``: test-time support
    augmentation (``fewshot eval --augment-support``) and ensembles of runs at several sizes apply."""

    images = True

    def channels(self, config) -> int:
        return 1

    def input_shape(self, config) -> tuple[int, ...]:
        return (self.channels(config), config.image_size, config.image_size)

    def image_side(self, config) -> int:
        return config.image_size

    def describe(self, args, summary) -> str:
        if args.augment_support:
            summary["augment_support"] = args.augment_support
            return f", support + {args.augment_support} distorted copies"
        return ""


def wants_calibration(args: argparse.Namespace) -> bool:
    """``fewshot eval`` asked for calibration metrics (``--calibration``, ``--plot`` or ``--temperature``)."""
    return bool(getattr(args, "calibration", False) or getattr(args, "plot", None)
                or getattr(args, "temperature", None) is not None)


def report_calibration(args: argparse.Namespace, res: EvalResult, summary: dict[str, Any], title: str) -> str | None:
    """Put the calibration of ``res`` (if scored) into ``summary`` (the JSON line's keys ``ece, mce, nll, brier``
    and their ``*_ci95``, ``temperature`` when one was applied), write ``--plot DIR/reliability.png``, and return
    the plain output's second line (``None`` without calibration)."""
    cal = res.calibration
    if cal is None:
        return None
    summary.update(cal.as_dict())
    temperature = getattr(args, "temperature", None)
    scaled = ""
    if temperature is not None:
        summary["temperature"] = temperature
        scaled = f"; temperature {temperature:.4g}"
        title += f", T = {temperature:.3g}"
    if getattr(args, "plot", None):
        path = reliability_diagram(cal, Path(args.plot) / "reliability.png", title=title)
        print(f"reliability diagram: {path}", file=sys.stderr)
    return f"calibration: {cal}{scaled}"


def episode_seeds(config) -> tuple[int, int]:
    """The seeds of a run's training and validation episode streams."""
    return derive_seed(config.seed, TRAIN_SEED_KEY), derive_seed(config.seed, VAL_SEED_KEY)


def note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)
