"""Task sources of a run: which data its training, validation and test episodes come from.

Omniglot's Lake splits (``background``, ``evaluation``) are divided by alphabet: a fixed
set of alphabets (drawn once with a constant seed, the same for every run) is held out
for validation and another for testing; the run's config records both lists. The
Vinyals split ``vinyals-train`` validates on ``vinyals-val`` and tests on ``vinyals-test``.
Molecule datasets are delegated to :mod:`fewshot.tasks.molecule_sources`.
"""

from __future__ import annotations

import random
from typing import Literal, Sequence

from torch.utils.data import Dataset

from fewshot.config import MOLECULE_DATASETS, RunConfig
from fewshot.datasets.labelled import LabelledData
from fewshot.datasets.omniglot import list_alphabets, load_omniglot
from fewshot.tasks import molecule_sources
from fewshot.tasks.pretrain import PretrainBatches
from fewshot.tasks.sampler import ClassificationTasks
from fewshot.tasks.seeding import derive_seed
from fewshot.tasks.sinusoid import SinusoidTasks

Part = Literal["train", "val", "test"]
LAKE_SPLITS = ("background", "evaluation")
VINYALS_PARTS = {"train": "vinyals-train", "val": "vinyals-val", "test": "vinyals-test"}
HOLDOUT_SEED = 0


def assign_holdout(config: RunConfig) -> RunConfig:
    """Fill in ``val_alphabets`` and ``test_alphabets`` of a Lake split if they are empty."""
    if config.dataset != "omniglot" or config.split not in LAKE_SPLITS:
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


def fill_in(config: RunConfig) -> RunConfig:
    """Settings a new run derives from its data: held-out alphabets, the fine-tune head's classes."""
    if config.dataset in MOLECULE_DATASETS:
        return molecule_sources.fill_in(config)
    config = assign_holdout(config)
    if config.algo == "finetune":
        classes = omniglot_part(config, "train").num_classes
        if config.pretrain_classes not in (None, classes):
            raise ValueError(f"pretrain_classes={config.pretrain_classes} but the training split has {classes} "
                             "classes; drop pretrain_classes (a new run fills it in)")
        config.pretrain_classes = classes
    return config


def omniglot_part(config: RunConfig, part: Part, data_root: str | None = None) -> LabelledData:
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


def character(class_name: str) -> str:
    """``"Alphabet/characterNN"`` of a class name (rotations of one character are one character)."""
    return "/".join(class_name.split("/")[:2])


def trained_characters(config: RunConfig, data_root: str | None = None) -> set[str]:
    """``"Alphabet/characterNN"`` of every character the run trained on."""
    return {character(c) for c in omniglot_part(config, "train", data_root).class_names}


def check_held_out_by_all(runs: Sequence[tuple[str, RunConfig]], characters: set[str], what: str, fix: str,
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


def eval_data(config: RunConfig, split: str | None, data_root: str | None) -> tuple[str, LabelledData]:
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


def train_tasks(config: RunConfig) -> Dataset:
    """The run's stream of training episodes (seeded by the run's seed); with ``within_alphabet``, each
    episode's classes come from one alphabet (the Lake et al. 2015 protocol); with ``distort``, its images are
    randomly distorted (Koch et al. 2015)."""
    if config.dataset in MOLECULE_DATASETS:
        return molecule_sources.train_tasks(config)
    seed = derive_seed(config.seed, 0)
    ways = config.train_ways or config.ways
    queries = config.train_queries or config.queries
    if config.dataset == "sinusoid":
        return SinusoidTasks(config.shots, queries, seed=seed)
    if config.algo == "finetune":
        return PretrainBatches(omniglot_part(config, "train"), config.batch_size, seed=seed)
    return ClassificationTasks(omniglot_part(config, "train"), ways, config.shots, queries, seed=seed,
                               within_group=config.within_alphabet, distort=config.distort)


def val_tasks(config: RunConfig) -> Dataset:
    """Validation episodes: the run's ways, shots and queries, on held-out classes (within one
    alphabet when ``within_alphabet``)."""
    if config.dataset in MOLECULE_DATASETS:
        return molecule_sources.val_tasks(config)
    seed = derive_seed(config.seed, 1)
    if config.dataset == "sinusoid":
        return SinusoidTasks(config.shots, config.queries, seed=seed)
    return ClassificationTasks(omniglot_part(config, "val"), config.ways, config.shots, config.queries, seed=seed,
                               within_group=config.within_alphabet)


def test_tasks(config: RunConfig, split: str | None = None, data_root: str | None = None, *,
               ways: int | None = None, shots: int | None = None, queries: int | None = None,
               seed: int = 0, within_alphabet: bool = False) -> tuple[str, Dataset]:
    """The evaluation episodes (name of the data, task source); ``seed`` fixes the episodes; with
    ``within_alphabet`` (omniglot), each episode's classes come from one alphabet."""
    ways, shots, queries = ways or config.ways, shots or config.shots, queries or config.queries
    if config.dataset == "sinusoid":
        if split not in (None, "test"):
            raise ValueError(f"sinusoid tasks have no splits (got --split {split}); drop --split")
        if within_alphabet:
            raise ValueError("sinusoid tasks have no alphabets; drop --within-alphabet")
        return "sinusoid", SinusoidTasks(shots, queries, seed=seed)
    name, data = eval_data(config, split, data_root)
    return name, ClassificationTasks(data, ways, shots, queries, seed=seed, within_group=within_alphabet)
