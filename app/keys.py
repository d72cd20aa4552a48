"""The session-state keys: the session's own data and every widget's key, named once.

Only :mod:`app.state` reads or writes ``st.session_state``, under these names (it re-exports them); keys
that depend on an example, a class or the workspace's generation are built by the ``*_key`` functions,
so a widget and the code that reads it can never spell its key differently.
"""

from __future__ import annotations

from typing import Final

from app.workspace import QUERIES, Workspace

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
PERSISTED: Final = "_persisted"
"""Signature of the task as last written to the reload store (see app.persistence.signature)."""
RESTORED_ALGORITHMS: Final = "_restored_algorithms"
"""Algorithms chosen before a reload: the algorithm selector's starting value, once."""
TASK_PARAM: Final = "task"
"""The address's query parameter holding the reload-store token (``?task=...``)."""

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
SAVE_TASK_BUTTON: Final = "save_task"
NEW_QUERY_LABEL: Final = "new_query_label"  # the class new query drawings and uploads get (-1: unknown)
BULK_LABEL_CLASS: Final = "bulk_label_class"
BULK_LABEL_BUTTON: Final = "bulk_label_apply"

# The "Inside the adaptation" views (app.views): each one's switch, then its own controls.
VIEW_PLAYBACK: Final = "view_playback"
VIEW_EMBEDDING: Final = "view_embedding"
VIEW_SALIENCY: Final = "view_saliency"
VIEW_EXPORT: Final = "view_export"
PLAYBACK_STEP: Final = "playback_step"
PLAYBACK_PLAY: Final = "playback_play"
EMBEDDING_ALGORITHM: Final = "embedding_algorithm"
SALIENCY_ALGORITHM: Final = "saliency_algorithm"
SALIENCY_QUERY: Final = "saliency_query"
SALIENCY_METHOD: Final = "saliency_method"
EXPORT_CSV: Final = "export_csv"
EXPORT_JSON: Final = "export_json"
EXPORT_CHART: Final = "export_chart"
EXPORT_PNG: Final = "export_png"
EXPORT_SVG: Final = "export_svg"

LAYOUTS: Final = ("auto", "side by side", "results below")
MODEL_DEFAULT: Final = "model default"
"""The optimizer / fine-tune choice that keeps each model's own setting."""
MAX_QUERIES_PER_CLASS: Final = 10
INITIAL_SEED_RANGE: Final = 9999
NEW_SEED_RANGE: Final = 99999
MAX_SEED: Final = 2**31 - 1
PERSISTED_SETTINGS: Final = (ALGORITHMS, USE_DEFAULTS, STEPS, LR, OPTIMIZER, FINETUNE, LAYOUT, AUTO_RUN, SEED,
                             QUERIES_PER_CLASS, NEW_QUERY_LABEL)
"""Widget values kept with the task across a reload (N and K are the task's own)."""


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


def open_task_key(ws: Workspace) -> str:
    """The "Open task" uploader: a fresh, empty widget after each file."""
    return f"open-task-{ws.upload_generation.get(TASK_PARAM, 0)}"


def bulk_label_queries_key(ws: Workspace) -> str:
    """The query picker of "Label several": a fresh widget whenever the queries change."""
    ids = "".join(q.example.id[:6] for q in ws.queries)
    return f"bulk-queries-{ws.generation}-{len(ws.queries)}-{abs(hash(ids)) % 10**8}"


# --------------------------------------------------------------------------- fragments (partial reruns)
# The builder and the results are one fragment (a change of N, K or the algorithms reruns it whole);
# inside it, keyed fragments (each class's row, the queries' row, the results and the parts of the
# results that show labels) rerun alone when only they depend on what changed (see :func:`app.state.rerun_only`).
QUERIES_FRAGMENT: Final = "frag-queries"
BULK_LABEL_FRAGMENT: Final = "frag-bulk-label"
KEEP_TASK_FRAGMENT: Final = "frag-keep-task"
RESULTS_FRAGMENT: Final = "frag-results"
SCORES_FRAGMENT: Final = "frag-scores"
VIEWS_FRAGMENT: Final = "frag-views"
PREDICTIONS_FRAGMENT: Final = "frag-predictions"
QUERY_CHANGE: Final = (QUERIES_FRAGMENT, KEEP_TASK_FRAGMENT, RESULTS_FRAGMENT)
"""A query added, deleted or relabelled in bulk: the queries' row, the copy kept for reloads and
the results (the comparison predicts again; the adapted learners are kept)."""


