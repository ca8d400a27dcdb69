"""Calibration metrics (ECE, MCE, NLL, Brier), their bootstrap intervals, temperature scaling, and the
``fewshot eval --calibration`` / ``fewshot calibrate`` commands end to end."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from conftest import cli, tiny_protonet
from fewshot import calibration as calib
from fewshot.calibration import (
    brier_score, expected_calibration_error, fit_temperature, fit_temperature_to, maximum_calibration_error,
    negative_log_likelihood, temperature_nll,
)
from fewshot.evaluate import evaluate
from fewshot.learners.base import Learner
from fewshot.learners.temperature import TemperatureScaled
from fewshot.runs import trainer_for
from fewshot.tasks.episode import Episode

MOLECULES = Path(__file__).parent / "data" / "molecules"
KEYS = {"ece", "mce", "nll", "brier", "ece_ci95", "mce_ci95", "nll_ci95", "brier_ci95"}
EPISODE_KEYS = {"metric", "mean", "ci95", "episodes", "dataset", "split", "ways", "shots"}


# -- synthetic predictors ------------------------------------------------------------------------------------
class LogitTasks(Dataset):
    """Episodes whose query inputs *are* calibrated logits ``z [queries, ways]`` (``2 * N(0, 1)``) and whose labels
    are drawn from ``softmax(z)``: a learner that predicts ``z`` is perfectly calibrated."""

    def __init__(self, episodes: int, queries: int = 50, ways: int = 5, seed: int = 0):
        self.episodes, self.queries, self.ways, self.seed = episodes, queries, ways, seed

    def __len__(self) -> int:
        return self.episodes

    def __getitem__(self, i: int) -> Episode:
        g = torch.Generator().manual_seed(self.seed * 100_003 + i)
        z = 2 * torch.randn(self.queries, self.ways, generator=g)
        y = torch.multinomial(torch.softmax(z, 1), 1, generator=g).flatten()
        return Episode(torch.zeros(self.ways, 1), torch.arange(self.ways), z, y)


class ScaledLogits(Learner):
    """Predicts ``scale * query_x``: over-confident by a temperature ``scale`` on :class:`LogitTasks`."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def adapt(self, support_x, support_y, steps=None):
        return None

    def predict(self, adapted, query_x):
        return self.scale * query_x


