"""Altair charts of a comparison: inner-loop curves, adaptation time, per-query probabilities, and
the "Inside the adaptation" views (step playback, embeddings, saliency)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import altair as alt
import numpy as np
import pandas as pd
from streamlit.dataframe_util import convert_anything_to_arrow_bytes

from engine.compare import AlgorithmResult
from engine.learners import StepRecord

LOSS_FLOOR = 1e-4
"""Losses are drawn on a log axis; exact zeros are shown at this floor."""
LOSS_CEILING = 1e6
"""Diverged losses are clipped here so the healthy curves stay readable."""

FIT_X = alt.AutoSizeParams(type="fit-x", contains="padding")
"""Fill the container's width but keep the requested plot height (Streamlit's default "fit" squashes
charts that have titles and legends)."""

CHART_RENDERER = "canvas"
"""Vega's renderer in the page (see :func:`to_spec`)."""

PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2", "#eeca3b", "#9d755d", "#ff9da6",
           "#bab0ac"]


def to_spec(chart: alt.TopLevelMixin, validate: bool = True) -> dict:
    """The chart's Vega-Lite spec (validated once), without Altair's default 300x300 view size.

    The app compiles each chart once per comparison and re-renders the spec with
    ``st.vega_lite_chart``: re-validating every chart on every rerun costs more than the maths.
    ``validate=False`` for another frame of a chart already validated (the playback's steps).
    Drawn on a canvas: as SVG each per-query chart is ~1,100 DOM nodes, and with a dozen of them every
    change anywhere on the page (a label pick) costs the browser a style and layout pass over ~14,000 nodes.
    """
    spec = chart.to_dict(validate=validate)
    spec["usermeta"] = {**spec.get("usermeta", {}), "embedOptions": {"renderer": CHART_RENDERER}}
    view = spec.get("config", {}).get("view", {})
    view.pop("continuousWidth", None)
    view.pop("continuousHeight", None)
    if "config" in spec and not spec["config"].get("view"):
        spec["config"].pop("view", None)
        if not spec["config"]:
            spec.pop("config")
    return spec


_validated_kinds: set[str] = set()


def compile_chart(kind: str, chart: alt.TopLevelMixin) -> dict:
    """:func:`to_spec`, validating only the first chart of each ``kind`` this process compiles: charts of
    one kind (one builder) differ in their data and labels, not in their structure, and validating the
    schema takes most of the time a chart costs to compile."""
    spec = to_spec(chart, validate=kind not in _validated_kinds)
    _validated_kinds.add(kind)
    return spec


def for_page(spec: dict) -> dict:
    """``spec`` with its named datasets as Arrow IPC bytes, the form ``st.vega_lite_chart`` sends them in.

    Given rows, Streamlit converts each dataset to Arrow on every call (through pandas: ~5 ms a chart, more
    than the rest of drawing it); given bytes it passes them through. The spec itself is left as it was
    (an export converts its rows)."""
    datasets = spec.get("datasets")
    if not datasets:
        return spec
    return {**spec, "datasets": {name: rows if isinstance(rows, bytes) else convert_anything_to_arrow_bytes(rows)
                                 for name, rows in datasets.items()}}


def algorithm_colors(names: Sequence[str]) -> alt.Scale:
    return alt.Scale(domain=list(names), range=[PALETTE[i % len(PALETTE)] for i in range(len(names))])


def _legend(names: Sequence[str]) -> alt.Legend:
    return alt.Legend(title=None, orient="top", direction="horizontal", columns=min(2, max(1, len(names))),
                      labelFontSize=11, symbolSize=60, labelLimit=90)


def trace_frame(results: Sequence[AlgorithmResult]) -> pd.DataFrame:
    rows = []
    for result in results:
        for record in result.trace:
            loss = record.loss
            shown = min(max(loss, LOSS_FLOOR), LOSS_CEILING) if math.isfinite(loss) else LOSS_CEILING
            rows.append({"algorithm": result.name, "step": record.step, "support loss": shown, "loss": loss,
                         "support accuracy": record.accuracy, "elapsed ms": record.elapsed_ms})
    return pd.DataFrame(rows, columns=["algorithm", "step", "support loss", "loss", "support accuracy", "elapsed ms"])


