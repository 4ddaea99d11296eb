"""The backward local-vol PDE (core.pricing.backward) against closed forms, QuantLib and itself.

Tolerances come from the scheme's error: second order in space and time, so at the default grid
(301 x 200), for options on S = 100 with a 25% vol over a year, the measured worst errors are 4.2e-4 in
price (vanillas and barriers alike), 2.6e-5 in delta, 1.9e-6 in gamma and 2.8e-4 in theta (per year),
1.2e-5 for digitals; each doubling of both sizes divides them by about 4. The bounds sit 2-4x above.
"""
from __future__ import annotations

import numpy as np
import pytest

from core.errors import InputError
from core.forwards import Forwards
from core.localvol import GridLocalVol, constant_local_vol
from core.pricing.backward import BackwardResult, pde_convergence, price_pde, price_pde_strikes
from core.pricing.products import BARRIER_KINDS, Asian, Barrier, Digital, Vanilla
from tests.reference_barrier import barrier_rr, bs_greeks, digital_cash

S0, SIGMA, T = 100.0, 0.25, 1.0
RATES = [(0.05, 0.02), (0.01, 0.06)]  # r > q and q > r
PRICE_TOL, DELTA_TOL, GAMMA_TOL, THETA_TOL = 1e-3, 1e-4, 5e-6, 1e-3


def _market(r, q, T=T):
    return Forwards.from_rates(S0, r, q, [T]), constant_local_vol(SIGMA)


@pytest.mark.parametrize("r,q", RATES)
@pytest.mark.parametrize("cp", [1, -1])
@pytest.mark.parametrize("K", [80.0, 100.0, 125.0])
def test_european_matches_black_scholes(r, q, cp, K):
    fw, lv = _market(r, q)
    res = price_pde(lv, fw, Vanilla(K, T, cp))
    ref = bs_greeks(S0, K, T, r, q, SIGMA, cp)
    assert isinstance(res, BackwardResult)
    assert res.price == pytest.approx(ref["price"], abs=PRICE_TOL)
    assert res.delta == pytest.approx(ref["delta"], abs=DELTA_TOL)
    assert res.gamma == pytest.approx(ref["gamma"], abs=GAMMA_TOL)
    assert res.theta == pytest.approx(ref["theta"], abs=THETA_TOL)
    assert res.grid.shape == res.values.shape == (301,)
    assert res.values[np.argmin(np.abs(res.grid - S0))] == res.price


@pytest.mark.parametrize("r,q", RATES)
@pytest.mark.parametrize("cp", [1, -1])
def test_digital_matches_closed_form(r, q, cp):
    fw, lv = _market(r, q)
    for K in (90.0, 100.0, 115.0):
        assert price_pde(lv, fw, Digital(K, T, cp)).price == pytest.approx(
            digital_cash(S0, K, T, r, q, SIGMA, cp), abs=5e-5)  # measured 1.2e-5


def _barrier_cases():
    for kind in BARRIER_KINDS:
        H = 120.0 if kind.startswith("up") else 85.0
        for cp in (1, -1):
            for K in (90.0, 110.0):
                for rebate in (0.0, 3.0):
                    yield kind, H, cp, K, rebate


@pytest.mark.parametrize("r,q", RATES)
@pytest.mark.parametrize("kind,H,cp,K,rebate", list(_barrier_cases()))
def test_barrier_matches_reiner_rubinstein(r, q, kind, H, cp, K, rebate):
    fw, lv = _market(r, q)
    res = price_pde(lv, fw, Barrier(K, T, H, kind, cp, rebate))
    assert res.price == pytest.approx(barrier_rr(S0, K, H, T, r, q, SIGMA, kind, cp, rebate), abs=PRICE_TOL)
    e = 1e-3 * S0
    fd = (barrier_rr(S0 + e, K, H, T, r, q, SIGMA, kind, cp, rebate)
          - barrier_rr(S0 - e, K, H, T, r, q, SIGMA, kind, cp, rebate)) / (2 * e)
    assert res.delta == pytest.approx(fd, abs=DELTA_TOL)


def test_barrier_already_hit():
    fw, lv = _market(0.03, 0.01)
    out = price_pde(lv, fw, Barrier(100.0, T, 95.0, "up-and-out", rebate=2.0))
    assert (out.price, out.delta, out.gamma) == (2.0, 0.0, 0.0)
    knocked_in = price_pde(lv, fw, Barrier(100.0, T, 105.0, "down-and-in", cp=-1))
    assert knocked_in.price == pytest.approx(price_pde(lv, fw, Vanilla(100.0, T, -1)).price, abs=1e-12)


