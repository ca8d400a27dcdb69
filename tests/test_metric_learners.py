"""Matching and Relation networks and the fine-tune baseline: attention, shapes, the evaluator, toy tasks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fewshot.datasets.labelled import LabelledData
from fewshot.evaluate import evaluate
from fewshot.learners.base import Learner
from fewshot.learners.finetune import FineTune
from fewshot.tasks.pretrain import PretrainBatches
from fewshot.learners.matching import MatchingNet, attention_log_probs, cosine_attention
from fewshot.learners.protonet import MahalanobisProtoNet, ProtoNet, mahalanobis_logits
from fewshot.learners.relation import RelationModule, RelationNet, class_features, relation_encoder
from fewshot.learners.siamese import SiameseNet
from fewshot.nets import Conv4
from fewshot.tasks.episode import Episode, stack_episodes
from fewshot.tasks.sampler import ClassificationTasks


def toy_blobs(classes: int, per_class: int = 20, seed: int = 0) -> LabelledData:
    """16-D points: 4 dims hold the class (a Gaussian centre, within-class noise 0.2), 12 dims are
    class-independent noise of scale 2 that swamps distances until an encoder learns to ignore it."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, 4, generator=g)
    y = torch.arange(classes).repeat_interleave(per_class)
    x = torch.cat([centres[y] + 0.2 * torch.randn(len(y), 4, generator=g),
                   2.0 * torch.randn(len(y), 12, generator=g)], dim=1)
    names = tuple(f"toy/c{c:02d}" for c in range(classes))
    return LabelledData(x, y, names, tuple("toy" for _ in names))


TRAIN, TEST = toy_blobs(30, seed=0), toy_blobs(20, seed=1)     # disjoint classes: meta-train / meta-test


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32))


def meta_train(learner: Learner, tasks, steps: int, lr: float = 1e-2, meta_batch: int = 2) -> None:
    """The common loop: ``meta_backward`` on a task batch, then an Adam step."""
    optimizer = torch.optim.Adam(learner.parameters(), lr=lr)
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        learner.meta_backward(stack_episodes([tasks[step * meta_batch + t] for t in range(meta_batch)]))
        optimizer.step()


def toy_test_tasks() -> ClassificationTasks:
    return ClassificationTasks(TEST, ways=5, shots=1, queries=5, seed=2)


def image_episode(ways: int = 5, shots: int = 2, queries: int = 3, size: int = 28, seed: int = 0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    return Episode(torch.rand(ways * shots, 1, size, size, generator=g),
                   torch.arange(ways).repeat_interleave(shots),
                   torch.rand(ways * queries, 1, size, size, generator=g),
                   torch.arange(ways).repeat_interleave(queries))


# --- ProtoNet's Mahalanobis distance ------------------------------------------------------------------------

def test_mahalanobis_logits_equal_the_explicit_inverse_formula():
    g = torch.Generator().manual_seed(0)
    support, query = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g,
                                                                                       dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    pooled = torch.cov(support.T, correction=0)
    expected = []
    for c in range(2):
        members = support[labels == c]
        w = min(len(members) / (len(members) + 1), 0.1)
        cov = w * torch.cov(members.T, correction=0) + (1 - w) * pooled + 0.1 * torch.eye(5, dtype=torch.float64)
        diff = query - members.mean(0)
        expected.append(-torch.einsum("qd,de,qe->q", diff, torch.linalg.inv(cov), diff))
    torch.testing.assert_close(mahalanobis_logits(support, labels, query, 2), torch.stack(expected, 1),
                               rtol=1e-10, atol=1e-10)


def test_mahalanobis_logits_have_exact_gradients_and_allow_one_shot_classes():
    g = torch.Generator().manual_seed(1)
    support = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    query = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2])                              # one example per class: class covariance 0
    assert torch.autograd.gradcheck(lambda s, q: mahalanobis_logits(s, labels, q, 3), (support, query))


def test_protonet_distance_is_chosen_by_class():
    """The distance is the class (ProtoNet or MahalanobisProtoNet), not an argument that could be misspelt."""
    with pytest.raises(TypeError):
        ProtoNet(mlp(), "cosine")
    torch.manual_seed(0)
    learner = MahalanobisProtoNet(mlp())
    ep = ClassificationTasks(TRAIN, ways=3, shots=3, queries=2, seed=0)[0]
    with torch.no_grad():
        z = learner.encoder(torch.cat([ep.support_x, ep.query_x]))
        expected = mahalanobis_logits(z[:9], ep.support_y, z[9:], 3)
        torch.testing.assert_close(learner.episode_logits(ep), expected)


