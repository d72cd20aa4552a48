"""The task builder: one row per support class (drawing pad, name, uploads, examples), then the queries."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import streamlit as st

from app import state
from app.canvas import DrawingDecodeError, decode_data_url, drawing_pad
from app.images import Example
from app.workspace import QUERIES, Workspace, class_target

MAX_UPLOAD_MB = 25
PAD_SIZE = 140
QUERY_CARD_WIDTH = 128
THUMB_WIDTH = 64
NETWORK_WIDTH = 46
"""Shown width (CSS px) of the 28x28 network input under each example and query."""
QUERY_THUMB_WIDTH = THUMB_WIDTH - 8
QUERY_NETWORK_WIDTH = NETWORK_WIDTH - 6
"""Query cards are narrower than example cards: a true-class box sits under each."""
CARD_PADDING = 8
CLASS_NAME_WIDTH = 170
MAX_CLASS_NAME = 60


def show_messages(ws: Workspace, target: str) -> None:
    for message in ws.messages_for(target):
        {"error": st.error, "warning": st.warning, "info": st.info, "success": st.success}[message.level](
            message.text)


def handle_pad(ws: Workspace, target: str, submission: dict[str, Any] | None, query_label: int | None = None) -> bool:
    """Add a new drawing from the pad of ``target`` (a query gets class ``query_label``); True when added."""
    if submission is None:
        return False
    ws.clear_messages(target)
    try:
        data = decode_data_url(submission.get("png"))
    except DrawingDecodeError as error:
        ws.say(target, "error", str(error))
        return False
    return ws.ingest(target, data, "drawing", "drawing", query_label) is not None


def example_card(example: Example, on_delete: Callable[..., None], args: tuple[Any, ...]) -> None:
    """The example as given, the 28x28 input the network sees under it, and a delete button."""
    with st.container(width=THUMB_WIDTH + CARD_PADDING, gap="xxsmall", key=f"card-{example.id}"):
        st.image(example.original_url, width=THUMB_WIDTH)
        with st.container(key=f"net-{example.id}", gap=None, horizontal=True, vertical_alignment="bottom"):
            st.image(example.network_url, width=NETWORK_WIDTH)
            st.button("", key=state.delete_example_key(example.id), on_click=on_delete, args=args, type="tertiary",
                      icon=":material/close:", help="Delete this example")


def on_class_drawn(index: int) -> None:
    """A class pad's Add: rerun that row and the results (the drawing is handled in the row's run),
    and the row of the next pad too when this drawing fills the class (the focus moves there)."""
    ws = state.workspace()
    free = sum(example is None for example in ws.classes[index].slots[: ws.shots])
    following = next_pad(ws, index)
    more = () if free != 1 else (
        state.QUERIES_FRAGMENT if following == state.QUERY_PAD else
        state.class_row_fragment(int(following.rsplit("-", 1)[1])),)
    state.rerun_only(state.support_change(index, *more))


def show_callback_error() -> None:
    """A failed callback of a widget in a row, when only that row reruns."""
    callback_error = state.pop_callback_error()
    if callback_error:
        st.error(f"That action failed ({callback_error}); your drawings are kept.")


def render_class_row(index: int) -> None:
    """A class's row as its own fragment (see :func:`render_builder`)."""
    show_callback_error()
    render_class(state.workspace(), index)


