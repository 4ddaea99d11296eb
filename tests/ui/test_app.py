"""The dashboard under Streamlit's AppTest: every page, every sidebar control, the error paths.

No network: Yahoo is replaced by fakes (``core.sources.yahoo.YahooSource`` monkeypatched) that fail in
each documented way or return a recorded-shape chain built from the demo. Snapshots live in a
temporary ``DUPIRE_DESK_HOME``. Figures are read from the Plotly JSON the app sends (numpy arrays
arrive as base64 blobs: ``decode``).
"""
from __future__ import annotations

import base64
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from core import errors as E
from tests.conftest import ROOT

PAGES = ["pages/1_Surfaces.py", "pages/2_Smiles.py", "pages/3_Arbitrage.py", "pages/4_Validation.py",
         "pages/5_Data.py"]

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest


# ------------------------------------------------------------------------------------------ helpers
def decode(obj):
    """Plotly JSON -> python, with ``{"dtype", "bdata", "shape"}`` blobs as numpy arrays."""
    if isinstance(obj, dict):
        if "bdata" in obj and "dtype" in obj:
            a = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=np.dtype(obj["dtype"]))
            if "shape" in obj:
                shape = [int(s) for s in str(obj["shape"]).split(",")] if isinstance(obj["shape"], str) else obj["shape"]
                a = a.reshape(shape)
            return a
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    return obj


def figures(at) -> list[dict]:
    return [decode(json.loads(c.proto.spec)) for c in at.get("plotly_chart")]


def arr(v) -> np.ndarray:
    """A trace array as float (lists with None -> NaN)."""
    if isinstance(v, np.ndarray):
        return v.astype(float)
    return np.array([np.nan if x is None else x for x in np.ravel(np.array(v, dtype=object))], dtype=float).reshape(
        np.shape(np.array(v, dtype=object)))


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def ok(at) -> None:
    """No uncaught exception and no 'something went wrong' fallback."""
    assert not at.exception, [e.value for e in at.exception]
    assert "Something went wrong" not in texts(at.error), texts(at.error)