def class_row_fragment(index: int) -> str:
    """The fragment of support class ``index``'s row (pad, name, tools, examples)."""
    return f"frag-class-{index}"


def support_change(index: int, *more: str) -> tuple[str, ...]:
    """Class ``index``'s examples changed: its row, the copy kept for reloads, the results (which
    adapt again), and ``more`` (the row whose pad gets the focus when this class fills up)."""
    return (class_row_fragment(index), *more, KEEP_TASK_FRAGMENT, RESULTS_FRAGMENT)


def rename_change(index: int) -> tuple[str, ...]:
    """Class ``index`` renamed: its row, the queries (their class boxes name it), the results."""
    return (class_row_fragment(index), QUERIES_FRAGMENT, KEEP_TASK_FRAGMENT, RESULTS_FRAGMENT)


def query_result_fragment(example_id: str) -> str:
    """The fragment of one query's result block."""
    return f"frag-query-result-{example_id}"


def label_change(example_id: str) -> tuple[str, ...]:
    """One query's true class picked: what shows labels (not the builder, the charts or the comparison)."""
    return (BULK_LABEL_FRAGMENT, KEEP_TASK_FRAGMENT, SCORES_FRAGMENT, VIEWS_FRAGMENT, PREDICTIONS_FRAGMENT,
            query_result_fragment(example_id))


__all__ = [
    "QUERIES_FRAGMENT", "BULK_LABEL_FRAGMENT", "KEEP_TASK_FRAGMENT", "RESULTS_FRAGMENT", "SCORES_FRAGMENT",
    "VIEWS_FRAGMENT", "PREDICTIONS_FRAGMENT", "QUERY_CHANGE", "query_result_fragment", "label_change",
    "class_row_fragment", "support_change", "rename_change",
    "WORKSPACE",
    "RESULTS",
    "CALLBACK_ERROR",
    "SAMPLE_NOW",
    "LINK_CHECKED",
    "PERSISTED",
    "RESTORED_ALGORITHMS",
    "TASK_PARAM",
    "WAYS",
    "SHOTS",
    "ALGORITHMS",
    "USE_DEFAULTS",
    "STEPS",
    "LR",
    "OPTIMIZER",
    "FINETUNE",
    "LAYOUT",
    "SEED",
    "QUERIES_PER_CLASS",
    "AUTO_RUN",
    "ALL_QUERY_CHARTS",
    "SUMMARY_TABLE",
    "RUN_BUTTON",
    "CLEAR_ALL_BUTTON",
    "RESTORE_BUTTON",
    "SAMPLE_BUTTON",
    "RANDOM_SEED_BUTTON",
    "SAVE_TASK_BUTTON",
    "NEW_QUERY_LABEL",
    "BULK_LABEL_CLASS",
    "BULK_LABEL_BUTTON",
    "VIEW_PLAYBACK",
    "VIEW_EMBEDDING",
    "VIEW_SALIENCY",
    "VIEW_EXPORT",
    "PLAYBACK_STEP",
    "PLAYBACK_PLAY",
    "EMBEDDING_ALGORITHM",
    "SALIENCY_ALGORITHM",
    "SALIENCY_QUERY",
    "SALIENCY_METHOD",
    "EXPORT_CSV",
    "EXPORT_JSON",
    "EXPORT_CHART",
    "EXPORT_PNG",
    "EXPORT_SVG",
    "LAYOUTS",
    "MODEL_DEFAULT",
    "MAX_QUERIES_PER_CLASS",
    "INITIAL_SEED_RANGE",
    "NEW_SEED_RANGE",
    "MAX_SEED",
    "PERSISTED_SETTINGS",
    "pad_key",
    "QUERY_PAD",
    "class_name_key",
    "upload_key",
    "upload_popover_key",
    "clear_class_key",
    "clear_queries_key",
    "delete_example_key",
    "delete_query_key",
    "query_label_key",
    "open_task_key",
    "bulk_label_queries_key",
]