def render_class(ws: Workspace, index: int) -> None:
    """One support class: its drawing pad on the left; name, tools, examples and messages on the right."""
    target = class_target(index)
    support_class = ws.classes[index]
    pad_key = state.pad_key(target)
    with st.container(border=True, key=f"row-{target}", horizontal=True, gap="medium"):
        full = support_class.first_free(ws.shots) is None
        submission = drawing_pad(
            pad_key, label="Add", size=PAD_SIZE, seen=ws.pad_seen, full=full,
            full_text=f"Full ({ws.shots}/{ws.shots}): delete an example or raise K.",
            hint="Draw, then Add (Enter).", aria=f"drawing pad for class {index + 1}", focus=ws.focus_token(pad_key),
            on_submit=functools.partial(on_class_drawn, index))
        if handle_pad(ws, target, submission) and support_class.first_free(ws.shots) is None:
            ws.request_focus(next_pad(ws, index))
        with st.container(gap="small", key=f"side-{target}"):
            count = len(support_class.examples(ws.shots))
            with st.container(horizontal=True, vertical_alignment="center", gap="small"):
                st.markdown(f"**{index + 1}**", width="content")
                name_key = state.class_name_key(index, ws.generation)
                st.text_input("Class name", value=support_class.name, key=name_key, on_change=state.on_rename,
                              args=(index, name_key), label_visibility="collapsed", placeholder=f"Class {index + 1}",
                              max_chars=MAX_CLASS_NAME, width=CLASS_NAME_WIDTH)
                color = "green" if count == ws.shots else ("orange" if count else "red")
                st.badge(f"{count}/{ws.shots}", color=color, help="Examples in this class / K")
                with st.popover(":material/upload:", help="Upload images into this class (several at once fill "
                                "its empty slots in order)", key=state.upload_popover_key(target)):
                    upload_key = state.upload_key(ws, target)
                    st.file_uploader(f"Images for class {index + 1}", accept_multiple_files=True,
                                     key=upload_key, on_change=state.on_upload, args=(target, upload_key),
                                     max_upload_size=MAX_UPLOAD_MB,
                                     help="Fills this class's empty slots in order. Photos of ink on paper work too.")
                st.button("", key=state.clear_class_key(target, ws.generation), on_click=state.on_clear_class,
                          args=(index,), type="tertiary", icon=":material/delete:",
                          help="Delete every example of this class",
                          disabled=not any(e is not None for e in support_class.slots))
            with st.container(horizontal=True, gap="small", key=f"slots-{target}", wrap=True):
                for slot, example in enumerate(support_class.slots[: ws.shots]):
                    if example is None:
                        st.markdown(f"<div class='mp-empty'>{slot + 1}</div>", unsafe_allow_html=True,
                                    width="content")
                    else:
                        example_card(example, state.on_delete_support, (index, example.id))
            hidden = support_class.hidden_count(ws.shots)
            if hidden:
                st.caption(f"{hidden} more example{'s' if hidden > 1 else ''} kept beyond K = {ws.shots}: raise K "
                           f"to use {'them' if hidden > 1 else 'it'}.")
            if not support_class.examples(ws.shots) and not ws.messages_for(target):
                st.caption("No examples yet: draw one on the pad (then Add), or upload images.")
            show_messages(ws, target)


def next_pad(ws: Workspace, index: int) -> str:
    """Where to move after class ``index`` fills up: the next class with room, else the query pad."""
    for other in list(range(index + 1, ws.ways)) + list(range(0, index)):
        if ws.classes[other].first_free(ws.shots) is not None:
            return state.pad_key(class_target(other))
    return state.QUERY_PAD


@st.fragment(key=state.QUERIES_FRAGMENT)
def render_queries() -> None:
    """The query pad and uploads on the left; each query with its network input and true class.

    A fragment: adding, deleting or uploading queries reruns it and the results
    (:data:`app.state.QUERY_CHANGE`), not the support set above."""
    ws = state.workspace()
    show_callback_error()
    target = QUERIES
    with st.container(border=True, key="row-queries", horizontal=True, gap="medium"):
        with st.container(width=PAD_SIZE + 4, gap="small", key="side-queries-pad"):
            submission = drawing_pad(state.QUERY_PAD, label="Add query", size=PAD_SIZE, seen=ws.pad_seen,
                                     hint="Draw, then Add (Enter).", aria="drawing pad for queries",
                                     focus=ws.focus_token(state.QUERY_PAD), on_submit=state.on_query_drawn)
            new_label_box(ws)
            handle_pad(ws, target, submission, state.new_query_label())
            upload_key = state.upload_key(ws, target)
            with st.popover("Upload", icon=":material/upload:", width="stretch",
                            help="Upload one or more query images"):
                st.file_uploader("Query images", accept_multiple_files=True, key=upload_key,
                                 on_change=state.on_upload, args=(target, upload_key), max_upload_size=MAX_UPLOAD_MB)
        with st.container(gap="small", key="side-queries"):
            with st.container(horizontal=True, vertical_alignment="center", gap="small"):
                st.markdown(f"**{len(ws.queries)} quer{'y' if len(ws.queries) == 1 else 'ies'}**", width="content")
                st.caption("Characters to classify. Pick each one's true class to get accuracies.", width="content")
                if ws.queries:
                    bulk_label_popover()
                    st.button("Clear", key=state.clear_queries_key(ws.generation), on_click=state.on_clear_queries,
                              type="tertiary", icon=":material/delete:", help="Delete every query")
            with st.container(horizontal=True, gap="small", key="slots-queries", wrap=True):
                for number, query in enumerate(ws.queries):
                    query_card(ws, number, query.example, ws.query_label(query))
            if not ws.queries and not ws.messages_for(target):
                st.caption("No queries yet: draw one on the pad (then Add query), upload images, or sample an "
                           "Omniglot task.")
            show_messages(ws, target)


