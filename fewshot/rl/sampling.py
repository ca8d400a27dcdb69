"""Trajectory sampling and the advantage estimates of policy-gradient methods.

:func:`rollout` runs a policy in a :class:`~fewshot.rl.family.BatchEnv` for one episode of every environment
and returns a :class:`Trajectories` batch ``[B, H, ...]`` (``B = tasks * episodes``, environment ``b`` running
task ``b // episodes``). The policy is called once per step on all ``B`` observations. Exploration noise is
drawn per task from that task's own seed, and environments are made with one seed per task, so the episodes
of a task depend on its seed alone, never on the other tasks of the batch: a task's episodes are a function
of ``(run seed, task index, iteration)`` through :func:`rollout_seed`, runs resume exactly and the ranks of a
distributed run sample disjoint tasks.

Advantages (:func:`advantages`): discounted returns (:func:`discounted_returns`), the linear-feature value
baseline of Duan et al. (2016) fitted by regularised least squares to each task's own trajectories
(:func:`linear_baseline`, rllab's ``LinearFeatureBaseline`` as MAML-RL and ProMP use it), generalised advantage
estimation (:func:`gae`, Schulman et al. 2016), and normalisation to zero mean and unit variance per task.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Sequence

import torch

from fewshot.rl.family import BatchEnv
from fewshot.rl.policy import log_prob
from fewshot.tasks.seeding import derive_seed, generator

#: ``obs [B, obs_dim] -> (mean [B, act_dim], log_std [B, act_dim])``
PolicyFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def rollout_seed(seed: int, task_index: int, phase: int) -> int:
    """The seed of the episodes of task ``task_index`` of a stream with seed ``seed`` in ``phase`` (0: sampled
    before adaptation, ``k``: after ``k`` adaptation steps)."""
    return derive_seed(seed, task_index, phase)


@dataclass(frozen=True)
class Trajectories:
    """One episode of each of ``B = tasks * episodes`` environments, ``H`` steps each.

    Attributes:
        obs: ``[B, H, obs_dim]`` observations the actions were taken in.
        actions: ``[B, H, act_dim]`` the sampled (unclipped) actions.
        rewards: ``[B, H]``.
        log_probs: ``[B, H]`` log-densities of the actions under the sampling policy (no gradient).
        dones: ``[B, H]`` bool, true at an episode's last step.
        success: ``[B, H]`` bool, the environment's ``info["success"]`` (``None`` when it reports none).
        episodes: episodes per task.
    """

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    log_probs: torch.Tensor
    dones: torch.Tensor
    success: torch.Tensor | None
    episodes: int

    @property
    def num_tasks(self) -> int:
        return self.obs.shape[0] // self.episodes

    def task(self, t: int) -> "Trajectories":
        """The ``episodes`` trajectories of task ``t``."""
        sl = slice(t * self.episodes, (t + 1) * self.episodes)
        return Trajectories(*(None if getattr(self, f.name) is None else getattr(self, f.name)[sl]
                              for f in fields(self) if f.name != "episodes"), episodes=self.episodes)

    def task_returns(self) -> torch.Tensor:
        """Mean undiscounted return of each task's episodes: ``[tasks]``."""
        return self.rewards.sum(1).view(self.num_tasks, self.episodes).mean(1)

    def task_success(self) -> torch.Tensor | None:
        """Fraction of each task's episodes with a success at any step: ``[tasks]`` (``None`` without success)."""
        if self.success is None:
            return None
        return self.success.any(1).float().view(self.num_tasks, self.episodes).mean(1)


@torch.no_grad()
def rollout(env: BatchEnv, policy: PolicyFn, seeds: Sequence[int], deterministic: bool = False) -> Trajectories:
    """Run ``policy`` for one episode in every environment of ``env``.

    Args:
        env: ``B = len(seeds) * episodes`` environments, made for the same tasks in the same order.
        policy: the action distribution of a step's observations (``PolicyFn``).
        seeds: one per task: the exploration noise of task ``t``'s episodes is drawn from ``seeds[t]``.
        deterministic: take the mean action (no noise; log-probabilities are then those of the mean).
    """
    tasks = len(seeds)
    if env.batch % tasks:
        raise ValueError(f"{env.batch} environments cannot be split into {tasks} tasks; make the environments for "
                         "the same tasks the seeds are for")
    episodes, horizon = env.batch // tasks, env.horizon
    noise = torch.stack([torch.randn(horizon, episodes, env.act_dim, generator=generator(s)) for s in seeds], 1)
    noise = noise.view(horizon, env.batch, env.act_dim)              # [H, B, act_dim], task-major like env
    obs = env.reset()
    columns: dict[str, list[torch.Tensor]] = {"obs": [], "actions": [], "rewards": [], "log_probs": [],
                                              "dones": [], "success": []}
    for t in range(horizon):
        mean, log_std = policy(obs)
        action = mean if deterministic else mean + torch.exp(log_std) * noise[t]
        columns["obs"].append(obs)
        columns["actions"].append(action)
        columns["log_probs"].append(log_prob(mean, log_std, action))
        obs, reward, done, info = env.step(action)
        columns["rewards"].append(reward.to(torch.float32))
        columns["dones"].append(done)
        if "success" in info:
            columns["success"].append(info["success"].bool())
    stacked = {k: torch.stack(v, 1) for k, v in columns.items() if v}
    return Trajectories(stacked["obs"], stacked["actions"], stacked["rewards"], stacked["log_probs"],
                        stacked["dones"], stacked.get("success"), episodes)


