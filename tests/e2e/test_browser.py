"""The dashboard in a real browser (Debian Chromium through Playwright), against `streamlit run app.py`.

Checks what AppTest cannot: the 3D surfaces really draw through WebGL (no "WebGL is not supported"
text and a colourful screenshot), a clip-band change redraws the heatmap, every page renders without
an exception box, the settings and figures are the same on every visit whatever the order of the
pages, a CBOE file exported from the demo uploads and calibrates, a real SPX chain uploads with its
AM and PM series apart (timed: ``test-artifacts/browser_timings.json``), a junk upload and a network
failure give messages. Screenshots of every page go to test-artifacts/ and one to docs/screenshot.png
(the README's).
"""
from __future__ import annotations

import io
import json
import os
import platform
import re
import time
from pathlib import Path

import numpy as np
import pytest

from ui.state import DEFAULTS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PAGES = {"Home": "", "Surfaces": "Surfaces", "Smiles": "Smiles", "Arbitrage": "Arbitrage",
         "Validation": "Validation", "Data": "Data"}
#: page -> (its link in the sidebar, its title, its number of charts)
NAV = {"Home": ("Dupire Desk", "Dupire Desk", 0), "Surfaces": ("Surfaces", "Surfaces", 2),
       "Smiles": ("Smiles", "Smiles", 4), "Arbitrage": ("Arbitrage", "Arbitrage", 3),
       "Validation": ("Validation & pricing", "Validation & pricing", 4), "Data": ("Data & export", "Data & export", 0)}
SPX = ROOT / ".." / "shared" / "data" / "cboe_modern" / "spx_20240105_close.csv"
CLIP_LO, CLIP_HI = DEFAULTS["clip"]                     # the default band, percent (core.localvol.DEFAULT_CLIP)
BAND = f"clip band {CLIP_LO}%-{CLIP_HI}%"
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
    """Switch page inside the same session (keeps session state), through the sidebar's page links."""
    page.locator('[data-testid="stSidebar"]').get_by_role("link", name=label, exact=True).first.click()
    settle(page)


_READY_JS = """([title, charts, text, fresh]) => {
  const s = document.querySelector('[data-testid="stStatusWidget"]');
  if ((s && s.innerText.includes('Running')) || document.querySelector('[data-testid="stSpinner"]')) return false;
  const h = document.querySelector('[data-testid="stMain"] h1');
  if (title && !(h && h.innerText.trim().startsWith(title))) return false;
  const all = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')];
  const drawn = all.filter(e => e.querySelector('.main-svg'));
  if (charts && drawn.length < charts) return false;
  if (fresh && drawn.filter(e => !e.dataset.e2eOld).length < fresh) return false;
  if (text && !document.body.innerText.includes(text)) return false;
  return true;
}"""
_MARK_JS = """() => document.querySelectorAll('[data-testid="stPlotlyChart"]').forEach(e => { e.dataset.e2eOld = '1'; })"""


def timed(page, action, *, title: str | None = None, charts: int = 0, text: str | None = None, fresh: int = 0,
          timeout: float = 120.0) -> float:
    """Seconds from ``action()`` (a click, a key press) until the page shows its result: the run is over,
    the title is ``title``, ``charts`` charts are drawn by Plotly, ``fresh`` of them are new chart elements
    (Streamlit re-creates a chart whose figure changed; the old ones are marked before the action) and
    ``text`` is on the page."""
    page.evaluate(_MARK_JS)
    t0 = time.perf_counter()
    action()
    page.wait_for_timeout(100)  # let the rerun start (before it starts, the old page looks ready)
    page.wait_for_function(_READY_JS, arg=[title, charts, text, fresh], timeout=timeout * 1000, polling=50)
    return time.perf_counter() - t0


def go(page, name: str, **kw) -> float:
    """Switch to page ``name`` through the sidebar and return the seconds until its charts are drawn."""
    link, title, charts = NAV[name]
    loc = page.locator('[data-testid="stSidebar"]').get_by_role("link", name=link, exact=True).first
    return timed(page, loc.click, title=title, charts=charts, fresh=charts, **kw)


