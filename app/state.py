"""One session's state: every ``st.session_state`` key, its defaults, and the callbacks that change it.

Nothing else in the app reads or writes ``st.session_state``: widgets are given the keys below (a
widget's value lives under its key), and code asks this module for what it needs. Keys that depend on
an example, a class or the workspace's generation are built by the ``*_key`` functions, so a widget
and the code that reads it can never spell its key differently.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import streamlit as st

from app.keys import (  # noqa: F401 - re-exported: the app names every key through app.state
    WORKSPACE, RESULTS, CALLBACK_ERROR, SAMPLE_NOW, LINK_CHECKED, PERSISTED, RESTORED_ALGORITHMS, TASK_PARAM,
    WAYS, SHOTS, ALGORITHMS, USE_DEFAULTS, STEPS, LR, OPTIMIZER, FINETUNE, LAYOUT, SEED, QUERIES_PER_CLASS,
    AUTO_RUN, ALL_QUERY_CHARTS, SUMMARY_TABLE, RUN_BUTTON, CLEAR_ALL_BUTTON, RESTORE_BUTTON, SAMPLE_BUTTON,
    RANDOM_SEED_BUTTON, SAVE_TASK_BUTTON, NEW_QUERY_LABEL, BULK_LABEL_CLASS, BULK_LABEL_BUTTON, VIEW_PLAYBACK,
    VIEW_EMBEDDING, VIEW_SALIENCY, VIEW_EXPORT, PLAYBACK_STEP, PLAYBACK_PLAY, EMBEDDING_ALGORITHM,
    SALIENCY_ALGORITHM, SALIENCY_QUERY, SALIENCY_METHOD, EXPORT_CSV, EXPORT_JSON, EXPORT_CHART, EXPORT_PNG,
    EXPORT_SVG, LAYOUTS, MODEL_DEFAULT, MAX_QUERIES_PER_CLASS, INITIAL_SEED_RANGE, NEW_SEED_RANGE, MAX_SEED,
    PERSISTED_SETTINGS, pad_key, QUERY_PAD, class_name_key, upload_key, upload_popover_key, clear_class_key,
    clear_queries_key, delete_example_key, delete_query_key, query_label_key, open_task_key,
    bulk_label_queries_key, QUERIES_FRAGMENT, BULK_LABEL_FRAGMENT, KEEP_TASK_FRAGMENT, RESULTS_FRAGMENT,
    SCORES_FRAGMENT, VIEWS_FRAGMENT, PREDICTIONS_FRAGMENT, QUERY_CHANGE, query_result_fragment, label_change,
    class_row_fragment, support_change, rename_change,
)
from app.workspace import QUERIES, TASK, Workspace

if TYPE_CHECKING:
    from app.run import RunRecord

# --------------------------------------------------------------------------- reading and writing


def workspace() -> Workspace:
    if WORKSPACE not in st.session_state:
        st.session_state[WORKSPACE] = Workspace()
    return st.session_state[WORKSPACE]


def session_id() -> str:
    """This browser session's id (the shared comparison queue keeps each session's newest request)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    context = get_script_run_ctx()
    return context.session_id if context is not None else ""


def init_widget_defaults(ws: Workspace) -> None:
    """Starting values of the widgets (a test or a task link may have set some already)."""
    defaults: dict[str, Any] = {
        WAYS: ws.ways, SHOTS: ws.shots, AUTO_RUN: True, USE_DEFAULTS: True, STEPS: 10, LR: 0.4,
        OPTIMIZER: MODEL_DEFAULT, SEED: random.randint(0, INITIAL_SEED_RANGE), QUERIES_PER_CLASS: 1,
        LAYOUT: LAYOUTS[0], FINETUNE: MODEL_DEFAULT,
    }
    for key, value in defaults.items():
        st.session_state.setdefault(key, value)


def value(key: str, default: Any = None) -> Any:
    """A widget's current value (one of the keys above), else ``default``."""
    return st.session_state.get(key, default)


def keep_choice_valid(key: str, options: Sequence[str]) -> None:
    """Before a selectbox is drawn: a stored choice that is no longer offered falls back to the model
    default (Streamlit would otherwise raise for a value outside the options)."""
    if st.session_state.get(key) not in options:
        st.session_state[key] = MODEL_DEFAULT


def last_results() -> RunRecord | None:
    return st.session_state.get(RESULTS)


def set_results(record: RunRecord | None) -> None:
    st.session_state[RESULTS] = record


VIEWS_CACHE: Final = "views_cache"
"""What the "Inside the adaptation" views computed for the last comparison, dropped with it."""


def views_cache(record: RunRecord) -> dict[Any, Any]:
    """The views' cache for ``record`` (a fresh one when the comparison is another)."""
    held = st.session_state.get(VIEWS_CACHE)
    if held is None or held[0] is not record:
        held = (record, {})
        st.session_state[VIEWS_CACHE] = held
    return held[1]


