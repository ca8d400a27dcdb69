"""Test-time support augmentation: the support set handed to the learner, and its effect on ProtoNet."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewshot.learners import ProtoNet
from fewshot.learners.augmented import SupportAugmented
from fewshot.learners.base import Learner
from fewshot.tasks.augment import random_affine
from fewshot.tasks.episode import Episode
from fewshot.tasks.seeding import generator


def episode(seed: int, ways: int = 3, size: int = 12) -> Episode:
    g = torch.Generator().manual_seed(seed)
    image = lambda n: (torch.rand(n, 1, size, size, generator=g) > 0.7).float()   # noqa: E731 - strokes on blank
    return Episode(image(ways), torch.arange(ways), image(2 * ways), torch.arange(ways).repeat(2))


class Recorder(Learner):
    """Remembers the support set it was adapted on; predicts uniform logits."""

    def adapt(self, support_x, support_y, steps=None):
        self.seen = (support_x, support_y)
        return support_y.max() + 1

    def predict(self, ways, query_x):
        return torch.zeros(query_x.shape[0], int(ways))


def test_the_support_set_is_followed_by_its_distorted_copies_with_the_same_labels():
    e, recorder = episode(0), Recorder()
    SupportAugmented(recorder, copies=2, seed=5).query_outputs(e)
    x, y = recorder.seen
    assert x.shape == (9, 1, 12, 12) and torch.equal(y, torch.tensor([0, 1, 2] * 3))
    assert torch.equal(x[:3], e.support_x)                                  # the originals come first, untouched
    expected = random_affine(e.support_x.repeat(2, 1, 1, 1), generator(5))
    torch.testing.assert_close(x[3:], expected, rtol=0, atol=0)
    assert not torch.allclose(x[3:6], x[6:9]) and not torch.allclose(x[3:6], e.support_x)


def test_scores_do_not_depend_on_the_order_episodes_are_scored_in():
    torch.manual_seed(0)
    learner = SupportAugmented(ProtoNet(nn.Sequential(nn.Flatten(), nn.Linear(144, 8))), copies=3)
    a, b = episode(1), episode(2)
    first = learner.query_outputs(a)
    learner.query_outputs(b)
    torch.testing.assert_close(learner.query_outputs(a), first, rtol=0, atol=0)


def test_protonet_prototypes_average_each_image_with_its_distorted_copies():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(144, 8)).double()
    e = episode(3)
    e = Episode(e.support_x.double(), e.support_y, e.query_x.double(), e.query_y)
    logits = SupportAugmented(ProtoNet(encoder), copies=4, seed=1).query_outputs(e)
    views = torch.cat([e.support_x, random_affine(e.support_x.repeat(4, 1, 1, 1), generator(1))])
    prototypes = encoder(views).view(5, 3, 8).mean(0)                         # [ways, D]: 1 original + 4 copies
    expected = -(encoder(e.query_x)[:, None] - prototypes[None]).pow(2).sum(-1)
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)
    plain = ProtoNet(encoder).query_outputs(e)
    assert not torch.allclose(logits, plain)


def test_at_least_one_copy():
    with pytest.raises(ValueError, match="at least one distorted copy"):
        SupportAugmented(Recorder(), copies=0)
