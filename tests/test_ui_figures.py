"""The pure Plotly builders of ui/figures.py and the pure helpers of ui/data.py: shapes, flags marked,
colours, hover; against the analytic SSVI surface (core/surface/ssvi.py) as the data."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from core.surface.ssvi import SSVISurface, ThetaParametric, ssvi_local_vol
from ui import figures

SURF = SSVISurface(rho=-0.65, eta=1.1, gamma=0.4, theta_curve=ThetaParametric(0.15**2, 0.20**2, 1.5))
S = 5000.0


def grid(nT=12, nK=30):
    T = np.linspace(0.05, 2.0, nT)
    K = np.linspace(3500.0, 6000.0, nK)
    y = np.log(K[None, :] / S) - 0.025 * T[:, None]
    iv = SURF.implied_vol(y, np.broadcast_to(T[:, None], y.shape))
    lv = ssvi_local_vol(SURF, y, np.broadcast_to(T[:, None], y.shape))
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
    assert "T %{y" in s.hovertemplate and "local vol" in s.hovertemplate and "%{text}" in s.hovertemplate
    np.testing.assert_allclose(np.asarray(s.customdata, float), lv * 100)
    assert s.colorscale is not None and fig.layout.scene.yaxis.title.text == "T (years)"


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
    assert names == ["market bid/ask (used)", "market bid/ask (not used)", "fitted implied vol", "local vol"]
    used = fig.data[0]
    # the bar spans bid..ask exactly (in vol points)
    np.testing.assert_allclose(np.asarray(used.y) - np.asarray(used.error_y.arrayminus), bid[1:] * 100)
    np.testing.assert_allclose(np.asarray(used.y) + np.asarray(used.error_y.array), ask[1:] * 100)
    # a missing bid iv draws the bar from 0
    unused = fig.data[1]
    assert float(np.asarray(unused.y)[0] - np.asarray(unused.error_y.arrayminus)[0]) == pytest.approx(0.0)
    assert fig.data[2].line.color == figures.FIT_COLOUR and fig.data[3].line.color == figures.LOCAL_COLOUR


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
    assert list(fig.data[0].marker.line.width) == [0, 2]
    fig = figures.compare_bars(["barrier", "asian"], {"local vol": [1, 2], "Black-Scholes": [1.1, 2.1]},
                               title="x", yaxis="price", errors={"local vol": [0.01, 0.02]})
    assert len(fig.data) == 2 and fig.layout.barmode == "group"
    np.testing.assert_allclose(np.asarray(fig.data[0].error_y.array), [0.02, 0.04])


def test_figure_html_is_standalone():
    T, K, iv, _ = grid(3, 4)
    html = figures.figure_html(figures.heatmap(K, T, iv, title="iv", zlabel="iv"))
    assert html.lower().lstrip().startswith((b"<html", b"<!doctype html")) and b"plotly" in html and len(html) > 1_000_000  # plotly.js embedded


def test_rules_of_thumb_and_density_on_ssvi():
    """ui.data helpers against the closed forms: the ATM local vol equals ssvi_local_vol, the rule
    sigma_imp + T dsigma/dT matches ATM local vol to first order, and the density integrates to ~1."""
    from core.forwards import Forwards
    from ui import data

    T = np.array([0.05, 0.25, 1.0])
    r = data.rules_of_thumb(SURF, T)
    np.testing.assert_allclose(r["atm_lv"], ssvi_local_vol(SURF, np.zeros(3), T))
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
