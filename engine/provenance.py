"""Where a result came from: code version, hardware, dataset."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from engine.data.download import file_digest
from engine.paths import REPO_ROOT


def git_commit() -> str | None:
    """HEAD's hash, with '+dirty' when the work tree has uncommitted changes; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def dataset_fingerprint(data_dir: Path) -> dict[str, str]:
    """sha256 of each split's zip (or, for an extracted folder, of its sorted file list)."""
    fingerprint: dict[str, str] = {}
    for split in ("background", "evaluation"):
        archive = data_dir / f"images_{split}.zip"
        folder = data_dir / f"images_{split}"
        if archive.exists():
            fingerprint[archive.name] = file_digest(archive, "sha256")
        elif folder.exists():
            digest = hashlib.sha256()
            for path in sorted(folder.rglob("*.png")):
                digest.update(str(path.relative_to(folder)).encode())
            fingerprint[folder.name + "/ (file list)"] = digest.hexdigest()
    return fingerprint
