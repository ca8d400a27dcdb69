"""Crash-safe file writing and the cache directory, shared by checkpoints and caches."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fewshot.faults import pause_point


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` if given, else ``$FEWSHOT_CACHE``, else ``~/.cache/fewshot``."""
    if cache_dir is None:
        cache_dir = os.environ.get("FEWSHOT_CACHE") or Path.home() / ".cache" / "fewshot"
    return Path(cache_dir).expanduser()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsynced temporary file in the same directory and ``os.replace``.

    Readers see either the old file or the complete new one, never a partial write; on
    any failure the temporary file is removed and the error re-raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            half = len(data) // 2
            f.write(memoryview(data)[:half])
            pause_point(f"write{path.suffix}")        # crash tests stop here, half the bytes written
            f.write(memoryview(data)[half:])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_partial_writes(directory: Path, name_glob: str) -> None:
    """Delete the temporary files that an interrupted :func:`atomic_write` of ``directory/<name_glob>`` left."""
    for tmp in Path(directory).glob(f".{name_glob}.*.tmp"):
        tmp.unlink(missing_ok=True)
