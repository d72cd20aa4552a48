"""The Streamlit page: build a few-shot task, choose algorithms, compare how each adapts.

Layout: the sidebar chooses what runs (algorithms with a checkpoint, inner-loop settings, device);
the main area has a task toolbar (N, K, Omniglot sampling), the task builder on the left (one
drawing pad per class plus its examples, then the queries) and the results on the right.

State: every session keeps its own :class:`~app.workspace.Workspace` and last results in
``st.session_state``; loaded models are cached once per process and only read. All maths happens in
:mod:`engine.compare`.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st
import torch

from app import charts
from app.canvas import DrawingDecodeError, decode_data_url, drawing_pad
from app.models import ModelEntry, fingerprint, load_models, models_dir
from app.workspace import MAX_SHOTS, MAX_WAYS, MIN_SHOTS, MIN_WAYS, QUERIES, Example, Workspace, class_target
from engine.compare import AlgorithmResult, TaskInputError, compare, effective_settings, ranked
from engine.device import describe_device, keep_freed_memory, resolve_device
from engine.learners import AdaptSettings
from engine.optim import INNER_OPTIMIZERS

THREADS_ENV = "META_PLAYGROUND_THREADS"
WORKERS_ENV = "META_PLAYGROUND_WORKERS"
MAX_UPLOAD_MB = 25
DETAILED_QUERY_LIMIT = 12
"""Above this many queries, per-query probability charts are opt-in (each chart costs a little)."""
PAD_SIZE = 140
QUERY_CARD_WIDTH = 128
LAYOUTS = ("auto", "side by side", "results below")
MODEL_DEFAULT = "model default"
THUMB_WIDTH = 64
NETWORK_WIDTH = 46

CSS = """
<style>
/* compact example cards */
.st-key-builder [data-testid="stImage"] img { image-rendering: auto; border-radius: 4px; }
div[class*="st-key-net-"] img, div[class*="st-key-qnet-"] img { image-rendering: pixelated; }
.mp-empty { width: 64px; height: 64px; border: 1.5px dashed rgba(128,128,128,0.45); border-radius: 6px;
            display: flex; align-items: center; justify-content: center; font-size: 11px;
            color: rgba(128,128,128,0.9); }
