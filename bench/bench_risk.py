"""Risk under local vol (``core.pricing.risk``): a barrier's price and spot Greeks, and its full bucketed vega on a
real SPX chain, side by side with QuantLib's ``FdBlackScholesBarrierEngine(localVol=True)`` on the same inputs.

Market: ``../shared/data/cboe_modern/spx_20240105_close.csv`` when present (else the demo), calibrated with the
default settings; the product an up-and-out call, strike at spot, barrier 115%, at the fitted expiry nearest
six months. QuantLib prices under the calibrated local-vol grid (``LocalVolResult.to_quantlib``) with flat
``r``, ``q`` (the forwards' average rates to expiry), 200 time steps x 301 space nodes, like our default grid.

- price + spot Greeks: ours ``spot_greeks(sticky=False)`` (one backward PDE: price, delta, gamma, theta from its
  grid; local vol read from the (z, t) lattice), and with the sticky-strike and sticky-moneyness rows (four
  more PDEs, local vol recomputed per bump); QuantLib: NPV, delta, gamma of one engine run.
- the same inputs as QuantLib: ours ``price_pde`` under the calibrated grid and flat rates (price, delta, gamma,
  theta), timed beside it.
- bucketed vega: ours ``vega_buckets`` (10 x 9 buckets: linear refit, local vol, backward PDE per bucket, no
  full-refit check); QuantLib's peer cost is 90 reprices of its engine alone (no refit, no local vol): a lower
  bound of what a QuantLib bump-and-reprice would take.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bench.common import best_of, ratio, row
from core.black import black_vega
from core.forwards import Forwards
from core.pipeline import Settings, calibrate, open_source
from core.pricing import backward, risk
from core.pricing.products import Barrier, Vanilla

SPX = Path(__file__).resolve().parents[2] / "shared" / "data" / "cboe_modern" / "spx_20240105_close.csv"
T_GRID, X_GRID = 200, 301
QL_MESH_VOL = 0.5   # QuantLib's mesher width from a Black vol (bench_backward.py says why 0.5)


def _ql_barrier(cal, spot, K, H, T):
    """A callable returning QuantLib's (NPV, delta, gamma) under the calibrated local-vol grid, or an error text."""
    try:
        import QuantLib as ql  # optional peer
    except ImportError as exc:
        return None, f"peer not installed: {exc}"
    days = max(1, int(round(T * 365)))
    fw = cal.prepared.forwards
    r, q = (float(v) for v in fw.rates(T))
    today = ql.Date(5, 1, 2024)
    ql.Settings.instance().evaluationDate = today
    dc = ql.Actual365Fixed()

    def flat(x):
        return ql.YieldTermStructureHandle(ql.FlatForward(today, float(x), dc))

    proc = ql.GeneralizedBlackScholesProcess(
        ql.QuoteHandle(ql.SimpleQuote(spot)), flat(q), flat(r),
        ql.BlackVolTermStructureHandle(ql.BlackConstantVol(today, ql.NullCalendar(), QL_MESH_VOL, dc)),
        ql.LocalVolTermStructureHandle(cal.local_vol.to_quantlib(today, dc)))
    opt = ql.BarrierOption(ql.Barrier.UpOut, H, 0.0, ql.PlainVanillaPayoff(ql.Option.Call, K),
                           ql.EuropeanExercise(today + days))
    opt.setPricingEngine(ql.FdBlackScholesBarrierEngine(proc, T_GRID, X_GRID, 0, ql.FdmSchemeDesc.Douglas(), True))

    def price():
        opt.recalculate()
        return opt.NPV(), opt.delta(), opt.gamma()

    return price, ""