# --- Matching networks --------------------------------------------------------------------------------------

@pytest.mark.parametrize("fce", [False, True])
def test_matching_attention_sums_to_one_over_the_support_set(fce):
    torch.manual_seed(0)
    learner = MatchingNet(mlp(), fce=fce, feature_dim=32, process_steps=3)
    ep = ClassificationTasks(TRAIN, ways=5, shots=3, queries=4, seed=0)[0]
    adapted = learner.adapt(ep.support_x, ep.support_y)
    attention = learner.attention(adapted, ep.query_x)
    assert attention.shape == (20, 15)
    assert bool((attention > 0).all())
    torch.testing.assert_close(attention.sum(dim=1), torch.ones(20))
    # the logits are log class probabilities: the attention mass on each class's support examples
    logits = learner.predict(adapted, ep.query_x)
    per_class = torch.stack([attention[:, ep.support_y == c].sum(1) for c in range(5)], dim=1)
    torch.testing.assert_close(logits.exp(), per_class)
    torch.testing.assert_close(logits.exp().sum(1), torch.ones(20))


def test_cosine_attention_is_the_softmax_of_cosine_similarities():
    q, s = torch.randn(3, 6), torch.randn(4, 6)
    cos = torch.tensor([[float(F.cosine_similarity(a, b, dim=0)) for b in s] for a in q])
    torch.testing.assert_close(cosine_attention(q, s), cos.softmax(dim=1))
    # scale-free: cosine ignores the norms
    torch.testing.assert_close(cosine_attention(5 * q, 0.1 * s), cosine_attention(q, s))
    torch.testing.assert_close(cosine_attention(q, s, scale=10.0), (10 * cos).softmax(dim=1))


def test_matching_log_probs_stay_finite_for_a_peaked_attention():
    scores = torch.tensor([[300.0, -300.0, 0.0], [-300.0, 300.0, -300.0]])     # softmax underflows to 0
    log_probs = attention_log_probs(scores, torch.tensor([0, 1, 1]), ways=2)
    assert bool(torch.isfinite(log_probs).all())
    torch.testing.assert_close(log_probs.exp().sum(1), torch.ones(2))
    torch.testing.assert_close(log_probs[0, 1], torch.logsumexp(torch.tensor([-600.0, -300.0]), 0))


@pytest.mark.parametrize("fce", [False, True])
def test_full_context_embeddings_depend_on_the_whole_support_set(fce):
    torch.manual_seed(0)
    learner = MatchingNet(mlp(), fce=fce, feature_dim=32)
    ep = ClassificationTasks(TRAIN, ways=5, shots=1, queries=2, seed=0)[0]
    changed_x = ep.support_x.clone()
    changed_x[-1] += 1.0                                          # change only the last support example
    before = learner.context_embeddings(ep.support_x, ep.support_y)
    after = learner.context_embeddings(changed_x, ep.support_y)
    others_changed = not torch.allclose(before[:-1], after[:-1])
    assert others_changed == fce                                  # FCE mixes context; plain matching does not
    assert before.shape == (5, 32)


def test_matching_training_and_evaluation_embed_support_and_query_together():
    torch.manual_seed(0)
    learner = MatchingNet(Conv4(hidden=4))                        # BatchNorm: one forward, shared statistics
    ep = image_episode(size=16)
    joint = learner.episode_logits(ep)
    z = learner.encoder(torch.cat([ep.support_x, ep.query_x]))
    expected = (cosine_attention(z[10:], z[:10], scale=learner.scale) @ F.one_hot(ep.support_y, 5).float()).log()
    torch.testing.assert_close(joint, expected)
    loss, metrics = learner.episode_loss(ep)
    assert loss.item() == pytest.approx(F.cross_entropy(expected, ep.query_y).item(), rel=1e-5)
    assert learner.evaluate_episode(ep) == pytest.approx(metrics["accuracy"])


