"""The GPU check: one prepared script for a machine with a CUDA GPU (it runs on the CPU too, for its tests).

What it measures, each as JSON lines in ``OUT/gpu_check.jsonl`` (and printed):

1. ``{"check": "exact", ...}``: the vectorised MAML meta-gradient (all tasks in one ``torch.func.vmap`` call,
   BatchNorm from primitives) against the task loop on the device, strided Conv-4 with BatchNorm, 5-way 1-shot:
   relative difference in float64 (4 tasks) and float32 (the benchmark's meta-batch).
2. ``{"check": "speed", ...}``: ``fewshot bench speed`` rows (its ``ROW_KEYS``) for the loop, ``fewshot[vmap]``,
   ``fewshot[bf16]``, ``fewshot[cudagraphs]`` (CUDA only) and the peer libraries installed (learn2learn,
   higher), each row in fresh processes taking turns; then ``{"check": "ratio", ...}`` lines: each fewshot
   variant's tasks/s over each peer's on the same configuration.
3. ``{"check": "episodes", ...}``: seconds to prepare one meta-batch of episodes drawn on the CPU and copied to
   the device, against episodes gathered on the device from the images held there
   (:meth:`fewshot.tasks.sampler.ClassificationTasks.to`).

On the GPU machine (nothing can be installed there from the network; the peers travel as wheels)::

    PYTHONPATH=$PWD python3 benchmarks/gpu_check.py --device cuda --out $OUT

and on the CPU, small: ``python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu-check``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from fewshot import bench


def _emit(record: dict, log) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    log.write(line + "\n")
    log.flush()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _omniglot_tasks(ways: int, shots: int, queries: int):
    from fewshot.datasets.omniglot import load_omniglot
    from fewshot.tasks.sampler import ClassificationTasks

    return ClassificationTasks(load_omniglot("background"), ways, shots, queries, seed=0)


def exactness(device: torch.device, meta_batch: int) -> dict:
    """Relative difference of the vectorised and looped MAML meta-gradients on ``device``."""
    from fewshot.learners.gradient import MAML
    from fewshot.nets import Conv4
    from fewshot.tasks.episode import stack_episodes

    tasks = _omniglot_tasks(5, 1, 15)
    result = {"check": "exact", "device": str(device), "net": "conv4-strided", "norm": "batch"}
    for dtype, count in ((torch.float64, 4), (torch.float32, meta_batch)):
        batch = stack_episodes([tasks[i] for i in range(count)]).to(device)
        batch = type(batch)(batch.support_x.to(dtype), batch.support_y, batch.query_x.to(dtype), batch.query_y)
        torch.manual_seed(0)
        net = Conv4(out_features=5, variant="strided").to(device, dtype)
        grads = []
        for vectorize in (False, True):
            learner = MAML(net, 0.4, 1).set_execution(vectorize=vectorize)
            learner.zero_grad()
            learner.meta_backward(batch)
            grads.append(torch.cat([p.grad.flatten() for p in learner.parameters()]))
        key = "float64" if dtype == torch.float64 else "float32"
        result[f"grad_rel_diff_{key}"] = float((grads[1] - grads[0]).norm() / grads[0].norm())
        result[f"tasks_{key}"] = count
    return result


def episode_feeding(device: torch.device, meta_batch: int, repeats: int) -> dict:
    """Median seconds to prepare a meta-batch on ``device``: drawn on the CPU and copied, or gathered there."""
    from fewshot.tasks.episode import stack_episodes

    on_cpu = _omniglot_tasks(5, 1, 15)
    on_device = on_cpu.to(device)
    times: dict[str, list[float]] = {"cpu_then_copy": [], "on_device": []}
    for r in range(repeats + 1):
        for name, tasks in (("cpu_then_copy", on_cpu), ("on_device", on_device)):
            first = r * meta_batch
            start = time.perf_counter()
            batch = stack_episodes([tasks[first + t] for t in range(meta_batch)]).to(device)
            _synchronize(device)
            if r:                      # the first round warms up
                times[name].append(time.perf_counter() - start)
            del batch
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"check": "episodes", "device": str(device), "meta_batch": meta_batch, "ways": 5, "shots": 1,
            "queries": 15, **{f"{name}_s": value for name, value in medians.items()},
            "speedup": medians["cpu_then_copy"] / medians["on_device"]}


def speed_rows(device: torch.device, quick: bool) -> list[dict]:
    """``fewshot bench speed`` rows for fewshot, its variants and the installed peers on ``device``."""
    variants = ["vmap", "bf16"] + (["cudagraphs"] if device.type == "cuda" else [])
    args = argparse.Namespace(
        algos=["maml"] if quick else ["maml", "fomaml"], nets=["strided"] if quick else ["strided", "pool"],
        tasks=[(5, 2)] if quick else [(5, 32), (20, 16)], shots=1, queries=15, inner_steps=None,
        peers=list(bench.PEERS), variants=["vmap"] if quick else variants, repeats=1 if quick else 10,
        warmup=0 if quick else 3, rounds=1 if quick else 2, seed=0, threads=1, device=str(device))
    rows = []
    for group in bench.settings(args):
        rows += bench.measure(group, args.rounds)
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """Each fewshot row's tasks/s over each peer row of the same configuration."""
    by_key: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        by_key.setdefault((row["algo"], row["net"], row["ways"], row["meta_batch"]), {})[row["library"]] = row
    out = []
    for (algo, net, ways, meta_batch), libraries in by_key.items():
        for ours, mine in libraries.items():
            if not ours.startswith("fewshot"):
                continue
            for peer, theirs in libraries.items():
                if peer.startswith("fewshot"):
                    continue
                out.append({"check": "ratio", "algo": algo, "net": net, "ways": ways, "meta_batch": meta_batch,
                            "library": ours, "peer": peer,
                            "tasks_per_s_ratio": mine["tasks_per_s"] / theirs["tasks_per_s"]})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--out", required=True, help="directory for gpu_check.jsonl")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a check of the script itself)")
    args = parser.parse_args(argv)
    from fewshot.devices import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as e:
        print(f"gpu_check: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "gpu_check.jsonl", "w") as log:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        _emit({"check": "machine", "device": str(device), "name": name, "torch": torch.__version__,
               "peers": bench.available_peers()}, log)
        _emit(exactness(device, 2 if args.quick else 32), log)
        _emit(episode_feeding(device, 2 if args.quick else 32, 2 if args.quick else 20), log)
        rows = speed_rows(device, args.quick)
        for row in rows:
            _emit({"check": "speed", **{k: row[k] for k in bench.ROW_KEYS}, "step_s": row["step_s"]}, log)
        for ratio in ratios(rows):
            _emit(ratio, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
