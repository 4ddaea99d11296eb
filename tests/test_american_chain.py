"""Real American chains (SPY 2023-06-02, QQQ 2023-06-12): de-Americanised, fitted, repriced as Americans.

Targets (issue 14): at least 90% of the used quotes fitted inside their European-equivalent bid/ask; the
implied carry smooth in T and within a band of the known dividend yield; the American round trip (backward
PDE with early exercise) inside the American bid/ask. Carry band: the median implied ``q`` over the
expiries of at least 3 months within +-0.5% (50 bp) of the trailing yield the data README gives (SPY
1.5-1.6%, QQQ 0.6%); smoothness: the largest jump of ``q`` between adjacent such expiries below 0.6%.
"""
from __future__ import annotations

import numpy as np
import pytest

from core.pipeline import Settings, calibrate, open_source, repricing_frame, summary_dict
from core.pricing.american_roundtrip import MODEL_AMERICAN, MODEL_FORWARD

#: file -> (known dividend yield, share of the American round trip inside the American bid/ask required: the
#: issue's 90%; measured 91.2% / 95.0%)
CHAINS = {"spy_20230602_close.csv": (0.0155, 0.90), "qqq_20230612_close.csv": (0.006, 0.90)}
CARRY_BAND = 0.005
MAX_JUMP = 0.006


@pytest.fixture(scope="module", params=sorted(CHAINS))
def calibrated(request, shared_data):
    path = shared_data / "cboe_modern" / request.param
    chain = open_source([str(path)])
    return request.param, chain, calibrate(chain, Settings(), with_repricing=True)


@pytest.mark.shared_data
@pytest.mark.slow
def test_fit_inside_european_equivalent_bid_ask(calibrated):
    name, chain, cal = calibrated
    r = cal.fit.residuals
    assert chain.exercise == "american" and cal.prepared.american is not None
    assert float(np.mean(r["inside"])) >= 0.90, name


@pytest.mark.shared_data
@pytest.mark.slow
def test_carry_smooth_and_near_the_known_yield(calibrated):
    name, _, cal = calibrated
    sm = cal.prepared.american.carry.smoothness
    assert sm["n"] >= 5
    assert abs(sm["level"] - CHAINS[name][0]) <= CARRY_BAND, (name, sm)
    assert sm["max_jump"] <= MAX_JUMP, (name, sm)
    assert not cal.prepared.forwards.table["approximate"].any()


@pytest.mark.shared_data
@pytest.mark.slow
def test_american_round_trip_and_reporting(calibrated):
    name, chain, cal = calibrated
    arp = cal.american_repricing
    assert arp is not None and arp.n_failed == 0 and arp.n == int(cal.prepared.quotes["use"].sum())
    assert arp.inside_bid_ask >= CHAINS[name][1], (name, arp.inside_bid_ask)
    frame = repricing_frame(cal.repricing, arp)
    assert set(frame["model"]) == {MODEL_FORWARD, MODEL_AMERICAN}
    s = summary_dict(chain, cal.prepared, cal.fit, american_repricing=arp)
    a = s["american"]
    assert a["exercise"] == "american" and "continuous yield" in a["dividend_model"]
    assert 0.3 < a["share_converted"] <= 1.0 and sum(a["counts"].values()) == s["n_quotes"]
    assert all("q" in e for e in s["expiries"])


@pytest.mark.shared_data
@pytest.mark.slow
def test_data_and_validation_pages_say_what_was_done(shared_data, monkeypatch, tmp_path):
    """The real SPY download uploaded in the app: the Data page reports the exercise style, the rate, the share
    converted and the carry; the Validation page the American round trip."""
    AppTest = pytest.importorskip("streamlit.testing.v1").AppTest
    from tests.conftest import ROOT

    monkeypatch.setenv("DUPIRE_DESK_HOME", str(tmp_path / "home"))
    content = (shared_data / "cboe_modern" / "spy_20230602_close.csv").read_bytes()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600).run()
    at.sidebar.radio(key="source").set_value("Upload file").run()
    at.sidebar.file_uploader[0].set_value(("spy.csv", content, "text/csv"))
    at.run()
    for page, labels in (("pages/5_Data.py", {"Exercise style", "Rate r", "Quotes converted"}),
                         ("pages/4_Validation.py", {"American quotes repriced", "Inside American bid/ask"})):
        at.switch_page(page).run()
        assert not at.exception and not at.error, page
        assert labels <= {m.label for m in at.metric}, page
