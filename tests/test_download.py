"""Downloader, against a local http.server only (never the internet)."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from engine.data.__main__ import main as cli_main
from engine.data.download import (
    OFFICIAL_MANIFEST,
    ChecksumMismatchError,
    DownloadError,
    download_omniglot,
    hash_algorithm,
)

NAME = "images_background.zip"


@dataclass
class Server:
    url: str
    root: Path
    requests: list[str] = field(default_factory=list)


def _small_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("images_background/Latin/character01/0001_01.png", b"\x89PNG fake")
    return buf.getvalue()


@pytest.fixture()
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """Serve ``tmp_path/'served'`` on 127.0.0.1 (random port) from a background thread."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = tmp_path / "served"
    root.mkdir()
    (root / NAME).write_bytes(_small_zip())
    log: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            log.append(self.path)  # one entry per request, instead of printing

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server(url=f"http://127.0.0.1:{httpd.server_address[1]}/", root=root, requests=log)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _manifest(data: bytes, algo: str = "md5", size: bool = True) -> dict[str, tuple[int | None, str]]:
    return {NAME: (len(data) if size else None, hashlib.new(algo, data).hexdigest())}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize(("algo", "size"), [("md5", True), ("sha256", False)])
def test_download_success(server: Server, tmp_path: Path, algo: str, size: bool) -> None:
    data = (server.root / NAME).read_bytes()
    dest = tmp_path / "dest"
    paths = download_omniglot(dest, base_url=server.url, manifest=_manifest(data, algo, size), progress=False)
    assert paths == [dest / NAME]
    assert (dest / NAME).read_bytes() == data
    assert _leftovers(dest) == [NAME]  # no temp files
    assert any(NAME in r for r in server.requests)


def test_base_url_without_trailing_slash(server: Server, tmp_path: Path) -> None:
    data = (server.root / NAME).read_bytes()
    download_omniglot(tmp_path / "d", base_url=server.url.rstrip("/"), manifest=_manifest(data), progress=True)
    assert (tmp_path / "d" / NAME).read_bytes() == data


def test_checksum_mismatch_leaves_nothing(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    data = (server.root / NAME).read_bytes()
    bad = {NAME: (len(data), "0" * 32)}
    with pytest.raises(ChecksumMismatchError, match=f"{NAME}: checksum mismatch"):
        download_omniglot(dest, base_url=server.url, manifest=bad, progress=False)
    assert _leftovers(dest) == []
    assert len(server.requests) == 1  # a mismatch is not retried


def test_size_mismatch_leaves_nothing(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    data = (server.root / NAME).read_bytes()
    bad = {NAME: (len(data) + 1, hashlib.md5(data).hexdigest())}
    with pytest.raises(ChecksumMismatchError, match="size mismatch"):
        download_omniglot(dest, base_url=server.url, manifest=bad, progress=False)
    assert _leftovers(dest) == []


def test_present_valid_file_is_skipped(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    data = (server.root / NAME).read_bytes()
    (dest / NAME).write_bytes(data)
    paths = download_omniglot(dest, base_url=server.url, manifest=_manifest(data), progress=True)
    assert paths == [dest / NAME]
    assert server.requests == []


def test_present_corrupt_file_is_replaced(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    data = (server.root / NAME).read_bytes()
    (dest / NAME).write_bytes(b"truncated")
    download_omniglot(dest, base_url=server.url, manifest=_manifest(data), progress=False)
    assert (dest / NAME).read_bytes() == data
    assert len(server.requests) == 1


def test_missing_remote_file(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    manifest = {"images_evaluation.zip": (None, "0" * 64)}
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_omniglot(dest, base_url=server.url, manifest=manifest, progress=False, retries=3)
    assert _leftovers(dest) == []
    assert len(server.requests) == 1  # 4xx is not retried


def test_unreachable_server_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr("engine.data.download.time.sleep", lambda _s: None)
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match="after 2 attempt"):
        download_omniglot(dest, base_url=f"http://127.0.0.1:{port}/", manifest={NAME: (None, "0" * 32)},
                          progress=False, retries=2, timeout=5)
    assert _leftovers(dest) == []


def test_cli_mismatch_exits_nonzero(server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The local server's files are not the official release: the official manifest rejects them.
    (server.root / "images_evaluation.zip").write_bytes(_small_zip())
    dest = tmp_path / "dest"
    code = cli_main(["download", "--dest", str(dest), "--base-url", server.url, "--no-progress"])
    assert code != 0
    err = capsys.readouterr().err
    assert "error:" in err and NAME in err and "mismatch" in err
    assert _leftovers(dest) == []


def test_official_manifest() -> None:
    assert OFFICIAL_MANIFEST == {
        "images_background.zip": (9_464_212, "68d2efa1b9178cc56df9314c21c6e718"),
        "images_evaluation.zip": (6_462_886, "6b91aef0f799c5bb55b94e3f2daec811"),
    }
    assert hash_algorithm("0" * 32) == "md5" and hash_algorithm("0" * 64) == "sha256"
    with pytest.raises(ValueError):
        hash_algorithm("abc")
