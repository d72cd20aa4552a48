"""The results: run controls, the ranking table, the inner-loop charts, and every query's predictions."""

from __future__ import annotations

import html

import pandas as pd
import streamlit as st

from app import charts, state
from app.images import Example
from app.models import ModelEntry, models_dir
from app.compute_queue import QueueFull
from app.run import RunRecord, current_labels, run_comparison, scored, task_problems
from app.task_builder import CARD_PADDING, NETWORK_WIDTH
from app.views import ViewContext, render_views
from app.views.about import render_about
from app.workspace import Workspace
from engine.compare import AlgorithmResult, ranked
from engine.learners import AdaptSettings, Learner

DETAILED_QUERY_LIMIT = 12
"""Above this many queries, per-query probability charts are opt-in (each chart costs a little)."""
MAX_NAMED_PROBLEMS = 6
WIDE_CHART_WIDTH, NARROW_CHART_WIDTH = 900, 380
"""Per-query chart width (px) with results below the task, and beside it."""
SHORT_WARNING_CHARS = 40


def plural(count: int, one: str = "", many: str = "s") -> str:
    return one if count == 1 else many


@st.fragment(key=state.RESULTS_FRAGMENT)
def render_results(models: dict[str, ModelEntry], selected: list[str], settings: AdaptSettings,
                   device_text: str) -> None:
    """A fragment: a query change reruns it (and the queries' row), not the support set. A label pick
    reruns only its parts that show labels (:func:`app.state.label_change`)."""
    ws = state.workspace()
    problems = task_problems(ws)
    st.markdown("#### Results")
    key = (ws.task_key(), tuple(selected), settings, tuple(id(models[n].learner) for n in selected))
    runnable = bool(selected) and not problems
    with st.container(horizontal=True, vertical_alignment="center", key="run-controls"):
        clicked = st.button(f"Run {len(selected)} algorithm{plural(len(selected))}", type="primary",
                            icon=":material/play_arrow:", key=state.RUN_BUTTON, disabled=not selected,
                            shortcut="ctrl+enter",
                            help="Adapt every selected algorithm to the support set and classify the queries "
                                 "(Ctrl+Enter).")
        auto = st.toggle("Auto-run", key=state.AUTO_RUN, help="Run again whenever the task or the settings change.")
    record = state.last_results()

    if not selected:
        available = [n for n, e in models.items() if e.available]
        if not available:
            st.warning("No algorithm can run yet: there is no trained checkpoint in the models folder "
                       f"(`{models_dir()}`). Each algorithm in the sidebar says what is missing. You can still "
                       "build a task.")
        else:
            st.info("Choose at least one algorithm in the sidebar.")
    elif problems:
        names = [ws.display_name(int(t.split("-")[1])) for t in problems]
        text = ", ".join(names[:MAX_NAMED_PROBLEMS])
        if len(names) > MAX_NAMED_PROBLEMS:
            text += f" and {len(names) - MAX_NAMED_PROBLEMS} more"
        st.warning(f"Not ready to run: {text} {'have' if len(names) > 1 else 'has'} no examples yet "
                   "(see the support set).")
        if clicked:
            for target, problem in problems.items():
                ws.clear_messages(target)
                ws.say(target, "error", problem)
            st.rerun()

    if runnable and (clicked or (auto and (record is None or record.key != key))):
        with st.spinner(f"Adapting {len(selected)} algorithm{plural(len(selected))}…"):
            queued = st.empty()
            try:
                record = run_comparison(ws, models, selected, settings, key, state.session_id(),
                                        on_wait=lambda ahead: queued.caption(queue_text(ahead)),
                                        previous=state.last_results())
            except QueueFull:
                queued.empty()
                st.warning("The server is busy with other people's comparisons: press Run again in a moment.",
                           icon=":material/hourglass_top:")
                record = None
        queued.empty()
        if record is not None:
            record.keep_charts_of(state.last_results())
            state.set_results(record)
        record = state.last_results()

    if record is None:
        if runnable:
            st.caption("Press Run (or turn on Auto-run) to compare the algorithms on this task.")
        else:
            st.caption("Results appear here once every class has at least one example.")
        return
    if record.error:
        st.error(record.error)
        return
    if record.key != key:
        st.info("The task or the settings changed since these results: press Run to update them.",
                icon=":material/update:")
    learners = {name: entry.learner for name, entry in models.items() if entry.learner is not None}
    show_record(ws, record, device_text, learners, settings, current=record.key == key)


def queue_text(ahead: int) -> str:
    """The note shown while a comparison waits in the shared queue."""
    if ahead:
        return f":material/hourglass_top: queued ({ahead} ahead)"
    return ":material/progress_activity: adapting…"


