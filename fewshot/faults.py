"""A test hook for crash tests: stop the process at a named point so that a test can SIGKILL it there.

With ``FEWSHOT_PAUSE_AT=NAME:N`` and ``FEWSHOT_PAUSE_FILE=PATH`` in the environment, the
``N``-th time this process reaches :func:`pause_point` ``NAME`` it writes ``PATH`` (the
signal that it has arrived) and sleeps until it is killed. Without the variable the hook
costs one dictionary lookup. The points:

    ``train-step``          after a meta-batch's backward pass, before the optimizer step
    ``commit-<checkpoint>`` between a checkpoint's tensor file and its JSON (``commit-last``)
    ``write<suffix>``       half-way through writing a file's bytes (``write.safetensors``)
    ``evaluate-episode``    before each episode of an evaluation (validation included)
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

_reached: Counter[str] = Counter()


def pause_point(name: str) -> None:
    """Pause here for good if ``FEWSHOT_PAUSE_AT`` names this point and this is its ``N``-th visit."""
    target = os.environ.get("FEWSHOT_PAUSE_AT")
    if not target:
        return
    wanted, _, count = target.rpartition(":")
    if wanted != name:
        return
    _reached[name] += 1
    if _reached[name] == int(count):
        Path(os.environ["FEWSHOT_PAUSE_FILE"]).write_text(name)
        while True:
            time.sleep(1)
