"""Task files and reload survival: "Save task" / "Open task" round trips, the reload store, and
every hostile file of the generated corpus (tests/corpus/task_files.py) refused with nothing changed.

The reader is also fuzzed (hypothesis): random bytes, random corruptions of a real task file and
random manifests raise :class:`TaskFileError` or open; nothing else escapes.
"""

from __future__ import annotations

import json
import os
import re
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streamlit.testing.v1 import AppTest

from app.images import example_from_bytes, example_from_pixels
from app.persistence import MANIFEST, MAX_IMAGE_BYTES, TaskFileError, apply_task, open_task_file, read_task, write_task
from app.task_store import TaskStore, new_token, valid_token
from app.workspace import TASK, Workspace
from tests.corpus.task_files import manifest, members, task, task_cases, zipped
from tests.test_app import (  # noqa: F401
    MAIN, TIMEOUT, class_pad, draw, models_dir, shape_png, start, texts, whole_page, workspace,
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def drawn_workspace() -> Workspace:
    """A 3-way 2-shot task with a hidden class, a slot beyond K, names, labels and an Omniglot record."""
    ws = Workspace()
    ws.set_size(3, 2)
    for index in range(4):
        ws.classes[index].slots[0] = example_from_bytes(shape_png(index), "drawing", "drawing")
    ws.classes[0].slots[3] = example_from_bytes(shape_png(4), "upload", "wave.png")
    ws.classes[1].slots[1] = example_from_pixels(np.eye(28, dtype=np.float32), "omniglot", "Greek/character01")
    ws.rename(0, "Cross")
    ws.add_query(example_from_bytes(shape_png(1, jitter=0.03), "drawing", "drawing"), 1)
    ws.add_query(example_from_bytes(shape_png(0, jitter=0.03), "upload", "q.png"), None)
    ws.omniglot = {"seed": 7, "ways": 3, "shots": 2, "queries_per_class": 1}
    return ws


def contents(ws: Workspace) -> list[object]:
    """Everything that must survive, as comparable values (pixels exactly)."""
    slots = [[None if e is None else (e.source, e.name, e.pixels.tobytes()) for e in c.slots] for c in ws.classes]
    queries = [(q.example.source, q.example.name, q.example.pixels.tobytes(), q.label) for q in ws.queries]
    return [ws.ways, ws.shots, [c.name for c in ws.classes], slots, queries, ws.omniglot]


def test_a_saved_task_opens_exactly_as_it_was() -> None:
    ws = drawn_workspace()
    settings_values = {"steps": 3, "use_defaults": False}
    loaded = read_task(write_task(ws, settings_values))
    fresh = Workspace()
    apply_task(fresh, loaded)
    assert contents(fresh) == contents(ws)
    assert loaded.settings == settings_values
    with zipfile.ZipFile(__import__("io").BytesIO(write_task(ws))) as archive:
        names = archive.namelist()
    assert MANIFEST in names and "class-00/slot-03.net.png" in names and "query-001.png" in names


def test_a_hand_made_file_with_only_images_is_preprocessed() -> None:
    value = manifest()
    for entry in [value["classes"][0]["examples"][0], value["classes"][1]["examples"][0], value["queries"][0]]:
        entry.pop("network", None)  # the class entries share one dict
    data = zipped({MANIFEST: json.dumps(value).encode(), "a.png": shape_png(0)})
    loaded = read_task(data)
    assert loaded.classes[0].slots[0].pixels.shape == (28, 28) and loaded.queries[0].label == 1


@pytest.mark.parametrize("case", task_cases(), ids=lambda case: case.name)
def test_a_hostile_task_file_is_refused_and_changes_nothing(case) -> None:
    ws = drawn_workspace()
    before = contents(ws)
    with pytest.raises(TaskFileError, match=re.escape(case.says)):
        read_task(case.data)
    assert not open_task_file(ws, case.name, case.data)
    assert contents(ws) == before and ws.previous is None
    [message] = ws.messages_for(TASK)
    assert message.level == "error" and f"“{case.name}” was not opened" in message.text


@pytest.mark.parametrize("name", ["bomb.zip", "lying-bomb.zip"])
def test_the_reader_refuses_a_bomb_without_inflating_it(name: str) -> None:
    """Members that inflate to 200 MB (or 8 MB behind a 100-byte claim) are refused within a few MB."""
    bomb = next(case for case in task_cases() if case.name == name)
    tracemalloc.start()
    try:
        with pytest.raises(TaskFileError):
            read_task(bomb.data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * MAX_IMAGE_BYTES, f"{peak / 2**20:.0f} MB allocated"


@FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        read_task(data)
    except TaskFileError:
        pass


VALID = task()


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, len(VALID)))
def test_fuzz_corrupted_task_files(changes: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(VALID)
    for position, value in changes:
        data[position] = value
    try:
        read_task(bytes(data[: max(cut, 1)] if cut < 64 else data))
    except TaskFileError:
        pass


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True) |
                    st.text(max_size=20), lambda inner: st.lists(inner, max_size=4) |
                    st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)
