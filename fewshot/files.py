"""Crash-safe file writing and the cache directory, shared by checkpoints and caches."""

from __future__ import annotations

import os
import secrets
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
    any failure the temporary file is removed and the error re-raised. The file gets the
    permissions ``open(path, "w")`` would give a new file: ``0o666`` less the umask (``0o644``
    under the usual umask 022), so run files are readable by others as any other output is.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
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


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, empty ``<dir>/.<name>.<random>.tmp`` opened for writing: ``(fd, path)``.

    Not ``tempfile.mkstemp``: it creates files 0600 whatever the umask. Opening with mode 0o666 lets
    the kernel apply the umask (and any default ACL of the folder) exactly as for ``open(path, "w")``.
    That also avoids reading the umask, which Python can only do by setting it (``os.umask``), a
    process-wide change that races with files other threads create meanwhile.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:        # 48 random bits: only a pathological directory gets here twice
            continue
    raise FileExistsError(f"cannot create a temporary file next to {path}: 100 random names were taken")


def remove_partial_writes(directory: Path, name_glob: str) -> None:
    """Delete the temporary files that an interrupted :func:`atomic_write` of ``directory/<name_glob>`` left."""
    for tmp in Path(directory).glob(f".{name_glob}.*.tmp"):
        tmp.unlink(missing_ok=True)
