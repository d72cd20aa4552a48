"""Step playback: a slider (and Play) over the inner steps; at each step every algorithm's query
probabilities and its support loss."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from app import charts, state
from app.views.context import ViewContext, guarded
from engine.inspect import Inspection

PLAY_SECONDS_PER_STEP = 0.35
"""How long Play shows each step: long enough to read a change, short enough for 10 steps."""
CHART_WIDTH = 900


def step_frame(context: ViewContext, found: dict[str, Inspection], step: int) -> tuple[pd.DataFrame, list[str]]:
    """One row per (algorithm, query, class) at inner ``step``, and the panels' titles in order."""
    rows, panels = [], []
    for name, inspection in found.items():
        index = inspection.at_step(step)
        probabilities = inspection.step_probabilities[index]
        predicted = probabilities.argmax(axis=1) if len(probabilities) else []
        scored = [(int(p), label) for p, label in zip(predicted, context.labels) if label is not None]
        correct = sum(p == label for p, label in scored)
        shown = inspection.trace[index].step
        suffix = "" if shown == step else f" (step {shown}: {'no inner loop' if not inspection.has_inner_loop else 'its last'})"
        panel = f"{name}: {correct}/{len(scored)} right{suffix}" if scored else f"{name}{suffix}"
        panels.append(panel)
        for query, row in enumerate(probabilities):
            for label, probability in enumerate(row):
                rows.append({"panel": panel, "algorithm": name, "query": f"Q{query + 1}", "query order": query,
                             "class": str(label + 1), "order": label, "class name": context.class_names[label],
                             "probability": float(probability), "true": context.labels[query] == label,
                             "shown step": shown})
    return pd.DataFrame(rows), panels


def specs_at(context: ViewContext, found: dict[str, Inspection], step: int) -> tuple[dict, dict | None]:
    """The loss and probability chart specs at ``step`` (built once per step, labels and names)."""
    key = ("playback", step, tuple(context.labels), tuple(context.class_names))
    if key not in context.cache:
        traces = [(name, inspection.trace) for name, inspection in found.items()]
        loss = charts.to_spec(charts.playback_loss_chart(traces, context.names, step))
        frame, panels = step_frame(context, found, step)
        grid = None if frame.empty else charts.to_spec(
            charts.playback_probability_chart(frame, panels, context.record.ways, CHART_WIDTH))
        context.cache[key] = (loss, grid)
    return context.cache[key]


def draw(context: ViewContext, found: dict[str, Inspection], step: int, target: st.delta_generator.DeltaGenerator) -> None:
    loss, grid = specs_at(context, found, step)
    with target.container():
        st.vega_lite_chart(loss, width="stretch")
        if grid is None:
            st.caption("Add queries to see their probabilities step by step.")
        else:
            st.vega_lite_chart(grid, width="content")


@st.fragment
@guarded
def render_playback(context: ViewContext) -> None:
    if not st.toggle("Step playback", key=state.VIEW_PLAYBACK,
                     help="Each query's class probabilities and the support loss after every inner step."):
        return
    names = context.inspectable()
    results = context.inspections(names)
    found = {name: value for name, value in results.items() if isinstance(value, Inspection)}
    for name, value in results.items():
        if not isinstance(value, Inspection):
            st.error(f"**{name}**: could not replay its steps ({value})")
    if not found:
        return
    last = max(inspection.steps for inspection in found.values())
    single = [name for name, inspection in found.items() if not inspection.has_inner_loop]
    if single:
        st.caption(f"{', '.join(single)}: no inner loop (one forward pass), so one step, shown at every step.")
    played = False
    if last > 0:
        state.keep_in_range(state.PLAYBACK_STEP, 0, last, default=last)
        with st.container(horizontal=True, vertical_alignment="bottom"):
            played = st.button("Play", icon=":material/play_arrow:", key=state.PLAYBACK_PLAY,
                               on_click=state.on_play, args=(last,), help="Show every step in turn.")
            step = st.slider("Inner step", 0, last, key=state.PLAYBACK_STEP)
    else:
        step = 0
    target = st.empty()
    if played:
        for shown in range(last + 1):
            draw(context, found, shown, target)
            time.sleep(PLAY_SECONDS_PER_STEP)
    else:
        draw(context, found, step, target)
