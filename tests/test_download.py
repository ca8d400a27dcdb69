"""Tests for fewshot.datasets.download against a local HTTP server (127.0.0.1 only)."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fewshot.datasets.download import OMNIGLOT_MD5, DownloadError, download, download_omniglot

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes


@dataclass
class Server:
    """What the test server serves and what it saw."""

    url: str
    files: dict[str, bytes] = field(default_factory=dict)
    ranges: list[str | None] = field(default_factory=list)
    honour_range: bool = True
    cut_next_response: bool = False  # send half the body, then hang up
    range_from_zero: bool = False  # answer 206 but send the whole file


class _Handler(BaseHTTPRequestHandler):
    """Serves ``state.files`` with ``Range: bytes=N-`` support."""

    state: Server

    def do_GET(self) -> None:
        state = self.state
        state.ranges.append(self.headers.get("Range"))
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        requested = self.headers.get("Range")
        start = int(requested.removeprefix("bytes=").rstrip("-")) if requested and state.honour_range else None
        if start is not None and start >= len(body):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if start is not None and state.range_from_zero:
            start = 0
        self.send_response(200 if start is None else 206)
        if start is not None:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            body = body[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state.cut_next_response:
            state.cut_next_response = False
            body = body[: len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    state = Server(url=f"http://127.0.0.1:{httpd.server_address[1]}")
    _Handler.state = state
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_download_verifies_and_moves_into_place(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = PAYLOAD
    dest = tmp_path / "sub" / "f.bin"
    got = download(f"{server.url}/f.bin", dest, sha256=_sha256(PAYLOAD), md5=_md5(PAYLOAD), progress=True)
    assert got == dest and dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "sub" / "f.bin.part").exists()
    assert server.ranges == [None]


def test_bad_checksum_removes_partial_file(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = PAYLOAD
    dest = tmp_path / "f.bin"
    with pytest.raises(ValueError) as info:
        download(f"{server.url}/f.bin", dest, sha256="0" * 64, progress=False)
    message = str(info.value)
    assert str(dest) in message and "0" * 64 in message and _sha256(PAYLOAD) in message
    assert not dest.exists() and not (tmp_path / "f.bin.part").exists()


def test_resume_sends_range_and_appends(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = PAYLOAD
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:1000])
    download(f"{server.url}/f.bin", dest, md5=_md5(PAYLOAD), progress=False)
    assert server.ranges == ["bytes=1000-"]
    assert dest.read_bytes() == PAYLOAD


def test_resume_after_broken_transfer(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = PAYLOAD
    server.cut_next_response = True
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match="broke off.*call again to resume"):
        download(f"{server.url}/f.bin", dest, sha256=_sha256(PAYLOAD), progress=False)
    kept = (tmp_path / "f.bin.part").stat().st_size
    assert 0 < kept < len(PAYLOAD)
    download(f"{server.url}/f.bin", dest, sha256=_sha256(PAYLOAD), progress=False)
    assert server.ranges == [None, f"bytes={kept}-"]
    assert dest.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_from_zero(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = PAYLOAD
    server.honour_range = False
    (tmp_path / "f.bin.part").write_bytes(b"garbage that is not a prefix")
    download(f"{server.url}/f.bin", tmp_path / "f.bin", sha256=_sha256(PAYLOAD), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_misplaced_partial_content_restarts_from_zero(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = PAYLOAD
    server.range_from_zero = True
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:1000])
    download(f"{server.url}/f.bin", tmp_path / "f.bin", sha256=_sha256(PAYLOAD), progress=False)
    assert server.ranges == ["bytes=1000-", None]
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_oversized_part_file_restarts_from_zero(server: Server, tmp_path: Path) -> None:
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD + b"extra")
    download(f"{server.url}/f.bin", tmp_path / "f.bin", sha256=_sha256(PAYLOAD), progress=False)
    assert server.ranges == [f"bytes={len(PAYLOAD) + 5}-", None]
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_http_error_names_url_and_status(server: Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=rf"{server.url}/missing.zip failed: HTTP 404"):
        download(f"{server.url}/missing.zip", tmp_path / "missing.zip", progress=False)
    assert not (tmp_path / "missing.zip").exists()


def test_unreachable_server(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a local port with nothing listening on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match=rf"cannot reach http://127.0.0.1:{port}/f.bin"):
        download(f"http://127.0.0.1:{port}/f.bin", tmp_path / "f.bin", progress=False)


def test_download_omniglot_fetches_verifies_and_skips(server: Server, tmp_path: Path) -> None:
    archives = {"images_background.zip": b"background" * 100, "images_evaluation.zip": b"evaluation" * 100}
    server.files.update({f"/python/{name}": data for name, data in archives.items()})
    checksums = {name: _md5(data) for name, data in archives.items()}
    base_url = f"{server.url}/python/"

    paths = download_omniglot(tmp_path, base_url=base_url, checksums=checksums, progress=False)
    assert paths == [tmp_path / "omniglot" / name for name in archives]
    assert [p.read_bytes() for p in paths] == list(archives.values())
    assert len(server.ranges) == 2

    download_omniglot(tmp_path, base_url=base_url, checksums=checksums, progress=False)
    assert len(server.ranges) == 2  # both present and correct: nothing fetched

    paths[1].write_bytes(b"damaged")
    download_omniglot(tmp_path, sets=["evaluation"], base_url=base_url, checksums=checksums, progress=False)
    assert len(server.ranges) == 3 and paths[1].read_bytes() == archives["images_evaluation.zip"]


def test_download_omniglot_rejects_unknown_set_and_bad_archive(server: Server, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown Omniglot sets \\['small1'\\]"):
        download_omniglot(tmp_path, sets=["small1"], base_url=server.url)
    server.files["/images_background.zip"] = b"not the official archive"
    with pytest.raises(ValueError, match=f"expected {OMNIGLOT_MD5['images_background.zip']}"):
        download_omniglot(tmp_path, sets=["background"], base_url=server.url, progress=False)
    assert not (tmp_path / "omniglot" / "images_background.zip").exists()