def keep_option_valid(key: str, options: Sequence[Any]) -> None:
    """Before a selector is drawn: a stored choice that is no longer offered falls back to the first."""
    if key in st.session_state and st.session_state[key] not in options and options:
        st.session_state[key] = options[0]


def keep_in_range(key: str, low: int, high: int, default: int) -> None:
    """Before a slider is drawn: its value is ``default`` the first time; a stored value outside
    ``low..high`` (another run's) is clamped."""
    st.session_state[key] = min(max(int(st.session_state.get(key, default)), low), high)


def on_play(last_step: int) -> None:
    """The playback's Play button: the slider ends on the last step, where the animation stops."""
    st.session_state[PLAYBACK_STEP] = last_step


def pop_callback_error() -> str | None:
    return st.session_state.pop(CALLBACK_ERROR, None)


def take_sample_request() -> bool:
    """True once after a sample button or a task link asked for an Omniglot task."""
    return bool(st.session_state.pop(SAMPLE_NOW, False))


def sample_request() -> tuple[int, int]:
    """(seed, queries per class) of the sampling popover."""
    return int(st.session_state.get(SEED, 0)), int(st.session_state.get(QUERIES_PER_CLASS, 1))


def first_run() -> bool:
    """True on the session's first page run only (when its task link is applied)."""
    if st.session_state.get(LINK_CHECKED):
        return False
    st.session_state[LINK_CHECKED] = True
    return True


def request_linked_task(ws: Workspace, ways: int, shots: int, seed: int, queries: int) -> None:
    """A task link: set N, K, the seed and queries per class, and sample during this run."""
    ws.set_size(ways, shots)
    sync_size_widgets(ws)
    st.session_state[SEED] = min(max(0, seed), MAX_SEED)
    st.session_state[QUERIES_PER_CLASS] = min(max(queries, 0), MAX_QUERIES_PER_CLASS)
    st.session_state[SAMPLE_NOW] = True


def keep_int_choice_valid(key: str, options: Sequence[int], fallback: int) -> None:
    """A stored integer choice no longer offered becomes ``fallback`` (before the selectbox is drawn)."""
    if st.session_state.get(key, fallback) not in options:
        st.session_state[key] = fallback


def new_query_label() -> int | None:
    """The class new queries get (None: unknown)."""
    label = st.session_state.get(NEW_QUERY_LABEL, -1)
    return None if not isinstance(label, int) or label < 0 else label


def task_token() -> str | None:
    """This page's reload-store token (from the address), when it has a well-formed one."""
    from app.task_store import valid_token

    token = st.query_params.get(TASK_PARAM)
    return token if valid_token(token) else None


def ensure_task_token() -> str:
    """The page's token, creating one (and putting it in the address) when there is none."""
    from app.task_store import new_token

    token = task_token()
    if token is None:
        token = new_token()
        st.query_params[TASK_PARAM] = token
    return token


def persisted_signature() -> Any:
    return st.session_state.get(PERSISTED)


def set_persisted_signature(signature: Any) -> None:
    st.session_state[PERSISTED] = signature


def settings_snapshot() -> dict[str, Any]:
    """The widget values that travel with the task (reload store and task files)."""
    return {key: st.session_state[key] for key in PERSISTED_SETTINGS if key in st.session_state}


def restore_settings(values: dict[str, Any]) -> list[str]:
    """Put back saved widget values that are well-formed; returns the keys that were not."""
    from app.task_store import valid_setting

    refused = []
    for key, value in values.items():
        if key not in PERSISTED_SETTINGS or not valid_setting(key, value):
            refused.append(str(key)[:40])
        elif key == ALGORITHMS:
            st.session_state[RESTORED_ALGORITHMS] = list(value)  # offered as the selector's default
        else:
            st.session_state[key] = float(value) if key == LR else value
    return refused


def algorithms_default(available: Sequence[str]) -> list[str]:
    """The algorithm selector's starting value: what was chosen before a reload, else every one."""
    restored = st.session_state.pop(RESTORED_ALGORITHMS, None)
    if restored is None:
        return list(available)
    return [name for name in restored if name in available]


def sync_size_widgets(ws: Workspace) -> None:
    st.session_state[WAYS], st.session_state[SHOTS] = ws.ways, ws.shots


# --------------------------------------------------------------------------- widget callbacks


def _guarded(callback: Callable[..., None]) -> Callable[..., None]:
    """Widget callbacks run before the page script (outside its error guard): an unexpected error
    becomes a message at the top of the page instead of a traceback."""

    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            callback(*args, **kwargs)
        except Exception as error:  # noqa: BLE001
            st.session_state[CALLBACK_ERROR] = f"{type(error).__name__}: {error}"

    return run


