"""RL² (Duan et al. 2016): a recurrent policy that learns to adapt within its hidden state, trained with PPO.

A **trial** is ``E`` consecutive episodes of one task. The policy (:class:`GRUPolicy`) reads, at each step,
the observation, the previous action, the previous reward and whether the previous step ended an episode;
its GRU state is carried across the episode boundaries of a trial (that is where it remembers what it has
learnt about the task) and starts from zero at every trial. The outer objective is the trial's discounted
return, so PPO (Schulman et al. 2017, in the form of CleanRL's ``ppo_continuous_action.py``) optimises how
well the policy explores in early episodes and exploits in later ones. Advantages are GAE
(:func:`fewshot.rl.sampling.gae`) over the whole trial with the policy's own value head.

An "adaptation step" of RL² is one more episode of experience: training trials last ``inner_steps + 1``
episodes, and :meth:`RL2.adaptation_returns` scores episodes ``1 .. steps + 1`` of a trial, so ``fewshot eval
RUN --inner-steps K`` prints the return of each episode of a ``K + 1``-episode trial in the same JSON as the
gradient learners (``before``: the first episode; ``mean``: the last).

Seeding follows :mod:`fewshot.rl.sampling`: task ``i`` of the training stream is run with environments and
exploration noise seeded by ``rollout_seed(stream seed, i, 0)``, so trials are a function of the run's seed,
the task's position and the iteration, and runs resume exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from fewshot.learners.base import Learner
from fewshot.registry import BuildContext, register_learner
from fewshot.rl.family import Task, TaskFamily
from fewshot.rl.learner import TaskStream, all_mean_metrics, all_sum
from fewshot.rl.policy import log_prob
from fewshot.rl.sampling import gae, rollout_seed
from fewshot.tasks.episode import Episode, TaskBatch
from fewshot.tasks.seeding import generator


class GRUPolicy(nn.Module):
    """``(inputs [B, L, obs_dim + act_dim + 2], h [1, B, hidden]) -> (mean [B, L, act_dim], log_std [B, L,
    act_dim], value [B, L], h [1, B, hidden])``: a GRU over (observation, previous action, previous reward,
    previous done), a linear Gaussian-mean head, a state-independent log-std and a linear value head."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 128, init_std: float = 1.0):
        super().__init__()
        if hidden < 1 or not init_std > 0:
            raise ValueError(f"rl2 needs gru_hidden >= 1 and action_std > 0, got {hidden} and {init_std}")
        self.obs_dim, self.act_dim, self.hidden = obs_dim, act_dim, hidden
        self.gru = nn.GRU(obs_dim + act_dim + 2, hidden, batch_first=True)
        self.mean = nn.Linear(hidden, act_dim)
        self.value = nn.Linear(hidden, 1)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))
        nn.init.zeros_(self.mean.bias)
        self.mean.weight.data.mul_(0.01)           # CleanRL's small initial policy head

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(1, batch, self.hidden, device=self.log_std.device)

    def forward(self, inputs: torch.Tensor, h: torch.Tensor):
        out, h = self.gru(inputs, h)
        mean = self.mean(out)
        return mean, self.log_std.expand_as(mean), self.value(out).squeeze(-1), h


def step_inputs(obs: torch.Tensor, prev_action: torch.Tensor, prev_reward: torch.Tensor,
                prev_done: torch.Tensor) -> torch.Tensor:
    """One step's policy input ``[B, obs_dim + act_dim + 2]`` from ``obs [B, obs_dim]``, the previous action
    ``[B, act_dim]``, reward ``[B]`` and done ``[B]`` (all zero at a trial's first step)."""
    return torch.cat([obs, prev_action, prev_reward[:, None], prev_done[:, None].float()], -1)


