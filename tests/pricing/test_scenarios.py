"""Scenario shocks: analytic derivatives of the shocked surface against finite differences, the
shocks' definitions (parallel, skew, term, sticky strike vs sticky moneyness), and the
before/after tables with local vol and prices re-run."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import InputError
from core.forwards import Forwards
from core.pricing.products import Barrier
from core.pricing.scenarios import Instruments, Scenario, ShockedSurface, run_scenarios, shocked_forwards
from core.surface.ssvi import SSVISurface, ThetaParametric

SSVI = SSVISurface(rho=-0.7, eta=1.0, gamma=0.4, theta_curve=ThetaParametric(0.04, 0.06, 2.0))
FW = Forwards.from_rates(100.0, 0.03, 0.01, [0.25, 0.5, 1.0])


@settings(max_examples=40)
@given(parallel=st.floats(-0.03, 0.05), skew=st.floats(-0.1, 0.1), scaling=st.sampled_from(["flat", "sqrt"]),
       term=st.floats(-0.02, 0.02), shape=st.sampled_from(["inv_sqrt", "exp"]), move=st.floats(-0.2, 0.2),
       sticky=st.sampled_from(["strike", "moneyness"]), y=st.floats(-0.6, 0.6), T=st.floats(0.1, 3.0))
def test_analytic_derivatives_match_finite_differences(parallel, skew, scaling, term, shape, move, sticky, y, T):
    sc = Scenario("s", parallel=parallel, skew=skew, skew_scaling=scaling, term=term, term_shape=shape,
                  T_ref=0.5, spot_move=move, sticky=sticky)
    s = ShockedSurface(SSVI, sc)
    if np.any(s.implied_vol(np.array([y - 1e-3, y, y + 1e-3]), T) < 0.02):
        return  # shocked to (near) zero vol: derivatives are not smooth there
    d = s.derivatives(y, T)
    h = 1e-4
    w = lambda yy, tt: float(s.w(yy, tt))  # noqa: E731
    assert d.w_y == pytest.approx((w(y + h, T) - w(y - h, T)) / (2 * h), rel=1e-5, abs=1e-8)
    assert d.w_yy == pytest.approx((w(y + h, T) - 2 * w(y, T) + w(y - h, T)) / h**2, rel=1e-3, abs=1e-5)
    assert d.w_T == pytest.approx((w(y, T + h) - w(y, T - h)) / (2 * h), rel=1e-5, abs=1e-8)


def test_shocks_do_what_they_say():
    y = np.linspace(-0.4, 0.4, 9)
    T = 0.7
    base = SSVI.implied_vol(y, T)
    assert np.allclose(ShockedSurface(SSVI, Scenario("zero")).implied_vol(y, T), base, atol=1e-14)
    assert np.allclose(ShockedSurface(SSVI, Scenario("p", parallel=0.02)).implied_vol(y, T), base + 0.02)
    sk = ShockedSurface(SSVI, Scenario("k", skew=-0.05, skew_scaling="sqrt")).implied_vol(y, T)
    assert np.allclose(sk, base - 0.05 * y / np.sqrt(T))
    tm = ShockedSurface(SSVI, Scenario("t", term=0.01, term_shape="exp", T_ref=0.5)).implied_vol(y, T)
    assert np.allclose(tm, base + 0.01 * np.exp(-T / 0.5))


def test_sticky_strike_keeps_each_strikes_vol_sticky_moneyness_keeps_y():
    K = np.array([80.0, 100.0, 120.0])
    T = 0.5
    F0 = FW.F(T)
    fw1 = shocked_forwards(FW, 0.1)
    assert fw1.spot == pytest.approx(110.0) and fw1.F(T) == pytest.approx(1.1 * F0)
    ss = ShockedSurface(SSVI, Scenario("ss", spot_move=0.1, sticky="strike"))
    np.testing.assert_allclose(ss.implied_vol(np.log(K / fw1.F(T)), T), SSVI.implied_vol(np.log(K / F0), T))
    sm = ShockedSurface(SSVI, Scenario("sm", spot_move=0.1, sticky="moneyness"))
    np.testing.assert_allclose(sm.implied_vol(np.log(K / F0), T), SSVI.implied_vol(np.log(K / F0), T))


def test_run_scenarios_tables():
    inst = Instruments(strikes=np.array([85.0, 100.0, 115.0]), expiries=np.array([0.25, 1.0]),
                       exotics=(Barrier(strike=100.0, barrier=125.0, T=1.0, kind="up-and-out"),),
                       mc={"n_paths": 20_000, "n_steps": 50, "seed": 3})
    scs = [Scenario("vol +1", parallel=0.01), Scenario("spot +5% sticky strike", spot_move=0.05, sticky="strike")]
    res = run_scenarios(SSVI, FW, scs, inst)
    v = res.vanillas
    assert len(v) == 2 * 2 * 3
    assert {"scenario", "T", "strike", "iv_before", "iv_after", "d_iv_bp", "price_before", "price_after",
            "d_price", "price_pde_after", "pde_error_bp"} <= set(v.columns)
    par = v[v.scenario == "vol +1"]
    np.testing.assert_allclose(par["d_iv_bp"], 100.0, atol=1e-8)
    assert np.all(par["d_price"] > 0)
    # the re-run local vol reprices the shocked surface (round trip through the local-vol grid)
    assert np.abs(v["pde_error_bp"]).max() < 5.0
    lvt = res.local_vol
    assert np.all(lvt[lvt.scenario == "vol +1"]["atm_lv_after"] > lvt[lvt.scenario == "vol +1"]["atm_lv_before"])
    ex = res.exotics
    assert len(ex) == 2 and {"price_before", "price_after", "se_after", "change"} <= set(ex.columns)
    # more vol knocks the up-and-out call out more often
    assert ex.iloc[0]["change"] < 0
    assert res.lv_source


def test_bad_scenarios():
    with pytest.raises(InputError, match="sticky"):
        Scenario("x", sticky="delta")
    with pytest.raises(InputError, match="spot_move"):
        Scenario("x", spot_move=-1.5)
    with pytest.raises(InputError, match="Scenario"):
        run_scenarios(SSVI, FW, [{"parallel": 0.01}], Instruments(np.array([100.0]), np.array([0.5])))
