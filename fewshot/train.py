"""The meta-training loop, shared by every learner.

A run directory holds::

    config.yaml             the resolved configuration
    metrics.jsonl           one JSON object per logged step ("split": "train" or "val")
    checkpoints/last.*      the latest state (safetensors + JSON), written every checkpoint_every steps
    checkpoints/best.*      the state with the best validation metric
    tensorboard/            TensorBoard events

Training on an existing run directory resumes from ``checkpoints/last``: the task
stream is indexed by step, so the resumed run sees the episodes the uninterrupted one
would have seen and ends where it would have ended.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from fewshot.checkpoint import load_model, load_optimizer, read_checkpoint, save_checkpoint
from fewshot.config import RunConfig, check_types, resolve
from fewshot.evaluate import EvalResult, evaluate
from fewshot.learners import Learner, build_learner
from fewshot.tasks.episode import stack_episodes
from fewshot.tasks.sources import fill_in, train_tasks, val_tasks

#: Options that may differ when a run is resumed (they do not change what is computed).
RESUMABLE_CHANGES = {"steps", "time_limit", "data_root", "test_episodes"}


class RunError(ValueError):
    """A run directory that cannot be used as asked."""


@dataclass
class TrainResult:
    learner: Learner
    config: RunConfig
    step: int
    stopped_early: bool
    best_val: float | None


def load_run_config(run_dir: Path) -> RunConfig:
    """The resolved config of an existing run directory."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a fewshot run directory (no config.yaml); "
                                "pass the --out directory of a `fewshot train` run")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RunError(f"{path} is not valid YAML ({e}); the run directory is damaged") from None
    if not isinstance(values, dict):
        raise RunError(f"{path} does not hold a run config; the run directory is damaged")
    check_types(values, source=str(path))
    return RunConfig(**values).validate()


def load_learner(run_dir: Path, checkpoint: str = "best") -> tuple[Learner, RunConfig]:
    """The learner of a run, with the weights of checkpoint ``best`` (or ``last``)."""
    config = load_run_config(run_dir)
    learner = build_learner(config)
    if not any(True for _ in learner.parameters()):   # nothing was trained (the random forest)
        return learner, config
    ckpt_dir = run_dir / "checkpoints"
    name = checkpoint if (ckpt_dir / f"{checkpoint}.json").is_file() else "last"
    tensors, _ = read_checkpoint(ckpt_dir, name)
    load_model(learner, tensors, ckpt_dir / f"{name}.json")
    return learner, config


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


def _better(metric: str, new: float, old: float | None) -> bool:
    return old is None or (new < old if metric in ("mse", "error") else new > old)


class Trainer:
    """Meta-trains ``config`` into ``run_dir`` (resuming it if it already holds a run)."""

    def __init__(self, config: RunConfig, run_dir: Path, progress: bool = True):
        self.run_dir, self.progress = Path(run_dir), progress
        self.ckpt_dir = self.run_dir / "checkpoints"
        resuming = (self.ckpt_dir / "last.json").is_file()
        self.config = config if resuming else fill_in(config)
        torch.manual_seed(self.config.seed)
        self.learner = build_learner(self.config)
        params = list(self.learner.parameters())
        self.optimizer = torch.optim.Adam(params, lr=self.config.lr) if params else None   # None: nothing to train
        self.step, self.best_val, self._saved_step = 0, None, None
        if (self.ckpt_dir / "last.json").is_file():
            self._restore()
        self.train_tasks = train_tasks(self.config)
        self.val_tasks = val_tasks(self.config)

    def _restore(self) -> None:
        tensors, meta = read_checkpoint(self.ckpt_dir, "last")
        load_model(self.learner, tensors, self.ckpt_dir / "last.json")
        load_optimizer(self.optimizer, tensors, meta)
        torch.set_rng_state(tensors["rng/torch"])
        self.step, self.best_val = meta["state"]["step"], meta["state"]["best_val"]
        self._saved_step = self.step

    def _save(self, name: str) -> None:
        if name == "last":
            self._saved_step = self.step
        save_checkpoint(self.ckpt_dir, name, self.learner, self.optimizer,
                        {"step": self.step, "best_val": self.best_val})

    def _log(self, record: dict[str, Any], writer) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key not in ("step", "split", "time"):
                writer.add_scalar(f"{record['split']}/{key}", value, record["step"])

    def _truncate_log(self) -> None:
        """Drop log lines written after the checkpoint being resumed from."""
        path = self.run_dir / "metrics.jsonl"
        if path.is_file():
            lines = [l for l in path.read_text().splitlines() if l.strip()]
            kept = [l for l in lines if json.loads(l)["step"] <= self.step]
            path.write_text("".join(l + "\n" for l in kept))

    def validate(self) -> EvalResult:
        return evaluate(self.learner, self.val_tasks, min(self.config.val_episodes, len(self.val_tasks)),
                        inner_steps=self.config.test_inner_steps)

    def run(self) -> TrainResult:
        from torch.utils.tensorboard import SummaryWriter

        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        if self.optimizer is None:   # a learner without parameters (the random forest): the run is its config
            return TrainResult(self.learner, cfg, 0, False, None)
        self._truncate_log()
        writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step or None)
        start, stopped_early = time.monotonic(), False
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"{cfg.algo} {cfg.dataset}", disable=not self.progress,
                   dynamic_ncols=True)
        try:
            while self.step < cfg.steps:
                if cfg.time_limit is not None and time.monotonic() - start >= cfg.time_limit:
                    stopped_early = True
                    break
                metrics = self._train_step()
                self.step += 1
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items()}, refresh=False)
                if self.step % cfg.log_every == 0:
                    self._log({"step": self.step, "split": "train", **metrics}, writer)
                if self.step % cfg.val_every == 0 or self.step == cfg.steps:
                    self._validate_and_keep_best(writer, bar)
                if self.step % cfg.checkpoint_every == 0:
                    self._save("last")
            if not (self.ckpt_dir / "best.json").is_file():   # stopped before the first validation
                self._validate_and_keep_best(writer, bar)
            self._save("last")
        finally:
            bar.close()
            writer.close()
        return TrainResult(self.learner, cfg, self.step, stopped_early, self.best_val)

    def _train_step(self) -> dict[str, float]:
        cfg = self.config
        self.learner.train()
        first = self.step * cfg.meta_batch
        batch = stack_episodes([self.train_tasks[first + t] for t in range(cfg.meta_batch)])
        self.optimizer.zero_grad(set_to_none=True)
        metrics = self.learner.meta_backward(batch)
        if not math.isfinite(metrics["loss"]):
            kept = (f"the last good checkpoint (step {self._saved_step}) is kept in {self.ckpt_dir}"
                    if self._saved_step is not None else "no checkpoint had been written yet")
            raise FloatingPointError(f"the meta-loss became {metrics['loss']} at step {self.step + 1}; training "
                                     f"stopped and {kept}; lower --lr or --inner-lr and train again")
        self.optimizer.step()
        return metrics

    def _validate_and_keep_best(self, writer, bar) -> None:
        result = self.validate()
        self._log({"step": self.step, "split": "val", result.metric: result.mean, "ci95": result.ci95}, writer)
        bar.write(f"step {self.step}: validation {result.metric} {result.mean:.4f} ± {result.ci95:.4f}")
        if _better(result.metric, result.mean, self.best_val):
            self.best_val = result.mean
            self._save("best")
