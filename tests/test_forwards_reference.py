"""The vectorised parity forwards (one sort for the pairing, one compiled call for the regressions) give
the numbers of the original per-expiry algorithm (``tests/reference_forwards.py``), on both backends,
on edge cases of the demo and on every real chain; an expiry series (AM or PM) is paired only with itself."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.black import use_backend
from core.cleaning import CleaningConfig, clean_quotes
from core.demo import demo_chain
from core.forwards import implied_forwards
from tests.reference_forwards import reference_forwards

TOL = 1e-10  # the brief's bound on F and D; both backends are in fact bit for bit equal to the reference
CFG = CleaningConfig()


@pytest.fixture(scope="module")
def demo():
    return demo_chain()


@pytest.fixture(scope="module")
def clean(demo):
    return clean_quotes(demo.quotes)


@pytest.fixture(params=["numba", "numpy"])
def backend(request):
    with use_backend(request.param) as active:
        if not active:
            pytest.skip(f"backend {request.param} unavailable")
        yield request.param


def _same(new, ref, tol=TOL):
    """The forwards table ``new`` equals the reference table row by row (F, D to ``tol``)."""
    assert len(new) == len(ref)
    assert list(new["expiry"]) == list(ref["expiry"])
    assert list(new["expiry_time"]) == list(ref["expiry_time"])
    assert np.array_equal(new["T"].to_numpy(), ref["T"].to_numpy())
    assert list(new["fallback"]) == list(ref["fallback"])
    assert list(new["n_pairs"]) == list(ref["n_pairs"])
    for col in ("F", "D"):
        rel = np.abs(new[col].to_numpy(float) / ref[col].to_numpy(float) - 1.0)
        assert rel.max() <= tol, (col, rel.max())
    a, b = new["residual"].to_numpy(float), ref["residual"].to_numpy(float)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    assert np.allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=1e-9, atol=1e-12)


def _check(quotes, backend, **kw):
    spot = kw.pop("spot", None)
    new = implied_forwards(quotes, spot=spot, **kw).table
    ref = reference_forwards(quotes, CFG, spot=spot, r=kw.get("r"), qy=kw.get("q"),
                             exercise=kw.get("exercise", "european"))
    _same(new, ref)
    return new


# -- the demo and its edge cases ------------------------------------------------------------------

def test_demo_matches_reference(clean, demo, backend):
    _check(clean, backend, spot=demo.spot)


@pytest.mark.parametrize("kw", [dict(r=0.03), dict(r=0.03, q=0.01), dict(q=0.01), dict(exercise="american")])
def test_overrides_match_reference(clean, demo, backend, kw):
    _check(clean, backend, spot=demo.spot, **kw)


def test_shuffled_duplicated_thinned_quotes_match_reference(clean, demo, backend):
    """Row order, repeated rows (the first of a strike wins, even with an unusable mid), thin expiries
    (fewer than 3 pairs: parity forward with an interpolated discount), calls only (interpolated),
    one expiry's C - P scaled (nonsense slope, refused) and a few stale quotes: each case as the reference."""
    rng = np.random.default_rng(11)
    exp = sorted(clean["expiry"].unique())
    for trial in range(4):
        q = clean.sample(frac=float(rng.uniform(0.5, 1.0)), random_state=trial)
        dup = q.sample(n=150, random_state=trial + 100).copy()
        dup.loc[dup.index[:20], "mid"] = np.nan          # an unusable first copy hides a usable second one
        q = pd.concat([dup, q]).reset_index(drop=True)
        thin = exp[trial + 1]
        puts = q.index[(q["expiry"] == thin) & (q["cp"] == -1)]
        q = q.drop(index=puts[2:])                       # two puts left: at most two pairs
        calls_only = exp[trial + 6]
        q = q[~((q["expiry"] == calls_only) & (q["cp"] == -1))].copy()
        bad = exp[trial + 3]
        m = (q["expiry"] == bad) & (q["cp"] == 1)
        q.loc[m, "mid"] = 3.0 * q.loc[m, "mid"]
        stale = q.sample(n=10, random_state=trial + 7).index
        q.loc[stale, "mid"] = q.loc[stale, "mid"] * 0.9
        new = _check(q.reset_index(drop=True), backend, spot=demo.spot)
        assert set(new["fallback"]) >= {"", "interpolated"}


def test_no_spot_and_no_pairs_match_reference(clean, backend):
    _check(clean, backend)                                # parity alone
    calls = clean[clean["cp"] == 1]
    with pytest.raises(Exception, match="no expiry has a usable call/put pair"):
        implied_forwards(calls)


