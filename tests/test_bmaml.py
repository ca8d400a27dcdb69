"""Bayesian MAML: the SVGD step against a plain double loop, M = 1 against MAML, the meta-gradient against finite
differences, the vectorised particles and tasks against the loop, the posterior predictive, frozen parameters, and
a run through the command."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import reference
from fewshot import ClassificationTasks, LabelledData, fit
from fewshot.learners import BMAML, MAML
from fewshot.learners.bmaml import BMAMLOptions, svgd_step
from fewshot.tasks.episode import TaskBatch

from conftest import cli

DIM, WAYS = 3, 2


def mlp(hidden: int = 4, dtype=torch.float64) -> nn.Module:
    return nn.Sequential(nn.Linear(DIM, hidden), nn.Tanh(), nn.Linear(hidden, WAYS)).to(dtype)


def batch(tasks: int = 2, shots: int = 3, queries: int = 2, seed: int = 0, dtype=torch.float64) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(tasks, WAYS * shots, DIM, generator=g, dtype=dtype)
    qx = torch.randn(tasks, WAYS * queries, DIM, generator=g, dtype=dtype)
    sy = torch.arange(WAYS).repeat_interleave(shots).expand(tasks, -1)
    qy = torch.arange(WAYS).repeat_interleave(queries).expand(tasks, -1)
    return TaskBatch(sx, sy, qx, qy)


def svgd_reference(theta: torch.Tensor, grads: torch.Tensor, step: float) -> torch.Tensor:
    """The SVGD update written out particle by particle: the median of the pairwise distances, then the sum."""
    m = theta.shape[0]
    dists = sorted(float((theta[i] - theta[j]).norm()) for i in range(m) for j in range(i + 1, m))
    median = dists[(len(dists) - 1) // 2]           # torch.median's lower median
    h = median ** 2 / math.log(m)
    out = theta.clone()
    for i in range(m):
        phi = torch.zeros_like(theta[i])
        for j in range(m):
            k = math.exp(-float(((theta[j] - theta[i]) ** 2).sum()) / h)
            phi += k * grads[j] + k * (-2.0 / h) * (theta[j] - theta[i])        # d/dtheta_j exp(-|tj - ti|^2 / h)
        out[i] = theta[i] + step * phi / m
    return out


@pytest.mark.parametrize("m", [2, 3, 4, 5])
def test_svgd_step_matches_the_double_loop(m):
    g = torch.Generator().manual_seed(m)
    theta = torch.randn(m, 7, generator=g, dtype=torch.float64)
    grads = torch.randn(m, 7, generator=g, dtype=torch.float64)
    torch.testing.assert_close(svgd_step(theta, grads, 0.3), svgd_reference(theta, grads, 0.3), rtol=0, atol=1e-12)


def test_svgd_step_of_one_particle_or_coinciding_particles_is_a_gradient_step():
    theta, grads = torch.randn(1, 5, dtype=torch.float64), torch.randn(1, 5, dtype=torch.float64)
    torch.testing.assert_close(svgd_step(theta, grads, 0.3), theta + 0.3 * grads, rtol=0, atol=1e-15)
    same = theta.expand(3, -1)
    out = svgd_step(same, grads.expand(3, -1), 0.3)                # h falls back to 1: no nan
    torch.testing.assert_close(out, (theta + 0.3 * grads).expand(3, -1), rtol=0, atol=1e-15)


def test_one_particle_adapts_like_maml():
    torch.manual_seed(0)
    net = mlp()
    b = batch()
    bmaml, maml = BMAML(net, inner_lr=0.4, inner_steps=3, particles=1), MAML(net, inner_lr=0.4, inner_steps=3)
    ours = bmaml.adapt(b.support_x[0], b.support_y[0])
    assert len(ours) == 1
    theirs = maml.adapt(b.support_x[0], b.support_y[0])
    for n in theirs:
        torch.testing.assert_close(ours[0][n], theirs[n], rtol=0, atol=1e-12)
    # and the meta-gradient is MAML's: the log of one softmax is the log-softmax
    grads = []
    for learner in (bmaml, maml):
        learner.zero_grad()
        learner.meta_backward(b)
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, c in zip(*grads):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


def test_particles_are_distinct_and_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(0)
    net = mlp()
    state = torch.get_rng_state()
    a = BMAML(net, particles=3, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    flat = [torch.cat([p[n].flatten() for n in a.adapt_names]) for p in a.initial_particles()]
    assert all(not torch.equal(flat[i], flat[j]) for i in range(3) for j in range(i + 1, 3))
    assert torch.equal(flat[0], torch.cat([p.flatten() for p in net.parameters()]))     # particle 0: the module's
    b = BMAML(net, particles=3, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert len(list(a.parameters())) == 3 * len(list(net.parameters()))


def test_meta_gradient_matches_finite_differences():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(DIM, 2), nn.Tanh(), nn.Linear(2, WAYS)).double()
    learner = BMAML(net, inner_lr=0.5, inner_steps=2, particles=3)
    b = batch()
    params = list(learner.parameters())
    learner.zero_grad()
    learner.meta_backward(b)
    ours = torch.cat([p.grad.flatten() for p in params])
    flat = torch.cat([p.detach().flatten() for p in params])

    def meta_loss(vector: torch.Tensor) -> float:
        torch.nn.utils.vector_to_parameters(vector, params)
        with torch.no_grad():   # the same function: adapt takes first-order steps of the same values
            return float(learner.meta_loss(b)[0])

    numeric = reference.central_differences(meta_loss, flat)
    torch.nn.utils.vector_to_parameters(flat, params)
    assert float((ours - numeric).norm() / numeric.norm()) < 1e-5
    assert torch.allclose(ours, numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_vectorised_particles_and_tasks_equal_the_loop(task):
    """Vectorised (particles and tasks through vmap) against the per-particle, per-task loop in float64: the
    meta-loss, the meta-gradient of every parameter (particles and noise), and the adapted particles."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(DIM, 5), nn.Tanh(), nn.Linear(5, WAYS if task == "classification" else 1)).double()
    b = batch(tasks=3, seed=1)
    if task == "regression":
        b = TaskBatch(b.support_x, b.support_x.sum(-1, keepdim=True).sin(), b.query_x,
                      b.query_x.sum(-1, keepdim=True).sin())
    learners = [BMAML(net, inner_lr=0.3, inner_steps=2, particles=3, task=task, noise=0.4, vectorize=v)
                for v in (False, True)]
    results = []
    for learner in learners:
        learner.zero_grad()
        metrics = learner.meta_backward(b)
        with torch.no_grad():
            adapted = learner.adapt(b.support_x[0], b.support_y[0], steps=3)
        results.append((metrics, [p.grad.clone() for p in learner.parameters()], adapted))
    (m_loop, g_loop, a_loop), (m_vec, g_vec, a_vec) = results
    assert m_vec["loss"] == pytest.approx(m_loop["loss"], rel=1e-12)
    assert len(g_loop) == len(g_vec) == 3 * len(list(net.parameters())) + (task == "regression")
    for a, c in zip(g_loop, g_vec):
        torch.testing.assert_close(c, a, rtol=1e-10, atol=1e-10)
    for p, q in zip(a_loop, a_vec):
        for n in learners[0].adapt_names:
            torch.testing.assert_close(q[n], p[n], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(learners[1].particle_outputs(a_vec, b.query_x[0]),
                               learners[0].particle_outputs(a_loop, b.query_x[0]), rtol=1e-10, atol=1e-10)


def test_vectorised_particles_refuse_native_batchnorm():
    net = nn.Sequential(nn.Linear(DIM, 4), nn.BatchNorm1d(4), nn.Linear(4, WAYS))
    with pytest.raises(ValueError, match="nn.BatchNorm.*vectorize=False"):
        BMAML(net, particles=2, vectorize=True)
    BMAML(net, particles=2)          # the loop is exact with it


def test_predict_returns_log_probabilities_of_the_mean_of_the_particles():
    torch.manual_seed(0)
    learner = BMAML(mlp(), particles=4)
    b = batch()
    with torch.no_grad():
        adapted = learner.adapt(b.support_x[0], b.support_y[0])
        out = learner.predict(adapted, b.query_x[0])
        mean = torch.stack([torch.softmax(learner.forward_with(p, b.query_x[0]), -1) for p in adapted]).mean(0)
    assert out.shape == (b.query_x.shape[1], WAYS)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(out.shape[0], dtype=out.dtype), rtol=0, atol=1e-12)
    torch.testing.assert_close(out.exp(), mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.softmax(out, -1), mean, rtol=0, atol=1e-12)    # what the evaluator scores


