"""Omniglot loader, cache, splits, paths and the ``info`` command."""

from __future__ import annotations

import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.data import omniglot
from engine.data.__main__ import main as cli_main
from engine.data.omniglot import (
    CHARACTER_SPLIT_SIZES,
    VALIDATION_ALPHABETS,
    CharacterSet,
    DatasetNotFoundError,
    load_split,
    load_splits,
    omniglot_to_28,
    to_tensor,
)
from engine.paths import CACHE_DIR_ENV, DATA_DIR_ENV, REPO_ROOT, cache_dir, resolve_data_dir

Layout = dict[str, dict[str, int]]


def _extract(zip_path: Path, dest: Path) -> Path:
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(dest)
    return dest


def _check_charset(chars: CharacterSet, n_chars: int, n_alphabets: int) -> None:
    assert chars.images.dtype == np.uint8
    assert chars.images.shape == (n_chars, 20, 28, 28)
    assert chars.num_classes == len(chars.characters) == len(chars.alphabets) == n_chars
    assert len(set(chars.alphabets)) == len(chars.alphabet_names) == n_alphabets
    assert list(chars.characters) == sorted(chars.characters)
    for name, alphabet in zip(chars.characters, chars.alphabets, strict=True):
        assert name.startswith(alphabet + "/character")
    imgs = chars.images
    assert imgs.max() == 255 and imgs.min() == 0
    # ink high: background (0) is the majority, borders are empty
    assert imgs.mean() < 0.25 * 255
    assert np.median(imgs) == 0
    assert imgs[..., 0, :].mean() < 10 and imgs[..., :, 0].mean() < 10


# --------------------------------------------------------------------------- tiny data


def test_tiny_zip_loads(tiny_omniglot: Path, tiny_layout: Layout, isolated_cache: Path) -> None:
    bg = load_split(tiny_omniglot, "background")
    _check_charset(bg, sum(tiny_layout["background"].values()), len(tiny_layout["background"]))
    ev = load_split(str(tiny_omniglot), "evaluation")
    _check_charset(ev, sum(tiny_layout["evaluation"].values()), len(tiny_layout["evaluation"]))
    assert bg.drawings_per_class == 20
    assert not bg.images.flags.writeable  # shared cached data must not be mutated


def test_tiny_folder_matches_zip(tiny_omniglot: Path, tmp_path: Path, isolated_cache: Path) -> None:
    folder_root = _extract(tiny_omniglot / "images_background.zip", tmp_path / "extracted")
    from_folder = load_split(folder_root, "background")
    from_zip = load_split(tiny_omniglot, "background")
    np.testing.assert_array_equal(from_folder.images, from_zip.images)
    assert from_folder.characters == from_zip.characters
    assert from_folder.alphabets == from_zip.alphabets


def test_zip_preferred_over_folder(
    tiny_omniglot: Path, tiny_layout: Layout, tmp_path: Path, isolated_cache: Path
) -> None:
    root = tmp_path / "both"
    _extract(tiny_omniglot / "images_background.zip", root)
    shutil.rmtree(root / "images_background" / "Latin")  # folder now differs from the zip
    shutil.copy(tiny_omniglot / "images_background.zip", root)
    assert load_split(root, "background").num_classes == sum(tiny_layout["background"].values())
    (root / "images_background.zip").unlink()
    assert "Latin" not in load_split(root, "background").alphabet_names


