"""Task sources of molecule runs (``fsmol``, ``tox21``, ``sider``, ``muv``, ``toxcast``).

FS-Mol: training episodes come from the official training tasks less ``holdout_val`` of them
(drawn once with a constant seed, the same for every run), which validate during training;
``fewshot eval --split valid`` scores the official validation tasks and ``--split test`` the
test tasks (``DATA_ROOT/fsmol/fsmol_test.csv.gz``), neither seen in training or model selection.

MoleculeNet tables: the last columns are the test tasks (:data:`~fewshot.datasets.molecules.TEST_TASK_COUNT`,
recorded in the run's ``test_tasks``); ``holdout_val`` of the others validate; with
``holdout_val: 0`` (the Tox21 protocol trains on all 9 other tasks) validation episodes come
from the training tasks and only monitor training.
"""

from __future__ import annotations

import os
import random
from functools import lru_cache

from fewshot.config import RunConfig
from fewshot.datasets.featurize import FeaturizerSpec
from fewshot.datasets.molecules import TEST_TASK_COUNT, AssayData, fsmol_path, load_assays, read_dataset
from fewshot.tasks.assays import AssayPretrainBatches, AssayTasks, SupportSpec
from fewshot.tasks.seeding import derive_seed

HOLDOUT_SEED = 0


def data_root(config: RunConfig, override: str | None = None) -> str:
    root = override or config.data_root or os.environ.get("FEWSHOT_DATA_ROOT")
    if not root:
        raise ValueError(f"{config.dataset} is read from a data root: pass --data-root DIR (or set FEWSHOT_DATA_ROOT) "
                         "holding e.g. tox21/tox21.csv and fsmol/fsmol_train.csv.gz")
    return root


def featurizer(config: RunConfig) -> FeaturizerSpec:
    return FeaturizerSpec(config.featurizer, config.fp_radius, config.fp_size, config.fp_counts)


@lru_cache(maxsize=4)
def _load(dataset: str, root: str, spec: FeaturizerSpec, split: str | None) -> AssayData:
    return load_assays(dataset, root, spec, split)


def assays(config: RunConfig, split: str | None = None, root: str | None = None) -> AssayData:
    """The featurized assays of the run's dataset (FS-Mol: of ``split``; the tables ignore it), loaded once
    per process."""
    return _load(config.dataset, data_root(config, root), featurizer(config), split if config.dataset == "fsmol" else None)


def metric(config: RunConfig) -> str:
    return "delta_auprc" if config.dataset == "fsmol" else "roc_auc"


def _parts(config: RunConfig, root: str | None = None) -> dict[str, list[str]]:
    """Task names of the run's ``train``, ``val`` (and, for tables, ``test``) parts."""
    if config.dataset == "fsmol":
        pool, test = assays(config, "train", root).task_names, []
    else:
        names = assays(config, root=root).task_names
        unknown = sorted(set(config.test_tasks) - set(names))
        if unknown:
            raise ValueError(f"test tasks {unknown} are not in {config.dataset}; choose from {names}")
        test = list(config.test_tasks)
        pool = [n for n in names if n not in test]
    if config.holdout_val >= len(pool):
        raise ValueError(f"holding out {config.holdout_val} of the {len(pool)} training tasks leaves none to train on")
    val = sorted(random.Random(HOLDOUT_SEED).sample(sorted(pool), config.holdout_val))
    train = [n for n in pool if n not in val]
    return {"train": train, "val": val or train, "test": test}


def fill_in(config: RunConfig) -> RunConfig:
    """Settings a new molecule run derives from its data: test tasks, input width, the fine-tune head's classes."""
    if config.dataset != "fsmol" and not config.test_tasks:
        config.test_tasks = read_dataset(config.dataset, data_root(config)).task_names[-TEST_TASK_COUNT[config.dataset]:]
    data = assays(config, "train")
    if config.net == "fp-mlp":
        config.input_dim = data.features.width_out
    if config.algo == "finetune" and config.pretrain_classes is None:
        config.pretrain_classes = 2 * len(_parts(config)["train"])
    return config.validate()


def train_tasks(config: RunConfig):
    """Training episodes (support as configured; ``queries`` stratified query molecules, or up to that many
    with ``ragged_queries``) or, for the fine-tune baseline, supervised minibatches over the training tasks."""
    data = assays(config, "train").select(_parts(config)["train"])
    seed = derive_seed(config.seed, 0)
    if config.algo == "finetune":
        return AssayPretrainBatches(data, config.batch_size, seed=seed)
    return AssayTasks(data, config.support_spec(), queries=config.queries, seed=seed, metric=metric(config),
                      ragged=config.ragged_queries)


def val_tasks(config: RunConfig) -> AssayTasks:
    """Validation episodes: the held-out training tasks, the rest of each as query, about ``val_episodes`` in all."""
    names = _parts(config)["val"]
    draws = max(1, config.val_episodes // len(names))
    return AssayTasks(assays(config, "train").select(names), config.support_spec(), draws=draws,
                      seed=derive_seed(config.seed, 1), metric=metric(config))


def test_tasks(config: RunConfig, split: str | None = None, root: str | None = None, support: SupportSpec | None = None,
               draws: int | None = None, seed: int = 0) -> tuple[str, AssayTasks]:
    """``(name, episodes)`` to evaluate on: ``draws`` per task (default: the run's), the rest of each task as query.

    FS-Mol: ``split`` ``test`` (default) or ``valid``/``val``, the official tasks; tables: ``test`` (default), the
    run's test tasks, or ``val``, its validation tasks.
    """
    support, draws = support or config.support_spec(), draws or config.draws
    if config.dataset == "fsmol":
        split = {None: "test", "val": "valid"}.get(split, split)
        if split not in ("test", "valid"):
            raise ValueError(f"FS-Mol runs are evaluated on --split test or valid, not {split!r}")
        data = assays(config, split, root)
    else:
        split = split or "test"
        if split not in ("test", "val"):
            raise ValueError(f"{config.dataset} runs are evaluated on --split test or val, not {split!r}")
        data = assays(config, root=root).select(_parts(config, root)[split])
    return f"{config.dataset}:{split}", AssayTasks(data, support, draws=draws, seed=seed, metric=metric(config))


def default_eval_split(config: RunConfig) -> str:
    """``test``, except for an FS-Mol run whose data root lacks the test file: ``valid``."""
    if config.dataset == "fsmol":
        try:
            fsmol_path(data_root(config), "test")
        except FileNotFoundError:
            return "valid"
    return "test"
