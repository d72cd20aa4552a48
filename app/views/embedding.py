"""Embedding view: a 2-D PCA (fitted per task) of one algorithm's support and query embeddings and its
class prototypes, before and after adaptation; hovering a point shows its 28x28 input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import charts, state
from app.views.context import ViewContext, guarded
from engine.inspect import Embeddings, Inspection, embedding_projections


def points_frame(context: ViewContext, embeddings: Embeddings, predictions: np.ndarray | None,
                 panels: list[str]) -> tuple[pd.DataFrame, list[float], bool]:
    """One row per point and panel, each panel in its PCA plane (:func:`embedding_projections`);
    the share of variance its axes explain (of the first panel's plane), and whether the panels share it."""
    projections = embedding_projections(embeddings)
    _, support_y, _ = context.tensors()
    support = context.support_examples()
    classes = [f"{i + 1}. {name}" for i, name in enumerate(context.class_names)]
    rows = []
    sides = [(embeddings.support_before, embeddings.query_before, embeddings.prototypes_before)]
    if embeddings.changes:
        sides.append((embeddings.support_after, embeddings.query_after, embeddings.prototypes_after))
    for panel, projection, (support_rows, query_rows, prototype_rows) in zip(panels, projections, sides):
        # Prototypes first, so they are drawn beneath (a 1-shot class's prototype is its one example).
        for index, (x, y) in enumerate(projection(prototype_rows)):
            rows.append({"panel": panel, "pc1": x, "pc2": y, "kind": "prototype", "class": classes[index],
                         "image": "", "note": "class prototype (mean of its support points)"})
        for index, (x, y) in enumerate(projection(support_rows)):
            rows.append({"panel": panel, "pc1": x, "pc2": y, "kind": "support", "class": classes[int(support_y[index])],
                         "image": support[index].network_url, "note": f"support example {index + 1}"})
        for index, (x, y) in enumerate(projection(query_rows)):
            predicted = int(predictions[index]) if predictions is not None else None
            label = context.labels[index]
            shown = classes[predicted] if predicted is not None else classes[0]
            truth = "unlabelled" if label is None else f"true class {classes[label]}"
            rows.append({"panel": panel, "pc1": x, "pc2": y, "kind": "query", "class": shown,
                         "image": context.record.queries[index].network_url,
                         "note": f"query {index + 1}, predicted {shown} ({truth})"})
    shared = projections[0] is projections[1]
    return pd.DataFrame(rows), [float(v) for v in projections[0].explained], shared


@st.fragment
@guarded
def render_embedding(context: ViewContext) -> None:
    if not st.toggle("Embedding view", key=state.VIEW_EMBEDDING,
                     help="Support and query embeddings and class prototypes before and after adaptation (PCA)."):
        return
    names = context.inspectable()
    if not names:
        st.caption("No algorithm ran successfully.")
        return
    state.keep_option_valid(state.EMBEDDING_ALGORITHM, names)
    name = st.selectbox("Algorithm", names, key=state.EMBEDDING_ALGORITHM)
    found = context.inspections([name])[name]
    if not isinstance(found, Inspection):
        st.error(f"**{name}**: could not inspect it ({found})")
        return
    if found.model is None or not found.model.has_embeddings:
        st.info(f"{name}'s embeddings are not available to this view.")
        return
    key = ("embedding", name, tuple(context.labels), tuple(context.class_names))
    if key not in context.cache:
        _, _, query_x = context.tensors()
        embeddings = found.model.embeddings(query_x)
        final = found.step_probabilities[-1]
        predictions = final.argmax(axis=1) if len(final) else None
        if embeddings.changes:
            panels = [f"before: {embeddings.before_label}", f"after: {embeddings.after_label}"]
        else:
            panels = [f"{embeddings.before_label} (adaptation leaves it unchanged)"]
        frame, explained, shared = points_frame(context, embeddings, predictions, panels)
        spec = charts.to_spec(charts.embedding_chart(frame, panels, context.class_names, explained, shared))
        context.cache[key] = (spec, shared)
    spec, shared = context.cache[key]
    with st.container(key="embedding-chart"):  # a CSS hook (the browser test finds the chart by it)
        st.vega_lite_chart(spec, width="content")
    planes = ("One PCA per algorithm and task, fitted on the points of both panels, so they share axes." if shared
              else "The two embeddings differ in size, so each panel has its own PCA (fitted per task).")
    st.caption("Circles: support examples; diamonds: queries, coloured by the class predicted; crosses: class "
               f"prototypes. {planes} Hover a point to see its image.")
