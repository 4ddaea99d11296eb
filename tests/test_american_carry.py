"""De-Americanisation on synthetic American chains: carry recovered, flat vol in gives flat vol out.

The quotes are American prices made by QuantLib's finite-difference engine (the independent oracle) at one
Black-Scholes vol, with known ``r`` and ``q``; ``core.american`` must give back ``q`` per expiry, the
vol on every converted quote, and, after the whole calibration, a flat local vol.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.american import (
    CARRY_FLAGS,
    DEAM_REASONS,
    DEFAULT_RATE,
    carry_forwards,
    deamericanise,
    implied_carry,
    trailing_dividend_yield,
)
from core.cleaning import REASONS, clean_quotes
from core.forwards import FALLBACKS
from core.pipeline import Settings, calibrate, local_vol_function, prepare, summary_dict
from core.quotes import QuoteChain, make_quotes

S0, R, Q, SIGMA = 100.0, 0.03, 0.01, 0.25
QUOTE_TIME = pd.Timestamp("2026-03-02 15:00", tz="America/New_York")
EXPIRIES = ("2026-04-02", "2026-06-02", "2026-09-02", "2027-03-02", "2028-03-02")


def _ql_american(K, T, cp, r=R, q=Q, sigma=SIGMA, S=S0):
    """American prices by QuantLib's FdBlackScholesVanillaEngine; ``T`` mapped to whole days with ``r, q,
    sigma^2`` rescaled so that ``r T``, ``q T`` and ``sigma^2 T`` are exact (all Black-Scholes needs)."""
    ql = pytest.importorskip("QuantLib")
    today = ql.Date(2, 3, 2026)
    ql.Settings.instance().evaluationDate = today
    dc = ql.Actual365Fixed()
    out = np.empty(len(K))
    for i, (k, t, c) in enumerate(zip(K, T, cp, strict=True)):
        days = max(int(round(t * 365)), 1)
        f = t / (days / 365.0)
        proc = ql.BlackScholesMertonProcess(
            ql.QuoteHandle(ql.SimpleQuote(S)),
            ql.YieldTermStructureHandle(ql.FlatForward(today, q * f, dc)),
            ql.YieldTermStructureHandle(ql.FlatForward(today, r * f, dc)),
            ql.BlackVolTermStructureHandle(ql.BlackConstantVol(today, ql.NullCalendar(), sigma * np.sqrt(f), dc)))
        opt = ql.VanillaOption(ql.PlainVanillaPayoff(ql.Option.Call if c > 0 else ql.Option.Put, float(k)),
                               ql.AmericanExercise(today, today + days))
        opt.setPricingEngine(ql.FdBlackScholesVanillaEngine(proc, 800, 800))
        out[i] = opt.NPV()
    return out


@pytest.fixture(scope="module")
def chain() -> QuoteChain:
    """An American chain at one vol: 5 expiries (1 month to 2 years), strikes 60..150, calls and puts,
    bid/ask = price -/+ max(0.01, 1% of the price) (listed equity options); prices below 0.02 not quoted."""
    rows = [{"expiry": e, "strike": k, "cp": c, "bid": 1.0, "ask": 1.1}
            for e in EXPIRIES for k in np.arange(60.0, 151.0, 2.5) for c in (1, -1)]
    q = make_quotes(pd.DataFrame(rows), quote_time=QUOTE_TIME, underlying="XYZ", source="tidy-csv")
    price = _ql_american(q["strike"].to_numpy(float), q["T"].to_numpy(float), q["cp"].to_numpy(float))
    half = np.maximum(0.01, 0.01 * price)
    q["bid"], q["ask"] = price - half, price + half
    # below 2 cents the oracle's own grid error (~1e-4) is a visible share of the price: not quoted
    q.loc[price < 0.02, ["bid", "ask"]] = np.nan
    return QuoteChain(q, "XYZ", QUOTE_TIME.tz_convert("UTC"), "tidy-csv", S0, exercise="american")


@pytest.mark.quantlib
def test_carry_per_expiry_recovers_q_and_calls_agree_with_puts(chain):
    c = implied_carry(clean_quotes(chain.quotes), chain.spot, r=R)
    t = c.table
    assert c.rate_source == "user" and c.q_source == "implied" and len(t) == len(EXPIRIES)
    assert (t["flag"] == "").all(), t
    np.testing.assert_allclose(t["q"], Q, atol=2e-4)  # 2 bp of yield
    assert (t["residual_bp"] < 2.0).all()
    assert c.smoothness["max_jump"] < 2e-4 and set(t["flag"]) <= set(CARRY_FLAGS)
    fw = carry_forwards(c)
    np.testing.assert_allclose(fw.table["F"], S0 * np.exp((R - t["q"]) * t["T"]), rtol=1e-12)
    assert not fw.table["approximate"].any() and set(fw.table["fallback"]) <= set(FALLBACKS)


@pytest.mark.quantlib
def test_users_yield_is_used_for_every_expiry_and_measured(chain):
    c = implied_carry(clean_quotes(chain.quotes), chain.spot, r=R, q=Q)
    assert c.q_source == "user" and (c.table["q"] == Q).all() and (c.table["iterations"] == 0).all()
    assert (c.table["residual_bp"] < 2.0).all()  # the true yield: calls and puts agree
    off = implied_carry(clean_quotes(chain.quotes), chain.spot, r=R, q=Q + 0.01)
    assert (off.table["residual_bp"] > 5 * c.table["residual_bp"]).all()  # a wrong one shows


@pytest.mark.quantlib
def test_rate_implied_from_the_quotes_when_not_given(chain):
    c = implied_carry(clean_quotes(chain.quotes), chain.spot)
    r = float(c.table["r"].iloc[0])
    assert c.rate_source == "implied" and abs(r - R) < 0.01
    # the forward is pinned whatever the rate: r - q comes back
    np.testing.assert_allclose(c.table["r"] - c.table["q"], R - Q, atol=5e-4)


@pytest.mark.quantlib
def test_conversion_gives_the_vol_back_and_flags_with_reasons(chain):
    d = deamericanise(clean_quotes(chain.quotes), chain.spot, r=R)
    q = d.quotes
    assert len(q) == len(chain.quotes)  # nothing dropped
    assert set(q["deam_reason"]) <= set(DEAM_REASONS) and set(q["reason"]) <= set(REASONS)
    conv = q["deam_reason"] == "ok"
    assert conv.sum() > 0.4 * len(q)  # the rest: deep in the money (no vol pinned) and no-vol quotes
    # 2 bp: the oracle's grid error (~1e-4 of the price) over the vega; deep in-the-money quotes, where that
    # error is worth many vol points, are flagged instead
    np.testing.assert_allclose(q.loc[conv, "iv_american"], SIGMA, atol=2e-4)
    # deep in-the-money quotes are flagged, not converted silently
    assert (q["deam_reason"] == "american_deep_itm").sum() > 0
    assert sum(d.counts.values()) == len(q)
    assert 0 < d.share_converted <= 1
    # European equivalent never above the American price; the premium is never negative
    assert (q.loc[conv, "mid"] <= q.loc[conv, "mid_american"] + 1e-9).all()


@pytest.mark.quantlib
@pytest.mark.slow
def test_flat_vol_round_trip_into_the_fitted_quotes(chain):
    """American prices at one vol -> de-Americanise -> the implied vols the surface is fitted to are that vol
    (within 0.5 bp), and the spline fit reproduces them."""
    cal = calibrate(chain, Settings(method="spline", r=R))
    u = cal.prepared.quotes[cal.prepared.quotes["use"]]
    assert len(u) > 100 and (np.abs(u["iv_mid"] - SIGMA) * 1e4).max() < 0.5
    assert max(cal.fit.rmse_bp.values()) < 1.0


@pytest.mark.quantlib
@pytest.mark.slow
@pytest.mark.parametrize("method", ["ssvi", "svi", "spline"])
def test_flat_vol_round_trip_through_the_calibration(chain, method):
    """American prices at one vol -> de-Americanise -> calibrate -> local vol within 5 bp of that vol inside
    0.8-1.2 F, T from 1 month to 2 years."""
    cal = calibrate(chain, Settings(method=method, r=R))
    lv = local_vol_function(cal.prepared, cal.fit, cal.settings)
    for t in np.linspace(31 / 365, 2.0, 12):
        F = float(cal.prepared.forwards.F(t))
        K = F * np.linspace(0.8, 1.2, 21)
        err = np.abs(np.asarray(lv(K, t), float) - SIGMA) * 1e4
        assert err.max() < 5.0, (method, t, err.max())
    s = summary_dict(chain, cal.prepared, cal.fit)
    assert s["american"]["rate_source"] == "user" and s["american"]["share_converted"] > 0.4


def test_european_chain_does_not_run_the_american_step():
    from core.demo import demo_chain

    p = prepare(demo_chain(), Settings())
    assert p.american is None and "deam_reason" not in p.quotes.columns


def test_default_rate_has_one_home():
    assert 0.0 < DEFAULT_RATE < 0.2


class _DivTicker:
    """yfinance.Ticker look-alike with only ``dividends`` (``hang``: it never answers until released)."""

    def __init__(self, series=None, hang=None):
        self.series, self.hang = series, hang

    @property
    def dividends(self):
        if self.hang is not None:
            self.hang.wait()
        return self.series


def test_yahoo_dividends_bounded_and_trailing_yield():
    import threading

    from core.errors import SourceTimeout
    from core.sources.yahoo import YahooSource

    idx = pd.DatetimeIndex(["2022-03-18", "2022-06-17", "2022-09-16", "2022-12-16", "2023-03-17"], tz="America/New_York")
    series = pd.Series([1.37, 1.58, 1.60, 1.78, 1.51], index=idx)
    src = YahooSource(timeout=2.0, snapshot_store=False, ticker_factory=lambda sym: _DivTicker(series))
    got = src.dividends("SPY")
    assert len(got) == 5 and str(got.index.tz) == "UTC" and got.index.is_monotonic_increasing
    records = [{"ex_date": i.date().isoformat(), "amount": float(v)} for i, v in got.items()]
    # 2023-06-02: the four ex-dates after 2022-06-02 count, the March 2022 one does not
    y = trailing_dividend_yield(records, 427.92, pd.Timestamp("2023-06-02 20:00", tz="UTC"))
    assert y == pytest.approx((1.58 + 1.60 + 1.78 + 1.51) / 427.92)
    assert trailing_dividend_yield([], 427.92, pd.Timestamp("2023-06-02", tz="UTC")) is None
    release = threading.Event()
    slow = YahooSource(timeout=0.3, snapshot_store=False, ticker_factory=lambda sym: _DivTicker(series, release))
    try:
        with pytest.raises(SourceTimeout):
            slow.dividends("SPY")
    finally:
        release.set()
