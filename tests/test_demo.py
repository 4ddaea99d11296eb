"""The demo market: deterministic, realistic, true model inside every quote, bad quotes where recorded."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.black import black_price
from core.demo import demo_chain, demo_model, price_tick, third_friday
from core.forwards import Forwards
from core.quotes import NEW_YORK, QUOTE_COLUMNS


@pytest.fixture(scope="module")
def chain():
    return demo_chain()


def _true_price(chain, q):
    m = chain.meta["model"]
    T = q["T"].to_numpy()
    F = m["spot"] * np.exp((m["r"] - m["q"]) * T)
    D = np.exp(-m["r"] * T)
    sigma = m["surface"].implied_vol(np.log(q["strike"].to_numpy() / F), T)
    return black_price(F, q["strike"].to_numpy(), T, sigma, q["cp"].to_numpy(), D), F, D


def _bad_rows(chain):
    return sorted({i for rows in chain.meta["bad_quotes"].values() for i in rows})


def test_deterministic_and_seeded():
    a, b, c = demo_chain(7), demo_chain(7), demo_chain(8)
    pd.testing.assert_frame_equal(a.quotes, b.quotes)
    assert not a.quotes[["bid", "ask"]].equals(c.quotes[["bid", "ask"]])
    assert a.meta["bad_quotes"] == b.meta["bad_quotes"]


def test_labels_schema_and_metadata(chain):
    assert chain.source == "demo" and chain.underlying == "DEMO"
    assert "synthetic" in chain.meta["label"]
    assert chain.exercise == "european"
    assert list(chain.quotes.columns[: len(QUOTE_COLUMNS)]) == list(QUOTE_COLUMNS)
    assert chain.asof == pd.Timestamp("2026-06-15 10:30", tz=NEW_YORK)
    assert chain.spot == pytest.approx(5000.0)
    assert (chain.quotes["settlement"] == "PM").all()
    m = chain.meta["model"]
    assert set(m) >= {"surface", "spot", "r", "q"}
    assert all(m["surface"].no_arbitrage_conditions().values())
    assert -0.75 <= m["surface"].rho <= -0.55
    assert demo_model()["surface"] == m["surface"]


def test_expiries_realistic(chain):
    exps = [pd.Timestamp(e).date() for e in chain.expiries]
    assert 10 <= len(exps) <= 14
    T = chain.quotes.groupby("expiry")["T"].first().to_numpy()
    assert 5 / 365 <= T[0] <= 14 / 365 and 1.8 <= T[-1] <= 2.1
    assert all(d.weekday() < 5 for d in exps)
    # monthlies on third Fridays (Juneteenth 2027 is observed on Friday 18 June: Thursday expiry)
    for y, mth in ((2026, 7), (2026, 8), (2026, 9), (2026, 12), (2027, 12), (2028, 6)):
        assert third_friday(y, mth) in exps
    assert pd.Timestamp("2027-06-17").date() in exps
    # 2026-07-03 is the observed Independence Day holiday: that weekly moves to Thursday
    assert pd.Timestamp("2026-07-03").date() not in exps and pd.Timestamp("2026-07-02").date() in exps


def test_grid_both_sides_and_ticks(chain):
    q = chain.quotes.drop(index=chain.meta["bad_quotes"]["duplicate"])
    counts = q.groupby(["expiry", "strike"])["cp"].agg(["sum", "size"])
    assert (counts["size"] == 2).all() and (counts["sum"] == 0).all()
    spacing = q.groupby("expiry")["strike"].apply(lambda s: np.diff(np.unique(s)).min())
    assert spacing.is_monotonic_increasing and spacing.iloc[0] == 5 and spacing.iloc[-1] >= 50
    # +-3.5 standard deviations: the wings reach far enough
    m = chain.meta["model"]
    for _e, g in q.groupby("expiry"):
        T = g["T"].iloc[0]
        F = m["spot"] * np.exp((m["r"] - m["q"]) * T)
        sd = float(m["surface"].implied_vol(0.0, T)) * np.sqrt(T)
        y = np.log(g["strike"] / F)
        assert y.min() < -3.0 * sd and y.max() > 3.0 * sd
    for col in ("bid", "ask", "last"):
        p = q[col].to_numpy()
        t = price_tick(p)
        assert np.allclose(np.round(p / t) * t, p, atol=1e-9), col
    assert (q["bid"] == 0).sum() > 50      # zero bids far out of the money
    assert (q["ask"] > 0).all()


def test_true_vol_inside_every_band(chain):
    # Black prices are increasing in vol, so bid <= Black(true vol) <= ask is the same statement as
    # iv(bid) <= true vol <= iv(ask), and it also holds where a zero bid has no implied vol
    q = chain.quotes
    good = np.setdiff1d(np.arange(len(q)), _bad_rows(chain))
    P, F, D = _true_price(chain, q)
    bid, ask = q["bid"].to_numpy(), q["ask"].to_numpy()
    inside = (bid[good] <= P[good] + 1e-9) & (P[good] <= ask[good] + 1e-9)
    assert inside.all(), q.iloc[good[~inside]].head()
    assert (bid[good] < ask[good]).all()
    # every good mid keeps some time value over the discounted forward intrinsic, as the true price does
    intrinsic = D * np.maximum(q["cp"].to_numpy() * (F - q["strike"].to_numpy()), 0.0)
    mid = 0.5 * (bid + ask)
    assert (mid[good] > intrinsic[good]).all()


def test_spreads_widen_in_the_wings(chain):
    from core.black import implied_vol

    q = chain.quotes
    P, F, D = _true_price(chain, q)
    ok = (q["bid"] > 0).to_numpy()
    ivb = implied_vol(q["bid"].to_numpy(), F, q["strike"].to_numpy(), q["T"].to_numpy(), q["cp"].to_numpy(), D)
    iva = implied_vol(q["ask"].to_numpy(), F, q["strike"].to_numpy(), q["T"].to_numpy(), q["cp"].to_numpy(), D)
    y = np.log(q["strike"].to_numpy() / F)
    sd = np.sqrt(chain.meta["model"]["surface"].w(0.0, q["T"].to_numpy()))
    spread = iva - ivb
    otm = ok & (np.sign(q["cp"].to_numpy()) * y > 0)
    near = otm & (np.abs(y / sd) < 0.5)
    wing = otm & (np.abs(y / sd) > 1.5)
    assert np.nanmedian(spread[wing]) > 1.5 * np.nanmedian(spread[near])
    assert 0.001 < np.nanmedian(spread[near]) < 0.02


def test_forwards_exact(chain):
    fw = chain.meta["forwards"]
    assert isinstance(fw, Forwards)
    m = chain.meta["model"]
    t = fw.table
    assert len(t) == len(chain.expiries)
    T = chain.quotes.groupby("expiry")["T"].first()
    assert np.allclose(t["T"], T.to_numpy(), atol=1e-12)
    assert np.allclose(t["F"], m["spot"] * np.exp((m["r"] - m["q"]) * T.to_numpy()), rtol=1e-13)


def test_bad_quotes_exist_and_are_bad(chain):
    q = chain.quotes
    bad = chain.meta["bad_quotes"]
    assert set(bad) == {"crossed", "below_intrinsic", "stale", "duplicate"}
    assert all(len(v) >= 1 for v in bad.values())
    for i in bad["crossed"]:
        assert q.at[i, "bid"] > q.at[i, "ask"]
    _, F, D = _true_price(chain, q)
    for i in bad["below_intrinsic"]:
        intrinsic = D[i] * max(q.at[i, "cp"] * (F[i] - q.at[i, "strike"]), 0.0)
        assert q.at[i, "ask"] < intrinsic
    for i in bad["stale"]:
        assert chain.asof - q.at[i, "last_trade_time"] > pd.Timedelta(days=3)
    good = np.setdiff1d(np.arange(len(q)), _bad_rows(chain))
    assert (chain.asof - q["last_trade_time"].iloc[good] < pd.Timedelta(hours=8)).all()
    assert (q["last_trade_time"].iloc[good] <= chain.asof).all()
    key = ["expiry", "strike", "cp"]
    dups = q.index[q.duplicated(key, keep="first")].tolist()
    assert dups == bad["duplicate"]
    for d, src in chain.meta["duplicate_of"].items():
        assert q.loc[d, key].equals(q.loc[src, key])


def test_asof_argument_moves_the_chain():
    c = demo_chain(asof="2026-01-05 11:00")
    assert c.asof == pd.Timestamp("2026-01-05 11:00", tz=NEW_YORK)
    assert (c.quotes["T"] > 0).all()
    assert 10 <= len(c.expiries) <= 14
