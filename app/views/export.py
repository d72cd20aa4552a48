"""Export: the results table as CSV, a chart as PNG or SVG, the run's settings as JSON."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import streamlit as st

from app import charts, state
from app.views.context import ViewContext, guarded
from engine.learners import AdaptSettings

EXPORT_WIDTH = 640
"""Width (px) of an exported chart (on the page they fill their column instead)."""
PNG_SCALE = 2
CHARTS: dict[str, Callable[..., Any]] = {
    "inner-loop loss": charts.loss_chart, "support accuracy": charts.accuracy_chart,
    "adaptation time": charts.time_chart}
CHART_KEYS = {"inner-loop loss": ("loss",), "support accuracy": ("accuracy",), "adaptation time": ("time",)}


def run_settings(context: ViewContext) -> dict[str, Any]:
    """What the comparison ran: the task's shape, the settings asked for and what each algorithm used."""
    record = context.record
    asked = record.key[2] if len(record.key) > 2 and isinstance(record.key[2], AdaptSettings) else context.settings
    return {
        "task": {"ways": record.ways, "shots": record.shots, "support_examples": record.support_count,
                 "queries": len(record.queries), "labelled_queries": sum(label is not None for label in context.labels),
                 "class_names": context.class_names},
        "settings": dataclasses.asdict(asked),
        "settings_text": record.settings_text,
        "algorithms": [{"name": r.name, "has_inner_loop": r.has_inner_loop, "steps": r.steps, "lr": r.lr,
                        "optimizer": r.optimizer, "query_accuracy": r.query_accuracy,
                        "final_support_loss": r.final_loss, "adapt_ms": round(r.adapt_ms, 2), "error": r.error,
                        "warning": r.warning} for r in context.results],
        "device": context.device_text,
        "wall_ms": round(record.wall_ms, 2),
    }


def export_spec(context: ViewContext, chart: str) -> dict[str, Any]:
    """The page's chart spec at a fixed width (an exported image has no column to fill)."""
    spec = context.record.chart(CHART_KEYS[chart], lambda: CHARTS[chart](context.results, context.names))
    spec = copy.deepcopy(spec) if spec is not None else {}
    spec["width"] = EXPORT_WIDTH
    spec["autosize"] = {"type": "pad"}
    return spec


def to_png(spec: dict[str, Any]) -> bytes:
    import vl_convert

    return vl_convert.vegalite_to_png(spec, scale=PNG_SCALE)


def to_svg(spec: dict[str, Any]) -> str:
    import vl_convert

    return vl_convert.vegalite_to_svg(spec)


def converter_available() -> bool:
    try:
        import vl_convert  # noqa: F401
    except ImportError:
        return False
    return True


@st.fragment
@guarded
def render_export(context: ViewContext) -> None:
    if not st.toggle("Export", key=state.VIEW_EXPORT,
                     help="The results table (CSV), a chart (PNG, SVG) and the run's settings (JSON)."):
        return
    from app.results_view import summary_frame

    labelled = sum(label is not None for label in context.labels)
    with st.container(horizontal=True, vertical_alignment="bottom"):
        st.download_button("Results table (CSV)", summary_frame(context.results, labelled).to_csv(index=False),
                           file_name="results.csv", mime="text/csv", key=state.EXPORT_CSV,
                           icon=":material/table:", on_click="ignore")
        st.download_button("Settings (JSON)", json.dumps(run_settings(context), indent=2),
                           file_name="settings.json", mime="application/json", key=state.EXPORT_JSON,
                           icon=":material/data_object:", on_click="ignore")
    if not any(r.ok for r in context.results):
        return
    if not converter_available():
        st.caption("Chart export needs the vl-convert-python package (`pip install vl-convert-python`).")
        return
    with st.container(horizontal=True, vertical_alignment="bottom"):
        state.keep_option_valid(state.EXPORT_CHART, list(CHARTS))
        chart = st.selectbox("Chart", list(CHARTS), key=state.EXPORT_CHART)
        name = chart.replace(" ", "-")
        # Converted only when a button is pressed (a callable is run on the click).
        st.download_button("PNG", lambda: to_png(export_spec(context, chart)), file_name=f"{name}.png",
                           mime="image/png", key=state.EXPORT_PNG, icon=":material/image:", on_click="ignore")
        st.download_button("SVG", lambda: to_svg(export_spec(context, chart)), file_name=f"{name}.svg",
                           mime="image/svg+xml", key=state.EXPORT_SVG, icon=":material/draw:", on_click="ignore")
