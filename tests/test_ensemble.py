"""Ensembles: the probability average, per-member image sizes, loading runs together, `fewshot eval --ensemble`."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch
import yaml
from torch.nn import functional as F

from conftest import cli, tiny_protonet, tiny_sinusoid
from fewshot.datasets.lake_runs import write_lake_runs
from fewshot.datasets.omniglot import PACKAGE_DATA_ROOT, _decode_png
from fewshot.learners import ProtoNet
from fewshot.learners.ensemble import Ensemble, mean_log_probs, resize_images
from fewshot.nets import MLP, Conv4
from fewshot.tasks.episode import Episode
from fewshot.runs import load_ensemble, load_learner, trainer_for
from fewshot.train import RunError

BACKGROUND = PACKAGE_DATA_ROOT / "omniglot" / "images_background.zip"


def episode(size: int, seed: int = 0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    return Episode(torch.rand(5, 1, size, size, generator=g), torch.arange(5),
                   torch.rand(10, 1, size, size, generator=g), torch.arange(5).repeat(2))


def protonet(seed: int) -> ProtoNet:
    torch.manual_seed(seed)
    return ProtoNet(Conv4(variant="pool")).eval()


def test_mean_log_probs_is_the_log_of_the_mean_probability():
    a, b = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    expected = torch.log((a.softmax(-1) + b.softmax(-1)) / 2)
    torch.testing.assert_close(mean_log_probs([a, b]), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mean_log_probs([a]), a.log_softmax(-1), rtol=1e-12, atol=1e-12)


def test_ensemble_averages_its_members_probabilities_in_both_protocols():
    members, ep = [protonet(0), protonet(1)], episode(28)
    ensemble = Ensemble(members).eval()
    own = [m.query_outputs(ep) for m in members]
    torch.testing.assert_close(ensemble.query_outputs(ep), mean_log_probs(own))
    assert not torch.allclose(own[0].softmax(-1), own[1].softmax(-1))            # two different members
    with torch.no_grad():
        via_adapt = ensemble.predict(ensemble.adapt(ep.support_x, ep.support_y), ep.query_x)
        separate = [m.predict(m.adapt(ep.support_x, ep.support_y), ep.query_x) for m in members]
    torch.testing.assert_close(via_adapt, mean_log_probs(separate))
    assert ensemble.evaluate_episode(ep) == pytest.approx(
        float((mean_log_probs(own).argmax(-1) == ep.query_y).float().mean()))


def test_each_member_sees_the_episode_at_its_own_image_size():
    small, large = protonet(0), protonet(1)
    ensemble = Ensemble([small, large], sizes=[28, 56]).eval()
    ep = episode(56)
    resized = Episode(resize_images(ep.support_x, 28), ep.support_y, resize_images(ep.query_x, 28), ep.query_y)
    expected = mean_log_probs([small.query_outputs(resized), large.query_outputs(ep)])
    torch.testing.assert_close(ensemble.query_outputs(ep), expected)
    assert resize_images(ep.query_x, None) is ep.query_x and resize_images(ep.query_x, 56) is ep.query_x


def test_resize_matches_the_omniglot_loaders_pillow_resize_within_one_grey_level():
    with zipfile.ZipFile(BACKGROUND) as z:
        pngs = [z.read(n) for n in sorted(z.namelist()) if n.endswith(".png")][:400:40]
    for data in pngs:
        full = torch.from_numpy(_decode_png(data, 105)).float().div(255)[None, None]
        for size in (28, 56):
            pillow = torch.from_numpy(_decode_png(data, size)).float().div(255)
            assert (resize_images(full, size)[0, 0] - pillow).abs().max() < 1 / 255


def test_ensemble_refuses_regression_members_and_mismatched_sizes():
    with pytest.raises(ValueError, match="averages class probabilities"):
        Ensemble([protonet(0), type("Regressor", (ProtoNet,), {"task": "regression"})(MLP(1, (4,), 2))])
    with pytest.raises(ValueError, match="need as many sizes"):
        Ensemble([protonet(0)], sizes=[28, 56])
    with pytest.raises(ValueError, match="at least one member"):
        Ensemble([])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny ProtoNet runs on the same split, at 28 px and at 32 px with a narrower, flattened net, a
    sinusoid run, and a ProtoNet run that holds out one validation alphabet, not three (so trains on two more)."""
    root = tmp_path_factory.mktemp("ensemble")
    trainer_for(tiny_protonet(steps=1), root / "p28", progress=False).run()
    trainer_for(tiny_protonet(steps=1, image_size=32, seed=1, channels=8, pooling="flatten"), root / "p32",
            progress=False).run()
    trainer_for(tiny_sinusoid(steps=1), root / "sinusoid", progress=False).run()
    trainer_for(tiny_protonet(steps=1, holdout_val=1, seed=2), root / "p28v1", progress=False).run()
    return root


