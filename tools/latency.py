"""Browser latency of the app's three frequent actions: ``python -m tools.latency [--repeats 20]``.

One real ``streamlit run`` and one headless Chromium page (tools/browser.py). For a 5-way 1-shot
task drawn on the pads it times, ``--repeats`` times each, from the click to the updated page:

* **add query**: "Add query" pressed -> the new query's row in the predictions table;
* **add support example**: a class's example deleted, a new one drawn and "Add" pressed -> every
  selected algorithm re-adapted and the results caption showing the new comparison;
* **label pick**: a query's true class chosen -> the predictions table showing it.

Prints p50/p95 per action and saves them as JSON (``--out``, default
``assets/latency-<date>-<device>.json``) with the machine's load, so figures from a busy machine
are read as such. Uses the checkpoints in ``models/`` (``$META_PLAYGROUND_MODELS``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.browser import chromium_path, load, new_page, serve_app, wait_idle  # noqa: E402

RESULTS_CAPTION = "[data-testid=stCaptionContainer]"
WAYS = 5


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p50 = the median of an odd count)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float | None]:
    """p50/p95/mean/min/max in ms and the count; the figures are None when there is no sample."""
    if not values:
        return {"p50_ms": None, "p95_ms": None, "mean_ms": None, "min_ms": None, "max_ms": None, "n": 0}
    return {"p50_ms": round(percentile(values, 0.5), 1), "p95_ms": round(percentile(values, 0.95), 1),
            "mean_ms": round(statistics.fmean(values), 1), "min_ms": round(min(values), 1),
            "max_ms": round(max(values), 1), "n": len(values)}


def results_caption(page: Any) -> str:
    """The caption above the ranking ("5-way, 5 support examples, ... in 312 ms on cpu"), or ""."""
    return page.evaluate(
        "() => [...document.querySelectorAll('.st-key-run-controls ~ * [data-testid=stCaptionContainer], "
        "[data-testid=stCaptionContainer]')].map(e => e.innerText).find(t => t.includes('support example')) || ''")


def predictions_rows(page: Any) -> int:
    return page.evaluate("() => document.querySelectorAll('.st-key-predictions tbody tr').length")


def time_add_query(page: Any, shape: Any) -> float:
    from tests.test_browser import stroke

    rows = predictions_rows(page)
    stroke(page, page.locator(".st-key-row-queries canvas.ink"), shape)
    start = time.perf_counter()
    page.locator(".st-key-row-queries button.add").click()
    page.wait_for_function(f"() => document.querySelectorAll('.st-key-predictions tbody tr').length > {rows}")
    elapsed = (time.perf_counter() - start) * 1000
    wait_idle(page)
    return elapsed


def time_add_support(page: Any, shape: Any) -> float:
    """Delete class 1's example (the task cannot run: nothing adapts), draw a new one, time "Add"."""
    from tests.test_browser import stroke

    page.locator(".st-key-row-class-0 [class*='st-key-del-'] button").first.click()
    page.wait_for_function("() => !document.querySelector(\".st-key-row-class-0 [class*='st-key-card-']\")")
    wait_idle(page)
    before = results_caption(page)
    stroke(page, page.locator(".st-key-row-class-0 canvas.ink"), shape)
    start = time.perf_counter()
    page.locator(".st-key-row-class-0 button.add").click()
    page.wait_for_function(
        "before => { const t = [...document.querySelectorAll('[data-testid=stCaptionContainer]')]"
        ".map(e => e.innerText).find(t => t.includes('support example')) || '';"
        " return t && t !== before && !document.body.textContent.includes('changed since these results'); }",
        arg=before)
    elapsed = (time.perf_counter() - start) * 1000
    wait_idle(page)
    return elapsed


def time_label_pick(page: Any, label: int) -> float:
    """Choose class ``label`` (0-based) for query 1, time until the predictions table shows it."""
    box = page.locator("[class*='st-key-qlabel-'] [data-testid=stSelectbox] :is([role=combobox], button)").first
    box.click()
    option = page.locator("[role=option]").nth(label + 1)  # option 0 is "class?"
    option.wait_for()
    start = time.perf_counter()
    option.click()
    page.wait_for_function(
        "label => { const cell = document.querySelector('.st-key-predictions tbody tr td:nth-child(2)');"
        " return cell && cell.innerText.trim().startsWith(label + '.'); }", arg=label + 1)
    elapsed = (time.perf_counter() - start) * 1000
    wait_idle(page)
    return elapsed


def run(repeats: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    from tests.test_browser import SHAPES, draw_and_add

    if chromium_path() is None:
        raise SystemExit("Chromium not found (apt-get install chromium, or set $CHROMIUM)")
    times: dict[str, list[float]] = {"add_query": [], "add_support_example": [], "label_pick": []}
    with serve_app() as url, sync_playwright() as playwright:
        context, page = new_page(playwright)
        page.set_default_timeout(120_000)
        load(page, url)
        for index in range(WAYS):
            draw_and_add(page, f"class-{index}", SHAPES[index], expected_cards=1)
        draw_and_add(page, "queries", SHAPES[0], expected_cards=1)
        page.locator(".st-key-predictions table").wait_for()
        wait_idle(page)
        for index in range(repeats):
            times["add_query"].append(time_add_query(page, SHAPES[(index + 1) % WAYS]))
        for index in range(repeats):
            times["label_pick"].append(time_label_pick(page, index % WAYS))
        for index in range(repeats):
            times["add_support_example"].append(time_add_support(page, SHAPES[(index + 2) % WAYS]))
        context.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    load_before = os.getloadavg()
    times = run(args.repeats)
    report = {
        "what": "click -> updated page in headless Chromium, 5-way 1-shot, all algorithms with a checkpoint",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cores": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "actions": {name: summary(values) for name, values in times.items()},
        "samples_ms": {name: [round(v, 1) for v in values] for name, values in times.items()},
    }
    for name, stats in report["actions"].items():
        print(f"{name:22s} p50 {stats['p50_ms']:7.1f} ms   p95 {stats['p95_ms']:7.1f} ms   (n={stats['n']})")
    print(f"load average before/after: {load_before} / {report['load_average_after']}")
    save_report(report, args.out, "latency")


def save_report(report: dict[str, Any], out: Path | None, kind: str) -> None:
    """Write ``report`` as JSON to ``out`` (default ``assets/<kind>-<date>-cpu.json``) and say where."""
    out = out or ROOT / "assets" / f"{kind}-{datetime.date.today().isoformat()}-cpu.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