.mp-caption { font-size: 11px; color: rgba(120,120,120,1); line-height: 1.1; margin-top: -4px; }
.mp-model-note { font-size: 0.8em; opacity: 0.75; }
[data-testid="stMainBlockContainer"] { padding-top: 2.2rem; }
@media (max-width: 1439px) {
  .st-key-layout-auto > [data-testid="stLayoutWrapper"] > [data-testid="stHorizontalBlock"] {
    flex-wrap: wrap; row-gap: 2rem; }
  .st-key-layout-auto > [data-testid="stLayoutWrapper"] > [data-testid="stHorizontalBlock"] > [data-testid="stColumn"] {
    flex: 1 1 100% !important; width: 100% !important; min-width: 100% !important; }
}
.st-key-predictions table { font-size: 13px; }
.st-key-predictions td, .st-key-predictions th { padding: 3px 8px !important; }
</style>
"""


# --------------------------------------------------------------------------- process-wide caches


@st.cache_resource(show_spinner="Loading the trained models…", max_entries=2)
def _models(directory: str, token: tuple[Any, ...], device: str) -> dict[str, ModelEntry]:
    """Checkpoints loaded once per process (per version of the files on disk); never modified."""
    return load_models(Path(directory), device=device)


def compute_threads() -> int:
    """PyTorch threads per comparison: ``$META_PLAYGROUND_THREADS``, else a quarter of the cores
    (at least 1, at most 4). These networks are tiny: on a 2-core machine one thread is about as
    fast as two when idle and many times faster when anything else is running (a training run,
    another session), where two threads fight over the cores."""
    env = os.environ.get(THREADS_ENV, "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(4, (os.cpu_count() or 1) // 4))


def compute_workers(algorithms: int) -> int:
    """Algorithms adapted at once per comparison (``$META_PLAYGROUND_WORKERS``, else the cores
    divided by the threads each uses, at most 4): ``compare`` runs them in threads, each on its own
    core (the README's Performance section has ``python -m engine.bench``'s figures for both ways)."""
    env = os.environ.get(WORKERS_ENV, "")
    workers = int(env) if env.isdigit() and int(env) > 0 else min(4, (os.cpu_count() or 1) // compute_threads())
    return max(1, min(workers, algorithms))


@st.cache_resource(show_spinner=False)
def _device() -> tuple[str, str]:
    torch.set_num_threads(compute_threads())
    keep_freed_memory()
    device = resolve_device("auto")
    return str(device), describe_device(device)


@st.cache_resource(show_spinner="Loading the Omniglot evaluation split (first time only)…", max_entries=1)
def _evaluation_split(data_dir: str) -> Any:
    from engine.data.omniglot import load_split

    return load_split(data_dir, "evaluation", progress=False)


def omniglot_status() -> tuple[str | None, str | None]:
    """(data dir, None) when the evaluation split is on disk, else (None, how to get it)."""
    try:
        from engine.data.omniglot import DatasetNotFoundError, find_source
        from engine.paths import resolve_data_dir
    except ImportError as error:  # pragma: no cover - engine incomplete
        return None, f"Omniglot sampling is unavailable: {error}"
    try:
        find_source(None, "evaluation")
    except DatasetNotFoundError as error:
        return None, str(error)
    return str(resolve_data_dir(None)), None


def get_models() -> dict[str, ModelEntry]:
    directory = models_dir()
    device, _ = _device()
    return _models(str(directory), fingerprint(directory), device)


# --------------------------------------------------------------------------- session state


@dataclass
class RunRecord:
    """The last comparison of this session."""

    key: tuple[Any, ...]
    results: list[AlgorithmResult]
    ways: int
    shots: int
    support_count: int
    queries: list[Example]
    wall_ms: float
    settings_text: str
    error: str | None = None
    # Compiled chart specs, keyed by what they show (labels and names can change without a rerun).
    charts: dict[tuple[Any, ...], dict[str, Any] | None] = dataclasses.field(default_factory=dict)

    def chart(self, key: tuple[Any, ...], build: Any) -> dict[str, Any] | None:
        if key not in self.charts:
            if len(self.charts) > 200:
                self.charts.clear()
            chart = build()
            self.charts[key] = None if chart is None else charts.to_spec(chart)
        return self.charts[key]


def workspace() -> Workspace:
    if "ws" not in st.session_state:
        st.session_state["ws"] = Workspace()
    return st.session_state["ws"]


def _init_widget_defaults(ws: Workspace) -> None:
    defaults = {"ways": ws.ways, "shots": ws.shots, "auto_run": True, "use_defaults": True, "steps": 10,
                "lr": 0.4, "optimizer": MODEL_DEFAULT,
                "seed": random.randint(0, 9999), "queries_per_class": 1, "layout": LAYOUTS[0],
                "finetune": MODEL_DEFAULT}
    for key, value in defaults.items():
        st.session_state.setdefault(key, value)


# --------------------------------------------------------------------------- callbacks


def _guarded(callback: Callable[..., None]) -> Callable[..., None]:
    """Widget callbacks run before the page script (outside its error guard): an unexpected error
    becomes a message at the top of the page instead of a traceback."""

    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            callback(*args, **kwargs)
        except Exception as error:  # noqa: BLE001
            st.session_state["callback_error"] = f"{type(error).__name__}: {error}"

    return run


@_guarded
def _on_size_change() -> None:
    workspace().set_size(st.session_state["ways"], st.session_state["shots"])


def _sync_size_widgets(ws: Workspace) -> None:
    st.session_state["ways"], st.session_state["shots"] = ws.ways, ws.shots


@_guarded
def _on_clear_all() -> None:
    ws = workspace()
    ws.clear_all()
    st.session_state["results"] = None
    st.query_params.clear()


@_guarded
def _on_restore() -> None:
    ws = workspace()
    if ws.restore_previous():
        _sync_size_widgets(ws)
        st.session_state["results"] = None


@_guarded
def _on_rename(index: int, key: str) -> None:
    workspace().rename(index, str(st.session_state.get(key) or ""))


@_guarded
def _on_delete_support(index: int, example_id: str) -> None:
    workspace().delete_support(index, example_id)


@_guarded
def _on_clear_class(index: int) -> None:
    workspace().clear_class(index)


@_guarded
def _on_delete_query(example_id: str) -> None:
    workspace().delete_query(example_id)


@_guarded
def _on_clear_queries() -> None:
    ws = workspace()
    ws.queries = []
    ws.clear_messages(QUERIES)


def query_label_key(ws: Workspace, example_id: str) -> str:
    """Widget key of a query's true-class box: a fresh widget whenever N changes, so the box always
    shows the stored label (a label of a hidden class is kept and comes back with N)."""
    return f"qlabel-{example_id}-{ws.generation}-{ws.ways}"


@_guarded
def _on_query_label(example_id: str, key: str) -> None:
    value = st.session_state.get(key)
    workspace().set_query_label(example_id, None if value is None or value < 0 else int(value))


@_guarded
def _on_upload(target: str, key: str) -> None:
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
def _on_random_seed() -> None:
    st.session_state["seed"] = random.randint(0, 99999)
    st.session_state["sample_now"] = True


@_guarded
def _on_sample() -> None:
    st.session_state["sample_now"] = True


# --------------------------------------------------------------------------- sidebar


def render_sidebar(models: dict[str, ModelEntry]) -> tuple[list[str], AdaptSettings, str]:
    available = [name for name, entry in models.items() if entry.available]
    with st.sidebar:
        st.header("What runs")
        st.multiselect(
            "Algorithms", available, default=available, key="algorithms",
            placeholder="No trained checkpoint yet" if not available else "Choose algorithms",
            help="Only algorithms with a checkpoint in the models folder can run.",
            disabled=not available,
        )
        selected = [name for name in st.session_state.get("algorithms", []) if name in available]
        for name, entry in models.items():
            if entry.available:
                icon = ":orange[:material/warning:]" if entry.untrained else ":green[:material/check_circle:]"
                text = entry.summary()
            else:
                icon = ":gray[:material/block:]" if entry.missing else ":red[:material/error:]"
                text = "unavailable: " + (entry.problem or "")
            st.markdown(f"{icon} **{name}** <span class='mp-model-note'>{html.escape(text)}</span>",
                        unsafe_allow_html=True)
        st.caption(f"Models folder: `{models_dir()}` (set `META_PLAYGROUND_MODELS` to change it).")

        st.subheader("Inner loop")
        use_defaults = st.toggle("Use each model's own defaults", key="use_defaults",
                                 help="Steps and learning rate each checkpoint was configured with for test time.")
        gradient = [name for name in selected if models[name].has_inner_loop]
        if use_defaults:
            lines = []
            # The optimizer picked below (a rerun later) can bring its own step size (Adam's 1e-3).
            picked = st.session_state.get("optimizer")
            shown = AdaptSettings(optimizer=picked if picked in INNER_OPTIMIZERS else None)
            for name in selected:
                learner = models[name].learner
                steps, lr, _ = effective_settings(learner, shown) if learner is not None else (None, None, None)
                if steps is None:
                    lines.append(f"{name}: no inner loop")
                else:
                    lines.append(f"{name}: {steps} steps, lr {lr:g}" if isinstance(lr, float)
                                 else f"{name}: {steps} steps, {lr} lr")
            if lines:
                st.caption(" · ".join(lines))
            steps_value, lr_value = None, None
        else:
            steps_value = int(st.slider("Inner steps", 0, 50, key="steps",
                                        help="Gradient steps on the support set (0 = the meta-learned "
                                             "initialisation with a zero head: uniform predictions)."))
            lr_value = float(st.number_input("Inner learning rate", min_value=1e-5, max_value=1e4, step=0.05,
                                             format="%.4g", key="lr",
                                             help="Very large values make the inner loop diverge: "
                                                  "the app then says so next to the algorithm."))
        optimizers = [MODEL_DEFAULT, *sorted(INNER_OPTIMIZERS)]
        if st.session_state.get("optimizer") not in optimizers:
            st.session_state["optimizer"] = MODEL_DEFAULT
        optimizer = st.selectbox("Inner-loop optimizer", optimizers, key="optimizer",
                                 help="Every optimizer the engine registers (engine.optim); the model default "
                                      "is the one each model was meta-trained with (sgd, or armijo for iMAML).")
        doc = [] if optimizer == MODEL_DEFAULT else (INNER_OPTIMIZERS[optimizer].__doc__ or "").strip().splitlines()
        if doc:
            st.caption(doc[0])
        if selected and not gradient:
            st.caption("None of the selected algorithms has an inner loop; these settings do not apply.")
        elif any(not models[n].has_inner_loop for n in selected):
            st.caption("ProtoNet-style learners have no inner loop: these settings do not apply to them.")
        finetune = render_finetune_choice(models, selected)

        st.subheader("Page")
        st.radio("Layout", LAYOUTS, key="layout", horizontal=True,
                 help="Auto: task and results side by side on screens at least 1440 px wide, results below "
                      "the task on narrower ones.")

        st.subheader("Device")
        _, description = _device()
        st.markdown(f":material/memory: `{description}`")
        st.caption("Models run on the GPU when one is available, otherwise on the CPU.")
    settings = AdaptSettings(steps=steps_value, lr=lr_value,
                             optimizer=None if optimizer == MODEL_DEFAULT else str(optimizer), finetune=finetune)
    return selected, settings, description


def render_finetune_choice(models: dict[str, ModelEntry], selected: list[str]) -> str | None:
    """Which weights adaptation changes, shown only when a selected algorithm offers the choice
    (pretrain: its head alone or every layer); None keeps each model's own default."""
    offering = [name for name in selected if models[name].finetune_modes]
    if not offering:
        return None
    modes = list(dict.fromkeys(mode for name in offering for mode in models[name].finetune_modes))
    options = [MODEL_DEFAULT, *modes]
    if st.session_state.get("finetune") not in options:
        st.session_state["finetune"] = MODEL_DEFAULT
    choice = st.selectbox(f"Fine-tune ({', '.join(offering)})", options, key="finetune",
                          help="head: fit only a fresh linear head on the support set (the pre-trained backbone "
                               "stays frozen); all: every layer, the backbone with a smaller learning rate.")
    return None if choice == MODEL_DEFAULT else str(choice)


