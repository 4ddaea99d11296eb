"""The whole-surface spline (``core.surface.tensor``, method ``"spline"``, the default).

Triangulated against: finite differences of the surface itself (its analytic derivatives, also outside the
knot domain), the closed-form SSVI local vol written in ``tests/reference.py`` (not ``core.localvol``),
flat-in / flat-out, Hypothesis on shapes and extremes, and real chains from ``../shared/data``.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import FitError
from core.surface.base import butterfly_g, check_arbitrage
from core.surface.fit import fit_surface
from core.surface.ssvi import SSVISurface, ThetaParametric
from core.surface.tensor import TensorSplineSurface, fit_tensor
from tests.reference import ssvi_local_vol_reference

TRUTH = SSVISurface(rho=-0.7, eta=1.2, gamma=0.4, theta_curve=ThetaParametric(0.14**2, 0.22**2, 2.0))
EXPIRIES = np.array([7, 14, 21, 30, 45, 60, 91, 122, 182, 273, 365, 547, 730]) / 365.0


def _quotes(surface, half_spread_bp: float = 5.0, n_per: int = 41):
    """Exact SSVI mids on a strike grid wide enough for each expiry (+-3.5 ATM sd), with a bid/ask band."""
    rows = []
    for T in EXPIRIES:
        sd = float(np.sqrt(surface.theta_curve.theta(T)))
        y = np.linspace(-3.5 * sd, 2.0 * sd, n_per)
        iv = surface.implied_vol(y, np.full_like(y, T))
        h = half_spread_bp * 1e-4
        rows.append(pd.DataFrame({"expiry": pd.Timestamp("2024-01-05") + pd.to_timedelta(T * 365, "D"),
                                  "T": T, "strike": 100 * np.exp(y), "y": y, "cp": np.where(y >= 0, 1, -1),
                                  "iv_mid": iv, "iv_bid": iv - h, "iv_ask": iv + h, "use": True}))
    return pd.concat(rows, ignore_index=True)


@pytest.fixture(scope="module")
def ssvi_fit():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_surface(_quotes(TRUTH), method="spline")


def test_fits_ssvi_quotes_inside_their_band(ssvi_fit):
    r = ssvi_fit.residuals
    assert r["inside"].mean() >= 0.98
    assert np.sqrt(np.mean(r["resid_bp"] ** 2)) < 3.0


def test_no_static_arbitrage_on_the_fitted_ssvi(ssvi_fit):
    arb = check_arbitrage(ssvi_fit.surface, EXPIRIES)
    assert arb["butterfly"] == 0 and arb["calendar"] == 0


def test_local_vol_against_the_closed_form(ssvi_fit):
    """Gatheral's formula on the fitted spline against the SSVI closed form (tests/reference.py), in the box
    0.8-1.2 F and T from one month. The spline is a smoothing fit (its ln T penalty trades exactness for a
    local vol without stripes) of quotes with 5 bp half bands: half a vol point at the median, and up to five
    at the edge of the box at one month, where the closed form's local skew is steepest (measured: 0.05 / 3.7)."""
    from core.localvol import local_vol_y

    T = np.linspace(30 / 365, 1.9, 25)
    y = np.log(np.linspace(0.8, 1.2, 41))
    Y, TT = np.meshgrid(y, T)
    got = local_vol_y(ssvi_fit.surface, Y, TT)
    ref = ssvi_local_vol_reference(TRUTH, Y, TT)
    err = np.abs(got - ref)
    assert np.all(np.isfinite(got))
    assert np.median(err) < 0.005
    assert np.max(err) < 0.05


