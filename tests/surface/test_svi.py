"""Raw SVI slices: closed forms against QuantLib and SSVI, butterfly/calendar control, parameter recovery."""
from __future__ import annotations

import numpy as np
import pytest

from core.errors import InputError
from core.surface.base import butterfly_g
from core.surface.ssvi import power_law_phi, ssvi_slice
from core.surface.svi import (
    U_MAX,
    CorrectedSliceSurface,
    SVISlice,
    SVISplineSlice,
    correction_lambda,
    fit_svi_slice,
    quasi_explicit_start,
)

# Gatheral & Jacquier (2014), Example 3.1: a raw SVI slice (T = 1) with butterfly arbitrage
GJ_ARB = dict(a=-0.0410, b=0.1331, rho=0.3060, m=0.3586, sigma=0.4153)
SMOOTH = dict(a=0.01, b=0.08, rho=-0.5, m=0.05, sigma=0.15)


def test_closed_form_derivatives_match_finite_differences():
    sl = SVISlice(**SMOOTH)
    y = np.linspace(-1.0, 0.8, 37)
    w, w1, w2 = sl.derivs(y)
    h = 1e-5
    assert np.allclose(w1, (sl.w(y + h) - sl.w(y - h)) / (2 * h), atol=1e-9)
    assert np.allclose(w2, (sl.w(y + h) - 2 * w + sl.w(y - h)) / h**2, atol=1e-5)
    assert sl.min_w == pytest.approx(np.min(sl.w(np.linspace(-3, 3, 200001))), abs=1e-10)


@pytest.mark.quantlib
def test_slice_matches_quantlib_svi_smile_section():
    ql = pytest.importorskip("QuantLib")
    T, F = 0.5, 100.0
    sl = SVISlice(**SMOOTH)
    sec = ql.SviSmileSection(T, F, [sl.a, sl.b, sl.sigma, sl.rho, sl.m])  # QuantLib's order: a, b, sigma, rho, m
    for K in (60.0, 85.0, 100.0, 112.0, 150.0):
        ours = np.sqrt(sl.w(np.log(K / F)) / T)
        assert ours == pytest.approx(sec.volatility(K), rel=1e-12)


def test_from_ssvi_is_the_same_slice():
    theta, rho, eta, gamma = 0.04, -0.6, 1.2, 0.4
    phi = float(power_law_phi(theta, eta, gamma)[0])
    sl = SVISlice.from_ssvi(theta, rho, phi)
    y = np.linspace(-1.5, 1.0, 51)
    w_ref, w1_ref, w2_ref = ssvi_slice(y, theta, rho, phi)
    w, w1, w2 = sl.derivs(y)
    assert np.allclose(w, w_ref, atol=1e-14) and np.allclose(w1, w1_ref, atol=1e-13)
    assert np.allclose(w2, w2_ref, atol=1e-12)


def test_gatheral_jacquier_example_has_butterfly_arbitrage():
    g = SVISlice(**GJ_ARB).g(np.linspace(-1.5, 1.5, 3001))
    assert g.min() < -0.01          # the density goes negative (their Figure 2)


def test_bad_parameters_raise():
    with pytest.raises(InputError):
        SVISlice(a=0.01, b=-0.1, rho=0.0, m=0.0, sigma=0.1)
    with pytest.raises(InputError):
        SVISlice(a=0.01, b=0.1, rho=1.2, m=0.0, sigma=0.1)


def _vols(sl, y, T):
    return np.sqrt(sl.w(y) / T)


def test_fit_recovers_an_arbitrage_free_slice():
    T = 0.5
    true = SVISlice(**SMOOTH)
    y = np.linspace(-0.6, 0.4, 25)
    sl, info = fit_svi_slice(y, _vols(true, y, T), np.ones_like(y), T, y_grid=np.linspace(-0.8, 0.6, 121))
    assert np.max(np.abs(_vols(sl, y, T) - _vols(true, y, T))) < 1e-5     # 0.1 bp
    for k in ("a", "b", "rho", "m", "sigma"):
        assert getattr(sl, k) == pytest.approx(getattr(true, k), abs=2e-3)
    assert info.g_min > 0


def test_fit_to_the_arbitrage_example_removes_the_arbitrage():
    T = 1.0
    y = np.linspace(-1.2, 1.2, 41)
    iv = _vols(SVISlice(**GJ_ARB), y, T)
    grid = np.linspace(-1.5, 1.5, 121)
    sl, info = fit_svi_slice(y, iv, np.ones_like(y), T, y_grid=grid)
    assert sl.g(np.linspace(-1.5, 1.5, 3001)).min() >= -1e-8
    assert np.sqrt(np.mean((_vols(sl, y, T) - iv) ** 2)) < 0.01        # still close to the quotes


def test_calendar_penalty_keeps_the_slice_above_the_previous_expiry():
    T1 = 0.3
    prev = SVISlice(a=0.004, b=0.05, rho=-0.2, m=0.0, sigma=0.1)
    y = np.linspace(-0.5, 0.4, 30)
    # quotes that, taken alone, would dip below the previous expiry in the middle
    iv = np.sqrt(prev.w(y) / T1) * (1 - 0.06 * np.exp(-((y / 0.1) ** 2)))
    grid = np.linspace(-0.6, 0.5, 121)
    sl, info = fit_svi_slice(y, iv, np.ones_like(y), T1, y_grid=grid, prev=prev)
    yf = np.linspace(-0.6, 0.5, 5001)
    assert np.all(sl.w(yf) >= prev.w(yf))
    assert info.calendar_gap <= 0


