"""The demo market: a synthetic, seeded option chain on an index-like underlying "DEMO".

Clearly labelled synthetic (``chain.source == "demo"``, ``meta["label"]``). Implied vols come from a
known arbitrage-free power-law SSVI surface (Gatheral & Jacquier 2014; ``core.surface.ssvi``), so every
later step has a ground truth: exact forwards ``F = S e^{(r-q)T}``, ``D = e^{-rT}`` and the closed-form
Dupire local vol (Gatheral's formula on it). The quotes look like a real index chain: weeklies, monthlies
(third Fridays) and a quarterly, PM-settled; strikes on a tick grid that widens with expiry, covering
about +-3.5 standard deviations; bid/ask set in vol terms around the true vol (wider in the wings),
converted to prices and rounded outward to the price tick (0.05 under 3.00, else 0.10), so the true
price is always inside the quoted band; zero bids far out of the money. A few deliberately bad quotes
(crossed, below intrinsic, stale last trade, a duplicate) are recorded by row in ``meta["bad_quotes"]``.
"""
from __future__ import annotations

import datetime as _dt
from typing import Any

import numpy as np
import pandas as pd

from core.black import black_price, implied_vol
from core.calendar import market_time, session_on_or_before
from core.forwards import Forwards
from core.quotes import QuoteChain, make_quotes, to_utc
from core.surface.ssvi import SSVISurface, ThetaParametric

#: The true model's parameters (also in ``demo_model()`` and ``chain.meta["model"]``).
DEMO_SPOT = 5000.0
DEMO_R = 0.04            # continuously-compounded rate
DEMO_Q = 0.015           # continuous dividend yield
DEMO_SSVI = {"rho": -0.65, "eta": 1.1, "gamma": 0.4}           # eta (1 + |rho|) = 1.815 <= 2
DEMO_THETA = {"v0": 0.15**2, "v_inf": 0.20**2, "kappa": 1.5}   # ATM vol ~15% short, ~18.8% at 2 y
DEFAULT_ASOF = "2026-06-15 10:30"  # New York time (a Monday)
UNDERLYING = "DEMO"
LABEL = "synthetic demo market (SSVI model, not real quotes)"

#: Expiries relative to the quote date: (kind, date rule); see ``demo_expiries``.
_N_WEEKLIES = 3


def third_friday(year: int, month: int) -> _dt.date:
    """The third Friday of a month (the standard monthly option expiry)."""
    first = _dt.date(year, month, 1)
    return first + _dt.timedelta(days=(4 - first.weekday()) % 7 + 14)


