"""Omniglot (Lake et al. 2015): its options, splits, recipes, task sources, flags and evaluations.

Lake splits (``background``, ``evaluation``) are divided by alphabet: a fixed set of alphabets (drawn once
with a constant seed, the same for every run) is held out for validation and another for testing; the run's
config records both lists. The Vinyals split ``vinyals-train`` validates on ``vinyals-val`` and tests on
``vinyals-test``. ``fewshot eval --benchmark omniglot-lake-runs`` scores Lake's 20 within-alphabet runs.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass, field
from typing import Literal, Sequence

from torch.utils.data import Dataset

from fewshot.datasets.labelled import LabelledData
from fewshot.datasets.omniglot import list_alphabets, load_omniglot
from fewshot.domains.base import ImageDomain, episode_seeds, fixed_head, steps_text
from fewshot.registry import register_domain
from fewshot.tasks.sampler import ClassificationTasks

Part = Literal["train", "val", "test"]
SPLITS = ("background", "evaluation", "vinyals-train")
LAKE_SPLITS = ("background", "evaluation")
VINYALS_PARTS = {"train": "vinyals-train", "val": "vinyals-val", "test": "vinyals-test"}
PART_NAMES = {"train": "training", "val": "validation", "test": "test"}
HOLDOUT_SEED = 0


@dataclass
class OmniglotOptions:
    """The ``data`` section of an Omniglot run.

    Attributes:
        split: the meta-training split: ``background``, ``evaluation`` (Lake) or ``vinyals-train``.
        ways, shots, queries: N, K and Q of validation and test episodes.
        train_ways, train_queries: of training episodes (``None``: as above).
        within_alphabet: training and validation episodes drawn within one alphabet (Lake's one-shot task).
        image_size: the side images are resized to.
        rotations: add the characters rotated by 90, 180 and 270 degrees as classes (``None``: on for the Vinyals
            splits; on a Lake split they add training classes only).
        distort: random affine distortions of training images (Koch et al. 2015).
        val_alphabets, test_alphabets: a Lake split's held-out alphabets (filled in when a run starts).
        holdout_val, holdout_test: how many alphabets a Lake split holds out for validation and for testing.
        data_root: the directory holding ``omniglot/images_*.zip`` (default: ``$FEWSHOT_DATA_ROOT``, then the
            background set embedded in the package).
    """

    split: str = "background"
    ways: int = 5
    shots: int = 1
    queries: int = 15
    train_ways: int | None = None
    train_queries: int | None = None
    within_alphabet: bool = False
    image_size: int = 28
    rotations: bool | None = None
    distort: bool = False
    val_alphabets: list[str] = field(default_factory=list)
    test_alphabets: list[str] = field(default_factory=list)
    holdout_val: int = 3
    holdout_test: int = 5
    data_root: str | None = None

    def validate(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"unknown omniglot training split {self.split!r}; choose one of {', '.join(SPLITS)}")
        for name in ("ways", "shots", "queries", "image_size", "holdout_val", "holdout_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_ways", "train_queries"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        shared = sorted(set(self.val_alphabets) & set(self.test_alphabets))
        if shared:
            raise ValueError(f"val_alphabets and test_alphabets share {shared}; hold out each alphabet once")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16 for the Conv-4 nets (four 2x2 poolings), got {self.image_size}")


_MAML = dict(net="conv4-strided", ways=5, shots=1, queries=15, meta_batch=32, inner_lr=0.4,
             inner_steps=1, eval_inner_steps=3, lr=0.001, steps=3000)
_METRIC = dict(net="conv4-pool", ways=5, shots=1, queries=15, train_ways=20, train_queries=5,
               meta_batch=1, lr=0.001, steps=3000)
RECIPES = {
    # Finn et al. 2017 with what was measured faster to accuracy on a CPU (docs/experiments/omniglot.md): a
    # meta-batch of 8 (more updates in the same time), rotated characters as classes, a cosine schedule.
    "maml": {**_MAML, "meta_batch": 8, "rotations": True, "lr_schedule": "cosine"},
    "fomaml": _MAML,
    "anil": _MAML,              # Raghu et al. 2020
    "metasgd": _MAML,           # Li et al. 2017: step sizes start at alpha
    "bmaml": {**_MAML, "particles": 5},   # Yoon et al. 2018: MAML's setting, 5 Stein particles
    "reptile": dict(net="conv4-strided", ways=5, shots=1, queries=15, meta_batch=5,
                    inner_lr=0.05, inner_steps=5, eval_inner_steps=50, lr=0.001),
    # Snell et al. 2017 (60-way training episodes, rotated characters as classes), with what was measured
    # fastest to accuracy here (docs/experiments/omniglot.md): Adam 0.006 annealed by a cosine over the run
    # (over the clock under --time-limit) and bf16 autocast where the CPU or GPU runs it natively.
    "protonet": dict(net="conv4-pool", ways=5, shots=1, queries=15, train_ways=60, train_queries=5,
                     rotations=True, meta_batch=1, lr=0.006, lr_schedule="cosine", precision="auto",
                     steps=1500),
    "matching": _METRIC,        # Vinyals et al. 2016
    "matching-fce": _METRIC,
    "relation": {**_METRIC, "net": "relation-conv", "train_ways": 5, "train_queries": 15},   # Sung et al. 2018
    "siamese": _METRIC,         # Koch et al. 2015 / Hadsell et al. 2006
    "finetune": dict(net="conv4-pool", ways=5, shots=1, queries=15, meta_batch=1, lr=0.001,
                     batch_size=64, inner_lr=0.01, inner_steps=100, steps=3000),
}


def character(class_name: str) -> str:
    """``"Alphabet/characterNN"`` of a class name (rotations of one character are one character)."""
    return "/".join(class_name.split("/")[:2])


class Omniglot(ImageDomain):
    name = "omniglot"
    options = OmniglotOptions
    nets = ("conv4-pool", "conv4-strided", "resnet12", "relation-conv")
    recipes = RECIPES
    ensemble_shared = ("split", "test_alphabets", "holdout_test")
    flags = ("within_alphabet", "distort", "benchmark")

    def add_flags(self, parser: argparse.ArgumentParser, command: str) -> None:
        group = parser.add_argument_group("omniglot")
        if command == "train":
            group.add_argument("--within-alphabet", action="store_true", default=None,
                               help="draw each training and validation episode's classes from one alphabet "
                                    "(the Lake one-shot benchmark's setting)")
            group.add_argument("--distort", action="store_true", default=None,
                               help="random affine distortions of Omniglot training images (Koch et al. 2015)")
            return
        group.add_argument("--within-alphabet", action="store_true",
                           help="draw each episode's classes from one alphabet, as the Lake one-shot runs do "
                                "(with --ways 20: the runs' task on as many episodes as --episodes)")
        group.add_argument("--benchmark", choices=("omniglot-lake-runs",),
                           help="score on a fixed benchmark instead of sampled episodes: omniglot-lake-runs = the "
                                "20 20-way 1-shot within-alphabet runs of Lake et al. 2015, read from "
                                "DATA_ROOT/omniglot/all_runs.zip (or all_runs/)")

    # -- the run's parts ---------------------------------------------------------------------------
    def fill_in(self, config) -> None:
        """Fill in ``val_alphabets`` and ``test_alphabets`` of a Lake split if they are empty."""
        assign_holdout(config)

    def part(self, config, part: Part, data_root: str | None = None) -> LabelledData:
        return omniglot_part(config, part, data_root)

    def train_tasks(self, config) -> Dataset:
        """The run's stream of training episodes (seeded by the run's seed); with ``within_alphabet``, each
        episode's classes come from one alphabet (the Lake et al. 2015 protocol); with ``distort``, its images are
        randomly distorted (Koch et al. 2015)."""
        return ClassificationTasks(omniglot_part(config, "train"), config.train_ways or config.ways, config.shots,
                                   config.train_queries or config.queries, seed=episode_seeds(config)[0],
                                   within_group=config.within_alphabet, distort=config.distort,
                                   name=part_name(config, "train"))

    def val_tasks(self, config) -> Dataset:
        """Validation episodes: the run's ways, shots and queries, on held-out classes (within one
        alphabet when ``within_alphabet``)."""
        return ClassificationTasks(omniglot_part(config, "val"), config.ways, config.shots, config.queries,
                                   seed=episode_seeds(config)[1], within_group=config.within_alphabet,
                                   name=part_name(config, "val"))

    def test_tasks(self, config, split=None, data_root=None, *, ways=None, shots=None, queries=None, seed=0,
                   args=None):
        """The evaluation episodes; with ``--within-alphabet``, each episode's classes come from one alphabet."""
        ways, shots, queries = ways or config.ways, shots or config.shots, queries or config.queries
        name, data = eval_data(config, split, data_root)
        within = bool(args is not None and args.within_alphabet)
        return name, ClassificationTasks(data, ways, shots, queries, seed=seed, within_group=within,
                                         name=f"the {name} classes")

    # -- fewshot eval ---------------------------------------------------------------------------------
    def check_runs(self, run_dirs, configs, tasks, name, data_root) -> None:
        check_held_out_by_all(list(zip(run_dirs[1:], configs[1:])), {character(c) for c in tasks.data.class_names},
                              name, "score the ensemble on the test alphabets its runs share (drop --split)", data_root)

    def describe(self, args, summary) -> str:
        words = ""
        if args.within_alphabet:
            summary["within_alphabet"] = True
            words += ", within one alphabet"
        return words + super().describe(args, summary)

    def evaluate_runs(self, args, learner, configs, run_dirs, steps) -> None:
        if args.benchmark is not None:
            return self._benchmark(args, learner, configs, run_dirs, steps)
        super().evaluate_runs(args, learner, configs, run_dirs, steps)

    def _benchmark(self, args, learner, configs, run_dirs, steps) -> None:
        """``fewshot eval RUN_DIR --benchmark omniglot-lake-runs``: the mean one-shot error over Lake's runs."""
        from fewshot.datasets.lake_runs import find_lake_runs, lake_error, load_lake_runs

        fixed = [flag for flag, value in (("--split", args.split), ("--ways", args.ways), ("--shots", args.shots),
                                          ("--queries", args.queries), ("--dataset", args.dataset)) if value is not None]
        if fixed:
            raise ValueError(f"{args.benchmark} fixes its own episodes (20-way 1-shot runs); drop {', '.join(fixed)}")
        cfg = configs[0]
        source = find_lake_runs(args.data_root)
        runs = load_lake_runs(args.data_root, cfg.image_size)
        ways = {run.ways for run in runs}
        head = fixed_head(run_dirs, configs)
        if head and ways != {cfg.ways}:
            raise ValueError(f"{head[1]} run {head[0]} has a {cfg.ways}-way head but the runs are "
                             f"{'/'.join(map(str, sorted(ways)))}-way; train it with --ways 20")
        if all(run.characters is not None for run in runs):
            check_held_out_by_all(list(zip(run_dirs, configs)), {c for run in runs for c in run.characters},
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
                  f"{copies}, {steps_text(steps)})")


