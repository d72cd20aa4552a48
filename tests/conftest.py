"""Shared pytest fixtures."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from engine.paths import CACHE_DIR_ENV, REPO_ROOT

# --------------------------------------------------------------------------- Omniglot data

SHARED_OMNIGLOT = REPO_ROOT.parent / "shared" / "data" / "omniglot"

TINY_ALPHABETS: dict[str, dict[str, int]] = {
    # split -> alphabet -> number of characters. Greek and Futurama are validation
    # alphabets, so load_splits() yields non-empty train and val sets on tiny data too.
    "background": {"Cyrillic": 3, "Futurama": 2, "Greek": 3, "Latin": 4},
    "evaluation": {"Atlantean": 2, "Tengwar": 3},
}
TINY_DRAWINGS = 20


def _tiny_drawing(rng: np.random.Generator, strokes: np.ndarray) -> Image.Image:
    """One 105x105 1-bit drawing: the character's strokes plus per-drawer jitter."""
    im = Image.new("L", (105, 105), 255)
    draw = ImageDraw.Draw(im)
    shift = rng.normal(0.0, 3.0, size=2)
    for stroke in strokes:
        pts = stroke + shift + rng.normal(0.0, 1.5, size=stroke.shape)
        draw.line([tuple(p) for p in pts], fill=0, width=5, joint="curve")
    return im.convert("1")


def _write_tiny_split(root: Path, split: str, first_char: int) -> int:
    """Write ``images_<split>.zip`` in the official layout; return the next character number."""
    rng = np.random.default_rng(first_char)
    number = first_char
    with zipfile.ZipFile(root / f"images_{split}.zip", "w") as zf:
        for alphabet, count in TINY_ALPHABETS[split].items():
            for c in range(1, count + 1):
                strokes = rng.uniform(20, 85, size=(int(rng.integers(1, 4)), 3, 2))
                for drawer in range(1, TINY_DRAWINGS + 1):
                    path = f"images_{split}/{alphabet}/character{c:02d}/{number:04d}_{drawer:02d}.png"
                    zf.writestr(path, _png_bytes(_tiny_drawing(rng, strokes)))
                number += 1
    return number


def _png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def tiny_omniglot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with tiny synthetic ``images_background.zip`` / ``images_evaluation.zip``.

    Same layout as the official release (12 + 5 characters, 20 1-bit 105x105 PNGs each);
    see ``TINY_ALPHABETS``. Treat it as read-only: it is shared by the whole session.
    """
    root = tmp_path_factory.mktemp("tiny_omniglot")
    nxt = _write_tiny_split(root, "background", 1)
    _write_tiny_split(root, "evaluation", nxt)
    return root


@pytest.fixture(scope="session")
def _session_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("meta_playground_cache")


@pytest.fixture(scope="session")
def tiny_layout() -> dict[str, dict[str, int]]:
    """What ``tiny_omniglot`` contains: split -> alphabet -> number of characters."""
    return {split: dict(alphabets) for split, alphabets in TINY_ALPHABETS.items()}


@pytest.fixture()
def isolated_cache(_session_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``$META_PLAYGROUND_CACHE`` at a session-wide temp dir; use it with tiny data.

    Keeps throw-away decoded arrays out of the user's real cache. Not autouse: tests on
    the real Omniglot keep the persistent cache (~/.cache/meta-playground) so they stay
    fast. Tests needing an *empty* cache should set the variable to their own tmp_path.
    """
    monkeypatch.setenv(CACHE_DIR_ENV, str(_session_cache_dir))
    return _session_cache_dir


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    """The shared real Omniglot folder (``../shared/data/omniglot``); skips if absent."""
    if not all((SHARED_OMNIGLOT / f"images_{s}.zip").is_file() for s in ("background", "evaluation")):
        pytest.skip(f"real Omniglot not found at {SHARED_OMNIGLOT}")
    return SHARED_OMNIGLOT


# --------------------------------------------------------------------------- slow tests

def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (CI does)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