# --------------------------------------------------------------------------- task toolbar


def render_toolbar(ws: Workspace) -> None:
    with st.container(horizontal=True, vertical_alignment="bottom", gap="medium", key="toolbar"):
        st.slider("N — classes", MIN_WAYS, MAX_WAYS, key="ways", on_change=_on_size_change, width=240)
        st.slider("K — examples per class", MIN_SHOTS, MAX_SHOTS, key="shots", on_change=_on_size_change,
                  width=240)
        data_dir, problem = omniglot_status()
        with st.popover("Sample an Omniglot task", icon=":material/casino:",
                        help="Fill the support set and queries with real characters from Omniglot's "
                             "evaluation split."):
            if problem:
                st.info(f"The Omniglot dataset is not available on this machine.\n\n{problem}")
                st.caption("From the repository root: `.venv/bin/python -m engine.data download --dest data/omniglot` "
                           "(or set `OMNIGLOT_DIR`), then reload this page.")
            st.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key="seed",
                            help="The same seed, N and K always give the same task.", disabled=bool(problem))
            st.number_input("Queries per class", min_value=0, max_value=10, step=1, key="queries_per_class",
                            disabled=bool(problem))
            with st.container(horizontal=True):
                st.button("Sample with this seed", on_click=_on_sample, disabled=bool(problem), type="primary",
                          key="sample_button")
                st.button("New seed", on_click=_on_random_seed, disabled=bool(problem), key="random_seed_button",
                          icon=":material/casino:")
            st.caption(f"Replaces the current task with an N-way K-shot task ({ws.ways}-way {ws.shots}-shot now). "
                       "“Restore previous task” brings yours back.")
        st.button("Clear all", on_click=_on_clear_all, key="clear_all", icon=":material/delete_sweep:",
                  help="Remove every example and query (Restore previous task undoes this).")
        if ws.previous is not None:
            st.button("Restore previous task", on_click=_on_restore, key="restore", icon=":material/undo:")
    if st.session_state.pop("sample_now", False):
        if data_dir is None:
            st.error(f"Cannot sample an Omniglot task: {problem}")
        else:
            sample_omniglot(ws, data_dir)


