"""The Risk page in a real browser: the demo (vanilla, then a barrier through the form) and a real SPX chain uploaded
on the page itself; screenshots in test-artifacts/ (risk_demo.png, risk_demo_barrier.png, risk_spx.png)."""
from __future__ import annotations

import pytest

from tests.e2e.test_browser import CHARTS, SPX, no_exception, settle, shot

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HEATMAP_TITLE = "Bucketed vega per vol point"


def open_risk(page, url: str) -> None:
    page.goto(f"{url}/Risk")
    page.wait_for_selector('[data-testid="stSidebar"]')
    settle(page, timeout=180)


def wait_heatmap(page, timeout: float = 180.0) -> None:
    page.wait_for_function(
        "(t) => document.body.innerText.includes(t) || [...document.querySelectorAll('.gtitle')].some("
        "e => e.textContent.includes(t))", arg=HEATMAP_TITLE, timeout=timeout * 1000, polling=200)
    page.wait_for_selector(f"{CHARTS} .main-svg", timeout=timeout * 1000)
    settle(page, timeout=timeout)


def choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``label`` (inside the page's form)."""
    box = page.locator('[data-testid="stMain"] [data-testid="stSelectbox"]', has_text=label).first
    box.click()
    page.get_by_role("option", name=option, exact=True).first.click()
    page.wait_for_timeout(300)


def test_risk_page_on_the_demo(page, app_url, artifacts):
    open_risk(page, app_url)
    wait_heatmap(page)
    no_exception(page)
    body = page.inner_text("body")
    # tables are drawn on a canvas (no text in the DOM): check the metrics and captions around them
    for text in ("Price, local vol", "Price, Black-Scholes", "Sticky strike", "sticky moneyness", "PDE convergence",
                 "Refit: linear refit of the spline", "90 buckets"):
        assert text in body, text
    labels = [b.inner_text() for b in page.locator('[data-testid="stDownloadButton"]').all()]
    assert any("Greeks (CSV)" in t for t in labels) and any("Vega buckets (CSV)" in t for t in labels)
    shot(page, artifacts / "risk_demo.png")
    # a barrier through the form
    choose(page, "Product", "Barrier")
    page.get_by_role("button", name="Compute risk").click()
    page.wait_for_timeout(500)
    page.wait_for_function("() => document.body.innerText.includes('up-and-out call')", timeout=180_000)
    wait_heatmap(page)
    no_exception(page)
    shot(page, artifacts / "risk_demo_barrier.png")
    # an Asian: Monte Carlo, parallel vega only, said so
    choose(page, "Product", "Asian")
    page.get_by_role("button", name="Compute risk").click()
    page.wait_for_timeout(500)
    page.wait_for_function("() => document.body.innerText.includes('priced by Monte Carlo')", timeout=180_000)
    settle(page, timeout=180)
    no_exception(page)
    assert "standard error" in page.inner_text("body")


def test_risk_page_on_a_real_spx_chain(page, app_url, artifacts):
    if not SPX.is_file():
        pytest.skip(f"{SPX} is absent (shared test data)")
    open_risk(page, app_url)
    wait_heatmap(page)
    page.locator('[data-testid="stSidebar"]').get_by_text("Upload file", exact=True).click()
    settle(page)
    page.locator('[data-testid="stSidebar"] input[type=file]').set_input_files(str(SPX.resolve()))
    page.wait_for_function("() => document.body.innerText.includes('spx_20240105_close.csv')", timeout=300_000)
    page.wait_for_function("() => document.body.innerText.includes('K=4697')", timeout=300_000)
    wait_heatmap(page, timeout=300)
    no_exception(page)
    body = page.inner_text("body")
    assert "90 buckets" in body
    shot(page, artifacts / "risk_spx.png")
