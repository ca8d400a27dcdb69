"""Bayesian MAML (Yoon et al. 2018): an ensemble of ``M`` particles adapted by Stein variational gradient descent.

The meta-parameters are ``M`` particles ``Theta_0 = {theta_0^m}``, each a full copy of the model's trainable
parameters. Particle 0 is the module's own parameters; particles ``1..M-1`` are independent re-initialisations
of it (a deep copy of the module on which every submodule's ``reset_parameters()`` is called, under a torch RNG
seeded with ``(seed, m)`` and forked, so the global RNG is not consumed). Frozen parameters
(``requires_grad=False``) and buffers are the module's own, shared by all particles, never adapted or moved.

Inner loop: ``inner_steps`` SVGD steps (:func:`svgd_step`) on the support set, with
``log p(theta | support) = - mean cross-entropy of the support set`` (averaged, as in MAML, so one particle is
MAML; no prior term). The RBF kernel ``k(a, b) = exp(-||a - b||^2 / h)`` runs on each particle's adapted
parameters flattened into one vector, with the median heuristic ``h = median^2 / log M`` (the median of the
pairwise distances between particles, taken anew at every step and differentiated through like the rest).

Meta-objective: the paper's non-chaser baseline, not the chaser loss. The meta-loss of a task is the query NLL of
the posterior predictive, ``-log (1/M) sum_m softmax(f(x; theta_n^m))[y]``, differentiated through the SVGD
steps (second order: the support gradients are kept in the graph with ``create_graph=True``).

:meth:`BMAML.predict` returns the log of the particles' mean class probabilities, so the evaluator's softmax of
them is the posterior predictive, and the cross-entropy of them is the meta-loss above.

Execution (``vectorize``, how, not what, is computed): by default each particle runs through the model on its
own and the tasks of a meta-batch one after another, with a backward per task. With ``vectorize=True`` the
particles are stacked along a leading axis (``[M, ...]`` per parameter) and run through the model in one
``torch.func.vmap`` call, the inner gradient comes from ``torch.func.grad``, and the tasks of a meta-batch run
through a second ``vmap`` in one call, as the gradient learners' ``vectorize`` (:mod:`fewshot.learners.gradient`,
whose BatchNorm caveat holds here too: ``nn.BatchNorm`` layers are refused, the library's
:class:`~fewshot.nets.norm.BatchNorm2d` is exact).

Regression (``task="regression"``): ``log p(theta | support) = - mean squared error of the support set`` in the
inner loop (again one particle is MAML), and the posterior predictive of a target is the equal-weight mixture
``(1/M) sum_m N(f(x; theta_n^m), sigma^2)`` with a Gaussian observation noise ``sigma`` that is meta-learned
(one number, initialised at ``noise``, trained by the meta-loss; ``learn_noise=False`` keeps it fixed). The
meta-loss of a task is the query NLL of that mixture; :meth:`BMAML.predict` returns its mean (the particles'
mean prediction) ``[Q, d]``, and :meth:`BMAML.predict_interval` its central 95 % interval
(:func:`fewshot.uncertainty.mixture_interval`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from torch.func import grad, vmap

from fewshot.learners.base import Learner, Task, mean_metrics, metric_name, task_loss, task_metric
from fewshot.learners.ensemble import mean_log_probs
from fewshot.learners.gradient import Params, check_inner_loop, functional_forward, parameter_slots
from fewshot.nets.norm import exact_under_vmap, native_batchnorm
from fewshot.registry import BuildContext, register_learner
from fewshot.tasks.episode import Episode, RaggedTaskBatch, TaskBatch
from fewshot.uncertainty import PredictiveInterval, mixture_interval

Stacked = dict[str, torch.Tensor]   # adapted parameter name -> the M particles' values stacked, [M, ...]


def svgd_step(particles: torch.Tensor, grads_logp: torch.Tensor, step_size: float) -> torch.Tensor:
    """One SVGD step ``theta^m + step_size * phi(theta^m)`` of ``particles [M, P]`` given
    ``grads_logp [M, P]`` (the gradient of ``log p`` at each particle), where
    ``phi(theta^m) = (1/M) sum_j [k(theta^j, theta^m) grad log p(theta^j) + grad_{theta^j} k(theta^j, theta^m)]``,
    ``k(a, b) = exp(-||a - b||^2 / h)`` and ``h = median^2 / log M`` (``h = 1`` when ``M = 1`` or all particles
    coincide, where the kernel is 1 whatever ``h``)."""
    m = particles.shape[0]
    sq = (particles[:, None, :] - particles[None, :, :]).pow(2).sum(-1)          # [M, M] squared distances
    pairs = sq[torch.triu_indices(m, m, offset=1, device=sq.device).unbind()]    # each pair once
    h = pairs.median() / math.log(m) if m > 1 else sq.new_ones(())               # median^2 = median of squares
    h = torch.where(h > 0, h, torch.ones_like(h))
    k = torch.exp(-sq / h)                                                       # symmetric
    # grad_{theta^j} k(theta^j, theta^m) = (2 / h) (theta^m - theta^j) k_jm, summed over j:
    repulsion = (2 / h) * (k.sum(1, keepdim=True) * particles - k @ particles)
    return particles + step_size * (k @ grads_logp + repulsion) / m


class BMAML(Learner):
    """Bayesian MAML (Yoon et al. 2018) with SVGD inner loop and the posterior-predictive meta-loss (module docstring).

    Args:
        model: any ``nn.Module`` mapping inputs to logits ``[B, N]``.
        inner_lr: the SVGD step size alpha.
        inner_steps: SVGD steps during meta-training (``adapt(steps=)`` overrides).
        particles: the number of particles ``M`` (``M = 1`` is MAML).
        seed: seeds the re-initialisation of particles ``1..M-1``.
        task: ``"classification"`` (logits ``[B, N]``) or ``"regression"`` (values ``[B, d]``).
        noise: regression: the observation noise's standard deviation ``sigma`` (its initial value when learned).
        learn_noise: regression: meta-learn ``sigma`` (module docstring).
        vectorize: run the particles, and the tasks of a meta-batch, through ``torch.func.vmap`` (module
            docstring); the same values and gradients as the loop.
        batchnorm: ``"batch"`` or ``"running"`` (:mod:`fewshot.learners.base`).
    """

    def __init__(self, model: nn.Module, inner_lr: float = 0.4, inner_steps: int = 1, particles: int = 5, *,
                 seed: int = 0, task: Task = "classification", noise: float = 0.1, learn_noise: bool = True,
                 vectorize: bool = False, batchnorm: str = "batch"):
        super().__init__(batchnorm=batchnorm)
        check_inner_loop(inner_lr, inner_steps, None)
        if not isinstance(particles, int) or particles < 1:
            raise ValueError(f"particles must be an integer >= 1, got {particles!r}")
        self.model, self.inner_lr, self.inner_steps, self.num_particles = model, inner_lr, inner_steps, particles
        self.task = task
        if task == "regression":
            if not (noise > 0 and math.isfinite(noise)):
                raise ValueError(f"noise (the observation noise's standard deviation) must be > 0, got {noise}")
            log_noise = torch.tensor(math.log(noise))
            if learn_noise:
                self.log_noise = nn.Parameter(log_noise)
            else:
                self.register_buffer("log_noise", log_noise)
        self._slots = parameter_slots(model)
        self.adapt_names = [n for n, p in model.named_parameters() if p.requires_grad]
        if not self.adapt_names:
            raise ValueError("the model has no trainable parameters to adapt")
        self.extra_particles = nn.ModuleList([self._reinitialised(model, seed, m) for m in range(1, particles)])
        native = native_batchnorm(model)
        if vectorize and native:
            raise ValueError(f"vectorize=True with nn.BatchNorm ({native[0]}) gives wrong meta-gradients "
                             "(torch.func.vmap's batching rule for the native kernel); use "
                             "fewshot.nets.norm.BatchNorm2d (exact under vmap) or vectorize=False")
        self.vectorize = vectorize

    def _reinitialised(self, model: nn.Module, seed: int, m: int) -> nn.ParameterList:
        """The trainable parameters of a copy of ``model`` re-initialised under the RNG seeded with ``(seed, m)``."""
        twin = copy.deepcopy(model)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed * 1_000_003 + m)
            for module in twin.modules():
                if callable(getattr(module, "reset_parameters", None)):
                    module.reset_parameters()
        params = dict(twin.named_parameters())
        return nn.ParameterList([nn.Parameter(params[n].detach().clone()) for n in self.adapt_names])

    def initial_particles(self) -> list[Params]:
        """``Theta_0``: ``M`` full parameter dicts (canonical names), particle 0 the module's own."""
        own = dict(self.model.named_parameters())
        return [own] + [{**own, **dict(zip(self.adapt_names, extra))} for extra in self.extra_particles]

    def forward_with(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_forward(self.model, self._slots, params, x)

    def inner_loop(self, particles: list[Params], x: torch.Tensor, y: torch.Tensor, steps: int) -> list[Params]:
        """``steps`` SVGD steps of the particles on the support set; second order when gradients are enabled."""
        second_order = torch.is_grad_enabled()
        names = self.adapt_names
        for _ in range(steps):
            fast = [[p[n] if second_order else p[n].detach().requires_grad_() for n in names] for p in particles]
            with torch.enable_grad():
                loss = sum(task_loss(self.forward_with({**p, **dict(zip(names, f))}, x), y, self.task)
                           for p, f in zip(particles, fast))      # each term depends on its own particle only
                grads = torch.autograd.grad(loss, [t for f in fast for t in f], create_graph=second_order,
                                            allow_unused=True, materialize_grads=True)
            flat = torch.stack([torch.cat([t.reshape(-1) for t in f]) for f in fast])
            grads_logp = -torch.stack([torch.cat([g.reshape(-1) for g in grads[i * len(names):(i + 1) * len(names)]])
                                       for i in range(len(fast))])
            new = svgd_step(flat, grads_logp if second_order else grads_logp.detach(), self.inner_lr)
            if not second_order:
                new = new.detach()
            particles = [{**p, **self._unflatten(row, p)} for p, row in zip(particles, new)]
        return particles

    def _unflatten(self, vector: torch.Tensor, like: Params) -> Params:
        out, i = {}, 0
        for n in self.adapt_names:
            size = like[n].numel()
            out[n] = vector[i:i + size].view_as(like[n])
            i += size
        return out

    # -- the vectorised particles -------------------------------------------------------------
    def stacked(self, particles: list[Params]) -> Stacked:
        """The adapted parameters of ``particles`` stacked along a leading particle axis, ``[M, ...]`` each."""
        return {n: torch.stack([p[n] for p in particles]) for n in self.adapt_names}

    def stacked_outputs(self, stacked: Stacked, x: torch.Tensor) -> torch.Tensor:
        """Each particle's outputs on ``x [B, ...]`` in one vmapped call: ``[M, B, N]`` or ``[M, B, d]``."""
        shared = dict(self.model.named_parameters())
        with exact_under_vmap(self.model):
            return vmap(lambda p: self.forward_with({**shared, **p}, x), randomness="error")(stacked)

    def stacked_inner_loop(self, stacked: Stacked, x: torch.Tensor, y: torch.Tensor, steps: int) -> Stacked:
        """:meth:`inner_loop` on stacked particles: the support losses of all particles in one vmapped call, their
        gradients from ``torch.func.grad`` (so it also runs inside a ``vmap`` over tasks)."""
        second_order = torch.is_grad_enabled()
        names = self.adapt_names

        def support_loss(fast: Stacked) -> torch.Tensor:
            """The sum of the particles' support losses (means over the same number of points: ``M`` times the
            mean over all of them)."""
            outputs = self.stacked_outputs(fast, x)                                      # [M, B, ...]
            m = outputs.shape[0]
            return m * task_loss(outputs.flatten(0, 1), y.expand(m, *y.shape).flatten(0, 1), self.task)

        for _ in range(steps):
            fast = stacked if second_order else {n: t.detach() for n, t in stacked.items()}
            grads = grad(support_loss)(fast)
            flat = torch.cat([fast[n].flatten(1) for n in names], dim=1)                 # [M, P]
            grads_logp = -torch.cat([grads[n].flatten(1) for n in names], dim=1)
            new = svgd_step(flat, grads_logp, self.inner_lr)
            if not second_order:
                new = new.detach()
            rows = new.split([fast[n][0].numel() for n in names], dim=1)
            stacked = {n: row.view_as(fast[n]) for n, row in zip(names, rows)}
        return stacked

    def stacked_adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int) -> Stacked:
        """The stacked particles after ``steps`` SVGD steps on the support set (vectorised :meth:`adapt`)."""
        return self.stacked_inner_loop(self.stacked(self.initial_particles()), support_x, support_y, steps)

    def adapted_outputs(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor
                        ) -> torch.Tensor:
        """Each particle's query outputs ``[M, Q, ...]`` after ``inner_steps`` SVGD steps on the support set."""
        if not self.vectorize:
            return self.particle_outputs(self.adapt(support_x, support_y), query_x)
        return self.stacked_outputs(self.stacked_adapt(support_x, support_y, self.inner_steps), query_x)

    # -- the protocol ----------------------------------------------------------------------
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> list[Params]:
        """The ``M`` particles (full parameter dicts) after SVGD on the support set."""
        steps = self.inner_steps if steps is None else steps
        if not self.vectorize:
            return self.inner_loop(self.initial_particles(), support_x, support_y, steps)
        own = dict(self.model.named_parameters())
        adapted = self.stacked_adapt(support_x, support_y, steps)
        return [{**own, **{n: adapted[n][m] for n in self.adapt_names}} for m in range(self.num_particles)]

    def particle_outputs(self, adapted: list[Params], query_x: torch.Tensor) -> torch.Tensor:
        """Each particle's outputs ``[M, Q, N]`` (logits) or ``[M, Q, d]`` (values)."""
        if self.vectorize:
            return self.stacked_outputs(self.stacked(adapted), query_x)
        return torch.stack([self.forward_with(p, query_x) for p in adapted])

    def predict(self, adapted: list[Params], query_x: torch.Tensor) -> torch.Tensor:
        """Classification: ``log (1/M) sum_m softmax(logits_m)`` ``[Q, N]``, the log posterior predictive;
        regression: the particles' mean prediction ``[Q, d]``."""
        outputs = self.particle_outputs(adapted, query_x)
        return outputs.mean(0) if self.task == "regression" else mean_log_probs(outputs)

    @property
    def noise(self) -> torch.Tensor:
        """Regression: the observation noise's standard deviation ``sigma`` (a scalar tensor)."""
        return self.log_noise.exp()

    def predict_interval(self, adapted: list[Params], query_x: torch.Tensor, level: float = 0.95
                         ) -> PredictiveInterval:
        """Regression: the mean and central ``level`` interval of the mixture predictive, each ``[Q, d]``."""
        if self.task != "regression":
            raise ValueError("predictive intervals are for regression; this BMAML learner classifies")
        return mixture_interval(self.particle_outputs(adapted, query_x), self.noise, level)

    def episode_loss(self, episode: Episode) -> tuple[torch.Tensor, dict[str, float]]:
        """Classification: the query cross-entropy of the posterior predictive; regression: the query NLL of the
        mixture ``(1/M) sum_m N(f_m(x), sigma^2)`` (mean over targets), with the MSE of its mean as the metric."""
        return self.query_loss(self.adapted_outputs(episode.support_x, episode.support_y, episode.query_x),
                               episode.query_y)

    def query_loss(self, outputs: torch.Tensor, query_y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """:meth:`episode_loss` of the particles' query outputs ``outputs [M, Q, ...]`` and labels or targets
        ``query_y``."""
        if self.task != "regression":
            predictive = mean_log_probs(outputs)
            loss = task_loss(predictive, query_y, self.task)
            return loss, {"loss": float(loss.detach()), metric_name(self.task): task_metric(predictive, query_y,
                                                                                            self.task)}
        log_density = torch.distributions.Normal(outputs, self.noise).log_prob(query_y.unsqueeze(0))
        loss = -(torch.logsumexp(log_density, dim=0) - math.log(outputs.shape[0])).mean()
        return loss, {"loss": float(loss.detach()),
                      metric_name(self.task): task_metric(outputs.mean(0), query_y, self.task)}

    def meta_loss(self, batch: TaskBatch | RaggedTaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The mean of :meth:`episode_loss` over the tasks; vectorised, the tasks run through one ``vmap``."""
        if not self.vectorize:
            return super().meta_loss(batch)
        if isinstance(batch, RaggedTaskBatch):
            raise ValueError("vectorize (vmap over tasks) needs episodes of equal sizes; this meta-batch's sizes differ "
                             "(ragged_queries): set vectorize: false")
        with exact_under_vmap(self.model):
            outputs = vmap(self.adapted_outputs, randomness="error")(batch.support_x, batch.support_y,
                                                                     batch.query_x)            # [T, M, Q, ...]
        losses, metrics = zip(*(self.query_loss(o, y) for o, y in zip(outputs, batch.query_y)))
        return torch.stack(losses).mean(), mean_metrics(list(metrics))

    def meta_backward(self, batch: TaskBatch | RaggedTaskBatch, total_tasks: int | None = None) -> dict[str, float]:
        """The gradient of :meth:`meta_loss`, scaled to ``total_tasks``: one backward per task, or vectorised one
        for the batch."""
        if not self.vectorize:
            return super().meta_backward(batch, total_tasks)
        loss, metrics = self.meta_loss(batch)
        (loss * (batch.num_tasks / (total_tasks or batch.num_tasks))).backward()
        return metrics



@dataclass
class BMAMLOptions:
    """The ``learner`` section of BMAML runs."""

    inner_lr: float = 0.4
    inner_steps: int = 1
    eval_inner_steps: int | None = None   # test-time SVGD steps (None: inner_steps)
    particles: int = 5
    noise: float = 0.1                    # regression: the observation noise's standard deviation (initial)
    learn_noise: bool = True              # regression: meta-learn it
    vectorize: bool = False               # execution: vmap over the particles and the tasks of a meta-batch

    def validate(self) -> None:
        check_inner_loop(self.inner_lr, self.inner_steps, self.eval_inner_steps)
        if not isinstance(self.particles, int) or self.particles < 1:
            raise ValueError(f"particles must be an integer >= 1, got {self.particles!r}")
        if not self.noise > 0:
            raise ValueError(f"noise (the observation noise's standard deviation) must be > 0, got {self.noise}")


@register_learner("bmaml", options=BMAMLOptions, tasks=("classification", "regression"), head=True)
def _build(options: BMAMLOptions, context: BuildContext) -> BMAML:
    return BMAML(context.net(out_features=context.ways), options.inner_lr, options.inner_steps, options.particles,
                 seed=context.seed, task=context.task, noise=options.noise, learn_noise=options.learn_noise,
                 vectorize=options.vectorize)
