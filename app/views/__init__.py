"""The results' "Inside the adaptation" views, one module each, and what they share.

* :mod:`app.views.playback`: a slider (and Play) over the inner steps: every algorithm's query
  probabilities and support loss at that step.
* :mod:`app.views.embedding`: a 2-D PCA of the support and query embeddings and the class
  prototypes, before and after adaptation, for one algorithm.
* :mod:`app.views.saliency`: where the network looks, for one algorithm and query.
* :mod:`app.views.export`: the results table (CSV), the charts (PNG/SVG), the run's settings (JSON).
* :mod:`app.views.about`: each algorithm's summary, inner-loop update and paper, beside the table.

Each view is closed by default (a switch) and computes only when opened; what it computes is kept
with the comparison (:func:`app.state.views_cache`). The maths is in :mod:`engine.inspect`.
"""

from __future__ import annotations

import streamlit as st

from app.views.context import ViewContext


def render_views(context: ViewContext) -> None:
    """The "Inside the adaptation" section: each view's switch, and the open views."""
    from app.views import embedding, export, playback, saliency

    st.markdown("##### Inside the adaptation")
    if not context.current:
        st.caption("The task or the settings changed since these results: press Run to look inside them.")
        export.render_export(context)
        return
    playback.render_playback(context)
    embedding.render_embedding(context)
    saliency.render_saliency(context)
    export.render_export(context)


__all__ = ["ViewContext", "render_views"]
