"""What every meta-RL learner shares: a policy, the task family it acts in, trajectory sampling, and test-time
adaptation by vanilla policy gradient through the library's functional inner loop.

An :class:`RLLearner` is a :class:`~fewshot.learners.base.Learner` of task kind ``"rl"``. It meets the trainer
(:class:`fewshot.train.Trainer`) through the task stream of :class:`~fewshot.domains.rl.RLTasks`: the trainer
stacks the stream's items (each carries a task's index in the stream) into a task batch and hands it to the
learner, which samples that batch's trajectories itself: either ``meta_backward`` (leaving a gradient for the
trainer's Adam step) or ``meta_update`` (a learner that makes its own update, such as TRPO's line search or
ProMP's several outer steps). What is scored is :meth:`RLLearner.adaptation_returns`: the return of a task's
episodes before and after each of ``k`` adaptation steps.

The inner step (:meth:`RLLearner.adapt_task`) is one step of :func:`fewshot.learners.gradient.sgd_inner_loop`
on the REINFORCE loss ``-mean_t log pi(a_t|s_t) A_t`` of a task's trajectories (advantages from
:func:`fewshot.rl.sampling.advantages`), or, with ``lvc``, on ProMP's low-variance curvature objective
``-mean_t pi(a_t|s_t) / stop_gradient(pi(a_t|s_t)) A_t`` (Rothfuss et al. 2019): the same gradient, a
different Hessian (its second derivative holds the score-function term the plain loss drops).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.func import vmap

from fewshot.learners.base import Learner, ShapeError
from fewshot.learners.gradient import Params, functional_forward, parameter_slots, sgd_inner_loop
from fewshot.rl.family import Task, TaskFamily
from fewshot.rl.policy import log_prob
from fewshot.rl.sampling import PolicyFn, Trajectories, advantages, rollout, rollout_seed
from fewshot.tasks.episode import Episode, TaskBatch


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the processes of a ``torchrun`` run (in place; itself in one process)."""
    if dist.is_available() and dist.is_initialized():
        flat = tensor.detach().cpu()
        dist.all_reduce(flat)
        tensor.copy_(flat.to(tensor.device))
    return tensor


def all_mean_metrics(metrics: dict[str, float], local: int, total: int) -> dict[str, float]:
    """Per-process means over ``local`` of ``total`` tasks turned into means over all tasks."""
    keys = list(metrics)
    values = all_sum(torch.tensor([metrics[k] * local / total for k in keys], dtype=torch.float64))
    return dict(zip(keys, values.tolist()))


class TaskStream:
    """The trainer's side of an RL learner: it keeps the training stream, whose task batches name tasks by
    index (items of :class:`~fewshot.domains.rl.RLTasks`), and samples its own trajectories of them."""

    source = None

    def training_tasks(self, tasks):
        """Keep the training stream (its tasks, seed and trajectories per task)."""
        self.source = tasks
        return tasks

    def batch_tasks(self, batch: TaskBatch) -> tuple[list[int], list[Task]]:
        """The stream indices and tasks of a task batch of :class:`~fewshot.domains.rl.RLTasks` items."""
        if self.source is None:
            raise RuntimeError(f"{type(self).__name__} samples its own trajectories: pass its task stream through "
                               "learner.training_tasks(tasks) first (the trainer does)")
        indices = [int(i) for i in batch.support_y[:, 0]]
        return indices, [self.source.task(i) for i in indices]


