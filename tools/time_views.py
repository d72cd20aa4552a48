"""What do the "Inside the adaptation" views cost? ``python -m tools.time_views [--repeats N]``.

Issue 24's budget, on a default 5-way 1-shot task (5 queries, every algorithm with a checkpoint):

1. closed: the time a results page spends on the views' switches and the "About" popovers, per
   script run (median over re-runs of the page; at most 100 ms together);
2. opening: for each view, on a fresh comparison (nothing computed yet), the time from its switch
   being turned on to the view drawn: the time inside the view's own function during that script
   run, and the whole script run beside it (each view at most 300 ms);
3. the engine alone: ``engine.inspect.inspect_learner`` per algorithm (the recording adaptation that
   step playback, the embedding and saliency views share), next to its plain adaptation.

Driven headlessly with Streamlit's AppTest on the checkpoints in the models folder (``models/`` or
``$META_PLAYGROUND_MODELS``).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app import results_view, state  # noqa: E402
from app.canvas import png_data_url  # noqa: E402
from app.views import embedding, export, playback, saliency  # noqa: E402
from app.workspace import class_target  # noqa: E402
from tools.benchmark import _drawings  # noqa: E402

VIEWS: dict[str, tuple[Any, str]] = {
    "step playback": (playback, "render_playback"), "embedding view": (embedding, "render_embedding"),
    "where the network looks": (saliency, "render_saliency"), "export": (export, "render_export")}
SWITCHES = {"step playback": state.VIEW_PLAYBACK, "embedding view": state.VIEW_EMBEDDING,
            "where the network looks": state.VIEW_SALIENCY, "export": state.VIEW_EXPORT}


@contextmanager
def timed(module: Any, name: str, spent: list[float]) -> Iterator[None]:
    """Replace ``module.name`` by a wrapper that appends each call's milliseconds to ``spent``."""
    original: Callable[..., Any] = getattr(module, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent.append((time.perf_counter() - start) * 1000.0)

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, original)


def session(ways: int, shots: int, queries: int) -> Any:
    """A fresh app session with a drawn task and its comparison done."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=300)
    at.session_state[state.WAYS], at.session_state[state.SHOTS] = ways, shots
    at.run()
    drawings = _drawings(ways * shots + queries, seed=1)
    pads = [state.pad_key(class_target(index // shots)) for index in range(ways * shots)]
    for pad, png in zip(pads + [state.QUERY_PAD] * queries, drawings):
        at.session_state[pad] = {"submission": {"png": png_data_url(png), "nonce": uuid.uuid4().hex}}
        run(at)
    return at


def run(at: Any) -> float:
    start = time.perf_counter()
    at.run()
    if at.exception:
        raise RuntimeError(at.exception[0].value)
    return (time.perf_counter() - start) * 1000.0


def closed_cost(ways: int, shots: int, queries: int, repeats: int) -> None:
    at = session(ways, shots, queries)
    views: list[float] = []
    about: list[float] = []
    pages = []
    with timed(results_view, "render_views", views), timed(results_view, "render_about", about):
        for _ in range(repeats):
            pages.append(run(at))
    together = [v + a for v, a in zip(views, about)]
    print(f"\n1. closed, per script run of the results page ({repeats} runs, median):")
    print(f"   switches {statistics.median(views):6.1f} ms   about popovers {statistics.median(about):6.1f} ms   "
          f"together {statistics.median(together):6.1f} ms   (whole page run {statistics.median(pages):6.1f} ms)")


def opening_cost(ways: int, shots: int, queries: int, repeats: int) -> None:
    print(f"\n2. opening a view on a fresh comparison (median of {repeats}; inside the view / whole page run):")
    for view, (module, function) in VIEWS.items():
        inside, pages = [], []
        for _ in range(repeats):
            at = session(ways, shots, queries)
            spent: list[float] = []
            at.toggle(key=SWITCHES[view]).set_value(True)
            with timed(module, function, spent):
                pages.append(run(at))
            inside.append(sum(spent))
        print(f"   {view:24s} {statistics.median(inside):6.1f} ms   (page {statistics.median(pages):6.1f} ms)")
    scrub_cost(ways, shots, queries, repeats)


def scrub_cost(ways: int, shots: int, queries: int, repeats: int) -> None:
    """The playback's slider: the first move away from the last step adapts every inner-loop
    algorithm again (keeping each step); later moves only draw another step."""
    first, later = [], []
    for _ in range(repeats):
        at = session(ways, shots, queries)
        at.toggle(key=state.VIEW_PLAYBACK).set_value(True)
        run(at)
        last = at.slider(key=state.PLAYBACK_STEP).max
        for step, into in ((0, first), (last // 2, later), (1, later)):
            spent: list[float] = []
            at.slider(key=state.PLAYBACK_STEP).set_value(step)
            with timed(playback, "render_playback", spent):
                run(at)
            into.append(sum(spent))
    print(f"   playback, first slider move {statistics.median(first):6.1f} ms (adapts again, every step kept); "
          f"later moves {statistics.median(later):6.1f} ms")


def engine_cost(ways: int, shots: int, queries: int) -> None:
    import numpy as np

    from app.models import load_models, models_dir
    from app.resources import compute_threads
    from engine.compare import run_one
    from engine.data.preprocess import preprocess_image
    from engine.inspect import inspect_learner
    from engine.learners import AdaptSettings

    torch.set_num_threads(compute_threads())
    images = np.stack([preprocess_image(png) for png in _drawings(ways * shots + queries, seed=0)])
    support_x = torch.from_numpy(images[: ways * shots]).unsqueeze(1)
    support_y = torch.arange(ways).repeat_interleave(shots)
    query_x = torch.from_numpy(images[ways * shots:]).unsqueeze(1)
    print("\n3. engine.inspect per algorithm (median of 3): recording adaptation vs the comparison's own")
    for name, entry in load_models(models_dir()).items():
        if entry.learner is None:
            continue
        inspected, plain, method = [], [], ""
        for _ in range(3):
            start = time.perf_counter()
            found = inspect_learner(name, entry.learner, support_x, support_y, ways, query_x, AdaptSettings())
            inspected.append((time.perf_counter() - start) * 1000.0)
            method = found.method
            start = time.perf_counter()
            run_one(name, entry.learner, support_x, support_y, ways, query_x, AdaptSettings())
            plain.append((time.perf_counter() - start) * 1000.0)
        print(f"   {name:10s} inspect {statistics.median(inspected):6.1f} ms   compare.run_one "
              f"{statistics.median(plain):6.1f} ms   ({method}, {found.steps} steps)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    closed_cost(args.ways, args.shots, args.queries, args.repeats)
    opening_cost(args.ways, args.shots, args.queries, max(1, args.repeats // 2))
    engine_cost(args.ways, args.shots, args.queries)


if __name__ == "__main__":
    main()
