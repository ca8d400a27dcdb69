"""Gaussian MLP policies (Duan et al. 2016; the MAML and ProMP papers' policies) and their densities.

:class:`GaussianPolicy` maps observations ``[B, obs_dim]`` to the mean ``[B, act_dim]`` of a diagonal Gaussian
and a state-independent log standard deviation (a parameter ``[act_dim]``, broadcast to ``[B, act_dim]``).
It is a plain ``nn.Module``, so :func:`fewshot.learners.gradient.functional_forward` runs it with fast weights
and the library's inner loop adapts every parameter, the log-std included. It is registered as the net
``policy`` (hidden sizes ``policy_hidden``, initial standard deviation ``policy_std``).

Actions are sampled unsquashed; the environment clips them to its action space, and log-probabilities are
those of the unclipped sample, as in rllab, MAML-RL and ProMP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from fewshot.nets.mlp import MLP
from fewshot.registry import register_net

LOG_2PI = math.log(2 * math.pi)


class GaussianPolicy(nn.Module):
    """``obs [B, obs_dim] -> (mean [B, act_dim], log_std [B, act_dim])``: an MLP (ReLU between ``Linear``
    layers of sizes ``hidden``) for the mean, a learned log-std shared by every state."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] | list[int] = (100, 100),
                 init_std: float = 1.0):
        super().__init__()
        if not init_std > 0:
            raise ValueError(f"init_std must be > 0, got {init_std}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.mean = MLP(obs_dim, tuple(hidden), act_dim)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.mean(obs)
        return mean, self.log_std.expand_as(mean)


def log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Log-density of ``actions [..., act_dim]`` under the diagonal Gaussian ``(mean, log_std)``: ``[...]``."""
    z = (actions - mean) * torch.exp(-log_std)
    return -(0.5 * z.pow(2) + log_std + 0.5 * LOG_2PI).sum(-1)


def kl_divergence(mean0: torch.Tensor, log_std0: torch.Tensor, mean1: torch.Tensor,
                  log_std1: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean0, std0) || N(mean1, std1))`` of diagonal Gaussians ``[..., act_dim]``, summed: ``[...]``."""
    var0, var1 = torch.exp(2 * log_std0), torch.exp(2 * log_std1)
    return (log_std1 - log_std0 + (var0 + (mean0 - mean1).pow(2)) / (2 * var1) - 0.5).sum(-1)


@dataclass
class PolicyOptions:
    """The ``model`` section of a run with the ``policy`` net.

    Attributes:
        policy_hidden: widths of the mean network's hidden layers (the MAML paper: two of 100).
        policy_std: the policy's initial standard deviation (rllab's and MAML-RL's 1.0).
    """

    policy_hidden: list[int] = field(default_factory=lambda: [100, 100])
    policy_std: float = 1.0

    def validate(self) -> None:
        if not self.policy_hidden or any(not isinstance(h, int) or h < 1 for h in self.policy_hidden):
            raise ValueError(f"policy_hidden must be a list of layer widths >= 1, got {self.policy_hidden}")
        if not self.policy_std > 0:
            raise ValueError(f"policy_std must be > 0, got {self.policy_std}")


@register_net("policy", options=PolicyOptions)
def _build(options: PolicyOptions, input_shape: tuple[int, ...], out_features: int | None) -> GaussianPolicy:
    """A Gaussian MLP policy for observations ``input_shape = (obs_dim,)`` and ``out_features`` action dims."""
    if out_features is None:
        raise ValueError("the policy net needs the action size: build it with out_features=act_dim")
    return GaussianPolicy(input_shape[0], out_features, options.policy_hidden, options.policy_std)
