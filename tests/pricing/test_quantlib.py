"""Triangulation against QuantLib: CEV closed forms (AnalyticCEVEngine) for the PDE and the Monte
Carlo, Reiner-Rubinstein against AnalyticBarrierEngine, and our forward PDE against QuantLib's
FdBlackScholesVanillaEngine under the same local vol."""
from __future__ import annotations

import numpy as np
import pytest

from core.black import implied_vol
from core.forwards import Forwards
from core.localvol import T_MIN
from core.pricing.exotics import BARRIER_KINDS, barrier_price_bs
from core.pricing.mc import mc_european
from core.pricing.pde import forward_dupire
from core.surface.ssvi import SSVISurface, ThetaParametric
from tests.reference import ssvi_local_vol_reference

ql = pytest.importorskip("QuantLib")
pytestmark = pytest.mark.quantlib

TODAY = ql.Date(1, 3, 2021)
DC = ql.Actual365Fixed()


def _setup():
    ql.Settings.instance().evaluationDate = TODAY


def _flat(rate):
    return ql.YieldTermStructureHandle(ql.FlatForward(TODAY, rate, DC))


def _cev_lv(sigma, beta, cap=5.0):
    def lv(K, T):
        K, T = np.broadcast_arrays(np.asarray(K, float), np.asarray(T, float))
        with np.errstate(divide="ignore"):
            return np.minimum(sigma * K ** (beta - 1.0), cap)  # cap only binds near S = 0
    return lv


def _ql_cev(F, alpha, beta, D_rate, K, T_days, cp):
    eng = ql.AnalyticCEVEngine(float(F), float(alpha), float(beta), _flat(D_rate))
    out = []
    for k, c in zip(K, cp, strict=True):
        o = ql.VanillaOption(ql.PlainVanillaPayoff(ql.Option.Call if c > 0 else ql.Option.Put, float(k)),
                             ql.EuropeanExercise(TODAY + T_days))
        o.setPricingEngine(eng)
        out.append(o.NPV())
    return np.array(out)


@pytest.mark.parametrize("r, q", [(0.0, 0.0), (0.05, 0.01)])
def test_pde_matches_quantlib_cev(r, q):
    """Spot CEV ``dS = (r-q) S dt + sigma S^beta dW`` has local vol ``sigma S^(beta-1)``. QuantLib's engine
    prices a CEV *forward*: for r != q use ``alpha^2 T = sigma^2 (e^{2cT} - 1)/(2c)``, ``c = (r-q)(1-beta)``
    (MATH.md, ground truths)."""
    _setup()
    S0, sigma, beta, days = 100.0, 2.0, 0.5, 365
    T = days / 365.0
    fw = Forwards.from_rates(S0, r, q, [T])
    F = float(fw.F(T))
    c = (r - q) * (1 - beta)
    alpha = sigma if c == 0 else sigma * np.sqrt(np.expm1(2 * c * T) / (2 * c * T))
    K = np.array([60.0, 80.0, 100.0, 120.0, 150.0])
    cp = np.where(K < F, -1, 1)
    ref = _ql_cev(F, alpha, beta, r, K, days, cp)
    got = forward_dupire(_cev_lv(sigma, beta), fw, [T], K).price(K, T, cp)
    iv_ref = implied_vol(ref, F, K, T, cp, fw.D(T))
    iv_got = implied_vol(got, F, K, T, cp, fw.D(T))
    assert np.max(np.abs(iv_got - iv_ref)) * 1e4 < 0.5


def test_mc_matches_quantlib_cev_within_3_se_plus_shrinking_bias():
    """MUST HOLD (issue 6): r = q = 0, local vol sigma S^(beta - 1), QuantLib's analytic CEV prices."""
    _setup()
    S0, sigma, beta, days = 100.0, 2.0, 0.5, 365
    T = 1.0
    fw = Forwards.from_rates(S0, 0.0, 0.0, [T])
    K = np.array([70.0, 85.0, 100.0, 115.0, 130.0])
    cp = np.where(K < 100, -1, 1)
    ref = _ql_cev(S0, sigma, beta, 0.0, K, days, cp)
    lv = _cev_lv(sigma, beta)
    runs = {n: mc_european(lv, fw, K, T, cp, n_paths=100_000, n_steps=n, seed=21) for n in (4, 16, 64)}
    err = {n: np.abs(r.price - ref) for n, r in runs.items()}
    assert err[4].max() > err[16].max() > err[64].max()
    bias64 = err[16] / 4 + 3 * runs[16].stderr / 4  # weak order 1
    assert np.all(err[64] <= 3 * runs[64].stderr + bias64), (err[64], runs[64].stderr, bias64)


