"""About each algorithm: its summary, inner-loop update as one formula, and its paper, from the
learner's own metadata (``Learner.about``), one popover per algorithm beside the results table."""

from __future__ import annotations

import streamlit as st

from engine.learners import LEARNERS, About


def about_of(name: str) -> About | None:
    learner_class = LEARNERS.get(name)
    return None if learner_class is None else learner_class.about


def about_markdown(name: str, about: About) -> str:
    """The popover's text (the update rule is drawn separately, as code)."""
    paper = "" if about.paper is None else (f"\n\n**Paper**: [{about.paper.title}]({about.paper.url}) "
                                            f"({about.paper.citation})")
    return f"**{name}**: {about.summary}{paper}"


def render_about(names: list[str]) -> None:
    """A row of "About" popovers, one per algorithm of the comparison."""
    with st.container(horizontal=True, gap="small", key="about-algorithms"):
        st.caption("About:")
        for name in names:
            about = about_of(name)
            if about is None or not about.summary:
                continue
            with st.popover(name, type="tertiary", icon=":material/info:"):
                st.markdown(about_markdown(name, about))
                st.markdown("**Inner-loop update**")
                st.code(about.update_rule, language=None, wrap_lines=True)
