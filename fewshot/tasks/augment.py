"""Random affine distortions of image batches (Koch, Zemel & Salakhutdinov 2015, section 4.1).

Each image gets ``T = R(theta) Sh(rho_x, rho_y) S(s_x, s_y)`` plus a translation ``(t_x, t_y)``, with
``theta`` in [-10, 10] degrees, shears in [-0.3, 0.3], scales in [0.8, 1.2] and translations within
2/105 of the image side (Koch's 2 pixels of 105); each of the four components is applied with
probability 1/2. Pixels sampled from outside the image are background (0: ink is high).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

MAX_DEGREES, MAX_SHEAR, SCALE_RANGE, MAX_SHIFT = 10.0, 0.3, (0.8, 1.2), 2 / 105


def affine_matrices(n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` random distortions as ``[n, 2, 3]`` matrices in ``affine_grid``'s normalised coordinates
    (``[-1, 1]`` across the image), drawn from ``g``."""
    u = torch.rand(n, 7, generator=g) * 2 - 1                  # rotation, 2 shears, 2 scales, 2 shifts in [-1, 1]
    on = (torch.rand(n, 4, generator=g) < 0.5).float()          # which components this image gets
    angle = math.radians(MAX_DEGREES) * u[:, 0] * on[:, 0]
    shear = MAX_SHEAR * u[:, 1:3] * on[:, 1:2]
    low, high = SCALE_RANGE
    scale = 1 + ((high - low) / 2 * u[:, 3:5] + (high + low) / 2 - 1) * on[:, 2:3]
    shift = 2 * MAX_SHIFT * u[:, 5:7] * on[:, 3:4]              # fraction of the side, in normalised units (x2)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)             # [n, 2, 2]
    ones = torch.ones(n)
    shearing = torch.stack([torch.stack([ones, shear[:, 0]], -1), torch.stack([shear[:, 1], ones], -1)], -2)
    linear = rotation @ shearing @ torch.diag_embed(scale)
    return torch.cat([linear, shift.unsqueeze(-1)], dim=-1)


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample each image of ``x [n, C, H, W]`` (float, background 0) at ``theta [n, 2, 3] @ (u, v, 1)`` for
    every output position ``(u, v)`` in normalised coordinates; same shape, bilinear, background outside. ``theta``
    may sit on the CPU (where :func:`affine_matrices` draws it) whatever ``x``'s device."""
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_affine(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Distort each image of ``x [n, C, H, W]`` by its own random affine map (:func:`affine_matrices`) from ``g``."""
    return warp(x, affine_matrices(x.shape[0], g))
