"""Black-76 prices and vega (core.black): closed forms, parity, bounds, quadrature, QuantLib; the price
tests run on both backends (numba kernels and the numpy path)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate
from scipy.special import ndtr

from core.black import NO_NUMBA_ENV, _erfcx, backend, black_price, black_vega
from core.errors import InputError

EPS = np.finfo(float).eps


@pytest.fixture(params=["numba", "numpy"])
def bp_backend(request, monkeypatch):
    """Run the test on one backend (skips "numba" where numba is not installed)."""
    if request.param == "numpy":
        monkeypatch.setenv(NO_NUMBA_ENV, "1")
    else:
        monkeypatch.delenv(NO_NUMBA_ENV, raising=False)
    if backend() != request.param:
        pytest.skip(f"backend {request.param} unavailable (numba not installed?)")
    return request.param


def _naive(F, K, T, sigma, cp, D=1.0):
    # the textbook formula (MATH.md): fine where nothing cancels
    s = sigma * np.sqrt(T)
    d1 = np.log(F / K) / s + 0.5 * s
    d2 = d1 - s
    return D * cp * (F * ndtr(cp * d1) - K * ndtr(cp * d2))


def _quad_otm(F, K, T, sigma):
    """Undiscounted OTM option price by quadrature, independent of any erfc: for K > F (call)
    ``K n(z0) int_0^inf expm1(s u) exp(-z0 u - u^2/2) du``, ``z0 = (ln(K/F) + s^2/2)/s``; puts alike."""
    s = sigma * math.sqrt(T)
    if K < F:
        return _quad_otm_put(F, K, s)
    z0 = (math.log1p((K - F) / F) + 0.5 * s * s) / s  # log1p: ln(K/F) to a few ulps relative
    val, _ = integrate.quad(lambda u: -math.expm1(-s * u) * math.exp((s - z0) * u - 0.5 * u * u), 0, math.inf,
                            epsabs=0, epsrel=2e-14, limit=200)
    return K * math.exp(-0.5 * z0 * z0) / math.sqrt(2 * math.pi) * val


def _quad_otm_put(F, K, s):
    # put = E[(K - S)^+], S = F e^{s z - s^2/2}; K - S = K (-expm1(s(z - z1))) for z < z1 = (ln(K/F) + s^2/2)/s
    z1 = (math.log1p((K - F) / F) + 0.5 * s * s) / s
    val, _ = integrate.quad(lambda u: -math.expm1(-s * u) * math.exp(z1 * u - 0.5 * u * u), 0, math.inf,
                            epsabs=0, epsrel=2e-14, limit=200)
    return K * math.exp(-0.5 * z1 * z1) / math.sqrt(2 * math.pi) * val


def test_erfcx_helper_matches_scipy():
    from scipy.special import erfcx

    z = np.concatenate([np.linspace(0, 1, 1001), np.geomspace(1e-12, 1e6, 2001), [0.0, 49.999, 50.0, 1e300]])
    np.testing.assert_allclose(_erfcx(z), erfcx(z), rtol=4e-15, atol=0)
    assert np.isnan(_erfcx(np.array([np.nan]))).all()


def test_numba_helpers_match_scipy():
    # the kernels' own erfcx (core.black's table, evaluated per element) and AS241 inverse normal
    nb = pytest.importorskip("core._black_numba", exc_type=ImportError)
    from scipy.special import erfcx, ndtri

    from core.black import _numba_tables

    tab, _ = _numba_tables()
    z = np.concatenate([np.linspace(0, 1, 1001), np.geomspace(1e-12, 1e6, 2001), [0.0, 49.999, 50.0, 1e300]])
    np.testing.assert_allclose([nb.erfcx(v, tab) for v in z], erfcx(z), rtol=4e-15, atol=0)
    assert math.isnan(nb.erfcx(math.nan, tab))
    p = np.concatenate([np.geomspace(1e-300, 0.5, 3000), 1 - np.geomspace(1e-16, 0.5, 1000)])
    np.testing.assert_allclose([nb.ndtri(v) for v in p], ndtri(p), rtol=1e-14, atol=1e-15)
    assert nb.ndtri(0.0) == -math.inf and nb.ndtri(1.0) == math.inf and math.isnan(nb.ndtri(1.5))


def test_closed_form_where_nothing_cancels(bp_backend):
    rng = np.random.default_rng(1)
    F = rng.uniform(50, 150, 2000)
    K = F * np.exp(rng.uniform(-0.5, 0.5, 2000))
    T = rng.uniform(0.1, 3, 2000)
    sig = rng.uniform(0.1, 0.8, 2000)
    cp = rng.choice([-1.0, 1.0], 2000)
    D = rng.uniform(0.5, 1.0, 2000)
    np.testing.assert_allclose(black_price(F, K, T, sig, cp, D), _naive(F, K, T, sig, cp, D), rtol=1e-12, atol=1e-14 * F.max())


@pytest.mark.parametrize("F, K, T, sigma", [
    (100.0, 150.0, 1.0, 0.2),       # 2 std dev OTM call
    (100.0, 300.0, 0.5, 0.2),       # ~8 std dev: price ~1e-15 F, where N(d1)F - N(d2)K is pure noise
    (100.0, 40.0, 0.25, 0.3),       # deep OTM put
    (100.0, 100.5, 1 / 365, 0.01),  # one day, 1% vol
    (100.0, 1e4, 30.0, 5.0 / math.sqrt(30) * 6 / 5),  # total std dev 6
])
def test_deep_otm_matches_quadrature(F, K, T, sigma, bp_backend):
    cp = 1.0 if K > F else -1.0
    ours = float(black_price(F, K, T, sigma, cp))
    ref = _quad_otm(F, K, T, sigma)
    assert ours > 0
    assert abs(ours / ref - 1) < 1e-12, (ours, ref)


def test_naive_formula_cancels_where_ours_does_not(bp_backend):
    # one day, 1% vol, 10 std devs out: N(d1) F - N(d2) K cancels (5 digits lost); ours matches quadrature
    F, K, T, sig = 100.0, 100.5, 1 / 365, 0.01
    ours = float(black_price(F, K, T, sig, 1))
    ref = _quad_otm(F, K, T, sig)
    assert abs(ours / ref - 1) < 1e-12
    assert abs(float(_naive(F, K, T, sig, 1)) / ref - 1) > 1e-11  # ~5 digits lost


def test_put_call_parity_and_bounds(bp_backend):
    rng = np.random.default_rng(2)
    n = 20_000
    F = np.exp(rng.uniform(-3, 8, n))
    T = np.exp(rng.uniform(np.log(1 / 365), np.log(30), n))
    sig = np.exp(rng.uniform(np.log(0.01), np.log(5), n))
    K = F * np.exp(rng.uniform(-8, 8, n) * sig * np.sqrt(T))
    D = rng.uniform(0.2, 1.0, n)
    C = black_price(F, K, T, sig, 1, D)
    P = black_price(F, K, T, sig, -1, D)
    scale = D * np.maximum(F, K)
    assert np.all(np.abs((C - P) - D * (F - K)) <= 4 * EPS * scale)
    for price, cp in ((C, 1.0), (P, -1.0)):
        intrinsic = D * np.maximum(cp * (F - K), 0)
        upper = D * np.where(cp > 0, F, K)
        assert np.all(price >= intrinsic) and np.all(price <= upper * (1 + 2 * EPS))
        assert np.all((price > intrinsic) | (price - intrinsic == 0))


def test_monotone_in_sigma_and_limits(bp_backend):
    sig = np.geomspace(1e-4, 50, 4000)
    for K, cp in ((80.0, 1), (120.0, 1), (80.0, -1), (120.0, -1), (100.0, 1)):
        p = black_price(100.0, K, 1.0, sig, cp)
        assert np.all(np.diff(p) >= 0)
    assert float(black_price(100, 90, 1, 0.0, 1, 0.9)) == pytest.approx(9.0, abs=1e-15)
    assert float(black_price(100, 110, 1, 0.0, 1)) == 0.0
    assert float(black_price(100, 110, 1, np.inf, 1, 0.9)) == pytest.approx(90.0)
    assert float(black_price(100, 110, 1, np.inf, -1, 0.9)) == pytest.approx(99.0)
    for bad in (np.nan, -0.1):
        assert np.isnan(black_price(100, 110, 1, bad, 1))
    assert np.isnan(black_price(-100, 110, 1, 0.2, 1))
    assert np.isnan(black_price(100, 110, 1, 0.2, 0))


def test_vega_closed_form_and_central_difference():
    rng = np.random.default_rng(3)
    n = 500
    F = rng.uniform(50, 150, n)
    K = F * np.exp(rng.uniform(-1, 1, n))
    T = rng.uniform(0.05, 5, n)
    sig = rng.uniform(0.05, 1.0, n)
    D = rng.uniform(0.5, 1.0, n)
    v = black_vega(F, K, T, sig, D)
    s = sig * np.sqrt(T)
    d1 = np.log(F / K) / s + 0.5 * s
    np.testing.assert_allclose(v, D * F * np.exp(-0.5 * d1 * d1) / np.sqrt(2 * np.pi) * np.sqrt(T), rtol=1e-12)
    h = 1e-5
    for cp in (1.0, -1.0):
        fd = (black_price(F, K, T, sig + h, cp, D) - black_price(F, K, T, sig - h, cp, D)) / (2 * h)
        # central difference error ~ h^2 vomma-ish terms plus rounding eps*price/h
        assert np.all(np.abs(fd - v) <= 1e-6 * np.maximum(v, 1e-3) + 1e-9 * F)
    assert float(black_vega(100, 100, 1, 0.0)) == pytest.approx(100 / math.sqrt(2 * math.pi))
    assert float(black_vega(100, 120, 1, 0.0)) == 0.0


def test_shapes_scalars_and_errors(bp_backend):
    out = black_price(100, 100, 1, 0.2, 1)
    assert isinstance(out, np.ndarray) and out.shape == ()
    out = black_price([100, 110], [[90], [100], [110]], 1.0, 0.2, [1, -1])
    assert out.shape == (3, 2)
    assert black_vega(np.float32(100), 100, 1, np.float32(0.2)).dtype == np.float64
    with pytest.raises(InputError):
        black_price([100, 110, 120], [90, 100], 1, 0.2, 1)
    with pytest.raises(InputError):
        black_vega([100, 110, 120], [90, 100], 1, 0.2)


@pytest.mark.quantlib
def test_against_quantlib_black_formula(bp_backend):
    ql = pytest.importorskip("QuantLib")
    rng = np.random.default_rng(4)
    n = 400
    F = rng.uniform(20, 200, n)
    T = np.exp(rng.uniform(np.log(1 / 365), np.log(30), n))
    sig = np.exp(rng.uniform(np.log(0.01), np.log(5), n))
    s = sig * np.sqrt(T)
    keep = s <= 6
    F, T, sig, s = F[keep], T[keep], sig[keep], s[keep]
    K = F * np.exp(rng.uniform(-3, 3, s.size) * s)
    cp = rng.choice([-1.0, 1.0], s.size)
    D = rng.uniform(0.5, 1, s.size)
    ours = black_price(F, K, T, sig, cp, D)
    theirs = np.array([ql.blackFormula(ql.Option.Call if c > 0 else ql.Option.Put, k, f, sd, d)
                       for c, k, f, sd, d in zip(cp, K, F, s, D, strict=True)])
    # QuantLib uses N(d1)F - N(d2)K: its own rounding is ~eps * D * max(F, K), not relative to the price
    assert np.all(np.abs(ours - theirs) <= 1e-13 * D * np.maximum(F, K) + 1e-12 * ours)
