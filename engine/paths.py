"""Where the project's data and caches live.

Kept in one tiny module so the CLI, the tests and the app agree on the same
defaults without hard-coding paths anywhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT: Path = Path(__file__).resolve().parent.parent
"""Root of the repository (the folder holding ``engine/``)."""

DATA_DIR_ENV = "OMNIGLOT_DIR"
CACHE_DIR_ENV = "META_PLAYGROUND_CACHE"


def _default_data_dir() -> Path:
    """The download command's default destination, inside the repository."""
    return REPO_ROOT / "data" / "omniglot"


def _candidate_data_dirs() -> tuple[Path, ...]:
    """Places searched, in order, when neither an argument nor the env var is given."""
    return (
        _default_data_dir(),
        REPO_ROOT.parent / "shared" / "data" / "omniglot",
    )


def resolve_data_dir(arg: str | os.PathLike[str] | None = None) -> Path:
    """Pick the Omniglot folder: explicit argument, then ``$OMNIGLOT_DIR``, then known places.

    Falls back to ``REPO_ROOT/data/omniglot`` (where ``python -m engine.data download``
    puts the files) so error messages point at a sensible location.
    """
    if arg is not None and str(arg) != "":
        return Path(arg).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    for candidate in _candidate_data_dirs():
        if candidate.is_dir():
            return candidate
    return _default_data_dir()


def cache_dir() -> Path:
    """Folder for derived, re-creatable files (decoded arrays); created on demand.

    ``$META_PLAYGROUND_CACHE`` overrides the default ``~/.cache/meta-playground`` so
    tests can use throw-away caches and read-only homes still work.
    """
    env = os.environ.get(CACHE_DIR_ENV)
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "meta-playground"
    path.mkdir(parents=True, exist_ok=True)
    return path
