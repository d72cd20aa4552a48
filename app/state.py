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

from app.workspace import QUERIES, Workspace

if TYPE_CHECKING:
    from app.run import RunRecord

# --------------------------------------------------------------------------- keys of the session's own data

WORKSPACE: Final = "ws"
"""The session's :class:`~app.workspace.Workspace` (tests read it as ``at.session_state["ws"]``)."""
RESULTS: Final = "results"
"""The last comparison (:class:`~app.run.RunRecord`) or None."""
CALLBACK_ERROR: Final = "callback_error"
"""A failed widget callback's message, shown (once) at the top of the next page run."""
SAMPLE_NOW: Final = "sample_now"
"""Set by the sample buttons and task links: sample an Omniglot task during this page run."""
LINK_CHECKED: Final = "_link_checked"
"""The task link (``?seed=..``) is applied on a session's first run only."""

# --------------------------------------------------------------------------- widget keys (their values)

WAYS: Final = "ways"
SHOTS: Final = "shots"
ALGORITHMS: Final = "algorithms"
USE_DEFAULTS: Final = "use_defaults"
STEPS: Final = "steps"
LR: Final = "lr"
OPTIMIZER: Final = "optimizer"
FINETUNE: Final = "finetune"
LAYOUT: Final = "layout"
SEED: Final = "seed"
QUERIES_PER_CLASS: Final = "queries_per_class"
AUTO_RUN: Final = "auto_run"
ALL_QUERY_CHARTS: Final = "all_query_charts"
SUMMARY_TABLE: Final = "summary"
RUN_BUTTON: Final = "run"
CLEAR_ALL_BUTTON: Final = "clear_all"
RESTORE_BUTTON: Final = "restore"
SAMPLE_BUTTON: Final = "sample_button"
RANDOM_SEED_BUTTON: Final = "random_seed_button"

LAYOUTS: Final = ("auto", "side by side", "results below")
MODEL_DEFAULT: Final = "model default"
"""The optimizer / fine-tune choice that keeps each model's own setting."""
MAX_QUERIES_PER_CLASS: Final = 10
INITIAL_SEED_RANGE: Final = 9999
NEW_SEED_RANGE: Final = 99999


def pad_key(target: str) -> str:
    """Drawing pad of a class (:func:`~app.workspace.class_target`) or of the queries; its component
    state (the pad's submission) lives under this key."""
    return f"pad-{target}"


QUERY_PAD: Final = pad_key(QUERIES)


def class_name_key(index: int, generation: int) -> str:
    """A class's name box: a fresh widget when the task is replaced, so it shows the new name."""
    return f"name-{index}-{generation}"


def upload_key(ws: Workspace, target: str) -> str:
    """A class's (or the queries') file uploader: a fresh, empty widget after each handled batch."""
    return f"upload-{target}-{ws.upload_generation.get(target, 0)}-{ws.generation}"


def upload_popover_key(target: str) -> str:
    return f"upload-pop-{target}"


def clear_class_key(target: str, generation: int) -> str:
    return f"clear-{target}-{generation}"


def clear_queries_key(generation: int) -> str:
    return f"clear-queries-{generation}"


def delete_example_key(example_id: str) -> str:
    return f"del-{example_id}"


def delete_query_key(example_id: str) -> str:
    return f"qdel-{example_id}"


def query_label_key(ws: Workspace, example_id: str) -> str:
    """Widget key of a query's true-class box: a fresh widget whenever N changes, so the box always
    shows the stored label (a label of a hidden class is kept and comes back with N)."""
    return f"qlabel-{example_id}-{ws.generation}-{ws.ways}"


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
    st.session_state[SEED] = max(0, seed)
    st.session_state[QUERIES_PER_CLASS] = min(max(queries, 0), MAX_QUERIES_PER_CLASS)
    st.session_state[SAMPLE_NOW] = True


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


@_guarded
def on_size_change() -> None:
    workspace().set_size(st.session_state[WAYS], st.session_state[SHOTS])


@_guarded
def on_clear_all() -> None:
    workspace().clear_all()
    set_results(None)
    st.query_params.clear()


@_guarded
def on_restore() -> None:
    ws = workspace()
    if ws.restore_previous():
        sync_size_widgets(ws)
        set_results(None)


@_guarded
def on_rename(index: int, key: str) -> None:
    workspace().rename(index, str(st.session_state.get(key) or ""))


@_guarded
def on_delete_support(index: int, example_id: str) -> None:
    workspace().delete_support(index, example_id)


@_guarded
def on_clear_class(index: int) -> None:
    workspace().clear_class(index)


@_guarded
def on_delete_query(example_id: str) -> None:
    workspace().delete_query(example_id)


@_guarded
def on_clear_queries() -> None:
    ws = workspace()
    ws.queries = []
    ws.clear_messages(QUERIES)


@_guarded
def on_query_label(example_id: str, key: str) -> None:
    label = st.session_state.get(key)
    workspace().set_query_label(example_id, None if label is None or label < 0 else int(label))


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
        ws.ingest_files(target, batch)
    ws.upload_generation[target] = ws.upload_generation.get(target, 0) + 1


@_guarded
def on_random_seed() -> None:
    st.session_state[SEED] = random.randint(0, NEW_SEED_RANGE)
    st.session_state[SAMPLE_NOW] = True


@_guarded
def on_sample() -> None:
    st.session_state[SAMPLE_NOW] = True
