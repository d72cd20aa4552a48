"""Step playback: a slider (and Play) over the inner steps; at each step every algorithm's query
probabilities and its support loss.

The view opens on the last step, which the comparison itself gave (its trace and predictions), and
starts adapting the inner-loop algorithms once more in the background, keeping every step
(:mod:`engine.inspect`, once per comparison): the first other step asked for waits for that only
if it is not done yet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from app import charts, state
from app.views.context import ViewContext, guarded
from engine.compare import AlgorithmResult
from engine.inspect import Inspection
from engine.learners import StepRecord

PLAY_SECONDS_PER_STEP = 0.35
"""How long Play shows each step: long enough to read a change, short enough for 10 steps."""


@dataclass(frozen=True)
class Steps:
    """One algorithm's trace and the query probabilities known at some of its steps (by index)."""

    trace: list[StepRecord]
    probabilities: dict[int, np.ndarray]
    has_inner_loop: bool

    @classmethod
    def of_result(cls, result: AlgorithmResult) -> "Steps":
        """What the comparison kept: the trace, and the probabilities after its last step."""
        known = {} if result.probabilities is None else {len(result.trace) - 1: result.probabilities}
        return cls(list(result.trace), known, result.has_inner_loop)

    @classmethod
    def of_inspection(cls, inspection: Inspection) -> "Steps":
        return cls(inspection.trace, dict(enumerate(inspection.step_probabilities)), inspection.has_inner_loop)

    @property
    def last(self) -> int:
        return self.trace[-1].step if self.trace else 0

    def index_at(self, step: int) -> int:
        """The trace index shown at ``step``: that step, or the last one there is."""
        return max([i for i, record in enumerate(self.trace) if record.step <= step], default=0)


def step_frame(context: ViewContext, steps: dict[str, Steps], step: int) -> tuple[pd.DataFrame, list[str]]:
    """One row per (algorithm, query, class) at inner ``step``, and the panels' titles in order."""
    rows, panels = [], []
    for name, known in steps.items():
        index = known.index_at(step)
        probabilities = known.probabilities.get(index)
        if probabilities is None or not len(probabilities):
            continue
        predicted = probabilities.argmax(axis=1)
        scored = [(int(p), label) for p, label in zip(predicted, context.labels) if label is not None]
        correct = sum(p == label for p, label in scored)
        shown = known.trace[index].step
        suffix = "" if shown == step else (" (no inner loop)" if not known.has_inner_loop else f" (step {shown})")
        panel = f"{name}: {correct}/{len(scored)} right{suffix}" if scored else f"{name}{suffix}"
        panels.append(panel)
        for query, row in enumerate(probabilities):
            for label, probability in enumerate(row):
                rows.append({"panel": panel, "algorithm": name, "query": f"Q{query + 1}", "query order": query,
                             "class": str(label + 1), "order": label, "class name": context.class_names[label],
                             "probability": float(probability), "true": context.labels[query] == label,
                             "shown step": shown})
    return pd.DataFrame(rows), panels


def specs_at(context: ViewContext, steps: dict[str, Steps], step: int) -> tuple[dict, dict | None]:
    """The loss and probability chart specs at ``step`` (built once per step, labels and names);
    only the first one built is validated (every step is the same chart with other data)."""
    key = ("playback", step, tuple(context.labels), tuple(context.class_names))
    if key not in context.cache:
        validate = not any(isinstance(k, tuple) and k[0] == "playback" for k in context.cache)
        traces = [(name, known.trace) for name, known in steps.items()]
        loss = charts.to_spec(charts.playback_loss_chart(traces, context.names, step), validate)
        frame, panels = step_frame(context, steps, step)
        grid = None if frame.empty else charts.to_spec(
            charts.playback_probability_chart(frame, panels, context.record.ways), validate)
        context.cache[key] = (loss, grid)
    return context.cache[key]


def looping(context: ViewContext) -> list[str]:
    return [r.name for r in context.results if r.ok and r.has_inner_loop and r.name in context.learners]


def all_steps(context: ViewContext) -> dict[str, Steps]:
    """Every step of every algorithm: the inner-loop ones adapted again, keeping each step."""
    ok = [r for r in context.results if r.ok]
    found = context.inspections(looping(context))
    steps = {}
    for result in ok:
        inspection = found.get(result.name)
        if isinstance(inspection, Inspection):
            steps[result.name] = Steps.of_inspection(inspection)
        else:
            if inspection is not None:
                st.error(f"**{result.name}**: could not replay its steps ({inspection})")
            steps[result.name] = Steps.of_result(result)
    return steps


def draw(context: ViewContext, steps: dict[str, Steps], step: int, target: st.delta_generator.DeltaGenerator) -> None:
    loss, grid = specs_at(context, steps, step)
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
    steps = {r.name: Steps.of_result(r) for r in context.results if r.ok}
    if not steps:
        return
    last = max(known.last for known in steps.values())
    single = [r.name for r in context.results if r.ok and not r.has_inner_loop]
    if single:
        st.caption(f"{', '.join(single)}: no inner loop (one forward pass), so one step, shown at every step.")
    played = False
    step = last
    if last > 0:
        state.keep_in_range(state.PLAYBACK_STEP, 0, last, default=last)
        with st.container(horizontal=True, vertical_alignment="bottom"):
            played = st.button("Play", icon=":material/play_arrow:", key=state.PLAYBACK_PLAY,
                               on_click=state.on_play, args=(last,), help="Show every step in turn.")
            step = st.slider("Inner step", 0, last, key=state.PLAYBACK_STEP)
    if played or step != last:
        steps = all_steps(context)
    elif last > 0:
        context.prefetch(looping(context))  # while the page is read: the first step asked for is then ready
    target = st.empty()
    if played:
        for shown in range(last + 1):
            draw(context, steps, shown, target)
            time.sleep(PLAY_SECONDS_PER_STEP)
    else:
        draw(context, steps, step, target)
