"""Two molecule runs compared task by task on the same episodes: the paired difference of their scores.

Two runs scored on the same tasks vary together (a hard task is hard for both), so the standard error of their
difference over tasks is far smaller than either run's own; this prints it, which a difference of two
``fewshot eval`` means cannot show. Each run is scored as ``fewshot eval RUN --dataset D --split S
--support-size K --checkpoint C`` scores it (same seed, so the same draws).

    python benchmarks/paired_runs.py RUN_A RUN_B --data-root ../shared/data --split valid --support-size 16
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from fewshot.evaluate import evaluate
from fewshot.runs import load_learner
from fewshot.tasks.assays import SupportSpec


def per_task(run: Path, checkpoint: str, split: str, data_root: str, support_size: int, draws: int,
             seed: int) -> tuple[str, dict[str, float]]:
    """The run's metric name and its score on each task (mean over the task's draws)."""
    learner, cfg = load_learner(run, checkpoint)
    _, tasks = cfg.domain.test_tasks(cfg, split, data_root, support=SupportSpec(size=support_size), draws=draws,
                                     seed=seed)
    result = evaluate(learner, tasks, None, inner_steps=cfg.test_inner_steps)
    return result.metric, dict(zip(result.tasks, result.values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--split", default="valid")
    parser.add_argument("--support-size", type=int, default=16)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        scores = [per_task(Path(run), args.checkpoint, args.split, args.data_root, args.support_size, args.draws,
                           args.seed) for run in (args.run_a, args.run_b)]
    except (OSError, ValueError) as e:          # a missing or damaged run, data root or split: one line, no traceback
        raise SystemExit(f"paired_runs.py: error: {e}") from None
    (metric, a), (_, b) = scores
    if a.keys() != b.keys():
        raise SystemExit(f"paired_runs.py: error: the runs were scored on different tasks ({len(a)} vs {len(b)}); "
                         "compare runs of one dataset")
    diff = torch.tensor([a[t] - b[t] for t in a], dtype=torch.float64)
    for name, values in ((args.run_a, a), (args.run_b, b)):
        print(f"{name}: {metric} {sum(values.values()) / len(values):.4f} over {len(values)} tasks")
    print(f"A - B: {float(diff.mean()):.4f} ± {float(diff.std()) / math.sqrt(len(diff)):.4f} (paired standard error "
          f"over {len(diff)} tasks); A better on {int((diff > 0).sum())}, B on {int((diff < 0).sum())}")


if __name__ == "__main__":
    main()