def _last_business_day(year: int, month: int) -> _dt.date:
    """The last NYSE session of a month (``core.calendar``: weekends and exchange holidays skipped)."""
    nxt = _dt.date(year + month // 12, month % 12 + 1, 1)
    return session_on_or_before(nxt - _dt.timedelta(days=1))


def _business_day_before(d: _dt.date) -> _dt.date:
    """``d`` itself, or the last NYSE session before it when it is a weekend or exchange holiday
    (an expiry falling on a holiday moves to the session before; ``core.calendar``, Good Friday included)."""
    return session_on_or_before(d)


def demo_expiries(asof_date: _dt.date) -> list[_dt.date]:
    """The demo's expiry dates after ``asof_date``: about 13 dates from ~1 week to ~2 years.

    The next three Friday weeklies at least 5 days out, the next four monthlies (third Fridays), the
    next quarter-end (last business day, like SPX quarterlies), the next two March/June/September/
    December monthlies, then June and December ones out to two years (LEAPS-like). A date on an
    exchange holiday moves to the business day before (e.g. Thursday 2 July 2026).
    """
    soon = asof_date + _dt.timedelta(days=5)
    out: set[_dt.date] = set()
    d = soon
    while len(out) < _N_WEEKLIES:
        if d.weekday() == 4:
            out.add(_business_day_before(d))
        d += _dt.timedelta(days=1)
    y, m = asof_date.year, asof_date.month
    n_monthly = 0
    while n_monthly < 4:
        tf = third_friday(y, m)
        if tf > soon:
            out.add(_business_day_before(tf))
            n_monthly += 1
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    qm = ((asof_date.month - 1) // 3 + 1) * 3
    qe = _last_business_day(asof_date.year, qm)
    if qe <= soon:
        qy, qm = (asof_date.year + 1, 3) if qm == 12 else (asof_date.year, qm + 3)
        qe = _business_day_before(_last_business_day(qy, qm))
    out.add(qe)
    horizon = asof_date + _dt.timedelta(days=750)
    n_quarterly = 0
    last = max(out)
    while True:
        tf = third_friday(y, m)
        if tf > horizon:
            break
        if tf > last and ((m in (3, 6, 9, 12) and n_quarterly < 2) or m in (6, 12)):
            out.add(_business_day_before(tf))
            n_quarterly += m in (3, 6, 9, 12)
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return sorted(out)


def demo_model() -> dict[str, Any]:
    """The demo's true model: ``{"surface": SSVISurface, "spot": S, "r": r, "q": q}``.

    ``w(y, T)`` is power-law SSVI with ``theta(T)`` from ``ThetaParametric``; forwards are
    ``F_T = S exp((r - q) T)``, discount ``D_T = exp(-r T)``. Free of static arbitrage
    (``gamma <= 1/2``, ``eta (1 + |rho|) <= 2``; Gatheral & Jacquier 2014, Remark 4.4).
    """
    surface = SSVISurface(theta_curve=ThetaParametric(**DEMO_THETA), **DEMO_SSVI)
    return {"surface": surface, "spot": DEMO_SPOT, "r": DEMO_R, "q": DEMO_Q}


DEMO_MODEL = demo_model()


def strike_tick(T: float) -> float:
    """Strike spacing of the demo grid at expiry ``T`` (years): 5, 10, 25, 50 or 100 points."""
    for limit, tick in ((0.05, 5.0), (0.15, 10.0), (0.5, 25.0), (1.2, 50.0)):
        if T <= limit:
            return tick
    return 100.0


def price_tick(price):
    """Quote tick: 0.05 below 3.00, else 0.10 (the SPX convention)."""
    return np.where(np.asarray(price, float) < 3.0, 0.05, 0.10)


def _round_down(p):
    t = price_tick(p)
    return np.floor(np.asarray(p, float) / t + 1e-9) * t


def _round_up(p):
    t = price_tick(p)
    return np.ceil(np.asarray(p, float) / t - 1e-9) * t


def _round_near(p):
    t = price_tick(p)
    return np.round(np.asarray(p, float) / t) * t


def demo_chain(seed: int = 7, asof: Any = None) -> QuoteChain:
    """A deterministic synthetic option chain on "DEMO" from the true SSVI model (``demo_model``).

    Parameters: ``seed`` (int) drives the spread noise, volumes, last trades and which quotes are
    made bad; ``asof`` quote time (naive = New York), default 2026-06-15 10:30 New York.
    Returns a ``QuoteChain`` (european, PM-settled, calls and puts at every strike) with
    ``meta``: ``label``, ``model`` (true model), ``forwards`` (exact ``Forwards.from_rates`` at the
    chain's expiries), ``bad_quotes`` (reason -> row indices: ``crossed``, ``below_intrinsic``,
    ``stale``, ``duplicate``), ``duplicate_of`` (duplicate row -> original row), ``seed``.
    Bid and ask are ``Black(sigma_true -+ h)`` with a half-spread ``h`` in vol that grows with
    ``|y| / (sigma sqrt T)``, rounded outward to the price tick; bids under one tick become 0.
    """
    rng = np.random.default_rng(int(seed))
    model = demo_model()
    surface, S, r, q = model["surface"], model["spot"], model["r"], model["q"]
    asof_utc = to_utc(DEFAULT_ASOF if asof is None else asof)
    asof_ny = asof_utc.tz_convert("America/New_York")
    clock = market_time(asof_utc)   # T runs from the time the prices were made (core.quotes, make_quotes)
    frames = []
    for e in demo_expiries(asof_ny.date()):
        exp_time = pd.Timestamp(_dt.datetime(e.year, e.month, e.day, 16, 0)).tz_localize("America/New_York")
        T = (exp_time.tz_convert("UTC") - clock).total_seconds() / (365.0 * 86400.0)
        F = S * np.exp((r - q) * T)
        atm = float(surface.implied_vol(0.0, T))
        sd = atm * np.sqrt(T)
        tick = strike_tick(T)
        k_lo = np.ceil(F * np.exp(-3.5 * sd) / tick) * tick
        k_hi = np.floor(F * np.exp(3.5 * sd) / tick) * tick
        K = np.arange(k_lo, k_hi + tick / 2, tick)
        frames.append(pd.DataFrame({"expiry": pd.Timestamp(e), "T0": T, "F": F, "strike": K}))
    grid = pd.concat(frames, ignore_index=True)
    q_rows = pd.concat([grid.assign(cp=1), grid.assign(cp=-1)], ignore_index=True)
    q_rows = q_rows.sort_values(["expiry", "strike", "cp"], ascending=[True, True, False], ignore_index=True)
    n = len(q_rows)
    T = q_rows["T0"].to_numpy()
    F = q_rows["F"].to_numpy()
    K = q_rows["strike"].to_numpy()
    cp = q_rows["cp"].to_numpy()
    D = np.exp(-r * T)
    y = np.log(K / F)
    sigma = surface.implied_vol(y, T)
    z = y / (np.sqrt(surface.w(0.0, T)))           # moneyness in ATM standard deviations
    # half-spread in vol: ~0.3 vol points at the money for short expiries, less for long ones, wider
    # in the wings; an asymmetric random split keeps the true vol inside but off the mid
    base = 0.0015 + 0.001 / np.sqrt(np.maximum(T, 1e-4) * 12.0)
    h = base * (1.0 + 0.35 * z * z)
    u = rng.uniform(0.6, 1.4, size=(2, n))
    vol_bid = np.maximum(sigma - h * u[0], 0.25 * sigma)
    vol_ask = sigma + h * u[1]
    true = black_price(F, K, T, sigma, cp, D)
    p_bid = black_price(F, K, T, vol_bid, cp, D)
    p_ask = black_price(F, K, T, vol_ask, cp, D)
    # deep in the money the vol band is narrow in price: market makers still quote a few ticks wide
    floor = 0.0006 * true
    p_bid = np.minimum(p_bid, true - floor)
    p_ask = np.maximum(p_ask, true + floor)
    bid = np.maximum(_round_down(p_bid), 0.0)
    ask = np.maximum(_round_up(p_ask), 0.05)
    bid = np.where(bid < 0.05 - 1e-9, 0.0, bid)
    # the cheapest wings: no bid at all
    bid = np.where(true < 0.10, 0.0, bid)
    ask = np.where(ask <= bid, bid + price_tick(bid), ask)
    # deep in the money the time value is smaller than the spread: quote the ask high enough that the
    # mid keeps some time value, as the true price does (a mid at or below D (F - K) has no implied vol)
    intrinsic = D * np.maximum(cp * (F - K), 0.0)
    short = (bid + ask) / 2.0 <= intrinsic + 0.5 * (true - intrinsic)
    ask = np.where(short & (intrinsic > 0), np.maximum(ask, _round_up(2.0 * true - bid + 0.01)), ask)
    bid, ask = np.round(bid, 2), np.round(ask, 2)

    # activity: decays with distance from the money, more for short expiries
    act = np.exp(-0.5 * (z / 1.2) ** 2) / np.sqrt(np.maximum(T, 0.02))
    volume = np.floor(rng.gamma(0.8, 400.0 * act + 1.0)).astype(float) + 1.0
    oi = np.floor(rng.gamma(1.0, 4000.0 * act / np.sqrt(np.maximum(T, 0.02)) + 50.0) + volume).astype(float)
    # last trade: today's session, earlier than the quote; the price near the true one, within the band
    session_open = pd.Timestamp(_dt.datetime(asof_ny.year, asof_ny.month, asof_ny.day, 9, 30)).tz_localize("America/New_York")
    span = max((asof_ny - session_open).total_seconds(), 60.0)
    secs = rng.uniform(0.0, span, size=n)
    last_time = session_open.tz_convert("UTC") + pd.to_timedelta(np.floor(secs), unit="s")
    last = np.round(_round_near(np.clip(true * (1.0 + rng.normal(0.0, 0.01, n)), bid, ask)), 2)
    last = np.where(last <= 0, 0.05, last)

    out = pd.DataFrame({
        "underlying": UNDERLYING, "root": UNDERLYING, "quote_time": asof_utc,
        "expiry": q_rows["expiry"], "settlement": "PM", "strike": K, "cp": cp,
        "bid": bid, "ask": ask, "last": last, "last_trade_time": last_time,
        "volume": volume, "open_interest": oi, "vendor_iv": np.nan, "source": "demo",
    })

    bad = _make_bad_quotes(out, rng, F, D, z)
    dup_of = bad.pop("_dup_of")
    quotes = make_quotes(out, quote_time=asof_utc, underlying=UNDERLYING, source="demo")
    exp_T = quotes.groupby("expiry", sort=True)["T"].first()
    forwards = Forwards.from_rates(S, r, q, exp_T.to_numpy(), expiries=list(exp_T.index))
    meta = {
        "label": LABEL, "synthetic": True, "seed": int(seed),
        "model": model, "forwards": forwards,
        "bad_quotes": bad, "duplicate_of": dup_of,
        "params": {"spot": S, "r": r, "q": q, **DEMO_SSVI, **DEMO_THETA},
    }
    return QuoteChain(quotes=quotes, underlying=UNDERLYING, asof=asof_utc, source="demo", spot=S,
                      spot_time=asof_utc, exercise="european", meta=meta)


def _make_bad_quotes(out: pd.DataFrame, rng: np.random.Generator, F, D, z) -> dict:
    """Spoil a few rows in place (and append a duplicate); returns reason -> row indices."""
    exp_codes = pd.factorize(out["expiry"])[0]
    n_exp = exp_codes.max() + 1
    picks: set[int] = set()

    def pick(mask) -> int:
        cand = np.flatnonzero(mask & ~np.isin(np.arange(len(out)), list(picks)))
        i = int(rng.choice(cand))
        picks.add(i)
        return i

    near = (np.abs(z) < 0.6) & (out["bid"].to_numpy() > 1.0)
    itm_call = (out["cp"].to_numpy() == 1) & (z < -1.2) & (z > -2.5) & (out["bid"].to_numpy() > 5.0)
    mid_exp = (exp_codes >= 2) & (exp_codes < n_exp - 1)
    crossed = []
    for _ in range(2):
        i = pick(near & mid_exp)
        b, a = out.at[i, "bid"], out.at[i, "ask"]
        # bid above ask by a few ticks: a crossed market, as when one side is stale
        out.at[i, "bid"], out.at[i, "ask"] = round(a + 3 * float(price_tick(a)), 2), b
        crossed.append(i)
    below = []
    for _ in range(2):
        i = pick(itm_call & mid_exp)
        intrinsic = D[i] * (F[i] - out.at[i, "strike"])
        ask = float(_round_down(intrinsic - max(2.0, 0.01 * intrinsic)))
        out.at[i, "ask"] = round(ask, 2)
        out.at[i, "bid"] = round(ask - 1.0, 2)
        below.append(i)
    stale = []
    for _ in range(2):
        i = pick(near)
        out.at[i, "last_trade_time"] = out.at[i, "last_trade_time"] - pd.Timedelta(days=10)
        out.at[i, "last"] = round(float(_round_near(out.at[i, "last"] * 1.25)), 2)
        stale.append(i)
    src = pick(near)
    out.loc[len(out)] = out.loc[src]
    dup = len(out) - 1
    return {"crossed": sorted(crossed), "below_intrinsic": sorted(below), "stale": sorted(stale),
            "duplicate": [dup], "_dup_of": {dup: src}}


def demo_fit_quotes(seed: int = 7):
    """The demo chain as a fit-ready quote frame on its EXACT forwards (no parity estimate): Black vols of
    bid, ask and mid (``core.black.implied_vol``), ``F, D, y``, and ``use`` = out-of-the-money two-sided
    quotes that are not among the planted bad ones. Returns ``(quotes, forwards, chain)``; for tests and
    benchmarks of the fits in isolation (``core.pipeline.prepare`` is the production path)."""
    ch = demo_chain(seed=seed)
    q = ch.quotes.copy()
    fwd = ch.meta["forwards"]
    T, K, cp = (q[c].to_numpy(float) for c in ("T", "strike", "cp"))
    F, D = fwd.F(T), fwd.D(T)
    bid, ask = q["bid"].to_numpy(float), q["ask"].to_numpy(float)
    q["F"], q["D"], q["y"] = F, D, np.log(K / F)
    q["iv_mid"] = implied_vol(0.5 * (bid + ask), F, K, T, cp, D)
    q["iv_bid"] = np.where(bid > 0, implied_vol(np.where(bid > 0, bid, np.nan), F, K, T, cp, D), np.nan)
    q["iv_ask"] = implied_vol(ask, F, K, T, cp, D)
    bad = [i for rows in ch.meta["bad_quotes"].values() for i in rows]
    q["use"] = (cp * q["y"] >= 0) & (bid > 0) & (ask > bid) & ~q.index.isin(bad) & np.isfinite(q["iv_mid"])
    return q, fwd, ch