def test_options_are_validated():
    BMAMLOptions().validate()
    for bad in (dict(particles=0), dict(inner_lr=-1.0), dict(inner_steps=-1)):
        with pytest.raises(ValueError):
            BMAMLOptions(**bad).validate()
    with pytest.raises(ValueError, match="particles"):
        BMAML(mlp(), particles=0)


def test_frozen_parameters_stay_bit_identical_after_fit():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    centres = 2.0 * torch.randn(6, DIM, generator=g)
    y = torch.arange(6).repeat_interleave(10)
    tasks = ClassificationTasks(LabelledData(centres[y] + torch.randn(len(y), DIM, generator=g), y), ways=WAYS,
                                shots=2, queries=2, seed=0)
    net = mlp(8, torch.float32)
    net[0].requires_grad_(False)
    frozen = {n: p.detach().clone() for n, p in net[0].named_parameters()}
    trainable = net[2].weight.detach().clone()
    learner = BMAML(net, inner_lr=0.4, inner_steps=2, particles=3)
    result = fit(learner, tasks, steps=3, progress=False, lr=1e-2, meta_batch=2)
    assert result.step == 3
    assert all(torch.equal(frozen[n], p) for n, p in net[0].named_parameters())
    assert all(p.grad is None for p in net[0].parameters())
    assert not torch.equal(trainable, net[2].weight)
    ep = tasks[100]
    for p in learner.adapt(ep.support_x, ep.support_y):
        assert torch.equal(p["0.weight"], frozen["weight"]) and torch.equal(p["0.bias"], frozen["bias"])


def test_bmaml_trains_from_the_command(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = cli(["train", "--algo", "bmaml", "--dataset", "omniglot", "--set", "particles=2", "--set",
                        "channels=4", "--steps", "2", "--meta-batch", "1", "--queries", "2", "--set", "val_every=2",
                        "--set", "val_episodes=2", "--set", "test_episodes=2", "--no-progress", "--threads", "1",
                        "--out", run], capsys)
    assert code == 0, err
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["learner"]["algo"] == "bmaml" and saved["learner"]["particles"] == 2
    assert (run / "test.json").is_file()
    code, out, err = cli(["eval", run, "--episodes", "2", "--json", "--threads", "1"], capsys)   # loads the particles
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["episodes"] == 2
