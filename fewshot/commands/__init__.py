"""Subcommands of ``fewshot`` beyond ``train``, ``eval``, ``calibrate``, ``download`` and ``bench``.

Each module named in :data:`COMMANDS` holds one subcommand and defines

- ``NAME``: the word after ``fewshot``;
- ``add_parser(sub, parser_class)``: add its parser with ``sub.add_parser(NAME, help=...)`` (already a parser
  whose usage errors are one line); ``parser_class`` is that class, for a command's own nested subcommands
  (``parser.add_subparsers(..., parser_class=parser_class)``);
- ``run(args)``: do it. Bad input raises :class:`ValueError` (or :class:`FileNotFoundError`) with a message that
  names the problem and the fix; :func:`fewshot.cli.main` prints it as one line and exits with status 2.

A new command is one module here and one name in :data:`COMMANDS`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

COMMANDS: tuple[str, ...] = ("optimize", "design", "report", "explain", "study")


def command_modules() -> list[ModuleType]:
    """The modules of :data:`COMMANDS`, imported."""
    return [importlib.import_module(f"fewshot.commands.{name}") for name in COMMANDS]
