"""Download the official Omniglot release, verified, atomically, resumably re-runnable.

Only the standard library is used for HTTP (urllib honours the usual proxy
environment variables). Each file is streamed into a temporary file in the
destination folder, checked against the manifest (size, then digest), and only then
renamed into place, so an interrupted or corrupt download never looks valid.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from tqdm import tqdm

OFFICIAL_BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"

ManifestEntry = tuple[int | None, str]
"""(expected size in bytes or None, hex digest: 32 chars = MD5, 40 = SHA-1, 64 = SHA-256)."""

OFFICIAL_MANIFEST: dict[str, ManifestEntry] = {
    # Sizes: tensorflow/datasets url_checksums/omniglot.txt; MD5s: torchvision.datasets.Omniglot.
    # SHA-256 (same TFDS file), for reference:
    #   images_background.zip ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640
    #   images_evaluation.zip 1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee
    "images_background.zip": (9_464_212, "68d2efa1b9178cc56df9314c21c6e718"),
    "images_evaluation.zip": (6_462_886, "6b91aef0f799c5bb55b94e3f2daec811"),
}

_CHUNK = 1 << 16
_USER_AGENT = "meta-playground-omniglot-downloader/1"
_ALGORITHMS = {32: "md5", 40: "sha1", 64: "sha256"}


class DownloadError(RuntimeError):
    """A file could not be downloaded (network error, HTTP error, truncated transfer)."""


class ChecksumMismatchError(DownloadError):
    """The downloaded bytes do not match the manifest's size or digest."""


def hash_algorithm(digest: str) -> str:
    """hashlib name for a hex digest, inferred from its length."""
    try:
        return _ALGORITHMS[len(digest)]
    except KeyError:
        raise ValueError(f"unsupported digest {digest!r}: expected 32 (md5), 40 (sha1) or 64 (sha256) hex chars")


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_matches(path: Path, entry: ManifestEntry) -> bool:
    """Whether ``path`` exists with the expected size and digest."""
    size, digest = entry
    if not path.is_file():
        return False
    if size is not None and path.stat().st_size != size:
        return False
    return file_digest(path, hash_algorithm(digest)) == digest.lower()


def _fetch_once(url: str, tmp: Path, name: str, expected_size: int | None, algorithm: str,
                progress: bool, timeout: float) -> tuple[int, str]:
    """Stream ``url`` into ``tmp``; return (bytes written, hex digest)."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    h = hashlib.new(algorithm)
    written = 0
    with urllib.request.urlopen(request, timeout=timeout) as resp, open(tmp, "wb") as out:
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else expected_size
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                  disable=not progress, leave=False) as bar:
            for chunk in iter(lambda: resp.read(_CHUNK), b""):
                out.write(chunk)
                h.update(chunk)
                written += len(chunk)
                bar.update(len(chunk))
        if length and length.isdigit() and written != int(length):
            raise DownloadError(f"{name}: connection closed after {written} of {length} bytes")
    return written, h.hexdigest()


def download_file(url: str, dest: Path, entry: ManifestEntry, *, progress: bool = True,
                  retries: int = 3, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (atomically), verifying ``entry``; retry transient failures.

    HTTP 4xx errors and checksum mismatches are not retried: repeating them cannot help.
    The temporary file is always removed on failure.
    """
    size, digest = entry
    algorithm = hash_algorithm(digest)
    name = dest.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    for attempt in range(1, max(1, retries) + 1):
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            written, got = _fetch_once(url, tmp, name, size, algorithm, progress, timeout)
            if size is not None and written != size:
                raise ChecksumMismatchError(
                    f"{name}: size mismatch: got {written} bytes, expected {size} (from {url})"
                )
            if got != digest.lower():
                raise ChecksumMismatchError(
                    f"{name}: checksum mismatch: {algorithm} {got}, expected {digest.lower()} (from {url})"
                )
            os.replace(tmp, dest)
            return dest
        except ChecksumMismatchError:
            raise
        except urllib.error.HTTPError as exc:
            last_error = exc
            if 400 <= exc.code < 500:
                raise DownloadError(f"{name}: HTTP {exc.code} {exc.reason} for {url}") from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException, DownloadError) as exc:
            last_error = exc
        finally:
            tmp.unlink(missing_ok=True)
        if attempt < retries:
            time.sleep(min(2.0 ** (attempt - 1), 10.0))
    raise DownloadError(f"{name}: download failed after {max(1, retries)} attempt(s): {last_error}")


def download_omniglot(
    dest: Path | str,
    base_url: str = OFFICIAL_BASE_URL,
    manifest: Mapping[str, ManifestEntry] = OFFICIAL_MANIFEST,
    progress: bool = True,
    *,
    retries: int = 3,
    timeout: float = 60.0,
) -> list[Path]:
    """Fetch every manifest file into ``dest``; files already present and valid are kept.

    Returns the paths of all manifest files (downloaded or skipped), in manifest order.
    Raises :class:`DownloadError` (or :class:`ChecksumMismatchError`) on failure.
    """
    folder = Path(dest).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, entry in manifest.items():
        target = folder / name
        if file_matches(target, entry):
            if progress:
                tqdm.write(f"{name}: already present and valid, skipping")
            paths.append(target)
            continue
        url = base_url.rstrip("/") + "/" + name
        if progress:
            tqdm.write(f"{name}: downloading {url}")
        paths.append(download_file(url, target, entry, progress=progress, retries=retries, timeout=timeout))
    return paths
