"""The dashboard in a real browser (Debian Chromium through Playwright), against `streamlit run app.py`.

Checks what AppTest cannot: the 3D surfaces really draw through WebGL (no "WebGL is not supported"
text and a colourful screenshot), a clip-band change redraws the heatmap, every page renders without
an exception box, a CBOE file exported from the demo uploads and calibrates, a junk upload and a
network failure give messages. Screenshots of every page go to test-artifacts/ and one to
docs/screenshot.png (the README's).
"""
from __future__ import annotations

import io
import re
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PAGES = {"Home": "", "Surfaces": "Surfaces", "Smiles": "Smiles", "Arbitrage": "Arbitrage",
         "Validation": "Validation", "Data": "Data"}
CHARTS = '[data-testid="stPlotlyChart"]'
EXCEPTION = '[data-testid="stException"]'
ERROR = '[data-testid="stAlertContentError"]'


_BUSY_JS = """() => {
  const s = document.querySelector('[data-testid="stStatusWidget"]');
  return !!(s && s.innerText.includes('Running')) || !!document.querySelector('[data-testid="stSpinner"]');
}"""


def settle(page, timeout: float = 60.0) -> None:
    """Wait until the script run is over: no 'running' status widget and no spinner for 1.5 s."""
    deadline = time.time() + timeout
    quiet_since = None
    while time.time() < deadline:
        busy = page.evaluate(_BUSY_JS)
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.time()
        elif time.time() - quiet_since > 1.5:
            return
        page.wait_for_timeout(200)
    raise AssertionError("the app kept running for more than a minute")


def colourful_share(png: bytes) -> float:
    """Share of pixels that are clearly not grey (max - min channel > 30)."""
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return float(((a.max(axis=2) - a.min(axis=2)) > 30).mean())


def no_exception(page) -> None:
    assert page.locator(EXCEPTION).count() == 0, page.locator(EXCEPTION).first.inner_text()
    body = page.inner_text("body")
    assert "Traceback" not in body
    assert "Something went wrong" not in body, body[:2000]


def shot(page, path: Path) -> None:
    """Screenshot of the whole page: Streamlit scrolls inside its own container, so grow the viewport."""
    height = page.evaluate("() => (document.querySelector('[data-testid=\"stMain\"]') || document.body).scrollHeight")
    page.set_viewport_size({"width": 1600, "height": int(min(max(height, 1000), 4000))})
    page.wait_for_timeout(1200)
    settle(page)
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": 1600, "height": 1000})


def open_page(page, url: str, name: str) -> None:
    page.goto(f"{url}/{PAGES[name]}")
    page.wait_for_selector('[data-testid="stSidebar"]')
    settle(page)


def sidebar_nav(page, label: str) -> None:
    """Switch page inside the same session (keeps session state), through the sidebar navigation."""
    page.locator('[data-testid="stSidebarNav"] a', has_text=label).first.click()
    settle(page)


def test_surfaces_draw_in_webgl(page, app_url, artifacts):
    open_page(page, app_url, "Surfaces")
    page.wait_for_selector(CHARTS)
    charts = page.locator(CHARTS)
    assert charts.count() == 4
    page.wait_for_timeout(1500)  # let WebGL finish the first frame
    assert "WebGL is not supported" not in page.inner_text("body")
    assert page.locator("text=WebGL is not supported").count() == 0
    for i in (0, 1):
        share = colourful_share(charts.nth(i).screenshot())
        assert share > 0.05, f"3D chart {i} looks blank ({share:.1%} coloured pixels)"
    no_exception(page)
    (ROOT / "docs").mkdir(exist_ok=True)
    page.screenshot(path=str(ROOT / "docs" / "screenshot.png"))
    shot(page, artifacts / "1_surfaces.png")


def test_clip_band_changes_the_heatmap(page, app_url, artifacts):
    open_page(page, app_url, "Surfaces")
    settle(page)
    heat = page.locator(CHARTS).nth(3)
    heat.scroll_into_view_if_needed()
    page.wait_for_timeout(800)
    before = heat.screenshot()
    assert "clip band 2%-200%" in page.inner_text("body")
    # lower edge 2% -> 16% or more (above the demo's lowest local vols); a keypress that lands during a
    # rerun can be lost, so on failure reload the page and press again
    raised = "() => /clip band (1[6-9]|[2-9][0-9])%-200%/.test(document.body.innerText)"
    for attempt in range(3):
        if attempt:
            open_page(page, app_url, "Surfaces")
            settle(page)
        slider = page.locator('[data-testid="stSidebar"] [data-testid="stSlider"]', has_text="clip band")
        thumb = slider.get_by_role("slider").first
        thumb.focus()
        for _ in range(14):
            page.keyboard.press("ArrowRight")
        page.wait_for_timeout(300)
        t0 = time.time()
        page.keyboard.press("Tab")
        try:
            page.wait_for_function(raised, timeout=60_000)
            break
        except Exception:  # noqa: BLE001 - retried, then the assertion below reports it
            shot(page, artifacts / f"clip_attempt_{attempt}_failed.png")  # for diagnosis
            settle(page)
    assert re.search(r"clip band (1[6-9]|[2-9][0-9])%-200%", page.inner_text("body")), \
        "the clip band change did not reach the page"
    # speed is measured by `make bench`, not asserted here; printed for the record
    print(f"clip change re-rendered in {time.time() - t0:.2f} s")
    settle(page)
    settle(page)
    heat = page.locator(CHARTS).nth(3)
    heat.scroll_into_view_if_needed()
    page.wait_for_timeout(800)
    after = heat.screenshot()
    assert before != after
    assert "clipped at the band's floor" in page.inner_text("body")
    no_exception(page)
    shot(page, artifacts / "1_surfaces_clipped.png")


