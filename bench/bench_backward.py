"""The backward local-vol PDE (``core.pricing.backward``) against QuantLib's FD engines under the same local vol.

Market: the SPX close of 2024-01-05 calibrated by the default pipeline (``../shared/data/cboe_modern``),
or the demo market when the shared data is absent. Both sides read the same clipped local-vol table
(ours through ``LocalVolResult.interpolator()``, bilinear; QuantLib through ``LocalVolResult.to_quantlib``,
a ``FixedLocalVolSurface``, linear in strike and time) and the same flat ``r``, ``q`` (the calibrated
forwards' average rates to the option's expiry). QuantLib's mesher is sized with a 0.5 Black vol
(``QL_MESH_VOL``; its grid is otherwise too narrow for the SPX skew).

- Barrier: an up-and-out call (strike = spot, barrier 1.1 x spot, rebate 0, about 6 months): price, delta and
  gamma at the spot. Ours: ``price_pde`` on the default grid (301 x 200). QuantLib:
  ``FdBlackScholesBarrierEngine(localVol=True)``, Douglas scheme, 200 time steps x 301 space nodes. The
  converged value (ours on a 2401 x 1600 grid; QuantLib's first-order sequence tends to it too) says how
  accurate each is; a third row times our cheapest grid that is as accurate as QuantLib's 200 x 301.
- American strikes: every strike of one expiry (0.8-1.2 x spot; puts below the spot, calls above), early
  exercise. Ours: one ``price_pde_strikes`` call (one grid, many right-hand sides). QuantLib:
  ``FdBlackScholesVanillaEngine(localVol=True)``, one solve per strike, 200 x 301.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bench.common import best_of, ratio, row
from core.forwards import Forwards
from core.pipeline import Settings, calibrate, open_source
from core.pricing.backward import price_pde, price_pde_strikes
from core.pricing.products import Barrier

SPX = Path(__file__).resolve().parents[2] / "shared" / "data" / "cboe_modern" / "spx_20240105_close.csv"
T_GRID, X_GRID = 200, 301
#: QuantLib's FD meshers size their grid from the process' Black vol (ours from the local vol itself): with
#: the ATM vol (about 0.15) QuantLib's grid stops where the SPX downside local vol (0.4-1) still moves
#: prices, and its puts and barriers came out up to 2% too high (measured); 0.5 gives it the reach it needs
QL_MESH_VOL = 0.5


def _market():
    """``(name, lv, lv_result, spot, r, q)`` for a ~6-month expiry of the calibrated market."""
    chain = open_source([str(SPX)] if SPX.exists() else ["demo"])
    cal = calibrate(chain, Settings())
    res = cal.local_vol
    fw = cal.prepared.forwards
    spot = float(fw.spot)
    return ("SPX 2024-01-05" if SPX.exists() else "demo market"), res.interpolator(), res, spot, fw


def _ql_setup(res, spot, r, q, days):
    import QuantLib as ql  # optional peer

    today = ql.Date(5, 1, 2024)
    ql.Settings.instance().evaluationDate = today
    dc = ql.Actual365Fixed()
    flat = lambda x: ql.YieldTermStructureHandle(ql.FlatForward(today, float(x), dc))  # noqa: E731
    proc = ql.GeneralizedBlackScholesProcess(
        ql.QuoteHandle(ql.SimpleQuote(spot)), flat(q), flat(r),
        ql.BlackVolTermStructureHandle(ql.BlackConstantVol(today, ql.NullCalendar(), QL_MESH_VOL, dc)),
        ql.LocalVolTermStructureHandle(res.to_quantlib(today, dc)))
    return ql, today, proc


def _ql_barrier(ql, today, proc, K, H, days, t_grid, x_grid):
    opt = ql.BarrierOption(ql.Barrier.UpOut, H, 0.0, ql.PlainVanillaPayoff(ql.Option.Call, K),
                           ql.EuropeanExercise(today + days))
    opt.setPricingEngine(ql.FdBlackScholesBarrierEngine(proc, t_grid, x_grid, 0, ql.FdmSchemeDesc.Douglas(), True))
    return opt.NPV(), opt.delta(), opt.gamma()


def _barrier_rows(name, lv, res, spot, fwd, quick):
    days = 182
    T = days / 365.0
    r, q = (float(v) for v in fwd.rates(T))
    fw = Forwards.from_rates(spot, r, q, [T])
    K, H = round(spot), round(1.1 * spot)
    product = Barrier(K, T, H, "up-and-out", 1)
    ours_s, ours = best_of(lambda: price_pde(lv, fw, product), repeat=3 if quick else 5)
    head = f"up-and-out call K={K} H={H} T={days}d, {name}"
    try:
        ql, today, proc = _ql_setup(res, spot, r, q, days)
    except ImportError as exc:
        return [row(f"barrier price+delta+gamma ({head})", "seconds", ours_s, "QuantLib FD barrier", math.nan,
                    math.nan, f"peer not installed: {exc}")]
    ql_s, peer = best_of(lambda: _ql_barrier(ql, today, proc, K, H, days, T_GRID, X_GRID), repeat=3 if quick else 5)
    conv = price_pde(lv, fw, product, n_x=1201 if quick else 2401, n_t=800 if quick else 1600)
    peer_fine = _ql_barrier(ql, today, proc, K, H, days, 800, 1200) if not quick else (math.nan,) * 3
    e_ours, e_peer = abs(ours.price - conv.price), abs(peer[0] - conv.price)
    for n_x, n_t in ((101, 60), (151, 100), (201, 130), (301, 200)):  # our cheapest grid as accurate as QuantLib's
        cheap_s, cheap = best_of(lambda n_x=n_x, n_t=n_t: price_pde(lv, fw, product, n_x=n_x, n_t=n_t), repeat=3)
        if abs(cheap.price - conv.price) <= e_peer:
            break
    return [
        row(f"barrier price+delta+gamma ({head})", "seconds", ours_s,
            f"QuantLib FdBlackScholesBarrierEngine localVol t{T_GRID} x{X_GRID}", ql_s,
            ratio(ours_s, ql_s, higher_is_better=False),
            f"same grid size; ours 301x200: price {ours.price:.4f} delta {ours.delta:.5f} gamma {ours.gamma:.3e}; "
            f"QuantLib: {peer[0]:.4f} / {peer[1]:.5f} / {peer[2]:.3e}; converged {conv.price:.4f} / {conv.delta:.5f}"
            f" / {conv.gamma:.3e}; target <= 50 ms: {'met' if ours_s <= 0.05 else 'MISSED'}"),
        row("barrier price error vs converged", "price units", e_ours, f"QuantLib FD t{T_GRID} x{X_GRID}", e_peer,
            ratio(e_ours, e_peer, higher_is_better=False),
            f"converged = ours {conv.n_x}x{conv.n_t} ({conv.price:.4f}; second order); QuantLib's Douglas scheme "
            f"converges at first order" + (f" (t800 x1200: {peer_fine[0]:.4f})" if not quick else "")),
        row("barrier at equal accuracy", "seconds", cheap_s, f"QuantLib FD t{T_GRID} x{X_GRID}", ql_s,
            ratio(cheap_s, ql_s, higher_is_better=False),
            f"ours on {n_x}x{n_t}, the cheapest of our grids with error <= QuantLib's "
            f"({abs(cheap.price - conv.price):.3f} vs {e_peer:.3f})"),
    ]


def _american_rows(name, lv, res, spot, fwd, quick):
    days = 91
    T = days / 365.0
    r, q = (float(v) for v in fwd.rates(T))
    fw = Forwards.from_rates(spot, r, q, [T])
    n = 20 if quick else 100
    K = np.round(spot * np.linspace(0.8, 1.2, n))
    cp = np.where(K >= spot, 1, -1)
    ours_s, (prices, _, _) = best_of(lambda: price_pde_strikes(lv, fw, K, T, cp, american=True),
                                     repeat=3 if quick else 5)
    try:
        ql, today, proc = _ql_setup(res, spot, r, q, days)
    except ImportError as exc:
        return [row(f"American strikes ({n}, one expiry)", "seconds", ours_s, "QuantLib FD", math.nan, math.nan,
                    f"peer not installed: {exc}")]
    engine = ql.FdBlackScholesVanillaEngine(proc, T_GRID, X_GRID, 0, ql.FdmSchemeDesc.Douglas(), True)

    def peer():
        out = np.empty(n)
        for i, (k, c) in enumerate(zip(K, cp, strict=True)):
            opt = ql.VanillaOption(ql.PlainVanillaPayoff(ql.Option.Call if c > 0 else ql.Option.Put, float(k)),
                                   ql.AmericanExercise(today, today + days))
            opt.setPricingEngine(engine)
            out[i] = opt.NPV()
        return out

    ql_s, peer_prices = best_of(peer, repeat=1 if quick else 2)
    conv, _, _ = price_pde_strikes(lv, fw, K, T, cp, american=True, n_x=1201, n_t=800)
    e_ours, e_peer = np.abs(prices - conv).max(), np.abs(peer_prices - conv).max()
    return [row(f"American strikes, {n} of one expiry ({name}, T={days}d)", "seconds", ours_s,
                f"QuantLib FdBlackScholesVanillaEngine localVol, one solve per strike, t{T_GRID} x{X_GRID}", ql_s,
                ratio(ours_s, ql_s, higher_is_better=False),
                f"ours one grid 301x200 for all strikes; max |ours - QuantLib| {np.abs(prices - peer_prices).max():.4f}"
                f" (prices up to {peer_prices.max():.1f})"),
            row("American strikes, max price error vs converged", "price units", e_ours,
                f"QuantLib FD t{T_GRID} x{X_GRID}", e_peer, ratio(e_ours, e_peer, higher_is_better=False),
                "converged = ours on 1201x800 (second order; QuantLib's Douglas + projection is first order)")]


def run(quick: bool = False) -> list[dict]:
    """Barrier price + spot Greeks and vectorised American strikes, ours vs QuantLib FD under local vol."""
    name, lv, res, spot, fwd = _market()
    return _barrier_rows(name, lv, res, spot, fwd, quick) + _american_rows(name, lv, res, spot, fwd, quick)