def test_missing_dataset_error(tmp_path: Path, isolated_cache: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_split(tmp_path, "evaluation")
    assert isinstance(info.value, FileNotFoundError)
    msg = str(info.value)
    assert "python -m engine.data download --dest" in msg and str(tmp_path) in msg
    with pytest.raises(ValueError):
        load_split(tmp_path, "training")  # type: ignore[arg-type]


def test_cache_hit_and_invalidation(tiny_omniglot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "fresh_cache"
    monkeypatch.setenv(CACHE_DIR_ENV, str(cache))
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(tiny_omniglot / "images_evaluation.zip", data)
    before = sorted(p.name for p in data.iterdir())
    first = load_split(data, "evaluation")
    assert len(list(cache.glob("omniglot-evaluation-*.npz"))) == 1
    assert sorted(p.name for p in data.iterdir()) == before  # nothing written next to the data

    def fail(*_: object) -> np.ndarray:
        raise AssertionError("decoded although a valid cache exists")

    monkeypatch.setattr(omniglot, "decode_drawing", fail)
    second = load_split(data, "evaluation")
    np.testing.assert_array_equal(first.images, second.images)
    assert first.characters == second.characters

    # A changed source (new mtime) must not reuse the stale cache.
    st = (data / "images_evaluation.zip").stat()
    os.utime(data / "images_evaluation.zip", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded although"):
        load_split(data, "evaluation")


def test_corrupt_cache_is_rebuilt(tiny_omniglot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "c"))
    first = load_split(tiny_omniglot, "evaluation")
    (cache_file,) = (tmp_path / "c").glob("*.npz")
    cache_file.write_bytes(b"not an npz")
    again = load_split(tiny_omniglot, "evaluation")
    np.testing.assert_array_equal(first.images, again.images)


def test_wrong_drawing_count_is_reported(tmp_path: Path, tiny_omniglot: Path, isolated_cache: Path) -> None:
    root = _extract(tiny_omniglot / "images_evaluation.zip", tmp_path / "x")
    victim = sorted((root / "images_evaluation").rglob("*.png"))[0]
    victim.unlink()
    with pytest.raises(ValueError, match="19 drawings"):
        load_split(root, "evaluation")


def test_load_splits_tiny(tiny_omniglot: Path, tiny_layout: Layout, isolated_cache: Path) -> None:
    splits = load_splits(tiny_omniglot)
    bg = load_split(tiny_omniglot, "background")
    assert set(splits.val.alphabets) == {"Greek", "Futurama"} <= set(VALIDATION_ALPHABETS)
    assert set(splits.train.alphabets).isdisjoint(splits.val.alphabets)
    assert set(splits.train.characters) | set(splits.val.characters) == set(bg.characters)
    assert splits.train.num_classes + splits.val.num_classes == bg.num_classes
    assert splits.test.num_classes == sum(tiny_layout["evaluation"].values())


def test_subset_and_to_tensor(tiny_omniglot: Path, isolated_cache: Path) -> None:
    bg = load_split(tiny_omniglot, "background")
    by_idx = bg.subset([2, 0])
    assert by_idx.characters == (bg.characters[2], bg.characters[0])
    np.testing.assert_array_equal(by_idx.images[1], bg.images[0])
    mask = np.array([a == "Latin" for a in bg.alphabets])
    latin = bg.subset(mask)
    assert latin.alphabet_names == ("Latin",) and latin.num_classes == int(mask.sum())
    with pytest.raises(ValueError):
        bg.subset(mask[:-1])

    t = to_tensor(bg.images[:3])
    assert t.shape == (3, 20, 1, 28, 28) and t.dtype == torch.float32
    assert float(t.min()) == 0.0 and float(t.max()) == 1.0
    assert to_tensor(bg.images[0, 0]).shape == (1, 28, 28)


def test_omniglot_to_28_range() -> None:
    assert omniglot_to_28(np.zeros((105, 105), np.float32)).max() == 0.0
    full = omniglot_to_28(np.ones((105, 105), np.float32))
    assert full.shape == (28, 28) and full.dtype == np.float32
    assert np.allclose(full, 1.0, atol=1e-5)
    frame = np.zeros((105, 105), np.float32)
    frame[50:55, 10:95] = 1.0  # a 5-px horizontal stroke, as in Omniglot
    small = omniglot_to_28(frame)
    assert 0.0 <= small.min() and 0.6 < small.max() <= 1.0  # 5 px -> 1.3 px: not saturated


def test_validation_alphabets_constant() -> None:
    assert len(VALIDATION_ALPHABETS) == len(set(VALIDATION_ALPHABETS)) == 5


def test_info_command(
    tiny_omniglot: Path, tiny_layout: Layout, isolated_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["info", "--data-dir", str(tiny_omniglot)]) == 0
    out = capsys.readouterr().out
    n_bg = sum(tiny_layout["background"].values())
    assert f"background: {n_bg} characters, {n_bg * 20} drawings, 4 alphabets" in out
    assert "evaluation: 5 characters, 100 drawings, 2 alphabets" in out
    assert "val 5 characters / 2 alphabets" in out


def test_info_command_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["info", "--data-dir", str(tmp_path)]) == 1
    assert "python -m engine.data download" in capsys.readouterr().err


# --------------------------------------------------------------------------- paths


def test_resolve_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv(DATA_DIR_ENV)
    found = resolve_data_dir()
    candidates = [REPO_ROOT / "data" / "omniglot", REPO_ROOT.parent / "shared" / "data" / "omniglot"]
    existing = [c for c in candidates if c.is_dir()]
    assert found == (existing[0] if existing else candidates[0])


def test_cache_dir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a" / "b"
    monkeypatch.setenv(CACHE_DIR_ENV, str(target))
    assert cache_dir() == target and target.is_dir()


# --------------------------------------------------------------------------- real Omniglot


def test_real_omniglot_counts(omniglot_dir: Path) -> None:
    bg = load_split(omniglot_dir, "background")  # decodes once per machine, then cached
    _check_charset(bg, 964, 30)
    ev = load_split(omniglot_dir, "evaluation")
    _check_charset(ev, 659, 20)
    assert set(bg.alphabets).isdisjoint(ev.alphabets)
    assert set(VALIDATION_ALPHABETS) <= set(bg.alphabets)
    # Omniglot at 28x28: ~8% of the 105 frame is ink, so mean intensity is small but non-zero
    assert 0.05 * 255 < bg.images.mean() < 0.2 * 255


def test_real_omniglot_cached_load_is_fast(omniglot_dir: Path) -> None:
    load_split(omniglot_dir, "background")
    load_split(omniglot_dir, "evaluation")
    start = time.perf_counter()
    load_split(omniglot_dir, "background")
    load_split(omniglot_dir, "evaluation")
    assert time.perf_counter() - start < 2.0


def test_real_omniglot_splits(omniglot_dir: Path) -> None:
    splits = load_splits(omniglot_dir)
    bg = load_split(omniglot_dir, "background")
    assert set(splits.val.alphabet_names) == set(VALIDATION_ALPHABETS)
    assert set(splits.train.alphabets).isdisjoint(splits.val.alphabets)
    assert set(splits.train.alphabets) | set(splits.val.alphabets) == set(bg.alphabets)
    assert splits.train.num_classes + splits.val.num_classes == 964
    assert splits.train.num_classes == 788  # models/RESULTS.md (engine.results) quotes the counts
    assert len(splits.train.alphabet_names) == 25
    assert splits.test.num_classes == 659


def test_real_omniglot_background_split(omniglot_dir: Path) -> None:
    """``background``: training covers every background alphabet, the validation ones included (so they
    are no longer held out), and the test split is still the unseen evaluation alphabets."""
    ours, everything = load_splits(omniglot_dir), load_splits(omniglot_dir, scheme="background")
    assert everything.train.characters == load_split(omniglot_dir, "background").characters
    assert everything.train.num_classes == 964 and set(everything.val.characters) <= set(everything.train.characters)
    assert everything.val.characters == ours.val.characters and everything.test.characters == ours.test.characters
    assert ours.val_held_out and not everything.val_held_out
    assert set(everything.train.alphabets).isdisjoint(everything.test.alphabets)


def test_real_omniglot_character_split(omniglot_dir: Path) -> None:
    """The papers' split: every character in exactly one part, Vinyals et al.'s sizes, test
    characters from alphabets that training has seen, and the same split on every call."""
    splits = load_splits(omniglot_dir, scheme="characters")
    parts = (splits.train, splits.val, splits.test)
    assert tuple(part.num_classes for part in parts) == CHARACTER_SPLIT_SIZES == (1028, 172, 423)
    names = [set(part.characters) for part in parts]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    sources = [load_split(omniglot_dir, "background"), load_split(omniglot_dir, "evaluation")]
    assert set().union(*names) == set(sources[0].characters) | set(sources[1].characters)
    assert set(splits.test.alphabets) <= set(splits.train.alphabets)
    assert len(splits.test.alphabet_names) > 40  # drawn from (nearly) every alphabet, not a block of them
    assert load_splits(omniglot_dir, scheme="characters").test.characters == splits.test.characters
    for index in (0, 200, 422):  # each character keeps its own drawings
        name = splits.test.characters[index]
        source = next(source for source in sources if name in source.characters)
        np.testing.assert_array_equal(splits.test.images[index], source.images[source.characters.index(name)])
    with pytest.raises(ValueError, match="split scheme"):
        load_splits(omniglot_dir, scheme="random")
