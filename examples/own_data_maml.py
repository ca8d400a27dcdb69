"""MAML on your own data and your own model: a Dataset of image files and a small CNN with nn.BatchNorm2d.

    python examples/own_data_maml.py --steps 600 --out runs/example-maml

Run it twice with the same --out: the second run resumes from the last checkpoint.
"""

import argparse
from pathlib import Path

import torch
from torch import nn

import fewshot
from _omniglot_folder import ImageFiles, unpack

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=600)
parser.add_argument("--episodes", type=int, default=600)
parser.add_argument("--out", default="runs/example-maml")
args = parser.parse_args()

folders = unpack(Path(args.out).parent / "example-images")
train, val, test = (fewshot.ClassificationTasks(ImageFiles(folders[s]), ways=5, shots=1, queries=15, seed=seed)
                    for s, seed in (("train", 0), ("val", 1), ("test", 2)))


def block(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2))


torch.manual_seed(0)
model = nn.Sequential(block(1, 32), block(32, 32), block(32, 32), block(32, 32), nn.Flatten(), nn.Linear(32, 5))
learner = fewshot.MAML(model, inner_lr=0.4, inner_steps=1)
result = fewshot.fit(learner, train, val_tasks=val, steps=args.steps, meta_batch=16, lr=1e-3, out=args.out,
                     val_every=max(1, args.steps // 4), val_episodes=100)
print("trained", result.step, "steps; best validation accuracy", result.best_val)

best = fewshot.load(args.out, learner=fewshot.MAML(model, inner_lr=0.4, inner_steps=1))
print("test accuracy (3 inner steps):", fewshot.evaluate(best, test, episodes=args.episodes, inner_steps=3))
