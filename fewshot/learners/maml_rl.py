"""MAML for reinforcement learning: ``maml-trpo`` (Finn et al. 2017) and ``promp`` (Rothfuss et al. 2019).

One meta-iteration on a batch of tasks:

1. sample ``trajectories`` episodes of each task with the policy ``theta`` (pre-adaptation);
2. adapt: ``theta'_i = theta - alpha * grad L_i(theta)``, one vanilla policy-gradient step on them
   (:meth:`~fewshot.rl.learner.RLLearner.adapt_task`, the library's functional inner loop; ``inner_steps > 1``
   samples anew after every step);
3. sample as many episodes with ``theta'_i`` (post-adaptation) and improve ``theta`` on them, differentiating
   through the inner step (second order; ``first_order`` drops it).

``maml-trpo`` improves ``theta`` by TRPO (Schulman et al. 2015), as in the MAML paper: the surrogate
``-mean_i mean_t r_t A_t`` with ``r_t = pi_{theta'_i}(a_t|s_t) / pi_{theta'_i,old}(a_t|s_t)`` under the bound
``mean_i KL(pi_{theta'_i,old} || pi_{theta'_i}) <= max_kl``: the step direction solves ``H s = -g`` by
conjugate gradient (:func:`conjugate_gradient`) with ``H`` the Hessian of that mean KL, obtained by
double-backward through the inner step (``fisher="adapted"``: of the adapted policies in their own
parameters, cheaper), then a backtracking line search keeps the first step that lowers the surrogate within
the bound. The inner loss is REINFORCE, ``-mean_t log pi(a_t|s_t) A_t``.

``promp`` takes ``outer_steps`` Adam steps (the trainer's optimizer and learning rate) per batch on ProMP's
objective: the PPO-clipped surrogate ``-mean_i mean_t min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)``
minus ``inner_kl_penalty`` times the KL between the pre-adaptation policies before and after the update
(a fixed coefficient, ProMP's initial one); its inner step adapts on the low-variance curvature objective
(LVC, :mod:`fewshot.rl.learner`) rather than the plain REINFORCE loss, and no DiCE estimator is used.

Both make their own update through the trainer's ``meta_update`` hook (:class:`fewshot.train.Trainer`); under
``torchrun`` the gradients, Hessian-vector products and line-search figures are summed over the ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from fewshot.learners.gradient import Params
from fewshot.learners.rl_baselines import PolicyGradientOptions
from fewshot.registry import BuildContext, register_learner
from fewshot.rl.learner import RLLearner, all_mean_metrics, all_sum
from fewshot.rl.policy import kl_divergence, log_prob
from fewshot.rl.sampling import Trajectories, rollout_seed
from fewshot.tasks.episode import TaskBatch


@dataclass
class MAMLRLOptions(PolicyGradientOptions):
    """Options shared by ``maml-trpo`` and ``promp``: those of :class:`PolicyGradientOptions` and
    ``first_order`` (drop the second-order terms of the meta-gradient)."""

    first_order: bool = False


@dataclass
class TRPOOptions(MAMLRLOptions):
    """``maml-trpo``: the KL bound, conjugate-gradient iterations and damping, line-search steps and their
    shrink factor (the MAML paper's 0.01 bound; rllab's and MAML-RL's 10 iterations, 15 steps of 0.8), and
    which KL Hessian the conjugate gradient uses (:meth:`MAMLTRPO.kl_hessian`)."""

    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    ls_steps: int = 15
    ls_backtrack: float = 0.8
    fisher: str = "exact"

    def validate(self) -> None:
        super().validate()
        if self.fisher not in ("exact", "adapted"):
            raise ValueError(f"fisher must be exact (the KL's Hessian through the inner step) or adapted (the "
                             f"adapted policies' own), got {self.fisher!r}")
        if not self.max_kl > 0 or not self.cg_damping >= 0 or not 0 < self.ls_backtrack < 1:
            raise ValueError(f"maml-trpo needs max_kl > 0, cg_damping >= 0 and ls_backtrack in (0, 1); got "
                             f"{self.max_kl}, {self.cg_damping}, {self.ls_backtrack}")
        if self.cg_iters < 1 or self.ls_steps < 1:
            raise ValueError(f"cg_iters and ls_steps must be >= 1, got {self.cg_iters} and {self.ls_steps}")


@dataclass
class ProMPOptions(MAMLRLOptions):
    """``promp``: the clipping range, Adam steps per batch and the pre-adaptation KL penalty (ProMP's 0.3, 5
    and initial 5e-4)."""

    clip_eps: float = 0.3
    outer_steps: int = 5
    inner_kl_penalty: float = 5e-4

    def validate(self) -> None:
        super().validate()
        if not 0 < self.clip_eps < 1 or self.outer_steps < 1 or self.inner_kl_penalty < 0:
            raise ValueError(f"promp needs clip_eps in (0, 1), outer_steps >= 1 and inner_kl_penalty >= 0; got "
                             f"{self.clip_eps}, {self.outer_steps}, {self.inner_kl_penalty}")


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 10,
                       tol: float = 1e-10) -> torch.Tensor:
    """Approximately solve ``A x = b`` for a symmetric positive-definite ``A`` given as ``matvec(v) = A v``
    (``iters`` conjugate-gradient iterations from ``x = 0``, stopping early when ``|r|^2 < tol``): ``x``."""
    x, r = torch.zeros_like(b), b.clone()
    p, rr = r.clone(), r @ r
    for _ in range(iters):
        if rr < tol:
            break
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x, r = x + alpha * p, r - alpha * ap
        rr_new = r @ r
        p, rr = r + (rr_new / rr) * p, rr_new
    return x


@dataclass
class MetaBatch:
    """The trajectories of one meta-iteration, per task: ``inner[t]`` the ``(trajectories, advantages)`` of
    each adaptation step, ``post[t]`` and ``post_adv[t]`` those after adaptation, ``old[t]`` the
    post-adaptation policy's ``(mean, log_std)`` at ``post[t].obs``, ``features[t]`` the oracle's (or None)."""

    inner: list[list[tuple[Trajectories, torch.Tensor]]]
    post: list[Trajectories]
    post_adv: list[torch.Tensor]
    old: list[tuple[torch.Tensor, torch.Tensor]]
    features: list[torch.Tensor | None]
    before: float
    after: float
    success: float | None


class MAMLRL(RLLearner):
    """MAML-RL's sampling and inner loop; :class:`MAMLTRPO` and :class:`ProMP` differ in the outer update."""

    def __init__(self, policy, family, *, first_order: bool = False, **kwargs):
        super().__init__(policy, family, **kwargs)
        self.first_order = first_order

    def sample_meta_batch(self, batch: TaskBatch) -> MetaBatch:
        """Steps 1-3 of the module docstring's meta-iteration, without gradients."""
        indices, tasks = self.batch_tasks(batch)
        seed, episodes = self.source.seed, self.source.trajectories
        feats = self.features(tasks)
        features = [None if feats is None else feats[t] for t in range(len(tasks))]
        theta = {k: v.detach() for k, v in self.params().items()}
        params: list[Params] = [theta] * len(tasks)
        inner: list[list[tuple[Trajectories, torch.Tensor]]] = [[] for _ in tasks]
        before = None
        for j in range(self.inner_steps + 1):
            traj = self.sample(params, tasks, [rollout_seed(seed, i, j) for i in indices], episodes)
            before = traj.task_returns() if before is None else before
            adv = self.task_advantages(traj)
            if j == self.inner_steps:
                break
            for t in range(len(tasks)):
                inner[t].append((traj.task(t), adv[t]))
            params = [{k: v.detach() for k, v in self.adapt_task(params[t], traj.task(t), adv[t], features[t],
                                                                 False).items()} for t in range(len(tasks))]
        post = [traj.task(t) for t in range(len(tasks))]
        with torch.no_grad():
            old = [self.dist(params[t], post[t].obs, features[t]) for t in range(len(tasks))]
        success = traj.task_success()
        return MetaBatch(inner, post, adv, old, features, float(before.mean()), float(traj.task_returns().mean()),
                         None if success is None else float(success.mean()))

    def adapted(self, data: MetaBatch, t: int, second_order: bool) -> Params:
        """``theta'_t`` from the current parameters through the inner steps on task ``t``'s trajectories."""
        params = self.params()
        for traj, adv in data.inner[t]:
            params = self.adapt_task(params, traj, adv, data.features[t], second_order and not self.first_order)
        return params

    def post_terms(self, data: MetaBatch, t: int, second_order: bool):
        """``(ratio [E, H], KL(old || new) mean)`` of task ``t``'s post-adaptation trajectories."""
        mean, log_std = self.dist(self.adapted(data, t, second_order), data.post[t].obs, data.features[t])
        ratio = torch.exp(log_prob(mean, log_std, data.post[t].actions) - data.post[t].log_probs)
        return ratio, kl_divergence(*data.old[t], mean, log_std).mean()

    def metrics(self, data: MetaBatch, local: int, total: int, **overall: float) -> dict[str, float]:
        """The iteration's progress figures: mean returns before and after adaptation (and success) over all
        ``total`` tasks (this process had ``local``), then ``overall`` (figures already summed over processes)."""
        m = {"return": data.after, "return_before": data.before}
        if data.success is not None:
            m["success"] = data.success
        return {**all_mean_metrics(m, local, total), **overall}


class MAMLTRPO(MAMLRL):
    """MAML with a TRPO outer step (the module docstring); ``max_kl`` and the solver's settings as in
    :class:`TRPOOptions`."""

    def __init__(self, policy, family, *, max_kl=0.01, cg_iters=10, cg_damping=1e-5, ls_steps=15,
                 ls_backtrack=0.8, fisher="exact", **kwargs):
        super().__init__(policy, family, **kwargs)
        self.fisher = fisher
        self.max_kl, self.cg_iters, self.cg_damping = max_kl, cg_iters, cg_damping
        self.ls_steps, self.ls_backtrack = ls_steps, ls_backtrack

    def surrogate(self, data: MetaBatch, total: int, second_order: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's share of the surrogate loss and of the mean KL (each task's divided by ``total``)."""
        losses, kls = [], []
        for t in range(len(data.post)):
            ratio, kl = self.post_terms(data, t, second_order)
            losses.append(-(ratio * data.post_adv[t]).mean())
            kls.append(kl)
        return torch.stack(losses).sum() / total, torch.stack(kls).sum() / total

    def kl_hessian(self, data: MetaBatch, total: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """``v -> H v`` over the flat trainable parameters, ``H`` this process's share of the Hessian of the mean
        KL at the current parameters by double backward: through the inner steps (``fisher="exact"``), or
        of the adapted policies in their own parameters (``fisher="adapted"``: the inner step's Jacobian taken
        as the identity, no third derivative of the inner loss; the line search still checks the exact KL)."""
        params = [p for p in self.policy.parameters() if p.requires_grad]
        _, kl = self.surrogate(data, total, second_order=self.fisher == "exact")
        grad_kl = torch.cat([x.reshape(-1) for x in torch.autograd.grad(kl, params, create_graph=True)])

        def product(v: torch.Tensor) -> torch.Tensor:
            return torch.cat([x.reshape(-1) for x in torch.autograd.grad(grad_kl @ v, params, retain_graph=True)])
        return product

    def meta_update(self, batch: TaskBatch, optimizer, lr: float, total_tasks: int) -> dict[str, float]:
        """One TRPO step of the policy on a batch of tasks; returns the iteration's metrics."""
        data = self.sample_meta_batch(batch)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        loss, _ = self.surrogate(data, total_tasks, second_order=True)
        g = all_sum(torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, params)]))
        hessian = self.kl_hessian(data, total_tasks)

        def fisher(v: torch.Tensor) -> torch.Tensor:
            return all_sum(hessian(v)) + self.cg_damping * v

        direction = conjugate_gradient(fisher, -g, self.cg_iters)
        shs = float(direction @ fisher(direction))
        old = torch.nn.utils.parameters_to_vector(params).detach()
        loss_old = float(all_sum(loss.detach().clone()))
        del hessian
        step = direction * (2 * self.max_kl / max(shs, 1e-12)) ** 0.5
        accepted, kl_new, loss_new = 0.0, 0.0, loss_old
        for k in range(self.ls_steps):
            torch.nn.utils.vector_to_parameters(old + self.ls_backtrack ** k * step, params)
            with torch.no_grad():
                new_loss, new_kl = (float(all_sum(x.detach().clone())) for x in self.surrogate(data, total_tasks, False))
            if new_loss < loss_old and new_kl <= self.max_kl:
                accepted, kl_new, loss_new = self.ls_backtrack ** k, new_kl, new_loss
                break
        else:
            torch.nn.utils.vector_to_parameters(old, params)       # no acceptable step: keep the policy
        return self.metrics(data, batch.num_tasks, total_tasks, loss=loss_new, kl=kl_new, step_size=accepted)


