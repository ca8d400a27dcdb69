"""A prototypical network on your own data and your own encoder (any module mapping [B, ...] to [B, D]).

    python examples/own_data_protonet.py --out runs/example-protonet

Snell et al.'s Omniglot recipe, as `fewshot train` runs it: 60-way training episodes with 5 queries per class,
1,500 steps of Adam 0.001, a 4-block 64-filter CNN.
"""

import argparse
from pathlib import Path

import torch
from torch import nn

import fewshot
from _omniglot_folder import ImageFiles, unpack

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=1500)
parser.add_argument("--episodes", type=int, default=600)
parser.add_argument("--out", default="runs/example-protonet")
args = parser.parse_args()

folders = unpack(Path(args.out).parent / "example-images")
train = fewshot.ClassificationTasks(ImageFiles(folders["train"]), ways=60, shots=1, queries=5, seed=0)
val = fewshot.ClassificationTasks(ImageFiles(folders["val"]), ways=5, shots=1, queries=15, seed=1)
test = fewshot.ClassificationTasks(ImageFiles(folders["test"]), ways=5, shots=1, queries=15, seed=2)


def block(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2))


torch.manual_seed(0)
encoder = nn.Sequential(block(1, 64), block(64, 64), block(64, 64), block(64, 64), nn.Flatten())   # [B, 64]
learner = fewshot.ProtoNet(encoder)
result = fewshot.fit(learner, train, val_tasks=val, steps=args.steps, meta_batch=1, lr=1e-3, out=args.out,
                     val_every=max(1, args.steps // 6), val_episodes=200)
print("trained", result.step, "steps; best validation accuracy", result.best_val)

best = fewshot.load(args.out, learner=fewshot.ProtoNet(encoder))
print("test accuracy:", fewshot.evaluate(best, test, episodes=args.episodes))

# new inputs: adapt once to a support set, then classify any queries
episode = test[0]
best.fit_support(episode.support_x, episode.support_y)
print("predicted classes of the first query of each class:", best(episode.query_x[::15]).argmax(dim=1).tolist())
