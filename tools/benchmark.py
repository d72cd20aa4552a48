"""How fast does the app answer? ``python -m tools.benchmark [--browser]``.

Measures, for an N-way K-shot task drawn by the user (default 5-way 1-shot, 5 queries) and every
registered algorithm:

1. ``engine.compare.compare``: the maths the app runs per comparison (median / p90 per algorithm
   and in total), with the app's thread setting;
2. the app's whole script run that produces the results page (``streamlit.testing`` AppTest: a new
   drawing arrives, all algorithms adapt, the page is rebuilt);
3. with ``--browser`` (needs ``playwright`` and Chromium): wall-clock time in a real browser from
   pressing "Add query" to the new prediction being on screen.

Checkpoints come from the models folder (``$META_PLAYGROUND_MODELS`` or ``models/``); algorithms
without one are timed with freshly initialised full-size networks (same cost, no accuracy).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app import state  # noqa: E402
from app.models import MODELS_ENV, load_models, models_dir  # noqa: E402
from app.workspace import class_target  # noqa: E402
from engine.checkpoint import save_learner  # noqa: E402
from engine.compare import compare  # noqa: E402
from engine.learners import LEARNERS, AdaptSettings, Learner  # noqa: E402


def _learners(directory: Path) -> tuple[dict[str, Learner], list[str]]:
    entries = load_models(directory)
    learners, fresh = {}, []
    for name in sorted(LEARNERS):
        entry = entries[name]
        if entry.learner is not None:
            learners[name] = entry.learner
        else:
            learners[name] = LEARNERS[name]()
            fresh.append(name)
    return learners, fresh


def _drawings(count: int, seed: int) -> list[bytes]:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        image = Image.new("L", (280, 280), 255)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 4))):
            points = [tuple(p) for p in rng.uniform(40, 240, size=(int(rng.integers(2, 5)), 2))]
            draw.line(points, fill=0, width=10, joint="curve")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def _stats(values: list[float]) -> str:
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))]
    return f"median {statistics.median(values):7.1f} ms   p90 {p90:7.1f} ms"


def bench_compare(learners: dict[str, Learner], ways: int, shots: int, queries: int, repeats: int) -> None:
    from app.resources import compute_threads
    from engine.data.preprocess import preprocess_image
    from engine.device import keep_freed_memory

    torch.set_num_threads(compute_threads())
    keep_freed_memory()  # as the app does
    images = np.stack([preprocess_image(png) for png in _drawings(ways * shots + queries, seed=0)])
    support_x, support_y = images[: ways * shots], np.repeat(np.arange(ways), shots)
    query_x = images[ways * shots:]
    compare(learners, support_x, support_y, ways, query_x)  # warm-up
    per_algorithm: dict[str, list[float]] = {name: [] for name in learners}
    totals = []
    for _ in range(repeats):
        start = time.perf_counter()
        results = compare(learners, support_x, support_y, ways, query_x, AdaptSettings())
        totals.append((time.perf_counter() - start) * 1000)
        for result in results:
            per_algorithm[result.name].append(result.total_ms)
    print(f"\n1. engine.compare, {ways}-way {shots}-shot, {queries} queries, {torch.get_num_threads()} thread(s), "
          f"{repeats} repeats")
    for name, values in per_algorithm.items():
        print(f"   {name:10s} {_stats(values)}")
    print(f"   {'all':10s} {_stats(totals)}")


def bench_app(directory: Path, ways: int, shots: int, queries: int, repeats: int) -> None:
    from streamlit.testing.v1 import AppTest

    from app.canvas import png_data_url

    os.environ[MODELS_ENV] = str(directory)
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=300)
    at.session_state[state.WAYS], at.session_state[state.SHOTS] = ways, shots
    at.run()
    drawings = _drawings(ways * shots + queries + repeats, seed=1)

    def timed(action: Callable[[], object]) -> tuple[float, float]:
        """(wall ms, CPU ms of this process: the script thread and the compute queue's workers) of one run.
        The CPU time is what the run costs the server, whatever else shares the machine."""
        wall, cpu = time.perf_counter(), time.process_time()
        action()
        if at.exception:
            raise RuntimeError(at.exception[0].value)
        return (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000

    def add(pad: str, png: bytes) -> tuple[float, float]:
        at.session_state[pad] = {"submission": {"png": png_data_url(png), "nonce": uuid.uuid4().hex}}
        return timed(at.run)

    for index in range(ways * shots):
        add(state.pad_key(class_target(index // shots)), drawings[index])
    for index in range(queries - 1):
        add(state.QUERY_PAD, drawings[ways * shots + index])
    added, deleted = [], []
    for index in range(repeats):  # each new query: the kept adaptations predict it and the page is rebuilt
        added.append(add(state.QUERY_PAD, drawings[ways * shots + queries - 1 + index]))
        newest = at.session_state[state.WORKSPACE].queries[-1].example.id
        deleted.append(timed(at.button(key=state.delete_query_key(newest)).click().run))
    print(f"\n2. app script run (AppTest: the whole page, where the browser reruns only the changed fragments), "
          f"{ways}-way {shots}-shot, {queries} queries; CPU: this process's time, server cost under any load")
    for name, samples in (("add query", added), ("delete it", deleted)):
        print(f"   {name:10s} {_stats([wall for wall, _ in samples])}   CPU {_stats([cpu for _, cpu in samples])}")


def bench_browser(directory: Path, repeats: int) -> None:
    from playwright.sync_api import sync_playwright

    from tools.browser import chromium_path, load, new_page, serve_app, wait_idle
    from tests.test_browser import SHAPES, draw_and_add, stroke

    if chromium_path() is None:
        print("\n3. browser: skipped (no Chromium found)")
        return
    with serve_app({MODELS_ENV: str(directory)}) as url, sync_playwright() as playwright:
        context, page = new_page(playwright)
        page.set_default_timeout(120_000)
        load(page, url)
        for index in range(5):
            draw_and_add(page, f"class-{index}", SHAPES[index], expected_cards=1)
        draw_and_add(page, "queries", SHAPES[0], expected_cards=1)
        page.locator(".st-key-predictions table").wait_for()
        wait_idle(page)
        times = []
        for index in range(repeats):
            stroke(page, page.locator(".st-key-row-queries canvas.ink"), SHAPES[index % 5])
            rows = 2 + index
            start = time.perf_counter()
            page.locator(".st-key-row-queries button.add").click()
            page.wait_for_function(f"() => document.querySelectorAll('.st-key-predictions tbody tr').length >= {rows}")
            times.append((time.perf_counter() - start) * 1000)
            wait_idle(page)
        context.close()
    print("\n3. browser (Chromium): 'Add query' pressed -> its predictions on screen, 5-way 1-shot")
    print(f"   {'e2e':10s} {_stats(times)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--browser", action="store_true", help="also time the real page in Chromium")
    args = parser.parse_args()
    learners, fresh = _learners(models_dir())
    print(f"models: {models_dir()}; timed with untrained full-size networks: {', '.join(fresh) or 'none'}")
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        for name, learner in learners.items():  # the app needs a checkpoint per algorithm
            save_learner(directory / name / "model", learner, {"meta_step": 0})
        bench_compare(learners, args.ways, args.shots, args.queries, args.repeats)
        bench_app(directory, args.ways, args.shots, args.queries, max(5, args.repeats // 2))
        if args.browser:
            bench_browser(directory, max(5, args.repeats // 4))


if __name__ == "__main__":
    main()
