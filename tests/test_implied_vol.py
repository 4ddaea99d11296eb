"""Implied vol (core.black.implied_vol, quote_implied_vols): round trips over the whole domain of issue 3,
QuantLib on the same inputs, edge cases at every bound, reason codes, shapes and dtypes (Hypothesis).
The accuracy and reason-code tests run on both backends (numba kernels and the numpy path)."""
from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import core.black as black
from core.black import (
    IV_REASON_CODES,
    IV_REASONS,
    NO_NUMBA_ENV,
    backend,
    black_price,
    black_vega,
    implied_vol,
    quote_implied_vols,
)
from core.black import (
    use_backend as black_use_backend,
)
from core.errors import InputError

EPS = np.finfo(float).eps
DAY = 1 / 365
BACKENDS = ["numba", "numpy"]


@contextlib.contextmanager
def use_backend(name: str):
    """``core.black.use_backend`` that skips "numba" where numba is not installed (a context manager, not a
    fixture, so that Hypothesis tests can use it too)."""
    with black_use_backend(name) as ok:
        if not ok:
            pytest.skip(f"backend {name} unavailable (numba not installed?)")
        yield


@pytest.fixture(params=BACKENDS)
def iv_backend(request):
    with use_backend(request.param):
        yield request.param


def _domain(n: int, seed: int, otm: bool = True):
    """The accuracy domain of issue 3: T in [1 day, 30 y], vol in [1%, 500%], s = vol sqrt(T) <= 6,
    |ln(K/F)| <= 8 s, undiscounted price >= 1e-12 F (OTM when ``otm``, else either side)."""
    rng = np.random.default_rng(seed)
    m = 3 * n
    T = np.exp(rng.uniform(np.log(DAY), np.log(30), m))
    sig = np.exp(rng.uniform(np.log(0.01), np.log(5.0), m))
    s = sig * np.sqrt(T)
    F = np.exp(rng.uniform(np.log(1.0), np.log(5000.0), m))
    K = F * np.exp(rng.uniform(-8, 8, m) * s)
    cp = np.where(K > F, 1.0, -1.0) if otm else rng.choice([-1.0, 1.0], m)
    D = rng.uniform(0.3, 1.0, m)
    keep = s <= 6
    p = np.where(keep, black_price(F, K, T, sig, cp, D), 0.0)
    keep &= p / D - np.maximum(cp * (F - K), 0) >= 1e-12 * F
    keep &= p / D < np.where(cp > 0, F, K)  # deep ITM, D (K - F) / D can round up onto the bound
    return [a[keep][:n] for a in (F, K, T, sig, cp, D, p)]


# ------------------------------------------------------------------------------------ round trips

def test_vol_price_vol_otm_domain_absolute_error_1e11(iv_backend):
    F, K, T, sig, cp, D, p = _domain(200_000, seed=11)
    assert F.size == 200_000
    vol, reason = implied_vol(p, F, K, T, cp, D, return_reason=True)
    assert (reason == "ok").all()
    err = np.abs(vol - sig)
    assert err.max() <= 1e-11, (err.max(), sig[err.argmax()], T[err.argmax()])
    assert np.median(err) <= 1e-15  # most are exact to the last bit or two


def test_price_vol_price_reprices_within_1e13_everywhere_inside_the_bounds(iv_backend):
    # prices placed anywhere strictly between the bounds (down to 1e-14 of the range from either end)
    rng = np.random.default_rng(12)
    n = 200_000
    F = np.exp(rng.uniform(-2, 8, n))
    K = F * np.exp(rng.uniform(-3, 3, n))
    T = np.exp(rng.uniform(np.log(DAY), np.log(30), n))
    cp = rng.choice([-1.0, 1.0], n)
    D = rng.uniform(0.3, 1, n)
    lo, hi = np.maximum(cp * (F - K), 0), np.where(cp > 0, F, K)
    u = np.exp(rng.uniform(np.log(1e-14), 0, n))
    u = np.where(rng.random(n) < 0.5, u, 1 - u)
    p = D * (lo + u * (hi - lo))
    inside = (p / D > lo) & (p / D < hi)
    vol, reason = implied_vol(p, F, K, T, cp, D, return_reason=True)
    assert (reason[inside] == "ok").all()
    rel = np.abs(black_price(F, K, T, vol, cp, D)[inside] / p[inside] - 1)
    assert rel.max() <= 1e-13, rel.max()


