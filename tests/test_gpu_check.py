"""``benchmarks/gpu_check.py``, the prepared GPU script, checked on the CPU: its exactness check, its episode
timing and its ratios (the speed rows come from ``fewshot.bench``, tested in test_bench.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_vectorised_meta_gradient_is_checked_against_the_loop(gpu_check):
    record = gpu_check.exactness(torch.device("cpu"), meta_batch=2)
    assert record["check"] == "exact" and record["tasks_float64"] == 4 and record["tasks_float32"] == 2
    assert record["grad_rel_diff_float64"] < 1e-10 and record["grad_rel_diff_float32"] < 1e-4


def test_episode_feeding_times_both_ways_of_preparing_a_meta_batch(gpu_check):
    record = gpu_check.episode_feeding(torch.device("cpu"), meta_batch=2, repeats=1)
    assert record["cpu_then_copy_s"] > 0 and record["on_device_s"] > 0
    assert record["speedup"] == pytest.approx(record["cpu_then_copy_s"] / record["on_device_s"])


def test_ratios_pair_each_fewshot_row_with_each_peer_of_its_configuration(gpu_check):
    def row(library, rate, ways=5):
        return {"library": library, "algo": "maml", "net": "strided", "ways": ways, "meta_batch": 32,
                "tasks_per_s": rate}

    rows = [row("fewshot", 10.0), row("fewshot[vmap]", 60.0), row("learn2learn", 8.0), row("fewshot", 3.0, ways=20)]
    got = {(r["library"], r["peer"]): r["tasks_per_s_ratio"] for r in gpu_check.ratios(rows)}
    assert got == {("fewshot", "learn2learn"): 1.25, ("fewshot[vmap]", "learn2learn"): 7.5}


def test_an_absent_gpu_is_one_line(gpu_check, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert gpu_check.main(["--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "PyTorch sees no CUDA GPU" in capsys.readouterr().err