def fingerprint(page) -> dict:
    """What a page computed with and showed: the settings in force (sidebar), the clip slider's handles,
    every metric, the captions naming the clip band."""
    side = page.locator('[data-testid="stSidebar"]').inner_text()
    line = [ln for ln in side.splitlines() if ln.startswith("In force:")]
    clip = page.locator('[data-testid="stSidebar"] [data-testid="stSlider"]', has_text="clip band")
    handles = clip.locator('[data-testid="stSliderThumbValue"]').all_inner_texts()
    metrics = page.locator('[data-testid="stMain"] [data-testid="stMetric"]').all_inner_texts()
    captions = [c for c in page.locator('[data-testid="stMain"] [data-testid="stCaptionContainer"]').all_inner_texts()
                if "clip band" in c]
    return {"in_force": line, "clip": handles, "metrics": [" ".join(m.split()) for m in metrics],
            "captions": [" ".join(c.split()) for c in captions]}


def test_surfaces_draw_in_webgl(page, app_url, artifacts):
    open_page(page, app_url, "Surfaces")
    page.wait_for_selector(CHARTS)
    assert page.locator(CHARTS).count() == 2                   # the heatmaps; 3D on demand
    for view in ("Local vol", "Implied vol"):
        radio = page.locator('[data-testid="stMain"] [data-testid="stRadio"]', has_text="3D surface")
        timed(page, lambda r=radio, v=view: r.get_by_text(v, exact=True).click(), charts=3, fresh=1, timeout=120)
        settle(page)
        page.wait_for_timeout(1500)  # let WebGL finish the first frame
        assert "WebGL is not supported" not in page.inner_text("body")
        assert page.locator("text=WebGL is not supported").count() == 0
        share = colourful_share(chart_shot(page, 2))
        assert share > 0.05, f"3D chart ({view}) looks blank ({share:.1%} coloured pixels)"
    no_exception(page)
    (ROOT / "docs").mkdir(exist_ok=True)
    page.screenshot(path=str(ROOT / "docs" / "screenshot.png"))
    shot(page, artifacts / "1_surfaces.png")


def chart_shot(page, i: int) -> bytes:
    """Screenshot of chart ``i`` once Plotly has drawn it (a changed figure is a new element: Streamlit
    re-creates a chart whose figure changed, so a handle taken during a rerun can go stale: retry)."""
    from playwright.sync_api import Error as PlaywrightError

    for attempt in range(6):
        try:
            page.wait_for_function(_READY_JS, arg=[None, i + 1, None, 0], timeout=60_000, polling=100)
            el = page.locator(CHARTS).nth(i)
            el.scroll_into_view_if_needed()
            page.wait_for_timeout(800)
            return el.screenshot()
        except PlaywrightError:
            if attempt == 5:
                raise
            page.wait_for_timeout(500)
    raise AssertionError("unreachable")


def test_clip_band_changes_the_heatmap(page, app_url, artifacts):
    open_page(page, app_url, "Surfaces")
    settle(page)
    before = chart_shot(page, 1)
    assert BAND in page.inner_text("body")
    # lower edge 2% -> 16% or more (above the demo's lowest local vols); a keypress that lands during a
    # rerun can be lost, so on failure reload the page and press again
    raised = "() => /clip band (1[6-9]|[2-9][0-9])%-" + str(CLIP_HI) + "%/.test(document.body.innerText)"
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
    assert re.search(r"clip band (1[6-9]|[2-9][0-9])%-" + str(CLIP_HI) + "%", page.inner_text("body")), \
        "the clip band change did not reach the page"
    # speed is measured by `make bench`, not asserted here; printed for the record
    print(f"clip change re-rendered in {time.time() - t0:.2f} s")
    settle(page)
    settle(page)
    after = chart_shot(page, 1)
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
    from core.demo import demo_chain
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


