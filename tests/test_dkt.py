"""Deep Kernel Transfer: the GP's marginal likelihood and posterior against the closed form (a Cholesky factor of
``K + sigma^2 I``), the class probabilities against the two-class closed form and a joint Monte Carlo, the
batched meta-loss against task-by-task, training that improves, and runs through the command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("gpytorch")

from fewshot.learners.dkt import DKT, DKTOptions, class_log_probs  # noqa: E402
from fewshot.tasks.episode import Episode, TaskBatch  # noqa: E402
from fewshot.tasks.sinusoid import SinusoidTasks  # noqa: E402

from conftest import cli  # noqa: E402

DIM = 3


ALPHA, BETA = 1.6, 0.7       # the inverse-gamma prior of the per-task scale in the task_scale tests


def learner(kernel: str = "rbf", task: str = "regression", objective: str = "marginal",
            task_scale: bool = False) -> DKT:
    torch.manual_seed(0)
    dkt = DKT(nn.Sequential(nn.Linear(DIM, 8), nn.Tanh(), nn.Linear(8, 4)), kernel, task,
              objective=objective, task_scale=task_scale).double()
    dkt.kernel.outputscale = 1.7
    dkt.likelihood.noise = 0.3
    if task_scale:
        with torch.no_grad():
            dkt.raw_scale_prior.copy_(torch.tensor([ALPHA, BETA], dtype=torch.float64).expm1().log())
    if kernel == "rbf":
        dkt.kernel.base_kernel.lengthscale = 0.8
    else:
        dkt.kernel.base_kernel.variance = 1.3
    return dkt


def gram(dkt: DKT, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The kernel written out: ``s exp(-|a - b|^2 / (2 l^2))``, ``s v <a, b>`` or ``s v <a/|a|, b/|b|>``."""
    s = float(dkt.kernel.outputscale.detach())
    if dkt.kernel_name == "rbf":
        ell = float(dkt.kernel.base_kernel.lengthscale.detach())
        return s * torch.exp(-torch.cdist(a, b).pow(2) / (2 * ell ** 2))
    v = float(dkt.kernel.base_kernel.variance.detach())
    if dkt.kernel_name == "cosine":
        a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    return s * v * a @ b.T


@pytest.mark.parametrize("kernel", ["rbf", "linear", "cosine"])
def test_marginal_likelihood_matches_the_cholesky_closed_form(kernel):
    dkt = learner(kernel)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(7, 4, generator=g, dtype=torch.float64)
    t = torch.randn(2, 7, generator=g, dtype=torch.float64)
    sigma2 = float(dkt.noise.detach())
    factor = torch.linalg.cholesky(gram(dkt, z, z) + sigma2 * torch.eye(7, dtype=torch.float64))
    expected = []
    for row in t:
        alpha = torch.cholesky_solve(row[:, None], factor)[:, 0]
        logp = -0.5 * row @ alpha - factor.diagonal().log().sum() - 0.5 * 7 * math.log(2 * math.pi)
        expected.append(logp / 7)
    torch.testing.assert_close(dkt.marginal_log_likelihood(z, t).detach(), torch.stack(expected), rtol=1e-9,
                               atol=1e-9)


