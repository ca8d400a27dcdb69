"""Progress bars that suit both a terminal and a log file.

On a terminal :func:`progress_bar` is an ordinary tqdm bar, redrawn in place. Anywhere else (stderr
redirected to a file, a pipe, a CI log) a redrawn bar is a stream of ``\\r`` frames that ``tail -f`` and
log viewers show as one ever-growing line, so the bar writes plain lines instead, one each time another
``every_percent`` of the total is done or ``every_s`` seconds have passed (when the total is unknown:
only the latter), and a last one when it is closed, e.g.::

    protonet omniglot: 10% 100/1000 [00:41<06:09, 2.44it/s, loss=1.204]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm

EVERY_PERCENT = 10
EVERY_S = 30.0
_LINE = "{percentage:.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_LINE_NO_TOTAL = "{n_fmt} [{elapsed}, {rate_fmt}{postfix}]"


def progress_bar(iterable: Iterable | None = None, *, total: float | None = None, desc: str | None = None,
                 enabled: bool = True, file: TextIO | None = None, every_percent: float = EVERY_PERCENT,
                 every_s: float = EVERY_S, **kwargs: Any) -> tqdm:
    """A tqdm bar over ``iterable`` (or updated by hand up to ``total``), writing to ``file`` (stderr).

    Args:
        enabled: ``False``: a silent bar (iterating it still yields every item).
        file: where to write; ``None``: ``sys.stderr`` at call time. A stream whose ``isatty()`` is true
            gets a normal redrawn bar; any other, plain lines (see the module docstring).
        every_percent, every_s: how often a plain line is written (non-terminal streams only).
        kwargs: passed on to tqdm (``initial``, ``unit``, ``leave``, ``postfix``, ...).
    """
    file = sys.stderr if file is None else file
    if not enabled or file is None:
        return tqdm(iterable, total=total, desc=desc, disable=True, **kwargs)
    kwargs.pop("disable", None)
    if _is_terminal(file):
        return tqdm(iterable, total=total, desc=desc, file=file, **kwargs)
    return _LogBar(iterable, total=total, desc=desc, file=file, every_percent=every_percent, every_s=every_s,
                   **kwargs)


def _is_terminal(file: TextIO) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError, OSError):      # no isatty, or a closed stream
        return False


class _LogBar(tqdm):
    """A tqdm bar that prints a plain line (no ``\\r``, no bar glyphs) now and then instead of redrawing.

    tqdm calls :meth:`display` on every update here (``miniters=1``, ``mininterval=0``); it writes only
    when a percent step is crossed or ``every_s`` has passed since the last line (and the count moved).
    """

    def __init__(self, *args: Any, every_percent: float, every_s: float, **kwargs: Any):
        self._every_percent, self._every_s = every_percent, every_s
        self._printed_n: float | None = None
        self._printed_t = time.monotonic()
        self._next_percent = 0.0
        self._closing, self._started = False, False   # no line from tqdm's refresh at the start
        kwargs.update(miniters=1, mininterval=0, dynamic_ncols=False)
        super().__init__(*args, **kwargs)
        if not self.disable:
            self._printed_n = self.n                   # ``initial``: a resumed run's first line is its next step
            self._next_percent = self._step_after(self._percent())
            self._started = True

    def _percent(self) -> float | None:
        return 100.0 * self.n / self.total if self.total else None

    def _step_after(self, percent: float | None) -> float:
        if percent is None or self._every_percent <= 0:
            return float("inf")
        return (percent // self._every_percent + 1) * self._every_percent

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is not None or not self._started:       # tqdm's clearing calls: nothing was drawn to clear
            return False
        percent, now = self._percent(), time.monotonic()
        due = (self._closing and self.n != self._printed_n
               or percent is not None and percent >= self._next_percent
               or now - self._printed_t >= self._every_s and self.n != self._printed_n)
        if not due:
            return False
        fmt = _LINE if self.total else _LINE_NO_TOTAL
        line = self.format_meter(**{**self.format_dict, "bar_format": fmt, "ncols": None, "prefix": ""})
        self.fp.write((f"{self.desc}: " if self.desc else "") + line.rstrip() + "\n")
        self.fp.flush()
        self._printed_n, self._printed_t = self.n, now
        self._next_percent = self._step_after(percent)
        return True

    def clear(self, nolock: bool = False) -> None:
        """Nothing to clear: lines are never redrawn (``tqdm.write`` calls this before printing)."""

    def close(self) -> None:
        """Write a last line (unless the last one already showed the final count), then close."""
        if not self.disable:
            self._closing = True
            with self._lock:
                self.display()
            self.leave = False                        # tqdm's own final display would only clear
        super().close()