def test_page_orders_keep_settings_and_figures(page, app_url, artifacts):
    """Issue 13: visiting the pages in several orders without touching the sidebar shows the same settings
    and the same numbers (quotes used, clip band, repriced count) on every visit of a page."""
    open_page(page, app_url, "Home")
    page.wait_for_selector('[data-testid="stMetric"]')
    orders = [["Surfaces", "Smiles", "Arbitrage", "Validation", "Data", "Home"],
              ["Validation", "Home", "Data", "Surfaces", "Arbitrage", "Smiles"],
              ["Data", "Smiles", "Surfaces", "Validation", "Home", "Arbitrage", "Data"]]
    seen: dict = {"Home": fingerprint(page)}
    for order in orders:
        for name in order:
            go(page, name)
            settle(page)
            no_exception(page)
            fp = fingerprint(page)
            assert fp["clip"] == [str(CLIP_LO), str(CLIP_HI)], (name, fp)
            assert fp["in_force"] and f"clip {CLIP_LO}-{CLIP_HI}%" in fp["in_force"][0], (name, fp)
            assert f"max spread/mid {DEFAULTS['max_spread']:g}" in fp["in_force"][0], (name, fp)
            assert fp == seen.setdefault(name, fp), f"{name} changed between visits: {seen[name]} -> {fp}"
    assert any("Quotes repriced" in m for m in seen["Validation"]["metrics"])
    assert any("Quotes used" in m for m in seen["Home"]["metrics"])
    assert any(BAND in c for c in seen["Surfaces"]["captions"])


def _write_timings(artifacts: Path, record: dict) -> None:
    out = artifacts / "browser_timings.json"
    old = json.loads(out.read_text()) if out.is_file() else {}
    old.update(record)
    out.write_text(json.dumps(old, indent=2, sort_keys=True))


