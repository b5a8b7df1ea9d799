"""Screenshot a report.html in headless Chromium (Debian's /usr/bin/chromium through playwright).

    python benchmarks/report_screenshot.py runs/compare/report.html docs/report-compare.png [--height 2400]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("html")
    p.add_argument("png")
    p.add_argument("--width", type=int, default=1200)
    p.add_argument("--height", type=int, default=0, help="clip to this height (0: the full page)")
    a = p.parse_args()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": a.width, "height": a.height or 900})
        page.goto(Path(a.html).resolve().as_uri(), wait_until="load")
        broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || !i.naturalWidth).length")
        Path(a.png).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=a.png, full_page=not a.height)
        browser.close()
    print(f"wrote {a.png} ({broken} broken images)")


if __name__ == "__main__":
    main()
