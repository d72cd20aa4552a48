"""What every view is handed: the comparison, the task it ran on, and its inspections (computed once
per comparison, on demand, and kept with it)."""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import streamlit as st
import torch

from app import state
from app.images import Example
from app.resources import compute_threads, compute_workers
from app.run import RunRecord
from app.workspace import Workspace
from engine.compare import AlgorithmResult, as_images
from engine.inspect import Inspection, inspect_all
from engine.learners import AdaptSettings, Learner


PREFETCH = ThreadPoolExecutor(max_workers=1, thread_name_prefix="views-prefetch")
"""Adapts in the background what a view is about to need (one at a time for the whole process)."""


@dataclass
class ViewContext:
    """One page run's view of the last comparison.

    ``current``: the task, settings and models are still those of the comparison, so the views can
    adapt again to look inside it (otherwise only the export, of what the comparison gave).
    """

    ws: Workspace
    record: RunRecord
    results: list[AlgorithmResult]
    labels: list[int | None]
    class_names: list[str]
    learners: dict[str, Learner]
    settings: AdaptSettings
    current: bool
    device_text: str = ""

    @property
    def cache(self) -> dict[Any, Any]:
        return state.views_cache(self.record)

    @property
    def names(self) -> list[str]:
        return [result.name for result in self.results]

    def inspectable(self) -> list[str]:
        """Algorithms that ran without error and whose model is loaded."""
        return [r.name for r in self.results if r.ok and r.name in self.learners]

    def support_examples(self) -> list[Example]:
        """The support set's examples in the order the comparison stacked them."""
        return [example for support_class in self.ws.visible_classes
                for example in support_class.examples(self.ws.shots)]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(support images, support labels, query images) as the comparison was given them."""
        if "tensors" not in self.cache:
            support_x, support_y = self.ws.support_arrays()
            query_x = [example.pixels for example in self.record.queries]
            self.cache["tensors"] = (as_images(support_x), torch.as_tensor(support_y), as_images(query_x))
        return self.cache["tensors"]

    def _compute(self, names: list[str]) -> dict[str, Inspection | str]:
        support_x, support_y, query_x = self.tensors()
        return inspect_all({name: self.learners[name] for name in names}, support_x, support_y, self.record.ways,
                           query_x, self.settings, workers=compute_workers(len(names)))

    def prefetch(self, names: list[str]) -> None:
        """Start inspecting ``names`` in the background (e.g. when the playback opens on its last
        step, which needs none yet), so that the first request for another step finds them done."""
        done = self.cache.setdefault("inspections", {})
        missing = [name for name in names if name not in done]
        if missing and "pending" not in self.cache:
            self.tensors()  # read the task here, in the page's thread
            self.cache["pending"] = PREFETCH.submit(contextvars.copy_context().run, self._compute, missing)

    def inspections(self, names: list[str]) -> dict[str, Inspection | str]:
        """Each named algorithm's :class:`~engine.inspect.Inspection` (or why it failed), computed
        for those not yet inspected, as many at once as the comparison ran."""
        done: dict[str, Inspection | str] = self.cache.setdefault("inspections", {})
        pending: Future[dict[str, Inspection | str]] | None = self.cache.pop("pending", None)
        if pending is not None:
            done.update(pending.result())
        missing = [name for name in names if name not in done]
        if missing:
            torch.set_num_threads(compute_threads())
            done.update(self._compute(missing))
        return {name: done[name] for name in names}


def guarded(view: Callable[[ViewContext], None]) -> Callable[[ViewContext], None]:
    """A view that fails says so in its place; the rest of the results stay on the page."""

    @functools.wraps(view)
    def run(context: ViewContext) -> None:
        try:
            view(context)
        except Exception as error:  # noqa: BLE001 - a view's failure must not take the page down
            st.error(f"This view failed ({type(error).__name__}: {error}).", icon=":material/error:")

    return run
