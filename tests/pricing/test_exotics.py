"""Barrier and Asian options: known limits (far barrier = vanilla, in + out = vanilla on the same paths),
flat local vol against the Reiner-Rubinstein closed form (continuous monitoring, Brownian-bridge
correction) and against the Broadie-Glasserman-Kou shift (discrete monitoring), smile value."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.black import black_price
from core.errors import InputError
from core.forwards import Forwards
from core.localvol import constant_local_vol, local_vol_from_surface
from core.pricing.exotics import BARRIER_KINDS, barrier_price_bs, price_asian, price_barrier
from core.surface.ssvi import SSVISurface, ThetaParametric

SSVI = SSVISurface(rho=-0.7, eta=1.0, gamma=0.4, theta_curve=ThetaParametric(0.04, 0.06, 2.0))
R, Q, SIG = 0.03, 0.01, 0.25
FW = Forwards.from_rates(100.0, R, Q, [1.0])
MC = dict(n_paths=60_000, n_steps=100, seed=4)


def test_far_up_and_out_barrier_is_the_vanilla():
    lv = local_vol_from_surface(SSVI, FW)
    r = price_barrier(lv, FW, strike=100.0, barrier=1e4, T=1.0, kind="up-and-out", **MC)
    assert r.price_lv == pytest.approx(r.vanilla_lv, rel=1e-12)
    assert r.price_bs == pytest.approx(r.vanilla_bs, rel=1e-12)
    # and that vanilla is Black-Scholes at the ATM vol on the Black-Scholes side
    ref = float(black_price(FW.F(1.0), 100.0, 1.0, r.atm_vol, 1, FW.D(1.0)))
    assert abs(r.vanilla_bs - ref) < 3 * r.se_bs


@pytest.mark.parametrize("cp, barrier, up", [(1, 125.0, True), (-1, 80.0, False)])
def test_in_plus_out_is_the_vanilla_on_the_same_paths(cp, barrier, up):
    lv = local_vol_from_surface(SSVI, FW)
    pre = "up" if up else "down"
    mc = dict(n_paths=20_000, n_steps=50, seed=4)  # an identity path by path: few paths suffice
    for monitoring in ("continuous", "discrete"):
        out = price_barrier(lv, FW, strike=100.0, barrier=barrier, T=1.0, kind=f"{pre}-and-out", cp=cp,
                            monitoring=monitoring, atm_vol=0.2, **mc)
        inn = price_barrier(lv, FW, strike=100.0, barrier=barrier, T=1.0, kind=f"{pre}-and-in", cp=cp,
                            monitoring=monitoring, atm_vol=0.2, **mc)
        assert out.price_lv + inn.price_lv == pytest.approx(out.vanilla_lv, rel=1e-12, abs=1e-12)
        assert out.price_bs + inn.price_bs == pytest.approx(out.vanilla_bs, rel=1e-12, abs=1e-12)
        assert 0 < out.price_lv < out.vanilla_lv


@pytest.mark.parametrize("kind, cp, K, H", [("up-and-out", 1, 100.0, 125.0), ("down-and-out", -1, 100.0, 85.0),
                                            ("down-and-in", 1, 100.0, 90.0), ("up-and-in", -1, 95.0, 110.0)])
def test_flat_vol_continuous_barrier_matches_reiner_rubinstein(kind, cp, K, H):
    """Constant vol: the log-Euler step and the Brownian-bridge crossing probability are exact, so the
    only error is noise: within 3 standard errors."""
    r = price_barrier(constant_local_vol(SIG), FW, strike=K, barrier=H, T=1.0, kind=kind, cp=cp,
                      atm_vol=SIG, monitoring="continuous", **MC)
    ref = float(barrier_price_bs(100.0, K, H, 1.0, R, Q, SIG, kind, cp))
    assert abs(r.price_lv - ref) <= 3 * r.se_lv, (r.price_lv, ref, r.se_lv)
    # same paths, same model: the smile is worth nothing
    assert r.smile_value == pytest.approx(0.0, abs=1e-12)


def test_discrete_monitoring_matches_the_broadie_glasserman_kou_shift():
    """m monitoring dates ~ continuous barrier shifted away by exp(0.5826 sigma sqrt(T/m))
    (Broadie, Glasserman & Kou 1997); the correction is accurate to o(1/sqrt m)."""
    m = 50
    dates = np.arange(1, m + 1) / m
    r = price_barrier(constant_local_vol(SIG), FW, strike=100.0, barrier=125.0, T=1.0, kind="up-and-out",
                      monitoring=dates, atm_vol=SIG, **MC)
    H_eff = 125.0 * np.exp(0.5826 * SIG * np.sqrt(1.0 / m))
    ref = float(barrier_price_bs(100.0, 100.0, H_eff, 1.0, R, Q, SIG, "up-and-out", 1))
    cont = float(barrier_price_bs(100.0, 100.0, 125.0, 1.0, R, Q, SIG, "up-and-out", 1))
    assert r.price_lv > cont + 5 * r.se_lv  # discrete monitoring knocks out less often
    assert abs(r.price_lv - ref) <= 3 * r.se_lv + 0.01 * ref


def test_barrier_closed_form_parity_and_limits():
    van_c = float(black_price(100 * np.exp(R - Q), 100.0, 1.0, SIG, 1, np.exp(-R)))
    for kind_pair, H in ((("up-and-out", "up-and-in"), 120.0), (("down-and-out", "down-and-in"), 85.0)):
        o, i = (barrier_price_bs(100.0, 100.0, H, 1.0, R, Q, SIG, k, 1) for k in kind_pair)
        assert o + i == pytest.approx(van_c, rel=1e-12)
    assert barrier_price_bs(100.0, 100.0, 1e6, 1.0, R, Q, SIG, "up-and-out", 1) == pytest.approx(van_c, rel=1e-9)
    assert barrier_price_bs(100.0, 100.0, 99.0, 1.0, R, Q, SIG, "up-and-out", 1) == 0.0  # already breached


def test_asian_single_fixing_at_expiry_is_the_vanilla():
    lv = local_vol_from_surface(SSVI, FW)
    r = price_asian(lv, FW, strike=100.0, T=1.0, fixings=[1.0], atm_vol=0.2, **MC)
    assert r.price_lv == pytest.approx(r.vanilla_lv, rel=1e-12)
    assert r.price_bs == pytest.approx(r.vanilla_bs, rel=1e-12)


def test_asian_flat_smile_is_worth_nothing_and_averaging_lowers_the_price():
    lv = constant_local_vol(SIG)
    r = price_asian(lv, FW, strike=100.0, T=1.0, n_fixings=12, **MC)
    assert abs(r.smile_value) < 1e-3  # atm_vol is read off the PDE: agrees to a fraction of a bp
    assert r.atm_vol == pytest.approx(SIG, abs=1e-5)
    assert r.price_lv < 0.7 * r.vanilla_lv


def test_smile_changes_the_up_and_out_and_reports_a_paired_error():
    """Negative skew: less vol on the upside under local vol than the ATM vol, so an up-and-out call
    survives more often; the paired standard error is much smaller than either price's."""
    lv = local_vol_from_surface(SSVI, FW)
    r = price_barrier(lv, FW, strike=100.0, barrier=130.0, T=1.0, kind="up-and-out", **MC)
    assert r.smile_value > 5 * r.se_smile
    assert r.se_smile < r.se_lv
    d = r.to_dict()
    assert d["kind"] == "up-and-out" and d["price_lv"] == r.price_lv


