"""Resumable, checksum-verified HTTP(S) downloads, and the Omniglot archives.

A download streams into ``<dest>.part``; an interrupted one is resumed on the
next call with an HTTP ``Range`` request (servers that ignore it answer 200 and
the file restarts from zero). The finished file is verified, then moved into
place with ``os.replace``, so ``dest`` is either absent or complete and correct.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

OFFICIAL_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
# MD5 of the official archives, as verified by torchvision.datasets.Omniglot.
OMNIGLOT_MD5 = {
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
}
OMNIGLOT_SETS = ("background", "evaluation")

_CHUNK = 1 << 20
_TIMEOUT_S = 60


class DownloadError(OSError):
    """An HTTP or network failure; the message names the URL and the status or reason."""


def download(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    md5: str | None = None,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest``, resuming ``<dest>.part`` and verifying checksums.

    Args:
        url: an ``http://`` or ``https://`` address.
        dest: final path; its folder is created if needed.
        sha256, md5: expected hex digests (either, both or none).
        progress: show a tqdm progress bar.

    Returns:
        ``dest`` as a ``Path``.

    Raises:
        DownloadError: the server answered an HTTP error, could not be reached,
            or the transfer broke off (the ``.part`` file is kept for resuming).
        ValueError: a checksum does not match (the ``.part`` file is deleted).
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _fetch(url, part, progress)
    mismatch = _checksum_mismatch(part, sha256=sha256, md5=md5)
    if mismatch:
        part.unlink()
        raise ValueError(
            f"checksum mismatch for {dest} downloaded from {url}: {mismatch}; the partial file was deleted, try again"
        )
    os.replace(part, dest)
    return dest


def download_omniglot(
    data_root: str | Path,
    sets: Sequence[str] = OMNIGLOT_SETS,
    base_url: str = OFFICIAL_URL,
    checksums: Mapping[str, str] = OMNIGLOT_MD5,
    progress: bool = True,
) -> list[Path]:
    """Fetch ``images_<set>.zip`` for each of ``sets`` into ``<data_root>/omniglot/``.

    Files already present with the right MD5 are kept as they are. ``base_url``
    and ``checksums`` (archive name -> MD5; a name left out is not verified)
    default to the official Lake repository and its archives.

    Returns:
        The archive paths, in the order of ``sets``.
    """
    unknown = sorted(set(sets) - set(OMNIGLOT_SETS))
    if unknown:
        raise ValueError(f"unknown Omniglot sets {unknown}; valid: {', '.join(OMNIGLOT_SETS)}")
    root = Path(data_root).expanduser()
    if root.exists() and not root.is_dir():
        raise ValueError(f"data root {root} is a file; pass a directory to download into")
    paths = []
    for set_name in sets:
        name = f"images_{set_name}.zip"
        dest = root / "omniglot" / name
        md5 = checksums.get(name)
        if not (dest.is_file() and not _checksum_mismatch(dest, md5=md5)):
            download(f"{base_url.rstrip('/')}/{name}", dest, md5=md5, progress=progress)
        paths.append(dest)
    return paths


def _fetch(url: str, part: Path, progress: bool) -> None:
    """Stream ``url`` into ``part``, continuing from its current size when the server allows."""
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the part file is not a prefix the server can extend
            part.unlink()
            return _fetch(url, part, progress)
        raise DownloadError(f"download of {url} failed: HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        raise DownloadError(f"cannot reach {url}: {err.reason}") from err
    with response:
        resumed = offset > 0 and response.status == 206
        if resumed and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            response.close()
            part.unlink()  # the server resumed from elsewhere: start over
            return _fetch(url, part, progress)
        offset = offset if resumed else 0
        length = response.headers.get("Content-Length")
        with open(part, "ab" if resumed else "wb") as out, tqdm(
            total=offset + int(length) if length else None,
            initial=offset,
            unit="B",
            unit_scale=True,
            desc=part.name.removesuffix(".part"),
            disable=not progress,
        ) as bar:
            received = _copy(response, out, bar, url, part)
    if length and received < int(length):
        raise DownloadError(
            f"download of {url} broke off after {received} of {length} bytes; {part} is kept: call again to resume"
        )


def _copy(response: http.client.HTTPResponse, out: BinaryIO, bar: tqdm, url: str, part: Path) -> int:
    """Copy the response body into ``out`` chunk by chunk, advancing ``bar``; return the byte count."""
    received = 0
    try:
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            bar.update(len(chunk))
            received += len(chunk)
    except (http.client.HTTPException, OSError) as err:
        raise DownloadError(f"download of {url} broke off ({err!r}); {part} is kept: call again to resume") from err
    return received


def _checksum_mismatch(path: Path, sha256: str | None = None, md5: str | None = None) -> str | None:
    """``None`` when ``path`` matches every given digest, else ``"<algo> expected X, got Y"``."""
    expected = {name: value.lower() for name, value in (("sha256", sha256), ("md5", md5)) if value}
    if not expected:
        return None
    hashers = {name: hashlib.new(name) for name in expected}
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            for hasher in hashers.values():
                hasher.update(chunk)
    wrong = [f"{name} expected {expected[name]}, got {h.hexdigest()}" for name, h in hashers.items() if h.hexdigest() != expected[name]]
    return "; ".join(wrong) or None
