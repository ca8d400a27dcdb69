"""The learner protocol: a mapping from a support set to a predictor.

Every learner answers three verbs::

    adapted = learner.adapt(support_x, support_y)   # task-specific state
    outputs = learner.predict(adapted, query_x)      # logits [N*Q, N] or values [N*Q, 1]
    loss, metrics = learner.meta_loss(task_batch)    # adapt + predict + loss over a task batch

and ``meta_backward(task_batch)``, which leaves the meta-gradient in ``.grad`` of the
learner's parameters (a backward per task by default: the peak memory of one task).
What the evaluator scores is always ``predict(adapt(support), query)``: one scoring path.

For new inputs, ``learner.fit_support(x, y)`` adapts once and ``learner(query_x)`` predicts.

BatchNorm (:attr:`Learner.batchnorm`, for the library's nets and a user's own module alike):

- ``"batch"`` (default): every BatchNorm layer normalises with the statistics of the batch it is
  given, in training and in scoring alike (one task's support set while adapting, its query set when
  predicting: the MAML paper's transductive setting; support and query together in the metric
  learners); running statistics are neither used nor updated;
- ``"running"``: BatchNorm layers update running statistics in training and use them when scoring
  (``eval()``), the usual supervised behaviour.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Literal, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from fewshot.tasks.episode import Episode, RaggedTaskBatch, TaskBatch

Task = Literal["classification", "regression"]
BATCHNORM_MODES = ("batch", "running")


def task_loss(outputs: torch.Tensor, targets: torch.Tensor, task: Task) -> torch.Tensor:
    """Cross-entropy of logits ``[n, N]`` against labels ``[n]``, or MSE of ``[n, d]`` against ``[n, d]``."""
    return F.cross_entropy(outputs, targets) if task == "classification" else F.mse_loss(outputs, targets)


def task_metric(outputs: torch.Tensor, targets: torch.Tensor, task: Task) -> float:
    """Accuracy (classification) or mean squared error (regression) of one episode."""
    with torch.no_grad():
        if task == "classification":
            return float((outputs.argmax(dim=-1) == targets).float().mean())
        return float(F.mse_loss(outputs, targets))


def metric_name(task: Task) -> str:
    return "accuracy" if task == "classification" else "mse"


@contextmanager
def batch_statistics(module: nn.Module) -> Iterator[None]:
    """Within the block, every BatchNorm layer of ``module`` normalises with the statistics of the batch it is
    given and leaves its running statistics untouched, in train and eval mode alike."""
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            saved.append((m, m.running_mean, m.running_var, m.num_batches_tracked))
            m.running_mean = m.running_var = m.num_batches_tracked = None
    try:
        yield
    finally:
        for m, mean, var, count in saved:
            m.running_mean, m.running_var, m.num_batches_tracked = mean, var, count


class ShapeError(ValueError):
    """A model's output that does not have the shape its learner needs (the message says which and why)."""


