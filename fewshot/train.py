"""The meta-training loop, shared by every learner, every task source and the ``fewshot`` command.

:func:`fit` takes objects, not names: a learner (any :class:`~fewshot.learners.base.Learner`, over any
``nn.Module``), a training task source (``tasks[i]`` is episode ``i``), optionally validation tasks, and
the settings of :class:`TrainSettings`. A run directory holds::

    config.yaml             the run's configuration: its ``train`` section (these settings) and, for runs of
                            the ``fewshot`` command, the sections that rebuild the learner and the tasks
    metrics.jsonl           one JSON object per logged step ("split": "train" or "val")
    checkpoints/last.*      the latest state (safetensors + JSON), written every checkpoint_every steps
    checkpoints/best.*      the state with the best validation metric
    tensorboard/            TensorBoard events

With ``ema=d`` an exponential moving average of the weights (decay ``d``, :mod:`torch.optim.swa_utils`)
is kept beside them: it is what validation scores, what ``best`` is chosen by, and what :func:`fit`
returns; checkpoints hold both (``model/`` to resume training, ``average/``).

Calling :func:`fit` on a directory that holds a run resumes it from ``checkpoints/last``: the task
stream is indexed by step, so the resumed run sees the episodes the uninterrupted one would have seen and
ends where it would have ended, bit for bit, even after a SIGKILL at any moment (every file is replaced
atomically; a log line cut short is dropped). Ctrl-C or SIGTERM writes ``checkpoints/last`` on the way out.

Under ``torchrun`` each meta-batch is split across the processes (:mod:`fewshot.distributed`); rank 0
alone writes the run directory and validates.

A learner with a ``meta_update(batch, optimizer, lr=, total_tasks=) -> metrics`` method makes its own update
of each meta-batch (the meta-RL learners: TRPO's line search, ProMP's several outer steps), with the
trainer's optimizer and learning rate at hand, instead of ``meta_backward`` followed by the trainer's step;
checkpoints, resume and validation are the same.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from fewshot.checkpoint import load_model, load_optimizer, read_checkpoint, save_checkpoint
from fewshot.devices import fast_bf16
from fewshot.distributed import Ranks, task_slice
from fewshot.evaluate import EvalResult, evaluate
from fewshot.faults import pause_point
from fewshot.files import atomic_write, remove_partial_writes
from fewshot.learners.base import Learner
from fewshot.progress import progress_bar
from fewshot.tasks.episode import stack_episodes
from fewshot.tasks.sampler import ClassificationTasks


class RunError(ValueError):
    """A run directory that cannot be used as asked."""


@dataclass
class TrainSettings:
    """How a learner is meta-trained: the ``train`` section of a run's configuration.

    Attributes:
        steps: meta-updates.
        meta_batch: tasks per meta-update.
        lr: the outer (Adam) learning rate, scheduled by ``lr_schedule``: ``"step"`` multiplies it by ``lr_decay``
            every ``lr_decay_every`` steps; ``"cosine"`` anneals it to 0 along a half cosine over the run's
            progress, the fraction of ``steps`` done or, with a ``time_limit``, of the time limit used when that
            is larger (so a run the clock ends has annealed when it ends; its rates then depend on its speed,
            as its last step does, and each update's rate is in ``metrics.jsonl``).
        grad_clip: clip the meta-gradient's global L2 norm to this before each update (``None``: no clipping).
        ema: keep an exponential moving average of the weights with this decay (e.g. 0.999); validation,
            checkpoint selection and the returned learner use it.
        on_nonfinite: a non-finite meta-loss or gradient: ``"stop"`` (keeping the last good checkpoint) or
            ``"skip"`` the meta-batch.
        precision: ``"float32"``, ``"bf16"`` (the training step under bfloat16 autocast; weights, optimizer
            and evaluation stay float32) or ``"auto"``: bf16 where the device runs it natively
            (:func:`fewshot.devices.fast_bf16`), else float32, decided when the run starts and recorded.
        time_limit: stop cleanly after this many seconds (``None``: no limit).
        val_every, val_episodes: validate every so many steps on so many episodes.
        val_inner_steps: inner steps of gradient learners when validating (``None``: their own).
        log_every, checkpoint_every: how often a training record and ``checkpoints/last`` are written.
        seed: seed torch's global random stream when a run starts (``None``: leave it as it is).
    """

    steps: int = 2000
    meta_batch: int = 32
    lr: float = 0.001
    lr_schedule: str = "step"
    lr_decay: float = 1.0
    lr_decay_every: int = 2000
    grad_clip: float | None = None
    ema: float | None = None
    on_nonfinite: str = "stop"
    precision: str = "float32"
    time_limit: float | None = None
    val_every: int = 250
    val_episodes: int = 200
    val_inner_steps: int | None = None
    log_every: int = 10
    checkpoint_every: int = 100
    seed: int | None = None

    #: Settings that may differ when a run is resumed (they do not change what is computed).
    RESUMABLE = ("steps", "time_limit", "on_nonfinite")

    def validate(self) -> "TrainSettings":
        """Raise ``ValueError`` naming the first impossible setting; returns the settings."""
        for name in ("steps", "meta_batch", "lr_decay_every", "val_every", "val_episodes", "log_every",
                     "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number, got {self.lr}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}; pass a positive learning rate")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"grad_clip must be a finite number > 0 (or left out), got {self.grad_clip}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1] (1: a constant learning rate), got {self.lr_decay}")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ValueError(f"ema must be a decay in (0, 1), such as 0.999 (or left out), got {self.ema}")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"time_limit must be > 0 seconds, got {self.time_limit}")
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be stop or skip, got {self.on_nonfinite!r}")
        if self.lr_schedule not in ("step", "cosine"):
            raise ValueError(f"lr_schedule must be step or cosine, got {self.lr_schedule!r}")
        if self.lr_schedule == "cosine" and self.lr_decay != 1.0:
            raise ValueError(f"lr_decay={self.lr_decay} applies to lr_schedule: step, not cosine; drop lr_decay or "
                             "set lr_schedule: step")
        if self.precision not in ("float32", "bf16", "auto"):
            raise ValueError(f"precision must be float32, bf16 or auto, got {self.precision!r}")
        if self.val_inner_steps is not None and self.val_inner_steps < 0:
            raise ValueError(f"val_inner_steps must be >= 0, got {self.val_inner_steps}")
        return self

    def learning_rate(self, step: int, progress: float = 0.0) -> float:
        """The outer learning rate of update ``step + 1`` made at ``progress`` (in [0, 1], the cosine schedule's
        clock): ``lr * lr_decay ** (step // lr_decay_every)``, or ``lr * (1 + cos(pi * progress)) / 2``."""
        if self.lr_schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
        return self.lr * self.lr_decay ** (step // self.lr_decay_every)

    def progress(self, step: int, started: float, elapsed: float) -> float:
        """How far a run is after ``step`` updates (in [0, 1]): the fraction of ``steps`` done (never less than
        ``started``, the progress this process resumed from), or, with a time limit, the larger of that and
        ``started + (1 - started) * elapsed / time_limit`` (``elapsed``: the seconds this process has trained),
        so a resumed run anneals what is left of its schedule over its new time limit."""
        done = max(step / self.steps, started)
        if self.time_limit is None:
            return min(done, 1.0)
        return min(max(done, started + (1.0 - started) * elapsed / self.time_limit), 1.0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What :func:`fit` returns: the trained learner (the moving average with ``ema``), the last step, whether
    the time limit stopped it, the best validation metric, and the meta-batches skipped as non-finite."""

    learner: Learner
    step: int
    stopped_early: bool
    best_val: float | None
    skipped: int = 0
    run_dir: Path | None = None


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


def saved_train_section(run_dir: Path) -> dict[str, Any]:
    """The ``train`` section of a run directory's ``config.yaml`` (from a sectioned or an old flat file)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return {}
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        raise RunError(f"{path} is not valid YAML; the run directory is damaged") from None
    if not isinstance(values, dict):
        raise RunError(f"{path} does not hold a run config; the run directory is damaged")
    if isinstance(values.get("train"), dict):
        return values["train"]
    return values     # an old flat file: its keys that are train settings are compared


@contextmanager
def _interrupts_as_keyboard_interrupt() -> Iterator[None]:
    """SIGTERM raises ``KeyboardInterrupt`` within the block (main thread only), as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Trainer:
    """Meta-trains ``learner`` on ``tasks`` into ``run_dir`` (resuming it if it already holds a run) on
    ``device`` (a :class:`torch.device` or its name; episodes are drawn on the CPU and moved there one
    meta-batch at a time). :func:`fit` is its one-call form.

    The device is where the run computes, not part of what it computes: a run may be resumed on another
    device (bit for bit only on the device it was interrupted on: GPU kernels round differently, and the
    GPU's random state is not checkpointed)."""

    def __init__(self, learner: Learner, tasks, val_tasks=None, settings: TrainSettings | None = None,
                 run_dir: str | Path | None = None, *, device: torch.device | str = "cpu", progress: bool = True,
                 record: dict[str, Any] | None = None, description: str = "fit"):
        self.settings = (settings or TrainSettings()).validate()
        if not isinstance(learner, Learner):
            raise ValueError(f"fit trains a fewshot learner (e.g. fewshot.MAML(model) or fewshot.ProtoNet(encoder)), "
                             f"not a {type(learner).__name__}")
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if self.run_dir is not None and self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunError(f"run directory {self.run_dir} is a file; pass a new or existing directory as out")
        self.ckpt_dir = self.run_dir / "checkpoints" if self.run_dir is not None else None
        self.progress, self.record, self.description = progress, dict(record or {}), description
        self.device = torch.device(device)
        if self.settings.precision == "auto":        # decided once, on this device, and recorded in config.yaml
            self.settings = dataclasses.replace(self.settings,
                                                precision="bf16" if fast_bf16(self.device) else "float32")
        self.ranks = Ranks.current()
        if self.device.type == "cuda" and self.device.index is None and self.ranks.world > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))   # torchrun: a GPU per process
        task_slice(self.settings.meta_batch, self.ranks.rank, self.ranks.world)   # refuses a meta-batch too small
        resuming = self.ckpt_dir is not None and (self.ckpt_dir / "last.json").is_file()
        if resuming:
            self._check_resumable()
        elif self.settings.seed is not None:
            torch.manual_seed(self.settings.seed)
        self.learner = learner.to(self.device)
        if self.device.type == "cuda" and isinstance(tasks, ClassificationTasks) and tasks.in_memory:
            tasks = tasks.to(self.device)    # episodes gathered on the GPU from the examples held there
        self.episodes, self.val_tasks = tasks, val_tasks
        self.train_tasks = learner.training_tasks(tasks)
        params = [p for p in self.learner.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=self.settings.lr) if params else None   # None: nothing to train
        self.average = (AveragedModel(self.learner, multi_avg_fn=get_ema_multi_avg_fn(self.settings.ema),
                                      use_buffers=True, device=self.device)
                        if self.settings.ema is not None and params else None)
        self.step, self.best_val, self._saved_step, self.skipped = 0, None, None, 0
        self.schedule_progress = 0.0      # TrainSettings.progress at the last update (the cosine schedule's clock)
        self._resumed_progress, self._clock = 0.0, time.monotonic()
        self._rng, self._updating = torch.get_rng_state(), False
        if resuming:
            self._restore()

    def _check_resumable(self) -> None:
        saved = saved_train_section(self.run_dir)
        for key, value in self.settings.to_dict().items():
            if key in TrainSettings.RESUMABLE or key not in saved or key == "seed":
                continue
            if saved[key] != value:
                raise RunError(f"{self.run_dir} holds a run with {key}={saved[key]!r}, not {value!r}; resume it "
                               "with the same settings or pass a new out directory")

    def _restore(self) -> None:
        tensors, meta = read_checkpoint(self.ckpt_dir, "last")
        load_model(self.learner, tensors, self.ckpt_dir / "last.json")
        load_optimizer(self.optimizer, tensors, meta)
        if self.average is not None:
            load_model(self.average, tensors, self.ckpt_dir / "last.json", prefix="average/")
        torch.set_rng_state(tensors["rng/torch"])
        self._rng = tensors["rng/torch"]
        self.step, self.best_val = meta["state"]["step"], meta["state"]["best_val"]
        self.skipped = meta["state"].get("skipped", 0)
        self.schedule_progress = meta["state"].get("progress", self.step / self.settings.steps)
        self._resumed_progress = self.schedule_progress
        self._saved_step = self.step

    def _save(self, name: str) -> None:
        if name == "last":
            self._saved_step = self.step
        state = {"step": self.step, "best_val": self.best_val, "skipped": self.skipped}
        if self.settings.lr_schedule == "cosine":     # where its clock stood (a step schedule needs only the step)
            state["progress"] = self.schedule_progress
        if self.ranks.main and self.ckpt_dir is not None:
            save_checkpoint(self.ckpt_dir, name, self.learner, self.optimizer, state, self.average, rng=self._rng)

    def _log(self, record: dict[str, Any], writer) -> None:
        if not self.ranks.main or self.run_dir is None:
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
        return evaluate(self.deployed, self.val_tasks, min(self.settings.val_episodes, len(self.val_tasks)),
                        inner_steps=self.settings.val_inner_steps, warn=False)

    def _check_shapes(self) -> None:
        """Run the first training and validation episodes through the learner before the first step: a model that
        cannot take them, or whose outputs do not fit them, is refused naming the shapes. The global random
        stream is left as it was, so a resumed run is not disturbed."""
        was_training = self.learner.training
        with torch.random.fork_rng(devices=[]):
            self.learner.eval()
            try:
                for what, source in (("training", self.episodes), ("validation", self.val_tasks)):
                    if source is not None and hasattr(source, "__getitem__"):
                        self.learner.check_episode(source[0].to(self.device), what)
            finally:
                self.learner.train(was_training)

    def _write_config(self) -> None:
        for name in ("config.yaml", "metrics.jsonl"):
            remove_partial_writes(self.run_dir, name)
        values = {**{k: v for k, v in self.record.items() if k != "eval"}, "train": self.settings.to_dict(),
                  **({"eval": self.record["eval"]} if "eval" in self.record else {})}
        atomic_write(self.run_dir / "config.yaml", yaml.safe_dump(values, sort_keys=False).encode())

    def run(self) -> TrainResult:
        from torch.utils.tensorboard import SummaryWriter

        cfg, main = self.settings, self.ranks.main
        writer = None
        if main and self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_config()
        if self.optimizer is None:   # a learner without parameters (the random forest): the run is its config
            return TrainResult(self.learner, 0, False, None, run_dir=self.run_dir)
        self._check_shapes()
        if main and self.run_dir is not None:
            self._truncate_log()
            writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step or None)
        start, stopped_early = time.monotonic(), False
        self._clock = start
        bar = progress_bar(total=cfg.steps, initial=self.step, desc=self.description,
                           enabled=self.progress and main, dynamic_ncols=True)
        try:
            with _interrupts_as_keyboard_interrupt():
                while self.step < cfg.steps:
                    if cfg.time_limit is not None and self.ranks.any(time.monotonic() - start >= cfg.time_limit):
                        stopped_early = True
                        break
                    metrics = self._train_step()
                    self.step += 1
                    self._rng, self._updating = torch.get_rng_state(), False
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items()}, refresh=False)
                    if metrics and self.step % cfg.log_every == 0:
                        self._log({"step": self.step, "split": "train", **metrics,
                                   "lr": cfg.learning_rate(self.step - 1, self.schedule_progress)}, writer)
                    if main and self.val_tasks is not None and (self.step % cfg.val_every == 0
                                                                or self.step == cfg.steps):
                        self._validate_and_keep_best(writer, bar)
                    if self.step % cfg.checkpoint_every == 0:
                        self._save("last")
                unvalidated = stopped_early and self.step % cfg.val_every != 0   # the clock ended it between
                if main and self.val_tasks is not None and (unvalidated or not (      # validations, or before
                        self.ckpt_dir is not None and (self.ckpt_dir / "best.json").is_file())):   # the first
                    self._validate_and_keep_best(writer, bar)   # the steps since the last validation count too
                self._save("last")
        except KeyboardInterrupt:
            if not self._updating:   # not inside an update: the state of the last completed step is whole
                self._save("last")
            raise
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        return TrainResult(self.deployed, self.step, stopped_early, self.best_val, self.skipped, self.run_dir)

    def _train_step(self) -> dict[str, float]:
        """One meta-update on this rank's share of the step's tasks; ``{}`` when the meta-batch is skipped."""
        cfg = self.settings
        self.learner.train()
        first = self.step * cfg.meta_batch
        mine = task_slice(cfg.meta_batch, self.ranks.rank, self.ranks.world)
        batch = stack_episodes([self.train_tasks[first + t] for t in mine]).to(self.device)
        progress = cfg.progress(self.step, self._resumed_progress, time.monotonic() - self._clock)
        if cfg.lr_schedule == "cosine" and cfg.time_limit is not None:   # every rank takes the main one's clock
            progress = self.ranks.from_main(progress)
        self.schedule_progress, lr = progress, cfg.learning_rate(self.step, progress)
        update = getattr(self.learner, "meta_update", None)
        if update is not None:     # a learner that makes its own update (TRPO's line search, ProMP's outer steps)
            self._updating = True
            with self.learner.normalisation():
                metrics = update(batch, self.optimizer, lr=lr, total_tasks=cfg.meta_batch)
            if self.average is not None:
                self.average.update_parameters(self.learner)
            return metrics
        self.optimizer.zero_grad(set_to_none=True)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        with torch.autocast(params[0].device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"), \
                self.learner.normalisation():
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
            group["lr"] = lr
        self._updating = True                        # until the step counter follows: an interrupt saves nothing
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


def fit(learner: Learner, tasks, val_tasks=None, *, steps: int = 2000, meta_batch: int = 32, lr: float = 0.001,
        out: str | Path | None = None, device: torch.device | str = "cpu", progress: bool = True,
        **settings: Any) -> TrainResult:
    """Meta-train ``learner`` on the episodes of ``tasks``; validate on ``val_tasks``; write the run to ``out``.

    Calling ``fit`` again with the same ``out`` resumes the run from its last checkpoint and ends where one
    uninterrupted run would have ended (the learner passed in is the same architecture, freshly built).

    Args:
        learner: any learner, e.g. ``fewshot.MAML(model)`` or ``fewshot.ProtoNet(encoder)``, over any ``nn.Module``.
        tasks: training episodes: ``tasks[i]`` is episode ``i``
            (e.g. :class:`~fewshot.tasks.sampler.ClassificationTasks`).
        val_tasks: validation episodes (``None``: no validation; ``load`` then returns the last weights).
        steps, meta_batch, lr: meta-updates, tasks per update, the outer Adam learning rate.
        out: the run directory (``None``: nothing is written and nothing can resume).
        device: where to compute (``"cpu"``, ``"cuda"``, ...).
        progress: show a progress bar (plain lines when stderr is not a terminal).
        settings: any other field of :class:`TrainSettings` (``ema``, ``grad_clip``, ``lr_decay``, ``val_every``,
            ``time_limit``, ``seed``, ...).

    Returns:
        :class:`TrainResult`; ``result.learner`` is the trained learner (the moving average with ``ema``).
    """
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(TrainSettings)})
    if unknown:
        raise TypeError(f"fit() got unknown settings {unknown}; the settings are "
                        f"{', '.join(f.name for f in dataclasses.fields(TrainSettings))}")
    trainer = Trainer(learner, tasks, val_tasks, TrainSettings(steps=steps, meta_batch=meta_batch, lr=lr, **settings),
                      out, device=device, progress=progress)
    return trainer.run()