def test_matching_fce_needs_a_feature_width():
    with pytest.raises(ValueError, match="feature_dim"):
        MatchingNet(nn.Linear(16, 8), fce=True)
    with pytest.raises(ValueError, match="process_steps"):
        MatchingNet(Conv4(), fce=True, process_steps=0)


# --- Relation networks --------------------------------------------------------------------------------------

def test_relation_encoder_keeps_7x7_maps_on_28x28_omniglot():
    assert relation_encoder()(torch.rand(2, 1, 28, 28)).shape == (2, 64, 7, 7)
    assert RelationModule()(torch.rand(3, 128, 7, 7)).shape == (3, 1)


def test_relation_scores_have_shape_query_by_ways_in_unit_interval():
    torch.manual_seed(0)
    learner = RelationNet(relation_encoder(hidden=8), RelationModule(channels=8, spatial=7))
    ep = image_episode(ways=5, shots=2, queries=3)
    scores = learner.predict(learner.adapt(ep.support_x, ep.support_y), ep.query_x)
    assert scores.shape == (15, 5)
    assert bool(((scores >= 0) & (scores <= 1)).all())
    loss, metrics = learner.episode_loss(ep)
    joint = learner.episode_logits(ep)
    assert loss.item() == pytest.approx(F.mse_loss(joint, F.one_hot(ep.query_y, 5).float()).item(), rel=1e-6)
    assert set(metrics) == {"loss", "accuracy"}


