"""No needless work: adapted learners are kept per (learner, support set, settings), and every
session's adaptations go through one bounded, shared queue that drops superseded requests.

Engine level (``engine.compare.adapt_all`` / ``predict_all`` / ``AdaptedCache``), the queue
(``app.compute_queue``) on its own, and the app through AppTest, counting adaptations."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from app import resources
from app.compute_queue import ComputeQueue, QueueFull, Superseded
from engine.compare import AdaptedCache, adapt_all, compare, predict_all, prepare_task, support_fingerprint
from engine.learners import LEARNERS, AdaptSettings, Learner
from engine.nets import BackboneConfig
from tests.test_app import class_pad, draw, fill_task, shape_png, start, whole_page, workspace
from tests.test_app import models_dir  # noqa: F401 - the fixture
from tests.test_compare import blobs

TINY = BackboneConfig(channels=4)


def counting(name: str, calls: list[str]) -> Learner:
    """A learner whose every ``adapt`` call is recorded."""
    learner = LEARNERS[name](backbone=TINY, seed=1)
    original = learner.adapt

    def adapt(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        calls.append(name)
        return original(*args, **kwargs)

    learner.adapt = adapt  # type: ignore[method-assign]
    return learner


# --------------------------------------------------------------------------- engine


def test_adapt_once_predict_many_gives_what_compare_gives() -> None:
    models = {name: LEARNERS[name](backbone=TINY, seed=1) for name in ("maml", "protonet", "metasgd")}
    support_x, support_y = blobs(3, 2)
    query_x, query_y = blobs(3, 1, seed=4)
    settings = AdaptSettings(steps=3)
    outcomes = adapt_all(models, support_x, support_y, 3, settings)
    assert list(outcomes) == list(models) and all(o.ok for o in outcomes.values())
    first = predict_all(outcomes, query_x[:2], query_y[:2])
    again = predict_all(outcomes, query_x, query_y)
    direct = compare(models, support_x, support_y, 3, query_x, settings, query_y)
    for kept, fresh in zip(again, direct):
        np.testing.assert_allclose(kept.probabilities, fresh.probabilities, atol=1e-5)
        assert (kept.correct, kept.labelled) == (fresh.correct, fresh.labelled)
        assert [r.loss for r in kept.trace] == pytest.approx([r.loss for r in fresh.trace], rel=1e-5)
    # Predicting again never changed the kept outcomes (the first prediction still holds).
    assert all(r.probabilities.shape == (2, 3) for r in first)
    assert all(o.result.probabilities is None for o in outcomes.values())


def test_known_rows_are_not_predicted_again_and_change_nothing() -> None:
    """Each query is predicted alone (support-set batch norm), so rows predicted before are reused as they are
    and only the other queries go through the network: the same probabilities and score as predicting all."""
    models = {name: LEARNERS[name](backbone=TINY, seed=1) for name in ("maml", "protonet", "blackbox")}
    support_x, support_y = blobs(3, 2)
    query_x, query_y = blobs(3, 2, seed=4)
    outcomes = adapt_all(models, support_x, support_y, 3, AdaptSettings(steps=2))
    full = predict_all(outcomes, query_x, query_y)
    batches: list[int] = []
    for outcome in outcomes.values():
        predict = outcome.adapted.predict_proba

        def counted(x, *args, predict=predict, **kwargs):  # type: ignore[no-untyped-def]
            batches.append(int(x.shape[0]))
            return predict(x, *args, **kwargs)

        outcome.adapted.predict_proba = counted  # type: ignore[method-assign]
    reused = [0, 2, 3, 5]  # four of the six queries predicted before
    known = {r.name: [r.probabilities[i] if i in reused else None for i in range(6)] for r in full}
    again = predict_all(outcomes, query_x, query_y, known)
    assert batches == [2, 2, 2]  # only the two new queries, once per learner
    for before, after in zip(full, again):
        np.testing.assert_allclose(after.probabilities, before.probabilities, atol=1e-5)
        assert list(after.predictions) == list(before.predictions)
        assert (after.correct, after.labelled) == (before.correct, before.labelled)
    everything = predict_all(outcomes, query_x, query_y, {r.name: list(r.probabilities) for r in full})
    assert batches == [2, 2, 2] and all(r.probabilities.shape == (6, 3) for r in everything)
    with pytest.raises(ValueError, match="known holds 2 rows for 6 queries"):
        predict_all(outcomes, query_x, query_y, {"maml": [None, None]})


def test_the_cache_adapts_once_per_learner_support_set_and_settings() -> None:
    calls: list[str] = []
    models = {name: counting(name, calls) for name in ("maml", "protonet")}
    cache = AdaptedCache(max_entries=8)
    support_x, support_y = blobs(2, 2)

    def adapt(images: np.ndarray, settings: AdaptSettings) -> None:
        task = prepare_task(images, support_y, 2)
        fingerprint = support_fingerprint(task.support_x, task.support_y, 2)
        for name, learner in models.items():
            assert cache.get_or_adapt(name, learner, task, fingerprint, settings).ok

    adapt(support_x, AdaptSettings(steps=2))
    assert calls == ["maml", "protonet"]
    adapt(support_x.copy(), AdaptSettings(steps=2))  # same pixels, another array: kept
    assert calls == ["maml", "protonet"]
    adapt(support_x, AdaptSettings(steps=3))  # new settings: only the learner with an inner loop
    assert calls == ["maml", "protonet", "maml"]
    changed = support_x.copy()
    changed[0, 0, 0] += 0.5  # one pixel of the support set: every learner again
    adapt(changed, AdaptSettings(steps=3))
    assert calls == ["maml", "protonet", "maml", "maml", "protonet"]
    assert cache.adaptations == len(calls)
    other = LEARNERS["maml"](backbone=TINY, seed=1)  # another loaded model under the same name
    task = prepare_task(support_x, support_y, 2)
    key = cache.key("maml", models["maml"], support_fingerprint(task.support_x, task.support_y, 2),
                    AdaptSettings(steps=2))
    assert cache.get(key, models["maml"]) is not None and cache.get(key, other) is None


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    calls: list[str] = []
    learner = counting("protonet", calls)
    cache = AdaptedCache(max_entries=2)
    support_y = np.array([0, 1])
    sets = [blobs(2, 1, seed=seed)[0] for seed in range(3)]
    tasks = [prepare_task(images, support_y, 2) for images in sets]
    prints = [support_fingerprint(t.support_x, t.support_y, 2) for t in tasks]
    for task, fingerprint in zip(tasks, prints):
        cache.get_or_adapt("protonet", learner, task, fingerprint, AdaptSettings())
    assert len(cache) == 2 and len(calls) == 3
    cache.get_or_adapt("protonet", learner, tasks[2], prints[2], AdaptSettings())  # kept
    cache.get_or_adapt("protonet", learner, tasks[0], prints[0], AdaptSettings())  # evicted: again
    assert len(calls) == 4


# --------------------------------------------------------------------------- the shared queue


def test_the_queue_never_runs_more_jobs_than_workers_and_keeps_request_order() -> None:
    queue = ComputeQueue(workers=2, max_requests=16)
    running, peak, finished = [0], [0], []
    lock = threading.Lock()

    def job(tag: str) -> str:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
            finished.append(tag)
        return tag

    tickets = [queue.submit(f"session-{s}", [lambda s=s, i=i: job(f"{s}.{i}") for i in range(3)]) for s in range(4)]
    assert [t.ahead() for t in tickets][-1] == 3
    for ticket in tickets:
        assert ticket.wait(10)
    assert [t.results() for t in tickets] == [[f"{s}.{i}" for i in range(3)] for s in range(4)]
    assert peak[0] == 2
    # Requests finish in the order they came: every job of request 0 before the last of request 1.
    assert max(finished.index(f"0.{i}") for i in range(3)) < finished.index("1.2")
    assert queue.pending() == 0 and tickets[-1].ahead() == 0
    queue.shutdown()


def test_a_superseded_request_is_dropped_and_a_full_queue_refuses() -> None:
    queue = ComputeQueue(workers=1, max_requests=2)
    gate = threading.Event()
    ran: list[str] = []

    def job(tag: str) -> str:
        gate.wait(10)
        ran.append(tag)
        return tag

    blocker = queue.submit("other", [lambda: job("other")])
    old = queue.submit("me", [lambda: job("old-1"), lambda: job("old-2")])
    with pytest.raises(QueueFull):
        queue.submit("third", [lambda: job("third")])
    new = queue.submit("me", [lambda: job("new")])  # supersedes "old": the queue has room again
    assert new.ahead() == 1  # only the other session's request; the superseded one no longer counts
    gate.set()
    assert blocker.wait(10) and old.wait(10) and new.wait(10)
    with pytest.raises(Superseded):
        old.results()
    assert new.results() == ["new"] and ran == ["other", "new"] and queue.skipped_jobs == 2
    queue.shutdown()


# --------------------------------------------------------------------------- the app


def test_the_app_adapts_only_when_the_support_set_or_the_settings_change(models_dir: Path,  # noqa: F811
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from engine import compare as engine_compare

    predicted: list[int] = []  # queries run through a network, per algorithm and comparison
    original = engine_compare.predict_one

    def predict_one(outcome, query_x, query_y=None, known=None):  # type: ignore[no-untyped-def]
        predicted.append(int(query_x.shape[0]) if known is None else sum(row is None for row in known))
        return original(outcome, query_x, query_y, known)

    monkeypatch.setattr(engine_compare, "predict_one", predict_one)
    cache = resources.adapted_cache()
    at = start(ways=2, shots=2)
    fill_task(at, 2, queries=(0,))  # one example per class: the task can run (K is a maximum)
    algorithms = len(at.session_state["algorithms"])
    count = cache.adaptations
    first = at.session_state["results"]
    predicted.clear()
    draw(at, "pad-queries", shape_png(1, jitter=0.05))  # a new query: predictions only, of the new query only
    ws = workspace(at)
    assert len(ws.queries) == 2 and cache.adaptations == count
    rows = at.session_state["results"].results
    assert all(r.predictions is not None and len(r.predictions) == 2 for r in rows if r.ok)
    assert predicted == [1] * algorithms
    for before, after in zip(first.results, rows):
        if after.ok:  # the first query's row is taken over as it was
            np.testing.assert_array_equal(after.probabilities[0], before.probabilities[0])
    label_box = [box for box in at.selectbox if box.key and box.key.startswith("qlabel-")][0]
    label_box.set_value(1).run()  # a label: scoring only
    assert cache.adaptations == count
    assert [workspace(at).query_label(q) for q in workspace(at).queries].count(1) == 1
    whole_page(at)  # a label pick redraws only what shows labels (AppTest keeps only the last run's elements)
    predicted.clear()
    at.button(key=f"qdel-{ws.queries[0].example.id}").click().run()  # deleting a query: nothing to predict
    assert cache.adaptations == count and len(workspace(at).queries) == 1
    assert predicted == [0] * algorithms
    draw(at, class_pad(0), shape_png(3))  # a new support example: every algorithm adapts again
    assert cache.adaptations == count + algorithms
    inner = sum(LEARNERS[name].has_inner_loop for name in at.session_state["algorithms"])
    assert 0 < inner < algorithms
    at.toggle(key="use_defaults").set_value(False).run()  # new settings: the learners with an inner loop only
    assert cache.adaptations == count + algorithms + inner
    at.slider(key="steps").set_value(3).run()
    assert cache.adaptations == count + algorithms + 2 * inner
    assert not at.exception


def test_a_new_or_deleted_query_compiles_only_its_own_chart(models_dir: Path,  # noqa: F811
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The query charts and the loss curves of a comparison on an unchanged support set are taken over from
    the previous one (compiling a chart costs more than predicting); a new support example compiles all."""
    from app import charts

    compiled: list[int] = []
    original = charts.probability_chart

    def probability_chart(results, query_index, *args, **kwargs):  # type: ignore[no-untyped-def]
        compiled.append(query_index)
        return original(results, query_index, *args, **kwargs)

    monkeypatch.setattr(charts, "probability_chart", probability_chart)
    curves: list[str] = []
    for name in ("loss_chart", "accuracy_chart"):
        monkeypatch.setattr(charts, name, lambda *args, name=name, original=getattr(charts, name), **kwargs: (
            curves.append(name), original(*args, **kwargs))[1])
    at = start(ways=2, shots=2)
    fill_task(at, 2, queries=(0, 1))
    whole_page(at)
    compiled.clear()
    curves.clear()
    draw(at, "pad-queries", shape_png(1, jitter=0.05))  # a third query
    assert compiled == [2] and curves == []  # the inner loop's curves are those of the same adaptations
    first = workspace(at).queries[0].example.id
    second_chart = at.session_state["results"].charts
    at.button(key=f"qdel-{first}").click().run()  # the others move up a place: their charts still hold
    assert compiled == [2] and not at.exception
    record = at.session_state["results"]
    assert [key[1] for key in record.charts if key[0] == "query"] == [q.id for q in record.queries]
    assert record.charts is not second_chart
    draw(at, class_pad(0), shape_png(3))  # a new support example: every query's chart again
    assert compiled[1:] == [0, 1] and sorted(curves) == ["accuracy_chart", "loss_chart"]