register_domain(Omniglot())


def assign_holdout(config):
    """Fill in ``val_alphabets`` and ``test_alphabets`` of a Lake split if they are empty; returns ``config``."""
    if config.split not in LAKE_SPLITS:
        return config
    alphabets = list_alphabets(config.split, config.data_root)
    unknown = sorted(set(config.val_alphabets + config.test_alphabets) - set(alphabets))
    if unknown:
        raise ValueError(f"held-out alphabets {unknown} are not in {config.split}; choose from {alphabets}")
    if config.holdout_val + config.holdout_test >= len(alphabets):
        raise ValueError(f"holding out {config.holdout_val} + {config.holdout_test} alphabets leaves none of "
                         f"the {len(alphabets)} alphabets of {config.split} for training")
    free = [a for a in random.Random(HOLDOUT_SEED).sample(alphabets, len(alphabets))
            if a not in config.val_alphabets + config.test_alphabets]
    if not config.test_alphabets:
        config.test_alphabets, free = sorted(free[: config.holdout_test]), free[config.holdout_test:]
    if not config.val_alphabets:
        config.val_alphabets = sorted(free[: config.holdout_val])
    return config.validate()


def part_name(config, part: Part) -> str:
    """What a part of the run's split is, for messages: e.g. "the validation alphabets of background"."""
    if config.split.startswith("vinyals"):
        return f"the {VINYALS_PARTS[part]} split"
    return f"the {PART_NAMES[part]} alphabets of {config.split}"