@pytest.mark.parametrize("kernel", ["rbf", "linear", "cosine"])
def test_posterior_matches_the_closed_form(kernel):
    dkt = learner(kernel)
    g = torch.Generator().manual_seed(2)
    zs, zq = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    t = torch.randn(3, 6, generator=g, dtype=torch.float64)
    a = gram(dkt, zs, zs) + float(dkt.noise.detach()) * torch.eye(6, dtype=torch.float64)
    cross = gram(dkt, zs, zq)                                                  # [S, Q]
    mean = (cross.T @ torch.linalg.solve(a, t.T)).T                           # [outputs, Q]
    var = gram(dkt, zq, zq).diagonal() - (cross * torch.linalg.solve(a, cross)).sum(0)
    got_mean, got_var = dkt.posterior(zs, t, zq)
    torch.testing.assert_close(got_mean.detach(), mean, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(got_var.detach(), var.expand(3, -1), rtol=1e-6, atol=1e-7)


def test_regression_interval_is_the_predictive_normal_with_the_noise():
    dkt = learner("rbf").eval()
    g = torch.Generator().manual_seed(3)
    sx, sy = torch.randn(5, DIM, generator=g, dtype=torch.float64), torch.randn(5, 1, generator=g, dtype=torch.float64)
    qx = torch.randn(4, DIM, generator=g, dtype=torch.float64)
    with torch.no_grad():
        adapted = dkt.adapt(sx, sy)
        z = dkt.embed(torch.cat([sx, qx]))
        mean, var = dkt.posterior(z[:5], sy.T, z[5:])
        interval = dkt.predict_interval(adapted, qx)
        torch.testing.assert_close(dkt.predict(adapted, qx), mean.T)
    half = 1.959963984540054 * (var.T + float(dkt.noise.detach())).sqrt()
    torch.testing.assert_close(interval.upper - interval.mean, half)
    torch.testing.assert_close(interval.mean - interval.lower, half)


def test_predictive_objective_is_the_query_nll_under_the_posterior_predictive():
    """``objective="predictive"``: the meta-loss is the mean over tasks and query points of minus the log density of
    each query target under ``N(mu, s^2 + sigma^2)`` given the support, written out with a linear solve."""
    dkt = learner("linear", objective="predictive")
    g = torch.Generator().manual_seed(6)
    sx, qx = torch.randn(2, 5, DIM, generator=g, dtype=torch.float64), torch.randn(2, 4, DIM, generator=g,
                                                                                  dtype=torch.float64)
    # targets the learner holds in the default dtype (float32): the same values here
    sy, qy = (torch.randn(2, n, 1, generator=g).double() for n in (5, 4))
    sigma2 = float(dkt.noise.detach())
    expected = []
    with torch.no_grad():
        for t in range(2):
            z = dkt.embed(torch.cat([sx[t], qx[t]]))
            zs, zq = z[:5], z[5:]
            a = gram(dkt, zs, zs) + sigma2 * torch.eye(5, dtype=torch.float64)
            cross = gram(dkt, zs, zq)
            mean = cross.T @ torch.linalg.solve(a, sy[t])                                  # [Q, 1]
            var = gram(dkt, zq, zq).diagonal() - (cross * torch.linalg.solve(a, cross)).sum(0)
            sd = (var[:, None] + sigma2).sqrt()
            nll = 0.5 * ((qy[t] - mean) / sd).pow(2) + sd.log() + 0.5 * math.log(2 * math.pi)
            expected.append(nll.mean())
        loss, _ = dkt.meta_loss(TaskBatch(sx, sy, qx, qy))
        marginal, _ = learner("linear").meta_loss(TaskBatch(sx, sy, qx, qy))
    torch.testing.assert_close(loss, torch.stack(expected).mean(), rtol=1e-9, atol=1e-9)
    assert abs(float(marginal) - float(loss)) > 1e-3          # the option changes the objective


@pytest.mark.parametrize("kernel", ["rbf", "linear"])
def test_task_scale_marginal_is_the_multivariate_t(kernel):
    """With ``task_scale`` the targets' marginal is a multivariate t with ``2 alpha`` degrees of freedom and
    shape ``(beta / alpha) (K + sigma^2 I)`` (SciPy's density, written independently)."""
    from scipy.stats import multivariate_t

    dkt = learner(kernel, task_scale=True)
    g = torch.Generator().manual_seed(11)
    z, t = torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randn(2, 7, generator=g, dtype=torch.float64)
    a = (gram(dkt, z, z) + float(dkt.noise.detach()) * torch.eye(7, dtype=torch.float64)).numpy()
    expected = [multivariate_t(loc=np.zeros(7), shape=BETA / ALPHA * a, df=2 * ALPHA).logpdf(row.numpy()) / 7
                for row in t]
    torch.testing.assert_close(dkt.marginal_log_likelihood(z, t).detach(), torch.tensor(expected,
                               dtype=torch.float64), rtol=1e-9, atol=1e-9)


def test_task_scale_predictive_is_the_student_t_of_the_scale_posterior():
    """Each query target's predictive: a Student-t with ``2 alpha + n`` degrees of freedom around the Gaussian
    posterior mean, scale ``sqrt((beta + q/2) / (alpha + n/2) (s^2 + sigma^2))``, ``q = t^T A^-1 t``; its log
    density (the ``predictive`` objective) and its central 95 % interval (SciPy's t)."""
    from scipy.stats import t as student

    dkt = learner("linear", objective="predictive", task_scale=True).eval()
    g = torch.Generator().manual_seed(12)
    sx, sy = torch.randn(5, DIM, generator=g, dtype=torch.float64), torch.randn(5, 1, generator=g, dtype=torch.float64)
    qx, qy = torch.randn(4, DIM, generator=g, dtype=torch.float64), torch.randn(4, 1, generator=g, dtype=torch.float64)
    with torch.no_grad():
        z = dkt.embed(torch.cat([sx, qx]))
        zs, zq = z[:5], z[5:]
        sigma2 = float(dkt.noise.detach())
        a = gram(dkt, zs, zs) + sigma2 * torch.eye(5, dtype=torch.float64)
        cross = gram(dkt, zs, zq)
        mean = (cross.T @ torch.linalg.solve(a, sy))[:, 0]
        var = gram(dkt, zq, zq).diagonal() - (cross * torch.linalg.solve(a, cross)).sum(0)
        q = float(sy[:, 0] @ torch.linalg.solve(a, sy[:, 0]))
        df, scale = 2 * ALPHA + 5, ((BETA + q / 2) / (ALPHA + 5 / 2) * (var + sigma2)).sqrt()
        expected = student.logpdf(qy[:, 0].numpy(), df, loc=mean.numpy(), scale=scale.numpy())
        got = dkt.predictive_log_likelihood(zs, sy.T, zq, qy.T)
        interval = dkt.predict_interval(dkt.adapt(sx, sy), qx)
    torch.testing.assert_close(got, torch.tensor([expected.mean()], dtype=torch.float64), rtol=1e-9, atol=1e-9)
    half = torch.as_tensor(student.ppf(0.975, df) * scale.numpy())
    torch.testing.assert_close(interval.mean[:, 0], mean)
    torch.testing.assert_close(interval.upper[:, 0] - mean, half)
    torch.testing.assert_close(mean - interval.lower[:, 0], half)


def test_task_scale_interval_grows_with_the_support_targets_and_the_gaussian_one_does_not():
    g = torch.Generator().manual_seed(13)
    sx, sy = torch.randn(5, DIM, generator=g, dtype=torch.float64), torch.randn(5, 1, generator=g, dtype=torch.float64)
    qx = torch.randn(4, DIM, generator=g, dtype=torch.float64)
    widths = {}
    for scaled in (False, True):
        dkt = learner("linear", task_scale=scaled).eval()
        with torch.no_grad():
            widths[scaled] = [float((i.upper - i.lower).mean()) for i in
                              (dkt.predict_interval(dkt.adapt(sx, c * sy), qx) for c in (0.1, 1.0, 10.0))]
    assert widths[False][0] == pytest.approx(widths[False][2])
    assert widths[True][0] < widths[True][1] < widths[True][2] and widths[True][2] > 5 * widths[True][1]


def test_task_scale_function_samples_are_seeded_and_centred_on_the_mean():
    dkt = learner("linear", task_scale=True).eval()
    g = torch.Generator().manual_seed(14)
    sx, sy = torch.randn(5, DIM, generator=g, dtype=torch.float64), torch.randn(5, 1, generator=g, dtype=torch.float64)
    qx = torch.randn(4, DIM, generator=g, dtype=torch.float64)
    with torch.no_grad():
        adapted = dkt.adapt(sx, sy)
        draws = dkt.function_samples(adapted, qx, 20000, seed=3)
        torch.testing.assert_close(draws, dkt.function_samples(adapted, qx, 20000, seed=3))
        mean = dkt.predict(adapted, qx)
        z = dkt.embed(torch.cat([sx, qx]))
        _, var, q = dkt._posterior(z[:5], sy.T, z[5:])
    assert draws.shape == (20000, 4, 1)
    torch.testing.assert_close(draws.median(0).values, mean, rtol=0, atol=0.05)
    # a multivariate t: each point's variance is E[tau^2] s^2 = (beta + q/2) / (alpha + n/2 - 1) s^2
    expected = (BETA + q / 2) / (ALPHA + 5 / 2 - 1) * var                                 # [1, Q]
    torch.testing.assert_close(draws[..., 0].var(0), expected[0], rtol=0.1, atol=0)


def test_task_scale_is_refused_for_classification():
    with pytest.raises(ValueError, match="task_scale .* is for regression"):
        learner(task="classification", task_scale=True)


def test_two_class_probabilities_match_the_closed_form_and_joint_sampling():
    g = torch.Generator().manual_seed(4)
    mean = torch.randn(6, 2, generator=g, dtype=torch.float64)
    std = 0.2 + torch.rand(6, 2, generator=g, dtype=torch.float64)
    p1 = torch.distributions.Normal(0, 1).cdf((mean[:, 1] - mean[:, 0]) / std.pow(2).sum(1).sqrt())
    got = class_log_probs(mean, std, samples=20000).exp()
    torch.testing.assert_close(got[:, 1], p1, rtol=0, atol=0.01)
    # five classes: the frequency of each arg-max of joint draws
    mean, std = torch.randn(4, 5, generator=g, dtype=torch.float64), 0.3 + torch.rand(4, 5, generator=g,
                                                                                     dtype=torch.float64)
    draws = mean + std * torch.randn(200000, 4, 5, generator=g, dtype=torch.float64)
    freq = torch.nn.functional.one_hot(draws.argmax(-1), 5).double().mean(0)
    torch.testing.assert_close(class_log_probs(mean, std, samples=4000).exp(), freq, rtol=0, atol=0.01)


def test_batched_meta_loss_and_gradient_equal_task_by_task():
    dkt = learner("rbf", "classification")
    g = torch.Generator().manual_seed(5)
    sx, qx = torch.randn(3, 6, DIM, generator=g, dtype=torch.float64), torch.randn(3, 9, DIM, generator=g,
                                                                                  dtype=torch.float64)
    sy, qy = torch.arange(3).repeat(2).expand(3, -1), torch.arange(3).repeat(3).expand(3, -1)
    batch = TaskBatch(sx, sy, qx, qy)
    metrics = dkt.meta_backward(batch)
    batched = [p.grad.clone() for p in dkt.parameters()]
    dkt.zero_grad()
    losses = [dkt.episode_loss(Episode(sx[t], sy[t], qx[t], qy[t]))[0] for t in range(3)]
    torch.stack(losses).mean().backward()
    for a, b in zip(batched, (p.grad for p in dkt.parameters())):
        torch.testing.assert_close(a, b)
    assert metrics["loss"] == pytest.approx(float(torch.stack(losses).mean()))


def test_meta_training_on_sinusoid_lowers_the_error():
    torch.manual_seed(0)
    dkt = DKT(nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 40)),
              task="regression")
    train, test = SinusoidTasks(5, 10, seed=1), SinusoidTasks(5, 10, seed=2)
    from fewshot import evaluate

    before = evaluate(dkt, test, 50).mean
    opt = torch.optim.Adam(dkt.parameters(), lr=0.003)
    for step in range(100):
        eps = [train[step * 8 + i] for i in range(8)]
        opt.zero_grad()
        dkt.meta_backward(TaskBatch(*(torch.stack([getattr(e, f) for e in eps])
                                      for f in ("support_x", "support_y", "query_x", "query_y"))))
        opt.step()
    after = evaluate(dkt, test, 50)
    assert after.mean < 0.8 * before, (before, after.mean)


