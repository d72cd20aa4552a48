"""End-to-end tests in a real browser: Debian's Chromium driven by Python Playwright.

The app runs as a real ``streamlit run`` server on tiny checkpoints; the tests draw strokes on the
canvases with mouse events, run the algorithms and read the predictions from the page.

Needs ``playwright`` (pip) and a Chromium binary (``/usr/bin/chromium`` from Debian's ``chromium``
package, or ``$CHROMIUM``); ``playwright install`` is never needed. Marked slow (``--run-slow``).
Without a browser the tests are skipped, except under CI (``$CI`` set), where that is a failure.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.browser import chromium_path, load, new_page, serve_app, wait_idle
from engine.checkpoint import save_learner
from engine.learners import LEARNERS
from engine.nets import BackboneConfig
from engine.paths import CACHE_DIR_ENV

pytestmark = pytest.mark.slow

ALGORITHMS = sorted(LEARNERS)
STORE_ROOT = Path(tempfile.mkdtemp(prefix="mp-browser-cache-"))
"""The server's cache folder: tests put tasks in its reload store to open a page on a full task."""
Stroke = list[tuple[float, float]]

SHAPES: list[list[Stroke]] = [
    [[(0.2, 0.2), (0.8, 0.8)], [(0.8, 0.2), (0.2, 0.8)]],  # X
    [[(0.5 + 0.3 * math.cos(t / 24 * 2 * math.pi), 0.5 + 0.3 * math.sin(t / 24 * 2 * math.pi)) for t in range(25)]],
    [[(0.2, 0.25), (0.8, 0.25), (0.2, 0.75), (0.8, 0.75)]],  # Z
    [[(0.5, 0.15), (0.5, 0.85)], [(0.15, 0.5), (0.85, 0.5)]],  # +
    [[(0.2, 0.8), (0.5, 0.2), (0.8, 0.8)]],  # ^
]


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"browser tests need {reason} (CI must install it)")
    pytest.skip(f"browser tests need {reason}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``streamlit run app/main.py`` on a free port with tiny checkpoints for every algorithm."""
    models = tmp_path_factory.mktemp("browser_models")
    for name in ALGORITHMS:
        save_learner(models / name / "model", LEARNERS[name](backbone=BackboneConfig(channels=8)),
                     {"meta_step": 0, "val_accuracy": 0.2})
    env = {"META_PLAYGROUND_MODELS": str(models), "OMNIGLOT_DIR": str(tmp_path_factory.mktemp("no_omniglot")),
           CACHE_DIR_ENV: str(STORE_ROOT)}
    with serve_app(env, log_path=tmp_path_factory.mktemp("browser_logs") / "streamlit.log") as url:
        yield url


def expect(locator):
    """Playwright's retrying assertions (imported lazily: the module must import without playwright)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


@pytest.fixture()
def browser() -> Iterator[object]:
    """A factory of fresh, isolated Chromium pages (each its own profile, so its own session)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package (pip install playwright)")
    if chromium_path() is None:
        _missing("Chromium (apt-get install chromium)")
    contexts = []
    with sync_playwright() as playwright:

        def open_page(width: int = 1500, height: int = 1000):
            context, page = new_page(playwright, width, height)
            contexts.append(context)
            return page

        try:
            yield open_page
        finally:
            for context in contexts:
                context.close()


# --------------------------------------------------------------------------- helpers


def pad(page, row: str):
    return page.locator(f".st-key-row-{row} canvas.ink")


def stroke(page, canvas, strokes: list[Stroke]) -> None:
    """Mouse strokes over the canvas (points given in [0, 1] canvas coordinates)."""
    canvas.scroll_into_view_if_needed()
    page.wait_for_timeout(150)  # let smooth scrolling settle before reading the position
    box = canvas.bounding_box()
    assert box is not None

    def at(x: float, y: float) -> tuple[float, float]:
        return box["x"] + x * box["width"], box["y"] + y * box["height"]

    for points in strokes:
        page.mouse.move(*at(*points[0]))
        page.mouse.down()
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            for i in range(1, 7):
                t = i / 6
                page.mouse.move(*at(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t))
        page.mouse.up()


def ink_pixels(canvas) -> int:
    """Dark pixels currently on a pad's canvas."""
    return canvas.evaluate(
        "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;"
        " for (let i = 3; i < d.length; i += 4) if (d[i] > 128) n++; return n; }")


def draw_and_add(page, row: str, shape: list[Stroke], expected_cards: int) -> None:
    stroke(page, pad(page, row), shape)
    page.locator(f".st-key-row-{row} button.add").click()
    page.wait_for_function(
        f"() => document.querySelectorAll('.st-key-row-{row} [class*=\"st-key-card-\"], "
        f".st-key-row-{row} [class*=\"st-key-qcard-\"]').length >= {expected_cards}")
    wait_idle(page)


def focused_rows(page) -> list[str]:
    """Rows whose drawing pad has keyboard focus (the canvas lives in the pad's shadow DOM)."""
    return page.evaluate(
        "() => [...document.querySelectorAll('[class*=\"st-key-row-\"]')].filter(row => {"
        " const host = row.querySelector('[data-testid=stBidiComponentIsolated]');"
        " return host && host.shadowRoot && host.shadowRoot.activeElement; })"
        ".map(row => [...row.classList].find(c => c.startsWith('st-key-row-')).slice(11))")


# --------------------------------------------------------------------------- tests


def test_draw_a_task_run_every_algorithm_and_read_the_predictions(server: str, browser) -> None:
    page = browser()
    load(page, server)
    for index in range(5):  # the default 5-way 1-shot task
        draw_and_add(page, f"class-{index}", SHAPES[index], expected_cards=1)
        cards = page.locator(f".st-key-row-class-{index} [class*='st-key-card-']")
        expect(cards).to_have_count(1)
        expect(cards.first.locator("img")).to_have_count(2)  # the drawing and the 28x28 network input
        # The class is full: keyboard focus moves on to the next pad, ready for the next drawing.
        expected = f"class-{index + 1}" if index < 4 else "queries"
        for _ in range(50):
            if focused_rows(page) == [expected]:
                break
            page.wait_for_timeout(100)
        assert focused_rows(page) == [expected]
    for number, shape in enumerate([SHAPES[1], SHAPES[3]], start=1):
        draw_and_add(page, "queries", shape, expected_cards=number)
    page.wait_for_function("() => document.querySelectorAll('.st-key-predictions tbody tr').length == 2")
    wait_idle(page)
    table = page.locator(".st-key-predictions table")
    header = [cell.strip() for cell in table.locator("thead th").all_inner_texts()]
    assert header == ["query", "true class", *ALGORITHMS]
    rows = table.locator("tbody tr")
    assert rows.count() == 2
    for row in range(2):
        cells = rows.nth(row).locator("td").all_inner_texts()
        for cell in cells[2:]:
            predicted = int(cell.split()[0])
            assert 1 <= predicted <= 5 and "%" in cell, cells
    # The ranking table, the loss/accuracy/time charts and one probability chart per query.
    expect(page.locator("[data-testid='stDataFrame']")).to_have_count(1)
    expect(page.locator("[data-testid='stVegaLiteChart']")).to_have_count(3 + 2)
    assert page.locator("[data-testid='stException']").count() == 0


def test_pad_undo_clear_and_empty_canvas(server: str, browser) -> None:
    page = browser()
    load(page, server)
    canvas = pad(page, "class-0")
    row = page.locator(".st-key-row-class-0")
    stroke(page, canvas, SHAPES[0][:1])
    assert ink_pixels(canvas) > 0
    row.locator("button.undo").click()
    assert ink_pixels(canvas) == 0
    row.locator("button.add").click()
    assert "empty" in row.locator(".msg").inner_text()
    page.wait_for_timeout(500)
    assert row.locator("[class*='st-key-card-']").count() == 0  # nothing was sent
    stroke(page, canvas, SHAPES[0])
    drawn = ink_pixels(canvas)
    row.locator("button.clear").click()
    assert ink_pixels(canvas) == 0
    row.locator("button.undo").click()  # clearing can be undone
    assert ink_pixels(canvas) == pytest.approx(drawn, rel=0.05)  # redrawn in one pass: same strokes
    canvas.press("Enter")  # keyboard shortcut for Add
    row.locator("[class*='st-key-card-']").first.wait_for()
    assert ink_pixels(canvas) == 0  # the pad is ready for the next example
    wait_idle(page)
    assert "1/1" in row.inner_text()


def test_sessions_never_see_each_others_drawings(server: str, browser) -> None:
    first, second = browser(), browser()
    load(first, server)
    load(second, server)
    draw_and_add(first, "class-0", SHAPES[0], expected_cards=1)
    second.reload()
    second.wait_for_selector(".st-key-row-class-0 canvas.ink")
    wait_idle(second)
    expect(second.locator(".st-key-row-class-0 [class*='st-key-card-']")).to_have_count(0)
    assert "0/1" in second.locator(".st-key-row-class-0").inner_text()
    first.reload()  # a reload is a new session: its own task comes back (from its address), no other's
    first.wait_for_selector(".st-key-row-class-0 canvas.ink")
    wait_idle(first)
    expect(first.locator(".st-key-row-class-0 [class*='st-key-card-']")).to_have_count(1)
    second.reload()
    second.wait_for_selector(".st-key-row-class-0 canvas.ink")
    wait_idle(second)
    expect(second.locator(".st-key-row-class-0 [class*='st-key-card-']")).to_have_count(0)


def test_a_drawn_task_survives_a_reload(server: str, browser) -> None:
    page = browser()
    load(page, server)
    draw_and_add(page, "class-0", SHAPES[0], expected_cards=1)
    draw_and_add(page, "class-1", SHAPES[1], expected_cards=1)
    draw_and_add(page, "queries", SHAPES[3], expected_cards=1)
    page.locator(".st-key-row-class-1 input[type='text']").fill("Ring")
    page.locator(".st-key-row-class-1 input[type='text']").press("Enter")
    wait_idle(page)
    assert "task=" in page.url
    drawn = page.locator(".st-key-row-class-0 [class*='st-key-card-'] img").first.get_attribute("src")
    page.reload()
    page.wait_for_selector(".st-key-row-class-0 [class*='st-key-card-']")
    wait_idle(page)
    for row in ("class-0", "class-1"):
        expect(page.locator(f".st-key-row-{row} [class*='st-key-card-']")).to_have_count(1)
    expect(page.locator(".st-key-row-queries [class*='st-key-qcard-']")).to_have_count(1)
    assert page.locator(".st-key-row-class-0 [class*='st-key-card-'] img").first.get_attribute("src") == drawn
    assert page.locator(".st-key-row-class-1 input[type='text']").input_value() == "Ring"
    assert page.locator("[data-testid='stException']").count() == 0


# --------------------------------------------------------------------------- narrow and wide screens

FITS = """(selector) => {
  // Every matching element is inside the viewport, or inside a box that scrolls and is itself inside.
  const width = window.innerWidth + 1;
  return [...document.querySelectorAll(selector)].every((el) => {
    if (el.getBoundingClientRect().right <= width) return true;
    for (let up = el.parentElement; up; up = up.parentElement) {
      const style = getComputedStyle(up).overflowX;
      if (style === 'auto' || style === 'scroll')
        return up.getBoundingClientRect().right <= width && up.scrollWidth > up.clientWidth;
    }
    return false;
  });
}"""


def stored_task(ways: int = 3, queries: int = 2) -> str:
    """A drawn task in the server's reload store; returns its token (the page opens on it)."""
    from app.images import example_from_bytes
    from app.persistence import write_task
    from app.task_store import TaskStore, new_token
    from app.workspace import Workspace
    from tests.test_app import shape_png

    ws = Workspace()
    ws.set_size(ways, 1)
    for index in range(ways):
        ws.classes[index].slots[0] = example_from_bytes(shape_png(index), "drawing", "drawing")
    for number in range(queries):
        ws.add_query(example_from_bytes(shape_png(number, jitter=0.03), "drawing", "drawing"), number)
    token = new_token()
    TaskStore(STORE_ROOT / "tasks").save(token, write_task(ws))
    return token


@pytest.mark.parametrize("width", [420, 1280, 1920])
def test_the_page_fits_phone_mid_and_wide_screens(server: str, browser, width: int, tmp_path: Path) -> None:
    page = browser(width=width, height=900)
    page.goto(f"{server}/?task={stored_task()}")
    page.wait_for_selector(".st-key-predictions table")
    wait_idle(page)
    page.wait_for_timeout(500)
    page.screenshot(path=str(tmp_path / f"page-{width}.png"))
    page.locator(".st-key-predictions").scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / f"results-{width}.png"))
    # Collapsed, the sidebar slides off the left edge; expanded, it covers the left of the page.
    sidebar_right = page.locator("[data-testid='stSidebar']").evaluate("el => el.getBoundingClientRect().right")
    assert (sidebar_right <= 1) == (width < 768), sidebar_right  # collapsed on phones at first load
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")
    for selector in (".st-key-predictions table", "[data-testid='stVegaLiteChart']", "[data-testid='stDataFrame']",
                     ".st-key-toolbar"):
        assert page.evaluate(FITS, selector), f"{selector} is cut off at {width} px"
    builder = page.locator(".st-key-builder").bounding_box()
    results = page.locator(".st-key-run-controls").bounding_box()
    beside = results["x"] > builder["x"] + builder["width"] / 2 and results["y"] < builder["y"] + 200
    assert beside == (width >= 1280), (width, builder, results)
    assert page.get_by_text("Deploy", exact=True).count() == 0  # no developer chrome (.streamlit/config.toml)
    if width >= 768:  # the algorithm selector shows every chosen algorithm, none cut off at its bottom
        hidden = page.evaluate("""() => {
          const box = document.querySelector('[data-testid=stSidebar] [data-testid=stMultiSelectTagsContainer]');
          const tags = [...box.querySelectorAll('[data-tag]')];
          const bottom = box.getBoundingClientRect().bottom + 1;
          return [tags.length, tags.filter((t) => t.getBoundingClientRect().bottom > bottom).length]; }""")
        assert hidden == [len(ALGORITHMS), 0], hidden


def test_a_bad_upload_is_explained_next_to_its_class(server: str, browser, tmp_path: Path) -> None:
    page = browser()
    load(page, server)
    draw_and_add(page, "class-0", SHAPES[0], expected_cards=1)
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    row = page.locator(".st-key-row-class-1")
    row.locator("[data-testid='stPopover'] button").first.click()
    page.locator("[data-testid='stFileUploaderDropzoneInput']").last.set_input_files(str(bad))
    row.locator("[data-testid='stAlertContentError']").wait_for()
    assert "“notes.txt” was not added" in row.inner_text()
    expect(page.locator(".st-key-row-class-0 [class*='st-key-card-']")).to_have_count(1)  # nothing lost
