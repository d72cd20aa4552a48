"""Where the network looks: for one algorithm and query, the gradient of the predicted class's score
with respect to the 28x28 input (saliency), or how much erasing each patch lowers its probability
(occlusion)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app import charts, state
from app.views.context import ViewContext, guarded
from engine.inspect import Inspection, occlusion, saliency

METHODS = ("gradient", "occlusion")


@st.fragment
@guarded
def render_saliency(context: ViewContext) -> None:
    if not st.toggle("Where the network looks", key=state.VIEW_SALIENCY,
                     help="A saliency or occlusion map of one query for one algorithm."):
        return
    names = context.inspectable()
    queries = len(context.record.queries)
    if not names or not queries:
        st.caption("Add a query (and run) to see where each algorithm looks.")
        return
    state.keep_option_valid(state.SALIENCY_ALGORITHM, names)
    state.keep_option_valid(state.SALIENCY_QUERY, list(range(queries)))
    with st.container(horizontal=True):
        name = st.selectbox("Algorithm", names, key=state.SALIENCY_ALGORITHM)
        query = st.selectbox("Query", list(range(queries)), format_func=lambda i: f"Query {i + 1}",
                             key=state.SALIENCY_QUERY)
        method = st.segmented_control("Map", METHODS, key=state.SALIENCY_METHOD, default=METHODS[0],
                                      required=True)
    method = method or METHODS[0]
    found = context.inspections([name])[name]
    if not isinstance(found, Inspection) or found.model is None:
        st.error(f"**{name}**: could not inspect it ({found})")
        return
    key = ("saliency", name, query, method, tuple(context.class_names))
    if key not in context.cache:
        _, _, query_x = context.tensors()
        image = query_x[query]
        compute = saliency if method == "gradient" else occlusion
        attribution, target = compute(found.model, image)
        probability = float(found.step_probabilities[-1][query, target])
        title = (f"d score / d input, class {target + 1} ({probability:.0%})" if method == "gradient"
                 else f"probability lost when erased, class {target + 1}")
        pixels = image.reshape(28, 28).numpy()
        context.cache[key] = (charts.to_spec(charts.saliency_chart(pixels, attribution, title,
                                                                   signed=method == "gradient")),
                              target, probability, float(np.abs(attribution).max()))
    spec, target, probability, peak = context.cache[key]
    st.vega_lite_chart(spec, width="content")
    label = context.labels[query]
    truth = "" if label is None else f"; its true class is {label + 1}. {context.class_names[label]}"
    if method == "gradient":
        st.caption(f"{name} predicts class {target + 1}. {context.class_names[target]} ({probability:.0%}){truth}. "
                   "Red: more ink there would raise that class's score; blue: lower it (largest |gradient| "
                   f"{peak:.3g}).")
    else:
        st.caption(f"{name} predicts class {target + 1}. {context.class_names[target]} ({probability:.0%}){truth}. "
                   "Each pixel: how much that class's probability drops, on average, when a 6x6 patch over it is "
                   "erased.")


__all__ = ["METHODS", "render_saliency"]