def sample_omniglot(ws: Workspace, data_dir: str) -> None:
    seed = int(st.session_state.get("seed", 0))
    queries = int(st.session_state.get("queries_per_class", 1))
    try:
        characters = _evaluation_split(data_dir)
        ws.load_omniglot(characters, ws.ways, ws.shots, queries, seed)
    except Exception as error:  # noqa: BLE001 - dataset problems are shown, the app keeps running
        st.error(f"Could not sample an Omniglot task: {error}")
        return
    st.session_state["results"] = None
    # The address bar now brings this task back (and can be shared): ?seed=..&ways=..&shots=..&queries=..
    st.query_params.from_dict({"seed": str(seed), "ways": str(ws.ways), "shots": str(ws.shots),
                               "queries": str(queries)})


def apply_task_link(ws: Workspace) -> None:
    """On a session's first run, ``?seed=S&ways=N&shots=K&queries=Q`` samples that Omniglot task."""
    if st.session_state.get("_link_checked"):
        return
    st.session_state["_link_checked"] = True
    params = st.query_params
    if "seed" not in params:
        return
    try:
        seed = int(params["seed"])
        ways = int(params.get("ways", ws.ways))
        shots = int(params.get("shots", ws.shots))
        queries = int(params.get("queries", 1))
    except ValueError:
        st.warning("The link's task parameters are not numbers; starting with an empty task.")
        return
    ws.set_size(ways, shots)
    _sync_size_widgets(ws)
    st.session_state["seed"] = max(0, seed)
    st.session_state["queries_per_class"] = min(max(queries, 0), 10)
    st.session_state["sample_now"] = True


# --------------------------------------------------------------------------- builder


def _show_messages(ws: Workspace, target: str) -> None:
    for message in ws.messages_for(target):
        {"error": st.error, "warning": st.warning, "info": st.info, "success": st.success}[message.level](
            message.text)