def test_itm_accuracy_bounded_by_the_time_value_a_double_holds(iv_backend):
    F, K, T, sig, cp, D, p = _domain(100_000, seed=13, otm=False)
    itm = cp * (F - K) > 0
    assert itm.sum() > 10_000
    vol, reason = implied_vol(p, F, K, T, cp, D, return_reason=True)
    assert (reason == "ok").all()
    # the price and the intrinsic value each carry ~eps of their size; vega turns that into vol
    vega_u = black_vega(F, K, T, sig) + 1e-300
    bound = 1e-11 + 4 * EPS * (p / D + np.maximum(F, K)) / vega_u
    err = np.abs(vol - sig)
    assert (err <= bound).all(), np.max(err / bound)
    rel = np.abs(black_price(F, K, T, vol, cp, D) / p - 1)
    assert rel.max() <= 1e-13


@pytest.mark.quantlib
def test_against_quantlib_on_the_same_inputs():
    ql = pytest.importorskip("QuantLib")
    F, K, T, sig, cp, D, p = _domain(400, seed=14)
    ours = implied_vol(p, F, K, T, cp, D)
    theirs = np.full(F.size, np.nan)
    for i in range(F.size):
        try:
            sd = ql.blackFormulaImpliedStdDev(ql.Option.Call if cp[i] > 0 else ql.Option.Put, K[i], F[i], p[i],
                                              D[i], 0.0, ql.nullDouble(), 1e-12, 200)
            theirs[i] = sd / math.sqrt(T[i])
        except RuntimeError:
            pass
    done = np.isfinite(theirs)
    assert done.mean() > 0.9
    ours_err, their_err = np.abs(ours - sig), np.abs(theirs - sig)
    assert ours_err.max() <= 1e-11
    # QuantLib stops at 1e-12 in std dev and prices with N(d1) F - N(d2) K, which cancels deep out of the
    # money (errors up to ~1e-8 there): on every input we are as close to the truth, or closer
    assert np.all(ours_err[done] <= their_err[done] + 1e-12)
    assert np.median(np.abs(ours[done] - theirs[done])) <= 1e-12


# ------------------------------------------------------------------------------------ edge cases

@pytest.mark.parametrize("T, sigma, z", [
    (DAY, 0.01, 0.0), (DAY, 0.01, 3.0), (DAY, 0.01, -8.0), (DAY, 5.0, 8.0),   # one day, 1% and 500%
    (30.0, 0.01, 8.0), (30.0, 6 / math.sqrt(30), -8.0), (30.0, 6 / math.sqrt(30), 8.0),  # s = 6
    (6.0 ** 2 / 25.0, 5.0, 0.5),                                                     # vol 500%, s = 6
])
@pytest.mark.parametrize("cp", [1.0, -1.0])
def test_edges_of_the_domain(T, sigma, z, cp, iv_backend):
    F = 100.0
    K = F * math.exp(z * sigma * math.sqrt(T))
    p = float(black_price(F, K, T, sigma, cp, 0.97))
    vol, reason = implied_vol(p, F, K, T, cp, 0.97, return_reason=True)
    time_value = p / 0.97 - max(cp * (F - K), 0.0)
    if time_value <= 0:   # 8 std devs in the money: the time value is below the price's last digit
        assert str(reason) == "below_intrinsic" and np.isnan(vol)
        return
    assert str(reason) == "ok"
    assert abs(float(black_price(F, K, T, vol, cp, 0.97)) / p - 1) <= 1e-13
    otm = cp * (F - K) <= 0
    if otm and p >= 1e-12 * F:
        assert abs(float(vol) - sigma) <= 1e-11