@pytest.mark.parametrize("r,q", [(0.03, 0.01), (0.02, 0.02)])
def test_convergence_is_second_order(r, q):
    fw, lv = _market(r, q)
    cases = [(Vanilla(110.0, T, 1), bs_greeks(S0, 110.0, T, r, q, SIGMA, 1)["price"]),
             (Digital(105.0, T, -1), digital_cash(S0, 105.0, T, r, q, SIGMA, -1)),
             (Barrier(100.0, T, 120.0, "up-and-out", -1, 1.0),
              barrier_rr(S0, 100.0, 120.0, T, r, q, SIGMA, "up-and-out", -1, 1.0)),
             (Barrier(90.0, T, 80.0, "down-and-out", 1, 2.0),
              barrier_rr(S0, 90.0, 80.0, T, r, q, SIGMA, "down-and-out", 1, 2.0)),
             (Barrier(105.0, T, 80.0, "down-and-in", -1, 1.0),
              barrier_rr(S0, 105.0, 80.0, T, r, q, SIGMA, "down-and-in", -1, 1.0))]
    for product, ref in cases:
        table = pde_convergence(lv, fw, product, sizes=((101, 60), (201, 120), (401, 240)))
        err = np.abs(table["price"].to_numpy() - ref)
        order = np.log2(err[:-1] / err[1:])
        assert np.all((order > 1.6) & (order < 2.6)), (product.label, err, order)
        assert list(table.columns) == ["n_x", "n_t", "price", "delta", "gamma", "seconds", "change"]


@pytest.mark.parametrize("american", [False, True])
def test_strikes_vectorised_equal_single(american):
    r, q = 0.03, 0.01
    fw, lv = _market(r, q, 0.5)
    K = np.linspace(70.0, 140.0, 15)
    cp = np.where(K >= S0, 1, -1)
    prices, deltas, gammas = price_pde_strikes(lv, fw, K, 0.5, cp, american=american)
    assert prices.shape == deltas.shape == gammas.shape == K.shape
    single = [price_pde(lv, fw, Vanilla(k, 0.5, int(c), american)) for k, c in zip(K, cp, strict=True)]
    # different grids (the single solve puts its strike on a node): equal up to the O(h^2) error
    np.testing.assert_allclose(prices, [s.price for s in single], atol=PRICE_TOL)
    np.testing.assert_allclose(deltas, [s.delta for s in single], atol=DELTA_TOL)
    np.testing.assert_allclose(gammas, [s.gamma for s in single], atol=GAMMA_TOL)
    if not american:
        ref = [bs_greeks(S0, k, 0.5, r, q, SIGMA, int(c))["price"] for k, c in zip(K, cp, strict=True)]
        np.testing.assert_allclose(prices, ref, atol=PRICE_TOL)
    # one column of the vectorised solve is the same solve as on its own
    p1, _, _ = price_pde_strikes(lv, fw, K[3:4], 0.5, cp[3:4], american=american)
    assert p1[0] == pytest.approx(prices[3], abs=1e-3)


def _skewed_lv():
    """A skewed, time-dependent local-vol table (the shape of an equity index's), read bilinearly."""
    Ks, Ts = S0 * np.exp(np.linspace(-2.5, 2.0, 181)), np.linspace(0.0, 1.2, 25)
    y, tt = np.log(Ks / S0)[None, :], Ts[:, None]
    table = np.clip(0.2 - 0.12 * y + 0.1 * y * y, 0.08, 1.0) * (1.0 + 0.2 * np.exp(-3.0 * tt))
    return Ks, Ts, table


def test_strikes_free_of_static_arbitrage_under_skew():
    """European calls across strikes: decreasing, convex, and puts by parity ``C - P = D (F - K)``: exact but
    for the strike's cell, where call and put payoffs are cell averages (measured 7.5e-5 at 301 x 200)."""
    fw = Forwards.from_rates(S0, 0.04, 0.01, [T])
    lv = GridLocalVol(*_skewed_lv())
    K = np.linspace(60.0, 160.0, 41)
    calls, deltas, gammas = price_pde_strikes(lv, fw, K, T, 1)
    puts, _, _ = price_pde_strikes(lv, fw, K, T, -1)
    assert np.all(np.diff(calls) < 0) and np.all(np.diff(calls, 2) > -1e-9)
    np.testing.assert_allclose(calls - puts, fw.D(T) * (fw.F(T) - K), atol=3e-4)
    assert np.all((deltas > 0) & (deltas < 1)) and np.all(gammas > 0)


