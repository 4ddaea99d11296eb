"""Forwards from put-call parity: known truths (the demo), a third party (pyql on real SPX quotes),
robustness to stale quotes, overrides and explicit fallbacks."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from core.cleaning import clean_quotes
from core.demo import demo_chain
from core.errors import InputError
from core.forwards import FALLBACKS, FORWARD_COLUMNS, Forwards, implied_forwards


@pytest.fixture(scope="module")
def demo():
    return demo_chain()


@pytest.fixture(scope="module")
def fw(demo):
    return implied_forwards(demo)


def _rel(a, b):
    return np.abs(np.asarray(a, float) / np.asarray(b, float) - 1.0)


# -- the demo: exact forwards known -----------------------------------------------------------

def test_demo_forwards_within_one_bp(demo, fw):
    true = demo.meta["forwards"].table
    t = fw.table
    assert list(t.columns[: len(FORWARD_COLUMNS)]) == list(FORWARD_COLUMNS)
    assert len(t) == len(true) and np.allclose(t["T"], true["T"])
    assert (t["fallback"] == "").all() and not t["approximate"].any()
    assert (t["n_pairs"] >= 20).all() and (t["residual"] > 0).all()
    assert _rel(t["F"], true["F"]).max() < 1e-4                      # the 0.01%
    assert _rel(t["D"], true["D"]).max() < 5e-4
    assert fw.spot == demo.spot


@pytest.mark.parametrize("fmt", ["cboe", "yfinance-csv", "tidy-csv"])
def test_demo_forwards_after_every_file_format(demo, fmt):
    from core.sources.detect import FORMAT_KEYS, export_chain, load_file
    assert fmt in FORMAT_KEYS
    back = load_file(export_chain(demo, fmt))
    f = implied_forwards(back)
    T = f.table["T"].to_numpy()
    # compare at the loaded T with the true model (the file may carry its own quote time precision)
    assert _rel(f.table["F"], demo.meta["forwards"].F(T)).max() < 1e-4
    assert (f.table["fallback"] == "").all()


def test_spot_is_optional(demo, fw):
    nospot = dataclasses.replace(demo, spot=None, spot_time=None)
    f = implied_forwards(nospot)
    assert f.spot is None
    assert np.allclose(f.table["F"], fw.table["F"], rtol=1e-12)      # parity alone gives the forwards


def test_duplicates_and_row_order_do_not_matter(demo, fw):
    q = demo.quotes.sample(frac=1.0, random_state=3)
    q = pd.concat([q, q.iloc[:200]])
    f = implied_forwards(q, spot=demo.spot)
    assert np.allclose(f.table["F"], fw.table["F"], rtol=1e-12)


# -- robustness: a few stale quotes must not move the forward ---------------------------------

def _ols_forward(K, z):
    b, a = np.polyfit(K, z, 1)
    return -a / b


def test_robust_to_stale_quotes_where_ols_is_not(demo, fw):
    """Five strikes near the money of one expiry get stale call quotes (a move ago: calls 2% of spot
    too cheap); the robust fit barely moves while OLS over the same pairs moves several bp."""
    c = clean_quotes(demo)
    i = 6
    T6 = fw.table["T"].iloc[i]
    e = fw.table["expiry"].iloc[i]
    F_true = demo.meta["forwards"].table["F"].iloc[i]
    rows = c.index[(c["expiry"] == e) & (c["cp"] == 1) & (c["reason"] == "ok")]
    near = (c.loc[rows, "strike"] - F_true).abs().sort_values().index[:12:2]      # 6 strikes near the money
    shift = 0.02 * demo.spot * 0.5
    bad = c.copy()
    bad.loc[near, ["bid", "ask", "mid"]] -= shift
    f_bad = implied_forwards(bad, spot=demo.spot)
    assert abs(f_bad.table["F"].iloc[i] / F_true - 1) < 1e-4
    # the same pairs through OLS (what the seeds and pyql do)
    g = bad[(bad["expiry"] == e) & (bad["reason"] == "ok")]
    piv = g.pivot_table(index="strike", columns="cp", values="mid").dropna()
    K = piv.index.to_numpy(float)
    sel = np.abs(np.log(K / F_true)) <= 0.5 * np.sqrt(T6)
    F_ols = _ols_forward(K[sel], (piv[1] - piv[-1]).to_numpy()[sel])
    assert abs(F_ols / F_true - 1) > 3e-4


# -- overrides --------------------------------------------------------------------------------

def test_r_and_q_overrides_give_carry_forwards(demo):
    f = implied_forwards(demo, r=0.03, q=0.01)
    T = f.table["T"].to_numpy()
    assert np.allclose(f.table["F"], demo.spot * np.exp(0.02 * T), rtol=1e-14)
    assert np.allclose(f.table["D"], np.exp(-0.03 * T), rtol=1e-14)
    assert (f.table["fallback"] == "rates").all()
    # the residual then says how far market parity is from the user's carry: far, here
    assert (f.table["residual"] > 1.0).all()


def test_r_override_fixes_discount_and_parity_gives_forward(demo):
    r = demo.meta["model"]["r"]
    f = implied_forwards(demo, r=r)
    T = f.table["T"].to_numpy()
    assert np.allclose(f.table["D"], np.exp(-r * T), rtol=1e-14)
    assert _rel(f.table["F"], demo.meta["forwards"].F(T)).max() < 1e-4
    assert (f.table["fallback"] == "discount from r").all()


def test_q_override_with_spot(demo):
    q = demo.meta["model"]["q"]
    f = implied_forwards(demo, q=q)
    T = f.table["T"].to_numpy()
    assert np.allclose(f.table["F"] * f.table["D"], demo.spot * np.exp(-q * T), rtol=1e-12)
    assert _rel(f.table["F"], demo.meta["forwards"].F(T)).max() < 5e-4
    assert (f.table["fallback"] == "forward from q").all()
    with pytest.raises(InputError, match="needs the spot"):
        implied_forwards(demo.quotes, q=q)


@pytest.mark.parametrize("kw", [dict(spot=-1.0), dict(spot="x"), dict(r=np.nan), dict(q=np.inf),
                                dict(exercise="asian"), dict(config="loose")])
def test_bad_arguments(demo, kw):
    with pytest.raises(InputError):
        implied_forwards(demo, **kw)


def test_not_a_table():
    with pytest.raises(InputError):
        implied_forwards([1, 2, 3])


# -- fallbacks --------------------------------------------------------------------------------

def test_expiry_without_pairs_is_interpolated(demo, fw):
    e = fw.table["expiry"].iloc[7]
    q = demo.quotes[~((demo.quotes["expiry"] == e) & (demo.quotes["cp"] == -1))]   # calls only
    f = implied_forwards(q, spot=demo.spot)
    row = f.table.iloc[7]
    assert row["fallback"] == "interpolated" and row["n_pairs"] == 0
    assert abs(row["F"] / demo.meta["forwards"].table["F"].iloc[7] - 1) < 2e-4   # constant carry: nearly exact
    assert (f.table.drop(index=7)["fallback"] == "").all()


def test_expiry_with_two_pairs_keeps_parity_forward(demo, fw):
    """Two pairs cannot give slope and intercept robustly: D comes from the neighbours, F from parity."""
    e = fw.table["expiry"].iloc[5]
    q = demo.quotes
    g = q[(q["expiry"] == e) & (q["cp"] == -1)]
    F5 = demo.meta["forwards"].table["F"].iloc[5]
    keep = (g["strike"] - F5).abs().sort_values().index[:2]
    q = q.drop(index=g.index.difference(keep))
    f = implied_forwards(q, spot=demo.spot)
    row = f.table.iloc[5]
    assert row["fallback"] == "interpolated discount" and row["n_pairs"] == 2
    assert abs(row["F"] / F5 - 1) < 1e-4
    assert abs(row["D"] / demo.meta["forwards"].table["D"].iloc[5] - 1) < 5e-4


def test_nonsense_regression_falls_back(demo, fw):
    """C - P scaled by 3 in one expiry implies D = 3: rejected, flagged, D from the neighbours."""
    c = clean_quotes(demo)
    e = fw.table["expiry"].iloc[4]
    m = (c["expiry"] == e)
    piv_K = c.loc[m & (c["cp"] == -1), "strike"]
    calls = c.index[m & (c["cp"] == 1)]
    puts = c.index[m & (c["cp"] == -1)]
    # make puts' mid = call mid - 3 (C - P) so that C - P triples
    cm = c.loc[calls].set_index("strike")["mid"]
    pm = c.loc[puts].set_index("strike")["mid"]
    new_p = cm.reindex(piv_K.to_numpy()).to_numpy() - 3 * (cm.reindex(piv_K.to_numpy()).to_numpy() - pm.to_numpy())
    c.loc[puts, "mid"] = new_p
    c.loc[puts, "reason"] = np.where(np.isfinite(new_p), c.loc[puts, "reason"], "missing_quote")
    f = implied_forwards(c, spot=demo.spot)
    row = f.table.iloc[4]
    assert row["fallback"] != "" and row["fallback"] in FALLBACKS
    assert 0 < row["D"] <= 1.0 and abs(row["D"] / demo.meta["forwards"].table["D"].iloc[4] - 1) < 1e-3


def test_no_pairs_anywhere(demo):
    calls = demo.quotes[demo.quotes["cp"] == 1]
    with pytest.raises(InputError, match="no expiry has a usable call/put pair"):
        implied_forwards(calls)
    f = implied_forwards(calls, spot=demo.spot)
    assert (f.table["fallback"] == "spot, zero carry").all() and np.allclose(f.table["F"], demo.spot)
    f = implied_forwards(calls, spot=demo.spot, r=0.04)
    assert (f.table["fallback"] == "rates, q = 0").all()
    assert np.allclose(f.table["F"], demo.spot * np.exp(0.04 * f.table["T"]))
    f = implied_forwards(calls, spot=demo.spot, r=0.04, q=0.015)
    assert _rel(f.table["F"], demo.meta["forwards"].table["F"]).max() < 1e-12


def test_american_is_flagged_approximate(demo):
    am = dataclasses.replace(demo, exercise="american")
    f = implied_forwards(am)
    assert f.table["approximate"].all()
    assert not implied_forwards(am, exercise="european").table["approximate"].any()


def test_expired_expiries_get_no_row(demo, fw):
    later = demo.quotes.assign(quote_time=demo.asof + pd.Timedelta(days=12))
    from core.quotes import make_quotes
    q = make_quotes(later.drop(columns=["T"]))
    f = implied_forwards(q, spot=demo.spot)
    assert (f.table["T"] > 0).all() and len(f.table) < len(fw.table)


def test_every_fallback_is_documented():
    assert "" in FALLBACKS and all(len(v) > 20 for v in FALLBACKS.values())


def test_forwards_container_round_trip(fw):
    t = fw.table
    assert np.allclose(fw.F(t["T"].to_numpy()), t["F"], rtol=1e-12)
    assert np.allclose(fw.D(t["T"].to_numpy()), t["D"], rtol=1e-12)
    Forwards(t, fw.spot)          # the table validates


# -- a third party on real quotes: pyql's forwards for SPX, 24 January 2011 --------------------

@pytest.mark.shared_data
def test_spx_2011_forwards_match_pyql(shared_data):
    """Parity forwards of the raw CBOE file agree with pyql's ``Fwd`` within 0.05% for every expiry.

    Matching expiries: pyql's ``dtExpiry`` (and the ``TTM`` computed from it) is wrong for this data:
    each date lies about one month *before* the contract's real expiry (its 2011-03-16 rows are the
    April contract SPX1116D..., its 2013-11-21 rows the December 2013 one), so matching by the
    closest ``T`` would pair e.g. its "2011-03-16" with the March contract and compare the wrong
    forwards. pyql's forward is the intercept over minus the slope of its OLS of ``C - P`` on ``K``
    (``Fwd = S exp((r - d) TTM)`` with ``r``, ``d`` backed out of that regression with the same
    TTM), so its ``Fwd`` does not depend on the wrong TTM and stays a valid reference. We therefore
    match each of its expiries by the quotes themselves: its rows carry the raw bid and ask, and the
    contract those (type, strike, bid, ask) rows belong to in the raw file names the expiry.
    """
    from core.sources.cboe import read_cboe
    folder = shared_data / "spx_20110124"
    chain = read_cboe(folder / "SPX-Options-24jan2011.csv")
    assert chain.exercise == "european" and chain.spot == pytest.approx(1290.59)
    f = implied_forwards(chain)
    ref = pd.read_csv(folder / "df_options_SPX_24jan2011.csv")
    raw = chain.quotes.assign(Type=np.where(chain.quotes["cp"] == 1, "C", "P"))
    raw = raw.rename(columns={"strike": "Strike", "bid": "PBid", "ask": "PAsk"})
    m = ref.merge(raw[["Type", "Strike", "PBid", "PAsk", "expiry"]], on=["Type", "Strike", "PBid", "PAsk"])
    checked = 0
    for d, g in m.groupby("dtExpiry"):
        counts = g["expiry"].value_counts()
        expiry = counts.index[0]
        assert counts.iloc[0] >= 0.9 * len(ref[ref["dtExpiry"] == d]), f"{d}: ambiguous match {counts.to_dict()}"
        row = f.table[f.table["expiry"] == expiry]
        assert len(row) == 1, f"{d} -> {expiry} is not an expiry of ours"
        fwd = float(g["Fwd"].iloc[0])
        assert abs(float(row["F"].iloc[0]) / fwd - 1) < 5e-4, (d, expiry, float(row["F"].iloc[0]), fwd)
        assert row["fallback"].iloc[0] == ""
        checked += 1
    assert checked == 8
    # and our own forwards are sane across all 16 expiries: decreasing in T (dividends > rates in 2011)
    fit = f.table[f.table["fallback"] == ""]
    assert len(fit) >= 14 and fit["F"].is_monotonic_decreasing
    assert ((fit["D"] > 0.95) & (fit["D"] <= 1.0)).all()