@pytest.mark.parametrize("K, cp", [(50.0, 1.0), (150.0, 1.0), (50.0, -1.0), (150.0, -1.0), (100.0, 1.0), (100.0, -1.0)])
def test_one_ulp_inside_each_bound(K, cp, iv_backend):
    F, D, T = 100.0, 1.0, 0.5
    upper = F if cp > 0 else K
    intrinsic = max(cp * (F - K), 0.0)
    for p in (np.nextafter(upper, 0.0), np.nextafter(intrinsic, np.inf) if intrinsic > 0 else 1e-300):
        vol, reason = implied_vol(p, F, K, T, cp, D, return_reason=True)
        assert str(reason) == "ok", (p, reason)
        assert np.isfinite(vol) and vol > 0
        assert abs(float(black_price(F, K, T, vol, cp, D)) / p - 1) <= 1e-13
    # exactly on a bound, or beyond: no vol, with the reason
    for p, why in ((upper, "above_upper_bound"), (np.nextafter(upper, np.inf), "above_upper_bound")):
        vol, reason = implied_vol(p, F, K, T, cp, D, return_reason=True)
        assert np.isnan(vol) and str(reason) == why
    if intrinsic > 0:
        for p in (intrinsic, np.nextafter(intrinsic, 0.0)):
            vol, reason = implied_vol(p, F, K, T, cp, D, return_reason=True)
            assert np.isnan(vol) and str(reason) == "below_intrinsic"


def test_deep_itm_and_deep_otm(iv_backend):
    F, T, sig = 100.0, 1.0, 0.2
    for K, cp in ((1.0, 1.0), (1e4, -1.0), (1e4, 1.0), (1.0, -1.0)):
        p = float(black_price(F, K, T, sig, cp))
        vol, reason = implied_vol(p, F, K, T, cp, return_reason=True)
        if cp * (F - K) > 0:   # time value ~1e-90 of the price: lost in the double, no vol
            assert str(reason) == "below_intrinsic" and np.isnan(vol)
        else:                  # 23 std devs out, price ~1e-120: still exact
            assert str(reason) == "ok" and abs(float(vol) - sig) < 1e-13


def test_underflowing_time_value_is_below_intrinsic(iv_backend):
    vol, reason = implied_vol(5e-324, 100.0, 100.0, 1.0, 1.0, return_reason=True)
    assert np.isnan(vol) and str(reason) == "below_intrinsic"


@pytest.mark.parametrize("arg", ["price", "F", "K", "T", "D"])
@pytest.mark.parametrize("value, why", [(0.0, "non_positive"), (-1.0, "non_positive"), (np.nan, "non_finite"),
                                        (np.inf, "non_finite"), (-np.inf, "non_finite")])
def test_bad_inputs_are_nan_with_reason(arg, value, why, iv_backend):
    args = dict(price=np.array([5.0, 5.0]), F=100.0, K=100.0, T=1.0, cp=1.0, D=1.0)
    args[arg] = np.array([value, args[arg] if arg != "price" else 5.0], dtype=float)
    vol, reason = implied_vol(args["price"], args["F"], args["K"], args["T"], args["cp"], args["D"], return_reason=True)
    assert np.isnan(vol[0]) and reason[0] == why
    assert reason[1] == "ok" and np.isfinite(vol[1])   # one bad element never spoils its neighbour


def test_bad_cp_and_reason_codes(iv_backend):
    vol, reason = implied_vol(5.0, 100.0, 100.0, 1.0, [1, -1, 0, 2, 0.5, np.nan], return_reason=True)
    assert reason.tolist() == ["ok", "ok", "bad_cp", "bad_cp", "bad_cp", "non_finite"]
    assert np.isfinite(vol[:2]).all() and np.isnan(vol[2:]).all()
    assert list(IV_REASON_CODES) == list(IV_REASONS) and IV_REASON_CODES["ok"] == 0
    assert all(isinstance(v, str) and v for v in IV_REASONS.values())


def test_shapes_scalars_lists(iv_backend):
    v = implied_vol(8.0, 100, 100, 1, 1)
    assert isinstance(v, np.ndarray) and v.shape == () and v.dtype == np.float64
    v, r = implied_vol(8.0, 100, 100, 1, 1, return_reason=True)
    assert v.shape == () and r.shape == () and str(r) == "ok"
    v = implied_vol([8.0, 9.0], 100, [[100], [105], [110]], 1, [1, 1])
    assert v.shape == (3, 2) and np.isfinite(v).all()
    assert implied_vol(np.empty((0, 3)), 100, 100, 1, 1).shape == (0, 3)
    with pytest.raises(InputError, match="broadcast"):
        implied_vol([1.0, 2.0, 3.0], [100.0, 101.0], 100, 1, 1)
    with pytest.raises(InputError):
        implied_vol("abc", 100, 100, 1, 1)


