"""Run configuration: defaults, the papers' recipes, YAML files and validation.

Precedence, lowest first: :class:`RunConfig` defaults, the recipe of the chosen
``(algo, dataset)`` (:data:`RECIPES`), a YAML file (``--config``), command-line flags.
The resolved config is written to ``RUN_DIR/config.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

GRADIENT_ALGOS = ("maml", "fomaml", "anil", "metasgd", "reptile")
METRIC_ALGOS = ("protonet", "matching", "matching-fce", "relation", "siamese")
ALGOS = GRADIENT_ALGOS + METRIC_ALGOS + ("finetune", "forest")
MOLECULE_DATASETS = ("fsmol", "tox21", "sider", "muv", "toxcast")
DATASETS = ("omniglot", "sinusoid") + MOLECULE_DATASETS
MOLECULE_NETS = ("fp-mlp", "graph")
OMNIGLOT_SPLITS = ("background", "evaluation", "vinyals-train")


@dataclass
class RunConfig:
    """Everything a run needs; see the README's "Options" table for the meaning of each."""

    algo: str = "protonet"
    dataset: str = "omniglot"
    split: str = "background"          # the meta-training split
    ways: int = 5                      # ways of validation and test episodes
    shots: int = 1
    queries: int = 15
    train_ways: int | None = None      # ways of training episodes (None: same as ways)
    train_queries: int | None = None   # queries of training episodes (None: same as queries)
    within_alphabet: bool = False      # omniglot: training and validation episodes drawn within one alphabet
    meta_batch: int = 32
    steps: int = 2000
    inner_steps: int = 1
    eval_inner_steps: int | None = None  # test-time inner steps (None: same as inner_steps)
    inner_lr: float = 0.4
    lr: float = 0.001
    lr_decay: float = 1.0              # multiply lr by this every lr_decay_every steps (Snell et al.: 0.5 per 2000)
    lr_decay_every: int = 2000
    net: str = "conv4-pool"            # conv4-pool | conv4-strided | resnet12 (TADAM's ResNet-12) | mlp
    norm: str = "batch"                # batch (per-task batch statistics) | none
    channels: int = 64                 # conv4 nets: filters per block; resnet12: the first block's width
                                       # (the four blocks have channels x 1, 2, 4, 8; 64 is TADAM's)
    pooling: str = "mean"              # conv4 nets: the last feature map as a vector: mean (over space) |
                                       # flatten (channels x side x side; Snell et al. on larger images)
    image_size: int = 28
    rotations: bool | None = None      # None: on for the Vinyals splits, off otherwise; on a Lake split they
                                       # add training classes only (held-out alphabets stay upright)
    distort: bool = False              # omniglot: random affine distortions of training images (Koch et al. 2015)
    vectorize: bool = False            # vmap over the tasks of a meta-batch
    multi_step_loss: bool = False      # gradient learners: meta-train on the mean query loss after every inner step
    margin: float = 1.0                # siamese: contrastive-loss margin
    distance: str = "euclidean"        # siamese: euclidean (contrastive loss) | l1-weighted (Koch's head, BCE);
                                       # protonet: euclidean | mahalanobis (FS-Mol's class-covariance distance)
    batch_size: int = 64               # finetune: pretraining minibatch size
    pretrain_classes: int | None = None  # finetune: classes of the pretraining head (filled in)
    val_alphabets: list[str] = field(default_factory=list)   # filled in when the run starts
    test_alphabets: list[str] = field(default_factory=list)
    holdout_val: int = 3               # alphabets of a Lake split held out for validation
    holdout_test: int = 5              # ... and for testing
    val_every: int = 250
    val_episodes: int = 200
    test_episodes: int = 600
    log_every: int = 10
    checkpoint_every: int = 100
    time_limit: float | None = None
    grad_clip: float | None = None     # clip the meta-gradient's global L2 norm to this before each update
    ema: float | None = None           # keep an exponential moving average of the weights with this decay
                                       # (e.g. 0.999); validation, checkpoint selection and evaluation use it
    on_nonfinite: str = "stop"         # a non-finite meta-loss or gradient: stop | skip (the meta-batch)
    precision: str = "float32"         # float32 | bf16: the training step under bfloat16 autocast (weights,
                                       # optimizer and evaluation stay float32)
    seed: int = 0
    data_root: str | None = None
    # molecules (fsmol, tox21, sider, muv, toxcast): see fewshot/tasks/molecule_sources.py
    featurizer: str = "ecfp"           # ecfp | ecfp+desc | graph
    fp_radius: int = 2
    fp_size: int = 2048
    fp_counts: bool = True             # ECFP counts (log1p-scaled) or bits
    support_size: int = 16             # stratified support set (FS-Mol) ...
    support_pos: int | None = None     # ... or exactly this many actives
    support_neg: int | None = None     # ... and inactives (the Tox21 protocol)
    ragged_queries: bool = False       # training queries are "up to queries": a smaller task uses all the
                                       # molecules its support leaves (FS-Mol's sampler); meta-batches are ragged
    draws: int = 10                    # evaluation episodes per task (FS-Mol 10, Tox21 protocol 20)
    hidden: int = 1024                 # fp-mlp hidden width / graph atom state width
    embedding_dim: int = 512
    dropout: float = 0.0               # fp-mlp: dropout on the hidden layer during training
    graph_layers: int = 3
    trees: int = 100                   # forest: trees per task
    input_dim: int | None = None       # fp-mlp input width (filled in from the features)
    test_tasks: list[str] = field(default_factory=list)   # MoleculeNet sets: the held-out tasks (filled in)

    def learning_rate(self, step: int) -> float:
        """The outer learning rate of update ``step + 1``: ``lr * lr_decay ** (step // lr_decay_every)``."""
        return self.lr * self.lr_decay ** (step // self.lr_decay_every)

    def validate(self) -> "RunConfig":
        """Raise ``ValueError`` naming the first impossible setting."""
        if self.algo not in ALGOS:
            raise ValueError(f"unknown algorithm {self.algo!r}; choose one of {', '.join(ALGOS)}")
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        if self.dataset == "omniglot" and self.split not in OMNIGLOT_SPLITS:
            raise ValueError(f"unknown omniglot training split {self.split!r}; choose one of "
                             f"{', '.join(OMNIGLOT_SPLITS)}")
        if self.multi_step_loss and self.algo not in ("maml", "fomaml", "anil", "metasgd"):
            raise ValueError(f"multi_step_loss applies to maml, fomaml, anil and metasgd, not {self.algo}; drop it")
        distances = {"siamese": ("euclidean", "l1-weighted"), "protonet": ("euclidean", "mahalanobis")}
        allowed = distances.get(self.algo, ("euclidean",))
        if self.distance not in allowed:
            raise ValueError(f"unknown {self.algo} distance {self.distance!r}; use {' or '.join(allowed)}")
        if self.distort and (self.dataset != "omniglot" or self.algo == "finetune"):
            raise ValueError(f"distort applies to omniglot training episodes, not to {self.algo} on {self.dataset}; "
                             "drop it")
        if self.within_alphabet and self.dataset != "omniglot":
            raise ValueError(f"within_alphabet applies to omniglot episodes, not {self.dataset}; drop it")
        for name in ("margin", "inner_lr", "lr"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if not self.margin > 0:
            raise ValueError(f"margin must be > 0, got {self.margin}")
        for name in ("ways", "shots", "queries", "meta_batch", "steps", "image_size", "val_every", "batch_size",
                     "lr_decay_every", "val_episodes", "test_episodes", "log_every", "checkpoint_every",
                     "holdout_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        # molecules may validate on the training tasks' held-out molecules (holdout_val 0, the Tox21 protocol)
        if self.holdout_val < (0 if self.dataset in MOLECULE_DATASETS else 1):
            raise ValueError(f"holdout_val must be >= {0 if self.dataset in MOLECULE_DATASETS else 1}, "
                             f"got {self.holdout_val}")
        for name in ("train_ways", "train_queries"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("inner_steps", "eval_inner_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        shared = sorted(set(self.val_alphabets) & set(self.test_alphabets))
        if shared:
            raise ValueError(f"val_alphabets and test_alphabets share {shared}; hold out each alphabet once")
        for name in ("inner_lr", "lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}; pass a positive learning rate")
        if not 0 <= self.dropout < 1 or (self.dropout and self.net != "fp-mlp"):
            raise ValueError(f"dropout must be in [0, 1) and applies to net fp-mlp only, got {self.dropout} "
                             f"with net {self.net}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"grad_clip must be a finite number > 0 (or left out), got {self.grad_clip}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1] (1: a constant learning rate), got {self.lr_decay}")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ValueError(f"ema must be a decay in (0, 1), such as 0.999 (or left out), got {self.ema}")
        if self.ragged_queries and self.dataset not in MOLECULE_DATASETS:
            raise ValueError(f"ragged_queries applies to molecule datasets, not {self.dataset}; drop it")
        if self.ragged_queries and self.vectorize:
            raise ValueError("ragged_queries makes meta-batches of unequal episodes, which vectorize (vmap) cannot "
                             "take: set vectorize: false")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"time_limit must be > 0 seconds, got {self.time_limit}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be stop or skip, got {self.on_nonfinite!r}")
        if self.precision not in ("float32", "bf16"):
            raise ValueError(f"precision must be float32 or bf16, got {self.precision!r}")
        if self.dataset == "omniglot" and self.image_size < 16:
            raise ValueError(f"image_size must be >= 16 for the Conv-4 nets (four 2x2 poolings), got {self.image_size}")
        if self.dataset == "sinusoid" and self.algo not in GRADIENT_ALGOS:
            raise ValueError(f"{self.algo} is a classifier; sinusoid is regression: choose one of "
                             f"{', '.join(GRADIENT_ALGOS)}")
        if self.dataset == "sinusoid" and (self.ways, self.train_ways) not in ((1, None), (1, 1)):
            raise ValueError(f"sinusoid tasks are regression with one output; ways must be 1, got "
                             f"{self.train_ways or self.ways}")
        if self.net not in ("conv4-pool", "conv4-strided", "resnet12", "mlp") + MOLECULE_NETS:
            raise ValueError(f"unknown net {self.net!r}; choose conv4-pool, conv4-strided, resnet12, mlp, fp-mlp "
                             "or graph")
        if self.dataset in MOLECULE_DATASETS:
            self._validate_molecules()
        elif self.net in MOLECULE_NETS or self.algo == "forest":
            raise ValueError(f"{self.net if self.algo != 'forest' else 'forest'} is for molecule datasets "
                             f"({', '.join(MOLECULE_DATASETS)}), not {self.dataset}")
        elif (self.net == "mlp") != (self.dataset == "sinusoid"):
            raise ValueError(f"net {self.net!r} does not fit dataset {self.dataset!r}: "
                             "use mlp for sinusoid and a conv4 net or resnet12 for omniglot")
        if self.norm not in ("batch", "none"):
            raise ValueError(f"unknown norm {self.norm!r}; choose batch or none")
        self._validate_conv()
        return self

    def _validate_conv(self) -> None:
        if self.pooling not in ("mean", "flatten"):
            raise ValueError(f"unknown pooling {self.pooling!r}; choose mean or flatten")
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")
        if self.algo == "relation" and self.net == "resnet12":
            raise ValueError("relation builds the paper's own encoder (64 x 7 x 7 maps on 28x28 images), not "
                             "resnet12: drop net")
        if self.net == "resnet12" and self.pooling != "mean":
            raise ValueError(f"pooling {self.pooling} applies to the conv4 nets; resnet12 averages its last feature "
                             "map over space: drop pooling")
        conv = (self.net.startswith("conv4-") or self.net == "resnet12") and self.algo != "relation"
        if not conv and (self.pooling, self.channels) != ("mean", 64):
            raise ValueError(f"channels shapes the conv4 and resnet12 nets, pooling the conv4 nets; {self.algo} "
                             f"with net {self.net} has its own encoder: drop them")

    def _validate_molecules(self) -> None:
        from fewshot.datasets.featurize import FeaturizerSpec

        if self.algo in ("relation", "matching-fce"):
            raise ValueError(f"{self.algo} is built for images; on molecules use protonet, matching, siamese, "
                             "maml, fomaml, anil, metasgd, reptile, finetune or forest")
        if self.net not in MOLECULE_NETS:
            raise ValueError(f"net {self.net!r} does not fit molecules; use fp-mlp (fingerprints) or graph")
        if (self.net == "graph") != (self.featurizer == "graph"):
            raise ValueError(f"net {self.net} needs featurizer {'graph' if self.net == 'graph' else 'ecfp or ecfp+desc'}"
                             f", got {self.featurizer}")
        if self.algo == "forest" and self.featurizer == "graph":
            raise ValueError("the random forest needs fingerprints: use featurizer ecfp (or ecfp+desc)")
        if self.ways != 2:
            raise ValueError(f"assays are binary (0 inactive, 1 active): ways must be 2, got {self.ways}")
        FeaturizerSpec(self.featurizer, self.fp_radius, self.fp_size, self.fp_counts)
        self.support_spec()
        for name in ("draws", "hidden", "embedding_dim", "graph_layers", "trees"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.queries < 2:
            raise ValueError(f"queries (training query molecules per task) must be >= 2, got {self.queries}")

    def support_spec(self):
        """The :class:`~fewshot.tasks.assays.SupportSpec` of a molecule run (explicit counts win over the size)."""
        from fewshot.tasks.assays import SupportSpec

        if self.support_pos is not None or self.support_neg is not None:
            return SupportSpec(positives=self.support_pos, negatives=self.support_neg)
        return SupportSpec(size=self.support_size)

    @property
    def test_inner_steps(self) -> int:
        return self.inner_steps if self.eval_inner_steps is None else self.eval_inner_steps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_MAML_OMNIGLOT = dict(net="conv4-strided", ways=5, shots=1, queries=15, meta_batch=32, inner_lr=0.4,
                      inner_steps=1, eval_inner_steps=3, lr=0.001, steps=3000)
#: The papers' settings per (algo, dataset); ``steps`` is sized for a CPU, not the papers' 60k.
RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    ("maml", "omniglot"): _MAML_OMNIGLOT,             # Finn et al. 2017
    ("fomaml", "omniglot"): _MAML_OMNIGLOT,
    ("anil", "omniglot"): _MAML_OMNIGLOT,             # Raghu et al. 2020
    ("metasgd", "omniglot"): _MAML_OMNIGLOT,          # Li et al. 2017: step sizes start at alpha
    ("reptile", "omniglot"): dict(net="conv4-strided", ways=5, shots=1, queries=15, meta_batch=5,
                                  inner_lr=0.05, inner_steps=5, eval_inner_steps=50, lr=0.001),
    ("protonet", "omniglot"): dict(net="conv4-pool", ways=5, shots=1, queries=15, train_ways=60,
                                   train_queries=5, meta_batch=1, lr=0.001, inner_steps=0, steps=1500),  # Snell et al. 2017
}
_METRIC_OMNIGLOT = dict(net="conv4-pool", ways=5, shots=1, queries=15, train_ways=20, train_queries=5,
                        meta_batch=1, lr=0.001, inner_steps=0, steps=3000)
RECIPES[("matching", "omniglot")] = _METRIC_OMNIGLOT         # Vinyals et al. 2016
RECIPES[("matching-fce", "omniglot")] = _METRIC_OMNIGLOT
RECIPES[("relation", "omniglot")] = {**_METRIC_OMNIGLOT, "train_ways": 5, "train_queries": 15}  # Sung et al. 2018
RECIPES[("siamese", "omniglot")] = _METRIC_OMNIGLOT          # Koch et al. 2015 / Hadsell et al. 2006
RECIPES[("finetune", "omniglot")] = dict(net="conv4-pool", ways=5, shots=1, queries=15, meta_batch=1, lr=0.001,
                                         batch_size=64, inner_lr=0.01, inner_steps=100, steps=3000)
_MAML_SINUSOID = dict(net="mlp", norm="none", ways=1, shots=10, queries=10, meta_batch=25, inner_lr=0.01,
                      inner_steps=1, eval_inner_steps=10, lr=0.001, steps=40000,
                      val_every=1000, val_episodes=100, checkpoint_every=1000, log_every=100)
for _algo in ("maml", "fomaml", "anil", "metasgd"):
    RECIPES[(_algo, "sinusoid")] = _MAML_SINUSOID
RECIPES[("reptile", "sinusoid")] = {**_MAML_SINUSOID, "inner_steps": 5, "inner_lr": 0.02, "meta_batch": 5}


# Molecules. FS-Mol (Stanley et al. 2021): support 16 stratified, the rest of a task as query, 10 draws per
# task; training episodes use 16 query molecules so that every training task (32 molecules or more) fits.
# The Tox21 protocol (Altae-Tran et al. 2017): train on 9 tasks, test on SR-HSE, SR-MMP and SR-p53 with
# 10+/10- supports, 20 draws.
_MOLECULES = dict(ways=2, net="fp-mlp", featurizer="ecfp+desc", queries=16, meta_batch=16, lr=0.0005,
                  inner_steps=0, steps=20000, holdout_val=0, val_every=500, val_episodes=200,
                  checkpoint_every=500, log_every=50, test_episodes=10**6)
# FS-Mol: ECFP alone (measured better on the valid tasks than ecfp+desc, also with the valid descriptors scaled
# by the training file's statistics: README, "Few-shot drug discovery").
_FSMOL = dict(_MOLECULES, featurizer="ecfp", support_size=16, draws=10, holdout_val=100)
_TOX21 = dict(_MOLECULES, support_pos=10, support_neg=10, queries=64, draws=20, steps=2000, val_every=250,
              checkpoint_every=250)
_MAML_MOLECULES = dict(inner_lr=0.05, inner_steps=3, eval_inner_steps=3, lr=0.0005)
for _dataset, _base in (("fsmol", _FSMOL), ("tox21", _TOX21), ("sider", _TOX21), ("muv", _TOX21),
                        ("toxcast", _TOX21)):
    RECIPES[("protonet", _dataset)] = _base
    RECIPES[("matching", _dataset)] = _base
    RECIPES[("siamese", _dataset)] = _base
    for _algo in ("maml", "fomaml", "anil", "metasgd"):
        RECIPES[(_algo, _dataset)] = dict(_base, **_MAML_MOLECULES)
    RECIPES[("reptile", _dataset)] = dict(_base, inner_lr=0.05, inner_steps=5, eval_inner_steps=5, meta_batch=5)
    RECIPES[("finetune", _dataset)] = dict(_base, batch_size=256, inner_lr=0.01, inner_steps=50)
    RECIPES[("forest", _dataset)] = dict(_base, featurizer="ecfp", fp_counts=False, steps=1)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file, with each key and value type checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {path} is not valid YAML: {yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of option: value")
    check_types(data, source=str(path))
    return data


def yaml_problem(error: Exception) -> str:
    """One line for a YAML (or text decoding) error: the problem and where it is."""
    mark = getattr(error, "problem_mark", None)
    if getattr(error, "problem", None) and mark is not None:
        return f"{error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(error).split())


def check_types(values: dict[str, Any], source: str) -> None:
    """Raise ``ValueError`` for a key :class:`RunConfig` lacks or a value of the wrong type."""
    hints = get_type_hints(RunConfig)
    for key, value in values.items():
        if key not in hints:
            raise ValueError(f"{source}: unknown option {key!r}; valid options: {', '.join(hints)}")
        if value is None:
            if "None" not in str(hints[key]):
                raise ValueError(f"{source}: option {key!r} cannot be empty")
            continue
        expected = _base_type(hints[key])
        ok = (isinstance(value, expected) and not (expected is int and isinstance(value, bool))) or \
            (expected is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            hint = (" (YAML reads 1e-3 as text: write 1.0e-3 or 0.001)"
                    if expected is float and isinstance(value, str) and _is_number(value) else "")
            raise ValueError(f"{source}: option {key!r} must be {expected.__name__}, got {value!r}{hint}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _base_type(hint: Any) -> type:
    if getattr(hint, "__origin__", None) is list:
        return list
    for t in (bool, int, float, str, list):
        if hint is t or t in getattr(hint, "__args__", ()):
            return t
    raise TypeError(hint)


def resolve(file_values: dict[str, Any], flag_values: dict[str, Any]) -> RunConfig:
    """Defaults < recipe < file < flags, validated."""
    merged = {**file_values, **{k: v for k, v in flag_values.items() if v is not None}}
    algo = merged.get("algo", RunConfig.algo)
    dataset = merged.get("dataset", RunConfig.dataset)
    base: dict[str, Any] = {"algo": algo, "dataset": dataset}
    if dataset == "sinusoid":
        base["split"] = "sinusoid"
    base.update(RECIPES.get((algo, dataset), {}))
    base.update(merged)
    check_types(base, source="options")
    return RunConfig(**base).validate()
