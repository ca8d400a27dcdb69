"""The fine-tune baseline (transfer learning): pretrain a classifier, then fit a new head per task.

Pretraining is ordinary supervised classification over all training classes with a
linear head over ``num_train_classes``. It runs through the common training loop:
:meth:`FineTune.training_tasks` turns the training episodes into
:class:`~fewshot.tasks.pretrain.PretrainBatches`, a task source whose item ``i`` is a labelled minibatch of
the training split dressed as an episode (the examples and their *global* class ids as
the support set, an empty query set), and :meth:`FineTune.episode_loss` is the
cross-entropy of the pretraining head on it, so ``meta_backward`` and the optimizer
step of the trainer are plain supervised SGD. (Outside the trainer,
:meth:`FineTune.pretrain_loss` takes ``x, y_global`` directly.)

At test time :meth:`FineTune.predict` fits a new zero-initialised linear head on the
support embeddings (and, optionally, a copy of the encoder's last block) with
``head_steps`` full-batch Adam steps, the pretrained encoder frozen. Validation and
evaluation use the common evaluator on ordinary episodes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from fewshot.learners.base import Learner, embedding_width, task_metric
from fewshot.learners.gradient import check_inner_loop
from fewshot.registry import BuildContext, register_learner
from fewshot.tasks.episode import Episode


class FineTuneSupport(NamedTuple):
    """A support set ``x [S, ...]``, ``y [S]`` and the head's Adam steps (``None``: ``head_steps``)."""

    x: torch.Tensor
    y: torch.Tensor
    steps: int | None


class FittedHead(NamedTuple):
    """The per-task predictor: ``weight [N, D]``, ``bias [N]`` and the fine-tuned last block (or None)."""

    weight: torch.Tensor
    bias: torch.Tensor
    block: nn.Module | None


def _pool(h: torch.Tensor) -> torch.Tensor:
    """Spatial mean of feature maps ``[B, C, H, W] -> [B, C]`` (Conv-4's ``embed``); vectors pass through."""
    return h.mean(dim=(2, 3)) if h.dim() == 4 else h


