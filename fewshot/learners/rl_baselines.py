"""The meta-RL baselines every result is shown beside (the MAML paper's section 5.3 comparison).

``pretrained``: one policy trained on the whole task distribution by vanilla policy gradient (REINFORCE with
the linear baseline and per-task normalised advantages; the trainer's Adam step), adapted at test by the same
policy-gradient steps as MAML-RL: the floor a meta-learned initialisation must beat.

``oracle``: the same, with the task's parameters (:meth:`~fewshot.rl.family.TaskFamily.task_features`, the
nav2d goal) appended to every observation: the ceiling, a policy that needs no adaptation.
"""

from __future__ import annotations

from dataclasses import dataclass

from fewshot.registry import BuildContext, register_learner
from fewshot.rl.learner import RLLearner
from fewshot.rl.sampling import rollout_seed
from fewshot.tasks.episode import TaskBatch


@dataclass
class PolicyGradientOptions:
    """The ``learner`` section shared by the meta-RL learners.

    Attributes:
        inner_lr, inner_steps: the policy-gradient adaptation step size and steps (meta-training; the baselines
            take them at test only).
        eval_inner_steps: adaptation steps when scoring (``None``: ``inner_steps``); results show every step
            from 0 to it.
        discount, gae_lambda: of the advantages (MAML-RL's 0.99 and 1).
    """

    inner_lr: float = 0.1
    inner_steps: int = 1
    eval_inner_steps: int | None = None
    discount: float = 0.99
    gae_lambda: float = 1.0

    def validate(self) -> None:
        if not self.inner_lr > 0:
            raise ValueError(f"inner_lr must be > 0, got {self.inner_lr}")
        if self.inner_steps < 0 or (self.eval_inner_steps is not None and self.eval_inner_steps < 0):
            raise ValueError(f"inner_steps and eval_inner_steps must be >= 0, got {self.inner_steps} and "
                             f"{self.eval_inner_steps}")
        if not 0 < self.discount <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError(f"discount must be in (0, 1] and gae_lambda in [0, 1], got {self.discount} and "
                             f"{self.gae_lambda}")


class PolicyGradient(RLLearner):
    """A policy trained by REINFORCE on the tasks of each batch (``oracle=True``: seeing the task)."""

    def meta_backward(self, batch: TaskBatch, total_tasks: int | None = None) -> dict[str, float]:
        """Sample each task's trajectories with the current policy and accumulate the REINFORCE gradient
        (each task's loss divided by ``total_tasks``) into ``.grad``."""
        total = total_tasks or batch.num_tasks
        indices, tasks = self.batch_tasks(batch)
        theta = {k: v.detach() for k, v in self.params().items()}
        traj = self.sample(theta, tasks, [rollout_seed(self.source.seed, i, 0) for i in indices],
                           self.source.trajectories)
        adv, feats = self.task_advantages(traj), self.features(tasks)
        params, loss = self.params(), 0.0
        for t in range(len(tasks)):
            task_loss = self.inner_loss(params, traj.task(t), adv[t], None if feats is None else feats[t]) / total
            task_loss.backward()
            loss += float(task_loss.detach())
        metrics = {"loss": loss * total / len(tasks), "return": float(traj.task_returns().mean())}
        success = traj.task_success()
        if success is not None:
            metrics["success"] = float(success.mean())
        return metrics


def _build(oracle: bool):
    def build(options: PolicyGradientOptions, context: BuildContext) -> PolicyGradient:
        family = context.family
        return PolicyGradient(context.net(out_features=family.act_dim), family, inner_lr=options.inner_lr,
                              inner_steps=options.inner_steps, discount=options.discount,
                              gae_lambda=options.gae_lambda, oracle=oracle)
    return build


register_learner("pretrained", options=PolicyGradientOptions, tasks=("rl",))(_build(False))
register_learner("oracle", options=PolicyGradientOptions, tasks=("rl",))(_build(True))