def calibrated_binary(n: int, seed: int, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` binary predictions of confidence ``c ~ U(0.5, 1)``, right with probability ``c - shift``."""
    g = torch.Generator().manual_seed(seed)
    c = 0.5 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
    right = torch.rand(n, generator=g, dtype=torch.float64) < c - shift
    return torch.stack([c, 1 - c], 1), (~right).long()


# -- the metrics ---------------------------------------------------------------------------------------------
def test_a_perfectly_calibrated_predictor_has_ece_near_zero():
    # 50,000 predictions over the 7.5 bins covering [0.5, 1]: ~6,700 a bin, whose accuracy then differs from its
    # confidence by sampling error alone, sd sqrt(c(1-c)/n_b) <= 0.006; the ECE is the mean |error|, about
    # sqrt(2/pi) * 0.0053 = 0.004 (0.0039 ± 0.0011 over 20 seeds). 0.012 is three times that.
    probs, labels = calibrated_binary(50_000, seed=0)
    assert expected_calibration_error(probs, labels) < 0.012
    shifted = calibrated_binary(50_000, seed=0, shift=0.1)           # the same, right 10 points less often
    assert abs(expected_calibration_error(*shifted) - 0.1) < 0.012


def test_a_constant_overconfident_predictor_has_ece_and_mce_0_3():
    probs = torch.tensor([[0.9, 0.1]], dtype=torch.float64).repeat(1000, 1)     # confidence 0.9, accuracy 0.6
    labels = torch.cat([torch.zeros(600), torch.ones(400)]).long()
    assert expected_calibration_error(probs, labels) == pytest.approx(0.3, abs=1e-9)
    assert maximum_calibration_error(probs, labels) == pytest.approx(0.3, abs=1e-9)


def test_nll_and_brier_of_a_hand_example():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    assert negative_log_likelihood(probs, labels) == pytest.approx((-math.log(0.7) - math.log(0.4)) / 2, rel=1e-12)
    # (0.3² + 0.2² + 0.1² + 0.1² + 0.5² + 0.6²) / 2 = (0.14 + 0.62) / 2
    assert brier_score(probs, labels) == pytest.approx(0.38, rel=1e-12)
    # ECE by hand: bin 10 (0.7) right, gap 0.3; bin 7 (0.5) wrong, gap 0.5 -> (0.3 + 0.5) / 2; MCE 0.5
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4, abs=1e-12)
    assert maximum_calibration_error(probs, labels) == pytest.approx(0.5, abs=1e-12)


def test_binary_brier_is_of_the_class_1_probability():
    logits = torch.tensor([[0.0, math.log(3)], [0.0, 0.0]])          # p(active) = 0.75, 0.5
    stats = calib.episode_statistics(logits, torch.tensor([1, 0]), binary=True)
    assert float(calib.metrics(stats)["brier"]) == pytest.approx((0.25 ** 2 + 0.5 ** 2) / 2)
    multi = calib.episode_statistics(logits, torch.tensor([1, 0]))
    assert float(calib.metrics(multi)["brier"]) == pytest.approx(2 * (0.25 ** 2 + 0.5 ** 2) / 2)


def test_bins_are_right_closed_and_the_first_holds_zero():
    c = torch.tensor([0.0, 1 / 15, 1 / 15 + 1e-9, 0.5, 14 / 15, 14 / 15 + 1e-9, 1.0], dtype=torch.float64)
    assert calib.bin_index(c).tolist() == [0, 0, 1, 7, 13, 14, 14]


def test_the_bootstrap_is_seeded_and_shrinks_with_more_episodes():
    tasks = LogitTasks(400, queries=20)
    learner = ScaledLogits(2.0)
    stats = torch.stack([calib.episode_statistics(learner.query_outputs(tasks[i]), tasks[i].query_y)
                         for i in range(len(tasks))])
    first, again = calib.bootstrap_bounds(stats, seed=0), calib.bootstrap_bounds(stats, seed=0)
    assert first == again and calib.bootstrap_bounds(stats, seed=1) != first
    few, many = calib.pooled(stats[:25]), calib.pooled(stats)
    for m in calib.METRICS:                     # 16 times the episodes: about a quarter of the width
        assert 0 < getattr(many, f"{m}_ci95") < getattr(few, f"{m}_ci95") / 2, m
        low, high = many.bounds[m]
        assert low <= getattr(many, m) <= high and getattr(many, f"{m}_ci95") == pytest.approx((high - low) / 2)


def test_evaluate_with_calibration_keeps_the_result_and_adds_the_metrics():
    tasks, learner = LogitTasks(30), ScaledLogits(1.0)
    plain, scored = evaluate(learner, tasks, 30), evaluate(learner, tasks, 30, calibration=True)
    assert plain.calibration is None and str(plain) == str(scored) and plain.mean == scored.mean
    cal = scored.calibration
    assert set(cal.as_dict()) == KEYS and cal.predictions == 30 * 50
    assert cal.ece < 0.05 and sum(cal.bin_counts) == 1500
    pooled = torch.cat([torch.softmax(tasks[i].query_x.double(), 1) for i in range(30)])
    labels = torch.cat([tasks[i].query_y for i in range(30)])
    assert cal.ece == pytest.approx(expected_calibration_error(pooled, labels), abs=1e-6)
    assert cal.nll == pytest.approx(negative_log_likelihood(pooled, labels), abs=1e-6)


def test_evaluate_refuses_calibration_of_a_regressor():
    class Regressor(ScaledLogits):
        task = "regression"

    with pytest.raises(ValueError, match="calibration metrics need class probabilities; this learner does regression"):
        evaluate(Regressor(1.0), LogitTasks(2), 2, calibration=True)


# -- temperature scaling -------------------------------------------------------------------------------------
def test_temperature_scaling_keeps_accuracy_and_lowers_the_nll_of_an_overconfident_learner():
    val, test = LogitTasks(40, seed=1), LogitTasks(40, seed=2)
    learner = ScaledLogits(3.0)
    before_val = temperature_nll(*calib.query_logits(learner, val), 1.0)
    t = fit_temperature(learner, val, 40)
    after_val = temperature_nll(*calib.query_logits(TemperatureScaled(learner, t), val), 1.0)
    assert t > 2 and after_val < before_val - 0.1
    raw, scaled = evaluate(learner, test, 40, calibration=True), evaluate(TemperatureScaled(learner, t), test, 40,
                                                                          calibration=True)
    assert scaled.values == raw.values                                # the same accuracy, episode by episode
    assert scaled.calibration.nll < raw.calibration.nll and scaled.calibration.ece < raw.calibration.ece


@pytest.mark.parametrize("true_t", [0.5, 3.0])
def test_temperature_scaling_recovers_a_known_temperature(true_t):
    # logits = T* x calibrated logits, 10,000 predictions: the fitted T is T* within 1.3 % sd (20 seeds at T* = 3:
    # 3.010 ± 0.038); 5 % is four sd.
    tasks = LogitTasks(200, queries=50)
    outputs, labels = calib.query_logits(ScaledLogits(true_t), tasks)
    assert fit_temperature_to(outputs, labels) == pytest.approx(true_t, rel=0.05)


def test_temperature_scaled_refuses_a_bad_temperature():
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            TemperatureScaled(ScaledLogits(1.0), bad)


def test_a_separable_set_stops_at_the_bound_with_a_warning():
    outputs = torch.tensor([[10.0, -10.0], [-10.0, 10.0]])
    with pytest.warns(UserWarning, match="lies on the bound"):
        assert fit_temperature_to(outputs, torch.tensor([0, 1])) == pytest.approx(calib.TEMPERATURE_RANGE[0], rel=0.02)


# -- the command ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def proto(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cal") / "proto"
    trainer_for(tiny_protonet(), run, progress=False).run()
    return run


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_eval_calibration_json_has_the_metrics_beside_every_key(proto, capsys):
    code, out, err = cli(["eval", proto, "--episodes", 10, "--json", "--threads", 1], capsys)
    assert code == 0, err
    plain = last_json(out)
    code, out, err = cli(["eval", proto, "--episodes", 10, "--calibration", "--json", "--threads", 1], capsys)
    assert code == 0, err
    result = last_json(out)
    assert set(result) == EPISODE_KEYS | KEYS
    assert {k: result[k] for k in plain} == plain
    assert 0 <= result["ece"] <= 1 and 0 <= result["brier"] <= 2 and result["nll"] > 0
    assert all(result[f"{m}_ci95"] >= 0 for m in calib.METRICS)
    code, out, err = cli(["eval", proto, "--episodes", 10, "--calibration", "--threads", 1], capsys)
    lines = out.strip().splitlines()
    assert code == 0 and lines[-2].startswith("accuracy: ") and lines[-1].startswith("calibration: ECE ")


def test_eval_plot_writes_a_reliability_diagram(proto, tmp_path, capsys):
    code, out, err = cli(["eval", proto, "--episodes", 5, "--plot", tmp_path / "plots", "--threads", 1], capsys)
    assert code == 0, err
    png = tmp_path / "plots" / "reliability.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "calibration: ECE" in out and f"reliability diagram: {png}" in err


def test_calibrate_fits_on_validation_only_and_eval_applies_it(proto, tmp_path, capsys, monkeypatch):
    from fewshot.registry import DOMAINS

    run = tmp_path / "proto"
    shutil.copytree(proto, run)
    omniglot = type(DOMAINS["omniglot"])
    real_val, calls = omniglot.val_tasks, []

    def no_test(*args, **kwargs):
        raise AssertionError("fewshot calibrate drew test episodes")

    def val_tasks(self, config):
        calls.append(config)
        return real_val(self, config)

    with monkeypatch.context() as patch:
        patch.setattr(omniglot, "test_tasks", no_test)
        patch.setattr(omniglot, "val_tasks", val_tasks)
        code, out, err = cli(["calibrate", run, "--episodes", 12, "--threads", 1], capsys)
    assert code == 0, err
    assert len(calls) == 1
    record = json.loads((run / "calibration.json").read_text())
    assert {k: record[k] for k in ("split", "episodes", "checkpoint")} == {"split": "val", "episodes": 12,
                                                                           "checkpoint": "best"}
    assert record["temperature"] > 0 and record["nll_after"] <= record["nll_before"]
    assert out.startswith(f"temperature {record['temperature']:.4f} (fitted on 12 validation episodes")
    code, out, err = cli(["eval", run, "--episodes", 10, "--json", "--threads", 1], capsys)
    plain = last_json(out)
    code, out, err = cli(["eval", run, "--episodes", 10, "--temperature", "fitted", "--json", "--threads", 1], capsys)
    assert code == 0, err
    scaled = last_json(out)
    assert scaled["temperature"] == record["temperature"] and KEYS <= set(scaled)
    assert scaled["mean"] == plain["mean"] and scaled["ci95"] == plain["ci95"]    # accuracy untouched
    code, out, err = cli(["eval", run, "--episodes", 10, "--temperature", "2.5", "--json", "--threads", 1], capsys)
    assert code == 0 and last_json(out)["temperature"] == 2.5 and last_json(out)["mean"] == plain["mean"]


def test_eval_temperature_fitted_without_calibration_is_refused(proto, capsys):
    assert not (proto / "calibration.json").exists()
    code, out, err = cli(["eval", proto, "--episodes", 2, "--temperature", "fitted"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"`fewshot calibrate {proto}`" in err


def test_molecule_eval_calibration_and_calibrate(tmp_path, tmp_path_factory, capsys, monkeypatch):
    pytest.importorskip("rdkit")
    pytest.importorskip("sklearn")
    import yaml

    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path_factory.getbasetemp() / "mol-cache"))   # test_molecule_cli's
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"holdout_val": 2, "trees": 10, "draws": 2}))
    run = tmp_path / "forest"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, out, err = cli(["train", "--algo", "forest", "--dataset", "fsmol", "--config", tmp_path / "c.yaml",
                              "--data-root", MOLECULES, "--out", run, "--no-progress", "--threads", 1], capsys)
        assert code == 0, err
        argv = ["eval", run, "--split", "valid", "--support-size", 16, "--data-root", MOLECULES, "--json"]
        code, out, err = cli(argv, capsys)
        plain = last_json(out)
        code, out, err = cli([*argv, "--calibration"], capsys)
        assert code == 0, err
        result = last_json(out)
        assert set(result) == set(plain) | KEYS | {"enrichment_expected"} and {k: result[k] for k in plain} == plain
        assert 0 <= result["ece"] <= 1 and 0 <= result["brier"] <= 1 and result["tasks"] == 3
        code, out, err = cli(["calibrate", run, "--data-root", MOLECULES, "--json"], capsys)
        assert code == 0, err
        record = last_json(out)
        assert record["split"] == "val" and record["temperature"] > 0
        code, out, err = cli([*argv, "--temperature", "fitted"], capsys)
    assert code == 0, err
    scaled = last_json(out)
    assert scaled["temperature"] == record["temperature"] and scaled["mean"] == plain["mean"]
