"""``fewshot report RUN_DIR [RUN_DIR ...] --out DIR``: a static HTML page of figures (:mod:`fewshot.report.page`)."""

from __future__ import annotations

import argparse
import sys
import time

NAME = "report"


def add_parser(sub, parser_class) -> None:
    p = sub.add_parser(NAME, help="a static HTML page of figures of runs (and of explain / study directories)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run directories, or directories written by `fewshot explain` / `fewshot study`")
    p.add_argument("--out", required=True, help="directory to write index.html and its figures into")
    p.add_argument("--title", default="fewshot report", help="the page's title")


def run(args: argparse.Namespace) -> None:
    from fewshot.report.page import build_report

    start = time.monotonic()
    page = build_report(args.runs, args.out, title=args.title)
    print(f"report: {page} ({time.monotonic() - start:.1f} s)", file=sys.stderr)
