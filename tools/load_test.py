"""Many people at once: ``python -m tools.load_test [--sessions 8] [--rounds 3]``.

One ``streamlit run`` on 127.0.0.1 and one headless Chromium with ``--sessions`` isolated browser
contexts (each its own Streamlit session). Every session draws a 5-way 1-shot task and a query (in a hand of
its own: no two sessions draw the same pixels, so none gets another's adaptations from the cache), then,
all at the same time, ``--rounds`` times: deletes a support example, draws a new one and presses Add;
the time from that click to the results caption of the new comparison is one sample. Bounded: the
whole run stops after ``--limit`` seconds. Prints p50/p95/max over every sample and saves JSON
(``--out``, default ``assets/load-<date>-cpu.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.browser import CHROMIUM_ARGS, chromium_path, serve_app  # noqa: E402
from tools.latency import save_report, summary  # noqa: E402

WAYS = 5
# JavaScript expressions over the page, and the functions the harness evaluates from them.
IDLE = "document.querySelector('[data-testid=stApp]')?.getAttribute('data-test-script-state') === 'notRunning'"
CAPTION = ("([...document.querySelectorAll('[data-testid=stCaptionContainer]')].map(e => e.innerText)"
           ".find(t => t.includes('support example')) || '')")
STALE = "document.body.textContent.includes('changed since these results')"
IDLE_JS = f"() => {IDLE}"
CAPTION_JS = f"() => {CAPTION}"
STALE_JS = f"() => {STALE}"
# The new comparison is on screen: a new caption and no note that the results are stale. Its caption can read
# as the one before (the same counts and, when every adaptation comes from the cache the sessions share,
# the same milliseconds): then the stale note shown before the click is gone and the script has finished.
UPDATED_JS = (f"([before, staleBefore]) => {{ const t = {CAPTION};"
              f" return !!t && !({STALE}) && (t !== before || (staleBefore && {IDLE})); }}")
QUEUED_JS = "() => document.body.textContent.includes('ahead)')"
STATE_JS = ("() => ({script: document.querySelector('[data-testid=stApp]')?.getAttribute('data-test-script-state'),"
            " results: (document.querySelector('.st-key-run-controls')?.closest('[data-testid=stColumn]')?.innerText"
            " || '').slice(0, 800),"
            " row: (document.querySelector('.st-key-row-class-0')?.textContent || '').slice(0, 300)})")
"""What a page shows when its round is lost (the report keeps it, to tell a lost result from a slow one)."""
"""The page's text without a layout pass (``innerText`` of the whole body costs the browser a
layout each time, and eight pages polled every 50 ms made the harness compete with the server)."""
Shape = list[list[tuple[float, float]]]  # strokes of points in unit coordinates (tests/test_browser.py's SHAPES)
POLL_MS = 50
ROUND_LIMIT_S = 120.0
"""A round whose results are not on screen after this long counts as lost (reported, not waited for)."""


async def idle(page: Any) -> None:
    await page.wait_for_timeout(250)
    await page.wait_for_function(IDLE_JS)


async def wait_enabled(locator: Any, timeout_s: float = 60.0) -> None:
    """Until ``locator`` (the pad lives in a shadow root, which locators reach) can be pressed."""
    deadline = time.perf_counter() + timeout_s
    while not await locator.is_enabled() and time.perf_counter() < deadline:
        await asyncio.sleep(POLL_MS / 1000)


async def stroke(page: Any, row: str, shape: Shape, attempts: int = 3) -> None:
    """Draw ``shape`` on the row's pad, once the pad takes drawings, and check that it holds strokes.

    Under load the pad can still be redrawn by the run that follows a deletion while the mouse moves
    (the strokes then land on a pad that is replaced, or beside it): that would be a lost drawing of
    the harness, not of the app, so it draws again (at most ``attempts`` times) before Add is pressed."""
    pad = f".st-key-row-{row}"
    for _ in range(attempts):
        await wait_enabled(page.locator(f"{pad} button.add"))
        canvas = page.locator(f"{pad} canvas.ink")
        await canvas.scroll_into_view_if_needed()
        await page.wait_for_timeout(150)
        box = await canvas.bounding_box()
        for points in shape:
            await page.mouse.move(box["x"] + points[0][0] * box["width"], box["y"] + points[0][1] * box["height"])
            await page.mouse.down()
            for x, y in points[1:]:
                await page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=6)
            await page.mouse.up()
        if await page.locator(f"{pad} button.clear").is_enabled():
            return
    raise RuntimeError(f"the pad of {row} kept no strokes after {attempts} attempts")


async def add(page: Any, row: str, shape: Shape, cards: int) -> None:
    await stroke(page, row, shape)
    await page.locator(f".st-key-row-{row} button.add").click()
    await page.wait_for_function(
        f"() => document.querySelectorAll('.st-key-row-{row} [class*=\"st-key-card-\"], "
        f".st-key-row-{row} [class*=\"st-key-qcard-\"]').length >= {cards}")
    await idle(page)


def own_hand(shape: Shape, person: int) -> Shape:
    """``shape`` sheared a little more for each ``person``, so that no two sessions draw the same pixels: the
    adaptations they ask for differ, as eight people's would, instead of coming from the cache they share."""
    return [[(x + 0.03 * person * (y - 0.5), y) for x, y in points] for points in shape]


