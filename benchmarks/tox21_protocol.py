"""The Tox21 few-shot protocol (Altae-Tran et al. 2017) for every molecule learner, in one table.

Each learner is trained by ``fewshot train`` on Tox21's 9 training tasks (its config in
``configs/`` where one exists, else its recipe), then scored by ``fewshot eval`` on the 3 test tasks
(SR-HSE, SR-MMP, SR-p53) with supports of 10+/10-, 5+/10-, 1+/10-, 1+/5- and 1+/1- (20 draws per
task, the rest of each task as query): ROC-AUC, mean ± standard error over the 3 tasks.

    python benchmarks/tox21_protocol.py --data-root ../shared/data          # ~30 min on 2 cores
    python benchmarks/tox21_protocol.py --data-root DIR --learners forest protonet

Results go to ``OUT/results.jsonl``; a learner already there is not trained again, so an interrupted
run resumes. The Markdown table is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli_child import run_fewshot
from results import markdown, measure_all

SUPPORTS = ((10, 10), (5, 10), (1, 10), (1, 5), (1, 1))     # (actives, inactives) of the support sets
LEARNERS = {
    "forest": ["--algo", "forest", "--dataset", "tox21", "--featurizer", "ecfp"],
    "protonet": ["--config", "configs/protonet-tox21.yaml"],
    "maml": ["--config", "configs/maml-tox21.yaml"],
    "fomaml": ["--config", "configs/maml-tox21.yaml", "--algo", "fomaml"],
    "finetune": ["--algo", "finetune", "--dataset", "tox21", "--featurizer", "ecfp+desc", "--steps", "2000"],
}


def benchmark_learner(name: str, out: Path, common: list[str]) -> dict:
    """Train ``name`` on the Tox21 training tasks and score it at every support of :data:`SUPPORTS`."""
    run = out / name
    _, seconds, peak = run_fewshot(["train", *LEARNERS[name], "--out", str(run), "--no-progress", *common])
    row = {"learner": name, "train_s": round(seconds, 1), "peak_mb": round(peak, 1)}
    for pos, neg in SUPPORTS:
        stdout, _, _ = run_fewshot(["eval", str(run), "--support-pos", str(pos), "--support-neg", str(neg),
                                    "--json", *common])
        result = json.loads(stdout.splitlines()[-1])
        row[f"{pos}+/{neg}-"] = {"mean": result["mean"], "stderr": result["stderr"], "tasks": result["tasks"]}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="directory holding tox21/tox21.csv")
    parser.add_argument("--learners", nargs="+", choices=list(LEARNERS), default=list(LEARNERS), help="default: all")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each child (default 1)")
    parser.add_argument("--out", default="runs/tox21-protocol", help="directory of the runs and results.jsonl")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    common = ["--data-root", args.data_root, "--threads", str(args.threads)]

    def measure(name: str) -> dict:
        print(f"{name}: training, then {len(SUPPORTS)} support settings", file=sys.stderr, flush=True)
        return benchmark_learner(name, Path(args.out), common)

    done = measure_all(Path(args.out) / "results.jsonl", args.learners, measure)
    columns = [f"{p}+/{n}-" for p, n in SUPPORTS]
    print(markdown([done[n] for n in args.learners], columns, lambda r: f"{r['mean']:.3f} ± {r['stderr']:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
