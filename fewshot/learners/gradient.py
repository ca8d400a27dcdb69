"""Gradient-based meta-learners: MAML, first-order MAML, ANIL, Meta-SGD and Reptile.

All five share one functional inner loop: the model's parameters are a dict, the model runs
through ``torch.func.functional_call``, the support loss is differentiated with
``torch.autograd.grad`` (``torch.func.grad`` inside ``vmap``), and the fast weights are
``theta - alpha * grad``. Any unmodified ``nn.Module`` works. ``torch.autograd.grad`` in the
task loop, because ``torch.func.grad`` records a second-order support step at two autograd
levels and so held about twice the memory of a plain loop (135 vs 60 MB for the strided
Conv-4, 5-way 1-shot, meta-batch 32; ``fewshot bench speed``). Second order (MAML, Meta-SGD) keeps the inner gradient in the
graph, so the outer loss is differentiated through the inner steps:
``sum_i L_i(theta - alpha * grad L_i(theta))``. First order (FOMAML, Reptile) detaches it.

BatchNorm: with the library's nets (``track_running_stats=False``) every forward pass
uses the statistics of the batch it is given, i.e. of one task's support set while
adapting and of its query set when predicting (the MAML paper's transductive setting).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.checkpoint import checkpoint

from fewshot.learners.base import Learner, Task, mean_metrics, metric_name, task_loss, task_metric
from fewshot.tasks.episode import Episode, RaggedTaskBatch, TaskBatch

Params = dict[str, torch.Tensor]


class GradientLearner(Learner):
    """The MAML family behind one inner loop.

    Args:
        model: any ``nn.Module`` mapping inputs to logits or values.
        inner_lr: the inner step size alpha (the initial value when ``learn_inner_lr``).
        inner_steps: inner gradient steps during meta-training (``adapt(steps=)`` overrides).
        first_order: drop the second-order terms (FOMAML).
        head_only: adapt only the parameters of the submodule named ``head`` (ANIL).
        learn_inner_lr: a learned step size per parameter entry (Meta-SGD).
        task: ``"classification"`` (cross-entropy, accuracy) or ``"regression"`` (MSE).
        multi_step_loss: meta-train on the mean of the query losses after each of the
            ``inner_steps`` steps instead of the last one only (MAML++'s multi-step loss,
            Antoniou et al. 2019): the initialisation is then good after one step and
            stays stable over many, where a one-step objective can make it sharp.
        vectorize: run the tasks of a meta-batch through ``torch.func.vmap`` in one call
            instead of a loop with a backward per task. Exact for networks without
            ``nn.BatchNorm``; refused with BatchNorm and second order, where vmap's
            batching rule gives wrong meta-gradients (torch 2.13).
        checkpoint_inner: recompute each inner step's support forward and backward during the
            meta-backward instead of storing them (``torch.utils.checkpoint``): less memory
            for many inner steps or large support sets, for about one more support pass per step.
    """

    def __init__(self, model: nn.Module, inner_lr: float, inner_steps: int, first_order: bool = False,
                 head_only: bool = False, learn_inner_lr: bool = False, task: Task = "classification",
                 multi_step_loss: bool = False, vectorize: bool = False, checkpoint_inner: bool = False):
        super().__init__()
        if not inner_lr > 0:
            raise ValueError(f"inner_lr must be > 0, got {inner_lr}")
        if not isinstance(inner_steps, int) or inner_steps < 0:
            raise ValueError(f"inner_steps must be an integer >= 0, got {inner_steps!r}")
        self.model, self.inner_lr, self.inner_steps = model, inner_lr, inner_steps
        self.first_order, self.task, self.vectorize = first_order, task, vectorize
        self.multi_step_loss = multi_step_loss
        if checkpoint_inner and vectorize:
            raise ValueError("checkpoint_inner=True works with the task loop only; drop vectorize=True")
        self.checkpoint_inner = checkpoint_inner
        names = [n for n, _ in model.named_parameters()]
        self.adapt_names = [n for n in names if n.startswith("head.")] if head_only else names
        if not self.adapt_names:
            raise ValueError("head-only adaptation (ANIL) needs a submodule named 'head' in the model")
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if vectorize and has_bn and not first_order:
            raise ValueError("vectorize=True with nn.BatchNorm and second order gives wrong meta-gradients "
                             "(torch.func.vmap); use the task loop (vectorize=False) or first_order=True")
        params = dict(model.named_parameters())
        self.inner_lrs = nn.ParameterList(
            [nn.Parameter(torch.full_like(params[n].detach(), inner_lr)) for n in self.adapt_names]
        ) if learn_inner_lr else None

    # -- the inner loop --------------------------------------------------------------------
    def _forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, {**params, **dict(self.model.named_buffers())}, (x,))

    def _support_loss(self, fast: Params, fixed: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return task_loss(self._forward({**fixed, **fast}, x), y, self.task)

    def _support_grads(self, fast: Params, fixed: Params, x: torch.Tensor, y: torch.Tensor,
                       second_order: bool) -> Params:
        """Gradient of the support loss w.r.t. ``fast``, kept in the graph when ``second_order``."""
        if self.vectorize:   # inside vmap, where torch.autograd.grad cannot run
            if second_order:
                return grad(self._support_loss)(fast, fixed, x, y)
            return _detached(grad(self._support_loss)(_detached(fast), _detached(fixed), x, y))
        with torch.enable_grad():
            if not second_order:
                fast = {n: p.detach().requires_grad_() for n, p in fast.items()}
                fixed = _detached(fixed)
            loss = self._support_loss(fast, fixed, x, y)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=second_order,
                                        allow_unused=True, materialize_grads=True)
        return dict(zip(fast, grads))

    def _inner_step(self, fast: Params, fixed: Params, x: torch.Tensor, y: torch.Tensor,
                    second_order: bool) -> Params:
        """One SGD step of the fast weights on the support set."""
        grads = self._support_grads(fast, fixed, x, y, second_order)
        lrs = (list(self.inner_lrs) if self.inner_lrs is not None
               else [self.inner_lr] * len(self.adapt_names))
        return {n: fast[n] - lr * grads[n] for n, lr in zip(self.adapt_names, lrs)}

    def _inner_loop(self, params: Params, x: torch.Tensor, y: torch.Tensor, steps: int) -> Params:
        """Fast weights after ``steps`` gradient steps on the support set ``x, y``."""
        return self._trajectory(params, x, y, steps)[-1]

    def _trajectory(self, params: Params, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[Params]:
        """The full parameter dicts before and after each of ``steps`` gradient steps on the
        support set ``x, y`` (``steps + 1`` of them)."""
        second_order = torch.is_grad_enabled() and not self.first_order
        fast = {n: params[n] for n in self.adapt_names}
        fixed = {n: p for n, p in params.items() if n not in fast}
        trajectory = [{**fixed, **fast}]
        for _ in range(steps):
            if self.checkpoint_inner and second_order:
                fast = self._checkpointed_step(fast, fixed, x, y)
            else:
                fast = self._inner_step(fast, fixed, x, y, second_order)
            trajectory.append({**fixed, **fast})
        return trajectory

    def _query_outputs(self, params: Params, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> torch.Tensor:
        """Query outputs after each inner step, ``[steps, N*Q, d]`` with the multi-step loss,
        else after the last step only, ``[1, N*Q, d]``."""
        trajectory = self._trajectory(params, sx, sy, self.inner_steps)
        kept = trajectory[1:] if self.multi_step_loss and self.inner_steps > 0 else trajectory[-1:]
        return torch.stack([self._forward(p, qx) for p in kept])

    def _loss_and_metrics(self, outputs: torch.Tensor, qy: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean query loss over the kept steps of ``outputs [steps, N*Q, d]``; metrics of the last."""
        loss = torch.stack([task_loss(o, qy, self.task) for o in outputs]).mean()
        return loss, {"loss": float(loss.detach()), metric_name(self.task): task_metric(outputs[-1], qy, self.task)}

    def _checkpointed_step(self, fast: Params, fixed: Params, x: torch.Tensor, y: torch.Tensor) -> Params:
        """:meth:`_inner_step` (second order) under ``torch.utils.checkpoint``: its support graph is
        freed after the step and recomputed in the meta-backward."""
        names, fixed_names = list(fast), list(fixed)

        def step(*tensors):
            f = dict(zip(names, tensors[:len(names)]))
            new = self._inner_step(f, dict(zip(fixed_names, tensors[len(names):])), x, y, True)
            return tuple(new[n] for n in names)

        out = checkpoint(step, *fast.values(), *fixed.values(), use_reentrant=False)
        return dict(zip(names, out))

    # -- the protocol ----------------------------------------------------------------------
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Params:
        """Fast weights (a full parameter dict) adapted to the support set."""
        steps = self.inner_steps if steps is None else steps
        return self._inner_loop(dict(self.model.named_parameters()), support_x, support_y, steps)

    def predict(self, adapted: Params, query_x: torch.Tensor) -> torch.Tensor:
        return self._forward(adapted, query_x)

    def episode_loss(self, episode: Episode) -> tuple[torch.Tensor, dict[str, float]]:
        outputs = self._query_outputs(dict(self.model.named_parameters()), episode.support_x, episode.support_y,
                                      episode.query_x)
        return self._loss_and_metrics(outputs, episode.query_y)

    def meta_loss(self, batch: TaskBatch | RaggedTaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        if not self.vectorize:
            return super().meta_loss(batch)
        if isinstance(batch, RaggedTaskBatch):
            raise ValueError("vectorize (vmap over tasks) needs episodes of equal sizes; this meta-batch's sizes differ "
                             "(ragged_queries): set vectorize: false")
        params = dict(self.model.named_parameters())
        outputs = vmap(lambda sx, sy, qx: self._query_outputs(params, sx, sy, qx), randomness="error")(
            batch.support_x, batch.support_y, batch.query_x)                      # [T, steps, N*Q, d]
        losses, metrics = zip(*(self._loss_and_metrics(o, y) for o, y in zip(outputs, batch.query_y)))
        return torch.stack(losses).mean(), mean_metrics(list(metrics))

    def meta_backward(self, batch: TaskBatch | RaggedTaskBatch, total_tasks: int | None = None) -> dict[str, float]:
        if not self.vectorize:
            return super().meta_backward(batch, total_tasks)
        loss, metrics = self.meta_loss(batch)
        (loss * (batch.num_tasks / (total_tasks or batch.num_tasks))).backward()
        return metrics


class Reptile(GradientLearner):
    """Reptile (Nichol et al. 2018): a first-order inner loop; the meta-gradient of a task
    batch is ``theta - mean_i theta'_i``, so an SGD outer step of size epsilon is
    ``theta <- theta + epsilon * (mean_i theta'_i - theta)`` (Adam uses it as its gradient).
    The inner loop adapts on the support set; the query set is only scored."""

    def __init__(self, model: nn.Module, inner_lr: float, inner_steps: int, task: Task = "classification"):
        super().__init__(model, inner_lr, inner_steps, first_order=True, task=task)

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
