"""Run ``fewshot`` commands in child processes and report each one's wall time and peak memory.

A benchmark script calls :func:`run_fewshot`; the child is this file run with ``--child`` by the
same Python, which runs the CLI in-process and prints its peak resident set size as the last line.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def run_fewshot(argv: list[str]) -> tuple[str, float, float]:
    """Run ``fewshot ARGV`` in a child process: (stdout, wall seconds, the child's peak RSS in MB)."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"fewshot {' '.join(argv)} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    *lines, usage = proc.stdout.rstrip("\n").split("\n")
    return "\n".join(lines), seconds, json.loads(usage)["peak_mb"]


def _child(argv: list[str]) -> int:
    """Run the CLI in this process, then print its peak resident set size as the last stdout line."""
    from fewshot.cli import main

    code = main(argv)
    print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)
    return code


if __name__ == "__main__":
    if sys.argv[1:2] != ["--child"]:
        raise SystemExit("cli_child.py is run by benchmark scripts: python benchmarks/cli_child.py --child ARGS")
    sys.exit(_child(sys.argv[2:]))
