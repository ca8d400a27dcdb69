"""Argument types of the ``fewshot`` command, shared by the command and the domains' flags."""

from __future__ import annotations

import argparse
import math
from typing import Sequence


def integer_at_least(low: int):
    """An argparse type: an integer ``>= low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text}")
        return value
    return parse


positive_int, nonnegative_int = integer_at_least(1), integer_at_least(0)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def choices(allowed: Sequence[str]):
    """An argparse type: a comma-separated list of names from ``allowed``."""
    def parse(text: str) -> list[str]:
        names = [n for n in text.split(",") if n]
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {','.join(allowed)} (comma-separated)")
        return names
    return parse


def task_shapes(text: str) -> list[tuple[int, int]]:
    """``5x32,20x4`` -> ``[(5, 32), (20, 4)]`` (ways x meta-batch)."""
    try:
        shapes = [tuple(int(v) for v in part.split("x")) for part in text.split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(sh) != 2 or min(sh) < 1 for sh in shapes):
        raise argparse.ArgumentTypeError(f"{text!r}: give WAYSxMETA_BATCH pairs, e.g. 5x32,20x4")
    return shapes
