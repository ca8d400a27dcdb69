"""MAML on your own data and your own model: a Dataset of image files and a small CNN with nn.BatchNorm2d.

    python examples/own_data_maml.py --out runs/example-maml

Finn et al.'s Omniglot recipe, as `fewshot train --algo maml` runs it: a 4-block 64-filter CNN with stride-2
convolutions, one inner step of 0.4 (three at test time), 32 tasks a step, Adam 0.001.

Run it twice with the same --out: the second run resumes from the last checkpoint.
"""

import argparse
from pathlib import Path

import torch
from torch import nn

import fewshot
from _omniglot_folder import ImageFiles, unpack

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=1000)
parser.add_argument("--episodes", type=int, default=600)
parser.add_argument("--out", default="runs/example-maml")
args = parser.parse_args()

folders = unpack(Path(args.out).parent / "example-images")
train, val, test = (fewshot.ClassificationTasks(ImageFiles(folders[s]), ways=5, shots=1, queries=15, seed=seed)
                    for s, seed in (("train", 0), ("val", 1), ("test", 2)))


def block(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


torch.manual_seed(0)
model = nn.Sequential(block(1, 64), block(64, 64), block(64, 64), block(64, 64),    # 28 -> 2 pixels a side
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 5))
learner = fewshot.MAML(model, inner_lr=0.4, inner_steps=1)
result = fewshot.fit(learner, train, val_tasks=val, steps=args.steps, meta_batch=32, lr=1e-3, out=args.out,
                     val_every=max(1, args.steps // 4), val_episodes=200, val_inner_steps=3)
print("trained", result.step, "steps; best validation accuracy", result.best_val)

best = fewshot.load(args.out, learner=fewshot.MAML(model, inner_lr=0.4, inner_steps=1))
print("test accuracy (3 inner steps):", fewshot.evaluate(best, test, episodes=args.episodes, inner_steps=3))