def run(path: str = "app.py", timeout: float = 120) -> AppTest:
    return AppTest.from_file(str(ROOT / path), default_timeout=timeout).run()


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Each test: snapshots in a temporary home; no simulated-offline flag unless the test sets it."""
    monkeypatch.setenv("DUPIRE_DESK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DUPIRE_DESK_SIMULATE_OFFLINE", raising=False)
    yield


@pytest.fixture(scope="module")
def demo():
    from core.demo import demo_chain

    return demo_chain(seed=7)


def yahoo_like(demo):
    """A recorded-shape Yahoo chain: the demo relabelled as an American equity chain."""
    q = demo.quotes.copy()
    q["underlying"] = "SPY"
    q["root"] = "SPY"
    q["source"] = "yahoo"
    return dataclasses.replace(demo, quotes=q, underlying="SPY", source="yahoo", exercise="american",
                               meta={"failed_expiries": ["2028-12-15"]})


def fake_yahoo(monkeypatch, *, expiries=None, chain=None, fail=None, calls=None):
    """Replace YahooSource by a fake: ``fail`` raised by every call, else the given expiries/chain."""
    from core.sources import yahoo

    class Fake:
        def __init__(self, timeout=8.0, **kw):
            self.timeout = timeout

        def expiries(self, ticker):
            if calls is not None:
                calls.append(("expiries", ticker, self.timeout))
            if fail is not None:
                raise fail
            return list(expiries or [])

        def chain(self, ticker, expiries=None, progress=None):
            if calls is not None:
                calls.append(("chain", ticker, tuple(expiries or ())))
            if fail is not None:
                raise fail
            for i, e in enumerate(expiries or []):
                if progress:
                    progress(i, len(expiries), f"expiry {e}")
            return chain

    monkeypatch.setattr(yahoo, "YahooSource", Fake)


def choose_source(at, name: str) -> AppTest:
    return at.sidebar.radio(key="source").set_value(name).run()


# ------------------------------------------------------------------------------------------ pages
def test_home_on_the_demo():
    at = run()
    ok(at)
    assert at.sidebar.radio(key="source").value == "Demo market"
    assert "Demo market" in texts(at.sidebar.caption)
    assert "spot 5,000.00" in texts(at.sidebar.markdown)
    labels = [m.label for m in at.metric]
    assert "Quotes used" in labels and "Fit error (median RMSE)" in labels
    assert not at.error


@pytest.mark.parametrize("page,n_charts", [("pages/1_Surfaces.py", 2), ("pages/2_Smiles.py", 4),
                                           ("pages/3_Arbitrage.py", 3), ("pages/5_Data.py", 0)])
def test_every_page_renders(page, n_charts):
    at = run(page)
    ok(at)
    assert not at.error
    assert len(at.get("plotly_chart")) == n_charts
    # each chart offers its standalone HTML download
    assert sum(b.label == "Download chart (HTML)" for b in at.get("download_button")) == n_charts


@pytest.mark.slow
def test_validation_page_roundtrip_exotics_scenarios():
    at = run("pages/4_Validation.py", timeout=240)
    ok(at)
    assert not at.error
    figs = figures(at)
    assert len(figs) == 4
    err = np.concatenate([arr(tr["marker"]["color"]) for tr in figs[0]["data"]])
    assert np.isfinite(err).mean() > 0.95 and np.nanmax(np.abs(err)) < 200  # vol bp
    m = {x.label: x.value for x in at.metric}
    assert m["Inside bid/ask"].endswith("%")
    lv_price = float(m["Local vol"].replace(",", ""))
    # switch the exotic to an Asian call: the price changes, still no exception
    at.selectbox(key="validation.product").set_value("Asian")
    at.button[0].click()  # the exotic form's submit button comes first
    at.run()
    ok(at)
    m2 = {x.label: x.value for x in at.metric}
    assert float(m2["Local vol"].replace(",", "")) != lv_price
    # a +5 vol-point parallel shock raises the ATM local vol everywhere
    at.number_input(key="validation.parallel").set_value(5.0)
    at.button[1].click()
    at.run()
    ok(at)
    lvs = figures(at)[2]["data"]
    assert np.all(arr(lvs[1]["y"]) > arr(lvs[0]["y"]))


# ------------------------------------------------------------------------------------------ surfaces
def local_vol_z(at) -> np.ndarray:
    return arr(figures(at)[1]["data"][0]["z"])


def test_clip_band_changes_and_bounds_the_local_vol_surface():
    at = run("pages/1_Surfaces.py")
    ok(at)
    z0 = local_vol_z(at)
    assert z0.ndim == 2 and np.isfinite(z0).any()
    at.sidebar.slider(key="clip").set_value((16, 25)).run()
    ok(at)
    z1 = local_vol_z(at)
    fin = np.isfinite(z1)
    assert fin.any() and not np.allclose(z0[fin], z1[fin])
    assert z1[fin].min() >= 16 - 1e-9 and z1[fin].max() <= 25 + 1e-9  # clipped to the band (percent)
    names = [t.get("name", "") for t in figures(at)[1]["data"]]
    assert any("floor" in n for n in names) and any("top" in n for n in names)  # flagged cells marked
    heat = figures(at)[1]
    assert any("floor" in t.get("name", "") for t in heat["data"][1:])
    assert "clip band 16%-25%" in texts(at.caption)
    from ui.state import DEFAULTS

    at.sidebar.slider(key="clip").set_value(DEFAULTS["clip"]).run()
    np.testing.assert_allclose(local_vol_z(at), z0, equal_nan=True)  # back: the cached result


def test_empty_clip_band_is_a_message():
    at = run("pages/1_Surfaces.py")
    at.sidebar.slider(key="clip").set_value((30, 30)).run()
    ok(at)
    assert "clip band is empty" in texts(at.error)


def test_moneyness_and_extrapolated_toggles():
    at = run("pages/1_Surfaces.py")
    x_strike = arr(figures(at)[0]["data"][0]["x"])
    at.radio(key="surfaces.axis").set_value("Moneyness K/S").run()
    ok(at)
    x_m = arr(figures(at)[0]["data"][0]["x"])
    np.testing.assert_allclose(x_m, x_strike / 5000.0)
    assert figures(at)[0]["layout"]["xaxis"]["title"]["text"] == "K/S"
    n_nan = np.isnan(local_vol_z(at)).sum()
    at.checkbox(key="surfaces.extrapolated").check().run()
    ok(at)
    assert np.isnan(local_vol_z(at)).sum() < n_nan
    names = [t.get("name", "") for t in figures(at)[1]["data"]]
    assert any(n.startswith("extrapolated") for n in names)


def test_quotes_are_points_on_the_implied_surface():
    at = run("pages/1_Surfaces.py")
    assert len(at.get("plotly_chart")) == 2                    # heatmaps; the 3D view is on demand
    at.radio(key="surfaces.view3d").set_value("Implied vol").run()
    ok(at)
    assert len(at.get("plotly_chart")) == 3
    data = figures(at)[2]["data"]
    pts = [t for t in data if t.get("name", "").startswith("market quotes")]
    assert len(pts) == 1 and len(arr(pts[0]["z"])) > 500
    assert data[0]["type"] == "surface"
    text = np.ravel(np.array(data[0]["text"], dtype=object))
    assert any("local vol" in str(t) for t in text)  # the hover carries the local vol too...
    assert not any("-%" in str(t) or "nan" in str(t) for t in text)  # ...and never a blank value


# ------------------------------------------------------------------------------------------ sidebar controls
def _other_methods():
    from core import pipeline

    return [m for m in pipeline.METHODS if m != pipeline.Settings().method]


@pytest.mark.parametrize("method", _other_methods())
def test_every_method(method):
    at = run("pages/1_Surfaces.py")
    z_ssvi = arr(figures(at)[0]["data"][0]["z"])
    at.sidebar.selectbox(key="method").set_value(method).run()
    ok(at)
    assert not at.error
    z = arr(figures(at)[0]["data"][0]["z"])
    assert z.shape == z_ssvi.shape and np.isfinite(z).any()


def trace(fig: dict, name: str) -> dict:
    return next(t for t in fig["data"] if t.get("name") == name)


def test_smoothing_changes_the_fit():
    at = run("pages/2_Smiles.py")
    fit0 = arr(trace(figures(at)[0], "fitted implied vol")["y"])
    at.sidebar.slider(key="smoothing").set_value(1.0).run()
    ok(at)
    fit1 = arr(trace(figures(at)[0], "fitted implied vol")["y"])
    assert fit0.shape == fit1.shape and not np.allclose(fit0, fit1)


def test_expiry_selection():
    at = run("pages/2_Smiles.py")
    ms = at.sidebar.multiselect(key="expiries")
    all_exp = list(ms.value)
    assert len(all_exp) >= 10
    ms.set_value(all_exp[2:5]).run()
    ok(at)
    assert [o.split(" ")[0] for o in at.selectbox(key="smiles.expiry").options] == all_exp[2:5]
    at.sidebar.multiselect(key="expiries").set_value(all_exp[:1]).run()
    ok(at)
    assert "at least two expiries" in texts(at.warning)


@pytest.mark.slow   # two re-fits with overridden rates: ~40 s with the spline fit (core), seconds with SVI
def test_rates_override_changes_forwards():
    at = run("pages/5_Data.py")
    fwd0 = at.dataframe[1].value.copy()
    at.sidebar.checkbox(key="rates_override").check().run()
    at.sidebar.number_input(key="r").set_value(10.0).run()
    at.sidebar.number_input(key="q").set_value(0.0).run()
    ok(at)
    fwd1 = at.dataframe[1].value
    assert not np.allclose(fwd0["forward"].to_numpy(float), fwd1["forward"].to_numpy(float))
    assert np.all(fwd1["forward"].to_numpy(float) > fwd0["forward"].to_numpy(float))  # r - q up: forwards up


def test_quote_filters_change_the_reason_counts():
    at = run("pages/5_Data.py")

    def counts(at):
        df = at.dataframe[0].value
        return dict(zip(df["reason"], df["quotes"], strict=True))

    c0 = counts(at)
    at.sidebar.slider(key="max_spread").set_value(0.1).run()
    ok(at)
    assert counts(at)["wide_spread"] > c0["wide_spread"]
    at.sidebar.slider(key="max_spread").set_value(1.5).run()
    at.sidebar.number_input(key="min_volume").set_value(50).run()
    ok(at)
    assert counts(at)["low_volume"] > c0.get("low_volume", 0)
    at.sidebar.number_input(key="min_volume").set_value(0).run()
    at.sidebar.number_input(key="min_oi").set_value(1000).run()
    ok(at)
    assert counts(at)["low_open_interest"] > 0


def test_impossible_filters_give_a_message():
    at = run("pages/1_Surfaces.py")
    at.sidebar.number_input(key="min_oi").set_value(1_000_000).run()
    ok(at)
    assert at.warning or at.error  # nothing usable: a plain message, no traceback
    assert len(at.get("plotly_chart")) == 0


def test_settings_survive_a_page_switch():
    at = run()
    at.sidebar.slider(key="clip").set_value((10, 80)).run()
    at.sidebar.selectbox(key="method").set_value("svi").run()
    at.switch_page("pages/1_Surfaces.py").run()
    ok(at)
    assert at.sidebar.slider(key="clip").value == (10, 80)
    assert at.sidebar.selectbox(key="method").value == "svi"
    assert "clip band 10%-80%" in texts(at.caption)


def sidebar_values(at) -> dict:
    """Every sidebar setting as the widgets show it."""
    sb = at.sidebar
    return {"source": sb.radio(key="source").value, "method": sb.selectbox(key="method").value,
            "smoothing": sb.slider(key="smoothing").value, "clip": tuple(sb.slider(key="clip").value),
            "max_spread": sb.slider(key="max_spread").value, "min_volume": sb.number_input(key="min_volume").value,
            "min_oi": sb.number_input(key="min_oi").value, "rates_override": sb.checkbox(key="rates_override").value}


def page_numbers(at) -> tuple:
    """What a page computed with and showed: the settings line, the metrics, the captions naming the band."""
    line = [c.value for c in at.sidebar.caption if str(c.value).startswith("In force:")]
    metrics = [(m.label, m.value) for m in at.metric]
    band = [c.value for c in at.caption if "clip band" in str(c.value)]
    return tuple(line), tuple(metrics), tuple(band)


def test_defaults_are_cores():
    """One table of defaults, taken from core: the clip band of core.localvol, the method and the quote
    filters of pipeline.Settings."""
    from core import pipeline
    from core.localvol import DEFAULT_CLIP
    from ui.controls import method_label
    from ui.state import DEFAULTS

    s = pipeline.Settings()
    assert DEFAULTS["clip"] == (round(100 * DEFAULT_CLIP[0]), round(100 * DEFAULT_CLIP[1]))
    assert DEFAULTS["method"] == s.method
    assert DEFAULTS["max_spread"] == s.cleaning_config().max_spread_frac
    at = run()
    ok(at)
    box = at.sidebar.selectbox(key="method")
    assert box.options == [method_label(m) for m in pipeline.METHODS]
    # the method help says, with numbers, when to use which: every method has its line
    assert all(f"**{method_label(m)}**: " in box.help for m in pipeline.METHODS)
    assert "%" in box.help


@pytest.mark.slow
def test_untouched_settings_are_identical_on_every_page_in_any_order():
    """Issue 13: without touching the sidebar, every page shows the defaults and the same numbers on every
    visit, whatever page the user came from (the clip band and max spread used to reset on a page switch)."""
    from ui.state import DEFAULTS

    expected = {k: DEFAULTS[k] for k in ("source", "method", "smoothing", "clip", "max_spread", "min_volume",
                                         "min_oi", "rates_override")}
    orders = [["app.py"] + PAGES,
              ["pages/5_Data.py", "pages/3_Arbitrage.py", "app.py", "pages/1_Surfaces.py", "pages/4_Validation.py",
               "pages/2_Smiles.py"],
              ["pages/1_Surfaces.py", "pages/5_Data.py", "pages/1_Surfaces.py", "pages/2_Smiles.py", "app.py",
               "pages/2_Smiles.py", "pages/4_Validation.py", "pages/3_Arbitrage.py"]]
    at = run()
    seen: dict = {}
    for order in orders:
        for path in order:
            at.switch_page(path).run(timeout=240)
            ok(at)
            assert sidebar_values(at) == expected, path
            numbers = page_numbers(at)
            assert numbers == seen.setdefault(path, numbers), f"{path} changed between visits"
    lo, hi = DEFAULTS["clip"]
    assert any(f"clip {lo}-{hi}%" in line for line in seen["app.py"][0])


def test_touched_settings_stay_on_every_page():
    at = run()
    at.sidebar.slider(key="max_spread").set_value(0.5).run()
    at.sidebar.slider(key="clip").set_value((5, 150)).run()
    for path in ["pages/5_Data.py", "pages/1_Surfaces.py", "app.py", "pages/5_Data.py"]:
        at.switch_page(path).run()
        ok(at)
        v = sidebar_values(at)
        assert v["max_spread"] == 0.5 and v["clip"] == (5, 150), path


def test_landing_page_is_named_after_the_product():
    at = run()
    ok(at)
    labels = [el.proto.label for el in at.sidebar.get("page_link")]
    assert labels[0] == "Dupire Desk" and "app" not in labels and len(labels) == 7


# ------------------------------------------------------------------------------------------ other pages' controls
def test_smiles_expiry_picker_and_bid_ask_bars():
    at = run("pages/2_Smiles.py")
    ok(at)
    sb = at.selectbox(key="smiles.expiry")
    first = trace(figures(at)[0], "market bid/ask (used)")
    y, lo, hi = arr(first["y"]), arr(first["error_y"]["arrayminus"]), arr(first["error_y"]["array"])
    assert np.all(lo >= 0) and np.all(hi >= 0) and np.all(y > 0)
    last = sb.options[-1].split(" ")[0]
    sb.set_value(last).run()
    ok(at)
    assert last in figures(at)[0]["layout"]["title"]["text"]
    assert "ATM local vs implied" in texts(at.markdown)
    assert "Local skew about twice implied" in texts(at.markdown)


def test_arbitrage_filters():
    at = run("pages/3_Arbitrage.py")
    ok(at)
    g = figures(at)[0]["data"][0]
    assert g["zmid"] == 0 and arr(g["z"]).ndim == 2
    if not at.multiselect:
        pytest.skip("no raw-quote violations in the demo")
    # the demo's executable violations are all explained by its planted bad quotes (suspects table first)
    suspects = at.dataframe[0].value
    assert "violations explained" in suspects.columns and (suspects["reason"] != "ok").all()
    n_all = len(at.dataframe[-1].value)
    at.checkbox(key="arbitrage.only_exec").check().run()
    ok(at)
    n_exec = len(at.dataframe[-1].value)
    assert n_exec <= n_all
    assert at.dataframe[-1].value["survives_spread"].astype(bool).all() if n_exec else True
    kinds = at.multiselect(key="arbitrage.kinds")
    kinds.set_value(kinds.value[:1]).run()
    ok(at)
    assert set(at.dataframe[-1].value["kind"].astype(str)) <= set(kinds.value[:1])
    dens = figures(at)[2]["data"]
    assert len(dens) >= 5


def test_data_page_reason_filter_and_downloads():
    at = run("pages/5_Data.py")
    ok(at)
    labels = {b.label for b in at.get("download_button")}
    assert {"Quotes (CSV)", "Local-vol grid (CSV)", "Fit parameters (JSON)", "QuantLib layout (CSV)",
            "QuantLib layout (JSON)"} <= labels
    ms = at.multiselect(key="data.reasons")
    ms.set_value(["zero_bid"]).run()
    ok(at)
    shown = at.dataframe[2].value
    assert len(shown) > 0 and set(shown["reason"]) == {"zero_bid"}


def test_export_builders_match_the_columns_of_the_seeds(demo):
    """The bytes behind the Data page's downloads (built on click in the app): columns and escaping."""
    from core import pipeline
    from ui import data

    s = pipeline.Settings()
    prep = pipeline.prepare(demo, s)
    fr = pipeline.fit(prep, s)
    lv = pipeline.local_vol(prep, fr, s)
    grid = pd.read_csv(pd.io.common.BytesIO(data.safe_csv(data.lv_grid_frame(lv))))
    for c in ("T", "strike", "iv_imp", "call_price", "dC_dT", "d2C_dK2", "sigma_loc", "clipped_low",
              "clipped_high", "butterfly", "calendar", "extrapolated"):
        assert c in grid.columns
    assert len(grid) == lv.local_vol.size
    frame, layout = data.ql_layout(lv)
    assert frame.shape == (lv.K.size, lv.T.size + 1)  # strikes x (strike + times), QuantLib's orientation
    assert np.asarray(layout["matrix"]).shape == (lv.K.size, lv.T.size)
    js = json.loads(data.to_json_bytes({"params": fr.params, "settings": s}))
    assert js["settings"]["method"] == pipeline.Settings().method
    q = pipeline.quotes_frame(prep, fr)
    q.loc[0, "root"] = "=HYPERLINK(\"http://x\")"
    assert b"'=HYPERLINK" in data.safe_csv(q)


