"""Benchmark: meta-training throughput of 1 vs N processes on torch.distributed (gloo, CPU).

What is measured
----------------
For each process count N, ``torchrun --nproc-per-node N -m fewshot train`` runs twice on the
same config, once for ``--short`` and once for ``--long`` steps. Both runs pay the same
start-up (imports, data, process group), final validation, checkpoint and test evaluation,
so the difference of their wall times is the time of ``long - short`` meta-steps:

    tasks/s = meta_batch * (long - short) / (t_long - t_short)

The config is the MAML Omniglot recipe (5-way 1-shot, 15 queries, second order, strided
Conv-4 with BatchNorm) at ``--meta-batch`` tasks a step, split over the N processes; every
process uses ``--threads`` intra-op threads, so N processes use N * threads cores. The
reported ratio is tasks/s(N) / tasks/s(1). Validation runs only at the last step (a few
episodes), the same in both runs.

Timings are meaningful on otherwise idle cores only: say what else ran when you quote them.

    python benchmarks/distributed_throughput.py                    # N = 1, 2 (a few minutes on 2 cores)
    python benchmarks/distributed_throughput.py --processes 1 2 4 --short 2 --long 12
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed_run(processes: int, steps: int, config: Path, workdir: Path, threads: int) -> float:
    """Wall seconds of one ``torchrun ... fewshot train`` of ``steps`` steps on a fresh run directory."""
    out = workdir / f"run-{processes}-{steps}"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(processes),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "fewshot", "train",
               "--config", str(config), "--steps", str(steps), "--out", str(out), "--no-progress",
               "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "GLOO_SOCKET_IFNAME": "lo"}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--short", type=int, default=2, help="steps of the shorter run")
    parser.add_argument("--long", type=int, default=12, help="steps of the longer run")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        config = workdir / "config.yaml"
        config.write_text(yaml.safe_dump({"algo": "maml", "dataset": "omniglot", "meta_batch": args.meta_batch,
                                          "val_every": 10**6, "val_episodes": 4, "test_episodes": 4,
                                          "checkpoint_every": 10**6, "log_every": 1, "seed": 0}))
        rows = []
        for n in args.processes:
            t_short = timed_run(n, args.short, config, workdir, args.threads)
            t_long = timed_run(n, args.long, config, workdir, args.threads)
            rate = args.meta_batch * (args.long - args.short) / (t_long - t_short)
            rows.append({"processes": n, "threads_per_process": args.threads, "meta_batch": args.meta_batch,
                         "s_per_step": round((t_long - t_short) / (args.long - args.short), 4),
                         "tasks_per_s": round(rate, 2), "startup_s": round(t_short, 1)})
    base = rows[0]["tasks_per_s"]
    for row in rows:
        row["ratio_to_first"] = round(row["tasks_per_s"] / base, 3)
        print(json.dumps(row) if args.json else
              f"{row['processes']} process(es) x {row['threads_per_process']} thread(s): "
              f"{row['s_per_step']:.3f} s/step, {row['tasks_per_s']:.1f} tasks/s, "
              f"ratio {row['ratio_to_first']:.2f} (short run {row['startup_s']} s)")


if __name__ == "__main__":
    main()
