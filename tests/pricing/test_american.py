"""American options under Black-Scholes (``core.pricing.american``): QuantLib as the oracle, invariants,
the implied-vol round trip and hostile inputs.

The grid (``GRID``, 2,560 options, strike 100): spot/strike S/K in {0.7, 0.85, 1.0, 1.15, 1.3}; T in
{7, 91, 365, 1095} days (1 week to 3 years, Actual/365 so that QuantLib's dates give the same T); sigma in
{0.05, 0.2, 0.5, 0.8}; r in {-0.01, 0, 0.02, 0.05}; q in {0, 0.01, 0.03, 0.06} (so q > r and r > q both
occur, and negative rates); calls and puts. Accuracy is relative, for prices above 0.01.

References (QuantLib, independent of our code):

* ``QdFpAmericanEngine`` with ``highPrecisionScheme()`` (tanh-sinh, 30 nodes, 10 fixed-point steps). Its
  fixed point is not fully converged at low vol and long expiry (sigma sqrt(T) ~ 0.1: ~2e-6), so the
  check is ``|ours - hp| <= 1e-6 hp + |hp - conv|``: the target plus the reference's own error, measured
  in the same test against
* the same engine iterated to convergence, ``QdFpTanhSinhIterationScheme(40, 30, 1e-10)`` ("conv"), held to
  the plain target ``1e-6``;
* ``FdBlackScholesVanillaEngine`` (Douglas, 4000 space points) on a subsample with sigma >= 0.2 (at sigma =
  0.05 its space grid is too coarse for 1e-6), Richardson-extrapolated in time from 2000 and 4000 steps
  (its time error is first order with the exercise condition).

The fast tests use a seeded subsample of the grid; the whole grid is ``slow``. The double-boundary regime
(q < r < 0 for a put, r < q < 0 for a call), which the grid does not reach and QdFp refuses, is checked on
a few points against the FD engine.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from core._kernels import NO_NUMBA_ENV
from core.black import black_price
from core.pricing import american as am
from core.pricing.american import (
    IV_STATUS,
    american_implied_vol,
    american_implied_vol_status,
    american_price,
    early_exercise_premium,
)
from tests.hypothesis_budget import counted
from tests.strategies import nasty_float

K = 100.0
MONEYNESS = (0.7, 0.85, 1.0, 1.15, 1.3)
DAYS = (7, 91, 365, 1095)
SIGMAS = (0.05, 0.2, 0.5, 0.8)
RATES = (-0.01, 0.0, 0.02, 0.05)
YIELDS = (0.0, 0.01, 0.03, 0.06)
CPS = (-1.0, 1.0)
TARGET = 1e-6      # relative accuracy asked of the default scheme
MIN_PRICE = 0.01   # the target applies to prices above this


def grid(sample: int | None = None, seed: int = 7):
    """The test grid as arrays ``(S, T, sigma, r, q, cp)`` (a seeded subsample of ``sample`` rows if given)."""
    rows = np.array(list(itertools.product(MONEYNESS, DAYS, SIGMAS, RATES, YIELDS, CPS)), dtype=float)
    if sample is not None:
        rows = rows[np.random.default_rng(seed).choice(len(rows), size=sample, replace=False)]
    m, days, sig, r, q, cp = rows.T
    return K * m, days / 365.0, sig, r, q, cp


# ------------------------------------------------------------------------------------------- QuantLib
def _ql_option(ql, S, T, r, q, sig, cp):
    today = ql.Date(2, 1, 2025)
    ql.Settings.instance().evaluationDate = today
    dc = ql.Actual365Fixed()
    days = int(round(T * 365.0))
    assert abs(days / 365.0 - T) < 1e-12, "the grid's T must be whole days"
    process = ql.BlackScholesMertonProcess(
        ql.QuoteHandle(ql.SimpleQuote(S)),
        ql.YieldTermStructureHandle(ql.FlatForward(today, q, dc, ql.Continuous)),
        ql.YieldTermStructureHandle(ql.FlatForward(today, r, dc, ql.Continuous)),
        ql.BlackVolTermStructureHandle(ql.BlackConstantVol(today, ql.NullCalendar(), sig, dc)))
    option = ql.VanillaOption(ql.PlainVanillaPayoff(ql.Option.Call if cp > 0 else ql.Option.Put, K),
                              ql.AmericanExercise(today, today + days))
    return option, process


def ql_qdfp(S, T, r, q, sig, cp, scheme: str = "hp"):
    """QuantLib ``QdFpAmericanEngine`` prices: ``scheme`` "hp" (highPrecisionScheme) or "conv" (tanh-sinh,
    30 nodes, 40 fixed-point steps: the same method iterated to convergence)."""
    ql = pytest.importorskip("QuantLib")
    out = []
    for args in zip(S, T, r, q, sig, cp, strict=True):
        option, process = _ql_option(ql, *args)
        it = (ql.QdFpAmericanEngine.highPrecisionScheme() if scheme == "hp"
              else ql.QdFpTanhSinhIterationScheme(40, 30, 1e-10))
        option.setPricingEngine(ql.QdFpAmericanEngine(process, it))
        out.append(option.NPV())
    return np.array(out)


def ql_fd(S, T, r, q, sig, cp, x_grid: int = 4000, t_grid: int = 2000):
    """QuantLib ``FdBlackScholesVanillaEngine`` (Douglas), Richardson-extrapolated in time: ``2 V(2 N) - V(N)``."""
    ql = pytest.importorskip("QuantLib")
    out = []
    for args in zip(S, T, r, q, sig, cp, strict=True):
        option, process = _ql_option(ql, *args)
        v = []
        for nt in (t_grid, 2 * t_grid):
            option.setPricingEngine(ql.FdBlackScholesVanillaEngine(process, nt, x_grid, 0, ql.FdmSchemeDesc.Douglas()))
            v.append(option.NPV())
        out.append(2.0 * v[1] - v[0])
    return np.array(out)


def _check_against_quantlib(S, T, sig, r, q, cp):
    ours = american_price(S, K, T, r, q, sig, cp)
    conv = ql_qdfp(S, T, r, q, sig, cp, "conv")
    hp = ql_qdfp(S, T, r, q, sig, cp, "hp")
    big = conv > MIN_PRICE
    assert big.sum() > 0.5 * big.size
    rel_conv = np.abs(ours - conv) / np.maximum(conv, MIN_PRICE)
    worst = int(np.argmax(np.where(big, rel_conv, 0.0)))
    assert rel_conv[big].max() <= TARGET, (
        f"max rel error {rel_conv[big].max():.2e} vs converged QdFp at S={S[worst]}, T={T[worst]}, "
        f"sigma={sig[worst]}, r={r[worst]}, q={q[worst]}, cp={cp[worst]}")
    excess = np.abs(ours - hp) - (TARGET * hp + np.abs(hp - conv))
    assert excess[big].max() <= 0.0, f"vs high-precision QdFp: excess {excess[big].max():.2e}"


@pytest.mark.quantlib
def test_matches_quantlib_qdfp_on_a_sample_of_the_grid():
    _check_against_quantlib(*grid(sample=160))


@pytest.mark.quantlib
@pytest.mark.slow
def test_matches_quantlib_qdfp_on_the_whole_grid():
    _check_against_quantlib(*grid())


@pytest.mark.quantlib
@pytest.mark.slow
def test_matches_quantlib_qdfp_on_wide_random_parameters():
    """Beyond the grid: 250 seeded options with S/K 0.3-3, T 1 day-10 years, sigma 2%-200%, r -2%..15%,
    q -2%..12% (log-uniform where a range spans decades), against the converged QdFp engine. The
    double-boundary draws, which QdFp refuses, are left out (they have their own test)."""
    rng = np.random.default_rng(5)
    n = 250
    S = K * np.exp(rng.uniform(np.log(0.3), np.log(3.0), n))
    T = np.floor(np.exp(rng.uniform(0.0, np.log(3650.0), n))) / 365.0
    sig = np.exp(rng.uniform(np.log(0.02), np.log(2.0), n))
    r = rng.uniform(-0.02, 0.15, n)
    q = rng.uniform(-0.02, 0.12, n)
    cp = rng.choice([-1.0, 1.0], n)
    rr, qq = np.where(cp < 0, r, q), np.where(cp < 0, q, r)
    keep = ~((rr < 0) & (qq < rr))
    S, T, sig, r, q, cp = (a[keep] for a in (S, T, sig, r, q, cp))
    ours = american_price(S, K, T, r, q, sig, cp)
    conv = ql_qdfp(S, T, r, q, sig, cp, "conv")
    big = conv > MIN_PRICE
    rel = np.abs(ours - conv)[big] / conv[big]
    assert rel.max() <= TARGET, f"max rel error {rel.max():.2e}"


@pytest.mark.quantlib
@pytest.mark.slow
def test_matches_quantlib_finite_differences():
    S, T, sig, r, q, cp = grid(sample=400, seed=11)
    keep = np.flatnonzero((sig >= 0.2))[:10]
    S, T, sig, r, q, cp = (a[keep] for a in (S, T, sig, r, q, cp))
    ours = american_price(S, K, T, r, q, sig, cp)
    fd = ql_fd(S, T, r, q, sig, cp)
    big = fd > MIN_PRICE
    rel = np.abs(ours - fd) / fd
    assert rel[big].max() <= TARGET, f"max rel error {rel[big].max():.2e} vs FD"


# ------------------------------------------------------------------------------------------- invariants
def test_no_arbitrage_bounds_on_the_grid():
    """American >= European >= 0 and American >= intrinsic, everywhere on the grid."""
    S, T, sig, r, q, cp = grid()
    am_ = american_price(S, K, T, r, q, sig, cp)
    eu = black_price(S * np.exp((r - q) * T), K, T, sig, cp, np.exp(-r * T))
    assert np.isfinite(am_).all()
    assert (am_ >= eu - 1e-12 * np.maximum(eu, 1.0)).all()
    assert (am_ >= np.maximum(cp * (S - K), 0.0)).all()
    prem = early_exercise_premium(S, K, T, r, q, sig, cp)
    np.testing.assert_allclose(prem, am_ - eu, rtol=0, atol=1e-12)


def test_european_where_early_exercise_never_pays():
    """A put with r <= 0 <= q and a call with q <= 0 <= r are worth their European price."""
    S, T, sig, r, q, cp = grid()
    never = np.where(cp < 0, (r <= 0) & (q >= r), (q <= 0) & (r >= q))
    assert never.any()
    eu = black_price(S * np.exp((r - q) * T), K, T, sig, cp, np.exp(-r * T))
    np.testing.assert_array_equal(american_price(S, K, T, r, q, sig, cp)[never], eu[never])
    # and a put with r > 0 carries a positive premium at the money
    assert early_exercise_premium(100.0, 100.0, 1.0, 0.05, 0.0, 0.2, -1) > 0.1


def test_put_call_symmetry():
    """``C(S, K, r, q) = P(K, S, q, r)`` (McDonald and Schroder 1998)."""
    S, T, sig, r, q, cp = grid(sample=300)
    call = american_price(S, K, T, r, q, sig, 1)
    put = american_price(K, S, T, q, r, sig, -1)
    np.testing.assert_allclose(call, put, rtol=1e-11, atol=1e-14)   # S/K and K/S round differently


def test_increasing_in_vol_and_expiry():
    vols = np.linspace(0.05, 1.0, 60)
    p = american_price(90.0, 100.0, 1.0, 0.05, 0.01, vols, -1)
    assert (np.diff(p) >= 0).all() and (np.diff(p)[p[:-1] > 10.0] > 0).all()   # flat only while exercised
    Ts = np.linspace(0.02, 3.0, 60)
    p = american_price(100.0, 100.0, Ts, 0.05, 0.01, 0.3, -1)
    assert (np.diff(p) > 0).all()


def test_deep_in_the_money_put_is_exercised():
    """Below the exercise boundary the put is worth its intrinsic value exactly."""
    assert american_price(50.0, 100.0, 1.0, 0.05, 0.0, 0.2, -1) == 50.0


def test_backends_agree(monkeypatch):
    if am.backend() != "numba":
        pytest.skip("the numba backend is unavailable (numba absent, or DUPIRE_DESK_NO_NUMBA set)")
    S, T, sig, r, q, cp = grid(sample=200)
    fast = american_price(S, K, T, r, q, sig, cp)
    monkeypatch.setenv(NO_NUMBA_ENV, "1")
    assert am.backend() == "numpy"
    slow = american_price(S, K, T, r, q, sig, cp)
    np.testing.assert_allclose(fast, slow, rtol=1e-11, atol=1e-13)


def test_high_precision_scheme_agrees_with_the_default():
    S, T, sig, r, q, cp = grid(sample=300, seed=3)
    a = american_price(S, K, T, r, q, sig, cp)
    b = american_price(S, K, T, r, q, sig, cp, scheme=am.HIGH_PRECISION)
    big = b > MIN_PRICE
    assert (np.abs(a - b)[big] / b[big]).max() <= TARGET


# ------------------------------------------------------------------------------------------- two boundaries
DOUBLE = [(100.0, 1.0, -0.01, -0.03, 0.2, -1.0), (90.0, 1.0, -0.01, -0.03, 0.1, -1.0),
          (100.0, 91 / 365, -0.02, -0.05, 0.3, -1.0), (100.0, 1.0, -0.03, -0.01, 0.2, 1.0)]


def test_double_boundary_regime_is_priced_and_bounded():
    """q < r < 0 (put) / r < q < 0 (call): the finite-difference fallback, above European and intrinsic,
    with a positive premium, and put-call symmetric."""
    S, T, r, q, sig, cp = (np.array(a) for a in zip(*DOUBLE, strict=True))
    am_ = american_price(S, K, T, r, q, sig, cp)
    eu = black_price(S * np.exp((r - q) * T), K, T, sig, cp, np.exp(-r * T))
    assert np.isfinite(am_).all() and (am_ > eu).all() and (am_ >= np.maximum(cp * (S - K), 0)).all()
    np.testing.assert_allclose(american_price(100.0, 100.0, 1.0, -0.01, -0.03, 0.2, -1),
                               american_price(100.0, 100.0, 1.0, -0.03, -0.01, 0.2, 1), rtol=1e-12)


@pytest.mark.quantlib
@pytest.mark.slow
def test_double_boundary_matches_quantlib_finite_differences():
    """QuantLib's QdFp engine refuses this regime; its FD engine (Richardson in time) is the reference. Our
    fallback is finite differences too (Richardson in time, 1200 nodes): agreement to 2e-5."""
    S, T, r, q, sig, cp = (np.array(a) for a in zip(*DOUBLE, strict=True))
    ours = american_price(S, K, T, r, q, sig, cp)
    ref = ql_fd(S, T, r, q, sig, cp)
    np.testing.assert_allclose(ours, ref, rtol=2e-5)


# ------------------------------------------------------------------------------------------- implied vol
def test_implied_vol_round_trip_on_the_grid():
    """price -> vol -> price: the vol comes back to ``1e-8 + 1e-13 price/vega`` (the solver stops at a price
    error of 1e-13 relative, ``_PRICE_RTOL``) where the price is not pinned at its lower bound (vega > 1e-6:
    below that the price carries no information on the vol), and the price to its tolerance ``tol vega``."""
    S, T, sig, r, q, cp = grid()
    price = american_price(S, K, T, r, q, sig, cp)
    res = american_implied_vol_status(price, S, K, T, r, q, cp)
    bump = american_price(S, K, T, r, q, sig + 1e-4, cp) - price
    informative = (bump > 1e-10) & (price > 1e-8)
    assert informative.mean() > 0.8
    ok = res.status == "ok"
    assert ok[informative].all(), np.unique(res.status[informative], return_counts=True)
    vega = bump / 1e-4
    err = np.abs(res.vol - sig)
    assert (err[informative] <= 1e-8 + 2 * am._PRICE_RTOL * price[informative] / vega[informative]).all()
    assert np.median(err[informative]) < 1e-11
    back = american_price(S, K, T, r, q, res.vol, cp)
    # a vol within tol = 1e-10 moves the price by up to tol * vega
    assert (np.abs(back - price)[informative] <= 2e-10 * vega[informative] + 1e-12 * price[informative]).all()
    np.testing.assert_array_equal(american_implied_vol(price, S, K, T, r, q, cp)[ok], res.vol[ok])


def test_implied_vol_statuses():
    price = np.array([5.0, 9.0, 120.0, 101.0, np.nan, 5.0, 5.0, 10.0])
    S = np.array([100.0, 91.0, 100.0, 100.0, 100.0, -1.0, 100.0, 100.0])
    cp = np.array([-1, -1, 1, -1, -1, -1, 3, -1])
    res = american_implied_vol_status(price, S, 100.0, 1.0, 0.05, 0.0, cp)
    assert list(res.status) == ["ok", "below_intrinsic", "above_max", "above_max", "invalid_input",
                                "invalid_input", "invalid_input", "ok"]
    assert set(res.status) <= set(IV_STATUS)
    assert np.isnan(res.vol[1:7]).all() and np.isfinite(res.vol[[0, 7]]).all()


def test_implied_vol_of_a_price_at_intrinsic_is_nan():
    """A put worth exactly its intrinsic value deep in the money: no vol identifies it."""
    res = american_implied_vol_status(50.0, 50.0, 100.0, 1.0, 0.05, 0.0, -1)
    assert res.status[()] == "below_intrinsic" and math.isnan(res.vol[()])


# ------------------------------------------------------------------------------------------- edge inputs
def test_edge_inputs():
    assert american_price(90.0, 100.0, 0.0, 0.05, 0.0, 0.2, -1) == 10.0          # T = 0: intrinsic
    assert american_price(110.0, 100.0, 0.0, 0.05, 0.0, 0.2, 1) == 10.0
    bad = american_price([0.0, -1.0, 100.0, 100.0, 100.0, np.nan, 100.0], [100.0, 100.0, 0.0, 100.0, 100.0, 100.0,
                         100.0], [1.0, 1.0, 1.0, -1.0, 1.0, 1.0, 1.0], 0.05, 0.0,
                         [0.2, 0.2, 0.2, 0.2, 0.0, 0.2, 0.2], [-1, -1, -1, -1, -1, -1, 0])
    assert np.isnan(bad).all()
    # shapes: scalars give 0-d arrays, broadcasting works
    assert american_price(100.0, 100.0, 1.0, 0.05, 0.0, 0.2, -1).shape == ()
    assert american_price(100.0, np.ones((3, 1)) * 100, [0.5, 1.0], 0.05, 0.0, 0.2, -1).shape == (3, 2)


_finite_or_nasty = st.one_of(st.floats(0.5, 200.0), nasty_float)


@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=2, max_side=4), elements=_finite_or_nasty),
       st.one_of(st.floats(0.0, 4.0), nasty_float), st.one_of(st.floats(0.01, 1.5), nasty_float),
       st.sampled_from([-0.02, 0.0, 0.03, np.nan]), st.sampled_from([-0.02, 0.0, 0.01, np.inf]),
       st.sampled_from([1, -1, 0, np.nan]))
@counted
def test_never_raises_on_arrays_and_nans_propagate(S, T, sigma, r, q, cp):
    p = american_price(S, 100.0, T, r, q, sigma, cp)
    assert p.shape == np.shape(S)
    nan_in = ~np.isfinite(S) | ~np.isfinite(T) | ~np.isfinite(sigma) | ~np.isfinite(r) | ~np.isfinite(q) \
        | ~np.isfinite(cp)
    if nan_in.any() if np.ndim(nan_in) else nan_in:
        assert np.isnan(p[nan_in] if np.ndim(p) else p).all()
    good = np.isfinite(p)
    if good.any():
        intrinsic = np.maximum(cp * (np.asarray(S) - 100.0), 0.0) if np.isfinite(cp) else 0.0
        assert (p[good] >= np.broadcast_to(intrinsic, p.shape)[good] - 1e-9).all()
    v = american_implied_vol(p, S, 100.0, T, r, q, cp)
    assert v.shape == p.shape


@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 3)), elements=st.floats(60.0, 150.0)),
       hnp.arrays(np.float64, st.tuples(st.integers(1, 3)), elements=st.floats(0.02, 2.0)))
@counted
def test_shapes_broadcast_like_numpy(S, T):
    if S.shape[1] != T.shape[0] and 1 not in (S.shape[1], T.shape[0]):
        with pytest.raises(ValueError):
            american_price(S, 100.0, T, 0.03, 0.01, 0.25, -1)
        return
    p = american_price(S, 100.0, T, 0.03, 0.01, 0.25, -1)
    assert p.shape == np.broadcast_shapes(S.shape, T.shape)
    one = american_price(S[0, 0], 100.0, T[0], 0.03, 0.01, 0.25, -1)
    np.testing.assert_allclose(p[0, 0], one, rtol=1e-14)
