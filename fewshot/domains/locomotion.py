"""MuJoCo locomotion domains: ``cheetah-vel`` and ``cheetah-dir`` (:mod:`fewshot.rl.mujoco`), trained and scored
as every meta-RL domain is (:class:`~fewshot.domains.rl.RLDomain`): ``fewshot train --dataset cheetah-vel --algo
maml-trpo|promp|rl2|pretrained|oracle``, ``fewshot eval RUN --json``.

Recipes: the MAML paper's (Finn et al. 2017, appendix A.2: 20 trajectories per task, 40 tasks per meta-batch,
inner step 0.1, one inner step, TRPO with KL bound 0.01, horizon 200, policy of two hidden layers of 100) and
ProMP's (Rothfuss et al. 2019: the same sampling, clip 0.3, 5 outer Adam steps of 1e-3, hidden layers of 64);
RL² as in ProMP's comparison (a GRU policy trained by PPO, two-episode trials), reduced to what a CPU trains.
Needs the ``rl`` extra (``pip install 'fewshot[rl]'``).
"""

from __future__ import annotations

from fewshot.domains.rl import RLDomain
from fewshot.evaluate import confidence_interval
from fewshot.registry import register_domain
from fewshot.rl.family import TaskFamily
from fewshot.rl.mujoco import Cheetah

_FAMILIES: dict[tuple[str, int | None], TaskFamily] = {}

_MAML = dict(trajectories=20, meta_batch=40, inner_lr=0.1, inner_steps=1, eval_inner_steps=1, steps=500,
             policy_hidden=[100, 100], val_every=10, val_episodes=10, eval_tasks=40, log_every=1,
             checkpoint_every=5)
RECIPES = {"maml-trpo": {**_MAML, "max_kl": 0.01},
           "promp": {**_MAML, "lr": 0.001, "policy_hidden": [64, 64], "clip_eps": 0.3, "outer_steps": 5},
           "pretrained": {**_MAML, "lr": 0.01},
           "oracle": {**_MAML, "lr": 0.01},
           "rl2": dict(trajectories=4, meta_batch=10, trials=4, inner_steps=1, eval_inner_steps=1, lr=3e-4,
                       gru_hidden=128, steps=500, val_every=10, val_episodes=10, eval_tasks=40, log_every=1,
                       checkpoint_every=5)}


class CheetahDomain(RLDomain):
    """HalfCheetah with a task of kind ``kind`` (``vel``: target velocity, ``dir``: direction).

    Its results add, beside the base keys, ``gain``: per adaptation step ``j >= 1`` the mean ± 95 % CI over tasks
    of each task's return after ``j`` steps minus its return before adaptation (the paired difference, much
    tighter than the two figures' own intervals, which hold the spread between velocities), and ``per_task``:
    each held-out task's returns ``[tasks][steps + 1]`` (runs scored with the same ``--seed`` share the tasks,
    so two methods can be compared task by task).
    """

    kind: str
    recipes = RECIPES

    def score_tasks(self, learner, config, tasks, steps, seed):
        self._scores = super().score_tasks(learner, config, tasks, steps, seed)      # kept for result()
        return self._scores

    def result(self, learner, config, tasks, steps, seed):
        out = super().result(learner, config, tasks, steps, seed)
        returns = self._scores["return"]
        out["gain"] = [dict(zip(("mean", "ci95"), confidence_interval((returns[:, j] - returns[:, 0]).tolist())),
                            steps=j) for j in range(1, steps + 1)]
        out["per_task"] = returns.tolist()
        return out

    def family(self, config) -> TaskFamily:
        """The run's family, built once per process (its simulators are reused by every batch)."""
        key = (self.name, config.horizon)
        if key not in _FAMILIES:
            _FAMILIES[key] = Cheetah(self.kind) if config.horizon is None else Cheetah(self.kind, config.horizon)
        return _FAMILIES[key]


class CheetahVel(CheetahDomain):
    """``cheetah-vel``: run at a velocity drawn uniformly from [0, 2]."""

    name, kind = "cheetah-vel", "vel"


class CheetahDir(CheetahDomain):
    """``cheetah-dir``: run forward or backward."""

    name, kind = "cheetah-dir", "dir"


register_domain(CheetahVel())
register_domain(CheetahDir())