@dataclass(frozen=True)
class Trials:
    """``B = tasks * trials`` trials (task-major) of ``L = episodes * horizon`` steps.

    Attributes:
        inputs: ``[B, L, obs_dim + act_dim + 2]`` the policy's inputs.
        actions: ``[B, L, act_dim]`` sampled (unclipped) actions.
        rewards: ``[B, L]`` environment rewards (unscaled).
        log_probs, values: ``[B, L]`` of the sampling policy (no gradient).
        success: ``[B, L]`` bool, or ``None`` when the family reports none.
        hidden: ``[B, episodes, hidden]`` the GRU state at the start of each episode.
        episodes, horizon: episodes per trial and steps per episode.
    """

    inputs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    log_probs: torch.Tensor
    values: torch.Tensor
    success: torch.Tensor | None
    hidden: torch.Tensor
    episodes: int
    horizon: int

    def episode_returns(self) -> torch.Tensor:
        """``[B, episodes]``: the undiscounted return of each episode of each trial."""
        return self.rewards.view(self.rewards.shape[0], self.episodes, self.horizon).sum(-1)

    def episode_success(self) -> torch.Tensor | None:
        """``[B, episodes]``: whether each episode reached success at any step."""
        if self.success is None:
            return None
        return self.success.view(self.success.shape[0], self.episodes, self.horizon).any(-1)


def ppo_loss(new_log_probs: torch.Tensor, old_log_probs: torch.Tensor, adv: torch.Tensor,
             clip_eps: float) -> torch.Tensor:
    """PPO's clipped surrogate ``-mean min(r A, clip(r, 1 - eps, 1 + eps) A)`` with ``r = exp(new - old)``
    (all ``[...]``, same shape)."""
    ratio = torch.exp(new_log_probs - old_log_probs)
    return -torch.min(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv).mean()


