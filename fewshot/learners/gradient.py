"""Gradient-based meta-learners: MAML, first-order MAML, ANIL, Meta-SGD and Reptile.

All five share one functional inner loop (:func:`sgd_inner_loop`, a plain function): the model's parameters are
a dict, the model runs through ``torch.func.functional_call`` (:func:`functional_forward`), the support
loss is differentiated, and the fast weights are ``theta - alpha * grad``. Any unmodified ``nn.Module``
works, including one that registers a submodule under two names or ties parameters. Second order (MAML,
ANIL, Meta-SGD) keeps the inner gradient in the graph, so the outer loss is differentiated through the
inner steps: ``sum_i L_i(theta - alpha * grad L_i(theta))``. First order (FOMAML, Reptile) detaches it.

Frozen parameters (``requires_grad=False``) are never adapted and never moved.

Execution options (:meth:`GradientLearner.set_execution`) change how, not what, is computed:
``vectorize`` runs the tasks of a meta-batch through ``torch.func.vmap`` in one call (the inner gradient
then comes from ``torch.func.grad``); ``checkpoint_inner`` recomputes each inner step in the meta-backward
instead of storing it. The default is a loop over tasks with a backward per task and the inner gradient
from ``torch.autograd.grad``: ``torch.func.grad`` records a second-order support step at two autograd
levels and held about twice the memory (135 vs 60 MB for the strided Conv-4, 5-way 1-shot, meta-batch 32;
``fewshot bench speed``).

BatchNorm: with the library's nets (``track_running_stats=False``), and for any module under the default
``batchnorm="batch"``, every forward pass uses the statistics of the batch it is given, i.e. of one task's
support set while adapting and of its query set when predicting (the MAML paper's transductive setting).
Vectorised, the library's :class:`~fewshot.nets.norm.BatchNorm2d` computes from primitives, which ``vmap``
batches exactly; ``nn.BatchNorm`` layers are refused there at second order (:mod:`fewshot.nets.norm`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.checkpoint import checkpoint

from fewshot.learners.base import Learner, Task, mean_metrics, metric_name, task_loss, task_metric
from fewshot.nets.norm import exact_under_vmap, native_batchnorm
from fewshot.registry import BuildContext, register_learner
from fewshot.tasks.episode import Episode, RaggedTaskBatch, TaskBatch

Params = dict[str, torch.Tensor]


def parameter_slots(model: nn.Module) -> list[tuple[str, str]]:
    """``(name, canonical name)`` for every place a parameter sits in ``model``, each place once.

    A submodule registered under two names (``self.net = nn.Sequential(self.seq, self.head)``) is one place
    reached by two names: it is listed once, so that replacing its weights swaps them once (``functional_call``
    with weight tying swaps such a place twice and leaves the module holding the fast weights). Tied
    parameters in two modules are two places with one canonical name (the one ``named_parameters()`` gives).
    """
    canonical = {id(p): name for name, p in model.named_parameters()}
    slots, seen = [], set()
    for name, p in model.named_parameters(remove_duplicate=False):
        owner, _, attr = name.rpartition(".")
        place = (id(model.get_submodule(owner)), attr)
        if place not in seen:
            seen.add(place)
            slots.append((name, canonical[id(p)]))
    return slots


def functional_forward(model: nn.Module, slots: list[tuple[str, str]], params: Params, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` with its parameters replaced by ``params`` (keyed by canonical names, see
    :func:`parameter_slots`); buffers are the module's own."""
    return functional_call(model, {name: params[canon] for name, canon in slots}, (x,), tie_weights=False,
                           strict=False)