@pytest.mark.parametrize("name", ["Home", "Smiles", "Arbitrage", "Validation", "Data"])
def test_every_page_renders(page, app_url, artifacts, name):
    open_page(page, app_url, name)
    if name != "Home" and name != "Data":
        page.wait_for_selector(CHARTS)
        page.wait_for_timeout(1000)
    no_exception(page)
    assert page.locator(ERROR).count() == 0
    shot(page, artifacts / f"{list(PAGES).index(name)}_{name.lower()}.png")


def test_upload_cboe_then_junk(page, app_url, artifacts, tmp_path):
    from core.sources.demo import demo_chain
    from core.sources.detect import export_chain

    good = tmp_path / "demo_cboe.csv"
    good.write_bytes(export_chain(demo_chain(seed=7), "cboe"))
    junk = tmp_path / "junk.csv"
    junk.write_bytes(b"hello,world\n1,2\n=cmd|' /C calc'!A0,3\n")
    open_page(page, app_url, "Home")
    page.locator('[data-testid="stSidebar"]').get_by_text("Upload file", exact=True).click()
    settle(page)
    page.locator('[data-testid="stSidebar"] input[type=file]').set_input_files(str(good))
    page.wait_for_function("() => document.body.innerText.includes('Uploaded file: demo_cboe.csv')", timeout=60_000)
    settle(page)
    no_exception(page)
    assert page.locator(ERROR).count() == 0
    sidebar_nav(page, "Surfaces")
    page.wait_for_selector(CHARTS)
    assert "Uploaded file: demo_cboe.csv" in page.inner_text("body")
    no_exception(page)
    shot(page, artifacts / "upload_cboe_surfaces.png")

    page.locator('[data-testid="stSidebar"] input[type=file]').set_input_files(str(junk))
    page.wait_for_selector(ERROR, timeout=30_000)
    settle(page)
    text = page.locator(ERROR).first.inner_text()
    assert "not an option chain" in text or "could not" in text.lower(), text
    no_exception(page)
    shot(page, artifacts / "upload_junk.png")


def test_network_failure_is_a_message(page, app_url, artifacts):
    open_page(page, app_url, "Home")
    page.locator('[data-testid="stSidebar"]').get_by_text("Yahoo Finance", exact=True).click()
    settle(page)
    box = page.locator('[data-testid="stSidebar"] input[type=text]').first
    box.fill("SPY")
    box.press("Enter")
    t0 = time.time()
    page.wait_for_selector(ERROR, timeout=15_000)
    assert time.time() - t0 < 15
    settle(page)
    body = page.inner_text("body")
    assert "No network" in body
    assert page.get_by_role("button", name="Use the demo market").count() == 1
    no_exception(page)
    shot(page, artifacts / "yahoo_offline.png")
    page.get_by_role("button", name="Use the demo market").click()
    settle(page)
    assert "Demo market" in page.inner_text("body")
    no_exception(page)


def test_smoothing_change_rerenders_quickly(page, app_url):
    open_page(page, app_url, "Surfaces")
    page.wait_for_selector(CHARTS)
    settle(page)
    slider = page.locator('[data-testid="stSidebar"] [data-testid="stSlider"]', has_text="Smoothing")
    thumb = slider.get_by_role("slider").first
    for attempt in range(2):  # a keypress landing during a rerun can lose focus: try once more
        thumb.focus()
        if attempt == 0:
            page.keyboard.press("ArrowRight")  # 0.00 -> 0.05: a new fit and local vol
        t0 = time.time()
        page.keyboard.press("Tab")
        try:
            page.wait_for_function("() => document.body.innerText.includes('smoothing 0.05')", timeout=60_000)
            break
        except Exception:  # noqa: BLE001 - retried once, then the assertion below reports it
            settle(page)
    assert "smoothing 0.05" in page.inner_text("body"), "the smoothing change did not reach the page"
    print(f"smoothing change re-rendered in {time.time() - t0:.2f} s")  # speed: `make bench`
    settle(page)
    no_exception(page)