class RL2(TaskStream, Learner):
    """RL² with PPO (the module docstring).

    Args:
        policy: a :class:`GRUPolicy` for the family's observations and actions.
        family: the task family it acts in.
        inner_steps: training trials last ``inner_steps + 1`` episodes.
        trials: parallel trials per task in each training batch.
        discount, gae_lambda: of the trial's advantages.
        clip_eps, epochs, minibatches: PPO's clipping range, passes over a batch and minibatches per pass.
        value_coef, entropy_coef, max_grad_norm: PPO's loss weights and gradient-norm clip.
        reward_scale: rewards are multiplied by it for the policy's input and for learning (returns are reported
            unscaled).
    """

    task = "rl"
    adapts_in_context = True        # it adapts by acting (its hidden state), not by gradient steps

    def __init__(self, policy: GRUPolicy, family: TaskFamily, *, inner_steps: int = 1, trials: int = 10,
                 discount: float = 0.99, gae_lambda: float = 0.95, clip_eps: float = 0.2, epochs: int = 4,
                 minibatches: int = 4, value_coef: float = 0.5, entropy_coef: float = 0.0,
                 max_grad_norm: float = 0.5, reward_scale: float = 1.0):
        super().__init__()
        self.policy, self.family = policy, family
        self.inner_steps, self.trials = inner_steps, trials
        self.discount, self.gae_lambda, self.clip_eps = discount, gae_lambda, clip_eps
        self.epochs, self.minibatches = epochs, minibatches
        self.value_coef, self.entropy_coef, self.max_grad_norm = value_coef, entropy_coef, max_grad_norm
        self.reward_scale = reward_scale
        self.source = None        # the training stream (fewshot.domains.rl.RLTasks), set by training_tasks

    # -- sampling --------------------------------------------------------------------------------------
    @torch.no_grad()
    def run_trials(self, tasks: Sequence[Task], seeds: Sequence[int], trials: int, episodes: int) -> Trials:
        """``trials`` trials of ``episodes`` episodes of each of ``tasks``; task ``t``'s environments and noise
        seeded by ``seeds[t]``. The GRU state starts at zero and is kept across the trial's episodes."""
        env = self.family.make(list(tasks), trials, list(seeds))
        try:
            horizon, batch, act_dim = env.horizon, env.batch, env.act_dim
            steps = episodes * horizon
            noise = torch.stack([torch.randn(steps, trials, act_dim, generator=generator(s)) for s in seeds], 1)
            noise = noise.view(steps, batch, act_dim).to(self.device)
            h = self.policy.initial_state(batch)
            prev_a = torch.zeros(batch, act_dim, device=self.device)
            prev_r = torch.zeros(batch, device=self.device)
            prev_d = torch.zeros(batch, device=self.device)
            cols: dict[str, list[torch.Tensor]] = {k: [] for k in
                                                   ("inputs", "actions", "rewards", "log_probs", "values",
                                                    "success", "hidden")}
            for e in range(episodes):
                obs = env.reset().to(self.device)
                cols["hidden"].append(h[0])
                for t in range(horizon):
                    x = step_inputs(obs, prev_a, prev_r * self.reward_scale, prev_d)
                    mean, log_std, value, h = self.policy(x[:, None], h)
                    mean, log_std, value = mean[:, 0], log_std[:, 0], value[:, 0]
                    action = mean + torch.exp(log_std) * noise[e * horizon + t]
                    obs, reward, done, info = env.step(action.cpu())
                    obs, reward = obs.to(self.device), reward.to(self.device, torch.float32)
                    for k, v in (("inputs", x), ("actions", action), ("rewards", reward), ("values", value),
                                 ("log_probs", log_prob(mean, log_std, action))):
                        cols[k].append(v)
                    if "success" in info:
                        cols["success"].append(info["success"].bool().to(self.device))
                    prev_a, prev_r, prev_d = action, reward, done.to(self.device).float()
        finally:
            env.close()
        st = {k: torch.stack(v, 1) for k, v in cols.items() if v}
        return Trials(st["inputs"], st["actions"], st["rewards"], st["log_probs"], st["values"], st.get("success"),
                      st["hidden"], episodes, horizon)

    @torch.no_grad()
    def adaptation_returns(self, tasks: Sequence[Task], steps: int, episodes: int, seed: int) -> dict[str, torch.Tensor]:
        """Run ``episodes`` trials of ``steps + 1`` episodes of each task (task ``k``'s seeded by
        ``rollout_seed(seed, k, 0)``).

        Returns:
            ``{"return": [n, steps + 1]}``: column ``j`` the mean over the task's trials of the return of the
            trial's episode ``j + 1``; and ``"success"`` likewise (fraction of trials whose episode ``j + 1``
            succeeded at any step) for families that report it.
        """
        trials = self.run_trials(tasks, [rollout_seed(seed, k, 0) for k in range(len(tasks))], episodes, steps + 1)
        n = len(tasks)
        out = {"return": trials.episode_returns().view(n, episodes, -1).mean(1).cpu()}
        success = trials.episode_success()
        if success is not None:
            out["success"] = success.float().view(n, episodes, -1).mean(1).cpu()
        return out

    # -- PPO ---------------------------------------------------------------------------------------------
    def advantages(self, trials: Trials) -> tuple[torch.Tensor, torch.Tensor]:
        """``(advantages, returns)``, ``[B, L]`` each: GAE over the whole trial (the trial is the episode the
        policy optimises; its value after the last step is 0) on scaled rewards, and ``advantages + values``."""
        adv = gae(trials.rewards * self.reward_scale, trials.values, self.discount, self.gae_lambda)
        return adv, adv + trials.values

    def evaluate_actions(self, trials: Trials, rows: torch.Tensor):
        """``(log_probs, values, entropy)`` ``[b, L]`` of trials ``rows`` recomputed with the current policy
        over their whole trials (the GRU state from zero, as when they were sampled)."""
        mean, log_std, value, _ = self.policy(trials.inputs[rows], self.policy.initial_state(len(rows)))
        entropy = (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)
        return log_prob(mean, log_std, trials.actions[rows]), value, entropy

    def meta_update(self, batch: TaskBatch, optimizer, lr: float, total_tasks: int) -> dict[str, float]:
        """Sample ``trials`` trials of each task of ``batch``, then ``epochs`` passes of PPO over them in
        ``minibatches`` minibatches (one Adam step each, gradients summed over the processes of a ``torchrun``
        run). Returns the iteration's figures: the return of the trials' first and last episodes."""
        indices, tasks = self.batch_tasks(batch)
        trials = self.run_trials(tasks, [rollout_seed(self.source.seed, i, 0) for i in indices], self.trials,
                                 self.inner_steps + 1)
        adv, returns = self.advantages(trials)
        moments = all_sum(torch.tensor([adv.numel(), adv.sum(), (adv * adv).sum()], dtype=torch.float64))
        count, mean = float(moments[0]), float(moments[1] / moments[0])
        std = math.sqrt(max(float(moments[2]) / count - mean * mean, 0.0))
        adv = (adv - mean) / (std + 1e-8)
        share = len(tasks) / total_tasks                       # this process's part of each minibatch's loss
        for group in optimizer.param_groups:
            group["lr"] = lr
        params = [p for p in self.parameters() if p.requires_grad]
        perm_gen = generator(self.source.seed, indices[0], 1)
        for _ in range(self.epochs):
            order = torch.randperm(trials.inputs.shape[0], generator=perm_gen)
            for rows in order.chunk(self.minibatches):
                logp, value, entropy = self.evaluate_actions(trials, rows)
                loss = (ppo_loss(logp, trials.log_probs[rows], adv[rows], self.clip_eps)
                        + self.value_coef * 0.5 * (value - returns[rows]).pow(2).mean()
                        - self.entropy_coef * entropy.mean()) * share
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for p in params:
                    if p.grad is not None:
                        all_sum(p.grad)
                nn.utils.clip_grad_norm_(params, self.max_grad_norm)
                optimizer.step()
        per_episode = trials.episode_returns().mean(0)
        metrics = {"return": float(per_episode[-1]), "return_first": float(per_episode[0]),
                   "loss": float(loss.detach()) / share}
        success = trials.episode_success()
        if success is not None:
            metrics["success"] = float(success[:, -1].float().mean())
        return all_mean_metrics(metrics, len(tasks), total_tasks)

    # -- the trainer's side ----------------------------------------------------------------------------
    def check_episode(self, episode: Episode, what: str = "the") -> None:
        """The policy is built for the family's sizes; nothing to check on a task item."""


