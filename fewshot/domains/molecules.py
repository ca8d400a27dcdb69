"""Few-shot drug discovery: FS-Mol and the MoleculeNet tables (Tox21, SIDER, MUV, ToxCast).

An assay is a task. FS-Mol: training episodes come from the official training tasks less ``holdout_val`` of
them (drawn once with a constant seed, the same for every run), which validate during training;
``fewshot eval --split valid`` scores the official validation tasks and ``--split test`` the test tasks
(``DATA_ROOT/fsmol/fsmol_test.csv.gz``), neither seen in training or model selection.

MoleculeNet tables: the last columns are the test tasks (:data:`~fewshot.datasets.molecules.TEST_TASK_COUNT`,
recorded in the run's ``test_tasks``); ``holdout_val`` of the others validate; with ``holdout_val: 0`` (the
Tox21 protocol trains on all 9 other tasks) validation episodes come from the training tasks and only
monitor training.

Results are the mean ± standard error over tasks of ΔAUPRC (FS-Mol) or ROC-AUC (the tables); ``--json`` prints
``{"metric", "mean", "stderr", "tasks", "support_size"}`` (plus ``support_pos`` and ``support_neg`` for explicit
supports) as the last line. ``--calibration`` adds ``ece, mce, nll, brier`` and their ``*_ci95``: the binary
metrics of the activity probability (top-label confidence ``max(p, 1 - p)``, the Brier score ``(p - y)^2``)
over each task's query predictions, averaged over tasks, the intervals ``1.96 *`` the standard error over tasks;
and the enrichment of actives among the top 10 % of each task's query molecules (:mod:`fewshot.uncertainty`),
ranked by expected activity (``enrichment_expected``) and, for a learner with a posterior (DKT), by the upper
confidence bound of the active class's latent (``enrichment_ucb``), averaged over draws, then tasks.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from fewshot.argtypes import positive_int
from fewshot.datasets.featurize import FeaturizerSpec
from fewshot.datasets.molecules import TEST_TASK_COUNT, AssayData, fsmol_path, load_assays, read_dataset
from fewshot.domains.base import Domain, episode_seeds, note, report_calibration, wants_calibration
from fewshot.evaluate import evaluate
from fewshot.files import atomic_write
from fewshot.registry import register_domain
from fewshot.report.records import record_eval
from fewshot.tasks.assays import AssayTasks, SupportSpec

HOLDOUT_SEED = 0
DATASETS = ("fsmol", "tox21", "sider", "muv", "toxcast")


@dataclass
class MoleculeOptions:
    """The ``data`` section of a molecule run.

    Attributes:
        featurizer, fp_radius, fp_size, fp_counts: the features (``ecfp`` | ``ecfp+desc`` | ``graph``; Morgan
            radius and bits; log1p counts or bits).
        support_size: a support set of this many molecules, stratified by the task's active fraction (FS-Mol) ...
        support_pos, support_neg: ... or exactly this many actives and inactives (the Tox21 protocol).
        queries: query molecules per training task (``ragged_queries``: up to that many).
        ragged_queries: a smaller task uses all the molecules its support leaves (FS-Mol's training sampler).
        draws: evaluation episodes per task (FS-Mol 10, Tox21 protocol 20).
        holdout_val: training tasks held out for validation (0: validate on the training tasks' other molecules).
        test_tasks: a MoleculeNet table's held-out tasks (filled in).
        ways: 2 (assays are binary: 0 inactive, 1 active).
        data_root: the directory laid out like ``shared/data`` (``tox21/tox21.csv``, ``fsmol/...``).
    """

    featurizer: str = "ecfp"
    fp_radius: int = 2
    fp_size: int = 2048
    fp_counts: bool = True
    support_size: int = 16
    support_pos: int | None = None
    support_neg: int | None = None
    queries: int = 16
    ragged_queries: bool = False
    draws: int = 10
    holdout_val: int = 0
    test_tasks: list[str] = field(default_factory=list)
    ways: int = 2
    data_root: str | None = None

    def validate(self) -> None:
        if self.ways != 2:
            raise ValueError(f"assays are binary (0 inactive, 1 active): ways must be 2, got {self.ways}")
        FeaturizerSpec(self.featurizer, self.fp_radius, self.fp_size, self.fp_counts)
        self.support_spec()
        if self.draws < 1:
            raise ValueError(f"draws must be >= 1, got {self.draws}")
        if self.queries < 2:
            raise ValueError(f"queries (training query molecules per task) must be >= 2, got {self.queries}")
        if self.holdout_val < 0:
            raise ValueError(f"holdout_val must be >= 0, got {self.holdout_val}")

    def support_spec(self) -> SupportSpec:
        """The support set of a run (explicit counts win over the size)."""
        if self.support_pos is not None or self.support_neg is not None:
            return SupportSpec(positives=self.support_pos, negatives=self.support_neg)
        return SupportSpec(size=self.support_size)


# FS-Mol (Stanley et al. 2021): support 16 stratified, the rest of a task as query, 10 draws per task; training
# episodes use 16 query molecules so that every training task (32 molecules or more) fits. The Tox21 protocol
# (Altae-Tran et al. 2017): train on 9 tasks, test on SR-HSE, SR-MMP and SR-p53 with 10+/10- supports, 20 draws.
_BASE = dict(ways=2, net="fp-mlp", featurizer="ecfp+desc", queries=16, meta_batch=16, lr=0.0005,
             steps=20000, holdout_val=0, val_every=500, val_episodes=200,
             checkpoint_every=500, log_every=50, test_episodes=10**6)
# FS-Mol: ECFP alone (measured better on the valid tasks than ecfp+desc, also with the valid descriptors scaled
# by the training file's statistics: docs/experiments/molecules.md).
_FSMOL = dict(_BASE, featurizer="ecfp", support_size=16, draws=10, holdout_val=100)
# ProtoNet on FS-Mol: FS-Mol's own training recipe (configs/protonet-fsmol.yaml, the best measured on the valid
# tasks): up to 256 query molecules a task, Adam 0.001 with the meta-gradient clipped to norm 1, and the weights'
# moving average for validation and the result (+0.011 ΔAUPRC on valid, paired over the 39 tasks).
_FSMOL_PROTONET = dict(_FSMOL, queries=256, ragged_queries=True, lr=0.001, grad_clip=1.0, ema=0.999)
_TOX21 = dict(_BASE, support_pos=10, support_neg=10, queries=64, draws=20, steps=2000, val_every=250,
              checkpoint_every=250)


def _recipes(base: dict, protonet: dict | None = None) -> dict[str, dict]:
    maml = dict(base, inner_lr=0.05, inner_steps=3, eval_inner_steps=3, lr=0.0005)
    return {"protonet": protonet or base, "matching": base, "siamese": base,
            **{algo: maml for algo in ("maml", "fomaml", "anil", "metasgd")},
            "reptile": dict(base, inner_lr=0.05, inner_steps=5, eval_inner_steps=5, meta_batch=5),
            "finetune": dict(base, batch_size=256, inner_lr=0.01, inner_steps=50),
            "forest": dict(base, featurizer="ecfp", fp_counts=False, steps=1)}


def data_root(config, override: str | None = None) -> str:
    root = override or config.data_root or os.environ.get("FEWSHOT_DATA_ROOT")
    if not root:
        raise ValueError(f"{config.dataset} is read from a data root: pass --data-root DIR (or set FEWSHOT_DATA_ROOT) "
                         "holding e.g. tox21/tox21.csv and fsmol/fsmol_train.csv.gz")
    return root


def featurizer(config) -> FeaturizerSpec:
    return FeaturizerSpec(config.featurizer, config.fp_radius, config.fp_size, config.fp_counts)


@lru_cache(maxsize=4)
def _load(dataset: str, root: str, spec: FeaturizerSpec, split: str | None) -> AssayData:
    return load_assays(dataset, root, spec, split)


def assays(config, split: str | None = None, root: str | None = None) -> AssayData:
    """The featurized assays of the run's dataset (FS-Mol: of ``split``; the tables ignore it), loaded once
    per process."""
    return _load(config.dataset, data_root(config, root), featurizer(config), split if config.dataset == "fsmol" else None)


class Molecules(Domain):
    """One molecule dataset (``name``: fsmol, tox21, sider, muv or toxcast)."""

    options = MoleculeOptions
    nets = ("fp-mlp", "graph")
    ensemble_shared = ("test_tasks", "holdout_val", "featurizer", "fp_radius", "fp_size", "fp_counts")
    flags = ("support_size", "support_pos", "support_neg", "draws", "featurizer")

    def __init__(self, name: str):
        self.name = name
        self.recipes = _recipes(_FSMOL, _FSMOL_PROTONET) if name == "fsmol" else _recipes(_TOX21)
        self.metric = "delta_auprc" if name == "fsmol" else "roc_auc"

    def add_flags(self, parser: argparse.ArgumentParser, command: str) -> None:
        if self.name != DATASETS[0]:       # one set of flags serves every molecule dataset
            return
        group = parser.add_argument_group("molecules (fsmol, tox21, sider, muv, toxcast)")
        positive = positive_int
        group.add_argument("--support-size", type=positive, help="support molecules per task, stratified by the "
                                                                "task's active fraction (FS-Mol: 16, 32, 64, 128)")
        group.add_argument("--support-pos", type=positive, help="exactly this many actives in the support set (with "
                                                               "--support-neg; the Tox21 protocol)")
        group.add_argument("--support-neg", type=positive, help="exactly this many inactives")
        group.add_argument("--draws", type=positive, help="evaluation episodes per task (FS-Mol 10, Tox21 20)")
        if command == "train":
            group.add_argument("--featurizer", choices=("ecfp", "ecfp+desc", "graph"),
                               help="ECFP counts, ECFP and RDKit descriptors, or graphs (with net: graph)")

    def validate(self, config) -> None:
        if config.net is None and config.featurizer == "graph":
            raise ValueError(f"the {config.algo} learner needs feature vectors, not graphs: use featurizer ecfp "
                             "(or ecfp+desc)")
        if config.net is not None and (config.net == "graph") != (config.featurizer == "graph"):
            raise ValueError(f"net {config.net} needs featurizer "
                             f"{'graph' if config.net == 'graph' else 'ecfp or ecfp+desc'}, got {config.featurizer}")
        if config.ragged_queries and config.applies("vectorize") and config.vectorize:
            raise ValueError("ragged_queries makes meta-batches of unequal episodes, which vectorize (vmap) cannot "
                             "take: set vectorize: false")

    def input_shape(self, config) -> tuple[int, ...]:
        if config.net == "fp-mlp":
            if config.input_dim is None:
                raise ValueError("fp-mlp needs input_dim (the feature width), set when a run starts")
            return (config.input_dim,)
        return (0,)       # graphs and the forest: the width is not the net's to know

    # -- the run's parts -------------------------------------------------------------------------------
    def _parts(self, config, root: str | None = None) -> dict[str, list[str]]:
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
            raise ValueError(f"holding out {config.holdout_val} of the {len(pool)} training tasks leaves none to "
                             "train on")
        val = sorted(random.Random(HOLDOUT_SEED).sample(sorted(pool), config.holdout_val))
        train = [n for n in pool if n not in val]
        return {"train": train, "val": val or train, "test": test}

    def fill_in(self, config) -> None:
        """Settings a new molecule run derives from its data: test tasks, input width."""
        if config.dataset != "fsmol" and not config.test_tasks:
            config.test_tasks = read_dataset(config.dataset, data_root(config)).task_names[
                -TEST_TASK_COUNT[config.dataset]:]
        data = assays(config, "train")
        if config.net == "fp-mlp":
            config.input_dim = data.features.width_out

    def train_tasks(self, config) -> AssayTasks:
        """Training episodes (support as configured; ``queries`` stratified query molecules, or up to that many
        with ``ragged_queries``)."""
        data = assays(config, "train").select(self._parts(config)["train"])
        return AssayTasks(data, config.support_spec(), queries=config.queries, seed=episode_seeds(config)[0],
                          metric=self.metric, ragged=config.ragged_queries)

    def val_tasks(self, config) -> AssayTasks:
        """Validation episodes: the held-out training tasks, the rest of each as query, about ``val_episodes``."""
        names = self._parts(config)["val"]
        draws = max(1, config.val_episodes // len(names))
        return AssayTasks(assays(config, "train").select(names), config.support_spec(), draws=draws,
                          seed=episode_seeds(config)[1], metric=self.metric)

    def test_tasks(self, config, split: str | None = None, root: str | None = None,
                   support: SupportSpec | None = None, draws: int | None = None,
                   seed: int = 0) -> tuple[str, AssayTasks]:
        """``(name, episodes)`` to evaluate on: ``draws`` per task (default: the run's), the rest of each task as
        query. FS-Mol: ``split`` ``test`` (default) or ``valid``/``val``, the official tasks; tables: ``test``
        (default), the run's test tasks, or ``val``, its validation tasks."""
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
            data = assays(config, root=root).select(self._parts(config, root)[split])
        return f"{config.dataset}:{split}", AssayTasks(data, support, draws=draws, seed=seed, metric=self.metric)

    def default_eval_split(self, config) -> str:
        """``test``, except for an FS-Mol run whose data root lacks the test file: ``valid``."""
        if config.dataset == "fsmol":
            try:
                fsmol_path(data_root(config), "test")
            except FileNotFoundError:
                return "valid"
        return "test"

    # -- scoring and reporting -----------------------------------------------------------------------
    def test_after_training(self, learner, config, out: Path, device) -> None:
        """The end of ``fewshot train``: score the test tasks (FS-Mol without its test file: valid)."""
        split = self.default_eval_split(config)
        if split != "test":
            note(f"{config.dataset} test file not in the data root; scoring the official {split} tasks instead")
        name, tasks = self.test_tasks(config, split)
        res = evaluate(learner, tasks, None, inner_steps=config.test_inner_steps, progress=True)
        support = config.support_spec()
        summary = {**_summary(res, support), "split": name}
        atomic_write(out / "test.json", (json.dumps(summary) + "\n").encode())
        record_eval(out, summary, res, seed=0, inner_steps=config.test_inner_steps)
        print(f"test {_line(res, name, support, config.test_inner_steps)}")

    def evaluate_runs(self, args, learner, configs, run_dirs, steps) -> None:
        """``fewshot eval RUN_DIR`` of a molecule run: mean ± standard error over tasks of ΔAUPRC (FS-Mol) or
        ROC-AUC, with ``steps`` test-time inner steps (``None``: each learner's own)."""
        cfg = configs[0]
        image_flags = [f for f, v in (("--ways", args.ways), ("--shots", args.shots), ("--queries", args.queries),
                                      ("--episodes", args.episodes)) if v is not None]
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
        name, tasks = self.test_tasks(cfg, args.split, args.data_root, support=support, draws=args.draws,
                                      seed=args.seed if args.seed is not None else 0)
        res = evaluate(learner, tasks, None, inner_steps=steps, progress=not args.json,
                       calibration=wants_calibration(args))
        summary = _summary(res, support)
        second = report_calibration(args, res, summary, f"{cfg.algo} {name}, support {support.describe()}")
        if len(run_dirs) == 1:          # RUN/evals.jsonl: what `fewshot report` draws per-assay figures from
            record_eval(run_dirs[0], {**summary, "split": name}, res, seed=args.seed if args.seed is not None else 0,
                        inner_steps=steps)
        if args.json:
            print(json.dumps(summary))
        else:
            print(_line(res, name, support, steps))
            if second:
                print(second)


def _summary(res, support: SupportSpec) -> dict:
    """The JSON line of a molecule evaluation (mean and standard error over tasks)."""
    summary = {"metric": res.metric, "mean": res.mean, "stderr": res.stderr, "tasks": len(res.tasks),
               "support_size": support.size if support.size is not None else support.positives + support.negatives}
    if support.size is None:
        summary.update(support_pos=support.positives, support_neg=support.negatives)
    summary.update(res.uncertainty or {})
    return summary


def _line(res, name: str, support, steps: int | None = None) -> str:
    """The human-readable result line."""
    inner = f", {steps} inner steps" if steps else ""
    return (f"{res.metric}: {res.mean:.4f} ± {res.stderr:.4f} (standard error over {len(res.tasks)} tasks, "
            f"{res.episodes} episodes, support {support.describe()}, {name}{inner})")


for _name in DATASETS:
    register_domain(Molecules(_name))