@pytest.mark.parametrize("kind", BARRIER_KINDS)
@pytest.mark.parametrize("cp", [1, -1])
def test_reiner_rubinstein_matches_quantlib(kind, cp):
    _setup()
    S, r, q, sig, days = 100.0, 0.04, 0.015, 0.3, 292
    T = days / 365.0
    proc = ql.BlackScholesMertonProcess(ql.QuoteHandle(ql.SimpleQuote(S)), _flat(q), _flat(r),
                                        ql.BlackVolTermStructureHandle(ql.BlackConstantVol(TODAY, ql.NullCalendar(), sig, DC)))
    btype = {"up-and-out": ql.Barrier.UpOut, "up-and-in": ql.Barrier.UpIn,
             "down-and-out": ql.Barrier.DownOut, "down-and-in": ql.Barrier.DownIn}[kind]
    for K in (85.0, 100.0, 115.0):
        for H in ((110.0, 130.0) if kind.startswith("up") else (75.0, 92.0)):
            opt = ql.BarrierOption(btype, H, 0.0, ql.PlainVanillaPayoff(ql.Option.Call if cp > 0 else ql.Option.Put, K),
                                   ql.EuropeanExercise(TODAY + days))
            opt.setPricingEngine(ql.AnalyticBarrierEngine(proc))
            ours = float(barrier_price_bs(S, K, H, T, r, q, sig, kind, cp))
            assert ours == pytest.approx(opt.NPV(), rel=1e-9, abs=1e-10)


def ql_fd_local_vol_prices(lv, S0, r, q, strikes, expiries_days, cp, *, t_grid=100, x_grid=200, n_K=1600, n_T=100,
                           mesher_vol=0.35):
    """QuantLib's backward FD engine under a FixedLocalVolSurface tabulated from ``lv`` (dense grid: QuantLib
    interpolates it linearly). ``mesher_vol``: the Black vol QuantLib sizes its space grid with."""
    _setup()
    T_max = max(expiries_days) / 365.0
    times = np.r_[1e-4, np.geomspace(1.0 / 365.0, T_max * 1.05, n_T - 1)]
    Ks = S0 * np.exp(np.linspace(-2.5, 1.5, n_K))
    mat = np.asarray(lv(Ks[:, None], times[None, :]), float)  # (nK, nT), QuantLib's layout
    surf = ql.FixedLocalVolSurface(TODAY, [float(t) for t in times], [float(k) for k in Ks], ql.Matrix(mat.tolist()), DC)
    proc = ql.GeneralizedBlackScholesProcess(
        ql.QuoteHandle(ql.SimpleQuote(S0)), _flat(q), _flat(r),
        ql.BlackVolTermStructureHandle(ql.BlackConstantVol(TODAY, ql.NullCalendar(), mesher_vol, DC)),
        ql.LocalVolTermStructureHandle(surf))
    eng = ql.FdBlackScholesVanillaEngine(proc, t_grid, x_grid, 0, ql.FdmSchemeDesc.Douglas(), True)
    out = []
    for K, d, c in zip(strikes, expiries_days, cp, strict=True):
        o = ql.VanillaOption(ql.PlainVanillaPayoff(ql.Option.Call if c > 0 else ql.Option.Put, float(K)),
                             ql.EuropeanExercise(TODAY + int(d)))
        o.setPricingEngine(eng)
        out.append(o.NPV())
    return np.array(out)


@pytest.mark.slow
def test_forward_pde_agrees_with_quantlib_fd_under_ssvi_local_vol():
    """Same exact SSVI local vol, two solvers (ours forward in T, QuantLib's backward per option): both
    reprice the SSVI implied vols; ours within 2 bp, QuantLib's within its own grid error."""
    ssvi = SSVISurface(rho=-0.7, eta=1.0, gamma=0.4, theta_curve=ThetaParametric(0.04, 0.06, 2.0))
    S0, r, q = 100.0, 0.03, 0.01
    days = np.array([30, 91, 182, 365, 730])
    T = days / 365.0
    fw = Forwards.from_rates(S0, r, q, T)

    def lv(K, t):
        t = np.maximum(np.asarray(t, float), T_MIN)
        return np.clip(ssvi_local_vol_reference(ssvi, np.log(np.asarray(K, float) / fw.F(t)), t), 0.01, 5.0)

    m = np.array([0.8, 0.9, 1.0, 1.1, 1.2])
    TT, MM = np.meshgrid(T, m, indexing="ij")
    DD = np.broadcast_to(days[:, None], TT.shape)
    K = (MM * fw.F(TT)).ravel()
    cp = np.where(MM.ravel() >= 1, 1, -1)
    exact = ssvi.implied_vol(np.log(MM), TT).ravel()
    ours = forward_dupire(lv, fw, T, K).price(K, TT.ravel(), cp)
    theirs = ql_fd_local_vol_prices(lv, S0, r, q, K, DD.ravel(), cp, t_grid=200, x_grid=400)
    F, D = fw.F(TT.ravel()), fw.D(TT.ravel())
    e_ours = np.abs(implied_vol(ours, F, K, TT.ravel(), cp, D) - exact) * 1e4
    e_ql = np.abs(implied_vol(theirs, F, K, TT.ravel(), cp, D) - exact) * 1e4
    assert e_ours.max() <= 2.0
    assert e_ql.max() <= 30.0  # QuantLib with a tabulated local vol: a sanity bound, not a target
    assert e_ours.max() < e_ql.max()