def test_lee_bound_on_the_wings():
    T = 2.0
    y = np.linspace(-2.0, 2.0, 41)
    iv = np.sqrt((0.02 + 1.9 * np.abs(y)) / T)     # wings steeper than any SVI with b(1+|rho|) <= 2 U_MAX
    sl, _ = fit_svi_slice(y, iv, np.ones_like(y), T, y_grid=np.linspace(-2.2, 2.2, 121))
    base = getattr(sl, "base", sl)          # a corrected slice's wings are its backbone's
    assert base.b * (1 + abs(base.rho)) <= 2 * U_MAX + 1e-12


def test_quasi_explicit_start_is_close():
    true = SVISlice(**SMOOTH)
    y = np.linspace(-0.6, 0.4, 25)
    w = true.w(y)
    start = quasi_explicit_start(y, w, np.ones_like(y), y.min(), y.max())
    assert start is not None
    assert np.max(np.abs(start.w(y) - w)) < 0.05 * w.max()
    assert butterfly_g(y, *start.derivs(y)).shape == y.shape


def _concave_quotes(T=0.05):
    """SVI vols with a concave bump in total variance near y = 0.08 (like the 9-day Andreasen-Huge slice)."""
    true = SVISlice(**SMOOTH)
    y = np.linspace(-0.3, 0.2, 26)
    w = true.w(y) * 0.05 / 0.5 + 0.0008 * np.exp(-(((y - 0.08) / 0.04) ** 2))
    return y, np.sqrt(w / T), T


def test_correction_follows_quotes_svi_cannot():
    y, iv, T = _concave_quotes()
    grid = np.linspace(-0.4, 0.3, 121)
    plain, _ = fit_svi_slice(y, iv, np.ones_like(y), T, y_grid=grid, correction=False)
    sl, info = fit_svi_slice(y, iv, np.ones_like(y), T, y_grid=grid)
    err_plain = np.max(np.abs(np.sqrt(plain.w(y) / T) - iv)) * 1e4
    err = np.max(np.abs(np.sqrt(sl.w(y) / T) - iv)) * 1e4
    assert isinstance(sl, SVISplineSlice) and info.corrected
    assert err_plain > 15.0 and err < 0.5 * err_plain
    assert sl.g(np.linspace(-0.4, 0.3, 4001)).min() >= 0.0
    # beyond the support the slice is its SVI backbone exactly (Lee-bounded wings)
    far = np.array([-3.0, -1.5, 1.5, 3.0])
    assert np.array_equal(sl.w(far), sl.base.w(far))
    assert np.all(np.array(sl.correction(far)) == 0.0)


def test_corrected_slice_derivatives_match_finite_differences():
    y, iv, T = _concave_quotes()
    sl, _ = fit_svi_slice(y, iv, np.ones_like(y), T, y_grid=np.linspace(-0.4, 0.3, 121))
    yy = np.linspace(-0.5, 0.4, 19)
    h = 1e-5
    w, w1, w2 = sl.derivs(yy)
    assert np.allclose(w1, (sl.w(yy + h) - sl.w(yy - h)) / (2 * h), atol=1e-7)
    assert np.allclose(w2, (sl.derivs(yy + h)[1] - sl.derivs(yy - h)[1]) / (2 * h), atol=1e-5)


def test_smoothing_stiffens_the_correction():
    y, iv, T = _concave_quotes()
    grid = np.linspace(-0.4, 0.3, 121)
    errs = []
    for s in (0.0, 0.6):
        sl, _ = fit_svi_slice(y, iv, np.ones_like(y), T, y_grid=grid, smoothing=s)
        errs.append(np.max(np.abs(np.sqrt(sl.w(y) / T) - iv)))
    assert correction_lambda(0.6) > 1e4 * correction_lambda(0.0)
    assert errs[1] > errs[0]


def test_corrected_surface_derivatives_and_interpolation():
    from core.surface.interp import SliceSurface

    y, iv, T1 = _concave_quotes()
    s1, _ = fit_svi_slice(y, iv, np.ones_like(y), T1, y_grid=np.linspace(-0.4, 0.3, 121))
    s2 = SVISlice(a=0.004, b=0.1, rho=-0.5, m=0.05, sigma=0.15)
    Tn = (T1, 0.25)
    back = SliceSurface(T_nodes=Tn, slices=(s1.base, s2), y_lo=(-0.3, -0.3), y_hi=(0.2, 0.2))
    surf = CorrectedSliceSurface(back, Tn, (s1, None))
    yy = np.linspace(-0.35, 0.25, 13)
    # at the expiries: the slices themselves
    assert np.allclose(surf.w(yy, T1), s1.w(yy), atol=1e-14)
    assert np.allclose(surf.w(yy, 0.25), s2.w(yy), atol=1e-14)
    # analytic derivatives against central differences, before, between and after the expiries
    for T in (0.02, 0.1, 0.2, 0.4):
        d = surf.derivatives(yy, np.full_like(yy, T))
        h, k = 1e-5, 1e-6
        assert np.allclose(d.w_y, (surf.w(yy + h, T) - surf.w(yy - h, T)) / (2 * h), atol=1e-7)
        assert np.allclose(d.w_yy, (surf.derivatives(yy + h, np.full_like(yy, T)).w_y
                                    - surf.derivatives(yy - h, np.full_like(yy, T)).w_y) / (2 * h), atol=1e-5)
        assert np.allclose(d.w_T, (surf.w(yy, T + k) - surf.w(yy, T - k)) / (2 * k), atol=1e-6)
    # dC/dT vanishes at the expiries, so w_T is continuous there (local vol without jumps)
    lo = surf.derivatives(yy, np.full_like(yy, T1 - 1e-9)).w_T
    hi = surf.derivatives(yy, np.full_like(yy, T1 + 1e-9)).w_T
    assert np.allclose(lo, hi, atol=1e-5)
    assert np.allclose(surf.w(yy, 1e-9), 0.0, atol=1e-9)
