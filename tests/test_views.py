"""The "Inside the adaptation" views: engine.inspect's maths, then each view in the app (AppTest).

Engine checks use small untrained learners (8 channels): what is checked is that the views show what
adaptation does (the same weights, predictions and losses as the comparison), not how good a model is.
The timings of issue 24 are printed by ``python -m tools.time_views``, not asserted here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import inspect as inspection
from engine.compare import run_one
from engine.learners import LEARNERS, AdaptSettings, Learner
from engine.learners.blackbox import BlackBox
from engine.nets import BackboneConfig, embed
from engine.optim import InnerProblem

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_app import ALL, fill_task, models_dir, start  # noqa: E402,F401  (models_dir: a fixture)
from test_browser import SHAPES, browser, draw_and_add, expect, server  # noqa: E402,F401  (fixtures)
from tools.browser import load, wait_idle  # noqa: E402

WAYS, SHOTS, QUERIES = 3, 2, 4


def tiny(name: str, seed: int = 0) -> Learner:
    return LEARNERS[name](backbone=BackboneConfig(channels=8), seed=seed)


def task(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A small task of random strokes (support, labels, queries)."""
    generator = torch.Generator().manual_seed(seed)
    support = (torch.rand(WAYS * SHOTS, 1, 28, 28, generator=generator) > 0.85).float()
    queries = (torch.rand(QUERIES, 1, 28, 28, generator=generator) > 0.85).float()
    return support, torch.arange(WAYS).repeat_interleave(SHOTS), queries


# --------------------------------------------------------------------------- step playback


@pytest.mark.parametrize("name, settings", [
    ("maml", AdaptSettings(steps=4, lr=0.4)),
    ("imaml", AdaptSettings(steps=3)),  # armijo: the line search evaluates trial points too
    ("metasgd", AdaptSettings(steps=3)),
    ("pretrain", AdaptSettings(steps=3, finetune="all")),
    ("maml", AdaptSettings(steps=3, lr=0.1, optimizer="adam")),
])
def test_each_steps_predictions_are_those_of_adapting_that_many_steps(name: str, settings: AdaptSettings) -> None:
    learner = tiny(name)
    support, labels, queries = task()
    found = inspection.inspect_learner(name, learner, support, labels, WAYS, queries, settings)
    assert found.method == "recorded"
    assert [record.step for record in found.trace] == list(range(settings.steps + 1))
    for record, probabilities in zip(found.trace, found.step_probabilities):
        again = learner.adapt(support, labels, WAYS, AdaptSettings(
            steps=record.step, lr=settings.lr, optimizer=settings.optimizer, finetune=settings.finetune))
        np.testing.assert_allclose(probabilities, again.predict_proba(queries).numpy(), atol=1e-5)
        assert again.trace[-1].loss == pytest.approx(record.loss, rel=1e-5)
    # The steps differ: the playback shows adaptation happening.
    assert not np.allclose(found.step_probabilities[0], found.step_probabilities[-1], atol=1e-4)