def test_numpy_path_equals_numba(monkeypatch):
    pytest.importorskip("numba")
    fw, lv = _market(0.04, 0.01)
    K = np.array([80.0, 100.0, 120.0])
    cp = np.array([-1, 1, -1])
    fast = price_pde_strikes(lv, fw, K, T, cp, american=True, n_x=101, n_t=50)
    b_fast = price_pde(lv, fw, Barrier(100.0, T, 80.0, "down-and-in", -1, 2.0), n_x=101, n_t=50)
    monkeypatch.setenv("DUPIRE_DESK_NO_NUMBA", "1")
    slow = price_pde_strikes(lv, fw, K, T, cp, american=True, n_x=101, n_t=50)
    b_slow = price_pde(lv, fw, Barrier(100.0, T, 80.0, "down-and-in", -1, 2.0), n_x=101, n_t=50)
    np.testing.assert_allclose(np.array(fast), np.array(slow), rtol=1e-12, atol=1e-12)
    assert b_fast.price == pytest.approx(b_slow.price, abs=1e-12)
    assert b_fast.theta == pytest.approx(b_slow.theta, abs=1e-10)


def test_american_bounds_and_early_exercise():
    fw, lv = _market(0.06, 0.0)
    eu = price_pde(lv, fw, Vanilla(110.0, T, -1))
    am = price_pde(lv, fw, Vanilla(110.0, T, -1, american=True))
    assert am.price > eu.price + 0.1  # a put with r > 0 is worth exercising early
    assert np.all(am.values >= np.maximum(110.0 - am.grid, 0.0) - 1e-12)
    call = price_pde(lv, fw, Vanilla(110.0, T, 1, american=True))  # q = 0: never exercised early
    assert call.price == pytest.approx(price_pde(lv, fw, Vanilla(110.0, T, 1)).price, abs=1e-9)


def test_time_dependent_local_vol_matches_term_vol():
    """sigma(t) piecewise in time: the price is Black-Scholes with the root-mean-square vol."""
    fw = Forwards.from_rates(S0, 0.03, 0.01, [T])

    def lv(K, t):
        K, t = np.broadcast_arrays(np.asarray(K, float), np.asarray(t, float))
        return 0.15 + 0.2 * t

    rms = np.sqrt(np.mean((0.15 + 0.2 * np.linspace(0, T, 200_001)) ** 2))
    res = price_pde(lv, fw, Vanilla(100.0, T, 1))
    assert res.price == pytest.approx(bs_greeks(S0, 100.0, T, 0.03, 0.01, rms, 1)["price"], abs=PRICE_TOL)


def test_products_validate_their_fields():
    with pytest.raises(InputError, match="strike"):
        Vanilla(-1.0, 1.0)
    with pytest.raises(InputError, match="T"):
        Digital(100.0, 0.0)
    with pytest.raises(InputError, match="cp"):
        Vanilla(100.0, 1.0, cp=0)
    with pytest.raises(InputError, match="kind"):
        Barrier(100.0, 1.0, 120.0, kind="up-and-away")
    with pytest.raises(InputError, match="rebate"):
        Barrier(100.0, 1.0, 120.0, rebate=-1.0)
    with pytest.raises(InputError, match="monitoring"):
        Barrier(100.0, 1.0, 120.0, monitoring="daily")
    with pytest.raises(InputError, match="n_fixings"):
        Asian(100.0, 1.0, n_fixings=0)
    b = Barrier(100.0, 1.0, 120.0, "up-and-in", -1, 2.0)
    assert b.label == "up-and-in put K=100 H=120 T=1 R=2"
    assert b.to_dict()["type"] == "barrier" and b.to_dict()["rebate"] == 2.0
    assert Vanilla(100.0, 0.5, american=True).label.startswith("American call")
    assert Asian(100.0, 1.0).to_dict()["n_fixings"] == 12


