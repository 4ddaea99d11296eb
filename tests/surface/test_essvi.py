"""eSSVI (``core.surface.essvi``): the slice formula against a reference written here, the analytic derivatives
against finite differences, round trips, SSVI as the special case, no static arbitrage by construction
(Hypothesis), the Gatheral-Jacquier and Hendriks-Martini conditions, and the fit on the demo and on real chains.

References: Hendriks & Martini (2019), "The extended SSVI volatility surface" (the slice, eq. 1.2, and the
calendar conditions on consecutive slices); Gatheral & Jacquier (2014), Theorem 4.2 (butterfly bounds).
"""
from __future__ import annotations

import json
import time
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import InputError
from core.surface.base import butterfly_g, check_arbitrage
from core.surface.essvi import ESSVISurface, LogSlopeCurve, essvi_slice, fit_essvi, fit_knots
from core.surface.fit import fit_surface
from core.surface.interp import MonotoneThetaCurve
from tests.reference import ssvi_local_vol_reference


# ---------------------------------------------------------------------------------------------- references
def essvi_w_reference(y, theta, rho, psi):
    """The eSSVI slice as Hendriks & Martini write it: ``theta/2 (1 + rho phi y + sqrt((phi y + rho)^2 + 1 - rho^2))``
    with ``phi = psi / theta``."""
    phi = psi / theta
    return 0.5 * theta * (1.0 + rho * phi * y + np.sqrt((phi * y + rho) ** 2 + 1.0 - rho**2))


def ssvi_theta(T, v0, v_inf, kappa):
    """Mean-reverting ATM total variance ``v_inf T + (v0 - v_inf)(1 - e^{-kappa T})/kappa``."""
    return v_inf * T + (v0 - v_inf) * (1.0 - np.exp(-kappa * T)) / kappa


def power_law_psi(theta, eta, gamma):
    """``theta phi(theta)`` of the power law ``phi = eta theta^-gamma (1 + theta)^(gamma - 1)``."""
    return eta * theta ** (1.0 - gamma) * (1.0 + theta) ** (gamma - 1.0)


def fd(f, x, h):
    return (f(x + h) - f(x - h)) / (2.0 * h)


T6 = np.array([0.05, 0.1, 0.25, 0.5, 1.0, 2.0])
THETA6 = (0.2 + 0.02 * np.log(T6 / 0.05) / np.log(40.0)) ** 2 * T6
RHO6 = np.linspace(-0.8, -0.55, 6)
PSI6 = 0.5 * THETA6**0.6


@pytest.fixture(scope="module")
def known():
    """A known eSSVI surface with a maturity-dependent correlation (-0.8 to -0.55) and curvature."""
    return ESSVISurface.from_nodes(T6, THETA6, RHO6, PSI6)


def synthetic_quotes(surface, T, n_y=41):
    ys, ivs, ids = [], [], []
    for i, t in enumerate(T):
        y = np.linspace(-0.5, 0.3, n_y) * np.sqrt(t / 0.25)
        ys.append(y)
        ivs.append(surface.implied_vol(y, t))
        ids.append(np.full(n_y, i))
    return np.concatenate(ys), np.concatenate(ivs), np.concatenate(ids)


