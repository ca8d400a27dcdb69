"""Runs of the ``fewshot`` command: a configuration turned into a learner and task sources, and run directories
read back (:func:`load`, :func:`load_learner`, :func:`load_ensemble`).

Everything here goes through the registries (:mod:`fewshot.registry`): the learner is built by its registered
builder over the registered net, and the tasks come from the run's domain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from fewshot.checkpoint import load_model, read_checkpoint
from fewshot.config import RESUMABLE_CHANGES, RunConfig, check_types, flatten, resolve, yaml_problem
from fewshot.learners.base import Learner
from fewshot.learners.ensemble import Ensemble
from fewshot.registry import NETS, BuildContext
from fewshot.train import RunError, Trainer, TrainResult, saved_train_section


def build_learner(config: RunConfig) -> Learner:
    """The learner and net a run config asks for (fresh, randomly initialised)."""
    shape = config.domain.input_shape(config)
    model = config.sections["model"]

    def net(out_features: int | None = None):
        if config.net is None:
            raise ValueError(f"{config.algo} uses no net")
        return NETS[config.net].build(model, shape, out_features)

    ways = config.ways if config.applies("ways") else 0      # meta-RL runs have no ways
    context = BuildContext(net, model, ways, config.domain.task, shape, config.seed,
                           family=config.domain.task_family(config))
    return config.learner_spec.build(config.sections["learner"], context)


def start(config: RunConfig):
    """The training and validation tasks of a new run, after filling in what the run derives from its data
    (held-out parts, input widths, the fine-tune head's classes); returns ``(train_tasks, val_tasks)``."""
    config.domain.fill_in(config)
    config.validate()
    train = config.domain.train_tasks(config)
    if config.applies("pretrain_classes"):
        classes = train.pretrain_classes
        if config.pretrain_classes not in (None, classes):
            raise ValueError(f"pretrain_classes={config.pretrain_classes} but the training split has {classes} "
                             "classes; drop pretrain_classes (a new run fills it in)")
        config.pretrain_classes = classes
    return train, config.domain.val_tasks(config)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        values = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RunError(f"{path} is not valid YAML ({yaml_problem(e)}); the run directory is damaged") from None
    if not isinstance(values, dict):
        raise RunError(f"{path} does not hold a run config; the run directory is damaged")
    return values


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config of a run directory of the ``fewshot`` command (sectioned, or flat as older runs wrote
    it: options of a flat file that do not apply to the run are dropped)."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a fewshot run directory (no config.yaml); "
                                "pass the --out directory of a `fewshot train` run")
    values = _read_yaml(path)
    if set(values) <= {"train"}:
        raise RunError(f"{run_dir} was trained by fewshot.fit on a learner of your own, so its config cannot rebuild "
                       "it: pass learner= (a fresh learner of the same architecture) to fewshot.load")
    sectioned = isinstance(values.get("data"), dict)
    flat = flatten(values, str(path))
    check_types(flat, source=str(path))
    return RunConfig(lenient=frozenset() if sectioned else frozenset(flat), **flat).validate()


def _load_weights(learner: Learner, run_dir: Path, checkpoint: str, ema: bool) -> None:
    ckpt_dir = run_dir / "checkpoints"
    name = checkpoint if (ckpt_dir / f"{checkpoint}.json").is_file() else "last"
    tensors, _ = read_checkpoint(ckpt_dir, name)
    load_model(learner, tensors, ckpt_dir / f"{name}.json", prefix="average/module." if ema else "model/")