# ------------------------------------------------------------------------------------------ Yahoo
def test_yahoo_without_network_says_so_and_offers_fallbacks(monkeypatch):
    fake_yahoo(monkeypatch, fail=E.NetworkError("DNS lookup failed for query2.finance.yahoo.com"))
    at = run()
    choose_source(at, "Yahoo Finance")
    ok(at)
    assert "Type a ticker" in texts(at.info)
    at.sidebar.text_input(key="ticker").input("SPY").run()
    ok(at)
    assert "No network" in texts(at.error)
    assert "Demo market" in texts(at.error)  # says what to do
    demo_button = [b for b in at.button if b.label == "Use the demo market"]
    assert demo_button
    demo_button[0].click().run()
    ok(at)
    assert at.sidebar.radio(key="source").value == "Demo market"
    assert not at.error


def test_yahoo_error_is_short_without_transport_text(monkeypatch):
    fake_yahoo(monkeypatch, fail=E.NetworkError("no connection to Yahoo Finance while listing (ConnectionError: "
                                                "curl: (6) Could not resolve host: query2.finance.yahoo.com)"))
    at = run()
    choose_source(at, "Yahoo Finance")
    at.sidebar.text_input(key="ticker").input("CURLY").run()
    ok(at)
    assert len(at.error) == 1                      # said once, not in the sidebar and again on the page
    msg = texts(at.error)
    assert "No network connection" in msg and "curl" not in msg and "query2" not in msg
    assert len(msg) < 250
    assert "curl" in texts(at.text)                # kept for a bug report, in a collapsed expander


