"""Conv-4: the side of its last feature map, and the two ways of making that map a vector."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_protonet
from fewshot.nets import Conv4
from fewshot.nets.conv4 import output_side


@pytest.mark.parametrize("variant", ["pool", "strided"])
@pytest.mark.parametrize("size", [16, 28, 31, 56, 84, 105])
def test_output_side_is_the_side_of_the_last_feature_map(variant, size):
    net = Conv4(hidden=4, variant=variant)
    maps = net.features(torch.zeros(2, 1, size, size))
    assert maps.shape == (2, 4, output_side(size, variant), output_side(size, variant))


@pytest.mark.parametrize("variant", ["pool", "strided"])
def test_flatten_keeps_the_map_and_mean_averages_it(variant):
    torch.manual_seed(0)
    x = torch.randn(3, 1, 56, 56)
    flat = Conv4(hidden=4, variant=variant, pooling="flatten", image_size=56)
    mean = Conv4(hidden=4, variant=variant)
    mean.load_state_dict(flat.state_dict())
    maps = flat.features(x)
    assert flat.embedding_dim == 4 * output_side(56, variant) ** 2
    torch.testing.assert_close(flat.embed(x), maps.reshape(3, -1), rtol=0, atol=0)
    torch.testing.assert_close(mean.embed(x), maps.mean(dim=(2, 3)), rtol=0, atol=0)
    assert mean.embedding_dim == 4


def test_at_28px_the_pool_net_ends_at_one_pixel_so_both_poolings_agree():
    flat = Conv4(hidden=4, pooling="flatten", image_size=28)
    mean = Conv4(hidden=4)
    mean.load_state_dict(flat.state_dict())
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(flat.embed(x), mean.embed(x))


def test_a_head_sits_on_the_flattened_feature():
    net = Conv4(hidden=4, out_features=5, pooling="flatten", image_size=56)
    assert net.head.in_features == 4 * 3 * 3 and net(torch.zeros(2, 1, 56, 56)).shape == (2, 5)


def test_run_config_sets_the_width_and_pooling_of_every_conv_learner():
    from fewshot.runs import build_learner

    for algo in ("protonet", "matching", "siamese", "maml"):
        config = tiny_protonet(algo=algo, ways=5, train_ways=None, channels=8, pooling="flatten", image_size=56)
        learner = build_learner(config)
        convs = [m for m in learner.modules() if isinstance(m, torch.nn.Conv2d)]
        assert [c.out_channels for c in convs] == [8, 8, 8, 8], algo
        net = next(m for m in learner.modules() if isinstance(m, Conv4))
        assert net.embedding_dim == 8 * output_side(56, config.net.removeprefix("conv4-")) ** 2, algo


def test_unknown_pooling_is_refused():
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        Conv4(pooling="max")