dtypes = st.sampled_from([np.float64, np.float32, np.int64, np.int32])


@pytest.mark.parametrize("backend_name", BACKENDS)
@given(hnp.mutually_broadcastable_shapes(num_shapes=6, max_dims=3, max_side=4), dtypes, dtypes,
       st.integers(0, 2**32 - 1), st.booleans())
def test_hypothesis_shapes_dtypes_and_invariants(backend_name, shapes, dt_price, dt_other, seed, as_list):
    with use_backend(backend_name):
        _check_shapes_dtypes_and_invariants(shapes, dt_price, dt_other, seed, as_list)


def _check_shapes_dtypes_and_invariants(shapes, dt_price, dt_other, seed, as_list):
    rng = np.random.default_rng(seed)
    sh = shapes.input_shapes
    F = (rng.uniform(50, 150, sh[1])).astype(dt_other)
    K = (rng.uniform(50, 150, sh[2])).astype(dt_other)
    T = np.maximum(rng.uniform(0, 3, sh[3]), 1 / 365).astype(np.float64)
    cp = rng.choice([-1, 1, 0], sh[4]).astype(dt_other if np.issubdtype(dt_other, np.integer) else np.float64)
    D = rng.uniform(0.5, 1.0, sh[5])
    price = rng.uniform(-5, 60, sh[0]).astype(dt_price)
    price = np.where(rng.random(sh[0]) < 0.1, np.nan, price) if np.issubdtype(dt_price, np.floating) else price
    args = [a.tolist() if as_list else a for a in (price, F, K, T, cp, D)]
    vol, reason = implied_vol(*args, return_reason=True)
    assert vol.shape == shapes.result_shape and reason.shape == shapes.result_shape
    assert vol.dtype == np.float64
    assert set(np.asarray(reason).ravel().tolist()) <= set(IV_REASONS)
    ok = reason == "ok"
    assert np.isfinite(vol[ok]).all() and (vol[ok] > 0).all() and np.isnan(vol[~ok]).all()
    if ok.any():
        b = np.broadcast_arrays(*(np.asarray(a, float) for a in (price, F, K, T, cp, D)))
        p2 = black_price(b[1], b[2], b[3], vol, b[4], b[5])
        assert np.all(np.abs(p2[ok] / b[0][ok] - 1) <= 1e-13)


# ------------------------------------------------------------------------------------ backends

def test_backends_agree_to_the_last_digits():
    # the same algorithm twice: only libm vs numpy exp/log and AS241 vs cephes ndtri differ (an ulp here and
    # there, which the Householder steps do not amplify beyond a few ulps of the vol)
    F, K, T, sig, cp, D, p = _domain(50_000, seed=21, otm=False)
    bad_p = np.array([0.0, np.nan, 2 * F[0], 5e-324])   # non_positive, non_finite, above the bound, underflow
    p = np.concatenate([p, bad_p])
    F, K, T, sig, cp, D = (np.concatenate([a, np.full(4, a[0])]) for a in (F, K, T, sig, cp, D))
    with use_backend("numba"):
        v_nb, r_nb = implied_vol(p, F, K, T, cp, D, return_reason=True)
        p_nb = black_price(F, K, T, sig, cp, D)
    with use_backend("numpy"):
        v_np, r_np = implied_vol(p, F, K, T, cp, D, return_reason=True)
        p_np = black_price(F, K, T, sig, cp, D)
    assert (r_nb == r_np).all()
    assert set(r_np[-4:].tolist()) == {"non_positive", "non_finite", "above_upper_bound", "below_intrinsic"}
    ok = r_np == "ok"
    assert np.all(np.abs(v_nb[ok] - v_np[ok]) <= 1e-13 * v_np[ok]) and np.isnan(v_nb[~ok]).all()
    # prices: an ulp of exp(-h^2/2) is amplified by h^2 deep out of the money (black.py docstring)
    np.testing.assert_allclose(p_nb, p_np, rtol=1e-13, atol=0)


