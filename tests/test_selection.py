"""Active selection: the loop reveals only the labels it picks, picks what the acquisition says, and the command's
JSON contract, resumption and bad input on the FS-Mol fixture."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from conftest import cli
from fewshot.drug.acquisition import Moments
from fewshot.drug.selection import Experiment, SelectionSpec, _curve, select

FIXTURES = Path(__file__).parent / "data" / "molecules"


class Hidden:
    """Labels nobody may read: any access fails the test."""

    def __getitem__(self, idx):
        raise AssertionError("the loop read the labels behind the experiment's back")

    def clone(self):
        return self


class Recording(Experiment):
    """An experiment that records each call's positions; its label store is poisoned (:class:`Hidden`)."""

    def __init__(self, labels: torch.Tensor):
        super().__init__(torch.zeros(len(labels), dtype=torch.long))
        self._truth, self._labels, self.calls = labels.clone(), Hidden(), []

    def measure(self, positions):
        positions = positions.flatten().long()
        self.calls.append(positions.tolist())
        self.measured.extend(positions.tolist())
        return self._truth[positions].clone()


def _assay(n: int = 60, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    return x, (x[:, 0] > 0.3).long()


def _scorer(calls: list):
    """Belief = the first feature (the labels' cause), spread = |second feature|; records what it is shown."""
    def score(sx, sy, qx, g):
        calls.append((len(sx), sy.clone()))
        return Moments(torch.sigmoid(qx[:, 0]).double(), qx[:, 1].abs().double())
    return score


@pytest.mark.parametrize("acquisition", ["greedy", "ucb", "ei", "random"])
def test_the_loop_reveals_only_the_labels_it_picks(acquisition):
    x, y = _assay()
    support = torch.tensor([0, 1, 2, 3, 4, 5])
    experiment, seen = Recording(y), []
    spec = SelectionSpec(rounds=4, batch=5, acquisition=acquisition)
    picks = select(_scorer(seen), x, experiment, support, spec, torch.Generator().manual_seed(0))
    assert experiment.calls == [support.tolist(), *picks]          # the support, then each round's picks, only
    flat = [p for r in picks for p in r]
    assert len(set(flat)) == 20 and not set(flat) & set(support.tolist())
    for k, (n, labels) in enumerate(seen):                          # the model saw the measured labels only
        assert n == 6 + 5 * k and torch.equal(labels, y[torch.tensor(experiment.measured[:n])])


def test_greedy_picks_the_highest_belief_and_random_is_seeded():
    x, y = _assay()
    support = torch.arange(6)
    picks = select(_scorer([]), x, Experiment(y), support, SelectionSpec(1, 5, "greedy"), torch.Generator())
    order = torch.argsort(x[6:, 0], descending=True)[:5] + 6
    assert picks == [order.tolist()]
    a = select(None, x, Experiment(y), support, SelectionSpec(3, 4, "random"), torch.Generator().manual_seed(3))
    b = select(None, x, Experiment(y), support, SelectionSpec(3, 4, "random"), torch.Generator().manual_seed(3))
    assert a == b


def test_an_experiment_refuses_to_measure_twice():
    e = Experiment(torch.tensor([0, 1, 0]))
    e.measure(torch.tensor([1]))
    with pytest.raises(ValueError, match="measured twice"):
        e.measure(torch.tensor([1, 2]))


def test_curves_by_hand():
    c = _curve([[1, 0, 1, 1], [0, 0, 1, 0]], batch=2)       # two draws, two rounds of two: 4 hits in 8 picks
    assert c.hit_rate == pytest.approx(4 / 8)
    assert c.per_round == pytest.approx([(1 + 0) / 4, (2 + 1) / 4])
    assert c.cumulative == pytest.approx([(1 + 0) / 2, (3 + 1) / 2])


#: A random-forest FS-Mol run: nothing is trained, so its config is the whole run directory.
FOREST_RUN = {"data": {"dataset": "fsmol", "featurizer": "ecfp", "fp_counts": False, "holdout_val": 2},
              "model": {"net": None}, "learner": {"algo": "forest", "trees": 10}}


@pytest.fixture
def forest_run(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(FOREST_RUN))
    return tmp_path / "run"


def test_optimize_json_contract_and_resumption(forest_run, tmp_path, capsys):
    argv = ["optimize", forest_run, "--dataset", "fsmol", "--split", "valid", "--support-size", "16", "--rounds", "2",
            "--batch", "4", "--acquisition", "ucb", "--draws", "2", "--trees", "10", "--data-root", FIXTURES,
            "--out", tmp_path / "o", "--json"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, out, err = cli(argv, capsys)
    assert code == 0, err
    last = json.loads(out.strip().splitlines()[-1])
    assert list(last)[:9] == ["metric", "mean", "stderr", "tasks", "rounds", "batch", "acquisition", "random",
                              "forest"]
    assert last["metric"] == "hit_rate" and last["tasks"] == 3 and last["rounds"] == 2 and last["batch"] == 4
    assert 0 <= last["mean"] <= 1 and {"mean", "stderr"} <= set(last["random"]) <= set(last["forest"])
    assert len(last["cumulative_actives"]) == 2 and len(list((tmp_path / "o" / "assays").iterdir())) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, again, err = cli(argv, capsys)                                   # read back, not recomputed
    assert code == 0 and json.loads(again.strip().splitlines()[-1]) == last
    code, out, err = cli([*argv[:-3], "--seed", "1", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "other settings (seed differ" in err


@pytest.mark.parametrize("extra, pattern", [
    (["--split", "test"], "fsmol_test.csv.gz not found"),
    (["--split", "valid", "--rounds", "20", "--batch", "8"], "no assay has the 176 molecules"),
    (["--split", "valid", "--dataset", "tox21"], "was trained on fsmol, not tox21"),
    (["--split", "valid", "--acquisition", "thompson"], "invalid choice: 'thompson'"),
    (["--split", "valid", "--batch", "0"], "must be an integer >= 1, got 0"),
])
def test_optimize_bad_input_is_one_line(forest_run, extra, pattern, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, out, err = cli(["optimize", forest_run, "--data-root", FIXTURES, *extra], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and pattern in err, err


def test_optimize_names_a_missing_run(tmp_path, capsys):
    code, out, err = cli(["optimize", tmp_path / "nothing", "--split", "valid"], capsys)
    assert code == 2 and "not a fewshot run directory" in err
