"""Multi-process meta-training: the task split, and two gloo processes on 127.0.0.1 equal to one process (MAML on
Omniglot; MAML-TRPO, and ProMP with ``-m slow``, on nav2d)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fewshot.checkpoint import read_checkpoint
from fewshot.distributed import Ranks, task_slice

# Second-order MAML on Omniglot; 3 tasks a step over 2 processes: an uneven 1 + 2 split. Without BatchNorm: behind
# BatchNorm a convolution's bias has a true meta-gradient of 0, so its computed one is rounding noise, which Adam
# (dividing by its running RMS) turns into steps of up to lr; such a bias follows the summation order, not the data.
CONFIG = {"algo": "maml", "dataset": "omniglot", "norm": "none", "ways": 5, "shots": 1, "queries": 2,
          "meta_batch": 3, "steps": 3,
          "val_every": 3, "val_episodes": 2, "test_episodes": 2, "checkpoint_every": 3, "log_every": 1,
          "eval_inner_steps": 1, "seed": 5}
# nav2d meta-RL: 4 tasks a step over 2 processes, 3 episodes of 8 steps each, a policy of 8 + 8 units.
RL_CONFIG = {"dataset": "nav2d", "steps": 2, "meta_batch": 4, "trajectories": 3, "horizon": 8,
             "policy_hidden": [8, 8], "val_every": 2, "val_episodes": 2, "eval_tasks": 2, "eval_inner_steps": 1,
             "checkpoint_every": 2, "log_every": 1, "cg_iters": 3, "ls_steps": 3, "seed": 5}
TIMEOUT_S = 120


@pytest.mark.parametrize("tasks, world", [(1, 1), (4, 2), (3, 2), (7, 3), (32, 5), (5, 5)])
def test_task_slices_are_disjoint_and_cover_the_meta_batch(tasks, world):
    slices = [task_slice(tasks, r, world) for r in range(world)]
    assert [t for s in slices for t in s] == list(range(tasks))        # in order, each task exactly once
    assert max(map(len, slices)) - min(map(len, slices)) <= 1 and min(map(len, slices)) >= 1


def test_a_meta_batch_smaller_than_the_processes_is_refused():
    with pytest.raises(ValueError, match="meta_batch=2 cannot be split over 3 processes"):
        task_slice(2, 0, 3)


def test_one_process_is_a_no_op():
    ranks = Ranks.current()
    assert (ranks.rank, ranks.world, ranks.main) == (0, 1, True)
    metrics = {"loss": 1.5, "accuracy": 0.25}
    assert ranks.reduce_step([], metrics, 3, 3) is metrics and ranks.any(True) and not ranks.any(False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(launcher: list[str], config: Path, run: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    done = subprocess.run([*launcher, "-m", "fewshot", "train", "--config", str(config), "--out", str(run),
                           "--no-progress", "--threads", "1"], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]


def train_twice(tmp_path: Path, config: dict) -> tuple[Path, Path]:
    """Run directories of ``config`` trained by one process and by two gloo processes."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    one, two = tmp_path / "one", tmp_path / "two"
    train([sys.executable], path, one)
    train([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port())], path, two)
    return one, two


def assert_same_runs(one: Path, two: Path, steps: int, rel: float) -> None:
    """The two runs' last checkpoints agree to 1e-6 and their metrics to ``rel``; rank 1 wrote nothing."""
    tensors_1, meta_1 = read_checkpoint(one / "checkpoints", "last")
    tensors_2, meta_2 = read_checkpoint(two / "checkpoints", "last")
    assert meta_1["state"]["step"] == meta_2["state"]["step"] == steps
    assert tensors_1.keys() == tensors_2.keys()
    for key in tensors_1:
        if key != "rng/torch":
            torch.testing.assert_close(tensors_2[key], tensors_1[key], rtol=0, atol=1e-6, msg=key)
    gap = max(float((tensors_1[k] - tensors_2[k]).abs().max()) for k in tensors_1 if k.startswith("model/"))
    print(f"largest parameter difference, 2 processes vs 1: {gap:.3g}")
    records_1, records_2 = ([yaml.safe_load(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
                            for run in (one, two))
    assert [(r["step"], r["split"]) for r in records_1] == [(r["step"], r["split"]) for r in records_2]
    for a, b in zip(records_1, records_2):
        assert a.keys() == b.keys()
        for key in set(a) - {"split"}:
            assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-9), (a, b)
    # rank 1 wrote nothing: one TensorBoard event file, and the run directory of one process
    assert len(list((two / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


def test_two_gloo_processes_equal_one_process(tmp_path):
    assert_same_runs(*train_twice(tmp_path, CONFIG), steps=3, rel=1e-6)


@pytest.mark.parametrize("algo", ["maml-trpo", pytest.param("promp", marks=pytest.mark.slow)])
def test_two_gloo_processes_equal_one_process_for_meta_rl(tmp_path, algo):
    """Each rank samples the trajectories of its 2 of the 4 tasks; equal to one process sampling all 4 (the
    ranks' tasks are disjoint and cover the meta-batch), TRPO's line search taking the same steps. The metrics
    agree to 1e-4 relative: the KL of a step is a difference of nearly equal log-probabilities, so the rounding
    of the batched policy (one process runs 4 tasks' environments at once, each rank 2) shows at about 1e-5."""
    config = {**RL_CONFIG, "algo": algo}
    if algo == "promp":
        config = {k: v for k, v in config.items() if k not in ("cg_iters", "ls_steps")}
    one, two = train_twice(tmp_path, config)
    assert_same_runs(one, two, steps=2, rel=1e-4)