def test_load_ensemble_draws_episodes_at_the_largest_size_and_refuses_another_split(runs):
    ensemble, configs = load_ensemble([runs / "p28", runs / "p32"])
    assert configs[0].image_size == 32 and ensemble.sizes == [28, 32] and len(ensemble.members) == 2
    assert ensemble.members[1].encoder.embedding_dim == 8 * 2 * 2    # 32 px: a 2x2 map of 8 channels, flattened
    for member, run in zip(ensemble.members, ("p28", "p32")):
        alone, _ = load_learner(runs / run)
        assert all(torch.equal(a, b) for a, b in zip(member.state_dict().values(), alone.state_dict().values()))
    with pytest.raises(RunError, match=r"cannot join an ensemble with .*p28: its dataset is 'sinusoid'"):
        load_ensemble([runs / "p28", runs / "sinusoid"])


def test_cli_eval_scores_an_ensemble_on_episodes_and_on_the_lake_runs(runs, tmp_path, capsys):
    code, out, err = cli(["eval", runs / "p28", "--ensemble", runs / "p32", "--episodes", "4", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["metric"] == "accuracy" and result["episodes"] == 4 and 0 <= result["mean"] <= 1
    test_alphabets = yaml.safe_load((runs / "p28" / "config.yaml").read_text())["data"]["test_alphabets"]
    write_lake_runs(tmp_path / "omniglot", BACKGROUND, test_alphabets, runs=2)
    code, out, err = cli(["eval", runs / "p28", "--ensemble", runs / "p32", "--benchmark", "omniglot-lake-runs",
                          "--data-root", tmp_path], capsys)
    assert code == 0 and out.startswith("error: ") and "2 runs" in out and "each run's own inner steps" in out, err


def test_cli_eval_with_distorted_support_copies_on_episodes_and_on_the_lake_runs(runs, tmp_path, capsys):
    code, out, err = cli(["eval", runs / "p28", "--ensemble", runs / "p32", "--augment-support", "2", "--episodes", "3",
                          "--json"], capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["augment_support"] == 2 and result["episodes"] == 3 and 0 <= result["mean"] <= 1
    test_alphabets = yaml.safe_load((runs / "p28" / "config.yaml").read_text())["data"]["test_alphabets"]
    write_lake_runs(tmp_path / "omniglot", BACKGROUND, test_alphabets, runs=2)
    code, out, err = cli(["eval", runs / "p28", "--augment-support", "3", "--benchmark", "omniglot-lake-runs",
                          "--data-root", tmp_path, "--json"], capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["augment_support"] == 3 and result["runs"] == 2 and result["metric"] == "error"
    code, out, err = cli(["eval", runs / "p28", "--augment-support", "3", "--benchmark", "omniglot-lake-runs",
                          "--data-root", tmp_path], capsys)
    assert code == 0 and out.startswith("error: ") and "support + 3 distorted copies" in out, err
    code, out, err = cli(["eval", runs / "p28", "--augment-support", "3", "--episodes", "2"], capsys)
    assert code == 0 and "support + 3 distorted copies" in out, err


def test_runs_holding_out_other_validation_alphabets_join_but_are_not_scored_on_what_one_trained_on(runs, tmp_path,
                                                                                                 capsys):
    first, other = (yaml.safe_load((runs / r / "config.yaml").read_text())["data"] for r in ("p28", "p28v1"))
    assert first["test_alphabets"] == other["test_alphabets"] and len(first["val_alphabets"]) == 3
    trained_by_other = sorted(set(first["val_alphabets"]) - set(other["val_alphabets"]))
    assert len(trained_by_other) == 2
    code, out, err = cli(["eval", runs / "p28", "--ensemble", runs / "p28v1", "--episodes", "2", "--json"], capsys)
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["episodes"] == 2, err
    code, out, err = cli(["eval", runs / "p28", "--ensemble", runs / "p28v1", "--split", "val", "--episodes", "2"],
                         capsys)
    assert code != 0 and "p28v1" in err and "training classes" in err and "drop --split" in err
    assert any(alphabet in err for alphabet in trained_by_other) and "Traceback" not in err
    code, out, err = cli(["eval", runs / "p28", "--split", "val", "--episodes", "2"], capsys)
    assert code == 0, err
    write_lake_runs(tmp_path / "omniglot", BACKGROUND, first["val_alphabets"], runs=3)
    code, out, err = cli(["eval", runs / "p28", "--benchmark", "omniglot-lake-runs", "--data-root", tmp_path], capsys)
    assert code == 0, err
    code, out, err = cli(["eval", runs / "p28", "--ensemble", runs / "p28v1", "--benchmark", "omniglot-lake-runs",
                          "--data-root", tmp_path], capsys)
    assert code != 0 and "p28v1" in err and "make_lake_runs.py" in err and "Traceback" not in err
