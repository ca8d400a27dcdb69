"""``fewshot report``: evaluation records, the figures drawn from real runs, the page."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from fewshot.cli import main
from fewshot.evaluate import evaluate
from fewshot.report import figures
from fewshot.report.page import build_report, markdown_table
from fewshot.report.records import EVALS_FILE, read_run
from fewshot.runs import load_learner

TINY = dict(split="background", ways=5, train_ways=5, shots=1, queries=2, train_queries=2, meta_batch=1, steps=4,
            val_every=2, val_episodes=3, test_episodes=12, checkpoint_every=2, log_every=1, channels=8)


def pixel_std(path: Path) -> float:
    """The standard deviation of a figure's grey levels: 0 for a blank image."""
    return float(np.asarray(Image.open(path).convert("L"), dtype=np.float64).std())


def train(tmp: Path, name: str, algo: str, **extra) -> Path:
    config = tmp / f"{name}.yaml"
    config.write_text(yaml.safe_dump({**TINY, **extra}))
    run = tmp / name
    assert main(["train", "--config", str(config), "--algo", algo, "--out", str(run), "--no-progress"]) == 0
    return run


@pytest.fixture(scope="session")          # shared with tests/test_browser.py
def runs(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("report")
    return train(tmp, "proto", "protonet"), train(tmp, "matching", "matching")


def test_train_writes_a_report_and_an_eval_record(runs):
    proto = runs[0]
    page = (proto / "report" / "index.html").read_text()
    assert '<img src="learning-curves.png"' in page
    assert pixel_std(proto / "report" / "learning-curves.png") > 10
    records = [json.loads(line) for line in (proto / EVALS_FILE).read_text().splitlines()]
    test = json.loads((proto / "test.json").read_text())
    assert len(records) == 1 and records[0]["mean"] == test["mean"] and records[0]["episodes"] == 12
    assert records[0]["mean"] == pytest.approx(sum(records[0]["values"]) / 12)
    run = read_run(proto)
    assert [r["step"] for r in run.split("train")] == [1, 2, 3, 4]
    times = [r["time"] for r in run.log]                 # wall time from the TensorBoard events
    assert times == sorted(times) and times[0] == 0.0


def test_eval_records_draw_shots_paired_and_reliability(runs, tmp_path, capsys):
    proto, matching = runs
    for run in runs:
        for shots in (1, 2):
            assert main(["eval", str(run), "--shots", str(shots), "--episodes", "8", "--json", "--calibration"]) == 0
    capsys.readouterr()
    a, b = read_run(proto), read_run(matching)
    assert len(a.evals) == 3 and a.evals[-1]["shots"] == 2 and len(a.evals[-1]["values"]) == 8
    assert len(a.evals[-1]["bins"]["counts"]) == 15 and sum(a.evals[-1]["bins"]["counts"]) == 8 * 5 * 2
    # the paired difference, recomputed from the two learners on the same eight 5-way 2-shot episodes
    pairs = [p for p in figures.paired_differences([a, b]) if "shots 2" in p["setting"] and p["n"] == 8]
    assert len(pairs) == 1
    learners = [load_learner(r)[0] for r in runs]
    _, config = load_learner(proto)
    _, tasks = config.domain.test_tasks(config, shots=2)
    values = [evaluate(learner, tasks, 8).values for learner in learners]
    diffs = torch.tensor([y - x for x, y in zip(*values)], dtype=torch.float64)
    assert pairs[0]["mean"] == pytest.approx(float(diffs.mean()))
    assert pairs[0]["ci95"] == pytest.approx(1.96 * float(diffs.std()) / math.sqrt(8))
    page = build_report(list(runs), tmp_path / "out")
    html = page.read_text()
    for name in ("learning-curves.png", "shots-ways.png", "paired.png", "reliability-0.png", "reliability-1.png"):
        assert f'src="{name}"' in html and pixel_std(tmp_path / "out" / name) > 10, name
    assert "http" not in html.replace("http-equiv", "")        # nothing fetched from a network


def test_windowed_band_matches_numpy():
    values = [0.3, 0.9, 0.5, 0.1, 0.7, 0.6]
    means, halves = figures.windowed(values, 3)
    window = np.array(values[3:6])
    assert means[5] == pytest.approx(window.mean())
    assert halves[5] == pytest.approx(1.96 * window.std(ddof=1) / math.sqrt(3))
    assert means[0] == values[0] and halves[0] == 0.0


def test_per_assay_and_rl_figures_from_records(tmp_path):
    assays = figures.Run(tmp_path, "fsmol-protonet", {}, [], None, evals=[
        {"metric": "delta_auprc", "mean": 0.05, "per_task": {"A": 0.1, "B": -0.02, "C": 0.07}}])
    assert figures.per_assay([assays], tmp_path / "assay.png") is not None
    assert pixel_std(tmp_path / "assay.png") > 10
    log = [{"step": s, "split": "train", "return": -10 + s, "success": s / 10} for s in range(1, 11)]
    test = {"metric": "return", "mean": -5.0, "returns": [{"steps": k, "mean": -9.0 + 2 * k, "ci95": 0.5}
                                                          for k in range(3)]}
    rl = figures.Run(tmp_path, "nav2d-maml", {}, log, test)
    assert figures.rl_curves([rl], tmp_path / "rl.png") is not None and pixel_std(tmp_path / "rl.png") > 10
    assert figures.rl_curves([assays], tmp_path / "none.png") is None


def test_markdown_tables_become_html():
    html = markdown_table("| a | b |\n|---|---|\n| 1 | x<y |\n\nBest trial 3.")
    assert html == "<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>x&lt;y</td></tr></table>\n<p>Best trial 3.</p>"


def test_report_refuses_what_is_not_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "neither a run directory" in err and len(err.strip().splitlines()) == 1
