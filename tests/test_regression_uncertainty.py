"""Regression intervals and ranking: the normal and mixture quantiles against a dense numerical CDF, coverage and
enrichment by hand, BMAML as a regression learner (its mixture NLL written out, one particle against MAML), and
the evaluator's coverage keys."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fewshot import evaluate
from fewshot.learners import BMAML, MAML
from fewshot.tasks.episode import Episode
from fewshot.tasks.sinusoid import SinusoidTasks
from fewshot.uncertainty import (PredictiveInterval, coverage_summary, enrichment, gaussian_interval,
                                 interval_statistics, mixture_interval, normal_quantile, task_mean_enrichment)


def test_normal_quantile_and_gaussian_interval():
    assert normal_quantile(0.95) == pytest.approx(1.959963984540054, abs=1e-12)
    assert normal_quantile(0.5) == pytest.approx(0.6744897501960817, abs=1e-12)
    interval = gaussian_interval(torch.tensor([[1.0]]), torch.tensor([[2.0]]))
    assert float(interval.lower) == pytest.approx(1 - 2 * 1.959964, abs=1e-5)
    with pytest.raises(ValueError, match="level"):
        normal_quantile(1.0)


def test_mixture_quantiles_match_a_dense_numerical_cdf():
    g = torch.Generator().manual_seed(0)
    means = 3 * torch.randn(4, 3, 1, generator=g, dtype=torch.float64)
    sigma = 0.4
    interval = mixture_interval(means, sigma, 0.9)
    grid = np.linspace(-20, 20, 400001)
    for q in range(3):
        mus = means[:, q, 0].numpy()
        pdf = np.mean([np.exp(-(grid - m) ** 2 / (2 * sigma ** 2)) / (sigma * math.sqrt(2 * math.pi)) for m in mus],
                      axis=0)
        cdf = np.cumsum(pdf) * (grid[1] - grid[0])
        assert float(interval.lower[q, 0]) == pytest.approx(grid[np.searchsorted(cdf, 0.05)], abs=1e-3)
        assert float(interval.upper[q, 0]) == pytest.approx(grid[np.searchsorted(cdf, 0.95)], abs=1e-3)
        assert float(interval.mean[q, 0]) == pytest.approx(mus.mean())


def test_coverage_and_width_by_hand():
    interval = PredictiveInterval(torch.zeros(4, 1), torch.tensor([[-1.0], [0.0], [0.0], [-2.0]]),
                                  torch.tensor([[1.0], [1.0], [3.0], [2.0]]))
    targets = torch.tensor([[0.5], [-0.1], [3.0], [2.5]])
    stats = interval_statistics(interval, targets) + interval_statistics(interval, targets)
    assert coverage_summary(stats) == {"coverage": 0.5, "interval_width": 2.5}


def test_enrichment_by_hand():
    labels = torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])     # 2 of 20 active
    scores = torch.arange(20.0)                     # the top 10 % (2 molecules) are positions 19 and 18: inactive
    assert enrichment(scores, labels) == 0
    assert enrichment(-scores, labels) == pytest.approx(0.5 / 0.1)   # positions 0 and 1: one active
    assert math.isnan(enrichment(scores, torch.zeros(20)))
    assert task_mean_enrichment({"a": [1.0, 3.0], "b": [math.nan, 4.0]}) == pytest.approx(3.0)


def regressor(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1)).double()


def episode() -> Episode:
    e = SinusoidTasks(5, 7, seed=3)[0]
    return Episode(*(t.double() for t in (e.support_x, e.support_y, e.query_x, e.query_y)))


def test_bmaml_regression_loss_is_the_query_nll_of_the_mixture():
    bm = BMAML(regressor(), inner_lr=0.01, inner_steps=2, particles=3, task="regression", noise=0.5).double()
    e = episode()
    loss, metrics = bm.episode_loss(e)
    with torch.no_grad():
        preds = bm.particle_outputs(bm.adapt(e.support_x, e.support_y), e.query_x).numpy()     # [M, Q, 1]
    y, s = e.query_y.numpy(), float(bm.noise.detach())
    density = np.exp(-(y[None] - preds) ** 2 / (2 * s * s)) / (s * math.sqrt(2 * math.pi))
    assert float(loss.detach()) == pytest.approx(float(-np.log(density.mean(0)).mean()), rel=1e-9)
    assert metrics["mse"] == pytest.approx(float(((preds.mean(0) - y) ** 2).mean()), rel=1e-9)
    loss.backward()
    assert bm.log_noise.grad is not None and bm.log_noise.grad != 0


def test_one_particle_bmaml_predicts_as_maml_and_its_interval_is_normal():
    e = episode()
    bm = BMAML(regressor(), inner_lr=0.01, inner_steps=3, particles=1, task="regression", noise=0.3).double()
    maml = MAML(regressor(), inner_lr=0.01, inner_steps=3, task="regression").double()
    with torch.no_grad():
        adapted = bm.adapt(e.support_x, e.support_y)
        torch.testing.assert_close(bm.predict(adapted, e.query_x), maml.query_outputs(e))
        interval = bm.predict_interval(adapted, e.query_x)
    torch.testing.assert_close(interval.upper - interval.mean, torch.full_like(interval.mean, 1.959964 * 0.3),
                               rtol=0, atol=1e-6)


def test_evaluator_adds_coverage_for_interval_learners_only():
    tasks = SinusoidTasks(5, 10, seed=4)
    bm = BMAML(regressor().float(), inner_lr=0.01, inner_steps=1, particles=2, task="regression", noise=1.0)
    res = evaluate(bm, tasks, 20)
    assert set(res.uncertainty) == {"coverage", "interval_width"} and 0 <= res.uncertainty["coverage"] <= 1
    assert evaluate(MAML(regressor().float(), 0.01, 1, task="regression"), tasks, 20).uncertainty is None
    fixed = BMAML(regressor().float(), 0.01, 1, particles=2, task="regression", noise=1.0, learn_noise=False)
    assert "log_noise" not in dict(fixed.named_parameters())
    with pytest.raises(ValueError, match="noise"):
        BMAML(regressor(), particles=2, task="regression", noise=0.0)