@pytest.mark.parametrize("exc,words", [
    (E.SourceTimeout("no answer within 8 s"), "did not answer in time"),
    (E.UnknownTickerError("ZZZZ is not known"), "Unknown ticker"),
    (E.NoOptionsError("ZZZZ has no listed options"), "No listed options"),
    (E.RateLimitError("HTTP 429"), "rate-limiting"),
])
def test_yahoo_failures_are_messages(monkeypatch, exc, words):
    fake_yahoo(monkeypatch, fail=exc)
    at = run()
    choose_source(at, "Yahoo Finance")
    at.sidebar.text_input(key="ticker").input("ZZZZ").run()
    ok(at)
    assert words in texts(at.error)


def test_yahoo_simulated_offline_env(monkeypatch):
    monkeypatch.setenv("DUPIRE_DESK_SIMULATE_OFFLINE", "1")
    at = run()
    choose_source(at, "Yahoo Finance")
    at.sidebar.text_input(key="ticker").input("QQQ").run()
    ok(at)
    assert "No network" in texts(at.error)


def test_yahoo_timeout_setting_reaches_the_source(monkeypatch):
    calls = []
    monkeypatch.setenv("DUPIRE_DESK_YAHOO_TIMEOUT", "1.5")
    fake_yahoo(monkeypatch, fail=E.SourceTimeout("slow"), calls=calls)
    at = run()
    choose_source(at, "Yahoo Finance")
    at.sidebar.text_input(key="ticker").input("IWM").run()
    assert calls and calls[0][2] == 1.5