def test_options_refuse_bad_values():
    with pytest.raises(ValueError, match="unknown dkt kernel 'matern'"):
        DKTOptions(kernel="matern").validate()
    with pytest.raises(ValueError, match="samples"):
        DKTOptions(samples=0).validate()
    with pytest.raises(ValueError, match="unknown dkt objective 'joint'; use one of marginal, predictive"):
        DKTOptions(objective="joint").validate()


def test_sinusoid_run_reports_coverage_through_the_command(tmp_path, capsys):
    run = tmp_path / "dkt"
    code, out, err = cli(["train", "--algo", "dkt", "--dataset", "sinusoid", "--steps", "4", "--meta-batch", "2",
                          "--shots", "5", "--set", "val_every=2", "--set", "val_episodes=4", "--set",
                          "test_episodes=4", "--out", run, "--no-progress", "--threads", "1"], capsys)
    assert code == 0, err
    code, out, err = cli(["eval", run, "--episodes", "20", "--json"], capsys)
    assert code == 0, err
    line = json.loads(out.strip().splitlines()[-1])
    assert line["metric"] == "mse" and 0 <= line["coverage"] <= 1 and line["interval_width"] > 0


def test_omniglot_classification_step_through_the_command(tmp_path, capsys):
    run = tmp_path / "dkt"
    code, out, err = cli(["train", "--algo", "dkt", "--steps", "2", "--ways", "5", "--train-ways", "5", "--queries",
                          "2", "--set", "val_every=1", "--set", "val_episodes=2", "--set", "test_episodes=2",
                          "--set", "samples=16", "--out", run, "--no-progress", "--threads", "1"], capsys)
    assert code == 0, err
    code, out, err = cli(["eval", run, "--episodes", "3", "--queries", "2", "--calibration", "--json"], capsys)
    assert code == 0, err
    line = json.loads(out.strip().splitlines()[-1])
    assert 0 <= line["mean"] <= 1 and 0 <= line["ece"] <= 1 and line["nll"] > 0