def test_relation_class_features_sum_the_shots():
    maps = torch.randn(6, 2, 3, 3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.testing.assert_close(class_features(maps, labels, 3), maps[:3] + maps[3:])


def test_relation_module_refuses_maps_too_small_to_pool_twice():
    with pytest.raises(ValueError, match="spatial"):
        RelationModule(spatial=3)


# --- the fine-tune baseline ---------------------------------------------------------------------------------

def separable_images(ways: int = 5, per_class: int = 2, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Class ``c`` is a bright square at its own position on a dark image, plus a little noise."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(ways).repeat_interleave(per_class)
    x = 0.05 * torch.rand(len(y), 1, size, size, generator=g)
    for i, c in enumerate(y.tolist()):
        x[i, 0, 3 * c:3 * c + 3, 3 * c:3 * c + 3] = 1.0
    return x, y


@pytest.mark.parametrize("last_block", [False, True])
def test_finetune_adapt_under_no_grad_fits_the_support_set(last_block):
    torch.manual_seed(0)
    learner = FineTune(Conv4(hidden=8), num_train_classes=10, head_steps=100, finetune_last_block=last_block)
    x, y = separable_images()
    before = {n: p.clone() for n, p in learner.named_parameters()}
    fitted, fit = [], learner._fit                             # the head (and block) predict fits on the support set
    learner._fit = lambda *args: fitted.append(fit(*args)) or fitted[-1]
    with torch.no_grad():                                      # as the evaluator calls it
        adapted = learner.adapt(x, y)
        logits = learner.predict(adapted, x)
    assert logits.shape == (10, 5)
    assert float((logits.argmax(1) == y).float().mean()) == 1.0
    assert all(torch.equal(p, before[n]) for n, p in learner.named_parameters())   # the encoder is untouched
    assert all(p.grad is None for p in learner.parameters())
    assert len(fitted) == 1 and (fitted[0].block is not None) == last_block


def test_finetune_steps_override_head_steps():
    learner = FineTune(Conv4(hidden=4), num_train_classes=3)
    x, y = separable_images(ways=3)
    assert torch.equal(learner.predict(learner.adapt(x, y, steps=0), x), torch.zeros(6, 3))


def test_pretrain_batches_are_seeded_epochs_of_global_labels():
    batches = PretrainBatches(TRAIN, batch_size=64, seed=3)
    epoch = [batches[i] for i in range(len(TRAIN) // 64)]                     # one epoch of batches
    seen = torch.cat([ep.support_x for ep in epoch])
    assert len({tuple(row.tolist()) for row in seen}) == len(seen)             # no example twice in an epoch
    first = epoch[0]
    assert first.query_x.shape == (0, 16) and first.query_y.shape == (0,)
    rows = (TRAIN.x.unsqueeze(0) == first.support_x.unsqueeze(1)).all(-1)      # [B, M] where each example is
    assert torch.equal(TRAIN.y[rows.float().argmax(1)], first.support_y)       # labels are the global class ids
    assert torch.equal(PretrainBatches(TRAIN, 64, seed=3)[5].support_x, batches[5].support_x)
    assert not torch.equal(batches[5].support_x, batches[6].support_x)
    with pytest.raises(ValueError, match="batch_size"):
        PretrainBatches(TRAIN, batch_size=0)


def test_finetune_pretrains_in_the_common_loop_and_refuses_n_way_episodes():
    torch.manual_seed(0)
    learner = FineTune(mlp(), num_train_classes=TRAIN.num_classes, feature_dim=32)
    batch = stack_episodes([PretrainBatches(TRAIN, 32)[0]])
    metrics = learner.meta_backward(batch)
    loss, _ = learner.pretrain_loss(batch.support_x[0], batch.support_y[0])
    assert metrics["loss"] == pytest.approx(loss.item())
    assert learner.head.weight.grad is not None and learner.head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="not on N-way episodes.*training_tasks"):
        learner.episode_loss(toy_test_tasks()[0])
    with pytest.raises(ValueError, match="num_train_classes"):
        learner.pretrain_loss(batch.support_x[0], batch.support_y[0] + TRAIN.num_classes)


def test_finetune_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_train_classes"):
        FineTune(Conv4(), num_train_classes=1)
    with pytest.raises(ValueError, match="head_lr"):
        FineTune(Conv4(), 5, head_lr=0.0)
    with pytest.raises(ValueError, match="finetune_last_block"):
        FineTune(Conv4(out_features=5), 5, finetune_last_block=True)
    with pytest.raises(ValueError, match="feature_dim"):
        FineTune(nn.Linear(16, 8), 5)


# --- every learner: the evaluator and a toy task ------------------------------------------------------------

def toy_learners() -> dict[str, Learner]:
    torch.manual_seed(0)
    return {
        "matching": MatchingNet(mlp()),
        "protonet-mahalanobis": MahalanobisProtoNet(mlp()),
        "matching-fce": MatchingNet(mlp(), fce=True, feature_dim=32, process_steps=3),
        "relation": RelationNet(mlp(), nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))),
        "siamese": SiameseNet(mlp()),
        "siamese-l1": SiameseNet(mlp(), "l1-weighted", feature_dim=32),
        "finetune": FineTune(mlp(), TRAIN.num_classes, head_steps=20, feature_dim=32),
    }


@pytest.mark.parametrize("name", list(toy_learners()))
def test_every_learner_runs_in_the_evaluator_with_query_by_ways_logits(name):
    learner = toy_learners()[name]
    tasks = ClassificationTasks(TEST, ways=4, shots=2, queries=3, seed=0)
    ep = tasks[0]
    with torch.no_grad():
        assert learner.predict(learner.adapt(ep.support_x, ep.support_y), ep.query_x).shape == (12, 4)
    result = evaluate(learner, tasks, episodes=3)
    assert result.metric == "accuracy" and result.episodes == 3
    assert all(0.0 <= v <= 1.0 for v in result.values)
    assert learner.training                                       # the evaluator restores the mode


# meta-steps of Adam (lr 1e-2, 2 tasks a step) per learner; the relation module learns its comparison slowest
TOY_STEPS = {"protonet-mahalanobis": 300, "matching": 300, "matching-fce": 300, "relation": 600}


@pytest.mark.parametrize("name", list(TOY_STEPS))
def test_meta_learner_learns_a_toy_task(name):
    learner = toy_learners()[name]
    before = evaluate(learner, toy_test_tasks(), episodes=50).mean
    meta_train(learner, ClassificationTasks(TRAIN, ways=5, shots=1, queries=5, seed=1), TOY_STEPS[name])
    after = evaluate(learner, toy_test_tasks(), episodes=50).mean
    assert before < 0.35                                          # near chance (0.2): noise swamps the class
    assert after > before + 0.25, (before, after)                 # on classes never seen in training


def test_finetune_pretraining_transfers_to_new_classes():
    learner = toy_learners()["finetune"]
    before = evaluate(learner, toy_test_tasks(), episodes=50).mean
    meta_train(learner, PretrainBatches(TRAIN, batch_size=64, seed=0), steps=150, meta_batch=1)
    after = evaluate(learner, toy_test_tasks(), episodes=50).mean
    assert before < 0.35
    assert after > before + 0.25, (before, after)
