"""The web page in real headless Chromium (Debian's /usr/bin/chromium driven by playwright; no browser
download): draw a stroke on the canvas and see a prediction, then upload a file."""
import os
from pathlib import Path

import pytest
from PIL import Image

import gencls

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (make setup installs it)")]


def draw(page, points):
    box = page.locator("#canvas").bounding_box()
    (x, y), rest = points[0], points[1:]
    page.mouse.move(box["x"] + x, box["y"] + y)
    page.mouse.down()
    for x, y in rest:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=8)
    page.mouse.up()


def test_draw_a_digit_and_upload_a_file(live_server, gan_run, mnist_test, tmp_path):
    from playwright.sync_api import sync_playwright

    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 640})
            outside = []
            page.on("request", lambda r: None if r.url.startswith((live_server, "blob:", "data:"))
                    else outside.append(r.url))
            page.goto(live_server + "/")
            page.wait_for_function("document.getElementById('meta').textContent.includes('improved-gan')")

            draw(page, [(140, 40), (140, 120), (140, 240)])  # a one: a vertical stroke
            page.wait_for_selector("#result:not(.hidden)", timeout=15000)
            assert page.text_content("#top-class") == "1"
            assert page.locator("#bars .bar").count() == 3
            assert "training data" in page.text_content("#ood")
            # generated samples of the predicted class, or the server's reason why there are none
            # (this small run's generator may draw no "1" that its classifier accepts)
            page.wait_for_function("!document.getElementById('samples-box').classList.contains('hidden') && "
                                   "!document.getElementById('samples-note').textContent.startsWith('generating')", timeout=30000)
            note = page.text_content("#samples-note")
            assert "classifier assigns" in note or "assigned none" in note, note
            page.screenshot(path=str(tmp_path / "drawn.png"))

            digit = tmp_path / "digit.png"
            Image.fromarray(mnist_test.images[0, 0].numpy()).save(digit)
            expected = gencls.predict(gan_run, [digit])[0].label
            page.click("#clear")
            page.set_input_files("#file", str(digit))
            page.wait_for_function(f"document.getElementById('top-class').textContent === {expected!r} && "
                                   "!document.getElementById('result').classList.contains('hidden')", timeout=15000)
            page.wait_for_function("!document.getElementById('samples-note').textContent.startsWith('generating')",
                                   timeout=30000)
            page.screenshot(path=str(tmp_path / "uploaded.png"))
            assert outside == []  # nothing fetched from anywhere but the server
        finally:
            browser.close()
    assert (tmp_path / "drawn.png").stat().st_size > 1000 and (tmp_path / "uploaded.png").stat().st_size > 1000
    print(f"screenshots: {tmp_path / 'drawn.png'}, {tmp_path / 'uploaded.png'}")
