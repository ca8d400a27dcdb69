"""Siamese networks: the contrastive loss's label convention and margin, the pair sampler, verification,
nearest-support classification and toy tasks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from conftest import index_data
from fewshot.datasets.labelled import LabelledData
from fewshot.evaluate import evaluate
from fewshot.learners.siamese import SiameseNet, balanced_mean, contrastive_loss, nearest_support_logits
from fewshot.tasks.pairs import PairSampler
from fewshot.tasks.sampler import ClassificationTasks
from test_metric_learners import TEST, TRAIN, meta_train, mlp, toy_test_tasks

MARGIN = 1.5


# --- the contrastive loss: s = 1 marks a same-class pair -----------------------------------------------------

def test_contrastive_loss_of_same_class_pairs_is_the_squared_distance():
    d = torch.tensor([0.0, 0.3, 1.0, 1.5, 4.0])                 # inside and beyond the margin alike
    torch.testing.assert_close(contrastive_loss(d, torch.ones(5), MARGIN), d.pow(2))
    torch.testing.assert_close(contrastive_loss(d, torch.ones(5, dtype=torch.bool), MARGIN), d.pow(2))


def test_contrastive_loss_of_different_class_pairs_vanishes_beyond_the_margin():
    d = torch.tensor([0.0, 0.5, 1.4, 1.5, 2.0, 10.0])
    expected = torch.tensor([1.5**2, 1.0**2, 0.1**2, 0.0, 0.0, 0.0])
    torch.testing.assert_close(contrastive_loss(d, torch.zeros(6), MARGIN), expected)
    torch.testing.assert_close(contrastive_loss(d, torch.zeros(6, dtype=torch.bool), MARGIN), expected)


def test_contrastive_loss_mixes_pairs_elementwise():
    d = torch.tensor([0.5, 0.5, 2.0, 2.0])
    same = torch.tensor([True, False, True, False])
    torch.testing.assert_close(contrastive_loss(d, same, MARGIN), torch.tensor([0.25, 1.0, 4.0, 0.0]))


def test_contrastive_gradient_pulls_same_pairs_together_and_pushes_different_pairs_to_the_margin():
    d = torch.tensor([0.5, 2.0, 0.5, 1.0, 2.0], requires_grad=True)
    same = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])
    contrastive_loss(d, same, MARGIN).sum().backward()
    g = d.grad
    assert g[0] > 0 and g[1] > 0                  # descent shrinks same-class distances, wherever they are
    assert g[2] < 0 and g[3] < 0                  # descent grows different-class distances inside the margin
    assert g[4] == 0                              # ... and leaves them alone beyond it
    torch.testing.assert_close(g, torch.tensor([1.0, 4.0, -2.0, -1.0, 0.0]))


def test_a_descent_step_on_embeddings_moves_pairs_the_right_way():
    """End to end through the Euclidean distance of two embeddings."""
    def distance_after_step(gap: float, same: bool) -> tuple[float, float]:
        z1 = torch.zeros(1, 3, requires_grad=True)
        z2 = torch.tensor([[gap, 0.0, 0.0]], requires_grad=True)
        d = (z1 - z2).norm(dim=1)
        contrastive_loss(d, torch.tensor([same]), MARGIN).sum().backward()
        with torch.no_grad():
            return float(d), float((z1 - 0.1 * z1.grad - (z2 - 0.1 * z2.grad)).norm())

    before, after = distance_after_step(1.0, same=True)
    assert after < before                         # pulled together
    before, after = distance_after_step(1.0, same=False)
    assert after > before                         # pushed apart (inside the margin)
    before, after = distance_after_step(2.0, same=False)
    assert after == pytest.approx(before)         # beyond the margin: no force


def test_contrastive_loss_rejects_a_non_positive_margin():
    with pytest.raises(ValueError, match="margin"):
        contrastive_loss(torch.ones(2), torch.ones(2), margin=0.0)


# --- the pair sampler ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def split() -> tuple[LabelledData, LabelledData, LabelledData]:
    """All data (``x == example index``), its first 6 classes (train) and the other 4 (held out)."""
    data = index_data([5, 2, 7, 3, 6, 4, 5, 5, 5, 5])
    return data, data.select_classes(range(6)), data.select_classes(range(6, 10))


def test_pairs_are_exactly_half_same_and_labelled_correctly(split):
    data, train, _ = split
    sampler = PairSampler(train, pairs_per_batch=64, seed=1)
    for i in range(5):
        x1, x2, same = sampler[i]
        assert x1.shape == x2.shape == (64, 1) and same.shape == (64,) and same.dtype == torch.bool
        assert int(same.sum()) == 32
        c1, c2 = data.y[x1.flatten().long()], data.y[x2.flatten().long()]
        assert torch.equal(c1 == c2, same)
        assert bool((x1 != x2).all())             # a same-class pair is two distinct examples
    assert not torch.equal(sampler[0][2], torch.arange(64) < 32)    # shuffled, not all same pairs first


def test_pairs_use_only_the_given_classes(split):
    data, train, held_out = split
    train_classes = {data.class_names.index(n) for n in train.class_names}
    held_out_classes = {data.class_names.index(n) for n in held_out.class_names}
    assert train_classes.isdisjoint(held_out_classes)
    sampler = PairSampler(train, pairs_per_batch=32, seed=0)
    used = set()
    for i in range(50):
        x1, x2, _ = sampler[i]
        used |= set(data.y[torch.cat([x1, x2]).flatten().long()].tolist())
    assert used == train_classes                  # every training class appears, no held-out class ever


def test_pair_sampler_is_deterministic_by_seed_and_index(split):
    _, train, _ = split
    a, b = PairSampler(train, 16, seed=4), PairSampler(train, 16, seed=4)
    for i in (0, 7, 123456):
        assert all(torch.equal(u, v) for u, v in zip(a[i], b[i]))
    assert not torch.equal(a[0][0], a[1][0])
    assert not torch.equal(a[0][0], PairSampler(train, 16, seed=5)[0][0])
    x1, x2, same = next(iter(DataLoader(a, batch_size=2)))
    assert x1.shape == (2, 16, 1) and same.shape == (2, 16)


def test_pair_sampler_rejects_bad_arguments(split):
    _, train, _ = split
    with pytest.raises(ValueError, match="even"):
        PairSampler(train, pairs_per_batch=15)
    with pytest.raises(ValueError, match="at least 2 classes"):
        PairSampler(train.select_classes([0]), pairs_per_batch=4)
    with pytest.raises(ValueError, match="at least 2 examples"):
        PairSampler(index_data([1, 1, 1]), pairs_per_batch=4)
    with pytest.raises(IndexError):
        PairSampler(train, 4, num_batches=3)[3]


# --- verification and classification -------------------------------------------------------------------------

def test_verification_api_shapes_and_identity():
    torch.manual_seed(0)
    net = SiameseNet(mlp(), margin=MARGIN)
    x1, x2 = torch.randn(6, 16), torch.randn(6, 16)
    d = net.distance(x1, x2).detach()
    assert d.shape == (6,) and bool((d > 0).all())
    torch.testing.assert_close(d, (net.encoder(x1) - net.encoder(x2)).norm(dim=1))
    assert torch.equal(net.same(x1, x2, threshold=float(d.median())), d < d.median())
    assert bool(net.same(x1, x1).all())                           # distance ~0 < margin / 2
    with pytest.raises(ValueError, match="same shape"):
        net.distance(x1, x2[:3])


def test_l1_weighted_head_is_koch_verification():
    torch.manual_seed(0)
    net = SiameseNet(mlp(), "l1-weighted", feature_dim=32)
    x1, x2 = torch.randn(5, 16), torch.randn(5, 16)
    z1, z2 = net.encoder(x1), net.encoder(x2)
    p_same = torch.sigmoid(net.head((z1 - z2).abs())).squeeze(1)
    torch.testing.assert_close(torch.sigmoid(-net.distance(x1, x2)), p_same)
    assert torch.equal(net.same(x1, x2), p_same > 0.5)
    same = torch.tensor([True, False, True, False, False])
    torch.testing.assert_close(net.pair_loss(x1, x2, same), F.binary_cross_entropy(p_same, same.float()))


def test_nearest_support_logits_take_the_closest_example_of_each_class():
    distances = torch.tensor([[3.0, 1.0, 2.0, 5.0],
                              [0.5, 4.0, 6.0, 0.2]])
    labels = torch.tensor([0, 0, 1, 1])
    torch.testing.assert_close(nearest_support_logits(distances, labels, 2), -torch.tensor([[1.0, 2.0],
                                                                                             [0.5, 0.2]]))


def test_episode_loss_balances_same_and_different_pairs():
    torch.manual_seed(0)
    net = SiameseNet(mlp(), margin=MARGIN)
    ep = ClassificationTasks(TRAIN, ways=3, shots=2, queries=2, seed=0)[0]
    x, y = torch.cat([ep.support_x, ep.query_x]), torch.cat([ep.support_y, ep.query_y])
    z = net.encoder(x)
    same_terms, diff_terms = [], []
    for i in range(len(y)):
        for j in range(i + 1, len(y)):
            d = (z[i] - z[j]).norm()
            (same_terms if y[i] == y[j] else diff_terms).append(
                d**2 if y[i] == y[j] else (MARGIN - d).clamp_min(0) ** 2)
    assert len(same_terms) == 3 * 6 and len(diff_terms) == 66 - 18          # 12 examples: 66 pairs
    expected = 0.5 * (torch.stack(same_terms).mean() + torch.stack(diff_terms).mean())
    loss, metrics = net.episode_loss(ep)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(net.evaluate_episode(ep))
    with pytest.raises(ValueError, match="same-class"):
        balanced_mean(torch.ones(3), torch.ones(3, dtype=torch.bool))


def test_siamese_rejects_bad_arguments():
    with pytest.raises(ValueError, match="distance"):
        SiameseNet(mlp(), distance="cosine")
    with pytest.raises(ValueError, match="does not go with"):
        SiameseNet(mlp(), distance="euclidean", loss="bce")
    with pytest.raises(ValueError, match="unknown loss"):
        SiameseNet(mlp(), loss="hinge")
    with pytest.raises(ValueError, match="margin"):
        SiameseNet(mlp(), margin=-1.0)
    with pytest.raises(ValueError, match="feature_dim"):
        SiameseNet(nn.Linear(16, 8), distance="l1-weighted")
    assert SiameseNet(mlp(), "l1-weighted", feature_dim=32).loss_kind == "bce"


# --- toy tasks -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("distance", ["euclidean", "l1-weighted"])
def test_siamese_learns_a_toy_task_in_the_episode_loop(distance):
    torch.manual_seed(0)
    net = SiameseNet(mlp(), distance, feature_dim=32)
    before = evaluate(net, toy_test_tasks(), episodes=50).mean
    meta_train(net, ClassificationTasks(TRAIN, ways=5, shots=1, queries=5, seed=1), steps=300)
    after = evaluate(net, toy_test_tasks(), episodes=50).mean
    assert before < 0.35
    assert after > before + 0.25, (before, after)             # 5-way 1-shot on held-out classes


def test_siamese_learns_from_pairs_directly():
    torch.manual_seed(0)
    net = SiameseNet(mlp())
    before = evaluate(net, toy_test_tasks(), episodes=50).mean
    pairs = PairSampler(TRAIN, pairs_per_batch=64, seed=0)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for i in range(200):
        optimizer.zero_grad()
        net.pair_loss(*pairs[i]).backward()
        optimizer.step()
    x1, x2, same = PairSampler(TEST, pairs_per_batch=200, seed=9)[0]
    with torch.no_grad():
        verification = float((net.same(x1, x2) == same).float().mean())
    assert verification > 0.8                                   # held-out classes
    assert evaluate(net, toy_test_tasks(), episodes=50).mean > before + 0.25