def _handle_pad(ws: Workspace, key: str, target: str, submission: dict[str, Any] | None) -> bool:
    """Add a new drawing from pad ``key``; True when it was added."""
    if submission is None:
        return False
    ws.clear_messages(target)
    try:
        data = decode_data_url(submission.get("png"))
    except DrawingDecodeError as error:
        ws.say(target, "error", str(error))
        return False
    return ws.ingest(target, data, "drawing", "drawing") is not None


def _example_card(example: Example, key: str, on_delete: Any, args: tuple[Any, ...]) -> None:
    """The example as given, the 28x28 input the network sees under it, and a delete button."""
    with st.container(width=THUMB_WIDTH + 8, gap="xxsmall", key=f"card-{key}"):
        st.image(example.original_url, width=THUMB_WIDTH)
        with st.container(key=f"net-{key}", gap=None, horizontal=True, vertical_alignment="bottom"):
            st.image(example.network_url, width=NETWORK_WIDTH)
            st.button("", key=f"del-{key}", on_click=on_delete, args=args, type="tertiary", icon=":material/close:",
                      help="Delete this example")


def render_class(ws: Workspace, index: int) -> None:
    """One support class: its drawing pad on the left; name, tools, examples and messages on the right."""
    target = class_target(index)
    support_class = ws.classes[index]
    pad_key = f"pad-{target}"
    with st.container(border=True, key=f"row-{target}", horizontal=True, gap="medium"):
        full = support_class.first_free(ws.shots) is None
        submission = drawing_pad(
            pad_key, label="Add", size=PAD_SIZE, seen=ws.pad_seen, full=full,
            full_text=f"Full ({ws.shots}/{ws.shots}): delete an example or raise K.",
            hint="Draw, then Add (Enter).", aria=f"drawing pad for class {index + 1}", focus=ws.focus_token(pad_key))
        if _handle_pad(ws, pad_key, target, submission) and support_class.first_free(ws.shots) is None:
            ws.request_focus(_next_pad(ws, index))
        with st.container(gap="small", key=f"side-{target}"):
            count = len(support_class.examples(ws.shots))
            with st.container(horizontal=True, vertical_alignment="center", gap="small"):
                st.markdown(f"**{index + 1}**", width="content")
                name_key = f"name-{index}-{ws.generation}"
                st.text_input("Class name", value=support_class.name, key=name_key, on_change=_on_rename,
                              args=(index, name_key), label_visibility="collapsed", placeholder=f"Class {index + 1}",
                              max_chars=60, width=170)
                color = "green" if count == ws.shots else ("orange" if count else "red")
                st.badge(f"{count}/{ws.shots}", color=color, help="Examples in this class / K")
                with st.popover(":material/upload:", help="Upload images into this class (several at once fill "
                                "its empty slots in order)", key=f"upload-pop-{target}"):
                    upload_key = f"upload-{target}-{ws.upload_generation.get(target, 0)}-{ws.generation}"
                    st.file_uploader(f"Images for class {index + 1}", accept_multiple_files=True,
                                     key=upload_key, on_change=_on_upload, args=(target, upload_key),
                                     max_upload_size=MAX_UPLOAD_MB,
                                     help="Fills this class's empty slots in order. Photos of ink on paper work too.")
                st.button("", key=f"clear-{target}-{ws.generation}", on_click=_on_clear_class, args=(index,),
                          type="tertiary", icon=":material/delete:", help="Delete every example of this class",
                          disabled=not any(e is not None for e in support_class.slots))
            with st.container(horizontal=True, gap="small", key=f"slots-{target}", wrap=True):
                for slot, example in enumerate(support_class.slots[: ws.shots]):
                    if example is None:
                        st.markdown(f"<div class='mp-empty'>{slot + 1}</div>", unsafe_allow_html=True,
                                    width="content")
                    else:
                        _example_card(example, example.id, _on_delete_support, (index, example.id))
            hidden = support_class.hidden_count(ws.shots)
            if hidden:
                st.caption(f"{hidden} more example{'s' if hidden > 1 else ''} kept beyond K = {ws.shots}: raise K "
                           f"to use {'them' if hidden > 1 else 'it'}.")
            if not support_class.examples(ws.shots) and not ws.messages_for(target):
                st.caption("No examples yet: draw one on the pad (then Add), or upload images.")
            _show_messages(ws, target)


def _next_pad(ws: Workspace, index: int) -> str:
    """Where to move after class ``index`` fills up: the next class with room, else the query pad."""
    for other in list(range(index + 1, ws.ways)) + list(range(0, index)):
        if ws.classes[other].first_free(ws.shots) is not None:
            return f"pad-{class_target(other)}"
    return "pad-queries"