# ------------------------------------------------------------------------------------------ the formula
def test_slice_matches_the_reference_and_its_derivatives():
    y = np.linspace(-2.0, 1.5, 71)
    for theta, rho, psi in ((0.04, -0.7, 0.3), (0.001, 0.3, 0.02), (0.5, -0.99, 1.0), (0.02, 0.0, 0.1)):
        w, w_y, w_yy = essvi_slice(y, theta, rho, psi)
        ref = lambda x, th=theta, r=rho, p=psi: essvi_w_reference(x, th, r, p)  # noqa: E731
        np.testing.assert_allclose(w, ref(y), rtol=1e-13, atol=1e-16)
        np.testing.assert_allclose(w_y, fd(ref, y, 1e-6), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(w_yy, (ref(y + 1e-4) - 2 * ref(y) + ref(y - 1e-4)) / 1e-8, rtol=1e-4, atol=1e-6)
    # ATM value, slope and curvature: w(0) = theta, w'(0) = rho psi, w''(0) = psi^2 (1 - rho^2) / (2 theta)
    w, w_y, w_yy = essvi_slice(0.0, 0.03, -0.6, 0.2)
    assert (float(w), float(w_y), float(w_yy)) == pytest.approx((0.03, -0.12, 0.04 * 0.64 / 0.06), rel=1e-12)


def test_surface_reproduces_its_nodes_and_its_own_parameters(known):
    y = np.linspace(-1.0, 0.6, 33)
    # at the expiries: the given slices exactly
    for t, th, r, p in zip(T6, THETA6, RHO6, PSI6, strict=True):
        np.testing.assert_allclose(known.w(y, t), essvi_w_reference(y, th, r, p), rtol=1e-11)
    nodes = known.nodes()
    np.testing.assert_allclose(nodes["rho"], RHO6, atol=1e-12)
    np.testing.assert_allclose(nodes["psi"], PSI6, rtol=1e-11)
    # anywhere: the slice of the interpolated parameters
    for t in (0.01, 0.07, 0.33, 1.7, 3.5):
        th, r, p, _ = known.params_at(np.array(t))
        np.testing.assert_allclose(known.w(y, t), essvi_w_reference(y, th, r, p), rtol=1e-12)


@pytest.mark.parametrize("T", [0.004, 0.05, 0.07, 0.1, 0.6, 2.0, 4.0])
def test_analytic_derivatives_match_finite_differences(known, T):
    # before the first expiry, at expiries, between them and beyond the last
    y = np.linspace(-1.5, 1.0, 26)
    d = known.derivatives(y, T)
    np.testing.assert_allclose(d.w_y, fd(lambda x: known.w(x, T), y, 1e-6), rtol=1e-6, atol=1e-10)
    w_yy = (known.w(y + 1e-4, T) - 2 * known.w(y, T) + known.w(y - 1e-4, T)) / 1e-8
    np.testing.assert_allclose(d.w_yy, w_yy, rtol=1e-4, atol=1e-7)
    h = 1e-6 * T
    np.testing.assert_allclose(d.w_T, fd(lambda t: known.w(y, t), T, h), rtol=1e-6, atol=1e-10)
    # and the chain rule through the interpolated parameters, by differences of params_at
    p_lo, p_hi = known.params_at(np.array(T - h)), known.params_at(np.array(T + h))
    ref = (essvi_w_reference(y, *p_hi[:3]) - essvi_w_reference(y, *p_lo[:3])) / (2 * h)
    np.testing.assert_allclose(d.w_T, ref, rtol=1e-6, atol=1e-10)


def test_short_end_tends_to_the_first_smile_shape(known):
    # before the first expiry psi/theta and rho stay those of the first slice: the implied smile at fixed y
    # converges to a finite one as T -> 0, theta -> 0 proportionally to T
    th, rho, psi, phi = known.params_at(np.array([1e-6, 1e-4, 1e-2]))
    assert np.allclose(rho, RHO6[0], atol=1e-12)
    assert np.all(np.diff(phi) <= 0) and phi[0] == pytest.approx(phi[1], rel=1e-3)
    iv = known.implied_vol(np.array([-0.2, 0.0, 0.1]), np.array([[1e-7], [1e-6]]))
    np.testing.assert_allclose(iv[0], iv[1], rtol=1e-5)
    assert np.all(np.isfinite(iv)) and np.all(iv > 0)


# ------------------------------------------------------------------------------------------- round trips
def test_round_trip_recovers_a_known_surface(known):
    y, iv, idx = synthetic_quotes(known, T6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = fit_essvi(T6, y, iv, np.ones_like(y), idx, theta_roughness=0.0)
    # measured: theta 1.5e-4 (relative), rho 6e-4, psi 8e-4 (relative), vols 0.4 bp; the residual bias is the
    # small roughness penalty on the log-slopes (the forward-variance penalty is off: exact data)
    np.testing.assert_allclose(r.theta, THETA6, rtol=1e-3)
    np.testing.assert_allclose(r.rho, RHO6, atol=3e-3)
    np.testing.assert_allclose(r.psi, PSI6, rtol=3e-3)
    assert np.max(np.abs(r.surface.implied_vol(y, T6[idx]) - iv)) < 1e-4
    assert r.success and r.butterfly_scale == 1.0 and r.downweighted == 0


def test_ssvi_is_the_special_case():
    rho, eta, gamma, v0, v_inf, kappa = -0.7, 1.0, 0.4, 0.18**2, 0.22**2, 2.0
    T = np.array([30, 61, 91, 182, 273, 365, 547, 730]) / 365
    theta = ssvi_theta(T, v0, v_inf, kappa)
    psi = power_law_psi(theta, eta, gamma)
    # (1) constant rho and psi = theta phi(theta) at the nodes: the slices are SSVI's
    s = ESSVISurface.from_nodes(T, theta, np.full(T.size, rho), psi)
    y = np.linspace(-0.8, 0.5, 27)
    for t, th in zip(T, theta, strict=True):
        ssvi = 0.5 * th * (1 + rho * power_law_psi(th, eta, gamma) / th * y
                           + np.sqrt((power_law_psi(th, eta, gamma) / th * y + rho) ** 2 + 1 - rho**2))
        np.testing.assert_allclose(s.w(y, t), ssvi, rtol=1e-11)
    # and rho stays constant between the expiries
    assert np.allclose(s.params_at(np.linspace(0.01, 3.0, 50))[1], rho, atol=1e-12)
    # (2) fitted to SSVI quotes, eSSVI finds SSVI: one rho, psi on the power law, the closed-form local vol
    ys, ivs, ids = [], [], []
    for i, (t, th) in enumerate(zip(T, theta, strict=True)):
        yy = np.log(np.arange(0.5, 1.5001, 0.025))
        ys.append(yy)
        ivs.append(np.sqrt(essvi_w_reference(yy, th, rho, power_law_psi(th, eta, gamma)) / t))
        ids.append(np.full(yy.size, i))
    yq, ivq, iq = np.concatenate(ys), np.concatenate(ivs), np.concatenate(ids)
    r = fit_essvi(T, yq, ivq, np.ones_like(yq), iq, theta_roughness=0.0)
    np.testing.assert_allclose(r.rho, rho, atol=2e-3)
    np.testing.assert_allclose(r.psi, psi, rtol=2e-3)
    np.testing.assert_allclose(r.theta, theta, rtol=1e-4)
    model = SimpleNamespace(rho=rho, eta=eta, gamma=gamma, theta_curve=SimpleNamespace(v0=v0, v_inf=v_inf, kappa=kappa))
    Y = np.linspace(np.log(0.7), np.log(1.3), 25)[None, :]
    Tg = np.linspace(T[0], T[-1], 40)[:, None]
    d = r.surface.derivatives(Y, Tg)
    lv = np.sqrt(d.w_T / butterfly_g(Y, d.w, d.w_y, d.w_yy))
    err = np.abs(lv - ssvi_local_vol_reference(model, Y, Tg)) * 1e4
    assert err.max() < 10.0 and np.median(err) < 1.0          # measured 2.6 bp / 0.05 bp


# --------------------------------------------------------------------------- no arbitrage by construction
def random_surface(n, Ts, vols, slopesP, slopesM, F0P, F0M, max_knots):
    T = np.cumsum(Ts)
    theta = np.maximum.accumulate(np.asarray(vols) ** 2 * T)
    theta = theta * (1.0 + 1e-3 * np.arange(n))          # strictly increasing
    knots = fit_knots(np.log(theta), max_knots)
    m = knots.size
    qP = np.r_[slopesP[0], slopesP[1:m]]
    qM = np.r_[slopesP[0], slopesM[1:m]]                  # the first knot's slope is shared
    curve = MonotoneThetaCurve(tuple(T), tuple(theta))
    surf = ESSVISurface(T_nodes=tuple(T), theta_nodes=tuple(theta), lnP=LogSlopeCurve(tuple(knots), tuple(qP), F0P),
                        lnM=LogSlopeCurve(tuple(knots), tuple(qM), F0M), theta_curve=curve)
    ratio = surf.butterfly_check()["max_ratio"]
    if ratio > 1.0:                                      # scale both wings into the butterfly bounds
        c = np.log(ratio) + 0.01
        surf = ESSVISurface(T_nodes=tuple(T), theta_nodes=tuple(theta),
                            lnP=LogSlopeCurve(tuple(knots), tuple(qP), F0P - c),
                            lnM=LogSlopeCurve(tuple(knots), tuple(qM), F0M - c), theta_curve=curve)
    return surf, T, theta


@settings(max_examples=25)
@given(n=st.integers(1, 7), Ts=st.lists(st.floats(0.003, 0.8), min_size=7, max_size=7),
       vols=st.lists(st.floats(0.05, 1.2), min_size=7, max_size=7),
       slopesP=st.lists(st.floats(0.0, 1.0), min_size=13, max_size=13),
       slopesM=st.lists(st.floats(0.0, 1.0), min_size=13, max_size=13),
       F0P=st.floats(-7.0, 1.0), F0M=st.floats(-7.0, 1.0), max_knots=st.sampled_from([3, 5, 24]))
def test_random_parameter_sets_are_free_of_static_arbitrage(n, Ts, vols, slopesP, slopesM, F0P, F0M, max_knots):
    surf, T, theta = random_surface(n, Ts[:n], vols[:n], slopesP, slopesM, F0P, F0M, max_knots)
    # dense grid: far wings, before the first expiry, between the expiries, beyond the last
    Tg = np.unique(np.r_[np.geomspace(T[0] * 1e-3, T[-1] * 3, 120), T])[:, None]
    Y = np.linspace(-4.0, 3.0, 141)[None, :]
    d = surf.derivatives(Y, Tg)
    g = butterfly_g(Y, d.w, d.w_y, d.w_yy)
    assert np.all(np.isfinite(g)) and np.all(np.isfinite(d.w_T))
    assert g.min() >= -1e-10 and d.w_T.min() >= -1e-12 * max(1.0, float(np.abs(d.w_T).max()))
    arb = check_arbitrage(surf, T)
    assert arb["butterfly"] == 0 and arb["calendar"] == 0
    # the conditions themselves on the dense T grid: Gatheral & Jacquier (butterfly), Hendriks & Martini's
    # sufficient form (calendar): both wing slopes psi (1 +- rho) non-decreasing, phi = psi/theta non-increasing
    th, rho, psi, phi = surf.params_at(Tg.ravel())
    assert np.all(psi * (1 + np.abs(rho)) < 4.0) and np.all(psi**2 * (1 + np.abs(rho)) <= 4.0 * th * (1 + 1e-12))
    tol = 1e-12
    assert np.all(np.diff(th) >= -tol * th[1:])
    assert np.all(np.diff(psi * (1 + rho)) >= -tol) and np.all(np.diff(psi * (1 - rho)) >= -tol)
    assert np.all(np.diff(phi) <= tol * phi[1:])


def test_gatheral_jacquier_and_hendriks_martini_conditions_on_fits(known):
    y, iv, idx = synthetic_quotes(known, T6)
    rng = np.random.default_rng(3)
    r = fit_essvi(T6, y, iv * (1 + rng.normal(0, 0.01, iv.size)), np.ones_like(y), idx)
    th, rho, psi, phi = r.theta, r.rho, r.psi, r.phi
    # Gatheral & Jacquier (2014), Theorem 4.2: theta phi (1 + |rho|) < 4, theta phi^2 (1 + |rho|) <= 4
    assert np.all(th * phi * (1 + np.abs(rho)) < 4) and np.all(th * phi**2 * (1 + np.abs(rho)) <= 4 + 1e-12)
    # consecutive slices (Hendriks & Martini 2019; Mingone 2022): theta up, wings up, phi down
    assert np.all(np.diff(th) > 0)
    assert np.all(np.diff(psi * (1 + rho)) >= -1e-14) and np.all(np.diff(psi * (1 - rho)) >= -1e-14)
    assert np.all(np.diff(phi) <= 1e-12)


def test_from_nodes_refuses_nodes_with_calendar_or_butterfly_arbitrage():
    with pytest.raises(InputError, match="calendar"):
        ESSVISurface.from_nodes(T6, THETA6, RHO6, PSI6[::-1])                  # psi decreasing
    with pytest.raises(InputError, match="calendar"):
        ESSVISurface.from_nodes(T6, THETA6, RHO6, 0.5 * THETA6**1.2)           # phi increasing
    with pytest.raises(InputError, match="butterfly"):
        ESSVISurface.from_nodes(T6, THETA6, RHO6, 3.0 * THETA6**0.5)           # psi^2 (1 + |rho|) > 4 theta
    with pytest.raises(InputError):
        ESSVISurface.from_nodes(T6, THETA6[::-1], RHO6, PSI6)


@pytest.mark.parametrize("bad, what", [
    (dict(T=np.array([0.5, 0.1])), "increasing"), (dict(iv=np.array([0.2, np.nan])), "finite"),
    (dict(idx=np.array([0, 5])), "idx"), (dict(y=np.zeros(3)), "length"), (dict(idx=np.array([0, 0])), "expiry"),
])
def test_fit_essvi_rejects_malformed_input(bad, what):
    args = dict(T=np.array([0.1, 0.5]), y=np.array([0.0, 0.1]), iv=np.array([0.2, 0.2]), wt=np.ones(2),
                idx=np.array([0, 1]))
    args.update(bad)
    with pytest.raises(InputError, match=what):
        fit_essvi(args["T"], args["y"], args["iv"], args["wt"], args["idx"])


# ------------------------------------------------------------------------------------- through fit_surface
def test_fit_surface_essvi_on_the_demo():
    from core.demo import demo_fit_quotes

    q, fwd, ch = demo_fit_quotes(7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = fit_surface(q, fwd, method="essvi")
    assert f.method == "essvi" and f.arbitrage["butterfly"] == 0 and f.arbitrage["calendar"] == 0
    assert f.residuals["inside"].mean() > 0.95                 # the demo is SSVI: eSSVI fits it inside bid/ask
    json.dumps(f.params)
    json.dumps(f.global_params)
    true = ch.meta["model"]["surface"]
    rho = np.array([p["rho"] for p in f.params.values()])
    assert np.all(np.abs(rho - true.rho) < 0.05)
    assert set(next(iter(f.params.values()))) >= {"T", "theta", "rho", "psi", "phi", "svi"}


# ------------------------------------------------------------------------------------------- real chains
# floors a little under what was measured (inside share 36% / 64% / 39% / 28% / 29%)
REAL = [("spx_20240105_close.csv", "2024-01-05 16:00", 0.33), ("ndx_20230526_close.csv", "2023-05-26 16:00", 0.6),
        ("spx_20220610_close.csv", "2022-06-10 16:00", 0.35), ("spx_20220712_intraday.csv", None, 0.25),
        ("spx_20231208_ru_header.csv", "2023-12-08 16:00", 0.25)]


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.parametrize("name, asof, floor", REAL)
def test_real_chains_fit_fast_and_free_of_arbitrage(shared_data, name, asof, floor):
    from core.pipeline import Settings, fit, local_vol, prepare
    from core.sources.detect import load_file

    path = shared_data / "cboe_modern" / name
    if not path.exists():
        pytest.skip(f"{path} not found")
    chain = load_file(path, asof=asof)
    s = Settings(method="essvi")
    p = prepare(chain, s)
    t0 = time.perf_counter()
    f = fit(p, s)
    wall = time.perf_counter() - t0
    inside = float(f.residuals["inside"].mean())
    per = f.residuals.groupby("expiry")["inside"].mean()
    print(f"\n[{name}] eSSVI: {len(f.residuals)} quotes, {len(f.params)} expiries, inside bid/ask {inside:.1%} "
          f"(per expiry {per.min():.0%}-{per.max():.0%}), fit {f.seconds:.2f} s (wall {wall:.2f} s), "
          f"arbitrage {f.arbitrage['butterfly']}/{f.arbitrage['calendar']}")
    assert f.arbitrage["butterfly"] == 0 and f.arbitrage["calendar"] == 0
    # the eSSVI slice has 3 parameters: on SPX it cannot follow 1-5 bp spreads (one free SSVI slice per expiry,
    # fitted alone to the band, sits inside 54% of SPX 2024-01-05); the floor guards against regressions only
    assert inside >= floor
    assert f.seconds < 3.0                                     # measured 0.2-0.6 s on the 2-core machine
    d = f.surface.derivatives(f.residuals["y"].to_numpy(), f.residuals["T"].to_numpy())
    assert np.all(np.isfinite(d.w_T)) and np.all(d.w_T >= 0)
    # no stripes: on the default 50 x 100 local-vol grid, inside the quoted range and for T >= 1 week, cells more
    # than 20% off the mean of their four neighbours (measured 0-0.7%; 2-18% without the forward-variance
    # penalty), and no clipped cell in the quoted range
    lv = local_vol(p, f, s)
    L = lv.local_vol
    nb = (L[:-2, 1:-1] + L[2:, 1:-1] + L[1:-1, :-2] + L[1:-1, 2:]) / 4
    inner = ~lv.extrapolated[1:-1, 1:-1] & (lv.T[1:-1, None] >= 7 / 365)
    spikes = float(np.mean(np.abs(L[1:-1, 1:-1] / nb - 1)[inner] > 0.2))
    print(f"  local vol: {spikes:.2%} of the inner cells off their neighbours by over 20%")
    assert spikes < 0.01
    assert not ((lv.clipped_low | lv.clipped_high) & ~lv.extrapolated).any()
