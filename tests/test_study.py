"""``fewshot study``: the search space, two workers on one SQLite study, resuming it, the cost study."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fewshot.cli import main
from fewshot.report.studies import pareto, search_space
from tests.test_report import pixel_std

TINY = ["--algo", "maml", "--steps", "1", "--val-every", "1", "--val-episodes", "2", "--startup-trials", "2",
        "--set", "queries=2", "--set", "train_queries=2", "--set", "channels=8", "--set", "meta_batch=2"]


def test_search_space_holds_the_learners_own_switches():
    assert set(search_space("maml")) == {"inner_lr", "inner_steps", "meta_batch", "lr", "multi_step_loss"}
    assert set(search_space("protonet")) == {"meta_batch", "lr"}
    assert search_space("maml")["inner_lr"] == ("log", 0.01, 1.0)
    # DKT's per-task GP scale is for regression only
    assert "task_scale" not in search_space("dkt") and "task_scale" in search_space("dkt", "regression")


def test_pareto_front_by_brute_force():
    points = [(1.0, 0.5), (2.0, 0.7), (2.0, 0.6), (3.0, 0.7), (0.5, 0.2), (4.0, 0.9)]
    assert pareto(points) == [4, 0, 1, 5]


def test_two_workers_share_one_sqlite_study_and_a_rerun_continues_it(tmp_path, capsys):
    optuna = pytest.importorskip("optuna")
    out, db = tmp_path / "study", f"sqlite:///{tmp_path / 'shared.db'}"
    argv = ["study", "sensitivity", *TINY, "--trials", "4", "--storage", db, "--out", str(out), "--no-analysis"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, "-m", "fewshot", *argv, "--worker", str(k)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for k in range(2)]
    for w in workers:
        assert w.wait(timeout=300) == 0, w.stderr.read()[-2000:]
    study = optuna.load_study(study_name="sensitivity", storage=db)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) >= 4
    assert len({t.user_attrs["pid"] for t in complete}) == 2           # both workers ran trials
    assert all((out / "trials" / f"{t.number:04d}" / "checkpoints" / "last.json").is_file() for t in complete)
    assert "meta_batch" not in complete[0].params and complete[0].params["inner_steps"] in range(1, 6)
    # a rerun asking for one more trial runs exactly one, then draws the importances and the heat map
    assert main(["study", "sensitivity", *TINY, "--trials", str(len(complete) + 1), "--storage", db,
                 "--out", str(out)]) == 0
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == len(complete) + 1
    manifest = json.loads((out / "figures.json").read_text())
    assert manifest["figures"][0]["file"] == "sensitivity.png" and pixel_std(out / "sensitivity.png") > 10
    table = (out / "sensitivity.md").read_text()
    assert "| setting | fANOVA importance |" in table and "| inner_lr |" in table
    capsys.readouterr()


def test_cost_study_measures_and_resumes(tmp_path, capsys):
    out = tmp_path / "cost"
    argv = ["study", "cost", "--learners", "protonet", "--budgets", "1", "--episodes", "3", "--out", str(out)]
    assert main(argv) == 0
    row = json.loads((out / "results.jsonl").read_text())
    assert row["learner"] == "protonet" and row["steps"] >= 1 and row["peak_mb"] > 50 and row["gflops"] > 0
    assert 0 <= row["mean"] <= 1 and row["episodes"] == 3
    assert pixel_std(out / "cost.png") > 10 and "| protonet | 1 |" in (out / "cost.md").read_text()
    assert main(argv) == 0                                      # resumed: measured once
    assert len((out / "results.jsonl").read_text().splitlines()) == 1
    assert "already measured" in capsys.readouterr().err


@pytest.mark.slow
def test_transfer_study_scores_every_setting(tmp_path, capsys):
    out = tmp_path / "transfer"
    assert main(["study", "transfer", "--learners", "protonet", "--budget", "2", "--episodes", "3",
                 "--out", str(out)]) == 0
    row = json.loads((out / "results.jsonl").read_text())
    assert {"5w1s", "5w5s", "20w1s", "20w5s"} <= set(row) and pixel_std(out / "transfer.png") > 10


def test_a_regression_study_minimises_the_error_and_meta_rl_is_refused(tmp_path, capsys):
    optuna = pytest.importorskip("optuna")
    out, db = tmp_path / "sinusoid", f"sqlite:///{tmp_path / 'mse.db'}"
    argv = ["study", "sensitivity", "--algo", "maml", "--dataset", "sinusoid", "--steps", "2", "--val-every", "2",
            "--val-episodes", "4", "--startup-trials", "2", "--trials", "3", "--set", "meta_batch=2",
            "--storage", db, "--out", str(out)]
    assert main(argv) == 0
    study = optuna.load_study(study_name="sensitivity", storage=db)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    values = [t.value for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))]
    assert study.best_value == min(values)
    rows = [line for line in (out / "sensitivity.md").read_text().splitlines() if line.startswith("| ")
            and line.split("|")[1].strip().isdigit()]
    listed = [float(row.split("|")[-3]) for row in rows]
    assert listed == sorted(listed) and len(listed) == len(values)        # best (lowest MSE) first
    capsys.readouterr()
    # the same storage and name cannot be continued as a maximising (classification) study
    assert main(["study", "sensitivity", *TINY, "--trials", "1", "--storage", db, "--out", str(out)]) == 2
    assert "was created to minimize its score; this one would maximize it" in capsys.readouterr().err
    assert main(["study", "sensitivity", "--algo", "maml-trpo", "--dataset", "nav2d", "--out", str(out)]) == 2
    assert "nav2d is a meta-RL domain" in capsys.readouterr().err


def test_diverged_regression_trials_are_pruned_and_use_up_the_budget(tmp_path, capsys, monkeypatch):
    """A regression trial whose run diverges has no chance level to score: it is pruned, and counted towards
    --trials, so a study whose every run diverges still ends (with a message, not a score)."""
    optuna = pytest.importorskip("optuna")
    import fewshot.runs

    class Diverging:
        def run(self):
            raise FloatingPointError("loss is nan")

    monkeypatch.setattr(fewshot.runs, "trainer_for", lambda *a, **k: Diverging())
    db = f"sqlite:///{tmp_path / 'nan.db'}"
    argv = ["study", "sensitivity", "--algo", "maml", "--dataset", "sinusoid", "--steps", "2", "--trials", "2",
            "--startup-trials", "2", "--storage", db, "--out", str(tmp_path / "nan")]
    assert main(argv) == 2
    assert "has 0 complete trial(s); importances need two or more" in capsys.readouterr().err
    trials = optuna.load_study(study_name="sensitivity", storage=db).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED] * 2
    assert all(t.user_attrs["diverged"] for t in trials)
