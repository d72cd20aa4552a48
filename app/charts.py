"""Altair charts of a comparison: inner-loop curves, adaptation time, per-query probabilities."""

from __future__ import annotations

import math
from collections.abc import Sequence

import altair as alt
import pandas as pd

from engine.compare import AlgorithmResult

LOSS_FLOOR = 1e-4
"""Losses are drawn on a log axis; exact zeros are shown at this floor."""
LOSS_CEILING = 1e6
"""Diverged losses are clipped here so the healthy curves stay readable."""

PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2", "#eeca3b", "#9d755d", "#ff9da6",
           "#bab0ac"]


def algorithm_colors(names: Sequence[str]) -> alt.Scale:
    return alt.Scale(domain=list(names), range=[PALETTE[i % len(PALETTE)] for i in range(len(names))])


def trace_frame(results: Sequence[AlgorithmResult]) -> pd.DataFrame:
    rows = []
    for result in results:
        for record in result.trace:
            loss = record.loss
            shown = min(max(loss, LOSS_FLOOR), LOSS_CEILING) if math.isfinite(loss) else LOSS_CEILING
            rows.append({"algorithm": result.name, "step": record.step, "support loss": shown, "loss": loss,
                         "support accuracy": record.accuracy, "elapsed ms": record.elapsed_ms})
    return pd.DataFrame(rows, columns=["algorithm", "step", "support loss", "loss", "support accuracy", "elapsed ms"])


def curves_chart(results: Sequence[AlgorithmResult], names: Sequence[str]) -> alt.HConcatChart:
    """Support loss (log) and support accuracy per inner step, one line per algorithm, side by side.

    Learners without an inner loop (ProtoNet) have a single point at step 0.
    """
    frame = trace_frame(results)
    color = alt.Color("algorithm:N", scale=algorithm_colors(names), legend=alt.Legend(title=None, orient="top"))
    base = alt.Chart(frame).encode(
        x=alt.X("step:Q", title="inner step", axis=alt.Axis(tickMinStep=1, format="d")),
        color=color,
        tooltip=[alt.Tooltip("algorithm:N"), alt.Tooltip("step:Q"), alt.Tooltip("loss:Q", format=".4g"),
                 alt.Tooltip("support accuracy:Q", format=".0%"), alt.Tooltip("elapsed ms:Q", format=".1f")],
    )
    loss = base.mark_line(point=alt.OverlayMarkDef(size=28)).encode(
        y=alt.Y("support loss:Q", scale=alt.Scale(type="log"), title="support loss (log)"),
    ).properties(title="Inner-loop loss", height=190, width="container")
    accuracy = base.mark_line(point=alt.OverlayMarkDef(size=28)).encode(
        y=alt.Y("support accuracy:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"),
                title="support accuracy"),
    ).properties(title="Support accuracy", height=190, width="container")
    return alt.vconcat(loss, accuracy).resolve_scale(color="shared")


def loss_chart(results: Sequence[AlgorithmResult], names: Sequence[str]) -> alt.Chart:
    frame = trace_frame(results)
    return alt.Chart(frame).mark_line(point=alt.OverlayMarkDef(size=30)).encode(
        x=alt.X("step:Q", title="inner step", axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y("support loss:Q", scale=alt.Scale(type="log"), title="support loss (log scale)"),
        color=alt.Color("algorithm:N", scale=algorithm_colors(names), legend=alt.Legend(title=None, orient="bottom")),
        tooltip=[alt.Tooltip("algorithm:N"), alt.Tooltip("step:Q"), alt.Tooltip("loss:Q", format=".4g"),
                 alt.Tooltip("elapsed ms:Q", format=".1f")],
    ).properties(title="Inner-loop loss per step", height=220)


def accuracy_chart(results: Sequence[AlgorithmResult], names: Sequence[str]) -> alt.Chart:
    frame = trace_frame(results)
    return alt.Chart(frame).mark_line(point=alt.OverlayMarkDef(size=30)).encode(
        x=alt.X("step:Q", title="inner step", axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y("support accuracy:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"),
                title="support accuracy"),
        color=alt.Color("algorithm:N", scale=algorithm_colors(names), legend=alt.Legend(title=None, orient="bottom")),
        tooltip=[alt.Tooltip("algorithm:N"), alt.Tooltip("step:Q"),
                 alt.Tooltip("support accuracy:Q", format=".0%")],
    ).properties(title="Support accuracy per step", height=220)


def time_chart(results: Sequence[AlgorithmResult], names: Sequence[str]) -> alt.Chart:
    frame = pd.DataFrame([{"algorithm": r.name, "adaptation ms": r.adapt_ms, "prediction ms": r.predict_ms}
                          for r in results if r.ok])
    return alt.Chart(frame).mark_bar().encode(
        y=alt.Y("algorithm:N", sort=list(names), title=None),
        x=alt.X("adaptation ms:Q", title="adaptation time (ms)"),
        color=alt.Color("algorithm:N", scale=algorithm_colors(names), legend=None),
        tooltip=[alt.Tooltip("algorithm:N"), alt.Tooltip("adaptation ms:Q", format=".1f"),
                 alt.Tooltip("prediction ms:Q", format=".1f")],
    ).properties(title="Adaptation time", height=max(60, 26 * len(frame)))


def probability_chart(results: Sequence[AlgorithmResult], query_index: int, class_names: Sequence[str],
                      true_label: int | None) -> alt.FacetChart | None:
    """One query: per-class probability bars, one panel per algorithm side by side.

    Bars are coloured by their role: the true class (green), the prediction when it is wrong (red),
    the prediction of an unlabelled query (blue), any other class (grey).
    """
    rows = []
    ok = [r for r in results if r.ok and r.probabilities is not None]
    for result in ok:
        probabilities = result.probabilities[query_index]
        predicted = int(result.predictions[query_index])
        for label, name in enumerate(class_names):
            if label == true_label:
                role = "true class"
            elif label == predicted:
                role = "prediction (wrong)" if true_label is not None else "prediction"
            else:
                role = "other class"
            rows.append({"algorithm": result.name, "class": f"{label + 1}. {name}", "order": label,
                         "probability": float(probabilities[label]), "role": role})
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    roles = ["true class", "prediction (wrong)", "prediction", "other class"]
    colors = ["#2e9e4f", "#d6443b", "#3b78c2", "#b7bcc6"]
    ways = len(class_names)
    panel_width = 150 if len(ok) <= 4 else 120
    bars = alt.Chart(frame).mark_bar(cornerRadiusEnd=2).encode(
        y=alt.Y("class:N", sort=alt.SortField("order"), title=None,
                axis=alt.Axis(labelLimit=110, labelFontSize=10 if ways > 10 else 11)),
        x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%", tickCount=3),
                title=None),
        color=alt.Color("role:N", scale=alt.Scale(domain=roles, range=colors), legend=None),
        tooltip=[alt.Tooltip("algorithm:N"), alt.Tooltip("class:N"), alt.Tooltip("probability:Q", format=".1%")],
    ).properties(width=panel_width, height=max(48, 13 * ways))
    return bars.facet(
        column=alt.Column("algorithm:N", sort=[r.name for r in ok], title=None,
                          header=alt.Header(labelFontSize=12, labelFontWeight="bold")),
        spacing=8,
    ).resolve_axis(y="independent" if ways <= 6 else "shared")