def show_record(ws: Workspace, record: RunRecord, device_text: str, learners: dict[str, Learner] | None = None,
                settings: AdaptSettings | None = None, current: bool = False) -> None:
    results = scored(record.results, current_labels(ws, record))
    names = [r.name for r in results]
    render_scores(device_text)
    render_about(names)

    curves = st.columns(2)
    with curves[0]:
        st.vega_lite_chart(record.page_chart(("loss",), lambda: charts.loss_chart(results, names)), width="stretch")
    with curves[1]:
        st.vega_lite_chart(record.page_chart(("accuracy",), lambda: charts.accuracy_chart(results, names)),
                           width="stretch")
    if any(r.ok for r in results):
        st.vega_lite_chart(record.page_chart(("time",), lambda: charts.time_chart(results, names)), width="stretch")
    render_views_fragment(learners or {}, settings or AdaptSettings(), current and learners is not None, device_text)

    queries = len(record.queries)
    if not queries:
        st.info("Add queries (draw or upload them under the support set) to see each algorithm's predictions.")
        return
    render_predictions()
    show_all = True
    if queries > DETAILED_QUERY_LIMIT:
        show_all = st.toggle(f"Probability charts for all {queries} queries", key=state.ALL_QUERY_CHARTS,
                             value=False)
    limit = queries if show_all else DETAILED_QUERY_LIMIT
    below = state.value(state.LAYOUT) == state.LAYOUTS[2]
    chart_width = WIDE_CHART_WIDTH if below else NARROW_CHART_WIDTH
    for example in record.queries[:limit]:
        # Each query's block is its own fragment: a label pick redraws that block only.
        st.fragment(key=state.query_result_fragment(example.id))(render_query_result)(example.id, chart_width)
    if limit < queries:
        st.caption(f"{queries - limit} more queries are in the predictions table above.")


def shown_record() -> tuple[Workspace, RunRecord, list[int | None], list[AlgorithmResult], list[str]]:
    """What a part of the results shows: the workspace, the last comparison, the current labels, the
    results scored against them, and the class names (each part reruns alone, so it reads them itself)."""
    ws, record = state.workspace(), state.last_results()
    assert record is not None  # the parts are drawn only under a comparison
    labels = current_labels(ws, record)
    return ws, record, labels, scored(record.results, labels), [ws.display_name(i) for i in range(record.ways)]


@st.fragment(key=state.SCORES_FRAGMENT)
def render_scores(device_text: str) -> None:
    """The comparison's caption, each algorithm's problems, and the ranking table."""
    _, record, labels, results, _ = shown_record()
    labelled = sum(label is not None for label in labels)
    queries = len(record.queries)
    st.caption(f"{record.ways}-way, {record.support_count} support examples, {queries} "
               f"quer{plural(queries, 'y', 'ies')} ({labelled} labelled) · {record.settings_text} · "
               f"{len(results)} algorithm{plural(len(results))} in {record.wall_ms:.0f} ms on "
               f"{device_text.split(' (')[0]}")

    # Problems, next to the algorithm they belong to.
    for result in results:
        if result.error:
            st.error(f"**{result.name}** failed: {result.error}", icon=":material/error:")
        elif result.warning:
            st.warning(f"**{result.name}**: {result.warning}", icon=":material/warning:")
        for note in result.notes:
            st.info(f"**{result.name}**: {note}", icon=":material/info:")
    summary_table(results, labelled)


@st.fragment(key=state.VIEWS_FRAGMENT)
def render_views_fragment(learners: dict[str, Learner], settings: AdaptSettings, current: bool,
                          device_text: str) -> None:
    ws, record, labels, results, class_names = shown_record()
    render_views(ViewContext(ws, record, results, labels, class_names, learners, settings, current=current,
                             device_text=device_text))


@st.fragment(key=state.PREDICTIONS_FRAGMENT)
def render_predictions() -> None:
    _, record, labels, results, class_names = shown_record()
    predictions_table(results, record, labels, class_names)


def render_query_result(example_id: str, chart_width: int) -> None:
    """One query's block (a fragment per query, see :func:`show_record`)."""
    _, record, labels, results, class_names = shown_record()
    index = next((i for i, example in enumerate(record.queries) if example.id == example_id), None)
    if index is not None:
        query_block(record, results, index, record.queries[index], labels[index], class_names, chart_width)