def loss_chart(results: Sequence[AlgorithmResult], names: Sequence[str]) -> alt.Chart:
    frame = trace_frame(results)
    return alt.Chart(frame).mark_line(point=alt.OverlayMarkDef(size=30)).encode(
        x=alt.X("step:Q", title="inner step", axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y("support loss:Q", scale=alt.Scale(type="log"), title="support loss (log scale)"),
        color=alt.Color("algorithm:N", scale=algorithm_colors(names), legend=_legend(names)),
        tooltip=[alt.Tooltip("algorithm:N"), alt.Tooltip("step:Q"), alt.Tooltip("loss:Q", format=".4g"),
                 alt.Tooltip("elapsed ms:Q", format=".1f")],
    ).properties(title="Inner-loop loss per step", height=200, autosize=FIT_X)


def accuracy_chart(results: Sequence[AlgorithmResult], names: Sequence[str]) -> alt.Chart:
    frame = trace_frame(results)
    return alt.Chart(frame).mark_line(point=alt.OverlayMarkDef(size=30)).encode(
        x=alt.X("step:Q", title="inner step", axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y("support accuracy:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"),
                title="support accuracy"),
        color=alt.Color("algorithm:N", scale=algorithm_colors(names), legend=_legend(names)),
        tooltip=[alt.Tooltip("algorithm:N"), alt.Tooltip("step:Q"),
                 alt.Tooltip("support accuracy:Q", format=".0%")],
    ).properties(title="Support accuracy per step", height=200, autosize=FIT_X)


def time_chart(results: Sequence[AlgorithmResult], names: Sequence[str]) -> alt.Chart:
    frame = pd.DataFrame([{"algorithm": r.name, "adaptation ms": r.adapt_ms, "prediction ms": r.predict_ms}
                          for r in results if r.ok])
    return alt.Chart(frame).mark_bar().encode(
        y=alt.Y("algorithm:N", sort=list(names), title=None),
        x=alt.X("adaptation ms:Q", title="adaptation time (ms)"),
        color=alt.Color("algorithm:N", scale=algorithm_colors(names), legend=None),
        tooltip=[alt.Tooltip("algorithm:N"), alt.Tooltip("adaptation ms:Q", format=".1f"),
                 alt.Tooltip("prediction ms:Q", format=".1f")],
    ).properties(title="Adaptation time", height=max(60, 24 * len(frame)), autosize=FIT_X)


def probability_chart(results: Sequence[AlgorithmResult], query_index: int, class_names: Sequence[str],
                      true_label: int | None, width: int = 480) -> alt.FacetChart | None:
    """One query: per-class probability bars, one panel per algorithm side by side.

    Each panel's title is the algorithm and its prediction. Bars are coloured by their role: the true
    class (green), the prediction when it is wrong (red), the prediction of an unlabelled query
    (blue), any other class (grey).
    """
    rows = []
    panels = []
    ok = [r for r in results if r.ok and r.probabilities is not None and r.predictions is not None]
    for result in ok:
        probabilities = result.probabilities[query_index]
        predicted = int(result.predictions[query_index])
        mark = "" if true_label is None else (" ✓" if predicted == true_label else " ✗")
        panel = f"{result.name}{mark}"
        panels.append(panel)
        for label, name in enumerate(class_names):
            if label == true_label:
                role = "true class"
            elif label == predicted:
                role = "prediction (wrong)" if true_label is not None else "prediction"
            else:
                role = "other class"
            rows.append({"panel": panel, "algorithm": result.name, "class": f"{label + 1}. {name}", "order": label,
                         "probability": float(probabilities[label]), "role": role})
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    roles = ["true class", "prediction (wrong)", "prediction", "other class"]
    colors = ["#2e9e4f", "#d6443b", "#3b78c2", "#b7bcc6"]
    ways = len(class_names)
    label_width = 96
    panel_width = int(max(56, min(160, (width - label_width) / len(ok) - 8)))
    bars = alt.Chart(frame).mark_bar(cornerRadiusEnd=2).encode(
        y=alt.Y("class:N", sort=alt.SortField("order"), title=None,
                axis=alt.Axis(labelLimit=label_width - 6, labelFontSize=10 if ways > 10 else 11, labelOverlap=False)),
        x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%", values=[0, 0.5, 1]),
                title=None),
        color=alt.Color("role:N", scale=alt.Scale(domain=roles, range=colors), legend=None),
        tooltip=[alt.Tooltip("algorithm:N"), alt.Tooltip("class:N"), alt.Tooltip("probability:Q", format=".1%"),
                 alt.Tooltip("role:N")],
    ).properties(width=panel_width, height=max(44, 17 * ways))
    return bars.facet(
        column=alt.Column("panel:N", sort=panels, title=None,
                          header=alt.Header(labelFontSize=11, labelFontWeight="bold", labelLimit=panel_width)),
        spacing=6,
    ).configure_view(stroke=None)


