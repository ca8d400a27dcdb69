"""Where a meta-RL iteration's time goes: env-steps/s of sampling and the phases of one MAML-RL iteration.

    python benchmarks/meta_rl_speed.py [--dataset nav2d] [--algo maml-trpo] [--threads 1] [--repeats 2]

Prints one JSON line per measurement, in wall seconds and in CPU seconds of the process (what it costs on a
machine shared with other jobs): ``env_steps_per_s`` of the environments alone (random actions) and with
the policy sampling them (one parameter dict for all tasks, and one per task as after adaptation, through
``vmap``), then the seconds of one meta-iteration of the recipe (``--algo``) split into sampling (before and
after adaptation, with the advantages and the inner steps), the outer objective and its gradient, the KL
Hessian-vector products of TRPO's conjugate gradient, and the rest (line search or ProMP's Adam steps).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from fewshot.config import resolve
from fewshot.rl.sampling import rollout_seed
from fewshot.runs import build_learner
from fewshot.tasks.episode import stack_episodes


def seconds(fn, repeats: int) -> tuple[float, float]:
    """The fastest of ``repeats`` calls: (wall seconds, CPU seconds of this process)."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="nav2d")
    parser.add_argument("--algo", default="maml-trpo")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = resolve({}, {"algo": args.algo, "dataset": args.dataset})
    learner = build_learner(config)
    source = config.domain.train_tasks(config)
    learner.training_tasks(source)
    tasks = [source.task(i) for i in range(config.meta_batch)]
    seeds = [rollout_seed(source.seed, i, 0) for i in range(config.meta_batch)]
    family, episodes = learner.family, config.trajectories
    steps = config.meta_batch * episodes * family.horizon

    def env_only():
        env = family.make(tasks, episodes, seeds)
        env.reset()
        for _ in range(family.horizon):
            env.step(torch.rand(env.batch, family.act_dim) * 0.2 - 0.1)

    theta = {k: v.detach() for k, v in learner.params().items()}
    for name, fn in (("environments", env_only),
                     ("policy, shared parameters", lambda: learner.sample(theta, tasks, seeds, episodes)),
                     ("policy, one parameter dict per task",
                      lambda: learner.sample([theta] * len(tasks), tasks, seeds, episodes))):
        wall, cpu = seconds(fn, args.repeats)
        print(json.dumps({"measure": f"sampling: {name}", "env_steps": steps, "seconds": round(wall, 3),
                          "cpu_seconds": round(cpu, 3), "env_steps_per_s": round(steps / wall),
                          "env_steps_per_cpu_s": round(steps / cpu)}))

    batch = stack_episodes([source[i] for i in range(config.meta_batch)])
    optimizer = torch.optim.Adam(learner.parameters(), lr=config.lr)
    phases = {"sampling (before and after adaptation)": seconds(lambda: learner.sample_meta_batch(batch), 1)}
    data = learner.sample_meta_batch(batch)
    params = [p for p in learner.policy.parameters() if p.requires_grad]
    if args.algo == "maml-trpo":
        phases["outer objective and its gradient"] = seconds(
            lambda: torch.autograd.grad(learner.surrogate(data, config.meta_batch, second_order=True)[0], params), 1)
        v = torch.randn(sum(p.numel() for p in params))

        def products():
            hessian = learner.kl_hessian(data, config.meta_batch)
            for _ in range(config.cg_iters + 1):
                hessian(v)
        phases[f"{config.cg_iters + 1} KL Hessian-vector products"] = seconds(products, 1)
    phases["one whole meta-iteration"] = seconds(
        lambda: learner.meta_update(batch, optimizer, lr=config.lr, total_tasks=config.meta_batch), 1)
    for name, (wall, cpu) in phases.items():
        print(json.dumps({"measure": f"{args.algo} {args.dataset}: {name}", "seconds": round(wall, 2),
                          "cpu_seconds": round(cpu, 2)}))

if __name__ == "__main__":
    main()
