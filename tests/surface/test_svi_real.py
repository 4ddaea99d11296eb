"""The "svi" method on real index chains (issue 11, point 3) and the pieces that make it hold there.

Real chains: every European index chain of ``../shared/data/cboe_modern`` (SPX, NDX) fitted through the
pipeline; at least 95% of the used quotes inside bid/ask, no expiry with 20 or more quotes below 80% unless
the fit names it, no static arbitrage (``check_arbitrage``), and SPX (AM) / SPXW (PM) of one date two slices.
On main before this work the SPX close of 2024-01-05 had 40% of its quotes inside (every slice from
2024-01-30 on above all its quotes). Per-chain numbers are printed with ``-s``.

The pieces (fast, synthetic): the calendar envelope, the stacked slice evaluation, the short end at fixed
``y / sqrt(T)``, scaled slices, target bands, AM/PM grouping.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from core.errors import InputError
from core.forwards import Forwards
from core.surface.base import butterfly_g, check_arbitrage
from core.surface.fit import fit_surface
from core.surface.interp import SliceSurface
from core.surface.svi import (
    SVISlice,
    SVISplineSlice,
    SVIStack,
    _corr_knots,
    calendar_envelope,
    scaled_slice,
    target_band,
)
from tests.helpers import dense_arbitrage

# European index chains and the time their prices were made (weekend downloads of Friday's close)
CHAINS = {
    "spx_20240105_close.csv": "2024-01-05 16:15",
    "spx_20220610_close.csv": "2022-06-10 16:15",
    "ndx_20230526_close.csv": "2023-05-26 16:15",
    "spx_20220712_intraday.csv": None,
    "spx_20231208_ru_header.csv": "2023-12-08 16:15",
}
INSIDE_MIN = 0.95          # issue 11: SVI per slice reaches the same 95%
EXPIRY_MIN = 0.80          # ... and no expiry with EXPIRY_QUOTES or more quotes below this unless named
EXPIRY_QUOTES = 20


# ------------------------------------------------------------------------------------------- real chains
@pytest.fixture(scope="module")
def real_fits(shared_data):
    """The five chains prepared by the pipeline and fitted with "svi" (once per module)."""
    pipeline = pytest.importorskip("core.pipeline")
    detect = pytest.importorskip("core.sources.detect")
    out = {}
    for name, asof in CHAINS.items():
        path = shared_data / "cboe_modern" / name
        if not path.exists():
            continue
        chain = detect.load_file(path, asof=asof)
        prep = pipeline.prepare(chain, pipeline.Settings(method="svi"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = fit_surface(prep.quotes, prep.forwards, method="svi")
        r = fit.residuals
        worst = min(fit.inside_share.items(), key=lambda kv: kv[1])
        print(f"\n{name}: {len(r)} quotes, {r['inside'].mean():.1%} inside, worst expiry {worst[0]} "
              f"{worst[1]:.0%}, arbitrage {fit.arbitrage['butterfly']}+{fit.arbitrage['calendar']}, {fit.seconds:.2f} s")
        out[name] = (prep, fit)
    if not out:
        pytest.skip("no cboe_modern chains in the shared data")
    return out


def _per_expiry_counts(fit) -> dict:
    """Used quotes per expiry key (the residuals carry T; each key has one T)."""
    T_res = fit.residuals["T"].to_numpy(float)
    return {k: int(np.sum(np.isclose(T_res, v["T"], rtol=0, atol=1e-9))) for k, v in fit.params.items()}


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("name", list(CHAINS))
def test_svi_fits_real_index_chains_inside_bid_ask(real_fits, name):
    if name not in real_fits:
        pytest.skip(f"{name} not in the shared data")
    prep, fit = real_fits[name]
    r = fit.residuals
    assert len(r) == int(prep.quotes["use"].fillna(False).astype(bool).sum())   # every used quote is fitted
    assert r["inside"].mean() >= INSIDE_MIN
    counts = _per_expiry_counts(fit)
    for key, share in fit.inside_share.items():
        if counts[key] >= EXPIRY_QUOTES and share < EXPIRY_MIN:
            assert any(key in w and "inside bid/ask" in w for w in fit.warnings), (key, share)


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("name", list(CHAINS))
def test_svi_leaves_no_static_arbitrage_on_real_chains(real_fits, name):
    if name not in real_fits:
        pytest.skip(f"{name} not in the shared data")
    _, fit = real_fits[name]
    assert fit.arbitrage["butterfly"] == 0 and fit.arbitrage["calendar"] == 0
    # an independent, denser grid (mid-points and sevenths of the intervals): calendar order is exact by
    # construction; g between the check grid's points stays within 0.005 of 0 (measured: -0.001 at worst)
    g_min, wT_min = dense_arbitrage(fit.surface, sorted(v["T"] for v in fit.params.values()))
    assert wT_min >= 0.0 and g_min >= -5e-3


@pytest.mark.slow
@pytest.mark.shared_data
def test_am_and_pm_series_of_one_date_are_two_slices(real_fits):
    if "spx_20240105_close.csv" not in real_fits:
        pytest.skip("spx_20240105_close.csv not in the shared data")
    _, fit = real_fits["spx_20240105_close.csv"]
    am, pm = fit.params["2024-01-19 AM"], fit.params["2024-01-19"]
    assert am["T"] < pm["T"] < am["T"] + 1.0 / 365          # 09:30 and 16:00 of the same day
    assert fit.inside_share["2024-01-19 AM"] >= EXPIRY_MIN and fit.inside_share["2024-01-19"] >= EXPIRY_MIN


@pytest.mark.slow
@pytest.mark.shared_data
def test_long_expiries_are_not_pushed_above_their_quotes(real_fits):
    """The failure found on main: from 2024-01-30 on every slice sat above all its quotes (bias +60 bp growing
    to +600 bp at one to two years), lifted onto the previous slice's extrapolated wing. Now the mean
    residual of every expiry is a fraction of its bid/ask spread."""
    if "spx_20240105_close.csv" not in real_fits:
        pytest.skip("spx_20240105_close.csv not in the shared data")
    _, fit = real_fits["spx_20240105_close.csv"]
    r = fit.residuals
    spread_bp = (r["iv_ask"] - r["iv_bid"]) * 1e4
    by_T = pd.DataFrame({"T": r["T"], "resid": r["resid_bp"], "spread": spread_bp}).groupby("T").median()
    long = by_T[by_T.index > 0.06]
    assert (long["resid"].abs() <= 0.5 * long["spread"]).all()


# ------------------------------------------------------------------------------------------------- pieces
def test_calendar_envelope_is_the_other_expiries_bid_and_ask():
    """Three expiries with flat vols 0.20, 0.21, 0.22 (bid/ask +-0.005): the middle one's envelope is the first's
    bid total variance below and the third's ask above, and nothing where neither is quoted."""
    T = np.array([0.1, 0.2, 0.3])
    ranges = [(-0.2, 0.1), (-0.5, 0.2), (-0.3, 0.1)]
    rows = [(y, i) for i, (lo, hi) in enumerate(ranges) for y in np.linspace(lo, hi, 11)]
    y = np.array([r[0] for r in rows])
    idx = np.array([r[1] for r in rows])
    vol = np.array([0.20, 0.21, 0.22])[idx]
    Y, L, U = calendar_envelope(y, T[idx], vol - 0.005, vol + 0.005, idx, 3)
    at = np.argmin(np.abs(Y - 0.0))
    assert L[1, at] == pytest.approx(0.195**2 * 0.1, rel=1e-12)
    assert U[1, at] == pytest.approx(0.225**2 * 0.3, rel=1e-12)
    assert np.isnan(L[0]).all() and np.isnan(U[2]).all()                       # nothing before / after
    far = np.argmin(np.abs(Y + 0.45))                                           # only expiry 1 quotes there
    assert np.isnan(L[1, far]) and np.isnan(U[1, far])
    assert U[0, far] == pytest.approx(0.215**2 * 0.2, rel=1e-12)               # the next one bounds the first


