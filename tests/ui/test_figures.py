"""The pure Plotly builders of ui/figures.py and the pure helpers of ui/data.py: shapes, flags marked,
colours, hover; against the analytic SSVI surface (core/surface/ssvi.py) as the data."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from core.surface.ssvi import SSVISurface, ThetaParametric
from tests.conftest import SHARED_DATA
from tests.reference import ssvi_local_vol_reference
from ui import figures

SURF = SSVISurface(rho=-0.65, eta=1.1, gamma=0.4, theta_curve=ThetaParametric(0.15**2, 0.20**2, 1.5))
S = 5000.0


def grid(nT=12, nK=30):
    T = np.linspace(0.05, 2.0, nT)
    K = np.linspace(3500.0, 6000.0, nK)
    y = np.log(K[None, :] / S) - 0.025 * T[:, None]
    iv = SURF.implied_vol(y, np.broadcast_to(T[:, None], y.shape))
    lv = ssvi_local_vol_reference(SURF, y, np.broadcast_to(T[:, None], y.shape))
    return T, K, iv, lv


def flags_for(lv, clip=(0.10, 0.30)):
    return {"clipped_low": lv < clip[0], "clipped_high": lv > clip[1],
            "butterfly": np.zeros(lv.shape, bool), "calendar": np.zeros(lv.shape, bool),
            "extrapolated": np.zeros(lv.shape, bool)}


def test_surface_3d_shapes_and_hover():
    T, K, iv, lv = grid()
    fig = figures.surface_3d(K, T, iv, title="iv", zlabel="implied vol", other=("local vol", lv))
    assert isinstance(fig, go.Figure)
    s = fig.data[0]
    assert s.type == "surface"
    assert np.asarray(s.z).shape == iv.shape == (T.size, K.size)
    np.testing.assert_allclose(np.asarray(s.z), iv * 100)
    assert np.asarray(s.x).shape == iv.shape and np.asarray(s.y)[:, 0].tolist() == pytest.approx(T.tolist())
    assert "T %{y" in s.hovertemplate and "%{text}" in s.hovertemplate
    text = np.asarray(s.text, dtype=object)
    assert text.shape == iv.shape and text[3, 4] == f"<br>local vol {100 * lv[3, 4]:.2f}%"
    assert s.colorscale is not None and fig.layout.scene.yaxis.title.text == "T (years)"


def test_hover_never_shows_a_blank_value():
    """A cell whose other quantity is undefined (NaN) leaves that line out instead of 'local vol -%', and a
    cell without flags adds no empty line."""
    T, K, iv, lv = grid(4, 5)
    lv = lv.copy()
    lv[1, 2] = np.nan
    flags = {"clipped_high": np.zeros(lv.shape, bool)}
    flags["clipped_high"][0, 0] = True
    for fig in (figures.surface_3d(K, T, iv, title="x", zlabel="implied vol", other=("local vol", lv), flags=flags),
                figures.heatmap(K, T, iv, title="x", zlabel="implied vol", other=("local vol", lv), flags=flags)):
        text = np.asarray(fig.data[0].text, dtype=object)
        assert text[1, 2] == ""
        assert text[0, 0].endswith("<br>flags: clipped_high") and "local vol" in text[0, 0]
        assert not any(str(t).endswith("<br>") or "nan" in str(t) or "-%" in str(t) for t in text.ravel())
        assert fig.data[0].hovertemplate.count("<br>") == 2  # x, T, value; the rest comes from the text


def test_robust_colour_ranges_ignore_a_spike_and_mark_the_band():
    T, K, iv, lv = grid(10, 20)
    spiky = lv.copy()
    spiky[0, 0] = 5.0                                          # one 500% local vol
    lo, hi = figures.robust_range(spiky)
    assert hi < 0.6 and lo > 0.05                              # the scale stays on the bulk of the surface
    assert figures.robust_range(spiky, within=(0.02, 0.30))[1] <= 0.30 * 1.03
    assert figures.robust_range([np.nan, np.nan]) is None
    fig = figures.heatmap(K, T, spiky, title="lv", zlabel="local vol", zrange=(0.1, 0.4), band=(0.15, 2.0))
    cb = fig.data[0].colorbar
    assert "clip band 15-200%" in cb.title.text
    assert "15% floor" in list(cb.ticktext)                  # the band's floor is inside the colour range
    assert fig.data[0].zmin == pytest.approx(10.0) and fig.data[0].zmax == pytest.approx(40.0)


@pytest.mark.parametrize("lo,hi,expected", [(10.0, 148.0, [25.0, 50.0, 75.0, 100.0, 125.0]),
                                             (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
                                             (12.3, 28.6, [12.5, 15.0, 17.5, 20.0, 22.5, 25.0, 27.5])])
def test_nice_ticks(lo, hi, expected):
    assert figures.nice_ticks(lo, hi) == pytest.approx(expected)


def test_3d_quotes_are_thinned_and_counted():
    T, K, iv, _ = grid()
    rng = np.random.default_rng(1)
    n = 10_000
    pts = {"x": rng.uniform(3500, 6000, n), "T": rng.uniform(0.05, 2, n), "iv": rng.uniform(0.1, 0.3, n)}
    fig = figures.surface_3d(K, T, iv, title="iv", zlabel="implied vol", points=pts)
    tr = fig.data[-1]
    assert len(tr.x) == figures.MAX_POINTS_3D and f"of {n:,}" in tr.name
    again = figures.surface_3d(K, T, iv, title="iv", zlabel="implied vol", points=pts)
    np.testing.assert_array_equal(np.asarray(again.data[-1].x), np.asarray(tr.x))  # the same points every rerun
    assert fig.layout.margin.t <= 40                           # no dead band above the scene


def test_flags_are_marked_in_3d_and_heatmap_with_their_colours():
    T, K, iv, lv = grid()
    clip = (0.14, 0.22)
    flags = flags_for(lv, clip)
    assert flags["clipped_low"].any() and flags["clipped_high"].any()
    shown = np.clip(lv, *clip)
    for fig in (figures.surface_3d(K, T, shown, title="lv", zlabel="local vol", flags=flags),
                figures.heatmap(K, T, shown, title="lv", zlabel="local vol", flags=flags)):
        marks = {tr.name.split(" (")[0]: tr for tr in fig.data[1:]}
        for name in ("clipped_low", "clipped_high"):
            label, colour, _s2, _s3 = figures.FLAG_STYLE[name]
            tr = marks[label]
            assert len(tr.x) == flags[name].sum()
            assert tr.marker.color == colour
            assert f"({int(flags[name].sum())})" in tr.name
        # no trace for a flag with no cells
        assert figures.FLAG_STYLE["butterfly"][0] not in marks
    # hover text names every flag of a cell
    text = figures.flag_text(flags, lv.shape)
    i, j = np.argwhere(flags["clipped_high"])[0]
    assert text[i, j] == "clipped_high"
    assert text[~(flags["clipped_low"] | flags["clipped_high"])].tolist() == [""] * int((~(flags["clipped_low"] | flags["clipped_high"])).sum())


def test_flag_colours_are_distinct():
    colours = [v[1] for v in figures.FLAG_STYLE.values()]
    assert len(set(colours)) == len(colours)


def test_quotes_drawn_on_implied_surface():
    T, K, iv, _ = grid()
    pts = {"x": np.array([4500.0, 5000.0]), "T": np.array([0.5, 1.0]), "iv": np.array([0.2, 0.18])}
    fig = figures.surface_3d(K, T, iv, title="iv", zlabel="implied vol", points=pts)
    tr = fig.data[-1]
    assert tr.type == "scatter3d" and tr.name.startswith("market quotes")
    np.testing.assert_allclose(np.asarray(tr.z), [20.0, 18.0])


def test_heatmap_values_and_diverging_centre():
    T, K, iv, _ = grid(5, 7)
    fig = figures.heatmap(K, T, iv - 0.2, title="g", zlabel="g", percent=False, zmid=0.0,
                          colorscale=figures.DIVERGING_SCALE)
    h = fig.data[0]
    assert h.type == "heatmap" and h.zmid == 0.0
    np.testing.assert_allclose(np.asarray(h.z), iv - 0.2)
    fig2 = figures.heatmap(K, T, iv, title="iv", zlabel="iv")
    np.testing.assert_allclose(np.asarray(fig2.data[0].z), iv * 100)


@pytest.mark.parametrize("bad", [np.zeros((3, 4)), np.zeros(5)])
def test_grid_shape_errors(bad):
    T = np.linspace(0.1, 1, 5)
    K = np.linspace(1, 2, 4)
    with pytest.raises(ValueError):
        figures.heatmap(K, T, bad, title="x", zlabel="x")


def test_smile_bars_fit_and_local_vol():
    K = np.array([4000.0, 4500, 5000, 5500])
    bid = np.array([np.nan, 0.17, 0.15, 0.14])
    ask = np.array([0.30, 0.19, 0.16, 0.155])
    mid = np.array([np.nan, 0.18, 0.155, 0.1475])
    Kg = np.linspace(4000, 5500, 20)
    fig = figures.smile(K, bid, ask, mid, Kg, np.full(20, 0.16), np.full(20, 0.2), title="s",
                        used=np.array([False, True, True, True]))
    names = [t.name for t in fig.data]
    # the quotes the fit used are drawn last (on top of the curves and of the grey ones)
    assert names == ["fitted implied vol", "local vol", "market bid/ask (not used)", "market bid/ask (used)"]
    used = fig.data[3]
    # the bar spans bid..ask exactly (in vol points)
    np.testing.assert_allclose(np.asarray(used.y) - np.asarray(used.error_y.arrayminus), bid[1:] * 100)
    np.testing.assert_allclose(np.asarray(used.y) + np.asarray(used.error_y.array), ask[1:] * 100)
    # a missing bid iv draws the bar from 0
    unused = fig.data[2]
    assert float(np.asarray(unused.y)[0] - np.asarray(unused.error_y.arrayminus)[0]) == pytest.approx(0.0)
    assert fig.data[0].line.color == figures.FIT_COLOUR and fig.data[1].line.color == figures.LOCAL_COLOUR


def test_smile_axes_follow_the_used_quotes():
    K = np.array([1000.0, 4000, 4500, 5000, 7000])
    mid = np.array([2.5, 0.22, 0.18, 0.16, 1.8])               # far wings at 250% and 180% vol, not used
    bid, ask = mid - 0.01, mid + 0.01
    used = np.array([False, True, True, True, False])
    Kg = np.linspace(4000, 5000, 11)
    fig = figures.smile(K, bid, ask, mid, Kg, np.linspace(0.22, 0.16, 11), title="s", used=used)
    x0, x1 = fig.layout.xaxis.range
    y0, y1 = fig.layout.yaxis.range
    assert 3900 <= x0 < 4000 and 5000 < x1 <= 5100
    assert y1 < 30 and y0 > 10                                 # vol points: the used smile fills the chart
    fig = figures.smile(K, bid, ask, mid, Kg, np.linspace(0.22, 0.16, 11), title="s", used=used, show_all=True)
    x0, x1 = fig.layout.xaxis.range
    assert x0 < 1000 and x1 > 7000 and fig.layout.yaxis.range[1] > 250


def test_residuals_colour_inside_outside():
    fig = figures.residuals([1, 2, 3], [5.0, -30.0, 0.0], [10.0, 10.0, 10.0], title="r")
    colours = list(fig.data[-1].marker.color)
    assert colours == [figures.FIT_COLOUR, figures.LOCAL_COLOUR, figures.FIT_COLOUR]


def test_term_structure_skew_density_roundtrip_bars():
    T = np.linspace(0.1, 2, 10)
    fig = figures.term_structure(T, np.full(10, 0.2), np.full(10, 0.22), np.full(10, 0.221))
    assert len(fig.data) == 3
    fig = figures.skew_ratio(T, np.full(10, -0.1), np.full(10, -0.2))
    np.testing.assert_allclose(np.asarray(fig.data[0].y), 2.0)
    dens = np.array([[0.1, -0.01, 0.2], [0.1, 0.2, 0.3]])
    fig = figures.densities([1, 2, 3], ["a", "b"], dens)
    assert [t.name for t in fig.data] == ["a", "a: negative density", "b"]
    fig = figures.roundtrip([1, 2], ["2026-07-01", "2027-01-01"], [3.0, -20.0], [5.0, 5.0], title="rt")
    assert fig.layout.yaxis.type == "category"
    # outside the band: its own ringed trace, drawn first (underneath); inside: no ring, on top
    assert [t.name.split(" (")[0] for t in fig.data] == ["outside the bid/ask band", "inside the bid/ask band"]
    assert fig.data[0].marker.line.width == 1 and fig.data[1].marker.line.width == 0
    assert all(t.type == "scatter" for t in fig.data)
    many = figures.roundtrip(np.arange(10_000.0), ["a"] * 10_000, np.zeros(10_000), np.ones(10_000), title="rt")
    assert len(many.data[-1].x) == figures.MAX_POINTS_2D and "of 10,000 drawn" in many.data[-1].name
    e = np.r_[np.linspace(-10, 10, 99), 5000.0]                # one 5000 bp outlier
    fig = figures.roundtrip(np.arange(100.0), ["a"] * 100, e, np.full(100, 20.0), title="rt")
    assert fig.data[-1].marker.cmax < 20                       # the colour scale is not set by the outlier
    fig = figures.compare_bars(["barrier", "asian"], {"local vol": [1, 2], "Black-Scholes": [1.1, 2.1]},
                               title="x", yaxis="price", errors={"local vol": [0.01, 0.02]})
    assert len(fig.data) == 2 and fig.layout.barmode == "group"
    np.testing.assert_allclose(np.asarray(fig.data[0].error_y.array), [0.02, 0.04])


def test_figure_html_is_standalone():
    T, K, iv, _ = grid(3, 4)
    html = figures.figure_html(figures.heatmap(K, T, iv, title="iv", zlabel="iv"))
    assert html.lower().lstrip().startswith((b"<html", b"<!doctype html")) and b"plotly" in html and len(html) > 1_000_000  # plotly.js embedded


def test_rules_of_thumb_and_density_on_ssvi():
    """ui.data helpers against the closed forms: the ATM local vol equals ssvi_local_vol_reference, the rule
    sigma_imp + T dsigma/dT matches ATM local vol to first order, and the density integrates to ~1."""
    from core.forwards import Forwards
    from ui import data

    T = np.array([0.05, 0.25, 1.0])
    r = data.rules_of_thumb(SURF, T)
    np.testing.assert_allclose(r["atm_lv"], ssvi_local_vol_reference(SURF, np.zeros(3), T))
    assert np.all(np.abs(r["atm_lv"] - r["rule_lv"]) < 0.02)
    assert np.all(r["skew_ratio"].iloc[:1] > 1.5) and np.all(r["skew_ratio"] < 2.5)
    fwd = Forwards.from_rates(S, 0.04, 0.015, T)
    K = np.linspace(1000, 15000, 4001)
    p = data.density(SURF, fwd, K, T)
    mass = np.trapezoid(p, K, axis=1)
    np.testing.assert_allclose(mass, 1.0, atol=2e-3)
    mean = np.trapezoid(p * K, K, axis=1)
    np.testing.assert_allclose(mean, fwd.F(T), rtol=2e-3)  # martingale: E[S_T] = F_T


def test_exports_escape_formulas_and_names():
    from ui import data

    df = pd.DataFrame({"legs": ["=cmd|' /C calc'!A0", "+1 C 100", "@SUM(1)", "-2 P 50", "fine"],
                       "cost": [-1.5, 2.0, 0.0, -0.1, 1.0]})
    text = data.safe_csv(df).decode()
    assert "\n=cmd" not in text and "'=cmd" in text and "'+1 C" in text and "'@SUM" in text and "'-2 P" in text
    assert ",-1.5" in text  # numbers stay numbers
    assert data.download_name("../../etc/passwd", "quotes", ext="csv").endswith(".csv")
    assert "/" not in data.download_name("../../etc/passwd", ext="csv")
    assert data.safe_name("C:\\Users\\x\\evil<script>.csv") == "evilscript.csv"
    assert data.valid_ticker(" spy ") == "SPY" and data.valid_ticker("^spx") == "^SPX"
    assert data.valid_ticker("rm -rf /") is None and data.valid_ticker("") is None


# ------------------------------------------------------------------------------------------ expiry series
def test_expiry_labels_and_order():
    from ui import series

    keys = ["2024-01-26", "2024-01-19", "2024-01-19 AM", "2024-02-16 AM"]
    assert series.sort_keys(keys) == ["2024-01-19 AM", "2024-01-19", "2024-01-26", "2024-02-16 AM"]
    lab = series.expiry_labels(keys)
    assert lab == {"2024-01-26": "2024-01-26", "2024-01-19": "2024-01-19 PM", "2024-01-19 AM": "2024-01-19 AM",
                   "2024-02-16 AM": "2024-02-16 AM"}


@pytest.mark.parametrize("strikes", [(4300.0, 4310.0, 4330.0), (4300.0, 4305.0, 4450.0), (95.0, 97.5, 100.0)])
def test_butterfly_sizes_become_whole_contracts(strikes):
    """Core sizes a butterfly so that its smallest leg is 1 (printed to 6 digits); the dashboard shows the
    smallest whole-contract ratio, which is the strike-gap ratio (K3-K2) : (K3-K1) : (K2-K1) reduced."""
    import math

    from ui import series

    K1, K2, K3 = strikes
    lam = (K3 - K2) / (K3 - K1)
    scale = 1.0 / min(lam, 1 - lam)
    printed = [float(f"{w:.6g}") for w in (lam * scale, scale, (1 - lam) * scale)]
    sizes, n, exact = series.whole_ratio(printed)
    gaps = [round(4 * (K3 - K2)), round(4 * (K3 - K1)), round(4 * (K2 - K1))]  # quarter-point strikes: integers
    g = math.gcd(*gaps)
    assert exact and sizes == [x // g for x in gaps]


def test_calendar_sizes_round_towards_safety():
    from ui import series

    sizes, n, exact = series.whole_ratio([1.0, 0.61834, 0.40112])
    assert not exact and n == series.ROUNDED_SIZE
    assert sizes == pytest.approx([10.0, 6.1834, 4.0112])      # before rounding: the caller rounds by side


def _am_pm_book():
    """SPX (AM) and SPXW (PM) puts of one date: each series is arbitrage-free, but a book merging the two
    (best bid and best ask per strike across both) shows an 'executable' vertical: buy the PM 105 put at
    4.10, sell the AM 100 put at 5.00."""
    rows = []
    for root, settle, T, px in (("SPX", "AM", 0.1000, {95: (3.4, 3.5), 100: (5.0, 5.1), 105: (7.0, 7.2)}),
                                ("SPXW", "PM", 0.1007, {95: (2.0, 2.1), 100: (3.0, 3.1), 105: (4.0, 4.1)})):
        for K, (b, a) in px.items():
            rows.append(dict(root=root, settlement=settle, expiry=pd.Timestamp("2024-01-19"), T=T, strike=float(K),
                             cp=-1, bid=b, ask=a))
    return pd.DataFrame(rows)


def test_model_free_checks_never_mix_two_series():
    from core.arbitrage import quote_arbitrage
    from ui import series

    q = _am_pm_book()
    merged = quote_arbitrage(q)
    assert merged["survives_spread"].any()                     # the merged book's phantom arbitrage
    by = series.quote_arbitrage_by_series(q)
    assert not by["survives_spread"].any()
    name = series.series_name(q)
    assert all(len({name[r] for r in rows}) == 1 for rows in by["rows"])
    assert set(by["series"]) <= {"SPX AM", "SPXW PM"}
    assert set(by["expiry"]) <= {"2024-01-19 AM", "2024-01-19 PM"}


def test_violation_legs_name_their_series_and_quoted_strikes():
    from ui import series

    q = _am_pm_book()
    q.loc[(q["root"] == "SPXW") & (q["strike"] == 100.0), ["bid", "ask"]] = (4.3, 4.35)   # PM 100 put above PM 105's ask
    by = series.quote_arbitrage_by_series(q)
    ex = by[by["survives_spread"]]
    assert len(ex) and (ex["series"] == "SPXW PM").all()
    legs = ex["legs"].iloc[0]
    assert "2024-01-19 PM" in legs and "AM" not in legs
    assert "105 " in legs and "105.0" not in legs              # strikes as quoted
    assert ex["package_cost"].iloc[0] == pytest.approx(ex["cost"].iloc[0])  # 1:1 legs: the package is one unit


@pytest.mark.shared_data
@pytest.mark.slow
def test_spx_violations_stay_within_one_series():
    """A real SPX chain (AM monthlies and PM weeklies on the same dates): the dashboard's check never pairs
    legs of two series; the date-merged core check does (so this test can fail)."""
    from core import pipeline
    from core.arbitrage import quote_arbitrage
    from core.sources.detect import load_files
    from ui import series

    path = SHARED_DATA / "cboe_modern" / "spx_20240105_close.csv"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    prep = pipeline.prepare(load_files([path]), pipeline.Settings())
    name = series.series_name(prep.quotes)
    mixed = quote_arbitrage(prep.quotes, prep.forwards)["rows"].apply(lambda r: len({name[i] for i in r}) > 1)
    assert mixed.any()
    by = series.quote_arbitrage_by_series(prep.quotes, prep.forwards)
    assert len(by) and not by["rows"].apply(lambda r: len({name[i] for i in r}) > 1).any()
    assert {"SPX AM", "SPXW PM"} <= set(by["series"])
    assert not by["legs"].str.contains(r"\d\.\d{4,}").any()   # no 9.66667 sizes, no 156.0936647 strikes
