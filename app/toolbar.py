"""The task toolbar: N and K, sampling an Omniglot task (and task links), saving and opening task
files, clearing and restoring."""

from __future__ import annotations

import streamlit as st

from app import state
from app.persistence import MAX_TASK_FILE_BYTES, write_task
from app.resources import evaluation_split, omniglot_status
from app.task_builder import show_messages
from app.workspace import MAX_SHOTS, MAX_WAYS, MIN_SHOTS, MIN_WAYS, TASK, Workspace

SLIDER_WIDTH = 240
MAX_SEED = state.MAX_SEED
TASK_FILE_NAME = "meta-playground-task.zip"


def render_toolbar(ws: Workspace) -> None:
    with st.container(horizontal=True, vertical_alignment="bottom", gap="medium", key="toolbar"):
        st.slider("N — classes", MIN_WAYS, MAX_WAYS, key=state.WAYS, on_change=state.on_size_change,
                  width=SLIDER_WIDTH)
        st.slider("K — examples per class", MIN_SHOTS, MAX_SHOTS, key=state.SHOTS, on_change=state.on_size_change,
                  width=SLIDER_WIDTH)
        data_dir, problem = omniglot_status()
        with st.popover("Sample an Omniglot task", icon=":material/casino:",
                        help="Fill the support set and queries with real characters from Omniglot's "
                             "evaluation split."):
            if problem:
                st.info(f"The Omniglot dataset is not available on this machine.\n\n{problem}")
                st.caption("From the repository root: `.venv/bin/python -m engine.data download --dest data/omniglot` "
                           "(or set `OMNIGLOT_DIR`), then reload this page.")
            st.number_input("Seed", min_value=0, max_value=MAX_SEED, step=1, key=state.SEED,
                            help="The same seed, N and K always give the same task.", disabled=bool(problem))
            st.number_input("Queries per class", min_value=0, max_value=state.MAX_QUERIES_PER_CLASS, step=1,
                            key=state.QUERIES_PER_CLASS, disabled=bool(problem))
            with st.container(horizontal=True):
                st.button("Sample with this seed", on_click=state.on_sample, disabled=bool(problem), type="primary",
                          key=state.SAMPLE_BUTTON)
                st.button("New seed", on_click=state.on_random_seed, disabled=bool(problem),
                          key=state.RANDOM_SEED_BUTTON, icon=":material/casino:")
            st.caption(f"Replaces the current task with an N-way K-shot task ({ws.ways}-way {ws.shots}-shot now). "
                       "“Restore previous task” brings yours back.")
        st.download_button("Save task", data=lambda: write_task(ws, state.settings_snapshot()),
                           file_name=TASK_FILE_NAME, mime="application/zip", on_click="ignore",
                           key=state.SAVE_TASK_BUTTON, icon=":material/download:",
                           help="Download this task (drawings, uploads, names, labels and settings) as a zip of "
                                "PNGs and a JSON manifest, to keep or share; “Open task” reads it back.")
        with st.popover("Open task", icon=":material/folder_open:",
                        help="Open a task file saved with “Save task”."):
            open_key = state.open_task_key(ws)
            st.file_uploader("Task file (.zip)", type=["zip"], key=open_key, on_change=state.on_open_task,
                             args=(open_key,), max_upload_size=MAX_TASK_FILE_BYTES // (1024 * 1024),
                             help="Replaces the current task (“Restore previous task” brings it back). "
                                  "A damaged or foreign file changes nothing.")
        st.button("Clear all", on_click=state.on_clear_all, key=state.CLEAR_ALL_BUTTON, icon=":material/delete_sweep:",
                  help="Remove every example and query (Restore previous task undoes this).")
        if ws.previous is not None:
            st.button("Restore previous task", on_click=state.on_restore, key=state.RESTORE_BUTTON,
                      icon=":material/undo:")
    if state.take_sample_request():
        if data_dir is None:
            st.error(f"Cannot sample an Omniglot task: {problem}")
        else:
            sample_omniglot(ws, data_dir)
    show_messages(ws, TASK)


def sample_omniglot(ws: Workspace, data_dir: str) -> None:
    seed, queries = state.sample_request()
    # A fresh session's notes on how it started (a link's out-of-range values) outlive its first sample.
    kept = ws.messages_for(TASK) if not ws.has_content() and ws.omniglot is None else []
    try:
        characters = evaluation_split(data_dir)
        ws.load_omniglot(characters, ws.ways, ws.shots, queries, seed)
    except Exception as error:  # noqa: BLE001 - dataset problems are shown, the app keeps running
        st.error(f"Could not sample an Omniglot task: {error}")
        return
    ws.messages.setdefault(TASK, []).extend(kept)
    state.set_results(None)
    # The address bar now brings this task back (and can be shared): ?seed=..&ways=..&shots=..&queries=..
    token = state.task_token()
    st.query_params.from_dict({"seed": str(seed), "ways": str(ws.ways), "shots": str(ws.shots),
                               "queries": str(queries), **({state.TASK_PARAM: token} if token else {})})


def apply_task_link(ws: Workspace) -> None:
    """On a session's first run, ``?seed=S&ways=N&shots=K&queries=Q`` samples that Omniglot task;
    values out of range are brought into it, and the page says which."""
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
    state.request_linked_task(ws, ways, shots, seed, queries)
    used_seed, used_queries = state.sample_request()
    changed = [f"{what}={asked} (used {used})" for what, asked, used in
               (("ways", ways, ws.ways), ("shots", shots, ws.shots), ("queries", queries, used_queries),
                ("seed", seed, used_seed)) if asked != used]
    if changed:
        ws.say(TASK, "warning", f"The link's {', '.join(changed)} {'was' if len(changed) == 1 else 'were'} out of "
                                f"range: N is {MIN_WAYS}-{MAX_WAYS}, K {MIN_SHOTS}-{MAX_SHOTS}, queries per class "
                                f"0-{state.MAX_QUERIES_PER_CLASS} and the seed 0-{MAX_SEED}.")
