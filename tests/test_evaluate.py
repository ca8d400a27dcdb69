"""The evaluator: confidence intervals, paired (repeatable) episodes, sanity on trivial data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fewshot.datasets.labelled import LabelledData
from fewshot.evaluate import confidence_interval, evaluate
from fewshot.learners.gradient import MAML
from fewshot.learners.protonet import ProtoNet
from fewshot.nets import MLP, Conv4
from fewshot.tasks.sampler import ClassificationTasks
from fewshot.tasks.sinusoid import SinusoidTasks


@pytest.mark.parametrize("values", [[0.2, 0.4, 0.9, 1.0, 0.55], [3.0, 3.0, 3.0], list(np.linspace(-1, 7, 37))])
def test_confidence_interval_matches_numpy(values):
    mean, ci = confidence_interval(values)
    arr = np.asarray(values, dtype=np.float64)
    assert mean == pytest.approx(arr.mean(), rel=1e-12, abs=1e-12)
    assert ci == pytest.approx(1.96 * arr.std(ddof=1) / math.sqrt(len(arr)), rel=1e-12, abs=1e-12)


def test_confidence_interval_of_one_value_is_zero():
    assert confidence_interval([0.7]) == (pytest.approx(0.7), 0.0)


def separable_data(classes: int = 6, per_class: int = 8, dim: int = 10) -> LabelledData:
    """Class ``c``: ``10 * e_c`` plus noise of scale 0.1 - separable by any distance."""
    g = torch.Generator().manual_seed(0)
    centres = 10.0 * torch.eye(classes, dim)
    y = torch.arange(classes).repeat_interleave(per_class)
    x = centres[y] + 0.1 * torch.randn(len(y), dim, generator=g)
    names = tuple(f"a/c{c}" for c in range(classes))
    return LabelledData(x, y, names, tuple("a" for _ in names))


def test_protonet_identity_encoder_is_perfect_on_separable_data():
    learner = ProtoNet(nn.Flatten())
    tasks = ClassificationTasks(separable_data(), ways=5, shots=2, queries=3, seed=0)
    result = evaluate(learner, tasks, episodes=20)
    assert result.metric == "accuracy"
    assert result.mean == 1.0 and result.ci95 == 0.0
    assert result.values == (1.0,) * 20 and result.episodes == 20


def test_protonet_adapt_predict_agree_with_evaluate():
    learner = ProtoNet(nn.Flatten())
    ep = ClassificationTasks(separable_data(), ways=3, shots=1, queries=2, seed=4)[0]
    logits = learner.predict(learner.adapt(ep.support_x, ep.support_y), ep.query_x)
    assert logits.shape == (6, 3)
    assert torch.equal(logits.argmax(-1), ep.query_y)


def test_evaluate_is_repeatable_and_in_range():
    torch.manual_seed(0)
    learner = ProtoNet(Conv4(hidden=8))
    data = LabelledData(torch.randint(0, 256, (60, 1, 28, 28), dtype=torch.uint8),
                        torch.arange(6).repeat_interleave(10), tuple(f"a/c{i}" for i in range(6)), ("a",) * 6)
    tasks = ClassificationTasks(data, ways=3, shots=1, queries=3, seed=11)
    first, second = evaluate(learner, tasks, episodes=6), evaluate(learner, tasks, episodes=6)
    assert first == second
    assert all(0.0 <= v <= 1.0 for v in first.values) and 0.0 <= first.mean <= 1.0
    assert first.mean == pytest.approx(float(np.mean(first.values)), abs=1e-12)
    assert first.episodes == 6
    # a different episode stream gives other (paired-comparison) values
    other = evaluate(learner, ClassificationTasks(data, ways=3, shots=1, queries=3, seed=12), episodes=6)
    assert other.values != first.values


def test_evaluate_restores_training_mode_and_checks_episodes():
    learner = ProtoNet(nn.Flatten())
    tasks = ClassificationTasks(separable_data(), ways=2, shots=1, queries=1, num_episodes=3)
    learner.train()
    evaluate(learner, tasks, episodes=3)
    assert learner.training
    learner.eval()
    evaluate(learner, tasks, episodes=1)
    assert not learner.training
    with pytest.raises(ValueError, match="4"):
        evaluate(learner, tasks, episodes=4)
    with pytest.raises(ValueError):
        evaluate(learner, tasks, episodes=0)


def test_test_time_inner_steps_change_a_gradient_learner():
    torch.manual_seed(0)
    learner = MAML(MLP(1, (40, 40), 1), inner_lr=0.01, inner_steps=1, task="regression")
    tasks = SinusoidTasks(shots=10, queries=10, seed=5)
    zero = evaluate(learner, tasks, episodes=8, inner_steps=0)
    five = evaluate(learner, tasks, episodes=8, inner_steps=5)
    default = evaluate(learner, tasks, episodes=8)
    one = evaluate(learner, tasks, episodes=8, inner_steps=1)
    assert zero.metric == "mse"
    assert zero.values != five.values
    assert five.mean < zero.mean                  # gradient steps on the support set help on its queries
    assert default == one                         # None means the learner's own inner_steps
    # evaluating does not change the meta-parameters
    assert evaluate(learner, tasks, episodes=8, inner_steps=0) == zero