def render_queries(ws: Workspace) -> None:
    """The query pad and uploads on the left; each query with its network input and true class."""
    target = QUERIES
    with st.container(border=True, key="row-queries", horizontal=True, gap="medium"):
        with st.container(width=PAD_SIZE + 4, gap="small", key="side-queries-pad"):
            submission = drawing_pad("pad-queries", label="Add query", size=PAD_SIZE, seen=ws.pad_seen,
                                     hint="Draw, then Add (Enter).", aria="drawing pad for queries",
                                     focus=ws.focus_token("pad-queries"))
            _handle_pad(ws, "pad-queries", target, submission)
            upload_key = f"upload-{target}-{ws.upload_generation.get(target, 0)}-{ws.generation}"
            with st.popover("Upload", icon=":material/upload:", width="stretch",
                            help="Upload one or more query images"):
                st.file_uploader("Query images", accept_multiple_files=True, key=upload_key,
                                 on_change=_on_upload, args=(target, upload_key), max_upload_size=MAX_UPLOAD_MB)
        with st.container(gap="small", key="side-queries"):
            with st.container(horizontal=True, vertical_alignment="center", gap="small"):
                st.markdown(f"**{len(ws.queries)} quer{'y' if len(ws.queries) == 1 else 'ies'}**", width="content")
                st.caption("Characters to classify. Pick each one's true class to get accuracies.", width="content")
                if ws.queries:
                    st.button("Clear", key=f"clear-queries-{ws.generation}", on_click=_on_clear_queries,
                              type="tertiary", icon=":material/delete:", help="Delete every query")
            options = [-1] + list(range(ws.ways))
            names = ws.class_names()

            def label_text(value: int) -> str:
                return "class?" if value < 0 else f"{value + 1}. {names[value]}"

            with st.container(horizontal=True, gap="small", key="slots-queries", wrap=True):
                for number, query in enumerate(ws.queries):
                    example = query.example
                    with st.container(width=QUERY_CARD_WIDTH, gap="xxsmall", key=f"qcard-{example.id}"):
                        with st.container(horizontal=True, vertical_alignment="bottom", gap="xsmall"):
                            st.image(example.original_url, width=THUMB_WIDTH - 8)
                            with st.container(key=f"qnet-{example.id}", gap=None, width=NETWORK_WIDTH - 6):
                                st.image(example.network_url, width=NETWORK_WIDTH - 6)
                        with st.container(horizontal=True, vertical_alignment="center", gap="xxsmall"):
                            st.markdown(f"<div class='mp-caption'>query {number + 1}</div>", unsafe_allow_html=True,
                                        width="stretch")
                            st.button("", key=f"qdel-{example.id}", on_click=_on_delete_query, args=(example.id,),
                                      type="tertiary", icon=":material/close:", help=f"Delete query {number + 1}")
                        key = query_label_key(ws, example.id)
                        label = ws.query_label(query)
                        st.selectbox(f"True class of query {number + 1}", options,
                                     index=options.index(label if label is not None else -1),
                                     format_func=label_text, key=key, on_change=_on_query_label,
                                     args=(example.id, key), label_visibility="collapsed")
            if not ws.queries and not ws.messages_for(target):
                st.caption("No queries yet: draw one on the pad (then Add query), upload images, or sample an "
                           "Omniglot task.")
            _show_messages(ws, target)


def render_builder(ws: Workspace) -> None:
    with st.container(key="builder", gap="small"):
        if ws.omniglot:
            o = ws.omniglot
            st.info(f"Omniglot evaluation task, seed **{o['seed']}** ({o['ways']}-way {o['shots']}-shot, "
                    f"{o['queries_per_class']} quer{'y' if o['queries_per_class'] == 1 else 'ies'} per class). "
                    "The same seed, N and K bring this task back.", icon=":material/casino:")
        st.markdown(f"#### Support set · {ws.ways}-way {ws.shots}-shot")
        for index in range(ws.ways):
            render_class(ws, index)
        hidden = ws.hidden_classes_with_examples()
        if hidden:
            st.caption(f"Classes {', '.join(str(i + 1) for i in hidden)} keep their examples while hidden: "
                       "raise N to bring them back.")
        st.markdown("#### Queries")
        render_queries(ws)


# --------------------------------------------------------------------------- running


def task_problems(ws: Workspace) -> dict[str, str]:
    problems = {}
    for index in ws.empty_classes():
        problems[class_target(index)] = (f"{ws.display_name(index)} has no examples: draw or upload at least one "
                                         "before running.")
    return problems


