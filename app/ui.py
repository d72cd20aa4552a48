"""The Streamlit page: build a few-shot task, choose algorithms, compare how each adapts.

Layout: the sidebar chooses what runs (algorithms with a checkpoint, inner-loop settings, device);
the main area has a task toolbar (N, K, Omniglot sampling), the task builder on the left (one
drawing pad per class plus its examples, then the queries) and the results on the right.

Each part is its own module: :mod:`app.state` (session-state keys and the callbacks that change
them), :mod:`app.resources` (models, device and dataset, shared by all sessions and only read),
:mod:`app.sidebar`, :mod:`app.toolbar`, :mod:`app.task_builder`, :mod:`app.run` (running a
comparison) and :mod:`app.results_view`. All maths happens in :mod:`engine.compare`.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import state
from app.persistence import TaskFileError, apply_task, read_task, write_task
from app.models import ModelEntry
from app.resources import get_models
from app.results_view import render_results
from app.sidebar import render_sidebar
from app.task_builder import render_builder
from app.task_store import default_store, signature
from app.toolbar import apply_task_link, render_toolbar
from app.workspace import TASK, Workspace
from engine.learners import AdaptSettings

PAGE_CSS = Path(__file__).resolve().parent / "styles" / "page.css"
TASK_TO_RESULTS_WIDTH = (1.15, 1)
"""Relative widths of the task builder and the results when side by side."""


def restore_saved_task(ws: Workspace) -> bool:
    """First run of a session: bring back the task kept under the address's token (a reload)."""
    token = state.task_token()
    data = default_store().load(token) if token else None
    if data is None:
        return False
    try:
        task = read_task(data)
    except TaskFileError as error:
        ws.say(TASK, "warning", f"The copy of your task kept for reloads could not be read ({error}); "
                                "starting with an empty task.")
        return False
    apply_task(ws, task)
    ws.previous = None
    state.restore_settings(task.settings)
    state.sync_size_widgets(ws)
    state.set_persisted_signature(signature(ws, state.settings_snapshot()))
    st.toast("Your task is back (kept for this page's address).", icon=":material/restore:")
    return True


def keep_task(ws: Workspace) -> None:
    """After the builder has handled this run's input: write the task for reloads when it changed."""
    settings = state.settings_snapshot()
    current = signature(ws, settings)
    if current == state.persisted_signature():
        return
    if state.task_token() is None and not ws.has_content():
        return  # nothing worth a token in the address yet
    try:
        default_store().save(state.ensure_task_token(), write_task(ws, settings))
    except OSError as error:
        st.caption(f":orange[:material/warning:] This task could not be kept for reloads ({error}): "
                   "use “Save task” to keep it.")
        return
    state.set_persisted_signature(current)


def render() -> None:
    ws = state.workspace()
    first = state.first_run()
    restored = first and restore_saved_task(ws)
    state.init_widget_defaults(ws)
    if first and not restored:
        apply_task_link(ws)
    st.html(PAGE_CSS)
    models = get_models()
    selected, settings, device_text = render_sidebar(models)

    st.title(":material/draw: Few-shot meta-learning playground")
    callback_error = state.pop_callback_error()
    if callback_error:
        st.error(f"That action failed ({callback_error}); your drawings are kept.")
    st.caption("Draw (or upload, or sample) a few examples of each class, pick meta-learning algorithms, and "
               "compare how each one adapts to your task and classifies your queries.")
    render_toolbar(ws)
    render_task_and_results(models, selected, settings, device_text)


@st.fragment
def render_task_and_results(models: dict[str, ModelEntry], selected: list[str], settings: AdaptSettings,
                            device_text: str) -> None:
    """The task builder and the results: a fragment, so drawing, adding, deleting or labelling an
    example reruns only this part (the sidebar, toolbar and page styles are not rebuilt); a change
    of the sidebar or toolbar reruns the whole page, with the arguments it gives here."""
    try:
        task_and_results(state.workspace(), models, selected, settings, device_text)
    except Exception as error:  # noqa: BLE001 - a fragment rerun is outside main()'s guard
        st.error(f"Something went wrong ({type(error).__name__}: {error}). Your drawings are kept: change a "
                 "setting or reload the page to continue.")


def task_and_results(ws: Workspace, models: dict[str, ModelEntry], selected: list[str], settings: AdaptSettings,
                     device_text: str) -> None:
    callback_error = state.pop_callback_error()
    if callback_error:  # a callback of a widget inside the fragment: shown here, where it reruns
        st.error(f"That action failed ({callback_error}); your drawings are kept.")
    layout = state.value(state.LAYOUT, state.LAYOUTS[0])
    if layout == state.LAYOUTS[2]:
        left, right = st.container(), st.container()
    else:
        # "auto": side by side on wide screens, stacked below 1280 px (see styles/page.css).
        with st.container(key=f"layout-{'auto' if layout == state.LAYOUTS[0] else 'columns'}"):
            left, right = st.columns(list(TASK_TO_RESULTS_WIDTH), gap="large")
    with left:
        render_builder(ws)
    render_keep_task()  # after the builder: it handles this run's drawings and uploads
    with right:
        render_results(models, selected, settings, device_text)


@st.fragment(key=state.KEEP_TASK_FRAGMENT)
def render_keep_task() -> None:
    """A fragment (nothing to see unless it fails): reruns with any part that changes the task."""
    keep_task(state.workspace())


def main() -> None:
    st.set_page_config(page_title="Few-shot meta-learning playground", page_icon=":material/draw:", layout="wide",
                       initial_sidebar_state="auto")  # "auto": collapsed on phones
    try:
        st.set_option("client.showErrorDetails", "none")
    except Exception:  # noqa: BLE001 - older/newer Streamlit: the guard below still hides tracebacks
        pass
    try:
        render()
    except Exception as error:  # noqa: BLE001 - never show a traceback; keep the session's work
        st.error(f"Something went wrong ({type(error).__name__}: {error}). Your drawings are kept: change a "
                 "setting or reload the page to continue.")
