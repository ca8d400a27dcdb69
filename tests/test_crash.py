"""Exact resume after SIGKILL: a real ``fewshot train`` process is killed at several moments, resumed each
time, and must end bit-identical to an uninterrupted run with the same seed.

The process is stopped at a named point by the test hook :mod:`fewshot.faults` (it announces its arrival
in a file and waits), then killed from here with SIGKILL, so every kill lands at a known moment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from fewshot.checkpoint import read_checkpoint

CONFIG = {"algo": "maml", "dataset": "sinusoid", "steps": 8, "meta_batch": 2, "shots": 5, "queries": 5,
          "val_every": 3, "val_episodes": 4, "test_episodes": 2, "checkpoint_every": 2, "log_every": 1,
          "eval_inner_steps": 1, "seed": 3}
TIMEOUT_S = 240     # an upper bound only: a loaded 2-core machine runs these child processes slowly


def train_command(config: Path, run: Path) -> list[str]:
    return [sys.executable, "-m", "fewshot", "train", "--config", str(config), "--out", str(run),
            "--no-progress", "--threads", "1"]


def environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def run_to_completion(config: Path, run: Path) -> None:
    done = subprocess.run(train_command(config, run), env=environment(), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr


def kill_at(point: str, config: Path, run: Path, tmp_path: Path) -> None:
    """Start (or resume) the run, wait until it reaches ``point`` (``NAME:N``), and SIGKILL it there."""
    marker = tmp_path / f"arrived-{point.replace(':', '-')}"
    proc = subprocess.Popen(train_command(config, run), env=environment(FEWSHOT_PAUSE_AT=point,
                                                                        FEWSHOT_PAUSE_FILE=str(marker)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT_S
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if not marker.exists():
        proc.kill()
        raise AssertionError(f"the run never reached {point}: {proc.communicate()[1]}")
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=TIMEOUT_S) == -signal.SIGKILL
    proc.stderr.close()


def last_step(run: Path) -> int:
    return read_checkpoint(run / "checkpoints", "last")[1]["state"]["step"]


def test_sigkill_at_any_moment_then_resume_is_bit_identical(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_to_completion(config, straight)

    kill_at("train-step:5", config, killed, tmp_path)             # mid-step: gradients made, no update yet
    assert last_step(killed) == 4
    kill_at("commit-last:1", config, killed, tmp_path)            # step 6: new tensor file written, JSON not
    assert last_step(killed) == 4
    assert len(list((killed / "checkpoints").glob("last-*.safetensors"))) == 2   # the orphan and the real one
    kill_at("write.safetensors:1", config, killed, tmp_path)      # step 6: half a tensor file in a temp file
    assert last_step(killed) == 4
    assert list((killed / "checkpoints").glob(".*.tmp"))
    kill_at("evaluate-episode:6", config, killed, tmp_path)       # during the validation of step 8
    assert last_step(killed) == 6
    with open(killed / "metrics.jsonl", "a") as f:                # and a log line cut short by the kill
        f.write('{"step": 7, "split": "tr')
    run_to_completion(config, killed)

    for name in ("last", "best"):
        tensors_a, meta_a = read_checkpoint(straight / "checkpoints", name)
        tensors_b, meta_b = read_checkpoint(killed / "checkpoints", name)
        assert meta_a["state"] == meta_b["state"] and meta_a["state"]["step"] == (8 if name == "last" else
                                                                                  meta_a["state"]["step"])
        assert tensors_a.keys() == tensors_b.keys()
        for key in tensors_a:                                     # model, Adam moments, RNG state
            assert torch.equal(tensors_a[key], tensors_b[key]), (name, key)
    assert (killed / "metrics.jsonl").read_text() == (straight / "metrics.jsonl").read_text()
    assert json.loads((killed / "test.json").read_text()) == json.loads((straight / "test.json").read_text())
    leftovers = sorted(p.name for p in killed.rglob("*") if p.name.endswith(".tmp"))
    assert not leftovers and len(list((killed / "checkpoints").glob("*.safetensors"))) == 2


def interrupt_at(point: str, command: list[str], sig: int, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``command`` until it reaches ``point``, send it ``sig``, and return how it ended."""
    marker = tmp_path / f"arrived-{point.replace(':', '-')}-{sig}"
    proc = subprocess.Popen(command, env=environment(FEWSHOT_PAUSE_AT=point, FEWSHOT_PAUSE_FILE=str(marker)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT_S
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), proc.communicate()[1]
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=TIMEOUT_S)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def test_sigterm_before_the_first_checkpoint_keeps_the_steps_done_and_resumes_bit_identical(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "checkpoint_every": 100}))   # no checkpoint before the end
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run_to_completion(config, straight)
    done = interrupt_at("train-step:4", train_command(config, stopped), signal.SIGTERM, tmp_path)
    assert done.returncode == 130
    assert done.stderr.strip().splitlines()[-1] == "fewshot train: interrupted; resume with the same --out"
    assert last_step(stopped) == 3                                 # steps 1-3 done; step 4 was mid-way
    run_to_completion(config, stopped)
    for name in ("last", "best"):
        tensors_a, meta_a = read_checkpoint(straight / "checkpoints", name)
        tensors_b, meta_b = read_checkpoint(stopped / "checkpoints", name)
        assert meta_a["state"] == meta_b["state"]
        for key in tensors_a:
            assert torch.equal(tensors_a[key], tensors_b[key]), (name, key)


def test_an_interrupted_eval_says_so_and_nothing_about_resuming(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    run_to_completion(config, tmp_path / "run")
    command = [sys.executable, "-m", "fewshot", "eval", str(tmp_path / "run"), "--threads", "1"]
    done = interrupt_at("evaluate-episode:3", command, signal.SIGINT, tmp_path)
    assert done.returncode == 130
    assert done.stderr.strip().splitlines()[-1] == "fewshot eval: interrupted"