def settings_text(settings: AdaptSettings) -> str:
    finetune = "" if settings.finetune is None else f", fine-tuning {settings.finetune}"
    optimizer = "each model's inner optimizer" if settings.optimizer is None else settings.optimizer
    if settings.steps is None and settings.lr is None:
        if settings.optimizer is None:
            return f"each model's default steps, learning rate and inner optimizer{finetune}"
        return f"each model's default steps and learning rate, {optimizer}{finetune}"
    return f"{settings.steps} steps, lr {settings.lr:g}, {optimizer}{finetune}"


def run_comparison(ws: Workspace, models: dict[str, ModelEntry], selected: list[str], settings: AdaptSettings,
                   key: tuple[Any, ...]) -> RunRecord:
    support_x, support_y = ws.support_arrays()
    query_x, query_y = ws.query_arrays()
    learners = {name: models[name].learner for name in selected if models[name].learner is not None}
    torch.set_num_threads(compute_threads())
    start = time.perf_counter()
    try:
        results = compare(learners, support_x, support_y, ws.ways, query_x, settings, query_y,
                          workers=compute_workers(len(learners)))
        error = None
    except TaskInputError as problem:
        results, error = [], str(problem)
    wall_ms = (time.perf_counter() - start) * 1000.0
    return RunRecord(key=key, results=results, ways=ws.ways, shots=ws.shots, support_count=len(support_y),
                     queries=[q.example for q in ws.queries], wall_ms=wall_ms, settings_text=settings_text(settings),
                     error=error)


def current_labels(ws: Workspace, record: RunRecord) -> list[int | None]:
    """True class of each query in the record, from the user's *current* labels."""
    by_id = {q.example.id: ws.query_label(q) for q in ws.queries}
    labels = []
    for example in record.queries:
        label = by_id.get(example.id)
        labels.append(label if label is not None and label < record.ways else None)
    return labels


def scored(results: list[AlgorithmResult], labels: list[int | None]) -> list[AlgorithmResult]:
    out = []
    for result in results:
        correct = labelled = 0
        if result.ok and result.predictions is not None:
            for prediction, label in zip(result.predictions, labels):
                if label is not None:
                    labelled += 1
                    correct += int(prediction) == label
        accuracy = correct / labelled if labelled else None
        out.append(dataclasses.replace(result, correct=correct, labelled=labelled, query_accuracy=accuracy))
    return out


def render_results(ws: Workspace, models: dict[str, ModelEntry], selected: list[str], settings: AdaptSettings,
                   problems: dict[str, str], device_text: str) -> None:
    st.markdown("#### Results")
    key = (ws.task_key(), tuple(selected), settings, tuple(id(models[n].learner) for n in selected))
    runnable = bool(selected) and not problems
    with st.container(horizontal=True, vertical_alignment="center", key="run-controls"):
        clicked = st.button(f"Run {len(selected)} algorithm{'s' if len(selected) != 1 else ''}", type="primary",
                            icon=":material/play_arrow:", key="run", disabled=not selected, shortcut="ctrl+enter",
                            help="Adapt every selected algorithm to the support set and classify the queries "
                                 "(Ctrl+Enter).")
        auto = st.toggle("Auto-run", key="auto_run", help="Run again whenever the task or the settings change.")
    record: RunRecord | None = st.session_state.get("results")

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
        text = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        st.warning(f"Not ready to run: {text} {'have' if len(names) > 1 else 'has'} no examples yet "
                   "(see the support set).")
        if clicked:
            for target, problem in problems.items():
                ws.clear_messages(target)
                ws.say(target, "error", problem)
            st.rerun()

    if runnable and (clicked or (auto and (record is None or record.key != key))):
        with st.spinner(f"Adapting {len(selected)} algorithm{'s' if len(selected) != 1 else ''}…"):
            record = run_comparison(ws, models, selected, settings, key)
        st.session_state["results"] = record

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
    show_record(ws, record, device_text)