class ProMP(MAMLRL):
    """ProMP (the module docstring): LVC inner step, clipped outer objective, ``outer_steps`` Adam steps."""

    def __init__(self, policy, family, *, clip_eps=0.3, outer_steps=5, inner_kl_penalty=5e-4, **kwargs):
        super().__init__(policy, family, lvc=True, **kwargs)
        self.clip_eps, self.outer_steps, self.inner_kl_penalty = clip_eps, outer_steps, inner_kl_penalty

    def meta_update(self, batch: TaskBatch, optimizer, lr: float, total_tasks: int) -> dict[str, float]:
        """``outer_steps`` Adam steps of ProMP's objective on one batch of tasks."""
        data = self.sample_meta_batch(batch)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        theta = {k: v.detach().clone() for k, v in self.params().items()}
        with torch.no_grad():
            pre_old = [self.dist(theta, data.inner[t][0][0].obs, data.features[t]) for t in range(len(data.post))]
        last_loss = 0.0
        for _ in range(self.outer_steps):
            optimizer.zero_grad(set_to_none=True)
            total_loss = 0.0
            for t in range(len(data.post)):
                ratio, _ = self.post_terms(data, t, second_order=True)
                adv = data.post_adv[t]
                clipped = torch.min(ratio * adv, ratio.clamp(1 - self.clip_eps, 1 + self.clip_eps) * adv).mean()
                pre_kl = kl_divergence(*pre_old[t], *self.dist(self.params(), data.inner[t][0][0].obs,
                                                                 data.features[t])).mean()
                loss = (-clipped + self.inner_kl_penalty * pre_kl) / total_tasks
                loss.backward()
                total_loss += float(loss.detach())
            for p in params:
                if p.grad is not None:
                    all_sum(p.grad)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            last_loss = float(all_sum(torch.tensor(total_loss)))
        with torch.no_grad():
            kl = sum(float(self.post_terms(data, t, False)[1]) for t in range(len(data.post))) / total_tasks
        return self.metrics(data, batch.num_tasks, total_tasks, loss=last_loss, kl=float(all_sum(torch.tensor(kl))))


def _common(options: MAMLRLOptions) -> dict:
    return dict(inner_lr=options.inner_lr, inner_steps=options.inner_steps, discount=options.discount,
                gae_lambda=options.gae_lambda, first_order=options.first_order)


@register_learner("maml-trpo", options=TRPOOptions, tasks=("rl",))
def _build_trpo(options: TRPOOptions, context: BuildContext) -> MAMLTRPO:
    family = context.family
    return MAMLTRPO(context.net(out_features=family.act_dim), family, max_kl=options.max_kl,
                    cg_iters=options.cg_iters, cg_damping=options.cg_damping, ls_steps=options.ls_steps,
                    ls_backtrack=options.ls_backtrack, fisher=options.fisher, **_common(options))


@register_learner("promp", options=ProMPOptions, tasks=("rl",))
def _build_promp(options: ProMPOptions, context: BuildContext) -> ProMP:
    family = context.family
    return ProMP(context.net(out_features=family.act_dim), family, clip_eps=options.clip_eps,
                 outer_steps=options.outer_steps, inner_kl_penalty=options.inner_kl_penalty, **_common(options))