def test_invalid_ticker(monkeypatch):
    calls = []
    fake_yahoo(monkeypatch, expiries=[], calls=calls)
    at = run()
    choose_source(at, "Yahoo Finance")
    at.sidebar.text_input(key="ticker").input("rm -rf /").run()
    ok(at)
    assert "is not a ticker" in texts(at.error)
    assert not calls  # never sent to Yahoo


def test_yahoo_no_expiries_listed(monkeypatch):
    fake_yahoo(monkeypatch, expiries=[])
    at = run()
    choose_source(at, "Yahoo Finance")
    at.sidebar.text_input(key="ticker").input("NOPT").run()
    ok(at)
    assert "No listed options" in texts(at.error)


def test_yahoo_download_with_progress(monkeypatch, demo):
    calls = []
    chain = yahoo_like(demo)
    listed = [str(pd.Timestamp(e).date()) for e in demo.expiries]
    fake_yahoo(monkeypatch, expiries=listed, chain=chain, calls=calls)
    at = run()
    choose_source(at, "Yahoo Finance")
    at.sidebar.text_input(key="ticker").input("spy").run()
    ok(at)
    assert "press **Download chain**" in texts(at.info)
    pick = at.sidebar.multiselect(key="yahoo_pick")
    assert 2 <= len(pick.value) <= 12
    at.sidebar.button(key="yahoo_download").click().run()
    ok(at)
    assert ("chain", "SPY", tuple(pick.value)) in calls
    assert "Live: Yahoo Finance SPY" in texts(at.sidebar.caption)
    sidebar_warnings = texts(at.sidebar.warning)
    assert "American options" in sidebar_warnings and "could not be downloaded" in sidebar_warnings
    # the download is kept: another page in the same session uses it without asking Yahoo again
    n_calls = len(calls)
    at.switch_page("pages/1_Surfaces.py").run()
    ok(at)
    assert "Live: Yahoo Finance SPY" in texts(at.sidebar.caption)
    assert len(at.get("plotly_chart")) == 2
    assert not [c for c in calls[n_calls:] if c[0] == "chain"]


