"""Hypothesis strategies and input builders shared by the property tests (one home: add new ones here).

Hostile values (``NASTY``, ``nasty_float``, ``nasty_array``), raw quote tables (``quote_rows``), mutated
file exports of the demo chain (``mutated_file``), implied-vol quotes from an SSVI model (``iv_quotes``),
local-vol grid axes, spoiled seeds' market grids (``seed_grid``) and perturbed demo chains
(``perturbed_chain``). Profiles (examples per test) live in ``tests/conftest.py``.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from core.demo import demo_chain
from core.forwards import Forwards
from core.quotes import QuoteChain, make_quotes
from core.seeds import generate_market_surface
from core.sources.detect import export_chain
from core.surface.ssvi import SSVISurface, ThetaParametric

# ---------------------------------------------------------------------------------------- hostile values
NASTY = [0.0, -0.0, -1.0, 1e-300, 5e-324, 1e300, -1e300, 1.7976931348623157e308, np.nan, np.inf, -np.inf]
nasty_float = st.one_of(st.sampled_from(NASTY), st.floats(allow_nan=True, allow_infinity=True))
price_float = st.one_of(st.floats(0.0, 60.0), st.sampled_from([0.0, 0.01, 0.05]), nasty_float)
strike_float = st.one_of(st.sampled_from([80.0, 90.0, 95.0, 100.0, 105.0, 110.0, 120.0]), st.floats(1.0, 500.0), nasty_float)
EXPIRY_POOL = [pd.Timestamp(d) for d in ("2026-06-12", "2026-06-15", "2026-06-16", "2026-06-19", "2026-07-17",
                                          "2026-09-18", "2026-12-18", "2027-06-18", "2028-12-15", "2076-01-01")]
nasty_array = hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=2, max_side=4), elements=nasty_float)
cp_value = st.one_of(st.sampled_from([1, -1]), st.sampled_from([1, -1, "C", "P", "call", "put", 1.0]))
PLAIN_CP = st.sampled_from([1, -1])
ASOF = pd.Timestamp("2026-06-15 14:30", tz="UTC")


# ---------------------------------------------------------------------------------------- quote tables
@st.composite
def quote_rows(draw, min_rows: int = 0, max_rows: int = 24, cp=PLAIN_CP):
    """A raw quote table for ``make_quotes``: realistic rows mixed with hostile ones."""
    n = draw(st.integers(min_rows, max_rows))
    expiries = draw(st.lists(st.sampled_from(EXPIRY_POOL), min_size=1, max_size=3))
    rows = []
    for _ in range(n):
        if draw(st.booleans()):   # a plausible quote: positive prices, ask above bid
            bid = draw(st.floats(0.0, 40.0))
            ask = bid + draw(st.floats(0.0, 5.0))
            K = draw(st.sampled_from([80.0, 90.0, 95.0, 100.0, 105.0, 110.0, 120.0]))
        else:
            bid, ask, K = draw(price_float), draw(price_float), draw(strike_float)
        rows.append({"expiry": draw(st.sampled_from(expiries)), "strike": K, "cp": draw(cp),
                     "bid": bid, "ask": ask, "last": draw(price_float),
                     "volume": draw(st.one_of(st.none(), st.floats(0, 1e4), nasty_float)),
                     "open_interest": draw(st.one_of(st.none(), st.floats(0, 1e5))),
                     "last_trade_time": draw(st.sampled_from([pd.NaT, ASOF - pd.Timedelta(hours=1),
                                                              ASOF - pd.Timedelta(days=30)]))})
    df = pd.DataFrame(rows, columns=["expiry", "strike", "cp", "bid", "ask", "last", "volume",
                                     "open_interest", "last_trade_time"])
    if draw(st.booleans()) and n > 1:   # unsorted / shuffled
        df = df.sample(frac=1.0, random_state=draw(st.integers(0, 99))).reset_index(drop=True)
    return df


def quotes_of(df):
    """``make_quotes`` of a ``quote_rows`` table at ``ASOF`` (underlying ``TEST``)."""
    return make_quotes(df, quote_time=ASOF, underlying="TEST", source="hypothesis")


def flat_forwards(spot=100.0, r=0.03, q=0.01, Ts=(0.05, 0.25, 0.5, 1.0, 2.0)):
    """Forwards from flat continuous rates ``r`` and yield ``q`` with nodes at ``Ts`` (years)."""
    return Forwards.from_rates(spot, r, q, list(Ts))


# ---------------------------------------------------------------------------------------- file exports
@functools.lru_cache(maxsize=1)
def small_demo():
    """A 40-quote slice of the demo chain (two expiries, every 20th strike), for mutation tests."""
    c = demo_chain()
    q = c.quotes[c.quotes["expiry"].isin(c.expiries[:2])]
    q = q[q["strike"].isin(sorted(q["strike"].unique())[::20])].reset_index(drop=True)
    return QuoteChain(q, c.underlying, c.asof, c.source, c.spot, c.spot_time, c.exercise, {})


@functools.lru_cache(maxsize=4)
def exported(fmt: str) -> str:
    """``small_demo`` exported as ``fmt`` (``cboe``, ``yfinance-csv``, ``tidy-csv``), as text."""
    return export_chain(small_demo(), fmt).decode("utf-8")


JUNK_CELLS = ["", "nan", "N/A", "-", "-1", "0", "1e308", "-1e308", "inf", "abc", "=cmd|' /C calc'!A0", "9" * 40,
              "2026-02-30", "1/1/1", '"', '""', "\t", " ", "C", "P", "call", "XYZ991399C99999999", "0.0001", "1e-300"]


@st.composite
def mutated_file(draw, fmt: str):
    """A valid export of the small demo chain in ``fmt``, then cut, shuffled and spoiled."""
    lines = exported(fmt).splitlines()
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["drop", "dup", "swap", "cell", "insert", "truncate", "shuffle_body"]))
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "cell":
            cells = lines[i].split(",")
            k = draw(st.integers(0, len(cells) - 1))
            cells[k] = draw(st.one_of(st.sampled_from(JUNK_CELLS), st.text(max_size=8)))
            lines[i] = ",".join(cells)
        elif op == "insert":
            lines.insert(i, draw(st.one_of(st.text(max_size=40), st.sampled_from(JUNK_CELLS))))
        elif op == "truncate":
            text = "\n".join(lines)
            lines = text[: draw(st.integers(0, len(text)))].splitlines()
        elif op == "shuffle_body":
            head, body = lines[:3], lines[3:]
            body = draw(st.permutations(body)) if len(body) < 60 else body
            lines = head + list(body)
    text = draw(st.sampled_from(["\n", "\r\n", "\r"])).join(lines)
    enc = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]))
    return text.encode(enc, errors="replace")


# ---------------------------------------------------------------------------------------- surfaces and local vol
def ssvi_model(rho=-0.6, eta=1.0, gamma=0.4):
    """An arbitrage-free SSVI surface (power-law phi, parametric theta curve)."""
    return SSVISurface(rho=rho, eta=eta, gamma=gamma, theta_curve=ThetaParametric(v0=0.03, v_inf=0.05, kappa=1.5))


T_POOL = [1 / 365, 0.02, 0.08, 0.25, 0.25, 0.5, 1.0, 2.0, 5.0]


@st.composite
def iv_quotes(draw, max_expiries: int = 4, max_strikes: int = 12):
    """Quotes with implied vols from an SSVI model, then perturbed: noise, NaN/inf/zero/negative vols,
    duplicated and unsorted strikes, one expiry or one strike, expiries with the same T."""
    model = ssvi_model(draw(st.floats(-0.9, 0.0)), draw(st.floats(0.2, 1.5)), draw(st.floats(0.1, 0.5)))
    Ts = draw(st.lists(st.sampled_from(T_POOL), min_size=1, max_size=max_expiries))
    fwd = flat_forwards(100.0, 0.02, 0.0, sorted(set(Ts)))
    rows = []
    for j, T in enumerate(Ts):
        n = draw(st.integers(1, max_strikes))
        ys = draw(st.lists(st.floats(-1.5, 0.8), min_size=n, max_size=n))
        if draw(st.booleans()):
            ys = ys + ys[: draw(st.integers(0, n))]          # duplicated strikes
        noise = draw(st.sampled_from([0.0, 0.0005, 0.01, 0.05]))
        for y in ys:
            iv = float(model.implied_vol(y, T)) + draw(st.floats(-1, 1)) * noise
            if draw(st.integers(0, 9)) == 0:
                iv = draw(st.sampled_from([np.nan, np.inf, 0.0, -0.2, 1e-8, 20.0]))
            half = draw(st.sampled_from([0.001, 0.01, np.nan]))
            K = float(fwd.F(T)) * math.exp(y)
            rows.append({"expiry": pd.Timestamp("2026-06-15") + pd.Timedelta(days=int(j)), "T": T, "strike": K,
                         "cp": 1 if y >= 0 else -1, "y": y, "iv_mid": iv, "iv_bid": iv - half, "iv_ask": iv + half,
                         "use": draw(st.integers(0, 7)) > 0})
    df = pd.DataFrame(rows)
    if draw(st.booleans()):
        df = df.sample(frac=1.0, random_state=draw(st.integers(0, 9))).reset_index(drop=True)
    return df, fwd


# strike and expiry axes of a local-vol grid: sorted, nasty, or unsorted and maybe duplicated
strike_axis = st.one_of(
    st.lists(st.floats(1.0, 400.0), min_size=1, max_size=12).map(sorted),
    st.lists(nasty_float, min_size=0, max_size=5),
    st.lists(st.floats(1.0, 400.0), min_size=2, max_size=6),      # unsorted, maybe duplicated
)
T_axis = st.one_of(st.lists(st.floats(1e-4, 10.0), min_size=1, max_size=8).map(sorted),
                   st.lists(nasty_float, min_size=0, max_size=4), st.lists(st.floats(1e-3, 5.0), min_size=2, max_size=5))


# ---------------------------------------------------------------------------------------- the seeds' market grids
@st.composite
def seed_grid(draw):
    """A seeds' market grid (``generate_market_surface``) with holes and noise, cut to few or one strike and
    one or two maturities, then spoiled (NaN/0/negative/inf cell, vols x50, transposed, reversed strikes)."""
    m = generate_market_surface(draw(st.integers(0, 50)), noise_bp=draw(st.sampled_from([0.0, 20.0, 300.0])),
                                missing=draw(st.sampled_from([0.0, 0.2, 0.6])))
    K, T, iv = m.strikes, m.maturities, m.implied_vols.copy()
    kk = draw(st.sampled_from(["all", "few", "one"]))
    if kk == "few":
        K, iv = K[::8], iv[:, ::8]
    elif kk == "one":
        K, iv = K[20:21], iv[:, 20:21]
    tt = draw(st.sampled_from(["all", "one", "two"]))
    if tt == "one":
        T, iv = T[3:4], iv[3:4]
    elif tt == "two":
        T, iv = T[[0, -1]], iv[[0, -1]]
    spoil = draw(st.sampled_from(["none", "nan_cell", "zero_cell", "negative", "inf", "huge", "transpose", "unsorted_K"]))
    iv = iv.copy()
    if spoil == "nan_cell":
        iv[0, 0] = np.nan
    elif spoil == "zero_cell":
        iv[-1, -1] = 0.0
    elif spoil == "negative":
        iv[0, -1] = -0.1
    elif spoil == "inf":
        iv[0, 0] = np.inf
    elif spoil == "huge":
        iv = iv * 50
    elif spoil == "transpose":
        iv = iv.T
    elif spoil == "unsorted_K" and len(K) > 1:
        K = K[::-1].copy()
    return K, T, iv, m.spot, m.r, m.q, spoil


# ---------------------------------------------------------------------------------------- perturbed demo chains
@functools.lru_cache(maxsize=1)
def demo_slice():
    """Four expiries of the demo chain, every third strike (about 300 quotes): a quick but real chain."""
    c = demo_chain()
    exp = c.expiries
    q = c.quotes[c.quotes["expiry"].isin([exp[1], exp[4], exp[7], exp[10]])]
    strikes = sorted(q["strike"].unique())[::3]
    q = q[q["strike"].isin(strikes)].reset_index(drop=True)
    return QuoteChain(q, c.underlying, c.asof, c.source, c.spot, c.spot_time, c.exercise, {})


@st.composite
def perturbed_chain(draw):
    """The demo slice after one or more of: drop rows, duplicate rows, shuffle, NaN-out cells, keep a
    single expiry or a single strike, scale every price by 1e-6 or 1e6 (alone, or with strikes and spot)."""
    c = demo_slice()
    q = c.quotes.copy()
    spot = c.spot
    ops = draw(st.lists(st.sampled_from(["drop", "dup", "shuffle", "nan", "one_expiry", "one_strike",
                                         "scale_prices", "scale_all", "no_spot", "american"]), max_size=3, unique=True))
    exercise = c.exercise
    rnd = np.random.default_rng(draw(st.integers(0, 2**16)))
    if "one_expiry" in ops:
        q = q[q["expiry"] == draw(st.sampled_from(sorted(q["expiry"].unique())))]
    if "one_strike" in ops:
        q = q[q["strike"] == draw(st.sampled_from(sorted(q["strike"].unique())))]
    if "drop" in ops and len(q):
        q = q.sample(frac=draw(st.sampled_from([0.1, 0.5, 0.9])), random_state=int(rnd.integers(1 << 30)))
    if "dup" in ops and len(q):
        q = pd.concat([q, q.sample(frac=0.3, random_state=int(rnd.integers(1 << 30)))])
    if "shuffle" in ops:
        q = q.sample(frac=1.0, random_state=int(rnd.integers(1 << 30)))
    q = q.reset_index(drop=True)
    if "nan" in ops and len(q):
        for col in draw(st.lists(st.sampled_from(["bid", "ask", "strike", "T", "last", "volume"]), min_size=1, max_size=3)):
            q.loc[rnd.random(len(q)) < 0.2, col] = np.nan
    factor = draw(st.sampled_from([1e-6, 1e6]))
    if "scale_prices" in ops:
        q[["bid", "ask", "last"]] *= factor
    if "scale_all" in ops:
        q[["bid", "ask", "last", "strike"]] *= factor
        spot = spot * factor
    if "no_spot" in ops:
        spot = None
    if "american" in ops:
        exercise = "american"
    return QuoteChain(q, c.underlying, c.asof, c.source, spot, c.spot_time if spot else None, exercise, {}), ops
