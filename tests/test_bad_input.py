"""Bad input everywhere, from generated corpora (tests/corpus/, nothing downloaded): images through
the real uploaders, malformed checkpoints through the engine's loader and the app's model list,
task links with out-of-range values; and property-based fuzzing of :func:`preprocess_image`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from streamlit.testing.v1 import AppTest

from app.models import load_models
from engine.checkpoint import CheckpointError, load_learner
from engine.data.preprocess import ImagePreprocessError, preprocess_image
from tests.corpus.checkpoints import checkpoint_cases, write_good
from tests.corpus.images import image_cases
from tests.test_app import MAIN, TIMEOUT, all_text, models_dir, start, texts, workspace  # noqa: F401

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_image_corpus_through_the_query_uploader(models_dir: Path) -> None:  # noqa: F811
    cases = image_cases()
    at = start(ways=2)
    at.file_uploader(key="upload-queries-0-0").set_value([(c.name, c.data, "application/octet-stream")
                                                          for c in cases]).run()
    assert not at.exception
    errors, infos = texts(at, "error"), texts(at, "info")
    added = [q.example.name for q in workspace(at).queries]
    assert added == [c.name for c in cases if c.added]
    for case in cases:
        refusal = [e for e in errors if f"“{case.name}” was not added" in e]
        if case.added:
            assert refusal == [], refusal
        else:
            assert len(refusal) == 1 and case.says in refusal[0], (case.name, refusal)
    assert any("“animated.gif” is animated (2 frames): its first frame was used" in i for i in infos)


def test_bad_images_in_a_class_keep_what_was_there(models_dir: Path) -> None:  # noqa: F811
    cases = image_cases()
    at = start(ways=2, shots=10)
    good = [c for c in cases if c.added][:1]
    at.file_uploader(key="upload-class-0-0-0").set_value([(c.name, c.data, "image/png") for c in good]).run()
    bad = [(c.name, c.data, "image/png") for c in cases if not c.added]
    at.file_uploader(key="upload-class-0-1-0").set_value(bad).run()
    assert [e.name for e in workspace(at).classes[0].examples(10)] == [good[0].name]
    assert sum("was not added" in e for e in texts(at, "error")) == len(bad)


@pytest.mark.parametrize("case", checkpoint_cases(), ids=lambda case: case.name)
def test_a_malformed_checkpoint_is_refused_with_a_message(tmp_path: Path, case) -> None:
    stem = write_good(tmp_path / case.algorithm, case.algorithm)
    case.damage(stem)
    with pytest.raises(CheckpointError, match=case.says):
        load_learner(stem)
    entry = load_models(tmp_path)[case.algorithm]
    assert not entry.available and entry.problem.startswith("checkpoint cannot be used")
    assert "Error:" not in entry.problem  # an explained refusal, not an exception's name


def test_the_app_lists_every_broken_checkpoint_and_runs_the_rest(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cases = checkpoint_cases()
    for case in cases:
        case.damage(write_good(tmp_path / case.algorithm, case.algorithm))
    write_good(tmp_path / "maml", "maml")  # overwrites the truncated one: one sound checkpoint
    monkeypatch.setenv("META_PLAYGROUND_MODELS", str(tmp_path))
    monkeypatch.setenv("OMNIGLOT_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("META_PLAYGROUND_CACHE", str(tmp_path / "cache"))
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert at.multiselect(key="algorithms").options == ["maml"]
    assert all_text(at).count("checkpoint cannot be used") == len(cases) - 1


def test_out_of_range_link_values_are_reported(models_dir: Path, tiny_omniglot: Path,  # noqa: F811
                                               isolated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIGLOT_DIR", str(tiny_omniglot))
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    at.query_params.update({"seed": "3", "ways": "50", "shots": "0", "queries": "-3"})
    at.run()
    assert not at.exception
    ws = workspace(at)
    assert (ws.ways, ws.shots) == (20, 1)  # brought into range (the tiny split then has too few characters)
    warning = " ".join(texts(at, "warning"))
    assert "ways=50 (used 20)" in warning and "shots=0 (used 1)" in warning and "queries=-3 (used 0)" in warning
    at.run()  # still there on the next run
    assert "ways=50 (used 20)" in " ".join(texts(at, "warning"))


MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_preprocess_random_bytes(data: bytes) -> None:
    try:
        pixels = preprocess_image(data)
    except ImagePreprocessError:
        return
    assert pixels.shape == (28, 28)


@FUZZ
@given(arrays(np.uint8, st.tuples(st.integers(1, 48), st.integers(1, 48))), st.sampled_from(MODES),
       st.sampled_from(["PNG", "TIFF", "GIF", "JPEG", "BMP"]), st.integers(0, 64))
def test_fuzz_preprocess_images_of_every_mode(grey: np.ndarray, mode: str, fmt: str, cut: int) -> None:
    image = Image.fromarray(grey).convert(mode)
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        return  # a mode this format cannot store
    data = buffer.getvalue()
    data = data[: len(data) - cut] if cut else data  # sometimes truncated
    try:
        pixels = preprocess_image(data)
    except ImagePreprocessError:
        return
    assert pixels.shape == (28, 28) and pixels.dtype == np.float32
    assert np.isfinite(pixels).all() and 0.0 <= pixels.min() and pixels.max() <= 1.0


@FUZZ
@given(arrays(np.float32, st.tuples(st.integers(1, 40), st.integers(1, 40)) | st.tuples(
    st.integers(1, 24), st.integers(1, 24), st.sampled_from([1, 3, 4])), elements=st.floats(width=32)),
    st.sampled_from([np.float32, np.float64, np.uint8, np.uint16, np.bool_]))
def test_fuzz_preprocess_arrays(array: np.ndarray, dtype: type) -> None:
    """Arrays of any dtype, channel count and values (NaN and infinities included)."""
    with np.errstate(invalid="ignore", over="ignore"):
        cast = np.nan_to_num(array).astype(dtype) if dtype not in (np.float32, np.float64) else array.astype(dtype)
    try:
        pixels = preprocess_image(cast)
    except ImagePreprocessError:
        return
    assert pixels.shape == (28, 28) and np.isfinite(pixels).all()