def test_flat_in_flat_out():
    flat = SSVISurface(rho=0.0, eta=1e-9, gamma=0.5, theta_curve=ThetaParametric(0.2**2, 0.2**2, 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_surface(_quotes(flat), method="spline")
    from core.localvol import local_vol_y

    T = np.linspace(10 / 365, 1.9, 15)
    y = np.linspace(-0.3, 0.2, 21)
    Y, TT = np.meshgrid(y, T)
    np.testing.assert_allclose(fit.surface.implied_vol(Y, TT), 0.2, atol=2e-4)
    np.testing.assert_allclose(local_vol_y(fit.surface, Y, TT), 0.2, atol=2e-3)


@pytest.mark.parametrize("where", ["inside", "before_first", "after_last", "far_wings"])
def test_analytic_derivatives_match_finite_differences(ssvi_fit, where):
    rng = np.random.default_rng(3)
    S = ssvi_fit.surface
    T_lo, T_hi = S.T_quoted
    if where == "inside":
        y, T = rng.uniform(-0.5, 0.3, 30), rng.uniform(T_lo * 1.1, T_hi * 0.9, 30)
    elif where == "before_first":
        y, T = rng.uniform(-0.2, 0.1, 30), rng.uniform(0.1 * T_lo, 0.8 * T_lo, 30)
    elif where == "after_last":
        y, T = rng.uniform(-0.5, 0.3, 30), rng.uniform(1.2 * T_hi, 3 * T_hi, 30)
    else:
        y, T = rng.choice([-1, 1], 30) * rng.uniform(2.0, 4.0, 30), rng.uniform(T_lo * 1.1, T_hi * 0.9, 30)
    d = S.derivatives(y, T)
    h = 1e-5
    w = S.w
    np.testing.assert_allclose(d.w_y, (w(y + h, T) - w(y - h, T)) / (2 * h), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(d.w_yy, (w(y + h, T) - 2 * w(y, T) + w(y - h, T)) / h**2, rtol=1e-3, atol=1e-5)
    hT = 1e-6 * T
    np.testing.assert_allclose(d.w_T, (w(y, T + hT) - w(y, T - hT)) / (2 * hT), rtol=1e-5, atol=1e-9)


def test_no_arbitrage_beyond_the_quotes(ssvi_fit):
    """The pricing PDE reads the surface far outside the quotes: before the first expiry, after the last, and
    deep in the wings. Local variance must be defined there (g > 0, w_T >= 0) near the money."""
    S = ssvi_fit.surface
    y = np.linspace(-1.0, 0.6, 161)
    for T in (0.2 * S.T_quoted[0], 0.6 * S.T_quoted[0], 1.5 * S.T_quoted[1]):
        d = S.derivatives(y, np.full_like(y, T))
        assert np.all(butterfly_g(y, d.w, d.w_y, d.w_yy) > 0)
        assert np.all(d.w_T > 0)


@settings(max_examples=40)
@given(st.lists(st.one_of(st.floats(-50, 50), st.just(float("nan"))), min_size=1, max_size=20),
       st.floats(1e-6, 50.0))
def test_derivatives_are_finite_for_any_point(ys, T):
    S = _small_surface()
    y = np.array(ys)
    d = S.derivatives(y, np.full_like(y, T))
    fin = np.isfinite(y)
    assert d.w.shape == y.shape
    for v in (d.w, d.w_y, d.w_yy, d.w_T):
        assert np.all(np.isfinite(v[fin]))
    assert np.all(d.w[fin] > 0)


_SMALL: list = []


def _small_surface() -> TensorSplineSurface:
    if not _SMALL:
        q = _quotes(TRUTH, n_per=15)
        keys = sorted(q["T"].unique())
        idx = np.searchsorted(keys, q["T"].to_numpy())
        _SMALL.append(fit_tensor(np.array(keys), q["y"], q["iv_mid"], np.ones(len(q)), idx,
                                 band=(q["iv_bid"], q["iv_ask"])).surface)
    return _SMALL[0]


def test_too_few_quotes_is_a_fit_error():
    with pytest.raises(FitError):
        fit_tensor(np.array([0.1]), np.array([0.0, 0.1]), np.array([0.2, 0.2]), np.ones(2), np.array([0, 0]))


# ------------------------------------------------------------------------------------------ real chains
@functools.lru_cache(maxsize=8)
def _default_calibration(path: str):
    """``(prepared, fitted)`` of a real chain with the default settings, shared by the tests of one chain."""
    from core import pipeline as P
    from core.sources.detect import load_file

    s = P.Settings()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prep = P.prepare(load_file(path), s)
        return prep, P.fit(prep, s)


REAL = ["spx_20240105_close.csv", "ndx_20230526_close.csv", "spx_20220610_close.csv",
        "spx_20220712_intraday.csv", "spx_20231208_ru_header.csv"]


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.parametrize("name", REAL)
def test_default_fit_on_real_index_chains(shared_data, name):
    """The default method on every European index chain in cboe_modern: inside bid/ask, used quotes, no
    arbitrage flag in the quoted range, and every expiry that misses its band often is named with a reason.
    Measured at the time of writing (fit / round trip inside): SPX 2024-01-05 96.0% / 95.7%, NDX 2023-05-26
    99.8% / 97.6%, SPX 2022-06-10 98.4% / 97.7%, SPX 2022-07-12 99.0% / 98.9%, SPX 2023-12-08 96.8% / 95.6%."""
    from core import pipeline as P

    s = P.Settings()
    assert s.method == "spline"
    prep, fr = _default_calibration(str(shared_data / "cboe_modern" / name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lv = P.local_vol(prep, fr, s)
    q = prep.quotes
    r = fr.residuals
    assert r["inside"].mean() >= 0.95
    clean_otm = (q["reason"] == "ok") & (q["T"] >= 1 / 365) & (((q["cp"] > 0) & (q["y"] >= 0)) | ((q["cp"] < 0) & (q["y"] < 0)))
    assert q["use"].sum() >= 0.9 * clean_otm.sum()
    inside = ~lv.extrapolated
    assert not (lv.butterfly & inside).any() and not (lv.calendar & inside).any()
    assert not ((lv.clipped_low | lv.clipped_high) & inside).any()
    # the ATM local vol of every fitted expiry: finite, off the clip band, within a factor of two of the ATM
    # implied vol (measured 0.52-1.87 times it); Gatheral's formula written out here, not imported
    T = np.array(sorted(set(r["T"])))
    d = fr.surface.derivatives(np.zeros_like(T), T)
    g_atm = 1.0 - d.w_y**2 / 4 * (1 / d.w + 0.25) + d.w_yy / 2   # g at y = 0
    lv_atm = np.sqrt(d.w_T / g_atm)
    iv_atm = np.sqrt(d.w / T)
    assert np.all(np.isfinite(lv_atm))
    assert np.all((lv_atm > s.clip[0]) & (lv_atm < s.clip[1]))
    assert np.all((lv_atm / iv_atm > 0.5) & (lv_atm / iv_atm < 2.0)), (lv_atm / iv_atm).round(2)
    for key, share in fr.inside_share.items():
        if share < 0.8 and fr.params[key]["n_quotes"] >= 20:
            assert any(w.startswith(f"{key}: ") and "inside bid/ask" in w for w in fr.warnings), key


def _stripes(lv) -> float:
    """Share of the grid's cells (quoted range, T of a week or more) more than 20% off the mean of their four
    neighbours: walls, spikes and stripes (the issue's measure)."""
    L = lv.local_vol
    nb = (L[:-2, 1:-1] + L[2:, 1:-1] + L[1:-1, :-2] + L[1:-1, 2:]) / 4
    inner = ~lv.extrapolated[1:-1, 1:-1] & (lv.T[1:-1, None] >= 7 / 365)
    return float(np.mean(np.abs(L[1:-1, 1:-1] / nb - 1)[inner] > 0.2))


NDX_STRIPES = ("NDX 2023-05-26: 1.6% of the cells; the grid's row two weeks out (a Sunday) sits between the first "
               "expiry (one session after Memorial Day, wing local vols of 150-500%) and the CPI and FOMC expiries: "
               "calendar-time local vol does move that much there (README, known limitations)")


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=NDX_STRIPES))
                                  if n.startswith("ndx") else n for n in REAL])
def test_default_local_vol_has_no_stripes(shared_data, name):
    """On the default 50 x 100 grid, inside the quoted range and for T of a week or more, fewer than 1% of the
    cells differ by more than 20% from the mean of their four neighbours (measured: SPX 0.3-0.9%)."""
    from core import pipeline as P

    prep, fr = _default_calibration(str(shared_data / "cboe_modern" / name))
    assert _stripes(P.local_vol(prep, fr, P.Settings())) < 0.01


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.parametrize("name", REAL)
def test_default_round_trip_on_real_index_chains(shared_data, name):
    """The used quotes repriced by the forward Dupire PDE under the default method's local vol come back
    inside their bid/ask at least 95% of the time on every European index chain in cboe_modern."""
    from core import pipeline as P

    prep, fr = _default_calibration(str(shared_data / "cboe_modern" / name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rp = P.reprice(prep, fr, P.Settings())
    assert rp.inside_bid_ask >= 0.95
