"""``fewshot explain RUN_DIR [--out DIR]``: the feature, task and model mappings of a run drawn
(:mod:`fewshot.report.explain`); ``fewshot report RUN_DIR`` shows them."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fewshot.argtypes import positive_int

NAME = "explain"


def add_parser(sub, parser_class) -> None:
    p = sub.add_parser(NAME, help="draw what a run learned: embeddings, task map, per-layer change in the inner loop, "
                                  "attention and saliency")
    p.add_argument("run_dir", help="the --out directory of a `fewshot train` run")
    p.add_argument("--out", help="directory for the figures (default RUN_DIR/explain, which `fewshot report` shows)")
    p.add_argument("--episodes", type=positive_int, default=20,
                   help="test episodes the per-layer change is averaged over (default 20)")
    p.add_argument("--tasks", type=positive_int, default=60, help="test tasks on the task map (default 60)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch")
    p.add_argument("--device", default="cpu", help="where torch computes: cpu (default), cuda, cuda:N or mps")


def run(args: argparse.Namespace) -> None:
    from fewshot.report.explain import explain_run

    start = time.monotonic()
    out = Path(args.out) if args.out else Path(args.run_dir) / "explain"
    manifest = explain_run(Path(args.run_dir), out, episodes=args.episodes, tasks=args.tasks,
                           checkpoint=args.checkpoint, device=args.device)
    print(f"explain: {manifest.parent} ({time.monotonic() - start:.1f} s)", file=sys.stderr)