FIELDS = ["ways", "shots", "classes", "queries", "omniglot", "settings", "version"]


@FUZZ
@given(st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=4), st.sampled_from(["classes", "queries"]), JSON)
def test_fuzz_manifests(replaced: dict[str, object], where: str, entry: object) -> None:
    value = {**manifest(), **replaced}
    if isinstance(value.get(where), list) and value[where]:
        value[where] = [entry, *value[where][1:]]
    try:
        loaded = read_task(zipped({MANIFEST: json.dumps(value).encode(), **members()}))
    except TaskFileError:
        return
    assert 2 <= loaded.ways <= 20 and 1 <= loaded.shots <= 10  # what opens is within the app's bounds


# --------------------------------------------------------------------------- the reload store


def test_the_store_keeps_tasks_by_token_within_bounds(tmp_path: Path) -> None:
    store = TaskStore(tmp_path, max_files=3, max_bytes=10_000, max_age_s=3600)
    tokens = [new_token() for _ in range(5)]
    for number, token in enumerate(tokens):
        store.save(token, bytes([number]) * 100)
        os.utime(store.path(token), (time.time() - 10 + number, time.time() - 10 + number))
    store.prune()
    assert sorted(p.stem for p in tmp_path.glob("*.zip")) == sorted(tokens[2:])  # the newest 3
    store.save(tokens[4], b"x" * 20_000)  # over the byte bound: the others go, the one written stays
    assert [p.stem for p in tmp_path.glob("*.zip")] == [tokens[4]]
    old = tmp_path / f"{tokens[0]}.zip"
    old.write_bytes(b"old")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    store.prune()
    assert not old.exists()
    assert list(tmp_path.glob(".*")) == []  # no temporary files left behind


@pytest.mark.parametrize("token", ["../../etc/passwd", "short", "a" * 65, "bad token with spaces!!", "", None, 5])
def test_a_malformed_token_never_names_a_file(tmp_path: Path, token: object) -> None:
    store = TaskStore(tmp_path)
    assert not valid_token(token)
    assert store.load(token) is None  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.path(token)  # type: ignore[arg-type]


def test_a_reload_brings_back_drawings_uploads_labels_and_settings(models_dir: Path) -> None:  # noqa: F811
    at = start(ways=3, shots=2)
    assert "task" not in at.query_params  # no token until there is something to keep
    for index in range(3):
        draw(at, class_pad(index), shape_png(index))
    at.file_uploader(key="upload-class-0-0-0").set_value([("up.png", shape_png(0, jitter=0.05), "image/png")]).run()
    whole_page(at).selectbox(key="new_query_label").set_value(2).run()  # an upload reran only its row
    draw(at, "pad-queries", shape_png(2, jitter=0.03))
    ws = workspace(at)
    at.text_input(key=f"name-1-{ws.generation}").set_value("Ring").run()
    whole_page(at).toggle(key="use_defaults").set_value(False).run()
    at.slider(key="steps").set_value(4).run()
    at.multiselect(key="algorithms").set_value(["maml", "protonet"]).run()
    assert [q.label for q in ws.queries] == [2]  # drawn "as class 3"
    token = at.query_params["task"]
    before = contents(ws)

    reloaded = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    reloaded.query_params["task"] = token
    reloaded.run()
    assert not reloaded.exception
    assert contents(workspace(reloaded)) == before
    assert reloaded.toggle(key="use_defaults").value is False and reloaded.slider(key="steps").value == 4
    assert reloaded.multiselect(key="algorithms").value == ["maml", "protonet"]
    assert reloaded.slider(key="ways").value == 3 and reloaded.slider(key="shots").value == 2

    stranger = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    stranger.query_params["task"] = new_token()  # a token nobody wrote: an empty task, no error
    stranger.run()
    assert not stranger.exception and not workspace(stranger).has_content()


def test_open_task_through_the_uploader_replaces_and_restores(models_dir: Path) -> None:  # noqa: F811
    at = start(ways=2)
    draw(at, class_pad(0), shape_png(0))
    mine = contents(workspace(at))
    bad = next(case for case in task_cases() if case.name == "traversal.zip")
    at.file_uploader(key="open-task-0").set_value((bad.name, bad.data, "application/zip")).run()
    assert any("“traversal.zip” was not opened" in e and "unsafe name" in e for e in texts(at, "error"))
    assert contents(workspace(at)) == mine
    saved = write_task(drawn_workspace())
    at.file_uploader(key="open-task-1").set_value(("mine.zip", saved, "application/zip")).run()
    assert not at.exception
    assert contents(workspace(at)) == contents(drawn_workspace())
    assert at.slider(key="ways").value == 3 and any("Opened “mine.zip”" in s for s in texts(at, "success"))
    at.button(key="restore").click().run()
    assert contents(workspace(at)) == mine
