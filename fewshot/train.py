"""The meta-training loop, shared by every learner.

A run directory holds::

    config.yaml             the resolved configuration
    metrics.jsonl           one JSON object per logged step ("split": "train" or "val")
    checkpoints/last.*      the latest state (safetensors + JSON), written every checkpoint_every steps
    checkpoints/best.*      the state with the best validation metric
    tensorboard/            TensorBoard events

With ``ema: d`` an exponential moving average of the weights (decay ``d``, :mod:`torch.optim.swa_utils`)
is kept beside them: it is what validation scores, what ``best`` is chosen by, and what
:func:`load_learner` returns; checkpoints hold both (``model/`` to resume training, ``average/``).

Training on an existing run directory resumes from ``checkpoints/last``: the task
stream is indexed by step, so the resumed run sees the episodes the uninterrupted one
would have seen and ends where it would have ended, bit for bit, even after a SIGKILL
at any moment (every file is replaced atomically; a log line cut short is dropped).

Under ``torchrun`` each meta-batch is split across the processes
(:mod:`fewshot.distributed`); rank 0 alone writes the run directory and validates.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from fewshot.checkpoint import load_model, load_optimizer, read_checkpoint, save_checkpoint
from fewshot.config import GRADIENT_ALGOS, MOLECULE_DATASETS, RunConfig, check_types, resolve, yaml_problem
from fewshot.distributed import Ranks, task_slice
from fewshot.evaluate import EvalResult, evaluate
from fewshot.faults import pause_point
from fewshot.files import atomic_write, remove_partial_writes
from fewshot.learners import Learner, build_learner
from fewshot.learners.ensemble import Ensemble
from fewshot.tasks.episode import stack_episodes
from fewshot.tasks.sources import fill_in, train_tasks, val_tasks

#: Options that may differ when a run is resumed (they do not change what is computed).
RESUMABLE_CHANGES = {"steps", "time_limit", "data_root", "test_episodes", "on_nonfinite"}


class RunError(ValueError):
    """A run directory that cannot be used as asked."""


@dataclass
class TrainResult:
    learner: Learner
    config: RunConfig
    step: int
    stopped_early: bool
    best_val: float | None
    skipped: int = 0            # meta-batches skipped for a non-finite loss (on_nonfinite="skip")


def load_run_config(run_dir: Path) -> RunConfig:
    """The resolved config of an existing run directory."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a fewshot run directory (no config.yaml); "
                                "pass the --out directory of a `fewshot train` run")
    try:
        values = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RunError(f"{path} is not valid YAML ({yaml_problem(e)}); the run directory is damaged") from None
    if not isinstance(values, dict):
        raise RunError(f"{path} does not hold a run config; the run directory is damaged")
    check_types(values, source=str(path))
    return RunConfig(**values).validate()


def load_learner(run_dir: Path, checkpoint: str = "best") -> tuple[Learner, RunConfig]:
    """The learner of a run, with the weights of checkpoint ``best`` (or ``last``): the moving average
    of the weights for a run trained with ``ema``."""
    config = load_run_config(run_dir)
    learner = build_learner(config)
    if not any(True for _ in learner.parameters()):   # nothing was trained (the random forest)
        return learner, config
    ckpt_dir = run_dir / "checkpoints"
    name = checkpoint if (ckpt_dir / f"{checkpoint}.json").is_file() else "last"
    tensors, _ = read_checkpoint(ckpt_dir, name)
    load_model(learner, tensors, ckpt_dir / f"{name}.json",
               prefix="average/module." if config.ema is not None else "model/")
    return learner, config


#: What runs must share to be scored as one ensemble: the data split and its test part, so that every member's
#: held-out test classes or tasks are the episodes'; for molecules the validation tasks and the features; for
#: heads of fixed width the ways. Omniglot members may hold out different validation alphabets (one may train on
#: alphabets another validates on: :func:`fewshot.tasks.sources.check_held_out_by_all` refuses those for them).
ENSEMBLE_SHARED = ("dataset", "split", "test_alphabets", "holdout_test", "test_tasks")
ENSEMBLE_SHARED_MOLECULES = ("holdout_val", "featurizer", "fp_radius", "fp_size", "fp_counts")


