"""Acquisition functions against hand-computed values, and the sources of their uncertainty."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fewshot.drug.acquisition import (Moments, _embeds_each_example, acquisition_scores, bootstrap_support,
                                      expected_improvement, forest_moments, greedy, learner_moments, top, ucb)
from fewshot.learners.ensemble import Ensemble
from fewshot.learners.protonet import ProtoNet
from fewshot.tasks.seeding import generator


def _m(mean, std):
    return Moments(torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64))


def test_greedy_and_ucb_by_hand():
    m = _m([0.2, 0.5, 0.9], [0.1, 0.0, 0.05])
    assert greedy(m).tolist() == [0.2, 0.5, 0.9]
    assert torch.allclose(ucb(m, 2.0), torch.tensor([0.4, 0.5, 1.0], dtype=torch.float64))
    assert top(ucb(m, 2.0), 2).tolist() == [2, 1]
    assert top(ucb(m, 30.0), 1).tolist() == [0]          # enough weight on the spread: the uncertain one


def test_expected_improvement_by_hand():
    # mean 0.5, std 0.1, best 0.4: z = 1, EI = 0.1 * Phi(1) + 0.1 * phi(1) = 0.1 * 0.8413447 + 0.1 * 0.2419707
    # mean 0.3, std 0.2, best 0.4: z = -0.5, EI = -0.1 * Phi(-0.5) + 0.2 * phi(0.5) = -0.0308538 + 0.0704131
    # std 0: max(mean - best, 0)
    ei = expected_improvement(_m([0.5, 0.3, 0.5, 0.3], [0.1, 0.2, 0.0, 0.0]), best=0.4)
    assert ei.tolist() == pytest.approx([0.1083315, 0.0395593, 0.1, 0.0], abs=1e-6)


def test_expected_improvement_against_monte_carlo():
    g = torch.Generator().manual_seed(0)
    m = _m([0.35, 0.7], [0.15, 0.05])
    f = m.mean + m.std * torch.randn(400_000, 2, generator=g, dtype=torch.float64)
    assert torch.allclose(expected_improvement(m, 0.6), (f - 0.6).clamp(min=0).mean(0), atol=1e-3)


def test_random_scores_are_seeded_and_unknown_names_refused():
    m = _m([0.1] * 5, [0.0] * 5)
    a = acquisition_scores("random", m, 0.0, generator=generator(1, 2))
    assert torch.equal(a, acquisition_scores("random", m, 0.0, generator=generator(1, 2)))
    with pytest.raises(ValueError, match="unknown acquisition 'thompson'; choose one of greedy, ucb, ei, random"):
        acquisition_scores("thompson", m, 0.0)
    with pytest.raises(ValueError, match="cannot pick 6 of 5"):
        top(a, 6)


def test_ties_go_to_the_earlier_candidate():
    assert top(torch.tensor([0.5, 0.7, 0.7, 0.1]), 3).tolist() == [1, 2, 0]


def test_bootstrap_keeps_each_class_within_itself():
    y = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0])
    for k in range(5):
        idx = bootstrap_support(y, generator(0, k))
        assert len(idx) == 8 and y[idx].sum() == 3
        assert set(idx[y[idx] == 1].tolist()) <= {0, 1, 2}


def test_forest_moments_are_the_trees_mean_and_spread():
    pytest.importorskip("sklearn")
    from sklearn.ensemble import RandomForestClassifier

    g = torch.Generator().manual_seed(0)
    x = (torch.rand(40, 12, generator=g) > 0.5).float()
    y = (x[:, 0] + x[:, 1] > 1).long()
    forest = RandomForestClassifier(n_estimators=15, random_state=0).fit(x.numpy(), y.numpy())
    m = forest_moments(forest, x[:10])
    assert torch.allclose(m.mean, torch.from_numpy(forest.predict_proba(x[:10].numpy())[:, 1]))
    per_tree = torch.from_numpy(np.stack([t.predict_proba(x[:10].numpy())[:, 1] for t in forest.estimators_]))
    assert torch.allclose(m.std, per_tree.std(0, correction=0).double())


def _protonet(seed: int) -> ProtoNet:
    torch.manual_seed(seed)
    return ProtoNet(torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)))


def test_bootstrap_moments_of_a_deterministic_learner():
    g = torch.Generator().manual_seed(1)
    sx, sy, qx = torch.randn(8, 6, generator=g), torch.tensor([1, 1, 1, 0, 0, 0, 0, 0]), torch.randn(5, 6, generator=g)
    net = _protonet(0)
    m = learner_moments(net, sx, sy, qx, resamples=8, generator=generator(0))
    with torch.no_grad():
        p = torch.softmax(net.predict(net.adapt(sx, sy), qx).double(), 1)[:, 1]
    assert torch.allclose(m.mean, p)
    draws = []
    g2 = generator(0)
    for _ in range(8):                          # the same resamples by hand
        idx = bootstrap_support(sy, g2)
        with torch.no_grad():
            draws.append(torch.softmax(net.predict(net.adapt(sx[idx], sy[idx]), qx).double(), 1)[:, 1])
    assert torch.allclose(m.std, torch.stack(draws).std(0, correction=0))
    assert (m.std > 0).all()
    assert _embeds_each_example(net)   # m came by one embedding for all resamples; the loop above adapts to each


def test_ensemble_moments_are_its_prediction_and_the_members_spread():
    g = torch.Generator().manual_seed(2)
    sx, sy, qx = torch.randn(6, 6, generator=g), torch.tensor([1, 1, 0, 0, 0, 0]), torch.randn(4, 6, generator=g)
    ensemble = Ensemble([_protonet(0), _protonet(1), _protonet(2)])
    m = learner_moments(ensemble, sx, sy, qx)
    with torch.no_grad():
        p = ensemble.predict(ensemble.adapt(sx, sy), qx).exp()[:, 1].double()
        members = torch.stack([torch.softmax(k.predict(k.adapt(sx, sy), qx), 1)[:, 1] for k in ensemble.members])
    assert torch.allclose(m.mean, p, atol=1e-6)
    assert torch.allclose(m.std, members.double().std(0, correction=0), atol=1e-6)
    assert math.isfinite(float(m.std.sum()))


def test_a_learner_with_a_posterior_gives_its_active_latent():
    class WithPosterior(ProtoNet):      # the shape of DKT's latent(): mean and std [Q, classes]
        def latent(self, adapted, query_x):
            q = len(query_x)
            return torch.tensor([[0.1, 0.3]]).repeat(q, 1), torch.tensor([[0.5, 0.2]]).repeat(q, 1)

    net = WithPosterior(torch.nn.Linear(6, 4))
    m = learner_moments(net, torch.randn(4, 6), torch.tensor([1, 1, 0, 0]), torch.randn(3, 6))
    assert torch.allclose(m.mean, torch.full((3,), 0.3, dtype=torch.float64))
    assert torch.allclose(m.std, torch.full((3,), 0.2, dtype=torch.float64))


def test_dkt_posterior_feeds_the_acquisitions():
    pytest.importorskip("gpytorch")
    from fewshot.learners.dkt import DKT

    torch.manual_seed(0)
    dkt = DKT(torch.nn.Linear(6, 4))
    g = torch.Generator().manual_seed(3)
    sx, sy, qx = torch.randn(6, 6, generator=g), torch.tensor([1, 1, 1, 0, 0, 0]), torch.randn(5, 6, generator=g)
    m = learner_moments(dkt, sx, sy, qx)
    dkt.eval()
    with torch.no_grad():
        mean, std = dkt.latent(dkt.adapt(sx, sy), qx)
    assert torch.allclose(m.mean, mean[:, 1].double()) and torch.allclose(m.std, std[:, 1].double())
    assert (m.std > 0).all()
