"""A learner and a domain added from outside the library, as docs/guides/extending.md shows: each is one
registration, and then the command trains, scores and loads them like the library's own."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import cli
from fewshot import ClassificationTasks, LabelledData
from fewshot.domains import EpisodeDomain
from fewshot.learners import JointEmbeddingLearner
from fewshot.learners.protonet import prototypes
from fewshot.registry import DOMAINS, LEARNERS, register_domain, register_learner
from fewshot.tasks.seeding import generator


# -- the learner (docs/guides/extending.md, "Adding a learner") ---------------------------------------------
class CosinePrototypes(JointEmbeddingLearner):
    """Prototypes compared by cosine similarity times a learned scale."""

    def __init__(self, encoder: nn.Module, scale: float = 10.0):
        super().__init__()
        self.encoder, self.scale = encoder, nn.Parameter(torch.tensor(scale))

    def logits(self, support, labels, query):
        protos = prototypes(support, labels, int(labels.max()) + 1)
        return self.scale * F.normalize(query, dim=-1) @ F.normalize(protos, dim=-1).T


@dataclass
class CosineOptions:
    scale: float = 10.0

    def validate(self):
        if not self.scale > 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")


def build_cosine(options: CosineOptions, context) -> CosinePrototypes:
    return CosinePrototypes(context.net(), options.scale)


# -- the domain (docs/guides/extending.md, "Adding a domain") -----------------------------------------------
@dataclass
class BlobOptions:
    ways: int = 5
    shots: int = 1
    queries: int = 5
    dim: int = 8           # input width
    classes: int = 30      # classes in each of the train, validation and test parts


class Blobs(EpisodeDomain):
    """Gaussian blobs: each class a random centre in ``dim`` dimensions, 20 noisy points around it."""

    name = "blobs"
    options = BlobOptions
    nets = ("fp-mlp",)

    def part(self, config, index: int) -> LabelledData:
        g = generator(config.seed, 99, index)            # the train, validation and test parts differ
        centres = 3 * torch.randn(config.classes, config.dim, generator=g)
        y = torch.arange(config.classes).repeat_interleave(20)
        return LabelledData(centres[y] + torch.randn(len(y), config.dim, generator=g), y)

    def input_shape(self, config):
        return (config.dim,)

    def train_tasks(self, config):
        return ClassificationTasks(self.part(config, 0), config.ways, config.shots, config.queries, seed=0)

    def val_tasks(self, config):
        return ClassificationTasks(self.part(config, 1), config.ways, config.shots, config.queries, seed=1)

    def test_tasks(self, config, split=None, data_root=None, *, ways=None, shots=None, queries=None, seed=0,
                   args=None):
        return "blobs:test", ClassificationTasks(self.part(config, 2), ways or config.ways, shots or config.shots,
                                                 queries or config.queries, seed=seed)


@pytest.fixture(scope="module", autouse=True)
def plugins():
    register_learner("cosine-protonet", options=CosineOptions)(build_cosine)
    register_domain(Blobs())
    yield
    LEARNERS.remove("cosine-protonet")
    DOMAINS.remove("blobs")


def test_a_registered_learner_trains_and_scores_from_the_command(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = cli(["train", "--algo", "cosine-protonet", "--set", "scale=5.0", "--steps", "3", "--meta-batch",
                        "1", "--queries", "2", "--set", "val_every=3", "--set", "val_episodes=2", "--set",
                        "test_episodes=4", "--no-progress", "--threads", "1", "--out", run], capsys)
    assert code == 0, err
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["learner"] == {"algo": "cosine-protonet", "scale": 5.0}
    code, out, err = cli(["eval", run, "--episodes", "3", "--json", "--threads", "1"], capsys)
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["episodes"] == 3
    code, _, err = cli(["train", "--algo", "cosine-protonet", "--set", "scale=-1", "--out", tmp_path / "bad"], capsys)
    assert code == 2 and "scale must be > 0" in err


def test_a_registered_domain_trains_any_learner_and_scores_above_chance(tmp_path, capsys):
    run = tmp_path / "blobs"
    code, out, err = cli(["train", "--dataset", "blobs", "--algo", "protonet", "--set", "hidden=32", "--set",
                          "embedding_dim=16", "--steps", "30", "--meta-batch", "4", "--set", "val_every=30",
                          "--set", "val_episodes=20", "--set", "test_episodes=50", "--no-progress", "--threads", "1",
                          "--out", run], capsys)
    assert code == 0, err
    test = json.loads((run / "test.json").read_text())
    assert test["dataset"] == "blobs" and test["episodes"] == 50 and test["mean"] > 0.6   # chance: 0.2
    code, out, err = cli(["eval", run, "--ways", "3", "--episodes", "10", "--json", "--threads", "1"], capsys)
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["ways"] == 3
    code, _, err = cli(["train", "--dataset", "blobs", "--algo", "protonet", "--set", "image_size=28", "--out",
                        tmp_path / "bad"], capsys)
    assert code == 2 and "image_size does not apply to protonet on blobs" in err