class RLLearner(TaskStream, Learner):
    """A policy in a task family, adapted to a task by vanilla policy-gradient steps.

    Args:
        policy: ``obs [B, obs_dim (+ task_dim)] -> (mean [B, act_dim], log_std [B, act_dim])``, e.g.
            :class:`~fewshot.rl.policy.GaussianPolicy`.
        family: the task family it acts in.
        inner_lr, inner_steps: the adaptation step size and the steps taken while meta-training.
        discount, gae_lambda: of the advantages.
        oracle: append the task's features (:meth:`TaskFamily.task_features`) to every observation.
        lvc: adapt with ProMP's low-variance curvature objective instead of the REINFORCE loss.
    """

    task = "rl"

    def __init__(self, policy: nn.Module, family: TaskFamily, *, inner_lr: float = 0.1, inner_steps: int = 1,
                 discount: float = 0.99, gae_lambda: float = 1.0, oracle: bool = False, lvc: bool = False):
        super().__init__()
        if not inner_lr > 0:
            raise ValueError(f"inner_lr must be > 0, got {inner_lr}")
        if not 0 < discount <= 1 or not 0 <= gae_lambda <= 1:
            raise ValueError(f"discount must be in (0, 1] and gae_lambda in [0, 1], got {discount} and {gae_lambda}")
        self.policy, self.family = policy, family
        self.inner_lr, self.inner_steps, self.discount, self.gae_lambda = inner_lr, inner_steps, discount, gae_lambda
        self.oracle, self.lvc = oracle, lvc
        self._slots = parameter_slots(policy)
        self.adapt_names = [n for n, p in policy.named_parameters() if p.requires_grad]
        self.source = None        # the training stream (fewshot.domains.rl.RLTasks), set by training_tasks

    # -- the policy --------------------------------------------------------------------------------
    def params(self) -> Params:
        """The policy's parameters by canonical name (differentiable)."""
        return dict(self.policy.named_parameters())

    def features(self, tasks: Sequence[Task]) -> torch.Tensor | None:
        """``[T, task_dim]`` task features for the oracle's inputs (``None`` for any other learner)."""
        if not self.oracle:
            return None
        return torch.stack([self.family.task_features(t) for t in tasks]).to(self.device)

    def dist(self, params: Params, obs: torch.Tensor, features: torch.Tensor | None = None):
        """``(mean, log_std)`` of the policy with ``params`` at ``obs [..., obs_dim]`` of one task (``features
        [task_dim]`` appended for the oracle)."""
        if features is not None:
            obs = torch.cat([obs, features.expand(*obs.shape[:-1], -1)], -1)
        return functional_forward(self.policy, self._slots, params, obs)

    def policy_fn(self, params: Params | Sequence[Params], features: torch.Tensor | None, tasks: int) -> PolicyFn:
        """The action distribution of a step for ``tasks`` tasks' environments (task-major ``[B, obs_dim]``):
        one parameter dict for all of them, or one per task (run together through ``vmap``)."""
        def inputs(obs: torch.Tensor) -> torch.Tensor:          # [B, obs_dim] -> [tasks, B / tasks, input]
            obs = obs.view(tasks, -1, obs.shape[-1])
            if features is None:
                return obs
            return torch.cat([obs, features[:, None].expand(-1, obs.shape[1], -1)], -1)

        def shared(obs: torch.Tensor):
            x = inputs(obs)
            return functional_forward(self.policy, self._slots, params, x.reshape(-1, x.shape[-1]))

        if isinstance(params, dict):
            return shared
        stacked = {k: torch.stack([p[k] for p in params]) for k in params[0]}

        def per_task(obs: torch.Tensor):
            mean, log_std = vmap(lambda p, o: functional_forward(self.policy, self._slots, p, o))(stacked, inputs(obs))
            return mean.reshape(-1, mean.shape[-1]), log_std.reshape(-1, log_std.shape[-1])
        return per_task

    def sample(self, params: Params | Sequence[Params], tasks: Sequence[Task], seeds: Sequence[int],
               episodes: int) -> Trajectories:
        """``episodes`` trajectories of each of ``tasks`` (task ``t``'s environments and noise seeded by
        ``seeds[t]``), acting with ``params`` (one dict, or one per task)."""
        env = self.family.make(list(tasks), episodes, list(seeds))
        try:
            traj = rollout(env, self.policy_fn(params, self.features(tasks), len(tasks)), seeds)
        finally:
            env.close()
        return traj

    # -- adaptation ----------------------------------------------------------------------------------
    def inner_loss(self, params: Params, traj: Trajectories, adv: torch.Tensor,
                   features: torch.Tensor | None = None) -> torch.Tensor:
        """The adaptation loss of one task's trajectories ``traj`` with advantages ``adv [E, H]``: REINFORCE,
        or ProMP's LVC objective with ``lvc``."""
        logp = log_prob(*self.dist(params, traj.obs, features), traj.actions)
        weight = torch.exp(logp - logp.detach()) if self.lvc else logp
        return -(weight * adv).mean()

    def adapt_task(self, params: Params, traj: Trajectories, adv: torch.Tensor, features: torch.Tensor | None,
                   second_order: bool) -> Params:
        """One policy-gradient step on one task's trajectories (:func:`sgd_inner_loop`)."""
        return sgd_inner_loop(lambda p: self.inner_loss(p, traj, adv, features), params, self.adapt_names,
                              [self.inner_lr] * len(self.adapt_names), 1, second_order=second_order)[-1]

    def task_advantages(self, traj: Trajectories) -> list[torch.Tensor]:
        """Each task's advantages ``[E, H]`` (:func:`fewshot.rl.sampling.advantages`)."""
        return list(advantages(traj, self.discount, self.gae_lambda).split(traj.episodes))

    @torch.no_grad()
    def adaptation_returns(self, tasks: Sequence[Task], steps: int, episodes: int, seed: int, *,
                           eval_episodes: int | None = None) -> dict[str, torch.Tensor]:
        """Adapt to each of ``tasks`` by ``steps`` policy-gradient steps, sampling ``episodes`` new trajectories
        before each step and ``eval_episodes`` (default ``episodes``) after the last (those of task ``k`` at
        step ``j`` seeded by ``rollout_seed(seed, k, j)``).

        Returns:
            ``{"return": [n, steps + 1]}`` mean returns of each task's episodes before and after each step
            (column ``steps``, the only one when ``steps == 0``, over its ``eval_episodes``), and ``"success":
            [n, steps + 1]`` (fraction of episodes with a success) when the family reports it.
        """
        if eval_episodes is None:
            eval_episodes = episodes
        if episodes < 1 or eval_episodes < 1:
            raise ValueError(f"episodes and eval_episodes must be >= 1, got {episodes} and {eval_episodes}")
        params: list[Params] = [{k: v.detach() for k, v in self.params().items()}] * len(tasks)
        feats = self.features(tasks)
        out: dict[str, list[torch.Tensor]] = {"return": [], "success": []}
        for j in range(steps + 1):
            traj = self.sample(params, tasks, [rollout_seed(seed, k, j) for k in range(len(tasks))],
                               episodes if j < steps else eval_episodes)
            out["return"].append(traj.task_returns())
            if traj.success is not None:
                out["success"].append(traj.task_success())
            if j < steps:
                adv = self.task_advantages(traj)
                params = [{k: v.detach() for k, v in self.adapt_task(
                    params[t], traj.task(t), adv[t], None if feats is None else feats[t], False).items()}
                    for t in range(len(tasks))]
        return {k: torch.stack(v, 1) for k, v in out.items() if v}

    # -- the trainer's side: training_tasks and batch_tasks (TaskStream) ------------------------------------

    def check_episode(self, episode: Episode, what: str = "the") -> None:
        """Refuse a policy whose outputs do not fit the family (``[B, act_dim]`` mean and log-std)."""
        dim = self.family.obs_dim + (int(episode.support_x.shape[-1]) if self.oracle else 0)
        try:
            mean, log_std = self.dist(self.params(), torch.zeros(3, dim, device=self.device))
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"the policy cannot take {self.family.name} observations of size {dim}: "
                             f"{' '.join(str(e).split())[:200]}") from None
        if tuple(mean.shape) != (3, self.family.act_dim) or mean.shape != log_std.shape:
            raise ShapeError(f"the policy gives actions of shape {tuple(mean.shape)[1:]} but {self.family.name} "
                             f"takes {self.family.act_dim}; build it with out_features={self.family.act_dim}")