def summary_frame(results: list[AlgorithmResult], labelled: int) -> pd.DataFrame:
    """The ranking table's rows (also what the export's CSV holds)."""
    ordered = ranked(results) if labelled else results
    rows = []
    for rank, result in enumerate(ordered, start=1):
        status = "failed" if result.error else (short_warning(result.warning) if result.warning else "ok")
        rows.append({
            "rank": rank if labelled and result.ok else None,
            "algorithm": result.name,
            "query accuracy": result.query_accuracy,
            "correct": f"{result.correct}/{result.labelled}" if result.labelled else "–",
            "support loss": result.final_loss,
            "inner loop": inner_loop_text(result),
            "adapt ms": round(result.adapt_ms, 1),
            "status": status,
        })
    frame = pd.DataFrame(rows)
    if not labelled:
        frame = frame.drop(columns=["rank", "query accuracy", "correct"])
    return frame


def summary_table(results: list[AlgorithmResult], labelled: int) -> None:
    frame = summary_frame(results, labelled)
    if not labelled:
        st.caption("Label the queries (the box under each one) to rank the algorithms by query accuracy.")
    st.dataframe(
        frame, hide_index=True, width="stretch", key=state.SUMMARY_TABLE,
        column_config={
            "rank": st.column_config.NumberColumn("#", width=26),
            "query accuracy": st.column_config.ProgressColumn("query acc.", min_value=0.0, max_value=1.0,
                                                              format="percent", width=110),
            "algorithm": st.column_config.TextColumn("algorithm", width=72),
            "correct": st.column_config.TextColumn("correct", width=54),
            "support loss": st.column_config.NumberColumn("loss", format="%.3g", width=70,
                                                          help="Support-set loss after the last inner step"),
            "inner loop": st.column_config.TextColumn("steps × lr", width=72),
            "adapt ms": st.column_config.NumberColumn("ms", format="%.0f", width=44,
                                                      help="Adaptation time in milliseconds"),
            "status": st.column_config.TextColumn("status", width=56),
        },
    )


def inner_loop_text(result: AlgorithmResult) -> str:
    if not result.has_inner_loop:
        return "none"
    lr = "?" if result.lr is None else (f"{result.lr:g}" if isinstance(result.lr, float) else str(result.lr))
    return f"{result.steps} × {lr}"


def short_warning(warning: str | None) -> str:
    if not warning:
        return ""
    return "diverged" if "diverg" in warning else warning[:SHORT_WARNING_CHARS]


def predictions_table(results: list[AlgorithmResult], record: RunRecord, labels: list[int | None],
                      class_names: list[str]) -> None:
    ok = [r for r in results if r.ok and r.predictions is not None]
    header = "| query | true class | " + " | ".join(r.name for r in ok) + " |"
    lines = [header, "|" + "---|" * (2 + len(ok))]
    for index in range(len(record.queries)):
        label = labels[index]
        cells = []
        for result in ok:
            predicted = int(result.predictions[index])
            probability = float(result.probabilities[index, predicted])
            mark = "" if label is None else (" :green[**✓**]" if predicted == label else " :red[**✗**]")
            cells.append(f"**{predicted + 1}** ({probability:.0%}){mark}")
        truth = "?" if label is None else f"{label + 1}. {markdown_escape(class_names[label])}"
        lines.append(f"| {index + 1} | {truth} | " + " | ".join(cells) + " |")
    st.markdown("**Predictions**: each algorithm's predicted class (number) and its probability")
    with st.container(key="predictions"):
        st.markdown("\n".join(lines))


def markdown_escape(text: str) -> str:
    """A class name inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def query_block(record: RunRecord, results: list[AlgorithmResult], index: int, example: Example,
                label: int | None, class_names: list[str], chart_width: int) -> None:
    """One query: what was drawn and what the network saw, then every algorithm's probabilities."""
    with st.container(border=True, key=f"qres-{index}", gap="xsmall"):
        truth = "unknown (pick it under the query to score it)" if label is None else \
            f"{label + 1}. {class_names[label]}"
        st.markdown(f"**Query {index + 1}** <span class='mp-model-note'>true class: {html.escape(truth)}</span>",
                    unsafe_allow_html=True)
        with st.container(horizontal=True, gap="small", vertical_alignment="center", wrap=False):
            with st.container(width=NETWORK_WIDTH + CARD_PADDING, gap="xsmall", key=f"qnet-res-{index}"):
                st.image(example.original_url, width=NETWORK_WIDTH)
                st.image(example.network_url, width=NETWORK_WIDTH)
            spec = record.page_chart(("query", example.id, label, tuple(class_names), chart_width),
                                lambda: charts.probability_chart(results, index, class_names, label,
                                                                 width=chart_width))
            if spec is None:
                st.caption("No algorithm produced predictions.")
            else:
                st.vega_lite_chart(spec, width="content")
