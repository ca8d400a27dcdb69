"""Meta-gradients of the MAML family against an independent plain-autograd reference."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from fewshot.learners.gradient import ANIL, FOMAML, MAML, MetaSGD, Reptile
from fewshot.nets import MLP, Conv4, ResNet12
from fewshot.tasks.episode import TaskBatch

import reference

ALGOS = {"maml": MAML, "fomaml": FOMAML, "anil": ANIL, "metasgd": MetaSGD}


def image_batch(dtype, tasks=3, ways=3, shots=2, queries=2, size=28, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    sx = torch.rand(tasks, ways * shots, 1, size, size, generator=g, dtype=dtype)
    qx = torch.rand(tasks, ways * queries, 1, size, size, generator=g, dtype=dtype)
    sy = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1)
    qy = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1)
    return TaskBatch(sx, sy, qx, qy)


def library_gradient(learner, batch):
    learner.zero_grad()
    learner.meta_backward(batch)
    return [p.grad.clone() for p in learner.parameters()]


def relative_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    flat_a, flat_b = torch.cat([x.flatten() for x in a]), torch.cat([x.flatten() for x in b])
    return float((flat_a - flat_b).norm() / flat_b.norm())


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("variant", ["pool", "strided"])
def test_conv4_batchnorm_meta_gradient_matches_reference(algo, dtype, tol, variant):
    cls = ALGOS[algo]
    first_order, learn_lr = cls.first_order, cls.learn_inner_lr
    torch.manual_seed(0)
    net = Conv4(out_features=3, hidden=8, variant=variant, norm="batch").to(dtype)
    learner = cls(net, inner_lr=0.4, inner_steps=2)
    if learn_lr:  # distinct per-entry step sizes, so a mix-up of entries would show
        with torch.no_grad():
            for lr in learner.inner_lrs:
                lr.uniform_(0.1, 0.5)
    batch = image_batch(dtype)
    ours = library_gradient(learner, batch)
    params = [p for _, p in net.named_parameters()]
    mask = [n in learner.adapt_names for n, _ in net.named_parameters()]
    theirs = reference.meta_gradient(
        lambda p, x: reference.conv4_forward(p, x, variant, norm=True), params, batch, 0.4, 2,
        first_order, mask, F.cross_entropy, lrs=list(learner.inner_lrs) if learn_lr else None)
    assert relative_error(ours, list(theirs)) < tol


def test_second_order_differs_from_first_order():
    """The second-order terms are really there: MAML and FOMAML gradients differ."""
    torch.manual_seed(0)
    net = Conv4(out_features=3, hidden=8, variant="strided")
    batch = image_batch(torch.float64)
    net = net.double()
    maml = library_gradient(MAML(net, 0.4, 1), batch)
    fomaml = library_gradient(FOMAML(net, 0.4, 1), batch)
    assert relative_error(fomaml, maml) > 1e-3


def sinusoid_batch(tasks=2, shots=4, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(tasks, 2 * shots, 1, generator=g, dtype=torch.float64) * 10 - 5
    y = torch.sin(x)
    return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])


def test_maml_meta_gradient_matches_finite_differences():
    torch.manual_seed(0)
    net = MLP(1, (4,), 1).double()
    learner = MAML(net, inner_lr=0.1, inner_steps=2, task="regression")
    batch = sinusoid_batch()
    ours = torch.cat([g.flatten() for g in library_gradient(learner, batch)])
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])

    def meta_loss(vector: torch.Tensor) -> float:
        torch.nn.utils.vector_to_parameters(vector, net.parameters())
        return float(learner.meta_loss(batch)[0].detach())

    numeric = reference.central_differences(meta_loss, flat)
    torch.nn.utils.vector_to_parameters(flat, net.parameters())
    assert torch.allclose(ours, numeric, rtol=1e-6, atol=1e-8)


def test_vectorized_tasks_match_the_loop():
    torch.manual_seed(0)
    net = Conv4(out_features=3, hidden=8, variant="strided", norm="none").double()
    batch = image_batch(torch.float64)
    loop = library_gradient(MAML(net, 0.4, 2), batch)
    vmapped = library_gradient(MAML(net, 0.4, 2).set_execution(vectorize=True), batch)
    assert relative_error(vmapped, loop) < 1e-10


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("variant", ["pool", "strided"])
def test_vectorized_tasks_with_batchnorm_match_the_loop(algo, variant):
    """The library's BatchNorm is exact under vmap at second order (the native kernel's batching rule is not)."""
    torch.manual_seed(0)
    net = Conv4(out_features=3, hidden=8, variant=variant).double()
    batch = image_batch(torch.float64)
    loop = library_gradient(ALGOS[algo](net, 0.4, 2), batch)
    vmapped = library_gradient(ALGOS[algo](net, 0.4, 2).set_execution(vectorize=True), batch)
    assert relative_error(vmapped, loop) < 1e-10


def test_vectorized_resnet12_with_batchnorm_matches_the_loop():
    torch.manual_seed(0)
    net = ResNet12(channels=2, out_features=3).double()
    batch = image_batch(torch.float64, tasks=2, ways=3, shots=1, queries=1, size=16)
    loop = library_gradient(MAML(net, 0.4, 1), batch)
    vmapped = library_gradient(MAML(net, 0.4, 1).set_execution(vectorize=True), batch)
    assert relative_error(vmapped, loop) < 1e-10


def test_the_native_kernel_under_vmap_is_refused_at_second_order():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2, track_running_stats=False),
                              torch.nn.Flatten(), torch.nn.LazyLinear(3))
    with pytest.raises(ValueError, match="wrong meta-gradients.*fewshot.nets.norm.BatchNorm2d"):
        MAML(net, 0.4, 1).set_execution(vectorize=True)


def test_reptile_meta_gradient_is_theta_minus_mean_adapted():
    torch.manual_seed(0)
    net = MLP(1, (8,), 1).double()
    batch = sinusoid_batch(tasks=3)
    learner = Reptile(net, inner_lr=0.05, inner_steps=3, task="regression")
    ours = library_gradient(learner, batch)
    params = list(net.parameters())
    expected = [torch.zeros_like(p) for p in params]
    for t in range(batch.num_tasks):   # plain SGD on the support set, written out
        fast = [p.detach().clone().requires_grad_(True) for p in params]
        for _ in range(3):
            loss = F.mse_loss(reference.mlp_forward(fast, batch.support_x[t]), batch.support_y[t])
            grads = torch.autograd.grad(loss, fast)
            fast = [(f - 0.05 * g).detach().requires_grad_(True) for f, g in zip(fast, grads)]
        for e, p, f in zip(expected, params, fast):
            e += (p.detach() - f.detach()) / batch.num_tasks
    assert relative_error(ours, expected) < 1e-12


@pytest.mark.parametrize("vectorize", [False, True])
def test_multi_step_loss_is_the_mean_of_the_per_step_query_losses(vectorize):
    """MAML++'s multi-step loss: mean over k = 1..S of the query loss after k steps, with its
    gradient equal to the mean of the k-step MAML gradients (each an independent learner)."""
    torch.manual_seed(0)
    net = MLP(1, (6,), 1).double()
    batch = sinusoid_batch(tasks=3)
    msl = MAML(net, 0.1, 3, task="regression", multi_step_loss=True).set_execution(vectorize=vectorize)
    per_step = [MAML(net, 0.1, k, task="regression") for k in (1, 2, 3)]
    loss, _ = msl.meta_loss(batch)
    expected = torch.stack([learner.meta_loss(batch)[0] for learner in per_step]).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    ours = library_gradient(msl, batch)
    grads = [library_gradient(learner, batch) for learner in per_step]
    mean = [sum(g[i] for g in grads) / 3 for i in range(len(ours))]
    assert relative_error(ours, mean) < 1e-10
    # without it, only the last step counts
    assert relative_error(library_gradient(MAML(net, 0.1, 3, task="regression"), batch), grads[-1]) < 1e-12