# --------------------------------------------------------------------------- partial reruns


def rerun_only(fragments: Sequence[str]) -> None:
    """From a widget callback: rerun only ``fragments`` (those on the page now), in this order,
    instead of the fragment the widget is in. None on the page: the usual rerun."""
    from streamlit.errors import StreamlitAPIException
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    context = get_script_run_ctx()
    if context is None:
        return
    shown = []
    for key in fragments:
        try:
            context.fragment_storage.resolve_target(key)
        except StreamlitAPIException:
            continue  # not drawn this time (no results yet, a query without its chart)
        shown.append(key)
    if shown:
        st.rerun(shown)


@_guarded
def on_size_change() -> None:
    workspace().set_size(st.session_state[WAYS], st.session_state[SHOTS])


@_guarded
def on_clear_all() -> None:
    workspace().clear_all()
    set_results(None)
    token = task_token()
    st.query_params.clear()
    if token:  # the page keeps its reload-store entry (now an empty task, restorable)
        st.query_params[TASK_PARAM] = token


@_guarded
def on_restore() -> None:
    ws = workspace()
    if ws.restore_previous():
        sync_size_widgets(ws)
        set_results(None)


@_guarded
def on_rename(index: int, key: str) -> None:
    workspace().rename(index, str(st.session_state.get(key) or ""))
    rerun_only(rename_change(index))


@_guarded
def on_delete_support(index: int, example_id: str) -> None:
    workspace().delete_support(index, example_id)
    rerun_only(support_change(index))


@_guarded
def on_clear_class(index: int) -> None:
    workspace().clear_class(index)
    rerun_only(support_change(index))


@_guarded
def on_delete_query(example_id: str) -> None:
    workspace().delete_query(example_id)
    rerun_only(QUERY_CHANGE)


@_guarded
def on_clear_queries() -> None:
    ws = workspace()
    ws.queries = []
    ws.clear_messages(QUERIES)
    rerun_only(QUERY_CHANGE)


def on_query_drawn() -> None:
    """The query pad's Add: the drawing is handled in the queries' rerun, then the results rerun."""
    rerun_only(QUERY_CHANGE)


@_guarded
def on_query_label(example_id: str, key: str) -> None:
    label = st.session_state.get(key)
    workspace().set_query_label(example_id, None if label is None or label < 0 else int(label))
    rerun_only(label_change(example_id))


@_guarded
def on_upload(target: str, key: str) -> None:
    """Files dropped on a class (or the queries): preprocess, fill free slots, empty the widget."""
    ws = workspace()
    files = st.session_state.get(key) or []
    if not isinstance(files, list):
        files = [files]
    batch: list[tuple[str, bytes]] = []
    for uploaded in files:
        try:
            batch.append((uploaded.name, uploaded.getvalue()))
        except Exception as error:  # noqa: BLE001 - a failed read is the file's problem
            ws.say(target, "error", f"“{uploaded.name}” could not be read: {error}")
    if batch:
        ws.ingest_files(target, batch, query_label=new_query_label() if target == QUERIES else None)
    ws.upload_generation[target] = ws.upload_generation.get(target, 0) + 1
    if target == QUERIES:
        rerun_only(QUERY_CHANGE)
    elif target.startswith("class-"):
        rerun_only(support_change(int(target.split("-")[1])))


@_guarded
def on_open_task(key: str) -> None:
    """A task file dropped on "Open task": the task is replaced only when the whole file is sound."""
    from app.persistence import open_task_file

    ws, uploaded = workspace(), st.session_state.get(key)
    ws.upload_generation[TASK_PARAM] = ws.upload_generation.get(TASK_PARAM, 0) + 1
    if uploaded is not None and open_task_file(ws, str(getattr(uploaded, "name", "the file")), uploaded.getvalue()):
        sync_size_widgets(ws)
        set_results(None)


@_guarded
def on_bulk_label(key: str) -> None:
    """"Label several": every picked query gets the chosen class."""
    ws = workspace()
    picked = list(st.session_state.get(key) or [])
    label = st.session_state.get(BULK_LABEL_CLASS, -1)
    ws.clear_messages(QUERIES)
    changed = ws.set_labels(picked, None if label is None or label < 0 else int(label))
    ws.say(QUERIES, "success", f"{changed} quer{'y' if changed == 1 else 'ies'} relabelled.")
    rerun_only(QUERY_CHANGE)


@_guarded
def on_random_seed() -> None:
    st.session_state[SEED] = random.randint(0, NEW_SEED_RANGE)
    st.session_state[SAMPLE_NOW] = True


@_guarded
def on_sample() -> None:
    st.session_state[SAMPLE_NOW] = True