# -- expiry series: AM and PM of one date are paired separately ------------------------------------

def _with_am_series(clean, e, shift):
    """``clean`` plus an AM-settled copy of expiry ``e`` (09:30 New York, so a smaller T) whose call mids
    are ``shift`` higher: its C - P, hence its forward, differs from the PM series of the same date."""
    am = clean[clean["expiry"] == e].copy()
    am["settlement"] = "AM"
    t_am = pd.Timestamp(e).tz_localize("America/New_York") + pd.Timedelta(hours=9, minutes=30)
    am["expiry_time"] = t_am.tz_convert("UTC")
    am["T"] = am["T"] - 6.5 / (365.0 * 24.0)
    am.loc[am["cp"] == 1, "mid"] += shift
    return pd.concat([clean, am], ignore_index=True)


def test_am_and_pm_series_of_one_date_are_two_expiries(clean, demo, backend):
    pm = implied_forwards(clean, spot=demo.spot).table
    e = pm["expiry"].iloc[5]
    shift = 0.004 * demo.spot
    both = _with_am_series(clean, e, shift)
    new = _check(both, backend, spot=demo.spot)
    rows = new[new["expiry"] == e]
    assert len(rows) == 2 and len(new) == len(pm) + 1
    am_row, pm_row = rows.sort_values("T").itertuples()
    # the PM series is untouched by its AM twin: the same numbers as without it
    assert pm_row.F == pm["F"].iloc[5] and pm_row.D == pm["D"].iloc[5] and pm_row.n_pairs == pm["n_pairs"].iloc[5]
    # the AM series alone: its own forward, shifted by shift / D (mixing the two would land in between)
    alone = implied_forwards(both[both["settlement"] == "AM"], spot=demo.spot).table
    assert am_row.F == alone["F"].iloc[0] and am_row.D == alone["D"].iloc[0]
    assert abs(am_row.F - (pm_row.F + shift / am_row.D)) < 1e-4 * pm_row.F
    assert am_row.T < pm_row.T


# -- every real chain ---------------------------------------------------------------------------

REAL = [("cboe_modern/spx_20240105_close.csv", "2024-01-05 16:15"),
        ("cboe_modern/ndx_20230526_close.csv", "2023-05-26 16:15"),
        ("cboe_modern/spx_20220610_close.csv", "2022-06-10 16:15"),
        ("cboe_modern/qqq_20230612_close.csv", "2023-06-12 16:00"),
        ("cboe_modern/spy_20230602_close.csv", "2023-06-02 16:00"),
        ("spx_20110124/SPX-Options-24jan2011.csv", None)]


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("name,asof", REAL, ids=[r[0].split("/")[-1].split(".")[0] for r in REAL])
def test_real_chains_match_reference(shared_data, name, asof):
    from core.sources.detect import load_file

    chain = load_file(shared_data / name, asof=asof)
    q = clean_quotes(chain.quotes)
    ref = reference_forwards(q, CFG, spot=chain.spot, exercise=chain.exercise)
    for b in ("numba", "numpy"):
        with use_backend(b) as active:
            if active:
                _same(implied_forwards(q, spot=chain.spot, exercise=chain.exercise).table, ref)
    # AM and PM series of one date: two rows, each the forward of its own quotes alone
    new = implied_forwards(q, spot=chain.spot, exercise=chain.exercise).table
    twins = new[new["expiry"].duplicated(keep=False)]
    if "settlement" in q.columns and len(twins):
        e = twins["expiry"].iloc[0]
        for settle in ("AM", "PM"):
            alone = implied_forwards(q[(q["expiry"] == e) & (q["settlement"] == settle)],
                                     spot=chain.spot, exercise=chain.exercise).table
            row = twins[twins["expiry_time"] == alone["expiry_time"].iloc[0]]
            assert len(row) == 1 and row["F"].iloc[0] == alone["F"].iloc[0] and row["D"].iloc[0] == alone["D"].iloc[0]


# -- the compiled kernel's building block ---------------------------------------------------------

def test_kernel_sums_like_numpy():
    nb = pytest.importorskip("core._forwards_numba")
    rng = np.random.default_rng(3)
    for n in [0, 1, 7, 8, 9, 127, 128, 129, 255, 256, 300, 1000, 4099]:
        a = rng.standard_normal(n) * 10.0 ** rng.uniform(-6, 6, n)
        assert nb._pairwise_sum(a, 0, n) == a.sum()      # bit for bit: numpy's pairwise summation