@pytest.mark.parametrize("name", ALL)
def test_the_last_step_is_what_the_comparison_predicted(name: str) -> None:
    learner = tiny(name)
    support, labels, queries = task(1)
    settings = AdaptSettings(steps=2, lr=0.3) if learner.has_inner_loop else AdaptSettings()
    result = run_one(name, learner, support, labels, WAYS, queries, settings)
    found = inspection.inspect_learner(name, learner, support, labels, WAYS, queries, settings)
    assert [r.loss for r in found.trace] == pytest.approx([r.loss for r in result.trace], rel=1e-6)
    np.testing.assert_allclose(found.step_probabilities[-1], result.probabilities, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(torch.softmax(found.model.logits(queries), -1).numpy(), result.probabilities,
                                   atol=1e-5)
    if not learner.has_inner_loop:
        assert found.method == "single step" and len(found.step_probabilities) == 1


def test_without_a_matching_log_the_steps_are_re_run(monkeypatch: pytest.MonkeyPatch) -> None:
    learner = tiny("maml")
    support, labels, queries = task()
    settings = AdaptSettings(steps=3, lr=0.4)
    recorded = inspection.inspect_learner("maml", learner, support, labels, WAYS, queries, settings)
    monkeypatch.setattr(inspection, "steps_from_log", lambda trace, log: None)
    rerun = inspection.inspect_learner("maml", learner, support, labels, WAYS, queries, settings)
    assert rerun.method == "re-run" and not rerun.model.has_embeddings
    for a, b in zip(recorded.step_probabilities, rerun.step_probabilities):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_the_log_is_matched_to_the_trace_by_loss_skipping_trial_points() -> None:
    step = {"w": torch.zeros(1)}
    log = [inspection.LoggedPoint(step, loss, None) for loss in (2.0, 5.0, 1.5, 1.2, 9.0, 1.0)]
    trace = [inspection.StepRecord(k, loss, 0.0, 0.0) for k, loss in enumerate((2.0, 1.5, 1.0))]
    assert [p.loss for p in inspection.steps_from_log(trace, log)] == [2.0, 1.5, 1.0]
    assert inspection.steps_from_log(trace + [inspection.StepRecord(3, 0.5, 0.0, 0.0)], log) is None


def test_recording_leaves_the_shared_learner_alone() -> None:
    learner = tiny("imaml")
    before = {k: v.clone() for k, v in learner.params.items()}
    recorder, log = inspection.recording_learner(learner)
    support, labels, _ = task()
    recorder.adapt(support, labels, WAYS, AdaptSettings(steps=2))
    assert log and "inner_problem" not in vars(learner)
    problem = learner.inner_problem(support, labels, learner.detached_start(WAYS))
    assert type(problem).evaluate is not None and not type(problem).__name__.startswith("Recording")
    assert isinstance(recorder.inner_problem(support, labels, learner.detached_start(WAYS)), type(problem))
    assert all(torch.equal(before[k], v) for k, v in learner.params.items())
    assert isinstance(problem, InnerProblem)


# --------------------------------------------------------------------------- embeddings and PCA


def test_gradient_embeddings_before_and_after_adaptation() -> None:
    learner = tiny("maml")
    support, labels, queries = task()
    found = inspection.inspect_learner("maml", learner, support, labels, WAYS, queries, AdaptSettings(steps=3))
    embeddings = found.model.embeddings(queries)
    both = torch.cat([support, queries])
    meta = embed(learner.detached_params(), both, learner.backbone, stats_count=len(support)).numpy()
    np.testing.assert_allclose(embeddings.support_before, meta[:len(support)], atol=1e-5)
    np.testing.assert_allclose(embeddings.query_before, meta[len(support):], atol=1e-5)
    assert embeddings.changes and not np.allclose(embeddings.support_after, embeddings.support_before, atol=1e-4)
    for label in range(WAYS):
        np.testing.assert_allclose(embeddings.prototypes_after[label],
                                   embeddings.support_after[labels.numpy() == label].mean(axis=0), atol=1e-5)


def test_one_head_step_and_protonet_leave_the_embedding_unchanged() -> None:
    support, labels, queries = task()
    # One step from the zero head moves the head alone (its backbone gradient is exactly zero).
    one_step = inspection.inspect_learner("maml", tiny("maml"), support, labels, WAYS, queries, AdaptSettings(steps=1))
    assert not one_step.model.embeddings(queries).changes
    proto = inspection.inspect_learner("protonet", tiny("protonet"), support, labels, WAYS, queries)
    embeddings = proto.model.embeddings(queries)
    assert not embeddings.changes
    distances = ((embeddings.query_after[:, None] - embeddings.prototypes_after[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(distances.argmin(1), proto.step_probabilities[0].argmax(1))


def test_blackbox_outputs_are_what_its_logits_score() -> None:
    learner = tiny("blackbox")
    assert isinstance(learner, BlackBox)
    support, labels, queries = task()
    found = inspection.inspect_learner("blackbox", learner, support, labels, WAYS, queries)
    embeddings = found.model.embeddings(queries)
    outputs, classes = embeddings.query_after, embeddings.prototypes_after
    logits = -((outputs[:, None] - classes[None]) ** 2).sum(-1) / np.sqrt(outputs.shape[-1])
    with torch.no_grad():
        np.testing.assert_allclose(logits, found.model.logits(queries).numpy(), rtol=1e-4, atol=1e-4)
    assert embeddings.support_before.shape[1] == learner.backbone.embedding_dim
    first, second = inspection.embedding_projections(embeddings)
    assert first is not second  # two spaces of different sizes: one PCA each


def test_pca_finds_the_directions_of_largest_variance() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(200, 5)) * np.array([10.0, 0.1, 3.0, 0.1, 0.1])
    projection = inspection.pca_projection(rows)
    np.testing.assert_allclose(np.abs(projection.components[0]), [1, 0, 0, 0, 0], atol=0.02)
    np.testing.assert_allclose(np.abs(projection.components[1]), [0, 0, 1, 0, 0], atol=0.02)
    assert projection.explained[0] > projection.explained[1] > 0 and projection.explained.sum() <= 1
    again = inspection.pca_projection(-rows)  # same data mirrored: the same components (signs fixed)
    np.testing.assert_allclose(again.components, projection.components, atol=1e-9)
    assert inspection.pca_projection(rows[:1]).explained.tolist() == [0.0, 0.0]


# --------------------------------------------------------------------------- where the network looks


@pytest.mark.parametrize("name", ["maml", "protonet", "blackbox"])
def test_saliency_is_the_gradient_of_the_predicted_score(name: str) -> None:
    learner = tiny(name)
    support, labels, queries = task(2)
    found = inspection.inspect_learner(name, learner, support, labels, WAYS, queries, AdaptSettings(steps=2))
    gradient, target = inspection.saliency(found.model, queries[0])
    assert target == int(found.step_probabilities[-1][0].argmax())
    assert gradient.shape == (28, 28) and np.abs(gradient).max() > 0
    # Central differences along the gradient's own direction give its squared norm.
    direction = torch.from_numpy(gradient).reshape(1, 1, 28, 28)
    eps = 1e-2 / float(direction.norm())
    with torch.no_grad():
        up = found.model.logits(queries[:1] + eps * direction)[0, target]
        down = found.model.logits(queries[:1] - eps * direction)[0, target]
    assert float(up - down) / (2 * eps) == pytest.approx(float((direction ** 2).sum()), rel=0.05)


def test_occlusion_is_zero_where_no_patch_covers_ink() -> None:
    learner = tiny("maml")
    support, labels, queries = task()
    found = inspection.inspect_learner("maml", learner, support, labels, WAYS, queries, AdaptSettings(steps=2))
    image = torch.zeros(28, 28)
    image[4:10, 4:10] = 1.0  # ink in one corner only
    attribution, target = inspection.occlusion(found.model, image)
    patch, stride = inspection.OCCLUSION_PATCH, inspection.OCCLUSION_STRIDE
    corners = range(0, 28 - patch + 1, stride)
    for row in range(28):
        for col in range(28):
            covering = [(r, c) for r in corners for c in corners if r <= row < r + patch and c <= col < c + patch]
            if all(image[r:r + patch, c:c + patch].sum() == 0 for r, c in covering):
                assert abs(attribution[row, col]) < 1e-6  # float noise of a batched forward pass at most
    assert np.abs(attribution[:14, :14]).max() > 1e-3
    blank, _ = inspection.occlusion(found.model, torch.zeros(28, 28))
    assert np.abs(blank).max() < 1e-6


# --------------------------------------------------------------------------- the views in the app


def ran(at):  # noqa: ANN001, ANN201 - AppTest
    at.run()
    assert not at.exception, at.exception
    assert not [e.value for e in at.error], [e.value for e in at.error]
    return at


def charts_of(at) -> list[dict]:  # noqa: ANN001
    return [json.loads(chart.proto.spec) for chart in at.get("vega_lite_chart")]


def cached(at, *prefix: object) -> list:  # noqa: ANN001
    """What the views computed and keep for the comparison under keys starting with ``prefix``
    (their chart specs, with the data inline)."""
    return [value for key, value in at.session_state["views_cache"][1].items()
            if isinstance(key, tuple) and key[:len(prefix)] == prefix]


def rows(spec: dict) -> list[dict]:
    return [row for values in spec["datasets"].values() for row in values]


def test_views_are_closed_by_default_and_open_on_demand(models_dir: Path) -> None:  # noqa: F811
    at = start(ways=3)
    fill_task(at, 3, queries=(0, 1, 2))
    for key in ("view_playback", "view_embedding", "view_saliency", "view_export"):
        assert at.toggle(key=key).value is False
    closed = len(charts_of(at))
    assert "views_cache" not in at.session_state or not at.session_state["views_cache"][1]

    at.toggle(key="view_playback").set_value(True)
    ran(at)
    slider = at.slider(key="playback_step")
    record = at.session_state["results"]
    steps = max(r.trace[-1].step for r in record.results)
    assert slider.max == steps and slider.value == steps
    assert len(charts_of(at)) == closed + 2  # the loss and the probabilities at that step
    # It opens on the last step, which the comparison gave: nothing adapted again in the page's run,
    # only in the background, for the first other step asked for.
    cache = at.session_state["views_cache"][1]
    assert cache["inspections"] == {} and "pending" in cache
    (loss, grid), = cached(at, "playback")
    values = rows(grid)
    by_cell = {(row["algorithm"], row["query"], row["class"]): row["probability"] for row in values}
    for result in record.results:
        for query, row in enumerate(result.probabilities):
            for label, probability in enumerate(row):
                assert by_cell[(result.name, f"Q{query + 1}", str(label + 1))] == pytest.approx(probability, abs=1e-5)
    slider.set_value(0)
    ran(at)
    assert set(at.session_state["views_cache"][1]["inspections"]) == {r.name for r in record.results
                                                                       if r.has_inner_loop}
    (_, first_grid), = cached(at, "playback", 0)
    start_values = rows(first_grid)
    uniform = [row["probability"] for row in start_values if row["algorithm"] == "maml"]
    assert uniform == pytest.approx([1 / 3] * len(uniform), abs=1e-6)  # the zero head at step 0
    at.button(key="playback_play").click()
    ran(at)
    assert at.slider(key="playback_step").value == steps


def test_embedding_saliency_and_export_views(models_dir: Path) -> None:  # noqa: F811
    at = start(ways=3)
    fill_task(at, 3, queries=(0, 1))
    closed = len(charts_of(at))
    at.toggle(key="view_embedding").set_value(True)
    ran(at)
    assert len(charts_of(at)) == closed + 1
    at.selectbox(key="embedding_algorithm").set_value("reptile")
    ran(at)
    (spec, shared), = cached(at, "embedding", "reptile")
    points = rows(spec)
    kinds = [p["kind"] for p in points]
    panels = {p["panel"] for p in points}
    support, queries, ways = 3, 2, 3
    assert kinds.count("support") == support * len(panels) and kinds.count("prototype") == ways * len(panels)
    assert kinds.count("query") == queries * len(panels)
    assert all(p["image"].startswith("data:image/png") for p in points if p["kind"] != "prototype")

    at.toggle(key="view_saliency").set_value(True)
    ran(at)
    for method in ("gradient", "occlusion"):
        at.segmented_control(key="saliency_method").set_value(method)
        ran(at)
        (heat, *_), = [value for value in cached(at, "saliency") if value[0]["hconcat"][1]["title"].startswith(
            "d score" if method == "gradient" else "probability lost")]
        assert len(heat["hconcat"]) == 2 and len(rows(heat)) == 2 * 28 * 28
    at.selectbox(key="saliency_algorithm").set_value("protonet")
    at.selectbox(key="saliency_query").set_value(1)
    ran(at)

    at.toggle(key="view_export").set_value(True)
    ran(at)
    labels = [button.proto.label for button in at.get("download_button")]
    assert {"Results table (CSV)", "Settings (JSON)", "PNG", "SVG"} <= set(labels)


def test_export_contents(models_dir: Path) -> None:  # noqa: F811
    from app.results_view import summary_frame
    from app.views import export
    from app.views.context import ViewContext

    at = start(ways=3)
    fill_task(at, 3, queries=(0,))
    record, ws = at.session_state["results"], at.session_state["ws"]
    context = ViewContext(ws, record, record.results, [None], ["a", "b", "c"], {}, AdaptSettings(), current=False)
    settings = export.run_settings(context)
    json.dumps(settings)
    assert [a["name"] for a in settings["algorithms"]] == ALL and settings["task"]["ways"] == 3
    csv = summary_frame(record.results, 0).to_csv(index=False)
    assert csv.splitlines()[0].startswith("algorithm,") and len(csv.splitlines()) == 1 + len(ALL)
    svg = export.to_svg(export.export_spec(context, "inner-loop loss"))
    assert svg.lstrip().startswith("<svg") and "Inner-loop loss per step" in svg
    png = export.to_png(export.export_spec(context, "adaptation time"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_about_each_algorithm_beside_its_results(models_dir: Path) -> None:  # noqa: F811
    at = start(ways=3)
    fill_task(at, 3, queries=(0,))
    code = [element.value for element in at.code]
    markdown = "\n".join(element.value for element in at.markdown)
    for name in ALL:
        about = LEARNERS[name].about
        assert about.update_rule in code
        assert about.summary in markdown
        assert about.paper is not None and about.paper.url in markdown


# --------------------------------------------------------------------------- once in Chromium


def vega_charts(page) -> int:  # noqa: ANN001
    return page.locator("[data-testid=stVegaLiteChart]").count()


def open_view(page, key: str) -> None:  # noqa: ANN001
    page.locator(f".st-key-{key} label").first.click()
    wait_idle(page)


@pytest.mark.slow
def test_each_view_opens_in_chromium(server: str, browser) -> None:  # noqa: ANN001, F811
    page = browser()
    load(page, server)
    for index in range(5):  # the default 5-way 1-shot task
        draw_and_add(page, f"class-{index}", SHAPES[index], expected_cards=1)
    draw_and_add(page, "queries", SHAPES[0], expected_cards=1)
    page.locator(".st-key-predictions table").wait_for()
    wait_idle(page)

    closed = vega_charts(page)
    open_view(page, "view_playback")
    expect(page.locator(".st-key-playback_step")).to_be_visible()
    assert vega_charts(page) == closed + 2
    page.locator(".st-key-playback_play button").first.click()  # steps through, ends on the last step
    wait_idle(page)
    assert vega_charts(page) == closed + 2

    open_view(page, "view_embedding")
    assert vega_charts(page) == closed + 3
    chart = page.locator(".st-key-embedding-chart [data-testid=stVegaLiteChart]")
    chart.scroll_into_view_if_needed()
    box = chart.bounding_box()
    assert box is not None
    # Hover until a point's tooltip shows its image (vega-tooltip draws the "image" field as one).
    found = False
    for y in range(int(box["y"]) + 10, int(box["y"] + box["height"]) - 10, 6):
        for x in range(int(box["x"]) + 10, int(box["x"] + box["width"]) - 10, 6):
            page.mouse.move(x, y)
            if page.locator("#vg-tooltip-element img").count():
                found = True
                break
        if found:
            break
    assert found, "no point's tooltip showed an image"
    assert page.locator("#vg-tooltip-element img").first.get_attribute("src").startswith("data:image/png")

    open_view(page, "view_saliency")
    assert vega_charts(page) == closed + 4
    open_view(page, "view_export")
    expect(page.get_by_role("button", name="Results table (CSV)")).to_be_visible()
    expect(page.get_by_role("button", name="SVG")).to_be_visible()
    assert not page.locator("[data-testid=stException]").count()
    assert not page.get_by_text("This view failed").count()
