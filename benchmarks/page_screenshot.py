"""Screenshot of the web page after drawing a digit (for the README), in headless Debian Chromium.

Serves RUN on 127.0.0.1 (a free port) in this process, draws a digit on the canvas with the
mouse through playwright (``/usr/bin/chromium``; no browser download), waits for the prediction
and the generated samples, and saves a PNG.

    python benchmarks/page_screenshot.py --run runs/demo --digit 3 --out docs/serve-page.png
    python benchmarks/page_screenshot.py --run runs/demo --upload shoe.png --out docs/serve-page-shoe.png
"""
from __future__ import annotations

import argparse
import socket
import threading
import time

import httpx
import uvicorn

from gencls.server import create_app

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
# strokes on the 280x280 canvas, in canvas pixels
DIGITS = {
    "3": [(95, 70), (130, 45), (175, 45), (195, 75), (185, 110), (150, 140), (180, 160), (200, 200), (180, 235),
          (135, 245), (95, 225)],
    "7": [(80, 55), (200, 55), (170, 120), (140, 185), (120, 245)],
    "1": [(140, 40), (140, 140), (140, 240)],
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--digit", choices=sorted(DIGITS), default="3")
    p.add_argument("--upload", help="drop this image file instead of drawing")
    p.add_argument("--out", required=True)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(args.run), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(url + "/health", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 900, "height": 600})
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('meta').textContent.length > 30 && "
                                   "!document.getElementById('meta').textContent.startsWith('loading')")
            if args.upload:
                page.set_input_files("#file", args.upload)
            else:
                box = page.locator("#canvas").bounding_box()
                points = DIGITS[args.digit]
                page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
                page.mouse.down()
                for x, y in points[1:]:
                    page.mouse.move(box["x"] + x, box["y"] + y, steps=10)
                page.mouse.up()
            page.wait_for_selector("#result:not(.hidden)", timeout=15000)
            page.wait_for_function("model && (!model.can_generate || "
                                   "!document.getElementById('samples-note').textContent.startsWith('generating'))",
                                   timeout=30000)
            page.wait_for_timeout(300)
            page.screenshot(path=args.out)
            print(f"predicted {page.text_content('#top-class')} ({page.text_content('#top-prob')}); "
                  f"{page.text_content('#ood')}; wrote {args.out}")
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
