"""The cost of the Bayesian learners: CPU seconds of one meta-step and of one test episode's prediction.

CPU time of this process (``time.process_time``, 1 thread), so a busy machine slows the wall clock but not the
figures much. Omniglot 5-way 1-shot episodes with 15 queries a class, Conv-4 (max-pool) as in the runs of
docs/guides/calibration.md: DKT's meta-step on a 60-way 1-shot training episode with 5 queries a class and its
prediction against the number of draws ``samples``; BMAML's meta-step (5-way, 1 SVGD step) and prediction (3
steps) against the number of particles, beside ProtoNet and MAML (BMAML with one particle is MAML's cost).

    python benchmarks/bayes_cost.py            # one markdown table
"""

from __future__ import annotations

import time

import torch

from fewshot.datasets.omniglot import load_omniglot
from fewshot.learners import BMAML, ProtoNet
from fewshot.learners.dkt import DKT
from fewshot.nets.conv4 import Conv4
from fewshot.tasks.sampler import ClassificationTasks

REPEATS = 5


def cpu_seconds(fn, repeats: int = REPEATS) -> float:
    fn()                                                   # warm-up
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) / repeats


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = load_omniglot("background", image_size=28)
    train = ClassificationTasks(data, ways=60, shots=1, queries=5, seed=0)[0]
    test = ClassificationTasks(data, ways=5, shots=1, queries=15, seed=1)[0]
    rows = []

    def step(learner, episode):
        def run():
            learner.zero_grad()
            loss, _ = learner.episode_loss(episode)
            loss.backward()
        return run

    def predict(learner, episode):
        def run():
            with torch.no_grad():
                learner.query_outputs(episode)
        return run

    proto = ProtoNet(Conv4(variant="pool"))
    rows.append(("ProtoNet", "-", cpu_seconds(step(proto, train)), cpu_seconds(predict(proto, test))))
    for samples in (16, 64, 256, 1024):
        dkt = DKT(Conv4(variant="pool"), samples=samples)
        rows.append(("DKT", f"{samples} samples", cpu_seconds(step(dkt, train)) if samples == 256 else None,
                     cpu_seconds(predict(dkt, test))))
    for particles in (1, 2, 5):
        bmaml = BMAML(Conv4(out_features=5, variant="pool"), inner_lr=0.4, inner_steps=1, particles=particles)
        bmaml.inner_steps = 1
        meta = cpu_seconds(step(bmaml, test), 3)
        bmaml.inner_steps = 3
        rows.append(("BMAML" if particles > 1 else "BMAML (= MAML)", f"{particles} particles", meta,
                     cpu_seconds(predict(bmaml, test), 3)))
    print("| learner | posterior | meta-step (CPU s) | prediction, one 5-way test episode (CPU s) |")
    print("|---|---|---|---|")
    for name, what, meta, pred in rows:
        print(f"| {name} | {what} | {'' if meta is None else f'{meta:.3f}'} | {pred:.4f} |")


if __name__ == "__main__":
    main()
