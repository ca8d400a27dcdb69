"""Multi-process meta-training: the task split, and two gloo processes on 127.0.0.1 equal to one process."""

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


def test_two_gloo_processes_equal_one_process(tmp_path):
    config = tmp_path / "maml.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    one, two = tmp_path / "one", tmp_path / "two"
    train([sys.executable], config, one)
    train([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port())], config, two)
    tensors_1, meta_1 = read_checkpoint(one / "checkpoints", "last")
    tensors_2, meta_2 = read_checkpoint(two / "checkpoints", "last")
    assert meta_1["state"]["step"] == meta_2["state"]["step"] == 3
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
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a, b)
    # rank 1 wrote nothing: one TensorBoard event file, and the run directory of one process
    assert len(list((two / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