@settings(max_examples=20)
@given(kind=st.sampled_from(BARRIER_KINDS), cp=st.sampled_from([1, -1]), K=st.floats(60, 140),
       H=st.floats(50, 150), sigma=st.floats(0.05, 0.8), T=st.floats(0.05, 3.0))
def test_closed_form_in_out_parity_and_bounds(kind, cp, K, H, sigma, T):
    p = float(barrier_price_bs(100.0, K, H, T, R, Q, sigma, kind, cp))
    van = float(black_price(100 * np.exp((R - Q) * T), K, T, sigma, cp, np.exp(-R * T)))
    twin = kind.replace("out", "in") if kind.endswith("out") else kind.replace("in", "out")
    q = float(barrier_price_bs(100.0, K, H, T, R, Q, sigma, twin, cp))
    assert -1e-9 <= p <= van + 1e-9
    assert p + q == pytest.approx(van, rel=1e-9, abs=1e-9)


def test_bad_inputs():
    with pytest.raises(InputError, match="kind"):
        price_barrier(constant_local_vol(0.2), FW, strike=100, barrier=120, T=1.0, kind="sideways")
    with pytest.raises(InputError, match="monitoring"):
        price_barrier(constant_local_vol(0.2), FW, strike=100, barrier=120, T=1.0, monitoring="weekly")
    with pytest.raises(InputError, match="fixings"):
        price_asian(constant_local_vol(0.2), FW, strike=100, T=1.0, fixings=[2.0])
    with pytest.raises(InputError, match="seed"):
        price_asian(constant_local_vol(0.2), FW, strike=100, T=1.0, seed=np.random.default_rng(1))
