"""An independent plain-autograd reference for meta-gradients.

It shares no code with ``fewshot.learners``: Conv-4 and the MLP are written out with
``torch.nn.functional`` over a list of tensors, and the inner loop uses
``torch.autograd.grad(create_graph=...)`` instead of ``torch.func``.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def conv4_forward(params: list[torch.Tensor], x: torch.Tensor, variant: str, norm: bool) -> torch.Tensor:
    """Conv-4 with parameters in ``named_parameters`` order: per block conv.w, conv.b[, bn.w, bn.b]; then head w, b."""
    i = 0
    for _ in range(4):
        w, b = params[i], params[i + 1]
        i += 2
        x = F.conv2d(x, w, b, stride=2 if variant == "strided" else 1, padding=1)
        if norm:
            x = F.batch_norm(x, None, None, params[i], params[i + 1], training=True)
            i += 2
        x = F.relu(x)
        if variant == "pool":
            x = F.max_pool2d(x, 2)
    x = x.mean(dim=(2, 3))
    return F.linear(x, params[i], params[i + 1])


def mlp_forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    for j in range(0, len(params) - 2, 2):
        x = F.relu(F.linear(x, params[j], params[j + 1]))
    return F.linear(x, params[-2], params[-1])


def meta_gradient(forward, params: list[torch.Tensor], batch, inner_lr, steps: int, first_order: bool,
                  adapt_mask: list[bool], loss_fn, lrs: list[torch.Tensor] | None = None):
    """Gradient of mean_i L_query_i(adapted_i) w.r.t. ``params`` (and ``lrs`` for Meta-SGD)."""
    leaves = [p.detach().clone().requires_grad_(True) for p in params]
    lr_leaves = [l.detach().clone().requires_grad_(True) for l in lrs] if lrs is not None else None
    total = 0.0
    for t in range(batch.support_x.shape[0]):
        fast = list(leaves)
        for _ in range(steps):
            loss = loss_fn(forward(fast, batch.support_x[t]), batch.support_y[t])
            idx = [j for j, m in enumerate(adapt_mask) if m]
            grads = torch.autograd.grad(loss, [fast[j] for j in idx], create_graph=not first_order)
            for k, (j, g) in enumerate(zip(idx, grads)):
                g = g.detach() if first_order else g
                step = lr_leaves[k] * g if lr_leaves is not None else inner_lr * g
                fast[j] = fast[j] - step
        total = total + loss_fn(forward(fast, batch.query_x[t]), batch.query_y[t])
    total = total / batch.support_x.shape[0]
    wrt = leaves + (lr_leaves or [])
    return torch.autograd.grad(total, wrt)


def central_differences(f, flat: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The gradient of a scalar function ``f`` of a vector, by central differences ``(f(x+e) - f(x-e)) / 2e``
    in each coordinate: the finite-difference check of the meta-gradients."""
    numeric = torch.zeros_like(flat)
    for i in range(flat.numel()):
        step = torch.zeros_like(flat)
        step[i] = eps
        numeric[i] = (f(flat + step) - f(flat - step)) / (2 * eps)
    return numeric