def sgd_inner_loop(loss: Callable[[Params], torch.Tensor], params: Params, adapt: Sequence[str],
                   lrs: Sequence[float | torch.Tensor], steps: int, *, second_order: bool, functional: bool = False,
                   checkpointed: bool = False) -> list[Params]:
    """``steps`` SGD steps ``theta_a <- theta_a - lr_a * dL/dtheta_a`` of the parameters named in ``adapt``:
    the parameter dicts before and after each step (``steps + 1`` of them; the others are carried along).

    Args:
        loss: the support loss of a full parameter dict.
        second_order: keep each step's gradient in the graph (MAML), else treat it as a constant (FOMAML).
        functional: take gradients with ``torch.func.grad`` (inside ``vmap``), else ``torch.autograd.grad``.
        checkpointed: recompute each second-order step in the meta-backward instead of storing it.
    """
    def step(params: Params) -> Params:
        fast = {n: params[n] for n in adapt}
        fixed = {n: p for n, p in params.items() if n not in fast}
        if not second_order:
            fast, fixed = _detached(fast), _detached(fixed)
        if functional:
            grads = grad(lambda f: loss({**fixed, **f}))(fast)
            grads = grads if second_order else _detached(grads)
        else:
            with torch.enable_grad():
                if not second_order:
                    fast = {n: p.requires_grad_() for n, p in fast.items()}
                grads = dict(zip(fast, torch.autograd.grad(loss({**fixed, **fast}), list(fast.values()),
                                                           create_graph=second_order, allow_unused=True,
                                                           materialize_grads=True)))
        return {**params, **{n: params[n] - lr * grads[n] for n, lr in zip(adapt, lrs)}}

    trajectory = [params]
    for _ in range(steps):
        params = _checkpointed(step, params, adapt) if checkpointed and second_order else step(params)
        trajectory.append(params)
    return trajectory


