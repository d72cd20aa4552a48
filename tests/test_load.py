"""Load: 20 browser sessions at once against one server on loopback (slow, bounded to 4 minutes).

One Chromium with 20 isolated contexts (each its own Streamlit session): all open the page, then all
draw a different character and press Add before any result is awaited, so the server handles the
20 reruns concurrently. Each session must then show exactly its own drawing (and, after a reload,
every fourth one again: the reload store under load; tests/test_browser.py checks a reload in
detail), with no error on any page, and the server's resident memory must
stay within a bound. The figures are printed (``-s``) and quoted in docs/app.md.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.checkpoint import save_learner
from engine.learners import LEARNERS
from engine.nets import BackboneConfig
from engine.paths import CACHE_DIR_ENV
from tools.browser import CHROMIUM_ARGS, chromium_path, serve_app, wait_idle

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]  # server start and stop included
MAX_SECONDS = 240
"""The sessions' part of the test (20 page loads, drawings and reloads) must finish within this: a bound that keeps
the suite finite, not a speed target (it took 131-209 s here with a training job beside it, 183-209 s failing the
180 s it was before)."""

SESSIONS = 20
RELOAD_EVERY = 4
"""Reloading all 20 pages would double the test's time on a 2-core machine; every fourth shows the point."""
MAX_GROWTH_MB_PER_SESSION = 5
"""Resident memory a session may add to the server (its task, widgets and page state): measured
under 1 MB each here (+16 to +29 MB for 40 sessions); the bound leaves room for allocator noise
without hiding a per-session leak of images or models."""


def server_rss_mb(port: int) -> float:
    """Resident memory of the ``streamlit run`` process serving ``port`` (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if b"streamlit" in b" ".join(command) and str(port).encode() in command:
            kilobytes = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))
            return int(kilobytes) / 1024
    raise RuntimeError(f"no streamlit process on port {port}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    models = tmp_path_factory.mktemp("load_models")
    for name in sorted(LEARNERS):
        save_learner(models / name / "model", LEARNERS[name](backbone=BackboneConfig(channels=8)), {"meta_step": 0})
    env = {"META_PLAYGROUND_MODELS": str(models), "OMNIGLOT_DIR": str(tmp_path_factory.mktemp("no_omniglot")),
           CACHE_DIR_ENV: str(tmp_path_factory.mktemp("load_cache"))}
    with serve_app(env, log_path=tmp_path_factory.mktemp("load_logs") / "streamlit.log") as url:
        yield url


def strokes(index: int) -> list[list[tuple[float, float]]]:
    """A different character for each session: a spoke at its own angle through a ring."""
    angle = 2 * math.pi * index / SESSIONS
    ring = [(0.5 + 0.25 * math.cos(t / 12 * 2 * math.pi), 0.5 + 0.25 * math.sin(t / 12 * 2 * math.pi))
            for t in range(13)]
    spoke = [(0.5 - 0.35 * math.cos(angle), 0.5 - 0.35 * math.sin(angle)),
             (0.5 + 0.35 * math.cos(angle), 0.5 + 0.35 * math.sin(angle))]
    return [ring, spoke]


def draw(page, index: int) -> None:
    canvas = page.locator(".st-key-row-class-0 canvas.ink")
    box = canvas.bounding_box()
    for points in strokes(index):
        page.mouse.move(box["x"] + points[0][0] * box["width"], box["y"] + points[0][1] * box["height"])
        page.mouse.down()
        for x, y in points[1:]:
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=4)
        page.mouse.up()
    page.locator(".st-key-row-class-0 button.add").click()


CARD = ".st-key-row-class-0 [class*='st-key-card-']"


def test_twenty_concurrent_sessions_are_isolated_and_memory_is_bounded(server: str) -> None:
    if chromium_path() is None:
        if os.environ.get("CI"):
            pytest.fail("the load test needs Chromium")
        pytest.skip("the load test needs Chromium")
    from playwright.sync_api import sync_playwright

    port = int(server.rsplit(":", 1)[1])
    started = time.perf_counter()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        pages = []
        try:
            for _ in range(SESSIONS):
                page = browser.new_context(viewport={"width": 1000, "height": 800}).new_page()
                page.set_default_timeout(90_000)
                page.goto(server, wait_until="commit")  # all 20 load at once
                pages.append(page)
            for page in pages:
                page.wait_for_selector(".st-key-row-class-0 canvas.ink")
                wait_idle(page)
            loaded_s = time.perf_counter() - started
            baseline = server_rss_mb(port)
            for index, page in enumerate(pages):  # every session draws before any result is awaited
                draw(page, index)
            submitted = time.perf_counter()
            for page in pages:
                page.wait_for_selector(CARD)
                wait_idle(page)
            all_added_s = time.perf_counter() - submitted
            drawings = [page.locator(f"{CARD} img").first.get_attribute("src") for page in pages]
            assert [page.locator(CARD).count() for page in pages] == [1] * SESSIONS
            assert len(set(drawings)) == SESSIONS  # each session shows its own drawing, no other's
            reloading = time.perf_counter()
            reloaded = list(range(0, SESSIONS, RELOAD_EVERY))
            for index in reloaded:
                pages[index].reload(wait_until="commit")
            for index in reloaded:
                page = pages[index]
                page.wait_for_selector(CARD)
                wait_idle(page)
                assert page.locator(CARD).count() == 1
                assert page.locator(f"{CARD} img").first.get_attribute("src") == drawings[index]
            for page in pages:
                assert page.locator("[data-testid='stException']").count() == 0
                assert page.locator("[data-testid='stAlertContentError']").count() == 0
            reloaded_s = time.perf_counter() - reloading
            peak = server_rss_mb(port)
        finally:
            browser.close()
    growth = peak - baseline
    print(f"\n{SESSIONS} sessions: pages loaded in {loaded_s:.0f} s, reloaded in {reloaded_s:.0f} s; "
          f"all drawings added {all_added_s:.1f} s after the last Add was pressed; "
          f"server RSS {baseline:.0f} MB with {SESSIONS} pages open -> {peak:.0f} MB after "
          f"{SESSIONS + len(reloaded)} sessions "
          f"(+{growth:.0f} MB); whole test {time.perf_counter() - started:.0f} s")
    assert growth < MAX_GROWTH_MB_PER_SESSION * (SESSIONS + len(reloaded))
    assert time.perf_counter() - started < MAX_SECONDS
