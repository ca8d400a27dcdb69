"""Resumable result files and Markdown tables shared by the benchmark scripts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Iterable


def measure_all(results: Path, names: Iterable[str], measure: Callable[[str], dict],
                keep: Callable[[dict], bool] = lambda row: True) -> dict[str, dict]:
    """``{name: row}`` for every name: rows already in the JSON-lines file ``results`` (those ``keep``
    accepts) are reused, the others are measured by ``measure(name)`` and appended, one line each, so an
    interrupted benchmark resumes where it stopped."""
    results.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if results.is_file():
        done = {r["learner"]: r for r in map(json.loads, results.read_text().splitlines()) if keep(r)}
    for name in names:
        if name in done:
            print(f"{name}: already measured in {results}", file=sys.stderr)
            continue
        done[name] = measure(name)
        with open(results, "a") as f:
            f.write(json.dumps(done[name]) + "\n")
    return done


def markdown(rows: list[dict], columns: list[str], cell: Callable[[dict], str]) -> str:
    """A Markdown table: learner, one cell per column (``cell(row[column])``), training time, peak memory."""
    lines = ["| learner | " + " | ".join(columns) + " | training (s) | peak memory (MB) |",
             "|" + "---|" * (len(columns) + 3)]
    for row in rows:
        cells = " | ".join(cell(row[c]) for c in columns)
        lines.append(f"| {row['learner']} | {cells} | {row['train_s']:.0f} | {row['peak_mb']:.0f} |")
    return "\n".join(lines)