def show_record(ws: Workspace, record: RunRecord, device_text: str) -> None:
    labels = current_labels(ws, record)
    results = scored(record.results, labels)
    names = [r.name for r in results]
    class_names = [ws.display_name(i) for i in range(record.ways)]
    labelled = sum(label is not None for label in labels)
    st.caption(f"{record.ways}-way, {record.support_count} support examples, {len(record.queries)} "
               f"quer{'y' if len(record.queries) == 1 else 'ies'} ({labelled} labelled) · {record.settings_text} · "
               f"{len(results)} algorithm{'s' if len(results) != 1 else ''} in {record.wall_ms:.0f} ms on "
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

    curves = st.columns(2)
    with curves[0]:
        st.vega_lite_chart(record.chart(("loss",), lambda: charts.loss_chart(results, names)), width="stretch")
    with curves[1]:
        st.vega_lite_chart(record.chart(("accuracy",), lambda: charts.accuracy_chart(results, names)),
                           width="stretch")
    if any(r.ok for r in results):
        st.vega_lite_chart(record.chart(("time",), lambda: charts.time_chart(results, names)), width="stretch")

    if not record.queries:
        st.info("Add queries (draw or upload them under the support set) to see each algorithm's predictions.")
        return
    predictions_table(results, record, labels, class_names)
    show_all = True
    if len(record.queries) > DETAILED_QUERY_LIMIT:
        show_all = st.toggle(f"Probability charts for all {len(record.queries)} queries", key="all_query_charts",
                             value=False)
    limit = len(record.queries) if show_all else DETAILED_QUERY_LIMIT
    chart_width = 900 if st.session_state.get("layout") == LAYOUTS[2] else 380
    for index, example in enumerate(record.queries[:limit]):
        query_block(record, results, index, example, labels[index], class_names, chart_width)
    if limit < len(record.queries):
        st.caption(f"{len(record.queries) - limit} more queries are in the predictions table above.")


def summary_table(results: list[AlgorithmResult], labelled: int) -> None:
    ordered = ranked(results) if labelled else results
    rows = []
    for rank, result in enumerate(ordered, start=1):
        status = "failed" if result.error else (_short_warning(result.warning) if result.warning else "ok")
        rows.append({
            "rank": rank if labelled and result.ok else None,
            "algorithm": result.name,
            "query accuracy": result.query_accuracy,
            "correct": f"{result.correct}/{result.labelled}" if result.labelled else "–",
            "support loss": result.final_loss,
            "inner loop": _inner_loop_text(result),
            "adapt ms": round(result.adapt_ms, 1),
            "status": status,
        })
    frame = pd.DataFrame(rows)
    if not labelled:
        frame = frame.drop(columns=["rank", "query accuracy", "correct"])
        st.caption("Label the queries (the box under each one) to rank the algorithms by query accuracy.")
    st.dataframe(
        frame, hide_index=True, width="stretch", key="summary",
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


def _inner_loop_text(result: AlgorithmResult) -> str:
    if not result.has_inner_loop:
        return "none"
    lr = "?" if result.lr is None else (f"{result.lr:g}" if isinstance(result.lr, float) else str(result.lr))
    return f"{result.steps} × {lr}"


def _short_warning(warning: str | None) -> str:
    if not warning:
        return ""
    return "diverged" if "diverg" in warning else warning[:40]


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
            p = float(result.probabilities[index, predicted])
            mark = "" if label is None else (" :green[**✓**]" if predicted == label else " :red[**✗**]")
            cells.append(f"**{predicted + 1}** ({p:.0%}){mark}")
        truth = "?" if label is None else f"{label + 1}. {_md(class_names[label])}"
        lines.append(f"| {index + 1} | {truth} | " + " | ".join(cells) + " |")
    st.markdown("**Predictions**: each algorithm's predicted class (number) and its probability")
    with st.container(key="predictions"):
        st.markdown("\n".join(lines))


def _md(text: str) -> str:
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
            with st.container(width=NETWORK_WIDTH + 8, gap="xsmall", key=f"qnet-res-{index}"):
                st.image(example.original_url, width=NETWORK_WIDTH)
                st.image(example.network_url, width=NETWORK_WIDTH)
            spec = record.chart(("query", index, label, tuple(class_names), chart_width),
                                lambda: charts.probability_chart(results, index, class_names, label,
                                                                 width=chart_width))
            if spec is None:
                st.caption("No algorithm produced predictions.")
            else:
                st.vega_lite_chart(spec, width="content")


# --------------------------------------------------------------------------- page


def render() -> None:
    ws = workspace()
    _init_widget_defaults(ws)
    apply_task_link(ws)
    st.markdown(CSS, unsafe_allow_html=True)
    models = get_models()
    selected, settings, device_text = render_sidebar(models)

    st.title(":material/draw: Few-shot meta-learning playground")
    if st.session_state.get("callback_error"):
        st.error(f"That action failed ({st.session_state.pop('callback_error')}); your drawings are kept.")
    st.caption("Draw (or upload, or sample) a few examples of each class, pick meta-learning algorithms, and "
               "compare how each one adapts to your task and classifies your queries.")
    render_toolbar(ws)
    layout = st.session_state.get("layout", LAYOUTS[0])
    if layout == LAYOUTS[2]:
        left, right = st.container(), st.container()
    else:
        # "auto": side by side on wide screens, stacked below 1440 px (see CSS).
        with st.container(key=f"layout-{'auto' if layout == LAYOUTS[0] else 'columns'}"):
            left, right = st.columns([1.15, 1], gap="large")
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