def test_numba_import_is_lazy_and_failure_falls_back_with_a_warning(monkeypatch):
    pytest.importorskip("numba")
    # importing core (and core.black) compiles nothing and does not even import numba
    code = "import sys, core, core.black; assert 'numba' not in sys.modules and 'core._black_numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    # a kernel module that cannot be built: one RuntimeWarning, then the numpy path, same answers
    monkeypatch.delenv(NO_NUMBA_ENV, raising=False)
    monkeypatch.setattr(black._KERNELS, "_state", {})
    monkeypatch.setitem(sys.modules, "core._black_numba", None)   # makes the import fail
    with pytest.warns(RuntimeWarning, match="numba kernels are unusable"):
        assert backend() == "numpy"
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # warned once, not at every call
        v, r = implied_vol([8.0, -1.0], 100.0, 100.0, 1.0, 1.0, return_reason=True)
    assert r.tolist() == ["ok", "non_positive"] and abs(float(black_price(100, 100, 1, v[0], 1)) - 8.0) < 1e-13


def test_environment_variable_forces_numpy(monkeypatch):
    monkeypatch.setenv(NO_NUMBA_ENV, "1")
    assert backend() == "numpy"
    monkeypatch.setenv(NO_NUMBA_ENV, "0")
    assert backend() == ("numba" if black._numba() is not None else "numpy")


# ------------------------------------------------------------------------------ quote_implied_vols

def test_quote_implied_vols_table():
    from core.forwards import Forwards

    fw = Forwards.from_rates(100.0, 0.03, 0.01, [0.25, 1.0])
    T = np.array([0.25, 0.25, 1.0, 1.0, 1.0, 1.0, 0.25])
    K = np.array([90.0, 110.0, 100.0, 120.0, 80.0, 100.0, 100.0])
    cp = np.array([-1, 1, 1, 1, -1, -1, 1])
    sig = np.array([0.25, 0.2, 0.22, 0.2, 0.3, 0.22, 0.2])
    F, D = fw.F(T), fw.D(T)
    mid = black_price(F, K, T, sig, cp, D)
    bid, ask = mid * 0.98, mid * 1.02
    bid[3] = np.nan          # no bid
    bid[4] = 0.0             # zero bid: no implied vol on that side
    ask[5] = D[5] * 100.0 + 1  # ask above the put's upper bound D K
    quotes = pd.DataFrame({"T": T, "strike": K, "cp": cp, "bid": bid, "ask": ask})
    q = quote_implied_vols(quotes, fw)
    for col in ("F", "D", "y", "iv_bid", "iv_ask", "iv_mid", "iv_reason"):
        assert col in q.columns
    np.testing.assert_allclose(q["F"], F)
    np.testing.assert_allclose(q["y"], np.log(K / F), rtol=1e-12)
    ok = np.array([True, True, True, False, True, True, True])
    both = [0, 1, 2, 6]   # two-sided quotes around the true price: the mid's vol is the true vol
    np.testing.assert_allclose(q["iv_mid"].to_numpy()[both], sig[both], atol=1e-12)
    assert (q["iv_bid"] < q["iv_ask"])[[0, 1, 2, 6]].all()
    assert q["iv_reason"].iloc[3] == "no_quote" and np.isnan(q["iv_mid"].iloc[3])
    assert q["iv_bid_reason"].iloc[3] == "no_quote" and np.isfinite(q["iv_ask"].iloc[3])
    assert q["iv_bid_reason"].iloc[4] == "non_positive" and q["iv_reason"].iloc[4] == "ok"
    assert q["iv_ask_reason"].iloc[5] == "above_upper_bound" and np.isnan(q["iv_ask"].iloc[5])
    assert len(q) == len(quotes) and quotes.columns.isin(q.columns).all()   # nothing dropped, input untouched
    # an explicit mid column wins over (bid + ask)/2
    q2 = quote_implied_vols(quotes.assign(mid=mid), fw)
    np.testing.assert_allclose(q2["iv_mid"][ok], sig[ok], atol=1e-12)
    with pytest.raises(InputError, match="strike"):
        quote_implied_vols(quotes.drop(columns="strike"), fw)
