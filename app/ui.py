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
from app.models import ModelEntry
from app.resources import get_models
from app.results_view import render_results
from app.run import task_problems
from app.sidebar import render_sidebar
from app.task_builder import render_builder
from app.toolbar import apply_task_link, render_toolbar
from app.workspace import Workspace
from engine.learners import AdaptSettings

PAGE_CSS = Path(__file__).resolve().parent / "styles" / "page.css"
TASK_TO_RESULTS_WIDTH = (1.15, 1)
"""Relative widths of the task builder and the results when side by side."""


def render() -> None:
    ws = state.workspace()
    state.init_widget_defaults(ws)
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
        # "auto": side by side on wide screens, stacked below 1440 px (see styles/page.css).
        with st.container(key=f"layout-{'auto' if layout == state.LAYOUTS[0] else 'columns'}"):
            left, right = st.columns(list(TASK_TO_RESULTS_WIDTH), gap="large")
    with left:
        render_builder(ws)
    problems = task_problems(ws)  # after the builder: it handles this run's drawings and uploads
    with right:
        render_results(ws, models, selected, settings, problems, device_text)


def main() -> None:
    st.set_page_config(page_title="Few-shot meta-learning playground", page_icon=":material/draw:", layout="wide",
                       initial_sidebar_state="expanded")
    try:
        st.set_option("client.showErrorDetails", "none")
    except Exception:  # noqa: BLE001 - older/newer Streamlit: the guard below still hides tracebacks
        pass
    try:
        render()
    except Exception as error:  # noqa: BLE001 - never show a traceback; keep the session's work
        st.error(f"Something went wrong ({type(error).__name__}: {error}). Your drawings are kept: change a "
                 "setting or reload the page to continue.")