@dataclass
class RL2Options:
    """The ``learner`` section of ``rl2``.

    Attributes:
        gru_hidden: GRU width.
        action_std: the policy's initial standard deviation.
        inner_steps: training trials last ``inner_steps + 1`` episodes (an RL² adaptation step is one episode).
        eval_inner_steps: scored trials last ``eval_inner_steps + 1`` episodes (``None``: as in training).
        trials: parallel trials per task in a training batch.
        discount, gae_lambda: of the advantages over a trial.
        clip_eps, ppo_epochs, minibatches: PPO's clipping range, passes per batch and minibatches per pass.
        value_coef, entropy_coef, max_grad_norm: PPO's loss weights and gradient-norm clip (CleanRL's values).
        reward_scale: multiplies rewards for the policy's input and for learning.
    """

    gru_hidden: int = 128
    action_std: float = 1.0
    inner_steps: int = 1
    eval_inner_steps: int | None = None
    trials: int = 10
    discount: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    ppo_epochs: int = 4
    minibatches: int = 4
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    max_grad_norm: float = 0.5
    reward_scale: float = 1.0

    def validate(self) -> None:
        for name in ("gru_hidden", "trials", "ppo_epochs", "minibatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"rl2 needs {name} >= 1, got {getattr(self, name)}")
        if self.inner_steps < 0 or (self.eval_inner_steps is not None and self.eval_inner_steps < 0):
            raise ValueError(f"inner_steps and eval_inner_steps (episodes of a trial after the first) must be "
                             f">= 0, got {self.inner_steps} and {self.eval_inner_steps}")
        if not 0 < self.discount <= 1 or not 0 <= self.gae_lambda <= 1 or not 0 < self.clip_eps < 1:
            raise ValueError(f"rl2 needs discount in (0, 1], gae_lambda in [0, 1] and clip_eps in (0, 1); got "
                             f"{self.discount}, {self.gae_lambda}, {self.clip_eps}")
        if not self.action_std > 0 or not self.reward_scale > 0 or not self.max_grad_norm > 0:
            raise ValueError(f"rl2 needs action_std, reward_scale and max_grad_norm > 0, got {self.action_std}, "
                             f"{self.reward_scale}, {self.max_grad_norm}")


@register_learner("rl2", options=RL2Options, tasks=("rl",), nets=())
def _build(options: RL2Options, context: BuildContext) -> RL2:
    family = context.family
    policy = GRUPolicy(family.obs_dim, family.act_dim, options.gru_hidden, options.action_std)
    return RL2(policy, family, inner_steps=options.inner_steps, trials=options.trials, discount=options.discount,
               gae_lambda=options.gae_lambda, clip_eps=options.clip_eps, epochs=options.ppo_epochs,
               minibatches=options.minibatches, value_coef=options.value_coef, entropy_coef=options.entropy_coef,
               max_grad_norm=options.max_grad_norm, reward_scale=options.reward_scale)