def _checkpointed(step: Callable[[Params], Params], params: Params, adapt: Sequence[str]) -> Params:
    """``step(params)`` under ``torch.utils.checkpoint``: its graph is freed and recomputed in the backward."""
    names = list(params)

    def run(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        new = step(dict(zip(names, tensors)))
        return tuple(new[n] for n in adapt)

    return {**params, **dict(zip(adapt, checkpoint(run, *params.values(), use_reentrant=False)))}


@dataclass
class Execution:
    """How a gradient learner runs a meta-batch (not what it computes)."""

    vectorize: bool = False          # all tasks of a meta-batch in one torch.func.vmap call
    checkpoint_inner: bool = False   # recompute each second-order inner step in the meta-backward


class GradientLearner(Learner):
    """The MAML family behind one inner loop; subclasses choose what is adapted and how.

    Args:
        model: any ``nn.Module`` mapping inputs to logits ``[B, N]`` (or values ``[B, d]``).
        inner_lr: the inner step size alpha (the initial value of Meta-SGD's learned step sizes).
        inner_steps: inner gradient steps during meta-training (``adapt(steps=)`` overrides).
        task: ``"classification"`` (cross-entropy, accuracy) or ``"regression"`` (MSE).
        multi_step_loss: meta-train on the mean of the query losses after each of the
            ``inner_steps`` steps instead of the last one only (MAML++'s multi-step loss,
            Antoniou et al. 2019): the initialisation is then good after one step and
            stays stable over many, where a one-step objective can make it sharp.
        batchnorm: ``"batch"`` or ``"running"`` (:mod:`fewshot.learners.base`).
    """

    first_order = False       # drop the second-order terms of the meta-gradient
    head_only = False         # adapt only the parameters of the submodule named ``head``
    learn_inner_lr = False    # a learned step size per adapted parameter entry

    def __init__(self, model: nn.Module, inner_lr: float = 0.4, inner_steps: int = 1, *,
                 task: Task = "classification", multi_step_loss: bool = False, batchnorm: str = "batch"):
        super().__init__(batchnorm=batchnorm)
        if not inner_lr > 0:
            raise ValueError(f"inner_lr must be > 0, got {inner_lr}")
        if not isinstance(inner_steps, int) or inner_steps < 0:
            raise ValueError(f"inner_steps must be an integer >= 0, got {inner_steps!r}")
        if task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
        if inner_steps == 0:
            warnings.warn(f"{type(self).__name__} with inner_steps=0 does not adapt to a task: it meta-trains one "
                          "classifier for every task's labels (set inner_steps >= 1 to learn to adapt)", stacklevel=2)
        self.model, self.inner_lr, self.inner_steps, self.task = model, inner_lr, inner_steps, task
        self.multi_step_loss = multi_step_loss
        self.execution = Execution()
        self._slots = parameter_slots(model)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        self.adapt_names = [n for n in trainable if n.startswith("head.")] if self.head_only else trainable
        if not self.adapt_names:
            raise ValueError("head-only adaptation (ANIL) needs a trainable submodule named 'head' in the model"
                             if self.head_only else "the model has no trainable parameters to adapt")
        params = dict(model.named_parameters())
        self.inner_lrs = nn.ParameterList(
            [nn.Parameter(torch.full_like(params[n].detach(), inner_lr)) for n in self.adapt_names]
        ) if self.learn_inner_lr else None

    def set_execution(self, vectorize: bool = False, checkpoint_inner: bool = False) -> "GradientLearner":
        """Choose how meta-batches run (:class:`Execution`); returns the learner."""
        if checkpoint_inner and vectorize:
            raise ValueError("checkpoint_inner=True works with the task loop only; drop vectorize=True")
        native = native_batchnorm(self.model)
        if vectorize and native and not self.first_order:
            raise ValueError(f"vectorize=True with nn.BatchNorm ({native[0]}) and second order gives wrong "
                             "meta-gradients (torch.func.vmap's batching rule for the native kernel); use "
                             "fewshot.nets.norm.BatchNorm2d (exact under vmap), the task loop (vectorize=False) or "
                             "first order")
        self.execution = Execution(vectorize, checkpoint_inner)
        return self

    # -- the inner loop --------------------------------------------------------------------
    def forward_with(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """The model's outputs on ``x`` with parameters ``params`` (a full dict of canonical names)."""
        return functional_forward(self.model, self._slots, params, x)

    def inner_loop(self, params: Params, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[Params]:
        """The parameter dicts before and after each of ``steps`` gradient steps on the support set ``x, y``
        (``steps + 1`` of them); second order when gradients are enabled and the learner is not first-order."""
        lrs = list(self.inner_lrs) if self.inner_lrs is not None else [self.inner_lr] * len(self.adapt_names)
        return sgd_inner_loop(lambda p: task_loss(self.forward_with(p, x), y, self.task), params, self.adapt_names,
                              lrs, steps, second_order=torch.is_grad_enabled() and not self.first_order,
                              functional=self.execution.vectorize, checkpointed=self.execution.checkpoint_inner)

    def _query_outputs(self, params: Params, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> torch.Tensor:
        """Query outputs after each inner step, ``[steps, N*Q, d]`` with the multi-step loss,
        else after the last step only, ``[1, N*Q, d]``."""
        trajectory = self.inner_loop(params, sx, sy, self.inner_steps)
        kept = trajectory[1:] if self.multi_step_loss and self.inner_steps > 0 else trajectory[-1:]
        return torch.stack([self.forward_with(p, qx) for p in kept])

    def _loss_and_metrics(self, outputs: torch.Tensor, qy: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean query loss over the kept steps of ``outputs [steps, N*Q, d]``; metrics of the last."""
        loss = torch.stack([task_loss(o, qy, self.task) for o in outputs]).mean()
        return loss, {"loss": float(loss.detach()), metric_name(self.task): task_metric(outputs[-1], qy, self.task)}

    # -- the protocol ----------------------------------------------------------------------
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Params:
        """Fast weights (a full parameter dict) adapted to the support set."""
        steps = self.inner_steps if steps is None else steps
        return self.inner_loop(dict(self.model.named_parameters()), support_x, support_y, steps)[-1]

    def predict(self, adapted: Params, query_x: torch.Tensor) -> torch.Tensor:
        return self.forward_with(adapted, query_x)

    def episode_loss(self, episode: Episode) -> tuple[torch.Tensor, dict[str, float]]:
        outputs = self._query_outputs(dict(self.model.named_parameters()), episode.support_x, episode.support_y,
                                      episode.query_x)
        return self._loss_and_metrics(outputs, episode.query_y)

    def meta_loss(self, batch: TaskBatch | RaggedTaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        if not self.execution.vectorize:
            return super().meta_loss(batch)
        if isinstance(batch, RaggedTaskBatch):
            raise ValueError("vectorize (vmap over tasks) needs episodes of equal sizes; this meta-batch's sizes differ "
                             "(ragged_queries): set vectorize: false")
        params = dict(self.model.named_parameters())
        with exact_under_vmap(self.model):
            outputs = vmap(lambda sx, sy, qx: self._query_outputs(params, sx, sy, qx), randomness="error")(
                batch.support_x, batch.support_y, batch.query_x)                  # [T, steps, N*Q, d]
        losses, metrics = zip(*(self._loss_and_metrics(o, y) for o, y in zip(outputs, batch.query_y)))
        return torch.stack(losses).mean(), mean_metrics(list(metrics))

    def meta_backward(self, batch: TaskBatch | RaggedTaskBatch, total_tasks: int | None = None) -> dict[str, float]:
        if not self.execution.vectorize:
            return super().meta_backward(batch, total_tasks)
        loss, metrics = self.meta_loss(batch)
        (loss * (batch.num_tasks / (total_tasks or batch.num_tasks))).backward()
        return metrics


class MAML(GradientLearner):
    """MAML (Finn et al. 2017): meta-learn an initialisation from which ``inner_steps`` SGD steps of size
    ``inner_lr`` on a task's support set fit it; the meta-gradient is taken through the inner steps."""


class FOMAML(MAML):
    """First-order MAML (Finn et al. 2017): the inner gradient is treated as a constant."""

    first_order = True


class ANIL(MAML):
    """ANIL (Raghu et al. 2020): MAML whose inner loop adapts only the submodule named ``head``."""

    head_only = True


class MetaSGD(MAML):
    """Meta-SGD (Li et al. 2017): MAML with a learned step size per adapted parameter entry, starting at
    ``inner_lr``."""

    learn_inner_lr = True


class Reptile(GradientLearner):
    """Reptile (Nichol et al. 2018): a first-order inner loop; the meta-gradient of a task
    batch is ``theta - mean_i theta'_i``, so an SGD outer step of size epsilon is
    ``theta <- theta + epsilon * (mean_i theta'_i - theta)`` (Adam uses it as its gradient).
    The inner loop adapts on the support set; the query set is only scored."""

    first_order = True

    def meta_loss(self, batch: TaskBatch | RaggedTaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError("Reptile has no differentiable meta-loss; use meta_backward")

    def meta_backward(self, batch: TaskBatch | RaggedTaskBatch, total_tasks: int | None = None) -> dict[str, float]:
        total = total_tasks or batch.num_tasks
        params = dict(self.model.named_parameters())
        metrics = []
        for episode in batch:
            with torch.no_grad():
                fast = self.adapt(episode.support_x, episode.support_y)
                outputs = self.predict(fast, episode.query_x)
                metrics.append({"loss": float(task_loss(outputs, episode.query_y, self.task)),
                                metric_name(self.task): task_metric(outputs, episode.query_y, self.task)})
                for n in self.adapt_names:
                    step = (params[n] - fast[n]) / total
                    params[n].grad = step if params[n].grad is None else params[n].grad + step
        return mean_metrics(metrics)


def _detached(params: Params) -> Params:
    return {n: p.detach() for n, p in params.items()}


@dataclass
class GradientOptions:
    """The ``learner`` section of MAML, FOMAML, ANIL and Meta-SGD runs."""

    inner_lr: float = 0.4
    inner_steps: int = 1
    eval_inner_steps: int | None = None   # test-time inner steps (None: inner_steps)
    multi_step_loss: bool = False
    vectorize: bool = False               # execution: vmap over the tasks of a meta-batch

    def validate(self) -> None:
        check_inner_loop(self.inner_lr, self.inner_steps, self.eval_inner_steps)


@dataclass
class ReptileOptions:
    """The ``learner`` section of Reptile runs."""

    inner_lr: float = 0.05
    inner_steps: int = 5
    eval_inner_steps: int | None = None

    def validate(self) -> None:
        check_inner_loop(self.inner_lr, self.inner_steps, self.eval_inner_steps)


def check_inner_loop(inner_lr: float, inner_steps: int, eval_inner_steps: int | None) -> None:
    """Refuse an inner step size that is not a finite number > 0, or negative step counts."""
    if not math.isfinite(inner_lr):
        raise ValueError(f"inner_lr must be a finite number, got {inner_lr}")
    if not inner_lr > 0:
        raise ValueError(f"inner_lr must be > 0, got {inner_lr}; pass a positive learning rate")
    for name, value in (("inner_steps", inner_steps), ("eval_inner_steps", eval_inner_steps)):
        if value is not None and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def _register(name: str, cls: type[GradientLearner]) -> None:
    @register_learner(name, options=GradientOptions, tasks=("classification", "regression"), head=True)
    def build(options: GradientOptions, context: BuildContext) -> GradientLearner:
        learner = cls(context.net(out_features=context.ways), options.inner_lr, options.inner_steps,
                      task=context.task, multi_step_loss=options.multi_step_loss)
        return learner.set_execution(vectorize=options.vectorize)


for _name, _cls in (("maml", MAML), ("fomaml", FOMAML), ("anil", ANIL), ("metasgd", MetaSGD)):
    _register(_name, _cls)


@register_learner("reptile", options=ReptileOptions, tasks=("classification", "regression"), head=True)
def _build_reptile(options: ReptileOptions, context: BuildContext) -> Reptile:
    return Reptile(context.net(out_features=context.ways), options.inner_lr, options.inner_steps, task=context.task)
