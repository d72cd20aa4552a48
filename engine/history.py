"""Checkpoints the repository shipped before, recovered from git's history.

A retired checkpoint keeps only its evaluations in ``models/eval/ALGORITHM-retired-SHA8/``; its weights stay in
the commits that shipped them. ``recover_checkpoint`` finds the commit whose ``models/ALGORITHM/model.safetensors``
has a given SHA-256 and writes those weights to a file, so the checkpoint can be evaluated again, e.g. through the
image pipeline the app served it with (its metadata is in its retired summary).
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path


def git_output(repo: Path, *args: str) -> bytes | None:
    """What ``git -C repo ARGS`` prints, or None when git fails (no git, not a repository, no such object)."""
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def recover_checkpoint(folder: Path, path: str, sha256: str, out: Path) -> str | None:
    """Write the version of ``path`` (relative to ``folder``, a folder of a git working tree) whose SHA-256 is
    ``sha256`` to the file ``out``; returns its commit, or None when no commit in this clone's history holds it
    (a shallow clone keeps only the latest)."""
    commits = git_output(folder, "log", "--format=%H", "--", path)
    for commit in (commits or b"").decode().split():
        weights = git_output(folder, "show", f"{commit}:./{path}")
        if weights is not None and hashlib.sha256(weights).hexdigest() == sha256:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(weights)
            return commit
    return None
