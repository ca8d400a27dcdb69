"""The scripts in examples/ run end to end on a tiny budget (each as a user would run it: a fresh process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(*argv: str, cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One folder for the examples' runs, so the image folder they unpack beside them is unpacked once."""
    return tmp_path_factory.mktemp("runs")


@pytest.mark.parametrize("script", ["own_data_maml.py", "own_data_protonet.py"])
def test_own_data_example_trains_resumes_evaluates_and_loads(script, runs, tmp_path):
    out = runs / script.removesuffix(".py")
    first = run(str(EXAMPLES / script), "--steps", "2", "--episodes", "3", "--out", str(out), cwd=tmp_path)
    assert "trained 2 steps" in first and "test accuracy" in first
    again = run(str(EXAMPLES / script), "--steps", "3", "--episodes", "3", "--out", str(out), cwd=tmp_path)
    assert "trained 3 steps" in again                      # the same out= resumed from step 2
    assert (out / "checkpoints" / "best.json").is_file()


def test_load_cli_run_example(tmp_path):
    out = tmp_path / "cli-run"
    run("-m", "fewshot.cli", "train", "--steps", "2", "--set", "val_every=1", "--set", "val_episodes=2",
        "--set", "test_episodes=2", "--no-progress", "--out", str(out), cwd=tmp_path)
    printed = run(str(EXAMPLES / "load_cli_run.py"), str(out), cwd=tmp_path)
    assert "protonet on omniglot: " in printed and "accuracy on one new episode" in printed