def discounted_returns(rewards: torch.Tensor, discount: float, dones: torch.Tensor | None = None) -> torch.Tensor:
    """``G_t = r_t + discount * G_{t+1}`` within each episode (``G`` restarts after a ``done``): ``[B, H]``."""
    keep = torch.ones_like(rewards) if dones is None else 1.0 - dones.to(rewards.dtype)
    out, running = torch.empty_like(rewards), torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = rewards[:, t] + discount * keep[:, t] * running
        out[:, t] = running
    return out


def gae(rewards: torch.Tensor, values: torch.Tensor, discount: float, lam: float,
        dones: torch.Tensor | None = None) -> torch.Tensor:
    """Generalised advantage estimates ``A_t = sum_k (discount * lam)^k delta_{t+k}`` with
    ``delta_t = r_t + discount * V_{t+1} - V_t`` (``V`` after an episode's end is 0): ``[B, H]`` from
    ``rewards, values [B, H]``. ``lam = 1`` gives ``G_t - V_t``."""
    keep = torch.ones_like(rewards) if dones is None else 1.0 - dones.to(rewards.dtype)
    out = torch.empty_like(rewards)
    running, next_value = torch.zeros_like(rewards[:, 0]), torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        delta = rewards[:, t] + discount * keep[:, t] * next_value - values[:, t]
        running = delta + discount * lam * keep[:, t] * running
        out[:, t], next_value = running, values[:, t]
    return out


def baseline_features(obs: torch.Tensor) -> torch.Tensor:
    """rllab's linear-baseline features of ``obs [N, H, d]``: ``[o, o^2, a, a^2, a^3, 1]`` with ``o`` the
    observation clipped to ``[-10, 10]`` and ``a = t / 100``: ``[N, H, 2d + 4]`` (float64)."""
    o = obs.to(torch.float64).clamp(-10, 10)
    a = (torch.arange(obs.shape[1], dtype=torch.float64) / 100).view(1, -1, 1).expand(obs.shape[0], -1, 1)
    return torch.cat([o, o * o, a, a * a, a ** 3, torch.ones_like(a)], -1)


def linear_baseline(obs: torch.Tensor, returns: torch.Tensor, reg: float = 1e-5) -> torch.Tensor:
    """Values ``[N, H]`` of the linear-feature baseline fitted to ``returns [N, H]`` of trajectories ``obs
    [N, H, d]``: ridge regression ``(X^T X + reg I) w = X^T y`` on :func:`baseline_features`, the regulariser
    multiplied by 10 (up to 5 times) while the solve is not finite, as in rllab."""
    x = baseline_features(obs).reshape(-1, 2 * obs.shape[-1] + 4)
    y = returns.to(torch.float64).reshape(-1)
    gram, target = x.T @ x, x.T @ y
    eye = torch.eye(x.shape[1], dtype=torch.float64)
    for _ in range(5):
        try:
            w = torch.linalg.solve(gram + reg * eye, target)
        except RuntimeError:       # singular
            w = None
        if w is not None and bool(torch.isfinite(w).all()):
            break
        reg *= 10
    else:
        w = torch.zeros_like(target)
    return (x @ w).view_as(returns).to(returns.dtype)


def advantages(traj: Trajectories, discount: float = 0.99, gae_lambda: float = 1.0,
               normalize: bool = True) -> torch.Tensor:
    """Advantages ``[B, H]`` of a trajectory batch: GAE over the linear baseline fitted to each task's own
    trajectories, normalised per task to zero mean and unit variance when ``normalize``."""
    returns = discounted_returns(traj.rewards, discount, traj.dones)
    values = torch.cat([linear_baseline(o, r) for o, r in zip(traj.obs.split(traj.episodes),
                                                              returns.split(traj.episodes))])
    adv = gae(traj.rewards, values, discount, gae_lambda, traj.dones)
    if normalize:
        per_task = adv.view(traj.num_tasks, -1)
        adv = ((per_task - per_task.mean(1, keepdim=True)) / (per_task.std(1, keepdim=True) + 1e-8)).view_as(adv)
    return adv