def test_stacked_evaluation_matches_each_slice():
    rng = np.random.default_rng(3)
    slices = []
    for k in range(4):
        t = _corr_knots(-0.3 - 0.1 * k, 0.2, 12 + 3 * k, support=(-0.6, 0.3) if k == 2 else None)
        slices.append(SVISplineSlice(SVISlice(a=0.01 + 0.01 * k, b=0.1, rho=-0.5, m=0.0, sigma=0.2), tuple(t),
                                     tuple(1e-3 * rng.normal(size=len(t) - 10))))
    slices.insert(1, SVISlice(a=0.015, b=0.1, rho=-0.5, m=0.0, sigma=0.2))
    stack = SVIStack.of(slices)
    assert stack is not None
    y = rng.uniform(-1.5, 1.0, 3000)                       # unsorted, inside and outside the supports
    W = stack(y)
    for k, sl in enumerate(slices):
        ref = sl.derivs(y)
        for i in range(3):
            np.testing.assert_allclose(W[i][k], ref[i], rtol=1e-13, atol=1e-15)

    class Other(SVISlice):
        pass

    assert SVIStack.of([*slices, Other(a=0.03, b=0.1, rho=-0.5, m=0.0, sigma=0.2)]) is None


def test_correction_knots_cover_the_support_uniformly():
    t = _corr_knots(-0.2, 0.1, 30, support=(-0.8, 0.3))
    d = np.diff(t)
    assert np.allclose(d, d[0])
    assert t[3] <= -0.8 and t[-4] >= 0.3
    with pytest.raises(InputError):
        SVISplineSlice(SVISlice(a=0.02, b=0.1, rho=-0.5, m=0.0, sigma=0.2), tuple(np.r_[t[:-1], t[-1] + 0.1]),
                       tuple(np.zeros(len(t) - 10)))


