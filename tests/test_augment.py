"""Random affine distortions (Koch et al. 2015): the matrices' ranges, exact shifts, determinism, and episodes."""

from __future__ import annotations

import math

import torch

from fewshot.datasets.labelled import LabelledData
from fewshot.tasks.augment import MAX_DEGREES, MAX_SHEAR, MAX_SHIFT, affine_matrices, random_affine, warp
from fewshot.tasks.sampler import ClassificationTasks


def test_matrices_stay_within_kochs_ranges_and_half_the_images_keep_each_component():
    theta = affine_matrices(4000, torch.Generator().manual_seed(0))
    linear, shift = theta[:, :, :2], theta[:, :, 2]
    assert float(shift.abs().max()) <= 2 * MAX_SHIFT + 1e-7
    assert 0.45 < float((shift.abs().sum(1) == 0).float().mean()) < 0.55       # translation applied half the time
    det = torch.linalg.det(linear)                                           # rotation 1, shear 1 - rx ry, scales
    assert float(det.min()) >= 0.8 ** 2 * (1 - MAX_SHEAR ** 2) - 1e-6 and float(det.max()) <= 1.2 ** 2 * 1.09 + 1e-6
    identity = torch.eye(2).expand_as(linear)
    assert 0.1 < float(torch.isclose(linear, identity).all(-1).all(-1).float().mean()) < 0.15  # (1/2)^3 untouched
    # a pure rotation by at most MAX_DEGREES: an orthogonal linear part
    orthogonal = torch.isclose(linear @ linear.transpose(1, 2), identity, atol=1e-6).all(-1).all(-1)
    angles = torch.atan2(linear[orthogonal][:, 1, 0], linear[orthogonal][:, 0, 0]).abs()
    assert float(angles.max()) <= math.radians(MAX_DEGREES) + 1e-6


def test_warp_moves_by_whole_pixels_exactly_and_leaves_identity_alone():
    x = torch.zeros(2, 1, 8, 8)
    x[:, 0, 2:5, 3:6] = torch.arange(9.0).reshape(3, 3) + 1
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    shift = torch.tensor([[1.0, 0.0, 2 * 2 / 8], [0.0, 1.0, 0.0]])      # shift 2/8 of the side: 2 pixels
    moved = warp(x, torch.stack([identity, shift]))
    torch.testing.assert_close(moved[0], x[0])
    torch.testing.assert_close(moved[1, 0, :, :-2], x[1, 0, :, 2:])       # the content moved 2 pixels left
    assert float(moved[1, 0, :, -2:].abs().sum()) == 0                    # background came in from outside


def test_distortion_is_a_function_of_the_generator_and_changes_the_images():
    x = torch.rand(6, 1, 28, 28)
    a = random_affine(x, torch.Generator().manual_seed(3))
    b = random_affine(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape
    assert not torch.allclose(a, x)


def test_distorted_episodes_keep_the_classes_and_examples_of_the_plain_stream():
    y = torch.arange(6).repeat_interleave(8)
    x = (torch.rand(48, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    data = LabelledData(x=x, y=y, class_names=tuple(f"a/c{c}" for c in range(6)), class_groups=("a",) * 6)
    plain = ClassificationTasks(data, 3, 1, 2, seed=5)
    bent = ClassificationTasks(data, 3, 1, 2, seed=5, distort=True)
    for i in range(4):
        assert plain.episode_classes(i) == bent.episode_classes(i)
        p, d = plain[i], bent[i]
        assert torch.equal(p.support_y, d.support_y) and p.support_x.shape == d.support_x.shape
        assert not torch.allclose(p.query_x, d.query_x)