def test_yahoo_download_of_one_expiry_is_refused(monkeypatch, demo):
    listed = [str(pd.Timestamp(e).date()) for e in demo.expiries]
    fake_yahoo(monkeypatch, expiries=listed, chain=yahoo_like(demo))
    at = run()
    choose_source(at, "Yahoo Finance")
    at.sidebar.text_input(key="ticker").input("SPY").run()
    at.sidebar.multiselect(key="yahoo_pick").set_value(listed[:1]).run()
    at.sidebar.button(key="yahoo_download").click().run()
    ok(at)
    assert "at least two expiries" in texts(at.error)


# ------------------------------------------------------------------------------------------ uploads
def upload(at, name: str, content: bytes) -> AppTest:
    choose_source(at, "Upload file")
    at.sidebar.file_uploader[0].set_value((name, content, "text/csv"))
    return at.run()


def test_upload_cboe_exported_from_the_demo(demo):
    from core.sources.detect import export_chain

    at = run()
    assert "Upload an option chain" in texts(upload(at, "x.csv", b"").info) or True
    at = upload(run(), "../../etc/demo cboe.csv", export_chain(demo, "cboe"))
    ok(at)
    assert not at.error
    cap = texts(at.sidebar.caption)
    assert "Uploaded file: demo cboe.csv" in cap and "../" not in cap  # the name, never the path
    at.switch_page("pages/1_Surfaces.py").run()
    ok(at)
    assert "Uploaded file" in texts(at.sidebar.caption) and len(at.get("plotly_chart")) == 2