class Learner(nn.Module):
    """Base class: subclasses implement :meth:`adapt` and :meth:`predict`.

    Args:
        batchnorm: ``"batch"`` or ``"running"``: how BatchNorm layers normalise (module docstring).
    """

    task: Task = "classification"

    def __init__(self, *, batchnorm: str = "batch"):
        super().__init__()
        if batchnorm not in BATCHNORM_MODES:
            raise ValueError(f"batchnorm must be 'batch' (the statistics of each batch, in training and scoring) "
                             f"or 'running' (running statistics when scoring), got {batchnorm!r}")
        self.batchnorm = batchnorm
        self._support: Any = None

    @property
    def device(self) -> torch.device:
        """The device of the learner's parameters (the CPU for a learner without any): where episodes go."""
        return next((p.device for p in self.parameters()), torch.device("cpu"))

    @contextmanager
    def normalisation(self) -> Iterator[None]:
        """The learner's BatchNorm mode, entered by the trainer and the evaluator around every forward pass."""
        if self.batchnorm == "batch":
            with batch_statistics(self):
                yield
        else:
            yield

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Any:
        """Task-specific state from a support set ``[N*K, ...]``, ``[N*K]``.

        ``steps`` overrides the number of inner steps of learners that take steps.
        """
        raise NotImplementedError

    def predict(self, adapted: Any, query_x: torch.Tensor) -> torch.Tensor:
        """Outputs for ``query_x [N*Q, ...]``: logits ``[N*Q, N]`` or values ``[N*Q, d]``."""
        raise NotImplementedError

    # -- prediction for new inputs ---------------------------------------------------------------
    def fit_support(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> "Learner":
        """Adapt to a support set ``[n, ...]``, ``[n]`` (labels ``0..N-1``) for later calls ``learner(query_x)``;
        returns the learner. Nothing is differentiated: the learner's own weights do not change."""
        device = self.device
        with torch.no_grad(), self.normalisation():
            was_training = self.training
            self.eval()
            try:
                self._support = self.adapt(support_x.to(device), support_y.to(device), steps=steps)
            finally:
                self.train(was_training)
        return self

    def forward(self, query_x: torch.Tensor) -> torch.Tensor:
        """Outputs for ``query_x [Q, ...]`` (logits ``[Q, N]`` or values ``[Q, d]``) after :meth:`fit_support`."""
        if self._support is None:
            raise RuntimeError("call learner.fit_support(support_x, support_y) before learner(query_x)")
        with torch.no_grad(), self.normalisation():
            was_training = self.training
            self.eval()
            try:
                return self.predict(self._support, query_x.to(self.device))
            finally:
                self.train(was_training)

    # -- meta-training ---------------------------------------------------------------------------
    def episode_loss(self, episode: Episode) -> tuple[torch.Tensor, dict[str, float]]:
        """Adapt on the support set, then the query loss and metric of one episode."""
        outputs = self.predict(self.adapt(episode.support_x, episode.support_y), episode.query_x)
        loss = task_loss(outputs, episode.query_y, self.task)
        return loss, {"loss": float(loss.detach()), metric_name(self.task): task_metric(outputs, episode.query_y, self.task)}

    def meta_loss(self, batch: TaskBatch | RaggedTaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean query loss over the task batch (differentiable) and mean metrics."""
        losses, metrics = [], []
        for episode in batch:
            loss, m = self.episode_loss(episode)
            losses.append(loss)
            metrics.append(m)
        return torch.stack(losses).mean(), mean_metrics(metrics)

    def meta_backward(self, batch: TaskBatch | RaggedTaskBatch, total_tasks: int | None = None) -> dict[str, float]:
        """Accumulate the gradient of :meth:`meta_loss` into ``.grad``, one task at a time.

        ``total_tasks``: when ``batch`` is one process's share of a larger meta-batch, that
        meta-batch's size; each task's loss is divided by it, so that the shares' gradients
        add up to the gradient of the whole (default: ``batch.num_tasks``).
        """
        total = total_tasks or batch.num_tasks
        metrics = []
        for episode in batch:
            loss, m = self.episode_loss(episode)
            (loss / total).backward()
            metrics.append(m)
        return mean_metrics(metrics)

    def training_tasks(self, tasks: Any) -> Any:
        """The stream the trainer draws from when meta-training on ``tasks``: ``tasks`` itself for
        episodic learners (the fine-tune baseline turns it into supervised minibatches)."""
        return tasks

    # -- scoring ---------------------------------------------------------------------------------
    @torch.no_grad()
    def query_outputs(self, episode: Episode, steps: int | None = None) -> torch.Tensor:
        """``predict(adapt(support), query)`` of one episode, without a meta-gradient: what the evaluator scores."""
        return self.predict(self.adapt(episode.support_x, episode.support_y, steps=steps), episode.query_x)

    @torch.no_grad()
    def evaluate_episode(self, episode: Episode, steps: int | None = None) -> float:
        """The query metric of :meth:`query_outputs`."""
        return task_metric(self.query_outputs(episode, steps), episode.query_y, self.task)

    def check_episode(self, episode: Episode, what: str = "the") -> None:
        """Run one episode through :meth:`query_outputs` and refuse, naming the shapes, a model that fails on it or
        whose outputs do not fit the episode (``[N*Q, N]`` logits for ``N`` ways; ``[N*Q, d]`` values).
        ``what`` names the episodes in the message: ``"training"``, ``"validation"``."""
        try:
            with self.normalisation():
                outputs = self.query_outputs(episode)
        except ShapeError:
            raise
        except (RuntimeError, ValueError, IndexError) as e:
            detail = " ".join(str(e).split())[:300]
            raise ValueError(f"the model cannot run on the {what} episodes: support_x "
                             f"{tuple(episode.support_x.shape)}, query_x {tuple(episode.query_x.shape)} ({detail}); "
                             "check the input size the model expects (e.g. Conv-4 needs images of at least "
                             "16x16)") from None
        queries = episode.query_x.shape[0]
        if self.task == "classification":
            ways = int(episode.support_y.max()) + 1
            if tuple(outputs.shape) != (queries, ways):
                width = outputs.shape[-1] if outputs.dim() == 2 else tuple(outputs.shape)
                raise ShapeError(f"the model's output has width {width} but the {what} episodes are {ways}-way: "
                                 f"give the model {ways} outputs (e.g. a final nn.Linear(..., {ways})) or draw "
                                 f"{width}-way episodes")
        elif outputs.shape != episode.query_y.shape:
            raise ShapeError(f"the model's outputs have shape {tuple(outputs.shape)} but the {what} episodes' "
                             f"query targets have {tuple(episode.query_y.shape)}")


class SupportSet(NamedTuple):
    """A support set kept as it was given: ``x [S, ...]`` and labels ``y [S]`` in ``0..N-1``."""

    x: torch.Tensor
    y: torch.Tensor


class JointEmbeddingLearner(Learner):
    """A learner that embeds support and query in one forward pass of its ``encoder``.

    :meth:`adapt` keeps the support set; :meth:`predict` embeds it together with the query set and hands
    both embeddings to :meth:`logits`. With per-batch BatchNorm, support and query then share one set of
    statistics, in training and scoring alike. Subclasses set ``self.encoder`` and implement :meth:`logits`.
    """

    encoder: nn.Module

    def logits(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Query logits ``[Q, N]`` from support embeddings ``[S, ...]``, their labels ``[S]`` and query
        embeddings ``[Q, ...]``."""
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's embedding of ``x``, checked to be one vector per example ``[B, D]``."""
        z = self.encoder(x)
        if z.dim() != 2 or z.shape[0] != x.shape[0]:
            raise ShapeError(f"the encoder must map inputs [B, ...] to embeddings [B, D]; it gave {tuple(z.shape)} "
                             f"for {tuple(x.shape)} (flatten its output, e.g. end it with nn.Flatten())")
        return z

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> SupportSet:
        return SupportSet(support_x, support_y)

    def predict(self, adapted: SupportSet, query_x: torch.Tensor) -> torch.Tensor:
        n = adapted.x.shape[0]
        z = self.embed(torch.cat([adapted.x, query_x]))
        return self.logits(z[:n], adapted.y, z[n:])

    def episode_logits(self, episode: Episode) -> torch.Tensor:
        """Query logits ``[N*Q, N]`` of an episode: ``predict(adapt(support), query)``."""
        return self.predict(self.adapt(episode.support_x, episode.support_y), episode.query_x)


def mean_metrics(metrics: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean of a list of metric dicts."""
    return {k: sum(m[k] for m in metrics) / len(metrics) for k in metrics[0]}


class EmbeddedSupport(NamedTuple):
    """An embedded support set: ``embeddings [S, D]`` and their labels ``[S]`` in ``0..N-1``."""

    embeddings: torch.Tensor
    labels: torch.Tensor

    @property
    def ways(self) -> int:
        return int(self.labels.max()) + 1


def embedding_width(encoder: nn.Module, feature_dim: int | None) -> int:
    """``feature_dim`` if given, else the encoder's ``embedding_dim`` (set by :class:`~fewshot.nets.Conv4`)."""
    width = feature_dim if feature_dim is not None else getattr(encoder, "embedding_dim", None)
    if not isinstance(width, int) or width < 1:
        raise ValueError("cannot tell the width of the encoder's output: pass feature_dim= (the size D of "
                         "encoder(x) [B, D]) or use an encoder with an integer embedding_dim attribute")
    return width
