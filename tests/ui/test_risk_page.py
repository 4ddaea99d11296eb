"""The Risk page (pages/6_Risk.py) by AppTest, and its pure helpers (ui/risk.py) without Streamlit."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.errors import InputError
from core.pipeline import Settings, calibrate, open_source
from core.pricing import risk
from core.pricing.products import Asian, Barrier, Vanilla
from ui import risk as rk

ROOT = Path(__file__).resolve().parents[2]


def test_product_specs():
    assert rk.make_product("Vanilla", -1, 100.0, 0.5) == Vanilla(100.0, 0.5, -1)
    assert rk.make_product("American vanilla", 1, 100.0, 0.5).american
    b = rk.make_product("Barrier", 1, 100.0, 0.5, barrier=120.0, barrier_kind="up-and-in")
    assert b == Barrier(100.0, 0.5, 120.0, "up-and-in")
    assert rk.make_product("Asian", 1, 100.0, 0.5, n_fixings=6) == Asian(100.0, 0.5, 6)
    with pytest.raises(InputError):
        rk.make_product("Barrier", 1, 100.0, 0.5)
    with pytest.raises(InputError):
        rk.make_product("Swap", 1, 100.0, 0.5)
    hash(rk.make_product("Barrier", 1, 100.0, 0.5, barrier=120.0))      # it keys a cache


def test_heatmap_and_tables():
    cal = calibrate(open_source("demo"), Settings())
    fw = cal.prepared.forwards
    T = float(np.asarray(cal.fit.surface.T_nodes)[5])
    v = risk.vega_buckets(cal.fit, fw, Vanilla(5000.0, T), n_expiry=4, full_check=False)
    fig = rk.vega_heatmap(v)
    z = np.asarray(fig.data[0].z, float)
    assert z.shape == (4, 9) and np.allclose(z, v.grid)
    assert "residual" in fig.layout.title.text
    t = rk.vega_table(v)
    assert {"sum of buckets", "residual (parallel - sum)"} <= set(t["quantity"])
    g = risk.spot_greeks(cal.fit.surface, fw, Vanilla(5000.0, T))
    assert list(rk.greeks_frame(g)["dynamics"]) == ["local vol", "sticky strike", "sticky moneyness", "Black-Scholes"]
    assert len(rk.shape_frame({"skew": 1.0, "term": 2.0, "parallel_surface": 3.0})) == 3


@pytest.mark.slow
def test_risk_page_renders_and_switches_products():
    at = AppTest.from_file(str(ROOT / "pages" / "6_Risk.py"), default_timeout=300).run()
    assert not at.exception and not at.error
    labels = [m.label for m in at.metric]
    assert "Price, local vol" in labels and "Price, Black-Scholes" in labels
    assert len(at.get("plotly_chart")) == 1
    downloads = [b.label for b in at.get("download_button")]
    assert "Greeks (CSV)" in downloads and "Vega buckets (CSV)" in downloads
    assert "American vanilla" not in at.selectbox(key="risk.product").options      # the demo is European
    at.selectbox(key="risk.product").set_value("Barrier")
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert any("up-and-out call" in m.value for m in at.markdown)
    at.selectbox(key="risk.product").set_value("Asian")
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert any("Monte Carlo" in i.value for i in at.info)
    assert len(at.get("plotly_chart")) == 0