# --------------------------------------------------------------------------- "Inside the adaptation" views

PROBABILITY_SCHEME = "blues"
CLASS_SCHEME = "category20"
"""Classes (up to 20) in the embedding view."""


def playback_loss_chart(traces: Sequence[tuple[str, Sequence[StepRecord]]], names: Sequence[str],
                        step: int) -> alt.LayerChart:
    """Every algorithm's support loss per inner step, with a rule at ``step`` and its values there."""
    rows = []
    for name, trace in traces:
        for record in trace:
            loss = record.loss
            shown = min(max(loss, LOSS_FLOOR), LOSS_CEILING) if math.isfinite(loss) else LOSS_CEILING
            rows.append({"algorithm": name, "step": record.step, "support loss": shown, "loss": loss,
                         "support accuracy": record.accuracy, "current": record.step == step})
    frame = pd.DataFrame(rows, columns=["algorithm", "step", "support loss", "loss", "support accuracy", "current"])
    color = alt.Color("algorithm:N", scale=algorithm_colors(names), legend=_legend(names))
    base = alt.Chart(frame).encode(
        x=alt.X("step:Q", title="inner step", axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y("support loss:Q", scale=alt.Scale(type="log"), title="support loss (log scale)"), color=color,
        tooltip=[alt.Tooltip("algorithm:N"), alt.Tooltip("step:Q"), alt.Tooltip("loss:Q", format=".4g"),
                 alt.Tooltip("support accuracy:Q", format=".0%")])
    lines = base.mark_line(opacity=0.5)
    current = base.transform_filter(alt.datum.current).mark_point(size=90, filled=True)
    rule = alt.Chart(pd.DataFrame({"step": [step]})).mark_rule(color="#888", strokeDash=[4, 3]).encode(x="step:Q")
    return alt.layer(lines, rule, current).properties(title=f"Support loss, step {step} marked", height=180,
                                                      autosize=FIT_X)


def playback_probability_chart(frame: pd.DataFrame, panels: Sequence[str], ways: int,
                               columns: int = 3) -> alt.FacetChart:
    """Per algorithm (a panel each, ``columns`` to a row) a grid of queries (rows) by classes
    (columns), shaded by the probability at the chosen step; the true class of a labelled query is
    outlined in green."""
    panel_width = int(max(90, min(200, 16 * ways)))
    cell = alt.Chart().encode(
        x=alt.X("class:N", sort=alt.SortField("order"), title=None,
                axis=alt.Axis(labelAngle=0, labelLimit=40, labelFontSize=9)),
        y=alt.Y("query:N", sort=alt.SortField("query order"), title=None))
    rects = cell.mark_rect().encode(
        color=alt.Color("probability:Q", scale=alt.Scale(domain=[0, 1], scheme=PROBABILITY_SCHEME),
                        legend=alt.Legend(format="%", title="probability", orient="top", gradientLength=120)),
        tooltip=[alt.Tooltip("algorithm:N"), alt.Tooltip("query:N"), alt.Tooltip("class name:N", title="class"),
                 alt.Tooltip("probability:Q", format=".1%"), alt.Tooltip("shown step:Q", title="step")])
    truth = cell.transform_filter(alt.datum.true).mark_rect(fill=None, stroke="#2e9e4f", strokeWidth=2.5)
    layers = [rects, truth]
    if ways <= 6:  # room for the numbers in the cells
        layers.append(cell.mark_text(fontSize=8).encode(
            text=alt.Text("probability:Q", format=".0%"),
            color=alt.condition(alt.datum.probability > 0.5, alt.value("white"), alt.value("#333"))))
    return alt.layer(*layers, data=frame).properties(
        width=panel_width, height=max(30, 16 * frame["query"].nunique())).facet(
        facet=alt.Facet("panel:N", sort=list(panels), title=None,
                        header=alt.Header(labelFontSize=10, labelFontWeight="bold", labelLimit=panel_width + 20)),
        columns=columns, spacing=8)


def embedding_chart(frame: pd.DataFrame, panels: Sequence[str], class_names: Sequence[str],
                    explained: Sequence[float], shared: bool = True) -> alt.FacetChart:
    """Support points, queries and class prototypes in a 2-D PCA, one panel per embedding (before
    and after adaptation; on the same axes when ``shared``, else each on its own); hovering a point
    shows its 28x28 input."""
    classes = [f"{i + 1}. {name}" for i, name in enumerate(class_names)]
    kinds = ["support", "query", "prototype"]
    share = f" ({explained[0]:.0%} of the variance)" if shared else ""
    points = alt.Chart().mark_point(filled=True, opacity=0.85).encode(
        x=alt.X("pc1:Q", title=f"PC 1{share}", axis=alt.Axis(labels=False)),
        y=alt.Y("pc2:Q", title=f"PC 2{f' ({explained[1]:.0%})' if shared else ''}", axis=alt.Axis(labels=False)),
        color=alt.Color("class:N", scale=alt.Scale(domain=classes, scheme=CLASS_SCHEME),
                        legend=alt.Legend(title=None, orient="top", columns=4, labelLimit=90)),
        shape=alt.Shape("kind:N", scale=alt.Scale(domain=kinds, range=["circle", "diamond", "cross"]),
                        legend=alt.Legend(title=None, orient="top")),
        size=alt.Size("kind:N", scale=alt.Scale(domain=kinds, range=[70, 110, 260]), legend=None),
        stroke=alt.value("#222"), strokeWidth=alt.condition(alt.datum.kind == "prototype", alt.value(1.5),
                                                            alt.value(0)),
        # vega-tooltip draws a field named "image" as the image itself.
        tooltip=[alt.Tooltip("image:N"), alt.Tooltip("kind:N"), alt.Tooltip("class:N"), alt.Tooltip("note:N")],
    )
    chart = alt.layer(points, data=frame).properties(width=190, height=190).facet(
        column=alt.Column("panel:N", sort=list(panels), title=None, header=alt.Header(labelFontSize=11)),
        spacing=10)
    return chart if shared else chart.resolve_scale(x="independent", y="independent")


def pixel_frame(values: np.ndarray, name: str) -> pd.DataFrame:
    rows, cols = np.indices(values.shape)
    return pd.DataFrame({"row": rows.ravel(), "col": cols.ravel(), name: values.ravel().astype(float)})


def saliency_chart(image: np.ndarray, attribution: np.ndarray, title: str, signed: bool) -> alt.HConcatChart:
    """The 28x28 input (ink bright) beside its attribution map: diverging (red raises the class's
    score, blue lowers it) when ``signed``, else how much each pixel mattered."""
    size = 196
    grid = {"x": alt.X("col:O", axis=None), "y": alt.Y("row:O", axis=None)}
    source = alt.Chart(pixel_frame(image, "ink")).mark_rect().encode(
        color=alt.Color("ink:Q", scale=alt.Scale(domain=[0, 1], scheme="greys", reverse=True), legend=None),
        **grid).properties(width=size, height=size, title="network input")
    bound = float(np.abs(attribution).max()) or 1.0
    scale = (alt.Scale(domain=[-bound, bound], scheme="redblue", reverse=True) if signed
             else alt.Scale(domain=[0, bound], scheme="reds"))
    overlay = alt.Chart(pixel_frame(attribution if signed else np.maximum(attribution, 0), "attribution")).mark_rect(
    ).encode(color=alt.Color("attribution:Q", scale=scale, legend=alt.Legend(orient="right", format=".2g",
                                                                                title=None)),
             tooltip=[alt.Tooltip("row:O"), alt.Tooltip("col:O"), alt.Tooltip("attribution:Q", format=".3g")],
             **grid).properties(width=size, height=size, title=title)
    return alt.hconcat(source, overlay).configure_view(stroke=None)