def class_option_text(ws: Workspace) -> Callable[[int], str]:
    names = ws.class_names()
    return lambda option: "class?" if option < 0 else f"{option + 1}. {names[option]}"


def new_label_box(ws: Workspace) -> None:
    """The class that the next query drawings and uploads get: draw a run of queries "as class k"."""
    options = [-1] + list(range(ws.ways))
    state.keep_int_choice_valid(state.NEW_QUERY_LABEL, options, -1)
    st.selectbox("New queries are", options, key=state.NEW_QUERY_LABEL, format_func=class_option_text(ws),
                 help="Queries drawn or uploaded from now on get this true class (class?: unknown; each "
                      "query's own box changes it).")


@st.fragment(key=state.BULK_LABEL_FRAGMENT)
def bulk_label_popover() -> None:
    """"Label several": pick queries (the unlabelled ones to start with) and give them one class.
    A fragment: a label pick reruns it (its starting picks) without the query cards."""
    ws = state.workspace()
    with st.popover("Label several", icon=":material/label:", help="Give many queries the same true class"):
        numbers = {q.example.id: number for number, q in enumerate(ws.queries, start=1)}
        picker = state.bulk_label_queries_key(ws)
        unlabelled = [q.example.id for q in ws.queries if ws.query_label(q) is None]
        st.multiselect("Queries", list(numbers), default=unlabelled, key=picker,
                       format_func=lambda example_id: f"query {numbers.get(example_id, '?')}")
        options = [-1] + list(range(ws.ways))
        state.keep_int_choice_valid(state.BULK_LABEL_CLASS, options, -1)
        st.selectbox("True class", options, key=state.BULK_LABEL_CLASS, format_func=class_option_text(ws))
        st.button("Apply", key=state.BULK_LABEL_BUTTON, on_click=state.on_bulk_label, args=(picker,), type="primary")


def query_card(ws: Workspace, number: int, example: Example, label: int | None) -> None:
    """One query: what was drawn and the network input, a delete button, and its true-class box."""
    options = [-1] + list(range(ws.ways))
    label_text = class_option_text(ws)
    with st.container(width=QUERY_CARD_WIDTH, gap="xxsmall", key=f"qcard-{example.id}"):
        with st.container(horizontal=True, vertical_alignment="bottom", gap="xsmall"):
            st.image(example.original_url, width=QUERY_THUMB_WIDTH)
            with st.container(key=f"qnet-{example.id}", gap=None, width=QUERY_NETWORK_WIDTH):
                st.image(example.network_url, width=QUERY_NETWORK_WIDTH)
        with st.container(horizontal=True, vertical_alignment="center", gap="xxsmall"):
            st.markdown(f"<div class='mp-caption'>query {number + 1}</div>", unsafe_allow_html=True, width="stretch")
            st.button("", key=state.delete_query_key(example.id), on_click=state.on_delete_query, args=(example.id,),
                      type="tertiary", icon=":material/close:", help=f"Delete query {number + 1}")
        key = state.query_label_key(ws, example.id)
        st.selectbox(f"True class of query {number + 1}", options,
                     index=options.index(label if label is not None else -1),
                     format_func=label_text, key=key, on_change=state.on_query_label,
                     args=(example.id, key), label_visibility="collapsed")


def render_builder(ws: Workspace) -> None:
    with st.container(key="builder", gap="small"):
        if ws.omniglot:
            sampled = ws.omniglot
            per_class = sampled["queries_per_class"]
            st.info(f"Omniglot evaluation task, seed **{sampled['seed']}** ({sampled['ways']}-way "
                    f"{sampled['shots']}-shot, {per_class} quer{'y' if per_class == 1 else 'ies'} per class). "
                    "The same seed, N and K bring this task back.", icon=":material/casino:")
        st.markdown(f"#### Support set · {ws.ways}-way {ws.shots}-shot")
        for index in range(ws.ways):
            # Each row is a fragment: adding or deleting an example reruns that row and the results only.
            st.fragment(key=state.class_row_fragment(index))(render_class_row)(index)
        hidden = ws.hidden_classes_with_examples()
        if hidden:
            st.caption(f"Classes {', '.join(str(i + 1) for i in hidden)} keep their examples while hidden: "
                       "raise N to bring them back.")
        st.markdown("#### Queries")
        render_queries()