def load_ensemble(run_dirs: Sequence[Path], checkpoint: str = "best") -> tuple[Ensemble, list[RunConfig]]:
    """The runs' learners as one :class:`~fewshot.learners.ensemble.Ensemble` (each with its checkpoint
    ``checkpoint``), and their configs, the first of which, at the largest image side among them, is the
    one to draw the episodes from.

    Raises:
        RunError: a run that does not share the first one's data split and test part (:data:`ENSEMBLE_SHARED`),
            features or (gradient learners) ways; the message names the setting.
    """
    learners, configs = zip(*(load_learner(Path(d), checkpoint) for d in run_dirs))
    first = configs[0]
    shared = ENSEMBLE_SHARED + (ENSEMBLE_SHARED_MOLECULES if first.dataset in MOLECULE_DATASETS else ())
    for run_dir, cfg in zip(run_dirs[1:], configs[1:]):
        differ = [key for key in shared if getattr(cfg, key) != getattr(first, key)]
        if not differ and cfg.algo in GRADIENT_ALGOS and cfg.ways != first.ways:
            differ = ["ways"]
        if differ:
            raise RunError(f"run {run_dir} cannot join an ensemble with {run_dirs[0]}: its {differ[0]} is "
                           f"{getattr(cfg, differ[0])!r}, not {getattr(first, differ[0])!r}; ensemble runs "
                           "trained on the same data split (and features, and ways for a gradient learner)")
    sizes = [cfg.image_size if cfg.dataset == "omniglot" else None for cfg in configs]
    ensemble = Ensemble(learners, sizes, [cfg.test_inner_steps for cfg in configs])
    episodes = replace(first, image_size=max(sizes)) if first.dataset == "omniglot" else first
    return ensemble, [episodes, *configs[1:]]


def run_config(run_dir: Path, file_values: dict[str, Any], flags: dict[str, Any]) -> RunConfig:
    """The config to train ``run_dir`` with: resolved anew, or the saved one when resuming.

    When ``run_dir`` already holds a run, options given in the file or as flags must
    agree with the saved config, except those in :data:`RESUMABLE_CHANGES`.
    """
    if not (Path(run_dir) / "checkpoints" / "last.json").is_file():
        return resolve(file_values, flags)
    saved = load_run_config(Path(run_dir))
    given = {**file_values, **{k: v for k, v in flags.items() if v is not None}}
    check_types(given, source="options")
    for key, value in given.items():
        if key not in RESUMABLE_CHANGES and getattr(saved, key) != value:
            raise RunError(f"{run_dir} holds a run with {key}={getattr(saved, key)!r}, not {value!r}; resume it "
                           "with the same options or pass a new --out directory")
        setattr(saved, key, value)
    return saved.validate()


