"""Meta-learning vs transfer learning: every learner, one Omniglot split, one training budget, one table.

Each learner is trained by ``fewshot train`` with its recipe (``fewshot/config.py``) for the
same wall-clock budget on the Lake background protocol (training alphabets of the shipped
background set; test episodes from the 5 held-out alphabets), then scored by ``fewshot eval``
on 600 episodes of each of 5-way 1-shot, 5-way 5-shot, 20-way 1-shot and 20-way 5-shot. The
learners whose output layer fixes the number of ways (MAML, first-order MAML, ANIL, Meta-SGD,
Reptile) are trained twice, 5-way and 20-way, with half the budget each, so every learner gets
the same total budget. Training time is the wall time of ``fewshot train``: the loop stops at
the budget, and start-up, validation and the run's own final 600-episode test add to it. Peak
memory is the maximum resident set size of the training process.

    python benchmarks/meta_vs_transfer.py                      # 300 s per learner, ~1 h on 2 cores
    python benchmarks/meta_vs_transfer.py --budget 30 --episodes 100 --learners protonet maml

Results go to ``OUT/results.jsonl`` (one JSON object per learner); a learner whose result is
already there is not trained again, so an interrupted run resumes where it stopped. The table
is printed as Markdown at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli_child import run_fewshot
from results import markdown, measure_all

from fewshot.registry import DOMAINS, LEARNERS

IMAGE_ALGOS = tuple(DOMAINS["omniglot"].recipes)          # the learners with an Omniglot recipe
SETTINGS = ((5, 1), (5, 5), (20, 1), (20, 5))    # (ways, shots) of the test episodes


def benchmark_learner(algo: str, out: Path, budget: float, episodes: int, common: list[str]) -> dict:
    """Train ``algo`` within ``budget`` seconds and score it on :data:`SETTINGS`."""
    ways_of_runs = (5, 20) if LEARNERS[algo].head else (5,)
    runs, seconds, peak = {}, 0.0, 0.0
    for ways in ways_of_runs:
        run = out / f"{algo}-{ways}way"
        _, s, mb = run_fewshot(["train", "--algo", algo, "--ways", str(ways), "--steps", "1000000", "--time-limit",
                             str(budget / len(ways_of_runs)), "--out", str(run), "--no-progress", *common])
        runs[ways], seconds, peak = run, seconds + s, max(peak, mb)
    row = {"learner": algo, "train_s": round(seconds, 1), "peak_mb": round(peak, 1), "budget_s": budget}
    for ways, shots in SETTINGS:
        run = runs[ways if ways in runs else 5]
        stdout, _, _ = run_fewshot(["eval", str(run), "--ways", str(ways), "--shots", str(shots), "--episodes",
                                 str(episodes), "--json", *common])
        result = json.loads(stdout.splitlines()[-1])
        row[f"{ways}w{shots}s"] = {"mean": result["mean"], "ci95": result["ci95"], "episodes": result["episodes"]}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learners", nargs="+", choices=IMAGE_ALGOS, default=list(IMAGE_ALGOS),
                        help="default: all")
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds per learner (default 300)")
    parser.add_argument("--episodes", type=int, default=600, help="test episodes per setting (default 600)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each child (default 1)")
    parser.add_argument("--out", default="runs/meta-vs-transfer", help="directory of the runs and results.jsonl")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    def measure(algo: str) -> dict:
        print(f"{algo}: training for {args.budget:.0f} s, then {len(SETTINGS)} x {args.episodes} test episodes",
              file=sys.stderr, flush=True)
        return benchmark_learner(algo, Path(args.out), args.budget, args.episodes, ["--threads", str(args.threads)])

    done = measure_all(Path(args.out) / "results.jsonl", args.learners, measure,
                       keep=lambda row: row["budget_s"] == args.budget)
    columns = [f"{w}w{s}s" for w, s in SETTINGS]
    print(markdown([done[a] for a in args.learners], columns,
                   lambda r: f"{100 * r['mean']:.2f} ± {100 * r['ci95']:.2f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
