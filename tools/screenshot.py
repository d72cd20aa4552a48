"""Re-create the README's screenshot: ``python -m tools.screenshot [--out assets/app-results.png]``.

Starts the app on the checkpoints in the models folder (``$META_PLAYGROUND_MODELS`` or ``models/``),
opens the Omniglot task link (evaluation split; needs the dataset), waits for the comparison and saves
the top of the page. Needs ``playwright`` and Chromium (see :mod:`tools.browser`).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.browser import load, new_page, serve_app, wait_idle  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "assets" / "app-results.png")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--queries", type=int, default=2, help="queries per class")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1420, help="height of the saved top part of the page")
    args = parser.parse_args()

    from PIL import Image
    from playwright.sync_api import sync_playwright

    link = f"?seed={args.seed}&ways={args.ways}&shots={args.shots}&queries={args.queries}"
    with serve_app() as url, sync_playwright() as playwright:
        context, page = new_page(playwright, args.width, 1000)
        page.set_default_timeout(180_000)
        for _ in range(2):  # the first visit warms the server up (model loading, first PyTorch calls)
            load(page, url + "/" + link)
            page.wait_for_selector(".st-key-predictions table")
            wait_idle(page)
        page.mouse.move(5, 500)
        height = page.evaluate("document.querySelector('[data-testid=stMain]').scrollHeight")
        page.set_viewport_size({"width": args.width, "height": max(args.height, min(height + 20, 8000))})
        time.sleep(3)  # charts settle after the resize
        png = page.screenshot()
        context.close()
    image = Image.open(io.BytesIO(png)).convert("RGB").crop((0, 0, args.width, args.height))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out, optimize=True)
    print(f"saved {args.out} ({image.width}x{image.height})")


if __name__ == "__main__":
    main()