def _non_finite(loss: float, params: list[torch.Tensor]) -> str | None:
    """What is not finite in a meta-update (its loss, or its gradient), or ``None``."""
    if not math.isfinite(loss):
        return f"the meta-loss became {loss}"
    finite = [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    if finite and not bool(torch.stack(finite).all()):      # one device sync, not one per parameter
        return f"the meta-gradient became non-finite (meta-loss {loss:.4g})"
    return None


def _better(metric: str, new: float, old: float | None) -> bool:
    return old is None or (new < old if metric in ("mse", "error") else new > old)


class Trainer:
    """Meta-trains ``config`` into ``run_dir`` (resuming it if it already holds a run) on ``device`` (a
    :class:`torch.device` or its name; episodes are drawn on the CPU and moved there one meta-batch at a time).

    The device is where the run computes, not part of what it computes, so it is not in the config: a run
    may be resumed on another device (bit for bit only on the device it was interrupted on: GPU kernels
    round differently, and the GPU's random state is not checkpointed)."""

    def __init__(self, config: RunConfig, run_dir: Path, progress: bool = True,
                 device: torch.device | str = "cpu"):
        self.run_dir, self.progress, self.device = Path(run_dir), progress, torch.device(device)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunError(f"run directory {self.run_dir} is a file; pass a new or existing directory to --out")
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.ranks = Ranks.current()
        if self.device.type == "cuda" and self.device.index is None and self.ranks.world > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))   # torchrun: a GPU per process
        task_slice(config.meta_batch, self.ranks.rank, self.ranks.world)   # refuses a meta-batch too small to split
        resuming = (self.ckpt_dir / "last.json").is_file()
        self.config = config if resuming else fill_in(config)
        torch.manual_seed(self.config.seed)
        self.learner = build_learner(self.config).to(self.device)
        params = list(self.learner.parameters())
        self.optimizer = torch.optim.Adam(params, lr=self.config.lr) if params else None   # None: nothing to train
        self.average = (AveragedModel(self.learner, multi_avg_fn=get_ema_multi_avg_fn(self.config.ema),
                                      use_buffers=True, device=self.device)
                        if self.config.ema is not None and params else None)
        self.step, self.best_val, self._saved_step, self.skipped = 0, None, None, 0
        if (self.ckpt_dir / "last.json").is_file():
            self._restore()
        self.train_tasks = train_tasks(self.config)
        self.val_tasks = val_tasks(self.config)

    def _restore(self) -> None:
        tensors, meta = read_checkpoint(self.ckpt_dir, "last")
        load_model(self.learner, tensors, self.ckpt_dir / "last.json")
        load_optimizer(self.optimizer, tensors, meta)
        if self.average is not None:
            load_model(self.average, tensors, self.ckpt_dir / "last.json", prefix="average/")
        torch.set_rng_state(tensors["rng/torch"])
        self.step, self.best_val = meta["state"]["step"], meta["state"]["best_val"]
        self.skipped = meta["state"].get("skipped", 0)
        self._saved_step = self.step

    def _save(self, name: str) -> None:
        if name == "last":
            self._saved_step = self.step
        if self.ranks.main:
            save_checkpoint(self.ckpt_dir, name, self.learner, self.optimizer,
                            {"step": self.step, "best_val": self.best_val, "skipped": self.skipped}, self.average)

    def _log(self, record: dict[str, Any], writer) -> None:
        if not self.ranks.main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key not in ("step", "split", "time"):
                writer.add_scalar(f"{record['split']}/{key}", value, record["step"])

    def _truncate_log(self) -> None:
        """Drop log lines written after the checkpoint being resumed from, and a last line a crash cut short."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        kept = []
        for number, line in enumerate(path.read_text().split("\n")[:-1], start=1):   # [-1]: "" or unfinished
            try:
                record = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                raise RunError(f"{path}, line {number}, is not a JSON record; the run directory is damaged "
                               "(delete that line to resume)") from None
            if record is not None and record["step"] <= self.step:
                kept.append(line)
        atomic_write(path, "".join(l + "\n" for l in kept).encode())

    @property
    def deployed(self) -> Learner:
        """The learner validation scores and the run returns: the weights' moving average with ``ema``."""
        return self.learner if self.average is None else self.average.module

    def validate(self) -> EvalResult:
        return evaluate(self.deployed, self.val_tasks, min(self.config.val_episodes, len(self.val_tasks)),
                        inner_steps=self.config.test_inner_steps)

    def run(self) -> TrainResult:
        from torch.utils.tensorboard import SummaryWriter

        cfg, main = self.config, self.ranks.main
        writer = None
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for name in ("config.yaml", "metrics.jsonl"):
                remove_partial_writes(self.run_dir, name)
            atomic_write(self.run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
        if self.optimizer is None:   # a learner without parameters (the random forest): the run is its config
            return TrainResult(self.learner, cfg, 0, False, None)
        if main:
            self._truncate_log()
            writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step or None)
        start, stopped_early = time.monotonic(), False
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"{cfg.algo} {cfg.dataset}",
                   disable=not (self.progress and main), dynamic_ncols=True)
        try:
            while self.step < cfg.steps:
                if cfg.time_limit is not None and self.ranks.any(time.monotonic() - start >= cfg.time_limit):
                    stopped_early = True
                    break
                metrics = self._train_step()
                self.step += 1
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items()}, refresh=False)
                if metrics and self.step % cfg.log_every == 0:
                    self._log({"step": self.step, "split": "train", **metrics}, writer)
                if main and (self.step % cfg.val_every == 0 or self.step == cfg.steps):
                    self._validate_and_keep_best(writer, bar)
                if self.step % cfg.checkpoint_every == 0:
                    self._save("last")
            if main and not (self.ckpt_dir / "best.json").is_file():   # stopped before the first validation
                self._validate_and_keep_best(writer, bar)
            self._save("last")
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        return TrainResult(self.deployed, cfg, self.step, stopped_early, self.best_val, self.skipped)

    def _train_step(self) -> dict[str, float]:
        """One meta-update on this rank's share of the step's tasks; ``{}`` when the meta-batch is skipped."""
        cfg = self.config
        self.learner.train()
        first = self.step * cfg.meta_batch
        mine = task_slice(cfg.meta_batch, self.ranks.rank, self.ranks.world)
        batch = stack_episodes([self.train_tasks[first + t] for t in mine]).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        params = list(self.learner.parameters())
        with torch.autocast(params[0].device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            metrics = self.learner.meta_backward(batch, total_tasks=cfg.meta_batch)
        metrics = self.ranks.reduce_step(params, metrics, len(mine), cfg.meta_batch)
        pause_point("train-step")
        problem = _non_finite(metrics["loss"], params)
        if problem and cfg.on_nonfinite == "skip":
            self.skipped += 1
            if self.ranks.main:
                tqdm.write(f"step {self.step + 1}: {problem}; skipped this meta-batch")
            return {}
        if problem:
            kept = (f"the last good checkpoint (step {self._saved_step}) is kept in {self.ckpt_dir}"
                    if self._saved_step is not None else "no checkpoint had been written yet")
            raise FloatingPointError(f"{problem} at step {self.step + 1}; training stopped and {kept}; lower --lr "
                                     "or --inner-lr and train again, or resume with --on-nonfinite skip")
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        for group in self.optimizer.param_groups:     # a function of the step, so a resumed run follows it exactly
            group["lr"] = cfg.learning_rate(self.step)
        self.optimizer.step()
        if self.average is not None:
            self.average.update_parameters(self.learner)
        return metrics

    def _validate_and_keep_best(self, writer, bar) -> None:
        result = self.validate()
        self._log({"step": self.step, "split": "val", result.metric: result.mean, "ci95": result.ci95}, writer)
        bar.write(f"step {self.step}: validation {result.metric} {result.mean:.4f} ± {result.ci95:.4f}")
        if _better(result.metric, result.mean, self.best_val):
            self.best_val = result.mean
            self._save("best")