def run(quick: bool = False) -> list[dict]:
    """Barrier price + spot Greeks and full bucketed vega, ours vs QuantLib FD under local vol."""
    chain = open_source([str(SPX)] if SPX.exists() else ["demo"])
    name = "SPX 2024-01-05" if SPX.exists() else "demo market"
    cal = calibrate(chain, Settings())
    fit, fw = cal.fit, cal.prepared.forwards
    spot = float(fw.spot)
    Tn = np.asarray(fit.surface.T_nodes)
    T = float(Tn[np.argmin(np.abs(Tn - 0.5))])
    K, H = float(round(spot)), float(round(1.15 * spot))
    product = Barrier(K, T, H, "up-and-out")
    rep = 3 if quick else 5
    g_s, g = best_of(lambda: risk.spot_greeks(fit.surface, fw, product, clip=cal.settings.clip, sticky=False),
                     repeat=rep)
    gs_s, gs = best_of(lambda: risk.spot_greeks(fit.surface, fw, product, clip=cal.settings.clip), repeat=rep)
    peer, why = _ql_barrier(cal, spot, K, H, T)
    ql_s, ql_v = (best_of(peer, repeat=rep) if peer is not None else (math.nan, (math.nan,) * 3))
    lv = g.row("local vol")
    head = f"up-and-out call K={K:g} H={H:g} T={T:.3f}, {name}"
    rows = [
        row(f"barrier price + spot Greeks ({head})", "seconds", g_s,
            f"QuantLib FdBlackScholesBarrierEngine localVol t{T_GRID} x{X_GRID}", ql_s,
            ratio(g_s, ql_s, higher_is_better=False),
            f"ours: price {lv['price']:.4f} delta {lv['delta']:.5f} gamma {lv['gamma']:.3e} theta {lv['theta']:.2f}; "
            f"QuantLib: {ql_v[0]:.4f} / {ql_v[1]:.5f} / {ql_v[2]:.3e} {why}; target <= 50 ms: "
            f"{'met' if g_s <= 0.05 else 'MISSED'}"),
        row("  ... with sticky-strike and sticky-moneyness deltas", "seconds", gs_s,
            f"QuantLib FD x{X_GRID} (one run)", ql_s, ratio(gs_s, ql_s, higher_is_better=False),
            "five PDEs and four local-vol recomputations; deltas " + ", ".join(
                f"{d}: {v:.4f}" for d, v in gs.table.set_index("dynamics")["delta"].items())),
    ]
    # the same inputs as QuantLib: its local-vol grid (bilinear) and flat rates
    fw_flat = Forwards.from_rates(spot, *(float(x) for x in fw.rates(T)), [T])
    grid_lv = cal.local_vol.interpolator()
    same_s, same = best_of(lambda: backward.price_pde(grid_lv, fw_flat, product), repeat=rep)
    rows.append(row("  ... ours on QuantLib's inputs (the calibrated grid, flat r and q)", "seconds", same_s,
                    f"QuantLib FdBlackScholesBarrierEngine localVol t{T_GRID} x{X_GRID}", ql_s,
                    ratio(same_s, ql_s, higher_is_better=False),
                    f"price {same.price:.4f} delta {same.delta:.5f} gamma {same.gamma:.3e} theta {same.theta:.2f} "
                    f"(QuantLib {ql_v[0]:.4f} / {ql_v[1]:.5f} / {ql_v[2]:.3e})"))
    v_s, v = best_of(lambda: risk.vega_buckets(fit, fw, product, clip=cal.settings.clip, full_check=False),
                     repeat=1 if quick else 2)
    n_b = len(v.buckets)
    rows.append(row(f"bucketed vega, {v.grid.shape[0]} x {v.grid.shape[1]} buckets ({head})", "seconds", v_s,
                    f"{n_b} QuantLib FD reprices alone", n_b * ql_s, ratio(v_s, n_b * ql_s, higher_is_better=False),
                    f"{len(v.buckets)} buckets, {int(v.buckets['n_quotes'].sum())} quotes; parallel {v.parallel:.3f}, "
                    f"sum {v.bucket_sum:.3f}, residual {v.residual:.3f}; timings "
                    + ", ".join(f"{k} {s:.2f} s" for k, s in v.timings.items())
                    + f"; target <= 5 s: {'met' if v_s <= 5.0 else 'MISSED'}"))
    # accuracy of the vega: a vanilla's parallel vega under local vol against Black's at its market vol
    van = Vanilla(float(round(fw.F(T) / 5) * 5), T)
    vv = risk.vega_buckets(fit, fw, van, clip=cal.settings.clip, full_check=False)
    iv = risk.market_vol(fit.surface, fw, van)
    bs = 0.01 * float(black_vega(fw.F(T), van.strike, T, iv, fw.D(T)))
    rows.append(row(f"vanilla parallel vega vs Black at the market vol ({van.label}, {name})", "relative error",
                    abs(vv.parallel / bs - 1), notes=f"local vol {vv.parallel:.4f}, Black {bs:.4f}; buckets sum "
                    f"{vv.bucket_sum:.4f} ({abs(vv.residual / vv.parallel):.1%} off the parallel); target 2% / 5%"))
    return rows


if __name__ == "__main__":
    from bench.common import format_table

    print(format_table(run()))
