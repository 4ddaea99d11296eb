"""Static-arbitrage diagnostics (core.arbitrage): on surfaces and, model-free, on quotes.

References: Gatheral & Jacquier (2014), "Arbitrage-free SVI volatility surfaces": Lemma 2.1
(calendar: ``w_T >= 0``), Lemma 2.2 (butterfly: ``g >= 0``), Example 3.1 (Axel Vogt's SVI slice
``a=-0.0410, b=0.1331, m=0.3586, rho=0.3060, sigma=0.4153`` at ``T=1`` with butterfly arbitrage),
Remark 4.4 (power-law SSVI free of static arbitrage); MATH.md "Static arbitrage" for the
model-free bounds on quotes (Carr & Madan 2005 give the same list).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.arbitrage import quote_arbitrage, surface_arbitrage
from core.black import black_price
from core.errors import InputError
from core.forwards import Forwards
from core.surface.base import Derivatives, VolSurface
from core.surface.grid import GridSurface
from core.surface.ssvi import SSVISurface, ThetaParametric

GJ_PARAMS = [-0.0410, 0.1331, 0.3060, 0.3586, 0.4153]      # a, b, rho, m, sigma (our order)


def _gj_slice():
    return GridSurface(T_nodes=np.array([1.0]), params=np.array([GJ_PARAMS]), y_lo=np.array([-1.5]),
                       y_hi=np.array([1.5]), rmse_vol=np.zeros(1))


def test_gatheral_jacquier_example_is_flagged():
    arb = surface_arbitrage(_gj_slice(), np.linspace(-1.5, 1.5, 301), [1.0])
    assert arb.butterfly.any() and not arb.clean
    # the paper's Figure 3: g dips below zero for y roughly between 0.6 and 1.3, minimum near 0.9
    neg = arb.y[arb.butterfly[0]]
    assert 0.55 < neg.min() < 0.75 and 1.15 < neg.max() < 1.35
    assert arb.y[np.argmin(arb.g[0])] == pytest.approx(0.88, abs=0.05)
    assert arb.min_g < -0.02
    assert arb.counts["butterfly"] == int(arb.butterfly.sum())


def test_ssvi_inside_the_constraints_is_clean():
    s = SSVISurface(rho=-0.65, eta=1.1, gamma=0.4, theta_curve=ThetaParametric(0.15**2, 0.2**2, 1.5))
    assert all(s.no_arbitrage_conditions().values())
    arb = surface_arbitrage(s, np.linspace(-2.0, 1.5, 141), np.linspace(0.005, 5.0, 120))
    assert arb.clean and arb.counts["butterfly"] == arb.counts["calendar"] == 0
    assert arb.min_g > 0 and arb.min_w_T > 0
    assert len(arb.to_frame()) == 141 * 120


def test_calendar_arbitrage_on_a_surface_is_flagged():
    class Shrinking(VolSurface):
        def derivatives(self, y, T):
            y, T = np.broadcast_arrays(np.asarray(y, float), np.asarray(T, float))
            w = 0.04 * T * (1.2 - 0.3 * T)            # w_T < 0 for T > 2
            return Derivatives(w=w, w_y=np.zeros_like(w), w_yy=np.zeros_like(w), w_T=0.04 * (1.2 - 0.6 * T))

    arb = surface_arbitrage(Shrinking(), np.linspace(-0.5, 0.5, 11), np.linspace(0.5, 3.5, 31))
    np.testing.assert_array_equal(arb.calendar.any(axis=1), arb.T > 2.0 + 1e-12)
    assert not arb.butterfly.any()
    assert arb.counts["calendar_share"] == pytest.approx(arb.calendar.mean())


# --------------------------------------------------------------------------- quotes

STRIKES = np.arange(80.0, 121.0, 5.0)


def _chain(T_list, vols, *, r=0.0, q=0.0, S=100.0, strikes=STRIKES, half=0.05):
    """A clean quote table: Black prices at flat vol per expiry, bid/ask +- ``half``; with forwards."""
    fw = Forwards.from_rates(S, r, q, T_list)
    rows = []
    for T, vol in zip(T_list, vols, strict=True):
        F, D = float(fw.F(T)), float(fw.D(T))
        for cp in (1, -1):
            p = black_price(F, strikes, T, vol, cp, D)
            for K, px in zip(strikes, p, strict=True):
                rows.append({"expiry": pd.Timestamp("2026-01-01") + pd.Timedelta(days=int(round(T * 365))), "T": T,
                             "strike": K, "cp": cp, "bid": round(max(px - half, 0.0), 4), "ask": round(px + half, 4)})
    return pd.DataFrame(rows), fw


def _set(df, T, K, cp, bid, ask):
    m = (df["T"] == T) & (df["strike"] == K) & (df["cp"] == cp)
    assert m.sum() == 1
    df.loc[m, ["bid", "ask"]] = [bid, ask]
    return int(np.flatnonzero(m.to_numpy())[0])


def _px(df, T, K, cp, col):
    return float(df.loc[(df["T"] == T) & (df["strike"] == K) & (df["cp"] == cp), col].iloc[0])


def test_clean_quotes_have_no_executable_arbitrage():
    df, fw = _chain([0.25, 0.5, 1.0], [0.2, 0.2, 0.2], r=0.03, q=0.01)
    out = quote_arbitrage(df, fw)
    assert not out["survives_spread"].any()
    assert quote_arbitrage(df, fw, include_mid=False).empty


def test_vertical_spread_arbitrage_found_with_legs_and_cost():
    df, fw = _chain([0.5], [0.2])
    a100 = _px(df, 0.5, 100.0, 1, "ask")
    row = _set(df, 0.5, 105.0, 1, a100 + 0.25, a100 + 0.35)   # C(105) bid above C(100) ask
    out = quote_arbitrage(df, fw, include_mid=False)
    v = out[(out["kind"] == "vertical") & (out["rule"] == "monotone")]
    assert len(v) == 1
    hit = v.iloc[0]
    assert hit["strikes"] == (100.0, 105.0) and hit["side"] == "C"
    assert hit["cost"] == pytest.approx(-0.25) and hit["survives_spread"]
    assert hit["legs"] == f"buy 1 C 100 @ ask {a100:.6g}, sell 1 C 105 @ bid {a100 + 0.25:.6g}"
    assert row in hit["rows"]


def test_slope_bound_uses_the_discount_factor():
    # C(K1) - C(K2) <= D (K2 - K1): sell C(100) at bid, buy C(105) at ask, lend 5 D
    df, fw = _chain([0.5], [0.2], r=0.05)
    D = float(fw.D(0.5))
    a105 = _px(df, 0.5, 105.0, 1, "ask")
    _set(df, 0.5, 100.0, 1, a105 + 5 * D + 0.2, a105 + 5 * D + 0.3)
    out = quote_arbitrage(df, fw, include_mid=False)
    s = out[(out["kind"] == "vertical") & (out["rule"] == "slope") & (out["strikes"] == (100.0, 105.0))]
    assert len(s) == 1
    assert s.iloc[0]["cost"] == pytest.approx(-0.2)
    assert f"lend {5 * D:.6g}" in s.iloc[0]["legs"]
    # without forwards D = 1: the bound is looser and the 0.2 edge shrinks to 0.2 - 5 (1 - D)
    out1 = quote_arbitrage(df, None, include_mid=False)
    s1 = out1[(out1["rule"] == "slope") & (out1["strikes"] == (100.0, 105.0))]
    assert s1.iloc[0]["cost"] == pytest.approx(-0.2 + 5 * (1 - D))
    assert not out1.attrs["calendar_checked"]


def test_put_verticals_mirror_calls():
    df, fw = _chain([0.5], [0.2])
    a105 = _px(df, 0.5, 105.0, -1, "ask")
    _set(df, 0.5, 100.0, -1, a105 + 0.4, a105 + 0.5)       # P(100) bid above P(105) ask
    out = quote_arbitrage(df, fw, include_mid=False)
    v = out[(out["kind"] == "vertical") & (out["side"] == "P") & (out["rule"] == "monotone")]
    assert len(v) == 1 and v.iloc[0]["strikes"] == (100.0, 105.0)
    assert v.iloc[0]["cost"] == pytest.approx(-0.4)
    assert v.iloc[0]["legs"].startswith("buy 1 P 105 @ ask")


def test_butterfly_found_uniform_and_weighted():
    df, fw = _chain([0.5], [0.2])
    a95, a105 = _px(df, 0.5, 95.0, 1, "ask"), _px(df, 0.5, 105.0, 1, "ask")
    bid = (a95 + a105) / 2 + 0.1
    _set(df, 0.5, 100.0, 1, bid, bid + 0.1)
    out = quote_arbitrage(df, fw, include_mid=False)
    b = out[out["kind"] == "butterfly"]
    assert len(b) == 1 and b.iloc[0]["strikes"] == (95.0, 100.0, 105.0)
    assert b.iloc[0]["cost"] == pytest.approx(a95 + a105 - 2 * bid)       # = -0.2
    assert b.iloc[0]["legs"].startswith("buy 1 C 95 @ ask") and "sell 2 C 100 @ bid" in b.iloc[0]["legs"]
    # non-uniform strikes 90 / 100 / 120: weights (20, -30, 10) / 10 = 2, -3, 1
    df2, fw2 = _chain([0.5], [0.2], strikes=np.array([90.0, 100.0, 120.0]))
    a90, a120 = _px(df2, 0.5, 90.0, 1, "ask"), _px(df2, 0.5, 120.0, 1, "ask")
    env = (2 * a90 + a120) / 3
    _set(df2, 0.5, 100.0, 1, env + 0.05, env + 0.15)
    out2 = quote_arbitrage(df2, fw2, include_mid=False)
    b2 = out2[out2["kind"] == "butterfly"].iloc[0]
    assert b2["legs"] == (f"buy 2 C 90 @ ask {a90:.6g}, sell 3 C 100 @ bid {env + 0.05:.6g}, "
                          f"buy 1 C 120 @ ask {a120:.6g}")
    assert b2["cost"] == pytest.approx(-0.15)


def test_calendar_spread_at_equal_moneyness():
    # r = q = 0: same strike; the 1-year smile below the 6-month one (w decreasing in T)
    df, fw = _chain([0.5, 1.0], [0.2, 0.13])
    out = quote_arbitrage(df, fw, include_mid=False)
    c = out[(out["kind"] == "calendar") & (out["side"] == "C") & (out["K1"] == 100.0)]
    assert len(c) == 1
    b1, a2 = _px(df, 0.5, 100.0, 1, "bid"), _px(df, 1.0, 100.0, 1, "ask")
    assert c.iloc[0]["cost"] == pytest.approx(a2 - b1)
    assert c.iloc[0]["legs"] == f"sell 1 C 100 2026-07-02 @ bid {b1:.6g}, buy 1 C 100 2027-01-01 @ ask {a2:.6g}"
    assert (out["kind"] == "calendar").sum() >= 9          # every strike at least on one side
    # with carry the strike moves with the forward and the long leg is a convex combination
    dfc, fwc = _chain([0.5, 1.0], [0.2, 0.13], r=0.04, q=0.0)
    outc = quote_arbitrage(dfc, fwc, include_mid=False)
    cc = outc[(outc["kind"] == "calendar") & (outc["K1"] == 100.0) & (outc["side"] == "C")].iloc[0]
    assert cc["K2"] == pytest.approx(100.0 * np.exp(0.04 * 0.5))
    assert cc["legs"].count("buy") == 2
    # and nothing when the term structure is increasing
    ok, fwo = _chain([0.5, 1.0], [0.2, 0.2], r=0.04, q=0.01)
    assert not (quote_arbitrage(ok, fwo)["kind"] == "calendar").any()


def test_crossed_and_duplicate_quotes():
    df, fw = _chain([0.5], [0.2])
    _set(df, 0.5, 100.0, 1, 6.0, 5.5)
    df = pd.concat([df, df.iloc[[3]]], ignore_index=True)   # exact duplicate row: no violation
    out = quote_arbitrage(df, fw, include_mid=False)
    assert list(out["kind"]) == ["crossed"]
    assert out.iloc[0]["cost"] == pytest.approx(-0.5)


def test_bad_quote_table_raises():
    with pytest.raises(InputError, match="strike"):
        quote_arbitrage(pd.DataFrame({"expiry": [1], "cp": [1], "bid": [1.0], "ask": [1.1]}))
    with pytest.raises(InputError, match="DataFrame"):
        quote_arbitrage([1, 2, 3])


def test_demo_chain_shows_its_planted_bad_quotes_only():
    demo = pytest.importorskip("core.demo")
    chain = demo.demo_chain()
    bad = chain.meta["bad_quotes"]
    planted = {i for k in ("crossed", "below_intrinsic") for i in bad[k]}
    out = quote_arbitrage(chain.quotes, chain.meta["forwards"])
    ex = out[out["survives_spread"]]
    assert len(ex) > 0
    # every executable violation has a planted bad quote among its legs
    assert all(set(r) & planted for r in ex["rows"]), ex[[not (set(r) & planted) for r in ex["rows"]]]
    # and every planted crossed / below-intrinsic quote is found
    found = set().union(*map(set, ex["rows"]))
    assert planted <= found
    assert set(ex.loc[ex["kind"] == "crossed", "rows"].map(lambda r: r[0])) == set(bad["crossed"])


def test_culprits_explain_demo_violations_by_the_planted_quotes():
    """Every executable violation in the demo is blamed on one of the planted bad quotes (crossed or
    below intrinsic): the greedy set cover names the quotes a trader should look at."""
    from core.arbitrage import quote_arbitrage
    from core.demo import demo_chain
    from core.pipeline import prepare

    chain = demo_chain()
    p = prepare(chain)
    qa = quote_arbitrage(p.quotes, p.forwards)
    ex = qa[qa["survives_spread"]]
    planted = set(chain.meta["bad_quotes"]["crossed"]) | set(chain.meta["bad_quotes"]["below_intrinsic"])
    assert len(ex) > 0
    assert set(ex["culprit"]) <= planted
    assert all(c in legs for c, legs in zip(ex["culprit"], ex["rows"], strict=True))
    assert (qa.loc[~qa["survives_spread"], "culprit"] == -1).all()