def test_upload_panel_quote_time_and_spot(demo):
    """The panel's fields are filled from the file, edits reload the chain, and the file stays visibly loaded
    on another page (Streamlit's uploader itself is empty there)."""
    from core.sources.detect import export_chain

    at = upload(run(), "demo_cboe.csv", export_chain(demo, "cboe"))
    ok(at)
    asof, spot = at.sidebar.text_input(key="upload_asof").value, at.sidebar.text_input(key="upload_spot").value
    assert asof == "2026-06-15 10:30" and float(spot) == pytest.approx(demo.spot)
    at.sidebar.text_input(key="upload_spot").input("5100").run()
    ok(at)
    assert "spot 5,100.00" in texts(at.sidebar.markdown)
    at.switch_page("pages/5_Data.py").run()
    ok(at)
    side = texts(at.sidebar.markdown)
    assert "In use:** demo_cboe.csv" in side and "spot 5,100.00" in side
    assert at.sidebar.text_input(key="upload_spot").value == "5100"
    at.sidebar.text_input(key="upload_asof").input("yesterday-ish").run()
    ok(at)
    assert "not a time" in texts(at.error)


def test_upload_without_quote_time_asks_for_it(demo):
    from core.sources.detect import export_chain

    tidy = pd.read_csv(pd.io.common.BytesIO(export_chain(demo, "tidy-csv")), comment="#")
    bare = tidy[["expiry", "strike", "cp", "bid", "ask"]].to_csv(index=False).encode()
    at = upload(run(), "bare.csv", bare)
    ok(at)
    assert "no quote time" in texts(at.error) and "fields under the uploader" in texts(at.info)
    at.sidebar.text_input(key="upload_asof").input("2026-06-15 10:30").run()
    ok(at)
    assert not at.error
    assert "quotes at 2026-06-15 10:30" in texts(at.sidebar.markdown)


def test_several_files_of_one_day(demo):
    from core.sources.detect import export_chain

    exp = demo.expiries
    a, b = demo.select_expiries(exp[:6]), demo.select_expiries(exp[6:])
    at = run()
    choose_source(at, "Upload file")
    at.sidebar.file_uploader[0].set_value([("a.csv", export_chain(a, "cboe"), "text/csv"),
                                           ("b.csv", export_chain(b, "cboe"), "text/csv")])
    at.run()
    ok(at)
    assert "In use:** a.csv and 1 more" in texts(at.sidebar.markdown)
    assert f"{len(demo.quotes):,} quotes" in texts(at.sidebar.markdown)


@pytest.mark.parametrize("content,words", [
    (b"hello,world\n1,2\n", "not an option chain"),
    (b"=cmd|' /C calc'!A0,+1,@SUM(A1)\n-2,3,4\n", "not an option chain"),
    (b"\x89PNG\r\n\x1a\n\x00\x00binary", "not an option chain"),
    (b"   \n", "not an option chain"),
])
def test_bad_uploads_are_messages(content, words):
    at = upload(run(), "bad.csv", content)
    ok(at)
    assert words in texts(at.error)
    assert [b for b in at.button if b.label == "Use the demo market"]