def test_bad_inputs_raise():
    fw, lv = _market(0.03, 0.01)
    with pytest.raises(InputError, match="Asian"):
        price_pde(lv, fw, Asian(100.0, 1.0))
    with pytest.raises(InputError, match="n_x"):
        price_pde(lv, fw, Vanilla(100.0, 1.0), n_x=5)
    with pytest.raises(InputError, match="strikes"):
        price_pde_strikes(lv, fw, [100.0, -5.0], 1.0)
    with pytest.raises(InputError, match="local vol"):
        price_pde(lambda K, t: np.full(np.broadcast(K, t).shape, np.nan), fw, Vanilla(100.0, 1.0))


# ------------------------------------------------------------------------------------------ QuantLib
def _ql():
    ql = pytest.importorskip("QuantLib")
    today = ql.Date(1, 3, 2021)
    ql.Settings.instance().evaluationDate = today
    return ql, today, ql.Actual365Fixed()


def _ql_process(ql, today, dc, r, q, sigma=SIGMA):
    flat = lambda x: ql.YieldTermStructureHandle(ql.FlatForward(today, x, dc))  # noqa: E731
    vol = ql.BlackVolTermStructureHandle(ql.BlackConstantVol(today, ql.NullCalendar(), sigma, dc))
    return ql.BlackScholesMertonProcess(ql.QuoteHandle(ql.SimpleQuote(S0)), flat(q), flat(r), vol)


@pytest.mark.quantlib
@pytest.mark.parametrize("r,q", RATES)
def test_barrier_matches_quantlib_analytic(r, q):
    ql, today, dc = _ql()
    proc = _ql_process(ql, today, dc, r, q)
    types = {"up-and-out": ql.Barrier.UpOut, "up-and-in": ql.Barrier.UpIn,
             "down-and-out": ql.Barrier.DownOut, "down-and-in": ql.Barrier.DownIn}
    fw, lv = _market(r, q)
    for kind, H, cp, K, rebate in _barrier_cases():
        opt = ql.BarrierOption(types[kind], H, rebate,
                               ql.PlainVanillaPayoff(ql.Option.Call if cp > 0 else ql.Option.Put, K),
                               ql.EuropeanExercise(today + 365))
        opt.setPricingEngine(ql.AnalyticBarrierEngine(proc))
        ours = price_pde(lv, fw, Barrier(K, T, H, kind, cp, rebate)).price
        assert ours == pytest.approx(opt.NPV(), abs=PRICE_TOL), (kind, cp, K, rebate)


@pytest.mark.quantlib
@pytest.mark.parametrize("r,q", [(0.05, 0.01), (0.01, 0.06)])
def test_american_matches_quantlib_fd(r, q):
    """QuantLib's FD engine on a fine grid (1000 x 1000) is the oracle; ours on 601 x 400. QuantLib's own
    error (first order in time with the American projection) is about 7e-4 there: its prices move that much
    to 2000 x 2000, where ours are within 2e-4. Measured differences: price <= 7e-4, delta <= 2.1e-5,
    gamma <= 1e-6 (prices 3-30)."""
    ql, today, dc = _ql()
    engine = ql.FdBlackScholesVanillaEngine(_ql_process(ql, today, dc, r, q, 0.3), 1000, 1000, 0)
    fw = Forwards.from_rates(S0, r, q, [T])
    lv = constant_local_vol(0.3)
    for cp in (1, -1):
        for K in (90.0, 100.0, 120.0):
            opt = ql.VanillaOption(ql.PlainVanillaPayoff(ql.Option.Call if cp > 0 else ql.Option.Put, K),
                                   ql.AmericanExercise(today, today + 365))
            opt.setPricingEngine(engine)
            ours = price_pde(lv, fw, Vanilla(K, T, cp, american=True), n_x=601, n_t=400)
            assert ours.price == pytest.approx(opt.NPV(), abs=1.5e-3), (cp, K)
            assert ours.delta == pytest.approx(opt.delta(), abs=1e-4), (cp, K)
            assert ours.gamma == pytest.approx(opt.gamma(), abs=1e-5), (cp, K)


