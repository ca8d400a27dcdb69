"""ResNet-12 (TADAM's backbone): shapes, the block layout, the residual path, exact gradients, run configs."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from conftest import tiny_protonet
from fewshot.config import resolve
from fewshot.learners import GradientLearner, ProtoNet
from fewshot.nets import ResNet12
from fewshot.tasks.episode import stack_episodes
from fewshot.tasks.sampler import ClassificationTasks


@pytest.mark.parametrize("size", [28, 40])
@pytest.mark.parametrize("channels", [4, 8])
def test_embedding_is_eight_times_the_first_width_and_a_head_gives_the_ways(size, channels):
    x = torch.randn(3, 1, size, size)
    net = ResNet12(channels=channels)
    assert net.embedding_dim == 8 * channels and net(x).shape == (3, 8 * channels)
    assert ResNet12(channels=channels, out_features=5)(x).shape == (3, 5)


def test_feature_maps_halve_per_block_with_widths_c_2c_4c_8c():
    h = torch.zeros(2, 1, 40, 40)
    for block, (width, side) in zip(ResNet12(channels=3).features, [(3, 20), (6, 10), (12, 5), (24, 2)]):
        h = block(h)
        assert h.shape == (2, width, side, side)


def block_parameters(c_in: int, c_out: int, batch_norm: bool) -> int:
    """Three 3x3 convs and a 1x1 shortcut; each followed by a BatchNorm (scale and shift), or given a bias."""
    weights = 9 * c_in * c_out + 2 * 9 * c_out * c_out + c_in * c_out
    return weights + (4 * 2 * c_out if batch_norm else 4 * c_out)


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_parameter_count_is_the_hand_count_of_tadams_layout(norm):
    widths = [1, 64, 128, 256, 512]
    expected = sum(block_parameters(a, b, norm == "batch") for a, b in zip(widths, widths[1:]))
    assert sum(p.numel() for p in ResNet12(norm=norm).parameters()) == expected        # 7,995,520 with BN
    assert sum(p.numel() for p in ResNet12(norm=norm, out_features=5).parameters()) == expected + 512 * 5 + 5


def test_batch_norm_uses_batch_statistics_always_and_none_has_no_norm_layers():
    net = ResNet12(channels=2)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 16 and not any(m.track_running_stats for m in norms)
    assert not list(ResNet12(channels=2, norm="none").buffers())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in ResNet12(channels=2, norm="none").modules())


def test_unknown_norm_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="unknown norm 'layer'; use 'batch' or 'none'"):
        ResNet12(norm="layer")


def test_with_the_third_norm_zeroed_a_block_is_the_pooled_activation_of_its_shortcut():
    torch.manual_seed(0)
    block = ResNet12(channels=4).features[1]                      # 4 -> 8 channels
    x = torch.randn(3, 4, 10, 10)
    with torch.no_grad():
        full = block(x)
        block.bn3.weight.zero_()
        block.bn3.bias.zero_()
        cut = block(x)
    conv, bn = block.shortcut
    h = F.conv2d(x, conv.weight)                                  # 1x1, no bias
    mean, var = h.mean(dim=(0, 2, 3), keepdim=True), h.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    h = (h - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    expected = F.max_pool2d(torch.where(h > 0, h, 0.1 * h), 2).detach()
    torch.testing.assert_close(cut, expected, rtol=1e-5, atol=1e-6)
    assert (full - expected).abs().max() > 0.1                    # the three-conv path does add to it


@pytest.mark.parametrize("norm, batch", [("none", 1), ("batch", 2)])
def test_gradients_are_exact_for_input_and_weights(norm, batch):
    torch.manual_seed(0)
    net = ResNet12(channels=2, out_features=3, norm=norm).double()
    x = torch.randn(batch, 1, 16, 16, dtype=torch.float64, requires_grad=True)
    names = ["features.0.conv1.weight", "features.2.conv3.weight", "features.3.shortcut.0.weight", "head.weight"]
    if norm == "batch":
        names += ["features.1.bn2.weight", "features.3.bn3.bias"]
    params = dict(net.named_parameters())
    chosen = [params[n].detach().clone().requires_grad_() for n in names]

    def f(x, *weights):
        return torch.func.functional_call(net, {**params, **dict(zip(names, weights))}, (x,))

    assert torch.autograd.gradcheck(f, (x, *chosen), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_run_config_builds_a_resnet12_encoder_of_the_configured_width():
    from fewshot.runs import build_learner

    config = tiny_protonet(net="resnet12", channels=8)
    learner = build_learner(config)
    assert isinstance(learner, ProtoNet) and isinstance(learner.encoder, ResNet12)
    assert [b.conv1.out_channels for b in learner.encoder.features] == [8, 16, 32, 64]
    maml = build_learner(tiny_protonet(algo="maml", net="resnet12", channels=2, train_ways=None, norm="none"))
    assert isinstance(maml, GradientLearner) and maml.model.head.out_features == 5
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in maml.modules())


def test_protonet_with_resnet12_learns_omniglot_episodes(omniglot_background):
    from fewshot.runs import build_learner

    torch.manual_seed(0)
    learner = build_learner(tiny_protonet(net="resnet12", channels=8))
    tasks = ClassificationTasks(omniglot_background, ways=5, shots=1, queries=5, seed=0)
    fixed = ClassificationTasks(omniglot_background, ways=5, shots=1, queries=5, seed=100)   # scored, never trained on

    def accuracy() -> float:
        with torch.no_grad():
            return sum(learner.evaluate_episode(fixed[i]) for i in range(20)) / 20

    before = accuracy()                                           # 0.44: random features are better than chance
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    for step in range(40):
        optimizer.zero_grad(set_to_none=True)
        learner.meta_backward(stack_episodes([tasks[2 * step], tasks[2 * step + 1]]))
        optimizer.step()
    after = accuracy()                                            # 0.65 (seeds 0-2: 0.65-0.70; chance 0.2)
    assert after > 0.55 and after > before + 0.1, (before, after)


def test_maml_with_resnet12_takes_a_meta_step_through_functional_call(omniglot_background):
    from fewshot.runs import build_learner

    torch.manual_seed(0)
    learner = build_learner(tiny_protonet(algo="maml", net="resnet12", channels=2, train_ways=None, inner_steps=1))
    tasks = ClassificationTasks(omniglot_background, ways=5, shots=1, queries=2, seed=0)
    before = {n: p.detach().clone() for n, p in learner.named_parameters()}
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    metrics = learner.meta_backward(stack_episodes([tasks[0], tasks[1]]))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in learner.parameters())
    optimizer.step()
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    assert all(not torch.equal(before[n], p) for n, p in learner.named_parameters())


def test_config_accepts_resnet12_on_omniglot_and_refuses_flatten_and_relation():
    config = tiny_protonet(net="resnet12", channels=32)
    assert (config.net, config.channels) == ("resnet12", 32)
    with pytest.raises(ValueError, match="pooling does not apply to protonet on omniglot with net resnet12; drop it"):
        tiny_protonet(net="resnet12", pooling="flatten")
    with pytest.raises(ValueError, match="relation builds its own encoder \\(relation-conv\\), not resnet12: drop net"):
        tiny_protonet(algo="relation", net="resnet12")
    with pytest.raises(ValueError, match="net 'resnet12' does not fit dataset 'sinusoid': use mlp"):
        resolve({}, {"algo": "maml", "dataset": "sinusoid", "net": "resnet12"})
