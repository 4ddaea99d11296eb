"""The seeds' public API (core.seeds) and the bare-grid surface behind it (core.surface.grid).

References: the user's documents ``shared/seeds/000_*.txt`` (finite differences on Black prices),
``001_*.txt`` (``ImpliedVolSurface`` / ``DupireLocalVol``) and ``002_*.txt`` (``dupire_local_vol``
with a bicubic price spline); ground truth: the closed-form SSVI local vol of Gatheral & Jacquier
(2014) (``tests.reference.ssvi_local_vol_reference``). Issue 11, point 5: at most 25 bp max and 2 bp median
inside 0.7-1.3 F and T >= 1 month, over a wide family of SSVI surfaces (correlation down to -0.9, ATM-variance
mean reversion up to 5 per year, rising and falling ATM term structures, first expiry at one month).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import InputError
from core.localvol import price_dupire
from core.seeds import (
    DupireLocalVol,
    ImpliedVolSurface,
    MarketSurface,
    dupire_local_vol,
    generate_market_surface,
    local_vol_mc,
)
from core.surface.base import butterfly_g
from core.surface.grid import fit_grid_row, surface_from_grid, svi_raw
from tests.reference import ssvi_local_vol_reference

DEMO_PARAMS = dict(rho=-0.65, eta=1.1, gamma=0.4, v0=0.15**2, v_inf=0.20**2, kappa=1.5)


def _box(K, T, F):
    """The comparison box of the issue: 0.7 <= K/F <= 1.3 and T >= 1 month."""
    m = K / F
    return (m >= 0.7) & (m <= 1.3) & (T >= 30 / 365 - 1e-12)


def _errors_bp(lv, truth, box):
    e = np.abs(lv - truth)[box] * 1e4
    return float(np.nanmax(e)), float(np.nanmedian(e)), int(np.isnan(e).sum())


@pytest.mark.parametrize("seed, params", [(0, DEMO_PARAMS), (1, {}), (2, {})])
def test_bare_ssvi_grid_matches_closed_form_local_vol(seed, params):
    # The user's kind of grid: strikes every 2.5% of spot, 9 expiries from 1 month to 2 years.
    # Target (issue 5): max <= 25 bp and median <= 2 bp inside 0.7-1.3 forward and T >= 1 month.
    m = generate_market_surface(seed, r=0.03, q=0.01, **params)
    K, T, iv, S, r, q = m
    F = S * np.exp((r - q) * T)
    truth = ssvi_local_vol_reference(m.model, np.log(K[:, None] / F[None, :]), T[None, :])
    box = _box(K[:, None], T[None, :], F[None, :])

    ours = dupire_local_vol(K, T, iv.T, S, r, q)                       # (nK, nT), on the grid itself
    assert ours.shape == (K.size, T.size)
    mx, med, _ = _errors_bp(ours, truth, box)

    # between the grid points too, through the class API
    Kf = S * np.linspace(0.6, 1.45, 90)
    Tf = np.linspace(T[0], T[-1], 120)
    lv = DupireLocalVol(ImpliedVolSurface(K, T, iv, S, r, q)).local_vol_surface(Kf, Tf)
    Ff = S * np.exp((r - q) * Tf)
    truth_f = ssvi_local_vol_reference(m.model, np.log(Kf[None, :] / Ff[:, None]), Tf[:, None])
    mx_f, med_f, _ = _errors_bp(lv, truth_f, _box(Kf[None, :], Tf[:, None], Ff[:, None]))

    # the seeds' naive methods on the same grid (price-fd: seed 000, price-spline: seed 002)
    naive = {}
    for meth in ("price-fd", "price-spline"):
        pr = price_dupire(K, T, iv, F, np.exp(-r * T), np.full(T.size, r), np.full(T.size, q), method=meth)
        naive[meth] = _errors_bp(np.sqrt(pr["local_var"]).T, truth, box)
    print(f"\n[seed {seed}] local vol error vs closed-form SSVI, bp (max / median), box 0.7-1.3 F, T >= 1m:"
          f"\n  ours, bare grid on the grid nodes   {mx:8.2f} / {med:6.2f}"
          f"\n  ours, bare grid between the nodes   {mx_f:8.2f} / {med_f:6.2f}"
          f"\n  seed 000 price finite differences   {naive['price-fd'][0]:8.0f} / {naive['price-fd'][1]:6.1f}"
          f"  ({naive['price-fd'][2]} cells undefined)"
          f"\n  seed 002 price bicubic spline       {naive['price-spline'][0]:8.0f} / {naive['price-spline'][1]:6.1f}"
          f"  ({naive['price-spline'][2]} cells undefined)")
    assert mx <= 25.0 and med <= 2.0
    assert mx_f <= 25.0 and med_f <= 2.0
    # we beat the naive methods by a wide margin (this part of the test can fail if they improve)
    assert naive["price-fd"][0] > 4 * mx and naive["price-spline"][0] > 4 * mx


def _family_errors(params):
    """Local-vol error (bp: max, median; on the grid nodes and between them) of the bare-grid API on the seeds'
    grid (strikes every 2.5% of spot, 9 expiries from 1 month to 2 years) of a power-law SSVI ``params``."""
    rho, gamma, lever, v0, v_inf, kappa = params
    m = generate_market_surface(0, r=0.03, q=0.01, rho=rho, gamma=gamma, eta=lever / (1 + abs(rho)),
                                v0=v0**2, v_inf=v_inf**2, kappa=kappa)
    K, T, iv, S, r, q = m
    F = S * np.exp((r - q) * T)
    ours = dupire_local_vol(K, T, iv.T, S, r, q)
    truth = ssvi_local_vol_reference(m.model, np.log(K[:, None] / F[None, :]), T[None, :])
    on = _errors_bp(ours, truth, _box(K[:, None], T[None, :], F[None, :]))
    Kf = S * np.linspace(0.6, 1.45, 60)
    Tf = np.linspace(T[0], T[-1], 60)
    Ff = S * np.exp((r - q) * Tf)
    ivs = ImpliedVolSurface(K, T, iv, S, r, q)
    lv = DupireLocalVol(ivs).local_vol_surface(Kf, Tf)
    truth_f = ssvi_local_vol_reference(m.model, np.log(Kf[None, :] / Ff[:, None]), Tf[:, None])
    between = _errors_bp(lv, truth_f, _box(Kf[None, :], Tf[:, None], Ff[:, None]))
    return on, between, ivs.surface.method


def _family(n, seed):
    """``n`` SSVI parameter sets ``(rho, gamma, eta (1 + |rho|), sqrt v0, sqrt v_inf, kappa)`` drawn widely inside
    Gatheral & Jacquier's no-arbitrage region: rho in [-0.9, -0.1], gamma in [0.1, 0.5], eta (1 + |rho|) in
    [0.5, 1.95], ATM vol at T = 0 in [8%, 60%] and long-run in [12%, 35%] (rising and falling term structures),
    mean reversion in [0.2, 5] per year."""
    rng = np.random.default_rng(seed)
    return [(rng.uniform(-0.9, -0.1), rng.uniform(0.1, 0.5), rng.uniform(0.5, 1.95), rng.uniform(0.08, 0.6),
             rng.uniform(0.12, 0.35), rng.uniform(0.2, 5.0)) for _ in range(n)]


#: corners of the family: the steepest skew, the fastest mean reversion, rising and falling ATM variance
CORNERS = [(rho, gamma, lever, v0, v_inf, kappa) for rho in (-0.9, -0.3) for gamma in (0.1, 0.5)
           for lever in (0.6, 1.95) for v0, v_inf in ((0.6, 0.12), (0.08, 0.35)) for kappa in (5.0,)]


@pytest.mark.parametrize("params", [(-0.9, 0.5, 1.95, 0.08, 0.35, 5.0), (-0.9, 0.1, 1.95, 0.6, 0.12, 5.0),
                                    (-0.9, 0.3, 1.2, 0.15, 0.2, 1.5)] + _family(3, 11))
def test_bare_grid_local_vol_bound_on_steep_fast_ssvi_surfaces(params):
    # the SVI rows alone (the fallback) reached 48-67 bp max and up to 9 bp median on such surfaces
    (mx, med, nan), (mx_f, med_f, nan_f), method = _family_errors(params)
    assert method == "essvi"
    assert nan == 0 and nan_f == 0
    assert mx <= 25.0 and med <= 2.0 and mx_f <= 25.0 and med_f <= 2.0


@pytest.mark.slow
def test_bare_grid_local_vol_bound_over_a_wide_ssvi_family():
    # measured over these 56 surfaces: max 8.2 bp, median at most 0.15 bp (on and between the grid nodes)
    worst = [0.0, 0.0]
    for params in _family(40, 2024) + CORNERS:
        (mx, med, _), (mx_f, med_f, _), _ = _family_errors(params)
        worst = [max(worst[0], mx, mx_f), max(worst[1], med, med_f)]
        assert mx <= 25.0 and med <= 2.0 and mx_f <= 25.0 and med_f <= 2.0, params
    print(f"\nbare grid over 56 SSVI surfaces: worst max {worst[0]:.2f} bp, worst median {worst[1]:.3f} bp")


def test_bare_grid_keeps_svi_rows_for_smiles_essvi_cannot_follow():
    # raw SVI rows that are no SSVI slices (the smile's minimum far from where SSVI puts it): the per-row SVI fit
    # follows them, eSSVI cannot, so the grid keeps SVI; on an SSVI grid it is eSSVI, within rounding
    K = 100 * np.arange(0.5, 1.5001, 0.025)
    T = np.array([30, 61, 91, 182, 273, 365, 456, 547, 730]) / 365
    y = np.broadcast_to(np.log(K[None, :] / 100.0), (T.size, K.size))
    w = svi_raw(y, 0.01 * T[:, None] / 0.25, 0.1 * np.sqrt(T[:, None]), -0.3, 0.25, 0.05)[0] + 0.02 * T[:, None]
    surf, _ = surface_from_grid(K, T, np.sqrt(w / T[:, None]), 100.0)
    assert surf.method == "svi"
    m = generate_market_surface(3)
    surf, _ = surface_from_grid(m.strikes, m.maturities, m.implied_vols, m.spot, m.r, m.q)
    assert surf.method == "essvi" and surf.rmse_vol.max() < 1e-8


def test_bare_grid_with_holes_stays_accurate():
    m = generate_market_surface(0, r=0.03, q=0.01, missing=0.25, **DEMO_PARAMS)
    K, T, iv, S, r, q = m
    assert np.isnan(iv).mean() > 0.15
    F = S * np.exp((r - q) * T)
    ours = dupire_local_vol(K, T, iv.T, S, r, q)
    truth = ssvi_local_vol_reference(m.model, np.log(K[:, None] / F[None, :]), T[None, :])
    mx, med, n_nan = _errors_bp(ours, truth, _box(K[:, None], T[None, :], F[None, :]))
    assert n_nan == 0 and mx <= 25.0 and med <= 2.0


def test_svi_fit_recovers_an_ssvi_row_exactly():
    # an SSVI slice is a raw SVI slice: a = theta (1 - rho^2)/2, b = theta phi/2, m = -rho/phi,
    # sigma = sqrt(1 - rho^2)/phi (Gatheral & Jacquier 2014, section 4)
    m = generate_market_surface(3)
    T = m.maturities[4]
    F = m.spot * np.exp((m.r - m.q) * T)
    y = np.log(m.strikes / F)
    w = m.implied_vols[4] ** 2 * T
    p, rmse = fit_grid_row(y, w, T)
    assert rmse < 1e-8
    theta = float(m.model.theta_curve.theta(T))
    phi = float(m.model.phi(theta))
    rho = m.params["rho"]
    np.testing.assert_allclose(p, [theta * (1 - rho**2) / 2, theta * phi / 2, rho, -rho / phi,
                                   np.sqrt(1 - rho**2) / phi], rtol=1e-5)


def test_svi_fit_avoids_butterfly_arbitrage_on_noisy_rows():
    rng = np.random.default_rng(5)
    y = np.linspace(-0.4, 0.3, 25)
    w = svi_raw(y, 0.01, 0.08, -0.6, 0.02, 0.15)[0] * (1 + rng.normal(0, 0.03, y.size))
    p, _ = fit_grid_row(y, w, 0.5)
    yd = np.linspace(-1.5, 1.5, 301)
    wd, wy, wyy = svi_raw(yd, *p)
    assert butterfly_g(yd, wd, wy, wyy).min() > -1e-6


def test_grid_interpolation_is_monotone_in_T_and_reproduces_rows():
    m = generate_market_surface(4, missing=0.1)
    surf, fw = surface_from_grid(m.strikes, m.maturities, m.implied_vols, m.spot, m.r, m.q)
    y = np.linspace(-0.5, 0.4, 37)
    T = np.linspace(0.01, 3.0, 400)
    d = surf.derivatives(y[None, :], T[:, None])
    assert np.all(np.diff(d.w, axis=0) >= -1e-12) and np.all(d.w_T >= 0)
    # analytic derivatives agree with differences of w itself
    h = 1e-6
    Tm = np.array([0.3, 0.77, 1.6])[:, None]
    dT = (surf.w(y[None, :], Tm + h) - surf.w(y[None, :], Tm - h)) / (2 * h)
    dd = surf.derivatives(y[None, :], Tm)
    np.testing.assert_allclose(dd.w_T, dT, rtol=1e-5, atol=1e-9)
    dy = (surf.w(y[None, :] + h, Tm) - surf.w(y[None, :] - h, Tm)) / (2 * h)
    np.testing.assert_allclose(dd.w_y, dy, rtol=1e-5, atol=1e-9)
    # at the rows, the smile is the grid's (up to the exact SVI fit)
    F = fw.F(m.maturities)
    back = surf.implied_vol(np.log(m.strikes[None, :] / F[:, None]), m.maturities[:, None])
    ok = np.isfinite(m.implied_vols)
    np.testing.assert_allclose(back[ok], m.implied_vols[ok], atol=1e-7)


def test_seeds_class_api_shapes_and_scalars():
    K, T, iv, S, r, q = generate_market_surface(0)
    surf = ImpliedVolSurface(strikes=K, maturities=T, implied_vols=iv, S0=S, r=r, q=q)
    dup = DupireLocalVol(surf)
    lv = dup.local_vol(K=95, T=0.5)
    assert isinstance(lv, float) and 0.05 < lv < 1.0
    arr = dup.local_vol(np.array([90.0, 100.0]), 0.5)
    assert arr.shape == (2,)
    grid = dup.local_vol_surface(strikes=np.linspace(80, 120, 9), maturities=np.array([0.25, 0.5, 1.0, 2.0]))
    assert grid.shape == (4, 9) and np.all(np.isfinite(grid))
    assert grid[1, 3] == pytest.approx(dup.local_vol(np.linspace(80, 120, 9)[3], 0.5))
    assert isinstance(surf.implied_vol(100.0, 1.0), float)
    res = dup.result(np.linspace(80, 120, 9), [0.5, 1.0])
    assert res.local_vol.shape == (2, 9)


def test_generate_market_surface_is_deterministic_and_arbitrage_free():
    a = generate_market_surface(11)
    b = generate_market_surface(11)
    c = generate_market_surface(12)
    np.testing.assert_array_equal(a.implied_vols, b.implied_vols)
    assert not np.allclose(a.implied_vols, c.implied_vols)
    assert isinstance(a, MarketSurface)
    strikes, maturities, vols, spot, r, q = a
    assert vols.shape == (maturities.size, strikes.size) and a["implied_vols"] is vols and a["S0"] == spot
    assert np.all(np.isfinite(vols)) and 0.05 < vols.min() and vols.max() < 1.5
    # power-law SSVI inside Gatheral & Jacquier's (2014) Remark 4.4 conditions
    assert all(a.model.no_arbitrage_conditions().values())
    assert np.isnan(generate_market_surface(11, missing=0.3).implied_vols).any()
    noisy = generate_market_surface(11, noise_bp=20)
    assert 5e-4 < np.abs(noisy.implied_vols - a.implied_vols).max() < 0.02


def test_local_vol_mc_is_reexported():
    from core.pricing import mc

    assert local_vol_mc is mc.local_vol_mc


@pytest.mark.parametrize("call, msg", [
    (lambda K, T, iv: ImpliedVolSurface(K, T, iv.T, 100.0), "implied_vols"),
    (lambda K, T, iv: ImpliedVolSurface(K[:, None], T, iv, 100.0), "strikes"),
    (lambda K, T, iv: dupire_local_vol(K, T, iv, 100.0), "iv_surface"),
    (lambda K, T, iv: dupire_local_vol(K, T[::-1], iv.T, 100.0), "maturities"),
    (lambda K, T, iv: ImpliedVolSurface(K, T, np.full_like(iv, np.nan), 100.0), "implied_vols"),
    (lambda K, T, iv: ImpliedVolSurface(K, T, iv, -1.0), "S0"),
    (lambda K, T, iv: DupireLocalVol(iv), "surface"),
    (lambda K, T, iv: DupireLocalVol(ImpliedVolSurface(K, T, iv, 100.0)).local_vol(-5.0, 1.0), "K"),
])
def test_bad_shapes_raise_input_error_naming_the_argument(call, msg):
    m = generate_market_surface(0)
    with pytest.raises(InputError, match=msg):
        call(m.strikes, m.maturities, m.implied_vols)


@pytest.mark.filterwarnings("ignore::core.errors.ArbitrageWarning")    # sparse rows may cross: warned, flagged
@settings(max_examples=15)
@given(nK=st.integers(5, 25), nT=st.integers(1, 6), holes=st.floats(0.0, 0.6), seed=st.integers(0, 10_000),
       scale=st.sampled_from([0.01, 1.0, 5000.0]))
def test_hypothesis_shapes_and_holes(nK, nT, holes, seed, scale):
    # any grid shape with missing quotes: a surface, finite local vol inside the band, the seeds' shapes
    rng = np.random.default_rng(seed)
    K = scale * np.sort(rng.uniform(60, 140, nK)) + scale * 1e-3 * np.arange(nK)
    T = np.sort(rng.uniform(0.02, 3.0, nT)) + 1e-3 * np.arange(nT)
    m = generate_market_surface(seed, spot=100.0 * scale, strikes=K, maturities=T, missing=holes)
    iv = m.implied_vols
    out = dupire_local_vol(K, T, iv.T, m.spot, m.r, m.q)
    assert out.shape == (nK, nT)
    assert np.all(np.isfinite(out)) and out.min() >= 0.01 and out.max() <= 3.0
    dup = DupireLocalVol(ImpliedVolSurface(K, T, iv, m.spot, m.r, m.q))
    assert dup.local_vol_surface(K[::2], T).shape == (nT, K[::2].size)


def test_rows_without_quotes_are_dropped_with_a_warning():
    m = generate_market_surface(0)
    iv = m.implied_vols.copy()
    iv[2] = np.nan
    with pytest.warns(UserWarning, match="dropped"):
        surf, _ = surface_from_grid(m.strikes, m.maturities, iv, m.spot, m.r, m.q)
    assert surf.T_nodes.size == m.maturities.size - 1
    assert any("dropped" in w for w in surf.warnings)


def test_bare_grid_flat_and_term_structure_ground_truths():
    # MATH.md "Ground truths": flat in, flat out; a T-only smile gives sqrt(d(sigma^2 T)/dT)
    K = 100 * np.arange(0.5, 1.5001, 0.025)
    T = np.array([30, 61, 91, 182, 273, 365, 456, 547, 730]) / 365
    flat = dupire_local_vol(K, T, np.full((K.size, T.size), 0.2), 100.0, 0.05, 0.02)
    np.testing.assert_allclose(flat, 0.2, atol=1e-8)
    var = 0.04 + 0.03 * np.exp(-1.5 * T)                       # sigma(T)^2
    lv = dupire_local_vol(K, T, np.tile(np.sqrt(var), (K.size, 1)), 100.0, 0.05, 0.02)
    expected = np.sqrt(var - 0.03 * 1.5 * T * np.exp(-1.5 * T))
    assert np.abs(lv - expected[None, :]).max() < 5e-4         # measured 2 bp: the T-interpolation error
    assert np.median(np.abs(lv - expected[None, :])) < 1e-4