@pytest.mark.quantlib
@pytest.mark.parametrize("r,q", [(0.03, 0.03), (0.05, 0.01)])
@pytest.mark.parametrize("beta", [0.5, 1.3])
def test_cev_matches_quantlib_analytic(r, q, beta):
    """QuantLib's CEV is on the forward, ``dF = alpha F^beta dW``: in spot terms the local vol is
    ``alpha (S e^{(r-q)(T-t)})^(beta-1)`` (time dependent unless r = q), with
    ``alpha = sigma0 S0^(1-beta)`` so that ``sigma(S0) = sigma0`` when r = q. Measured: <= 5.2e-4 at 301 x 200."""
    ql, today, dc = _ql()
    fw = Forwards.from_rates(S0, r, q, [T])
    alpha = SIGMA * S0 ** (1.0 - beta)

    def lv(K, t):
        K, t = np.broadcast_arrays(np.asarray(K, float), np.asarray(t, float))
        return alpha * (K * np.exp((r - q) * (T - t))) ** (beta - 1.0)

    engine = ql.AnalyticCEVEngine(S0 * np.exp((r - q) * T), alpha, beta,
                                  ql.YieldTermStructureHandle(ql.FlatForward(today, r, dc)))
    for K in (80.0, 100.0, 125.0):
        for cp in (1, -1):
            opt = ql.VanillaOption(ql.PlainVanillaPayoff(ql.Option.Call if cp > 0 else ql.Option.Put, K),
                                   ql.EuropeanExercise(today + 365))
            opt.setPricingEngine(engine)
            assert price_pde(lv, fw, Vanilla(K, T, cp)).price == pytest.approx(opt.NPV(), abs=1.5e-3), (K, cp)


@pytest.mark.quantlib
def test_skewed_local_vol_matches_quantlib_fd():
    """A skewed, time-dependent local-vol table read by both engines (our GridLocalVol, QuantLib's
    FixedLocalVolSurface: both bilinear). QuantLib's FD (Douglas, first order on these payoffs) on 800 x 1600
    is off its limit by about 1e-3 for vanillas and 4e-3 for the barrier (half its change from 400 x 800);
    measured differences: 8.4e-4 (American put) and 4.3e-3 (barrier)."""
    ql, today, dc = _ql()
    r, q = 0.04, 0.01
    Ks, Ts, table = _skewed_lv()
    lv, fw = GridLocalVol(Ks, Ts, table), Forwards.from_rates(S0, r, q, [T])
    surface = ql.FixedLocalVolSurface(today, [float(t) for t in Ts], [float(k) for k in Ks],
                                      ql.Matrix(np.ascontiguousarray(table.T).tolist()), dc)
    flat = lambda x: ql.YieldTermStructureHandle(ql.FlatForward(today, x, dc))  # noqa: E731
    mesh_vol = ql.BlackVolTermStructureHandle(ql.BlackConstantVol(today, ql.NullCalendar(), 0.35, dc))
    proc = ql.GeneralizedBlackScholesProcess(ql.QuoteHandle(ql.SimpleQuote(S0)), flat(q), flat(r), mesh_vol,
                                             ql.LocalVolTermStructureHandle(surface))
    vanilla_engine = ql.FdBlackScholesVanillaEngine(proc, 800, 1600, 0, ql.FdmSchemeDesc.Douglas(), True)
    for K, cp, american in ((90.0, -1, False), (110.0, 1, False), (100.0, -1, True), (120.0, -1, True)):
        ex = ql.AmericanExercise(today, today + 365) if american else ql.EuropeanExercise(today + 365)
        opt = ql.VanillaOption(ql.PlainVanillaPayoff(ql.Option.Call if cp > 0 else ql.Option.Put, K), ex)
        opt.setPricingEngine(vanilla_engine)
        ours = price_pde(lv, fw, Vanilla(K, T, cp, american), n_x=601, n_t=400)
        assert ours.price == pytest.approx(opt.NPV(), abs=3e-3), (K, cp, american)
        assert ours.delta == pytest.approx(opt.delta(), abs=3e-4), (K, cp, american)
    opt = ql.BarrierOption(ql.Barrier.UpOut, 125.0, 1.0, ql.PlainVanillaPayoff(ql.Option.Call, 95.0),
                           ql.EuropeanExercise(today + 365))
    opt.setPricingEngine(ql.FdBlackScholesBarrierEngine(proc, 800, 1600, 0, ql.FdmSchemeDesc.Douglas(), True))
    ours = price_pde(lv, fw, Barrier(95.0, T, 125.0, "up-and-out", 1, 1.0), n_x=601, n_t=400)
    assert ours.price == pytest.approx(opt.NPV(), abs=8e-3)
    assert ours.delta == pytest.approx(opt.delta(), abs=3e-4)