def test_too_large_upload(monkeypatch, demo):
    from core.sources.detect import export_chain
    from ui import data

    monkeypatch.setattr(data, "MAX_UPLOAD_MB", 0.01)
    at = upload(run(), "big.csv", export_chain(demo, "cboe"))
    ok(at)
    assert "limit" in texts(at.error)


def test_tidy_upload_too_few_expiries(demo):
    from core.sources.detect import export_chain

    one = demo.select_expiries(demo.expiries[3:4])
    at = upload(run(), "one.csv", export_chain(one, "tidy-csv"))
    ok(at)
    assert "at least two expiries" in texts(at.warning) or at.error


# ------------------------------------------------------------------------------------------ snapshots
def test_no_snapshots_yet_no_snapshot_choice(monkeypatch):
    """Without saved snapshots the source list and the fallback buttons do not offer them."""
    at = run()
    assert "Saved snapshot" not in at.sidebar.radio(key="source").options
    fake_yahoo(monkeypatch, fail=E.NetworkError("curl: (6) Could not resolve host: query2.finance.yahoo.com"))
    choose_source(at, "Yahoo Finance")
    at.sidebar.text_input(key="ticker").input("NOSNAP").run()   # a ticker no other test cached
    ok(at)
    labels = [b.label for b in at.button]
    assert "Use the demo market" in labels and "Open a saved snapshot" not in labels


def test_snapshot_and_corrupt_snapshot(monkeypatch, tmp_path, demo):
    from core.sources.snapshots import SnapshotStore

    store = SnapshotStore()
    good = store.save(yahoo_like(demo))
    bad = good.with_name(good.name.replace(".csv.gz", "-2.csv.gz"))
    bad.write_bytes(good.read_bytes()[:200])  # truncated
    at = run()
    choose_source(at, "Saved snapshot")
    ok(at)
    sb = at.sidebar.selectbox(key="snapshot")
    assert len(sb.options) == 2
    good_label = [o for o in sb.options if "unreadable" not in o]
    bad_label = [o for o in sb.options if "unreadable" in o]
    assert good_label and bad_label
    sb.set_value(good_label[0]).run()
    ok(at)
    assert "Snapshot of SPY" in texts(at.sidebar.caption)
    at.sidebar.selectbox(key="snapshot").set_value(bad_label[0]).run()
    ok(at)
    assert "snapshot could not be read" in texts(at.error)
    assert bad.exists()  # reported, never deleted


# ------------------------------------------------------------------------------------------ guard
@pytest.fixture
def fresh_cache():
    """Empty Streamlit's data caches (process-wide under AppTest) around a test that patches core."""
    import streamlit as st

    st.cache_data.clear()
    yield
    st.cache_data.clear()


@pytest.mark.usefixtures("fresh_cache")
def test_unexpected_error_is_a_message_not_a_traceback(monkeypatch):
    from core import pipeline

    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(pipeline, "arbitrage", boom)
    at = run("pages/3_Arbitrage.py")
    assert not at.exception
    assert "Something went wrong" in texts(at.error)
    assert at.expander and "RuntimeError: kaboom" in texts(at.text)


@pytest.mark.usefixtures("fresh_cache")
def test_fit_error_is_a_plain_message(monkeypatch):
    from core import pipeline

    def fail(*a, **k):
        raise E.FitError("only 3 usable quotes")

    monkeypatch.setattr(pipeline, "fit", fail)
    at = run("pages/1_Surfaces.py")
    ok(at)
    assert "could not be fitted" in texts(at.error) and "only 3 usable quotes" in texts(at.error)


def test_sessions_do_not_share_sources(demo):
    from core.sources.detect import export_chain

    q = demo.quotes.copy()
    q["underlying"] = "OTHER"
    other = dataclasses.replace(demo, quotes=q, underlying="OTHER")
    a = upload(run(), "other.csv", export_chain(other, "tidy-csv"))
    ok(a)
    b = run()
    ok(b)
    assert "Demo market" in texts(b.sidebar.caption)
    assert "DEMO" in texts(b.sidebar.markdown) and "OTHER" not in texts(b.sidebar.markdown)
    assert "OTHER" in texts(a.sidebar.markdown)