def test_the_page_sends_a_charts_data_as_streamlit_converts_it(models_dir: Path) -> None:  # noqa: F811
    """A chart's datasets go to the page already as Arrow (converted once per chart, not on every rerun):
    the same message as Streamlit makes from the rows, and the spec an export converts keeps its rows."""
    from streamlit.elements.vega_charts import _marshall_chart_data
    from streamlit.proto.VegaLiteChart_pb2 import VegaLiteChart

    from app import charts

    at = start(ways=2, shots=2)
    fill_task(at, 2, queries=(0, 1))
    record = at.session_state["results"]
    assert record.page_specs and set(record.page_specs) <= set(record.charts)
    for key, page in record.page_specs.items():
        spec = record.charts[key]
        assert all(isinstance(rows, list) for rows in spec["datasets"].values())
        assert all(isinstance(data, bytes) for data in page["datasets"].values())
        assert charts.for_page(page) == page
        sent = []
        for given in (spec, page):
            proto = VegaLiteChart()
            _marshall_chart_data(proto, dict(given))
            sent.append(proto.SerializeToString())
        assert sent[0] == sent[1]


def test_only_the_first_chart_of_a_kind_is_validated() -> None:
    """Validating the schema is most of what compiling a chart costs; a kind's charts share one structure."""
    import altair as alt

    from app import charts

    def bar(width: object) -> alt.Chart:
        chart = alt.Chart(alt.Data(values=[{"x": 1}])).mark_bar().encode(x="x:Q")
        chart.width = width  # set directly: Altair checks it only when the spec is validated
        return chart

    from altair.utils.schemapi import SchemaValidationError

    with pytest.raises(SchemaValidationError):  # a spec the schema refuses, caught the first time
        charts.compile_chart("test-bar", bar("wide"))
    assert charts.compile_chart("test-bar", bar(100))["width"] == 100
    assert charts.compile_chart("test-bar", bar("wide"))["width"] == "wide"  # later ones are not checked