def omniglot_part(config, part: Part, data_root: str | None = None) -> LabelledData:
    """The classes of one part of the run's training split.

    On a Vinyals split every part follows ``config.rotations`` (the published protocol tests on rotated
    classes too); on a Lake split rotations are training augmentation only, so the held-out validation and
    test alphabets are always their upright characters and scores stay comparable across runs.
    """
    root = data_root or config.data_root
    if config.split.startswith("vinyals"):
        return load_omniglot(VINYALS_PARTS[part], root, config.image_size, config.rotations)
    held = {"val": config.val_alphabets, "test": config.test_alphabets}
    if part != "train":
        if not held[part]:
            raise ValueError(f"this run holds out no {part} alphabets")
        return load_omniglot(config.split, root, config.image_size, False, alphabets=held[part])
    excluded = set(config.val_alphabets) | set(config.test_alphabets)
    keep = [a for a in list_alphabets(config.split, root) if a not in excluded]
    return load_omniglot(config.split, root, config.image_size, config.rotations, alphabets=keep)


def trained_characters(config, data_root: str | None = None) -> set[str]:
    """``"Alphabet/characterNN"`` of every character the run trained on."""
    return {character(c) for c in omniglot_part(config, "train", data_root).class_names}


def check_held_out_by_all(runs: Sequence[tuple[str, object]], characters: set[str], what: str, fix: str,
                          data_root: str | None = None) -> None:
    """Refuse to score runs on ``characters`` (``"Alphabet/characterNN"``) that any of them trained on.

    The runs of an ensemble share their test alphabets but may hold out different validation alphabets, so
    held-out data of the first run may be training data of another; ``what`` names the data and ``fix`` says
    what to do instead.
    """
    for run, config in runs:
        overlap = sorted(trained_characters(config, data_root) & characters)
        if overlap:
            raise ValueError(f"{what} shares {len(overlap)} characters with the training classes of run {run} "
                             f"(e.g. {overlap[0]}); {fix}")


def eval_data(config, split: str | None, data_root: str | None) -> tuple[str, LabelledData]:
    """The data ``fewshot eval --split`` names, checked to share no character with training.

    ``None``, ``"test"`` or the run's own training split: its held-out test part;
    ``"val"``: its validation part; any other Omniglot split: that whole split.
    """
    if split in (None, "test", config.split):
        name, data = f"{config.split}:test", omniglot_part(config, "test", data_root)
    elif split == "val":
        name, data = f"{config.split}:val", omniglot_part(config, "val", data_root)
    else:
        rotations = config.rotations if split.startswith("vinyals") else False
        name, data = split, load_omniglot(split, data_root or config.data_root, config.image_size, rotations)
        overlap = trained_characters(config, data_root) & {character(c) for c in data.class_names}
        if overlap:
            raise ValueError(f"split {split!r} shares {len(overlap)} characters with this run's training "
                             f"classes (e.g. {sorted(overlap)[0]}); evaluate on held-out classes "
                             "(the default, or --split val) or on a split disjoint from training")
    return name, data
