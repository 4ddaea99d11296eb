"""Dupire local vol (core.localvol): closed forms, invariants, flags, and the seeds' naive methods.

References: Gatheral, *The Volatility Surface* (2006), eq. 1.10 (local variance ``w_T / g``);
Dupire (1994) in prices; Breeden & Litzenberger (1978) for ``d2C/dK2``; Gatheral & Jacquier (2014)
for SSVI and its closed-form local vol (``tests.reference.ssvi_local_vol_reference``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest

from core.black import black_price
from core.errors import InputError
from core.forwards import Forwards
from core.localvol import (
    FLAGS,
    gatheral_local_variance,
    instantaneous_rates,
    local_vol_at,
    local_vol_grid,
    price_dupire,
)
from core.surface.base import Derivatives, VolSurface
from core.surface.ssvi import SSVISurface, ThetaParametric
from tests.reference import ssvi_local_vol_reference


@dataclass(frozen=True)
class TermVol(VolSurface):
    """Implied vol depending on T only: ``sigma(T)^2 = a + b exp(-c T)`` (flat when ``b = 0``)."""

    a: float = 0.04
    b: float = 0.0
    c: float = 1.0

    def derivatives(self, y, T):
        y, T = np.broadcast_arrays(np.asarray(y, float), np.asarray(T, float))
        var = self.a + self.b * np.exp(-self.c * T)
        w = var * T
        w_T = var - self.b * self.c * T * np.exp(-self.c * T)
        z = np.zeros_like(w)
        return Derivatives(w=w, w_y=z, w_yy=z, w_T=w_T)


@dataclass(frozen=True)
class Scaled(VolSurface):
    """``w(y, T) = f(T) * w_base(y, 1)``: with a decreasing ``f`` it has calendar arbitrage."""

    base: VolSurface
    slope: float = -0.5

    def derivatives(self, y, T):
        d = self.base.derivatives(y, np.ones_like(np.asarray(T, float)))
        f = 1.0 + self.slope * np.asarray(T, float)
        return Derivatives(w=d.w * f, w_y=d.w_y * f, w_yy=d.w_yy * f, w_T=d.w * self.slope)


DEMO = SSVISurface(rho=-0.65, eta=1.1, gamma=0.4, theta_curve=ThetaParametric(0.15**2, 0.20**2, 1.5))
FW = Forwards.from_rates(100.0, 0.04, 0.015, [0.25, 0.5, 1.0, 2.0])
K_GRID = np.linspace(60.0, 150.0, 100)
T_GRID = np.linspace(0.05, 2.0, 50)


def test_flat_implied_vol_gives_flat_local_vol():
    # Gatheral (2006) eq. 1.10 with w = sigma^2 T: w_T = sigma^2, g = 1 -> sigma_loc = sigma
    res = local_vol_grid(TermVol(a=0.2**2), FW, K_GRID, T_GRID)
    np.testing.assert_allclose(res.local_vol_raw, 0.2, atol=1e-14)
    np.testing.assert_allclose(res.local_vol, 0.2, atol=1e-14)
    assert res.counts["butterfly"] == res.counts["calendar"] == res.counts["clipped"] == 0


def test_term_structure_only_gives_sqrt_dw_dT():
    # MATH.md "Ground truths": sigma_loc^2(T) = d(sigma^2 T)/dT when the smile is flat
    s = TermVol(a=0.04, b=0.05, c=2.0)
    res = local_vol_grid(s, FW, K_GRID, T_GRID)
    var = 0.04 + 0.05 * np.exp(-2.0 * T_GRID)
    expected = np.sqrt(var - 0.05 * 2.0 * T_GRID * np.exp(-2.0 * T_GRID))
    np.testing.assert_allclose(res.local_vol_raw, np.broadcast_to(expected[:, None], res.y.shape), rtol=1e-13)


def test_ssvi_analytic_matches_closed_form():
    # tests.reference.ssvi_local_vol_reference: the closed form of Gatheral & Jacquier's SSVI
    res = local_vol_grid(DEMO, FW, K_GRID, T_GRID, clip=(0.0, 10.0))
    truth = ssvi_local_vol_reference(DEMO, res.y, T_GRID[:, None])
    np.testing.assert_allclose(res.local_vol_raw, truth, rtol=1e-12)
    np.testing.assert_allclose(res.local_vol, truth, rtol=1e-12)
    # and through scattered points
    np.testing.assert_allclose(local_vol_at(DEMO, FW, K_GRID[::7], 0.7), ssvi_local_vol_reference(
        DEMO, np.log(K_GRID[::7] / FW.F(0.7)), 0.7), rtol=1e-12)


def test_local_vol_grid_is_fast_enough_for_a_slider():
    # recomputed on every slider move: 100 x 50 cells must take well under 100 ms
    local_vol_grid(DEMO, FW, K_GRID, T_GRID)
    t0 = time.perf_counter()
    for _ in range(5):
        local_vol_grid(DEMO, FW, K_GRID, T_GRID)
    assert (time.perf_counter() - t0) / 5 < 0.05


def test_call_price_derivatives_match_finite_differences():
    # chain rule through w(y, T) vs central differences of Black prices off the surface
    res = local_vol_grid(DEMO, FW, K_GRID[::9], T_GRID[::7])
    Kg, Tg = np.meshgrid(res.K, res.T)

    def C(K, T):
        F, D = FW.F(T), FW.D(T)
        return black_price(F, K, T, DEMO.implied_vol(np.log(K / F), T), 1, D)

    h, hk = 1e-5, 1e-2
    np.testing.assert_allclose(res.call_price, C(Kg, Tg), rtol=1e-12, atol=1e-12)
    dT = (C(Kg, Tg + h) - C(Kg, Tg - h)) / (2 * h)
    np.testing.assert_allclose(res.dC_dT, dT, rtol=1e-6, atol=1e-7)
    dKK = (C(Kg + hk, Tg) - 2 * C(Kg, Tg) + C(Kg - hk, Tg)) / hk**2
    np.testing.assert_allclose(res.d2C_dK2, dKK, rtol=1e-4, atol=1e-8)
    # Dupire in prices on these exact derivatives gives back the same local vol (r, q terms included)
    r, q = instantaneous_rates(FW, res.T)
    dK = (C(Kg + hk, Tg) - C(Kg - hk, Tg)) / (2 * hk)
    num = res.dC_dT + (r - q)[:, None] * Kg * dK + q[:, None] * res.call_price
    np.testing.assert_allclose(np.sqrt(num / (0.5 * Kg**2 * res.d2C_dK2)), res.local_vol_raw, rtol=1e-4)


def test_clip_band_flags_and_keeps_raw():
    res = local_vol_grid(DEMO, FW, K_GRID, T_GRID, clip=(0.15, 0.25))
    raw = res.local_vol_raw
    assert np.all(np.isfinite(raw))
    np.testing.assert_array_equal(res.clipped_low, raw < 0.15)
    np.testing.assert_array_equal(res.clipped_high, raw > 0.25)
    assert res.local_vol.min() >= 0.15 and res.local_vol.max() <= 0.25
    inside = ~(res.clipped_low | res.clipped_high)
    np.testing.assert_array_equal(res.local_vol[inside], raw[inside])
    c = res.counts
    assert c["clipped"] == c["clipped_low"] + c["clipped_high"] > 0
    assert c["cells"] == raw.size and c["clipped_share"] == pytest.approx(c["clipped"] / raw.size)


def test_calendar_and_butterfly_cells_are_flagged_with_documented_fallback():
    # calendar: w decreasing in T -> w_T < 0 everywhere: raw NaN, clipped value = implied vol (in band)
    cal = local_vol_grid(Scaled(DEMO, slope=-0.2), FW, K_GRID, np.linspace(0.1, 1.0, 10))
    assert cal.calendar.all() and np.isnan(cal.local_vol_raw).all()
    np.testing.assert_allclose(cal.local_vol, np.clip(cal.iv, 0.01, 3.0))
    assert cal.counts["calendar"] == cal.counts["cells"]
    # butterfly: Gatheral & Jacquier's (2014) Example 3.1 SVI slice at T = 1 (g < 0 near y = 0.9)
    from core.surface.grid import GridSurface

    gj = GridSurface(T_nodes=np.array([1.0]), params=np.array([[-0.0410, 0.1331, 0.3060, 0.3586, 0.4153]]),
                     y_lo=np.array([-1.0]), y_hi=np.array([1.0]), rmse_vol=np.zeros(1))
    fw = Forwards.from_rates(100.0, 0.0, 0.0, [1.0])
    res = local_vol_grid(gj, fw, 100 * np.exp(np.linspace(-1.5, 1.5, 61)), [0.5, 1.0, 2.0])
    assert res.butterfly[1].any() and not res.butterfly[1, :20].any()
    assert np.isnan(res.local_vol_raw[res.butterfly]).all()
    np.testing.assert_allclose(res.local_vol[res.butterfly], np.clip(res.iv[res.butterfly], 0.01, 3.0))
    # outside the quoted T and y ranges: flagged extrapolated
    assert res.extrapolated[0].all() and res.extrapolated[2].all()
    assert res.extrapolated[1, 0] and not res.extrapolated[1, 30]


def test_to_frame_interpolator_and_quantlib_layout():
    res = local_vol_grid(DEMO, FW, K_GRID, T_GRID)
    df = res.to_frame()
    assert len(df) == K_GRID.size * T_GRID.size
    for col in ("T", "strike", "y", "iv", "local_vol", "local_vol_raw", *FLAGS,
                "iv_imp", "call_price", "dC_dT", "d2C_dK2", "sigma_loc"):
        assert col in df.columns
    row = df.iloc[123]
    i, j = divmod(123, K_GRID.size)
    assert row["T"] == T_GRID[i] and row["strike"] == K_GRID[j] and row["sigma_loc"] == res.local_vol[i, j]

    f = res.interpolator()
    np.testing.assert_allclose(f(K_GRID[None, :], T_GRID[:, None]), res.local_vol, rtol=1e-13)
    # flat beyond the grid, bilinear inside (between two nodes: between their values)
    assert f(1.0, 0.5) == pytest.approx(f(K_GRID[0], 0.5))
    assert f(100.0, 10.0) == pytest.approx(f(100.0, T_GRID[-1]))
    mid = f(np.sqrt(K_GRID[10] * K_GRID[11]), T_GRID[3])
    lo, hi = sorted(res.local_vol[3, 10:12])
    assert lo <= mid <= hi
    # vectorised over paths: 100k lookups in a few ms
    S = np.random.default_rng(0).lognormal(np.log(100), 0.2, 100_000)
    t0 = time.perf_counter()
    f(S, 0.7)
    assert time.perf_counter() - t0 < 0.05

    lay = res.fixed_local_vol_layout()
    assert lay["matrix"].shape == (K_GRID.size, T_GRID.size)
    assert lay["matrix"][5, 7] == res.local_vol[7, 5]


def test_price_methods_recover_flat_and_use_r_q():
    # Dupire in prices (Dupire 1994) on a flat surface with r != q: the r, q terms must cancel the
    # drift exactly, or the result is biased by ~ (r - q) K C_K / (K^2 C_KK) (tens of vol points)
    K = np.linspace(70, 140, 141)
    T = np.linspace(0.2, 2.0, 91)
    fw = Forwards.from_rates(100.0, 0.05, 0.02, [0.5, 1.0])
    for method in ("price-fd", "price-spline"):
        res = local_vol_grid(TermVol(a=0.25**2), fw, K, T, method=method)
        inner = np.s_[2:-2, 5:-5]
        np.testing.assert_allclose(res.local_vol_raw[inner], 0.25, atol=5e-4)
        assert res.method == method
    # the same prices without the r, q terms are visibly wrong (the test can fail)
    F, D = fw.F(T), fw.D(T)
    pr = price_dupire(K, T, np.full((T.size, K.size), 0.25), F, D, np.zeros_like(T), np.zeros_like(T))
    assert np.nanmax(np.abs(np.sqrt(pr["local_var"][2:-2, 5:-5]) - 0.25)) > 0.02


def test_price_methods_flag_negative_density():
    # a butterfly-arbitrage slice makes C_KK < 0 somewhere: flagged, raw NaN, fallback used
    from core.surface.grid import GridSurface

    gj = GridSurface(T_nodes=np.array([0.9, 1.0, 1.1]), params=np.tile([-0.0410, 0.1331, 0.3060, 0.3586, 0.4153], (3, 1))
                     * np.array([[0.9], [1.0], [1.1]]) ** np.array([[1, 1, 0, 0, 0]]),
                     y_lo=-np.ones(3), y_hi=np.ones(3), rmse_vol=np.zeros(3))
    fw = Forwards.from_rates(100.0, 0.0, 0.0, [1.0])
    res = local_vol_grid(gj, fw, 100 * np.exp(np.linspace(-1.0, 1.5, 101)), np.linspace(0.9, 1.1, 9), method="price-fd")
    assert res.butterfly.any()
    assert np.isnan(res.local_vol_raw[res.butterfly]).all()
    assert np.all(np.isfinite(res.local_vol))


def test_gatheral_local_variance_nan_where_undefined():
    d = Derivatives(w=np.array([0.04, 0.04, 0.04]), w_y=np.zeros(3), w_yy=np.array([0.0, -4.0, 0.0]),
                    w_T=np.array([0.04, 0.04, -0.01]))
    var, g = gatheral_local_variance(np.zeros(3), d)
    assert var[0] == pytest.approx(0.04) and np.isnan(var[1]) and np.isnan(var[2])
    assert g[1] < 0


@pytest.mark.parametrize("kw, msg", [
    ({"strikes": [[100.0]]}, "strikes"), ({"strikes": [100.0, 90.0]}, "strikes"), ({"T": [0.0, 1.0]}, "T"),
    ({"clip": (0.5, 0.1)}, "clip"), ({"clip": 3}, "clip"), ({"method": "magic"}, "method"),
])
def test_bad_input_names_the_argument(kw, msg):
    args = {"strikes": K_GRID, "T": T_GRID}
    args.update(kw)
    with pytest.raises(InputError, match=msg):
        local_vol_grid(DEMO, FW, args.pop("strikes"), args.pop("T"), **args)