def test_short_end_at_fixed_normalised_moneyness_keeps_the_first_slices_density():
    """Before the first expiry ``SliceSurface(short_end="moneyness")`` is ``w = c W_1(y / sqrt(c))``, ``c = T / T_1``:
    ``g(y, T) = g_1(z) + (1 - c) W_1'(z)^2 / 16`` exactly (``z = y / sqrt(c)``), so a butterfly-free first slice
    stays butterfly-free; continuous at ``T_1``, exact for a flat smile, analytic derivatives."""
    T1 = 5 / 365
    t = _corr_knots(-0.12, 0.05, 20)
    sl = SVISplineSlice(SVISlice(a=1e-4, b=0.01, rho=-0.6, m=0.0, sigma=0.02), tuple(t),
                        tuple(2e-5 * np.exp(-0.5 * ((np.arange(len(t) - 10) - 8) / 3.0) ** 2)))
    money = SliceSurface(T_nodes=(T1,), slices=(sl,), short_end="moneyness")
    y = np.linspace(-0.15, 0.08, 801)
    for c in (0.1, 0.25, 0.5, 0.75):
        d = money.derivatives(y, np.full_like(y, c * T1))
        z = y / np.sqrt(c)
        W, W1, W2 = sl.derivs(z)
        np.testing.assert_allclose(butterfly_g(y, d.w, d.w_y, d.w_yy),
                                   butterfly_g(z, W, W1, W2) + (1 - c) * W1**2 / 16, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(money.w(y, T1 * (1 - 1e-12)), sl.w(y), rtol=1e-9)
    flat = SliceSurface(T_nodes=(T1,), slices=(SVISlice(a=0.04 * T1, b=0.0, rho=0.0, m=0.0, sigma=0.1),),
                        short_end="moneyness")
    np.testing.assert_allclose(flat.w(y, 0.5 * T1), 0.04 * 0.5 * T1, rtol=1e-12)
    T, k = 0.4 * T1, 1e-9
    d = money.derivatives(y, np.full_like(y, T))
    np.testing.assert_allclose(d.w_T, (money.w(y, T + k) - money.w(y, T - k)) / (2 * k), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(d.w_y, (money.w(y + 1e-6, T) - money.w(y - 1e-6, T)) / 2e-6, rtol=1e-5, atol=1e-9)


def test_scaled_slice_has_the_same_implied_vols_at_the_scaled_time():
    t = _corr_knots(-0.3, 0.2, 12)
    base = SVISlice(a=0.02, b=0.1, rho=-0.5, m=0.0, sigma=0.2)
    for sl in (base, SVISplineSlice(base, tuple(t), tuple(1e-3 * np.sin(np.arange(len(t) - 10))))):
        y = np.linspace(-0.5, 0.4, 31)
        np.testing.assert_allclose(scaled_slice(sl, 1.3).w(y), 1.3 * sl.w(y), rtol=1e-13)
        np.testing.assert_allclose(scaled_slice(sl, 1.3).derivs(y)[2], 1.3 * sl.derivs(y)[2], rtol=1e-12)


def test_target_band_is_the_middle_of_the_band_and_handles_one_sided_quotes():
    iv = np.array([0.20, 0.20, 0.20, 0.20])
    lo, hi = target_band(iv, (np.array([0.19, 0.1999, np.nan, 0.19]), np.array([0.21, 0.2001, 0.21, np.nan])))
    np.testing.assert_allclose([lo[0], hi[0]], [0.195, 0.205])                      # the middle half
    np.testing.assert_allclose([lo[1], hi[1]], [0.1999, 0.2001])                   # never wider than the band
    assert hi[2] <= 0.21 and lo[2] == pytest.approx(0.20 - 2e-4)                   # no bid: mid +- 2 bp
    assert lo[3] >= 0.19 and hi[3] == pytest.approx(0.20 + 2e-4)                   # no ask


def test_am_and_pm_of_one_date_are_fitted_as_two_slices():
    """Quotes of an AM- and a PM-settled series expiring on the same date (6.5 hours apart) are two expiries
    (``core.quotes.expiry_keys``), not one slice fitted to both."""
    rows = []
    for settle, T, level in (("AM", 0.1, 0.20), ("PM", 0.1 + 6.5 / 24 / 365, 0.2003)):
        for y in np.linspace(-0.3, 0.2, 21):
            v = level * (1 - 0.4 * y + 0.8 * y * y)
            rows.append({"expiry": pd.Timestamp("2030-02-15"), "settlement": settle, "T": T, "strike": 100 * np.exp(y),
                         "cp": 1 if y >= 0 else -1, "y": y, "iv_mid": v, "iv_bid": v - 4e-4, "iv_ask": v + 4e-4,
                         "use": True})
    q = pd.DataFrame(rows)
    fwd = Forwards.from_rates(100.0, 0.0, 0.0, sorted(q["T"].unique()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = fit_surface(q, fwd, method="svi")
    assert set(f.params) == {"2030-02-15 AM", "2030-02-15"}
    assert f.residuals["inside"].mean() == 1.0
    arb = check_arbitrage(f.surface, [v["T"] for v in f.params.values()])
    assert arb["butterfly"] == 0 and arb["calendar"] == 0
