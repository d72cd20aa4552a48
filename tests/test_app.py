"""The Streamlit app, driven headlessly with streamlit.testing (AppTest).

Drawings are injected the way the drawing pad sends them (its component state in
``st.session_state``), uploads go through the real file uploaders, and every bad input the app must handle
is checked for a clear message next to its cause, with nothing already drawn lost and no traceback.
Checkpoints are tiny untrained models written to a temp folder (``META_PLAYGROUND_MODELS``).
"""

from __future__ import annotations

import io
import math
import uuid
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from streamlit.testing.v1 import AppTest

from app import resources
from app.canvas import png_data_url
from app.state import query_label_key
from engine.checkpoint import save_learner
from engine.learners import LEARNERS
from engine.nets import BackboneConfig
from engine.paths import CACHE_DIR_ENV

MAIN = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
ALL = sorted(LEARNERS)
TIMEOUT = 120


# --------------------------------------------------------------------------- helpers


def shape_png(kind: int, size: int = 200, jitter: float = 0.0) -> bytes:
    """A black-on-white drawing of one of a few distinct shapes (what the pad exports)."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    s, j = size, jitter * size
    width = max(3, size // 25)
    if kind == 0:  # X
        draw.line([(0.2 * s + j, 0.2 * s), (0.8 * s, 0.8 * s - j)], fill="black", width=width)
        draw.line([(0.8 * s, 0.2 * s + j), (0.2 * s, 0.8 * s)], fill="black", width=width)
    elif kind == 1:  # O
        draw.ellipse([(0.22 * s + j, 0.2 * s), (0.78 * s, 0.8 * s - j)], outline="black", width=width)
    elif kind == 2:  # Z
        draw.line([(0.2 * s, 0.2 * s + j), (0.8 * s, 0.2 * s), (0.2 * s + j, 0.8 * s), (0.8 * s, 0.8 * s)],
                  fill="black", width=width)
    elif kind == 3:  # +
        draw.line([(0.5 * s + j, 0.15 * s), (0.5 * s, 0.85 * s)], fill="black", width=width)
        draw.line([(0.15 * s, 0.5 * s - j), (0.85 * s, 0.5 * s)], fill="black", width=width)
    else:  # wave
        points = [(0.1 * s + 0.8 * s * t / 20, 0.5 * s + 0.25 * s * math.sin(t / 20 * 2 * math.pi * (kind - 2)))
                  for t in range(21)]
        draw.line(points, fill="black", width=width)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def blank_png(size: int = 200) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), "white").save(buffer, format="PNG")
    return buffer.getvalue()


def write_checkpoints(directory: Path, names: list[str]) -> None:
    for name in names:
        learner = LEARNERS[name](backbone=BackboneConfig(channels=8))
        save_learner(directory / name / "model", learner, {"meta_step": 0, "val_accuracy": 0.2})


@pytest.fixture()
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "models"
    write_checkpoints(directory, ALL)
    monkeypatch.setenv("META_PLAYGROUND_MODELS", str(directory))
    monkeypatch.setenv("OMNIGLOT_DIR", str(tmp_path / "no-omniglot-here"))
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))  # the reload store of these sessions
    return directory


def start(ways: int = 3, shots: int = 1, auto_run: bool = True) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    at.session_state["ways"] = ways
    at.session_state["shots"] = shots
    at.session_state["auto_run"] = auto_run
    at.run()
    assert not at.exception, at.exception
    ws = at.session_state["ws"]
    ws.set_size(ways, shots)
    return at


def draw(at: AppTest, pad: str, png: bytes) -> AppTest:
    """What the drawing pad does on "Add": set its state to a new PNG data URL."""
    at.session_state[pad] = {"submission": {"png": png_data_url(png), "nonce": uuid.uuid4().hex, "strokes": 2}}
    at.run()
    assert not at.exception, at.exception
    return at


def class_pad(index: int) -> str:
    return f"pad-class-{index}"


def whole_page(at: AppTest) -> AppTest:
    """Draw the whole page again. A label pick or a query change reruns only some fragments, and
    AppTest keeps only what the last run drew (a browser keeps the rest of the page)."""
    at.run()
    assert not at.exception, at.exception
    return at


def texts(at: AppTest, kind: str) -> list[str]:
    return [element.value for element in getattr(at, kind)]


def all_text(at: AppTest) -> str:
    parts = []
    for kind in ("markdown", "caption", "error", "warning", "info", "success"):
        parts.extend(str(v) for v in texts(at, kind))
    return "\n".join(parts)


def fill_task(at: AppTest, ways: int = 3, queries: tuple[int, ...] = (0, 1)) -> AppTest:
    for index in range(ways):
        draw(at, class_pad(index), shape_png(index))
    for kind in queries:
        draw(at, "pad-queries", shape_png(kind, jitter=0.03))
    return at


def summary_frames(at: AppTest) -> list:
    return [df.value for df in at.dataframe if "algorithm" in df.value.columns]


def summary(at: AppTest):
    frames = summary_frames(at)
    assert frames, "no summary table"
    return frames[0]


def workspace(at: AppTest):
    return at.session_state["ws"]


# --------------------------------------------------------------------------- models


def test_starts_with_no_models_and_no_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("META_PLAYGROUND_MODELS", str(tmp_path / "empty"))
    monkeypatch.setenv("OMNIGLOT_DIR", str(tmp_path / "none"))
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT).run()
    assert not at.exception
    text = all_text(at)
    assert "No algorithm can run yet" in text
    for name in ALL:
        assert f"**{name}**" in text
    assert text.count("unavailable: no checkpoint") == len(ALL)
    assert at.multiselect(key="algorithms").options == []
    # Drawing still works without models or data.
    draw(at, class_pad(0), shape_png(0))
    assert len(workspace(at).classes[0].examples(1)) == 1


def test_only_algorithms_with_a_checkpoint_are_offered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_checkpoints(tmp_path / "m", ["maml", "protonet"])
    monkeypatch.setenv("META_PLAYGROUND_MODELS", str(tmp_path / "m"))
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT).run()
    assert at.multiselect(key="algorithms").options == ["maml", "protonet"]
    assert at.multiselect(key="algorithms").value == ["maml", "protonet"]
    text = all_text(at)
    assert "**reptile** <span class='mp-model-note'>unavailable: no checkpoint" in text
    assert "untrained checkpoint (0 meta-steps)" in text  # never shown as if trained


def test_corrupt_checkpoint_is_reported_and_the_rest_still_run(models_dir: Path) -> None:
    (models_dir / "reptile" / "model.safetensors").write_bytes(b"this is not safetensors")
    at = start()
    assert "reptile" not in at.multiselect(key="algorithms").options
    assert "checkpoint cannot be used" in all_text(at)
    fill_task(at)
    assert list(summary(at)["algorithm"]) == [name for name in ALL if name != "reptile"]


def test_device_is_shown(models_dir: Path) -> None:
    at = start()
    assert any("cpu" in m or "cuda" in m for m in texts(at, "markdown") if ":material/memory:" in m)


# --------------------------------------------------------------------------- the main flow


def test_drawn_task_gives_results_for_every_algorithm(models_dir: Path) -> None:
    at = start(ways=3)
    fill_task(at, 3, queries=(0, 1, 2))
    ws = workspace(at)
    assert [len(c.examples(1)) for c in ws.visible_classes] == [1, 1, 1]
    assert len(ws.queries) == 3
    # Under every example and query: the original and the 28x28 network input.
    assert len(at.image) >= 2 * (3 + 3)
    table = summary(at)
    assert sorted(table["algorithm"]) == ALL
    assert "query accuracy" not in table.columns  # no labels yet
    markdown = "\n".join(texts(at, "markdown"))
    assert f"| query | true class | {' | '.join(ALL)} |" in markdown
    assert len(at.get("vega_lite_chart")) == 3 + 3  # loss, accuracy, time + one per query
    # Label the queries: accuracy column appears and the table is ranked.
    for number, query in enumerate(ws.queries):
        if number:
            whole_page(at)  # the next query's box is not redrawn by a label pick
        at.selectbox(key=query_label_key(ws, query.example.id)).set_value(number).run()
    table = summary(at)
    assert list(table["rank"]) == list(range(1, len(ALL) + 1))
    assert table["query accuracy"].is_monotonic_decreasing
    assert all(0.0 <= value <= 1.0 for value in table["query accuracy"])
    assert not at.exception


def test_a_label_pick_reruns_only_what_shows_labels(models_dir: Path) -> None:
    at = start(ways=3)
    fill_task(at, 3, queries=(0, 1))
    ws = workspace(at)
    first, second = ws.queries
    at.selectbox(key=query_label_key(ws, second.example.id)).set_value(1).run()
    assert not at.exception
    assert [q.label for q in ws.queries] == [None, 1]
    # Redrawn: the ranking (now scored), the predictions table and the picked query's chart...
    assert "correct" in summary(at).columns
    assert "| 2 | 2. " in "\n".join(texts(at, "markdown"))
    assert len(at.get("vega_lite_chart")) == 1
    # ...not the support set, the query cards, the inner-loop charts or the comparison.
    assert not at.text_input and not [b for b in at.selectbox if str(b.key).startswith("qlabel-")]
    assert "0 labelled" not in "\n".join(texts(at, "caption")) and "(1 labelled)" in "\n".join(texts(at, "caption"))


def test_a_query_change_reruns_the_queries_and_results_not_the_support_set(models_dir: Path) -> None:
    at = start(ways=3)
    fill_task(at, 3, queries=(0, 1))
    ws = workspace(at)
    at.button(key=f"qdel-{ws.queries[0].example.id}").click().run()
    assert not at.exception and len(ws.queries) == 1
    assert not at.text_input  # the class names (support rows) were not redrawn
    assert [b for b in at.selectbox if str(b.key).startswith("qlabel-")]  # the query cards were
    assert "1 query (0 labelled)" in "\n".join(texts(at, "caption"))  # and the results, predicting again
    assert len(at.get("vega_lite_chart")) == 3 + 1


def test_a_drawing_is_added_exactly_once(models_dir: Path) -> None:
    at = start(ways=2, shots=3)
    draw(at, class_pad(0), shape_png(0))
    for _ in range(3):
        at.run()
    assert len(workspace(at).classes[0].examples(3)) == 1
    draw(at, class_pad(0), shape_png(1))
    assert len(workspace(at).classes[0].examples(3)) == 2


def test_algorithm_selection_and_inner_loop_settings(models_dir: Path) -> None:
    at = start(ways=2)
    fill_task(at, 2, queries=(0,))
    at.multiselect(key="algorithms").set_value(["protonet", "maml"]).run()
    assert sorted(summary(at)["algorithm"]) == ["maml", "protonet"]
    at.toggle(key="use_defaults").set_value(False).run()
    at.slider(key="steps").set_value(3).run()
    at.number_input(key="lr").set_value(0.1).run()
    table = summary(at)
    steps = dict(zip(table["algorithm"], table["inner loop"]))
    assert steps == {"maml": "3 × 0.1", "protonet": "none"}
    assert at.selectbox(key="optimizer").options == ["model default",
                                                     *sorted(__import__("engine.optim").optim.INNER_OPTIMIZERS)]


def test_finetune_choice_appears_only_for_algorithms_that_offer_it(models_dir: Path) -> None:
    at = start(ways=2)
    fill_task(at, 2, queries=(0,))
    at.multiselect(key="algorithms").set_value(["protonet", "maml"]).run()
    assert "finetune" not in [box.key for box in at.selectbox]
    at.multiselect(key="algorithms").set_value(["pretrain", "protonet"]).run()
    choice = at.selectbox(key="finetune")
    assert choice.options == ["model default", "head", "all"] and choice.value == "model default"
    assert "fine-tuning" not in all_text(at)
    choice.set_value("all").run()
    assert not at.exception, at.exception
    assert "fine-tuning all" in all_text(at)
    assert sorted(summary(at)["algorithm"]) == ["pretrain", "protonet"]


def test_manual_run_when_auto_run_is_off(models_dir: Path) -> None:
    at = start(ways=2, auto_run=False)
    fill_task(at, 2, queries=(0,))
    assert not summary_frames(at)
    at.button(key="run").click().run()
    assert sorted(summary(at)["algorithm"]) == ALL
    draw(at, "pad-queries", shape_png(1))
    assert any("changed since these results" in v for v in texts(at, "info"))


def test_rename_delete_and_resize_keep_the_work(models_dir: Path) -> None:
    at = start(ways=3, shots=2)
    fill_task(at, 3, queries=(0,))
    ws = workspace(at)
    at.text_input(key=f"name-0-{ws.generation}").set_value("Cross").run()
    assert ws.display_name(0) == "Cross"
    query = ws.queries[0]
    assert "1. Cross" in at.selectbox(key=query_label_key(ws, query.example.id)).options
    # Delete one example (another row: a rename redraws only its own row, the queries and the results).
    example = ws.classes[1].examples(2)[0]
    assert f"del-{example.id}" not in [button.key for button in at.button]
    whole_page(at).button(key=f"del-{example.id}").click().run()
    assert ws.classes[1].examples(2) == []
    assert any("no examples" in w for w in texts(at, "warning"))  # class 2 now blocks running
    draw(at, class_pad(1), shape_png(1))
    # Lower N and K: hidden, not deleted; raise them again: back.
    draw(at, class_pad(2), shape_png(4))
    draw(at, class_pad(0), shape_png(0, jitter=0.05))
    at.selectbox(key=query_label_key(ws, query.example.id)).set_value(2).run()  # query is class 3
    whole_page(at).slider(key="ways").set_value(2).run()
    assert at.selectbox(key=query_label_key(ws, query.example.id)).value == -1  # class 3 is hidden
    at.slider(key="shots").set_value(1).run()
    assert ws.ways == 2 and ws.shots == 1
    assert any("keep their examples while hidden" in c for c in texts(at, "caption"))
    assert any("kept beyond K" in c for c in texts(at, "caption"))
    at.slider(key="ways").set_value(3).run()
    at.slider(key="shots").set_value(2).run()
    assert [len(c.examples(2)) for c in ws.visible_classes] == [2, 1, 2]
    assert at.selectbox(key=query_label_key(ws, query.example.id)).value == 2  # and its label is back
    assert not at.exception


def test_uploads_fill_a_class_and_the_queries(models_dir: Path) -> None:
    at = start(ways=2, shots=3)
    uploader = at.file_uploader(key="upload-class-0-0-0")
    uploader.set_value([(f"a{i}.png", shape_png(0, jitter=0.02 * i), "image/png") for i in range(3)]).run()
    ws = workspace(at)
    assert len(ws.classes[0].examples(3)) == 3
    assert [e.source for e in ws.classes[0].examples(3)] == ["upload"] * 3
    # The uploader starts empty again (a new widget), ready for more.
    assert at.file_uploader(key="upload-class-0-1-0").value == []
    # Too many files for the free slots: the rest are refused with a message, nothing lost.
    whole_page(at).file_uploader(key="upload-class-1-0-0").set_value(
        [(f"b{i}.png", shape_png(1, jitter=0.02 * i), "image/png") for i in range(4)]).run()
    assert len(ws.classes[1].examples(3)) == 3
    assert any("1 file was not added" in w for w in texts(at, "warning"))
    whole_page(at).file_uploader(key="upload-queries-0-0").set_value([("q.png", shape_png(0), "image/png")]).run()
    assert len(ws.queries) == 1
    assert sorted(summary(at)["algorithm"]) == ALL


def test_an_uploaded_image_can_replace_one_cell(models_dir: Path) -> None:
    at = start(ways=2, shots=2)
    draw(at, class_pad(0), shape_png(0))
    draw(at, class_pad(0), shape_png(0, jitter=0.05))
    ws = workspace(at)
    first, second = ws.classes[0].slots[:2]
    at.button(key=f"del-{first.id}").click().run()
    at.file_uploader(key="upload-class-0-0-0").set_value(("photo.png", shape_png(3), "image/png")).run()
    assert ws.classes[0].slots[0].name == "photo.png" and ws.classes[0].slots[1] is second


# --------------------------------------------------------------------------- bad input


def test_empty_canvas_is_refused_next_to_the_pad(models_dir: Path) -> None:
    at = start(ways=2, shots=2)
    draw(at, class_pad(0), shape_png(0))
    draw(at, class_pad(0), blank_png())
    assert any("The drawing was not added" in e and "blank" in e for e in texts(at, "error"))
    assert len(workspace(at).classes[0].examples(2)) == 1  # the earlier drawing is still there
    draw(at, "pad-queries", blank_png())
    assert sum("The drawing was not added" in e for e in texts(at, "error")) == 2


def test_garbage_from_the_pad_is_refused(models_dir: Path) -> None:
    at = start()
    at.session_state[class_pad(0)] = {"submission": {"png": "not a data url", "nonce": "x1"}}
    at.run()
    assert any("could not be read" in e for e in texts(at, "error"))
    assert not at.exception


def test_bad_uploads_get_a_message_and_good_ones_still_count(models_dir: Path) -> None:
    at = start(ways=2, shots=5)
    draw(at, class_pad(0), shape_png(0))
    corrupt = shape_png(0)[:120]
    huge = io.BytesIO()
    Image.new("1", (20000, 20000), 1).save(huge, format="PNG")
    files = [("notes.txt", b"just some text, not an image", "text/plain"),
             ("broken.png", corrupt, "image/png"),
             ("huge.png", huge.getvalue(), "image/png"),
             ("good.png", shape_png(0, jitter=0.04), "image/png")]
    at.file_uploader(key="upload-class-0-0-0").set_value(files).run()
    errors = texts(at, "error")
    assert any("“notes.txt” was not added" in e and "not a readable image" in e for e in errors)
    assert any("“broken.png” was not added" in e for e in errors)
    assert any("“huge.png” was not added" in e and "too large" in e for e in errors)
    assert [e.name for e in workspace(at).classes[0].examples(5)] == ["drawing", "good.png"]
    assert not at.exception


def test_a_class_without_examples_blocks_running_with_a_message(models_dir: Path) -> None:
    at = start(ways=3)
    draw(at, class_pad(0), shape_png(0))
    draw(at, class_pad(1), shape_png(1))
    assert any("Class 3 has no examples" in w for w in texts(at, "warning"))
    assert not summary_frames(at)
    at.button(key="run").click().run()
    assert any("Class 3 has no examples: draw or upload" in e for e in texts(at, "error"))
    draw(at, class_pad(2), shape_png(2))
    assert sorted(summary(at)["algorithm"]) == ALL


def test_diverging_settings_are_flagged_next_to_the_algorithm(models_dir: Path) -> None:
    at = start(ways=2)
    fill_task(at, 2, queries=(0,))
    at.toggle(key="use_defaults").set_value(False).run()
    at.number_input(key="lr").set_value(5000.0).run()
    warnings = texts(at, "warning")
    # Every inner loop reports it: a blown-up step saturates the probabilities (pretrain's convex
    # head too), and iMAML's line search refuses every step.
    for name in [n for n in ALL if LEARNERS[n].has_inner_loop]:
        assert any(w.startswith(f"**{name}**:") and "diverg" in w for w in warnings), warnings
    assert not any(w.startswith("**protonet**") and "diverg" in w for w in warnings), warnings
    status = dict(zip(summary(at)["algorithm"], summary(at)["status"]))
    assert status["maml"] == "diverged" and status["protonet"] == "ok" and status["pretrain"] == "diverged"
    assert len(workspace(at).queries) == 1  # nothing lost


# --------------------------------------------------------------------------- state


def test_sessions_are_isolated_and_models_are_shared_read_only(models_dir: Path) -> None:
    first, second = start(ways=2), start(ways=2)
    fill_task(first, 2, queries=(0,))
    assert workspace(second).support_count() == 0 and workspace(second).queries == []
    assert workspace(first) is not workspace(second)
    models = resources.get_models()
    snapshot = {n: {k: v.clone() for k, v in e.learner.params.items()} for n, e in models.items() if e.learner}
    fill_task(second, 2, queries=(1,))
    assert resources.get_models() is models  # loaded once per process
    for name, params in snapshot.items():
        for key, value in params.items():
            assert torch.equal(models[name].learner.params[key], value)


def test_clear_all_and_restore(models_dir: Path) -> None:
    at = start(ways=2)
    fill_task(at, 2, queries=(0,))
    at.button(key="clear_all").click().run()
    ws = workspace(at)
    assert ws.support_count() == 0 and not ws.queries
    at.button(key="restore").click().run()
    assert ws.support_count() == 2 and len(ws.queries) == 1


# --------------------------------------------------------------------------- Omniglot


def test_sampling_without_the_dataset_explains_how_to_get_it(models_dir: Path) -> None:
    at = start()
    assert at.button(key="sample_button").disabled
    assert any("not available on this machine" in i and "download" in i for i in texts(at, "info"))


def test_sample_an_omniglot_task_and_bring_it_back(models_dir: Path, tiny_omniglot: Path, isolated_cache: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIGLOT_DIR", str(tiny_omniglot))
    at = start(ways=3, shots=2)
    at.number_input(key="seed").set_value(7).run()
    at.number_input(key="queries_per_class").set_value(2).run()
    at.button(key="sample_button").click().run()
    assert not at.exception
    ws = workspace(at)
    assert ws.omniglot == {"seed": 7, "ways": 3, "shots": 2, "queries_per_class": 2}
    assert [len(c.examples(2)) for c in ws.visible_classes] == [2, 2, 2]
    assert [q.label for q in ws.queries] == [0, 0, 1, 1, 2, 2]
    assert any("seed **7**" in i for i in texts(at, "info"))
    assert "query accuracy" in summary(at).columns
    pixels = [e.pixels.copy() for c in ws.visible_classes for e in c.examples(2)]
    # Draw something else, then sample the same seed again: the same task comes back.
    at.button(key="clear_all").click().run()
    at.button(key="sample_button").click().run()
    again = [e.pixels for c in workspace(at).visible_classes for e in c.examples(2)]
    assert all((a == b).all() for a, b in zip(pixels, again)) and len(again) == len(pixels)


def test_a_task_link_brings_the_sampled_task_back(models_dir: Path, tiny_omniglot: Path, isolated_cache: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIGLOT_DIR", str(tiny_omniglot))
    at = start(ways=2, shots=1)
    at.button(key="sample_button").click().run()
    link = dict(at.query_params)
    assert len(link.pop("task")) >= 16  # the page's reload token stays in the address beside the link
    seed = workspace(at).omniglot["seed"]
    assert link == {"seed": str(seed), "ways": "2", "shots": "1", "queries": "1"}
    pixels = [e.pixels for c in workspace(at).visible_classes for e in c.examples(1)]
    fresh = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    fresh.query_params.update(link)
    fresh.run()
    assert not fresh.exception
    again = workspace(fresh)
    assert again.omniglot == {"seed": seed, "ways": 2, "shots": 1, "queries_per_class": 1}
    assert all((a == b.pixels).all() for a, b in zip(pixels, [e for c in again.visible_classes for e in c.examples(1)]))


def test_comparisons_spread_algorithms_over_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """One algorithm per core by default (never more workers than algorithms); the environment
    variable overrides it."""
    monkeypatch.delenv(resources.WORKERS_ENV, raising=False)
    monkeypatch.setenv(resources.THREADS_ENV, "1")
    monkeypatch.setattr(resources.os, "cpu_count", lambda: 2)
    assert resources.compute_workers(9) == 2 and resources.compute_workers(1) == 1
    monkeypatch.setattr(resources.os, "cpu_count", lambda: 16)
    assert resources.compute_workers(9) == 4
    monkeypatch.setenv(resources.WORKERS_ENV, "1")
    assert resources.compute_workers(9) == 1


# --------------------------------------------------------------------------- labelling many at once


def test_queries_drawn_and_uploaded_as_a_class_and_labelled_in_bulk(models_dir: Path) -> None:
    at = start(ways=3)
    fill_task(at, 3, queries=(0,))
    at.selectbox(key="new_query_label").set_value(1).run()  # from now on, queries are class 2
    draw(at, "pad-queries", shape_png(1, jitter=0.02))
    at.file_uploader(key="upload-queries-0-0").set_value(
        [(f"q{i}.png", shape_png(1, jitter=0.03 * i), "image/png") for i in range(2)]).run()
    ws = workspace(at)
    assert [q.label for q in ws.queries] == [None, 1, 1, 1]
    whole_page(at).slider(key="ways").set_value(2).run()  # class 2 still offered; a hidden class would fall back to "class?"
    assert at.selectbox(key="new_query_label").value == 1
    # Label several: the picker starts with the unlabelled queries; give them class 1.
    picker = next(box for box in at.multiselect if str(box.key).startswith("bulk-queries-"))
    assert picker.value == [ws.queries[0].example.id]
    picker.set_value([q.example.id for q in ws.queries[:3]]).run()
    at.selectbox(key="bulk_label_class").set_value(0).run()
    at.button(key="bulk_label_apply").click().run()
    assert not at.exception
    assert [q.label for q in ws.queries] == [0, 0, 0, 1]
    assert any("3 queries relabelled" in s for s in texts(at, "success"))
    assert "correct" in summary(at).columns


def test_model_list_wording(models_dir: Path) -> None:
    at = start()
    text = all_text(at)
    assert "**pretrain** <span class='mp-model-note'>untrained checkpoint (0 training-steps)" in text
    assert "**maml** <span class='mp-model-note'>untrained checkpoint (0 meta-steps)" in text
    assert "metasgd: 1 step, learned lr" in text and " 1 steps" not in text  # Meta-SGD adapts in one step