@pytest.mark.shared_data
def test_real_spx_chain(page, app_url, artifacts):
    """A real SPX chain (CBOE download, 2024-01-05 close, ~21,000 quotes, AM and PM series): upload, set the
    quote time, AM and PM of 2024-01-19 listed apart, every page drawn (screenshots), every action timed."""
    if not SPX.is_file():
        pytest.skip(f"{SPX} is absent (shared test data)")
    t: dict[str, float] = {}
    open_page(page, app_url, "Home")
    page.locator('[data-testid="stSidebar"]').get_by_text("Upload file", exact=True).click()
    settle(page)
    box = page.locator('[data-testid="stSidebar"] input[type=file]')
    t["upload_to_home_s"] = timed(page, lambda: box.set_input_files(str(SPX.resolve())), title="Dupire Desk",
                                  text="Quotes used", timeout=300)
    settle(page)
    no_exception(page)
    side = page.locator('[data-testid="stSidebar"]').inner_text()
    assert "In use: spx_20240105_close.csv" in side and "SPX" in side
    # the quote time: the loader reads the download time (a Sunday); T runs from the last close. Set the
    # close's settlement time by hand, as a trader would, and check T still runs from the 16:00 close.
    field = page.locator('[data-testid="stSidebar"]').get_by_role("textbox", name="Quote time (New York)")
    assert field.input_value().startswith("2024-01-0")
    field.fill("2024-01-05 16:15")
    t["quote_time_change_s"] = timed(page, lambda: field.press("Enter"), title="Dupire Desk",
                                     text="quotes at 2024-01-05 16:15", timeout=300)
    settle(page)
    side = page.locator('[data-testid="stSidebar"]').inner_text()
    assert "T runs from 2024-01-05 16:00" in side, side
    # the expiry picker lists the SPX (AM) and SPXW (PM) series of 2024-01-19 apart
    page.locator('[data-testid="stSidebar"] summary', has_text="Expiries to fit").first.click()
    page.wait_for_timeout(500)
    chips = page.locator('[data-testid="stSidebar"] [data-testid="stMultiSelect"]').first.inner_text()
    assert "2024-01-19 AM" in chips and "2024-01-19 PM" in chips, chips[:500]
    no_exception(page)
    # every page, cold (first computation) then warm (cached), screenshots of each
    for i, name in enumerate(["Surfaces", "Smiles", "Arbitrage", "Validation", "Data"], start=1):
        t[f"{name.lower()}_cold_s"] = go(page, name, timeout=600)
        settle(page)
        no_exception(page)
        assert page.locator(ERROR).count() == 0, page.locator(ERROR).first.inner_text()
        shot(page, artifacts / f"spx_{i}_{name.lower()}.png")
    t["home_s"] = go(page, "Home")
    settle(page)
    shot(page, artifacts / "spx_0_home.png")
    for name in ["Surfaces", "Smiles", "Arbitrage", "Validation", "Data", "Home"]:
        t[f"{name.lower()}_warm_s"] = go(page, name)
        settle(page)
    # the Smiles picker lists the two series of 2024-01-19 too
    go(page, "Smiles")
    settle(page)
    page.locator('[data-testid="stMain"] [data-testid="stSelectbox"]').first.click()
    page.wait_for_timeout(400)
    options = page.locator('[role="option"]').all_inner_texts()
    page.keyboard.press("Escape")
    assert any(o.startswith("2024-01-19 AM") for o in options) and any(o.startswith("2024-01-19 PM") for o in options)
    # a clip change on Surfaces, a smoothing change, and back to a computed setting
    go(page, "Surfaces")
    settle(page)
    slider = page.locator('[data-testid="stSidebar"] [data-testid="stSlider"]', has_text="clip band")
    thumb = slider.get_by_role("slider").first
    thumb.focus()
    for _ in range(8):
        page.keyboard.press("ArrowRight")
    t["clip_change_s"] = timed(page, lambda: page.keyboard.press("Tab"), title="Surfaces", charts=2, fresh=1,
                               text=f"clip band {CLIP_LO + 8}%-{CLIP_HI}%")
    settle(page)
    smooth = page.locator('[data-testid="stSidebar"] [data-testid="stSlider"]', has_text="Smoothing").get_by_role("slider").first
    smooth.focus()
    page.keyboard.press("ArrowRight")
    t["smoothing_change_s"] = timed(page, lambda: page.keyboard.press("Tab"), title="Surfaces", charts=2, fresh=2,
                                    text="smoothing 0.05", timeout=600)
    settle(page)
    shot(page, artifacts / "spx_1_surfaces_changed.png")
    smooth.focus()
    page.keyboard.press("ArrowLeft")
    t["back_to_computed_setting_s"] = timed(page, lambda: page.keyboard.press("Tab"), title="Surfaces", charts=2,
                                            fresh=2, text="smoothing 0.00")
    settle(page)
    no_exception(page)
    # the 3D views, on demand (one WebGL chart each)
    radio = page.locator('[data-testid="stMain"] [data-testid="stRadio"]', has_text="3D surface")
    for view in ("Implied vol", "Local vol"):
        t[f"surfaces_3d_{view.split()[0].lower()}_s"] = timed(
            page, lambda v=view: radio.get_by_text(v, exact=True).click(), title="Surfaces", charts=3, fresh=1)
        settle(page)
        page.wait_for_timeout(1000)
        shot(page, artifacts / f"spx_1_surfaces_3d_{view.split()[0].lower()}.png")
    radio.get_by_text("Off", exact=True).click()
    settle(page)
    no_exception(page)
    _write_timings(artifacts, {"spx_20240105": {
        "chain": "cboe_modern/spx_20240105_close.csv", "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "what": "seconds from the input (click, key, file) until the page's run is over and its charts are drawn "
                "by Plotly in headless Chromium (SwiftShader WebGL), 1600x1000 viewport",
        "cpus": os.cpu_count(), "machine": platform.machine(), "timings_s": {k: round(v, 2) for k, v in t.items()}}})
    print(json.dumps(t, indent=1))