class FineTune(Learner):
    """Pretrained encoder + a new linear head fitted on each support set.

    Args:
        encoder: ``[B, ...] -> [B, D]``, an embedding network (Conv-4 without ``out_features``).
        num_train_classes: the classes of the pretraining head.
        head_steps: Adam steps of :meth:`adapt` (``adapt(steps=)`` and the evaluator's
            ``inner_steps`` override it).
        head_lr: their learning rate.
        finetune_last_block: also fine-tune a copy of the encoder's last block; needs an
            encoder with a ``features`` ``nn.Sequential`` of blocks whose embedding is their
            spatial mean and no ``head`` (:class:`~fewshot.nets.Conv4` with ``out_features=None``).
        feature_dim: ``D`` when the encoder has no ``embedding_dim``.
        batch_size: the pretraining minibatch size (:meth:`training_tasks`).

    BatchNorm (per-batch statistics): the frozen part embeds support and query in one
    forward pass in :meth:`predict` (as :class:`~fewshot.learners.protonet.ProtoNet`
    does); a fine-tuned last block normalises the support set while fitting and the
    query set when predicting.
    """

    def __init__(self, encoder: nn.Module, num_train_classes: int, head_steps: int = 100, head_lr: float = 0.01,
                 finetune_last_block: bool = False, *, feature_dim: int | None = None, batch_size: int = 64,
                 batchnorm: str = "batch"):
        super().__init__(batchnorm=batchnorm)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.batch_size = batch_size
        if not isinstance(num_train_classes, int) or num_train_classes < 2:
            raise ValueError(f"num_train_classes must be an integer >= 2, got {num_train_classes!r}")
        if not isinstance(head_steps, int) or head_steps < 0:
            raise ValueError(f"head_steps must be an integer >= 0, got {head_steps!r}")
        if not head_lr > 0:
            raise ValueError(f"head_lr must be > 0, got {head_lr}")
        if finetune_last_block and not (isinstance(getattr(encoder, "features", None), nn.Sequential)
                                        and len(encoder.features) >= 2 and getattr(encoder, "head", None) is None):
            raise ValueError("finetune_last_block=True needs an encoder with a 'features' nn.Sequential of at "
                             "least two blocks and no 'head' (e.g. Conv4(out_features=None))")
        self.encoder, self.num_train_classes = encoder, num_train_classes
        self.head_steps, self.head_lr, self.finetune_last_block = head_steps, head_lr, finetune_last_block
        self.feature_dim = embedding_width(encoder, feature_dim)
        self.head = nn.Linear(self.feature_dim, num_train_classes)

    # -- pretraining -----------------------------------------------------------------------
    def pretrain_loss(self, x: torch.Tensor, y_global: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy of the pretraining head on ``x [B, ...]`` with class ids ``y_global [B]``
        in ``0..num_train_classes-1``, and ``{"loss", "accuracy"}``."""
        if y_global.numel() and not 0 <= int(y_global.min()) <= int(y_global.max()) < self.num_train_classes:
            raise ValueError(f"pretraining labels must lie in 0..{self.num_train_classes - 1} (num_train_classes), "
                             f"got {int(y_global.min())}..{int(y_global.max())}")
        logits = self.head(self.encoder(x))
        loss = F.cross_entropy(logits, y_global)
        return loss, {"loss": float(loss.detach()), "accuracy": task_metric(logits, y_global, self.task)}

    def episode_loss(self, episode: Episode) -> tuple[torch.Tensor, dict[str, float]]:
        """The pretraining loss of a :class:`PretrainBatches` item (support set: examples and global class
        ids; query set: empty). An ordinary N-way episode is refused: its labels are not class ids."""
        if episode.query_x.shape[0]:
            raise ValueError("FineTune trains on supervised minibatches with global class ids, not on N-way "
                             "episodes: fit() draws its training batches through FineTune.training_tasks")
        return self.pretrain_loss(episode.support_x, episode.support_y)

    # -- the protocol ----------------------------------------------------------------------
    def training_tasks(self, tasks):
        """Supervised minibatches of ``batch_size`` over all the training classes of ``tasks``
        (``tasks.pretrain_batches``), the source's seed kept."""
        if not hasattr(tasks, "pretrain_batches"):
            raise ValueError(f"FineTune pretrains on the labelled examples behind the training episodes; "
                             f"{type(tasks).__name__} has no pretrain_batches(batch_size): use ClassificationTasks")
        if tasks.pretrain_classes != self.num_train_classes:
            raise ValueError(f"the training tasks have {tasks.pretrain_classes} classes but FineTune's pretraining "
                             f"head has num_train_classes={self.num_train_classes}; pass {tasks.pretrain_classes}")
        return tasks.pretrain_batches(self.batch_size)

    def _frozen(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen part's output, detached: the embedding ``[B, D]``, or the input of the last block."""
        with torch.no_grad():
            return self.encoder.features[:-1](x) if self.finetune_last_block else self.encoder(x)

    def _fit(self, h: torch.Tensor, y: torch.Tensor, steps: int | None) -> FittedHead:
        """Fit a zero-initialised head (and a copy of the last block) on frozen support features ``h``."""
        steps = self.head_steps if steps is None else steps
        with torch.enable_grad():
            weight = torch.zeros(int(y.max()) + 1, self.feature_dim, dtype=h.dtype, device=h.device,
                                 requires_grad=True)
            bias = torch.zeros(weight.shape[0], dtype=h.dtype, device=h.device, requires_grad=True)
            block = copy.deepcopy(self.encoder.features[-1]).requires_grad_(True) if self.finetune_last_block else None
            fitted = FittedHead(weight, bias, block)
            params = [weight, bias, *(block.parameters() if block is not None else ())]
            optimizer = torch.optim.Adam(params, lr=self.head_lr)
            for _ in range(steps):
                optimizer.zero_grad()
                F.cross_entropy(self._logits(fitted, h), y).backward()
                optimizer.step()
        return FittedHead(weight.detach(), bias.detach(), block)

    @staticmethod
    def _logits(fitted: FittedHead, h: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, N]`` of frozen features ``h``."""
        z = _pool(fitted.block(h)) if fitted.block is not None else h
        return F.linear(z, fitted.weight, fitted.bias)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> FineTuneSupport:
        """The support set and the head's steps; the head is fitted in :meth:`predict`, where the frozen part
        embeds support and query in one forward (one set of batch statistics)."""
        return FineTuneSupport(support_x, support_y, steps)

    def predict(self, adapted: FineTuneSupport, query_x: torch.Tensor) -> torch.Tensor:
        """Logits ``[Q, N]`` of a new head fitted on the support set (gradients enabled even under
        ``torch.no_grad()``); the encoder's own parameters are not changed."""
        n = adapted.x.shape[0]
        h = self._frozen(torch.cat([adapted.x, query_x]))
        return self._logits(self._fit(h[:n], adapted.y, adapted.steps), h[n:])


@dataclass
class FineTuneOptions:
    """The ``learner`` section of fine-tune runs: the head's Adam steps and rate, the pretraining batch size, and
    the pretraining head's classes (filled in from the training data when a run starts)."""

    inner_lr: float = 0.01
    inner_steps: int = 100
    eval_inner_steps: int | None = None
    batch_size: int = 64
    pretrain_classes: int | None = None

    def validate(self) -> None:
        check_inner_loop(self.inner_lr, self.inner_steps, self.eval_inner_steps)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@register_learner("finetune", options=FineTuneOptions)
def _build(options: FineTuneOptions, context: BuildContext) -> FineTune:
    if options.pretrain_classes is None:
        raise ValueError("finetune needs pretrain_classes (the number of training classes), set when a run starts")
    return FineTune(context.net(), options.pretrain_classes, head_steps=options.inner_steps, head_lr=options.inner_lr,
                    batch_size=options.batch_size)