async def session(browser: Any, url: str, rounds: int, start_together: asyncio.Barrier,
                  samples: list[float], queued_seen: list[bool], lost: list[dict[str, Any]] | None = None,
                  person: int = 0) -> None:
    from tests.test_browser import SHAPES

    shapes = [own_hand(shape, person) for shape in SHAPES]

    context = await browser.new_context(viewport={"width": 1500, "height": 1000})
    page = await context.new_page()
    page.set_default_timeout(170_000)
    await page.goto(url)
    await page.wait_for_selector(".st-key-row-class-0 canvas.ink")
    await idle(page)
    for index in range(WAYS):
        await add(page, f"class-{index}", shapes[index], 1)
    await add(page, "queries", shapes[0], 1)
    await page.locator(".st-key-predictions table").wait_for()
    await start_together.wait()
    for number in range(rounds):
        await page.locator(".st-key-row-class-0 [class*='st-key-del-'] button").first.click()
        await page.wait_for_function("() => !document.querySelector(\".st-key-row-class-0 [class*='st-key-card-']\")")
        await idle(page)
        before = await page.evaluate(CAPTION_JS)
        stale_before = await page.evaluate(STALE_JS)
        await stroke(page, "class-0", shapes[(number + 1) % WAYS])
        start = time.perf_counter()
        await page.locator(".st-key-row-class-0 button.add").click()
        while not await page.evaluate(UPDATED_JS, [before, stale_before]):
            if await page.evaluate(QUEUED_JS):
                queued_seen[0] = True
            if time.perf_counter() - start > ROUND_LIMIT_S:
                break
            await page.wait_for_timeout(POLL_MS)
        elapsed = (time.perf_counter() - start) * 1000
        if elapsed > ROUND_LIMIT_S * 1000 and lost is not None:
            pad_message = await page.locator(".st-key-row-class-0 .msg").first.text_content()
            lost.append({"ms": round(elapsed), "caption_before": before, "pad_message": pad_message,
                         **await page.evaluate(STATE_JS)})
            await page.reload()
            await page.wait_for_selector(".st-key-row-class-0 canvas.ink")
        else:
            samples.append(elapsed)
        await idle(page)
    await context.close()


async def drive(url: str, sessions: int, rounds: int) -> tuple[list[float], bool, list[dict[str, Any]]]:
    from playwright.async_api import async_playwright

    samples: list[float] = []
    lost: list[dict[str, Any]] = []
    queued_seen = [False]
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        barrier = asyncio.Barrier(sessions)
        await asyncio.gather(*(session(browser, url, rounds, barrier, samples, queued_seen, lost, person)
                               for person in range(sessions)))
        await browser.close()
    return samples, queued_seen[0], lost


def run(sessions: int, rounds: int, limit_s: float, env: dict[str, str] | None = None,
        log_path: Path | None = None) -> dict[str, Any]:
    """Serve the app (its log to ``log_path``), drive the sessions (at most ``limit_s`` seconds), return the report."""
    if chromium_path() is None:
        raise RuntimeError("Chromium not found (apt-get install chromium, or set $CHROMIUM)")
    load_before = os.getloadavg()
    with serve_app(env, log_path) as url:
        samples, queued_seen, lost = asyncio.run(asyncio.wait_for(drive(url, sessions, rounds), timeout=limit_s))
    return {
        "what": f"{sessions} simultaneous sessions, 5-way 1-shot: add a support example -> results of the new "
                "comparison on screen (all algorithms with a checkpoint re-adapted)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cores": os.cpu_count(), "sessions": sessions, "rounds": rounds,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "add_support_example": summary(samples), "queued_note_seen": queued_seen,
        "lost_rounds": len(lost), "lost_pages": lost, "round_limit_s": ROUND_LIMIT_S,
        "samples_ms": [round(v, 1) for v in samples],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=float, default=600, help="seconds before the whole run is stopped")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report = run(args.sessions, args.rounds, args.limit)
    stats = report["add_support_example"]
    figures = (f"p50 {stats['p50_ms']:.0f} ms  p95 {stats['p95_ms']:.0f} ms  max {stats['max_ms']:.0f} ms"
               if stats["n"] else "no round finished")
    print(f"{args.sessions} sessions: add support example -> results  {figures}  (n={stats['n']}); "
          f"'queued' note seen: {report['queued_note_seen']}; rounds whose results never showed within "
          f"{ROUND_LIMIT_S:.0f} s: {report['lost_rounds']}")
    print(f"load average before/after: {report['load_average_before']} / {report['load_average_after']}")
    save_report(report, args.out, "load")


if __name__ == "__main__":
    main()