def load_learner(run_dir: str | Path, checkpoint: str = "best") -> tuple[Learner, RunConfig]:
    """The learner of a ``fewshot train`` run, with the weights of checkpoint ``best`` (or ``last``): the moving
    average of the weights for a run trained with ``ema``; and the run's config."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    learner = build_learner(config)
    if any(True for _ in learner.parameters()):   # the random forest has nothing trained
        _load_weights(learner, run_dir, checkpoint, config.ema is not None)
    return learner, config


def load(run_dir: str | Path, learner: Learner | None = None, checkpoint: str = "best") -> Learner:
    """The trained learner of a run directory (``fewshot.fit`` or ``fewshot train``).

    Args:
        run_dir: the run directory (``out=`` of :func:`~fewshot.train.fit`, ``--out`` of ``fewshot train``).
        learner: a fresh learner of the same architecture to load the weights into; without it the learner is
            rebuilt from the run's config (runs of the ``fewshot`` command).
        checkpoint: ``"best"`` (by validation; the last weights when the run had no validation) or ``"last"``.
    """
    run_dir = Path(run_dir)
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    if learner is None:
        return load_learner(run_dir, checkpoint)[0]
    if not (run_dir / "checkpoints" / "last.json").is_file():
        raise FileNotFoundError(f"{run_dir} holds no checkpoint (checkpoints/last.json); pass the out= directory of "
                                "a fewshot.fit run")
    if not isinstance(learner, Learner):
        raise ValueError(f"learner= must be a fewshot learner (e.g. fewshot.MAML(model)), not {type(learner).__name__}")
    _load_weights(learner, run_dir, checkpoint, saved_train_section(run_dir).get("ema") is not None)
    return learner


def load_ensemble(run_dirs: Sequence[str | Path], checkpoint: str = "best") -> tuple[Ensemble, list[RunConfig]]:
    """The runs' learners as one :class:`~fewshot.learners.ensemble.Ensemble` (each with its checkpoint
    ``checkpoint``), and their configs, the first of which, at the largest image side among them, is the
    one to draw the episodes from.

    Runs must share the first one's dataset and what its domain names in ``ensemble_shared`` (the data split and
    its test part, for molecules the validation tasks and the features), and, for learners with a head of fixed
    width, the ways; Omniglot runs may hold out different validation alphabets
    (:meth:`fewshot.domains.omniglot.Omniglot.check_runs` refuses to score them on data any of them trained on).

    Raises:
        RunError: a run that does not share those settings; the message names the setting.
    """
    learners, configs = zip(*(load_learner(d, checkpoint) for d in run_dirs))
    first = configs[0]
    shared = ("dataset",) + first.domain.ensemble_shared
    for run_dir, cfg in zip(run_dirs[1:], configs[1:]):
        differ = [key for key in shared if not cfg.applies(key) or getattr(cfg, key) != getattr(first, key)]
        if not differ and cfg.learner_spec.head and cfg.ways != first.ways:
            differ = ["ways"]
        if differ:
            key = differ[0]
            theirs = getattr(cfg, key) if cfg.applies(key) else None
            raise RunError(f"run {run_dir} cannot join an ensemble with {run_dirs[0]}: its {key} is "
                           f"{theirs!r}, not {getattr(first, key)!r}; ensemble runs "
                           "trained on the same data split (and features, and ways for a gradient learner)")
    sizes = [cfg.domain.image_side(cfg) for cfg in configs]
    ensemble = Ensemble(learners, sizes, [cfg.test_inner_steps for cfg in configs])
    episodes = first.replace(image_size=max(sizes)) if sizes[0] is not None else first
    return ensemble, [episodes, *configs[1:]]


def run_config(run_dir: str | Path, file_values: dict[str, Any], flags: dict[str, Any]) -> RunConfig:
    """The config to train ``run_dir`` with: resolved anew, or the saved one when resuming.

    When ``run_dir`` already holds a run, options given in the file or as flags must agree with the saved
    config, except those in :data:`~fewshot.config.RESUMABLE_CHANGES`.
    """
    if not (Path(run_dir) / "checkpoints" / "last.json").is_file():
        return resolve(file_values, flags)
    saved = load_run_config(run_dir)
    given = {**file_values, **{k: v for k, v in flags.items() if v is not None}}
    check_types(given, source="options")
    for key, value in given.items():
        if key == "data_root" and not saved.applies(key):
            continue
        current = getattr(saved, key) if saved.applies(key) else None
        if key not in RESUMABLE_CHANGES and current != value:
            raise RunError(f"{run_dir} holds a run with {key}={current!r}, not {value!r}; resume it "
                           "with the same options or pass a new --out directory")
        if current != value:          # a resumable change (the selectors are never one)
            if not saved.applies(key):
                raise RunError(f"{key} does not apply to the {saved.algo} {saved.dataset} run in {run_dir}; drop it")
            setattr(saved, key, value)
    return saved.validate()


def trainer_for(config: RunConfig, out: str | Path, *, device="cpu", progress: bool = True) -> Trainer:
    """The :class:`~fewshot.train.Trainer` (the one trainer of :func:`fewshot.fit`) of the run ``config``
    describes, writing to ``out`` (resuming the run ``out`` holds, whose config :func:`run_config` read)."""
    resuming = (Path(out) / "checkpoints" / "last.json").is_file()
    domain = config.domain
    train, val = (domain.train_tasks(config), domain.val_tasks(config)) if resuming else start(config)
    torch.manual_seed(config.seed)
    learner = build_learner(config)
    if config.val_inner_steps is None:     # filled in like the data's settings, so config.yaml holds the run's
        config.val_inner_steps = config.test_inner_steps
    settings = config.sections["train"]
    record = {name: values for name, values in config.to_sections().items() if name != "train"}
    return Trainer(learner, train, val, settings, out, device=device, progress=progress, record=record,
                   description=f"{config.algo} {config.dataset}")


def train_run(config: RunConfig, out: str | Path, *, device="cpu", progress: bool = True) -> TrainResult:
    """Meta-train the run ``config`` describes into ``out`` (:func:`trainer_for`)."""
    return trainer_for(config, out, device=device, progress=progress).run()
