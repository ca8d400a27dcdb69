"""The learner protocol: a mapping from a support set to a predictor.

Every learner answers three verbs::

    adapted = learner.adapt(support_x, support_y)   # task-specific state
    outputs = learner.predict(adapted, query_x)      # logits [N*Q, N] or values [N*Q, 1]
    loss, metrics = learner.meta_loss(task_batch)    # adapt + predict + loss over a task batch

and ``meta_backward(task_batch)``, which leaves the meta-gradient in ``.grad`` of the
learner's parameters (a backward per task by default: the peak memory of one task).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from fewshot.tasks.episode import Episode, RaggedTaskBatch, TaskBatch

Task = Literal["classification", "regression"]


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


class Learner(nn.Module):
    """Base class: subclasses implement :meth:`adapt` and :meth:`predict`."""

    task: Task = "classification"

    @property
    def device(self) -> torch.device:
        """The device of the learner's parameters (the CPU for a learner without any): where episodes go."""
        return next((p.device for p in self.parameters()), torch.device("cpu"))

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Any:
        """Task-specific state from a support set ``[N*K, ...]``, ``[N*K]``.

        ``steps`` overrides the number of inner steps of learners that take steps.
        """
        raise NotImplementedError

    def predict(self, adapted: Any, query_x: torch.Tensor) -> torch.Tensor:
        """Outputs for ``query_x [N*Q, ...]``: logits ``[N*Q, N]`` or values ``[N*Q, d]``."""
        raise NotImplementedError

    def episode_loss(self, episode: Episode) -> tuple[torch.Tensor, dict[str, float]]:
        """Adapt on the support set, then the query loss and metric of one episode."""
        adapted = self.adapt(episode.support_x, episode.support_y)
        outputs = self.predict(adapted, episode.query_x)
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

    @torch.no_grad()
    def query_outputs(self, episode: Episode, steps: int | None = None) -> torch.Tensor:
        """Query outputs (logits ``[N*Q, N]`` or values) after adapting to the support set (no meta-gradient)."""
        return self.predict(self.adapt(episode.support_x, episode.support_y, steps=steps), episode.query_x)

    @torch.no_grad()
    def evaluate_episode(self, episode: Episode, steps: int | None = None) -> float:
        """The query metric after adapting to the support set (no meta-gradient is built)."""
        return task_metric(self.query_outputs(episode, steps), episode.query_y, self.task)


class JointEmbeddingLearner(Learner):
    """A learner that scores an episode from one forward pass over support and query together.

    Subclasses implement :meth:`episode_logits`; with the library's BatchNorm, support and
    query then share one set of batch statistics, in training and evaluation alike.
    """

    def episode_logits(self, episode: Episode) -> torch.Tensor:
        """Query logits ``[N*Q, N]`` of an episode, support and query embedded in one forward."""
        raise NotImplementedError

    def episode_loss(self, episode: Episode) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.episode_logits(episode)
        loss = task_loss(logits, episode.query_y, self.task)
        return loss, {"loss": float(loss.detach()), "accuracy": task_metric(logits, episode.query_y, self.task)}

    @torch.no_grad()
    def query_outputs(self, episode: Episode, steps: int | None = None) -> torch.Tensor:
        return self.episode_logits(episode)


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
