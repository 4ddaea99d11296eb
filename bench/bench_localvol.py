"""Local vol: speed on a 100 x 50 grid and accuracy on a bare implied-vol grid, against QuantLib and the seeds.

Speed: ``core.localvol.local_vol_grid`` (Gatheral's formula on the analytic derivatives of an SSVI
surface, all cells in one vectorised call, flags and clip included) against QuantLib's
``LocalVolSurface.localVol`` evaluated cell by cell on the same 100 strikes x 50 expiries (QuantLib over
a ``BlackVarianceSurface`` of the same SSVI vols on the user's kind of grid; its cost per call does not
depend much on the input grid). The seeds' price methods (``method="price-fd"`` / ``"price-spline"``)
are timed on the same grid for reference.

Accuracy: the user's kind of grid (strikes every 2.5% of spot from 50% to 150%, 9 expiries from 1 month
to 2 years, SSVI vols of the demo's parameters, r = 3%, q = 1%), local vol between the grid nodes
(60 x 50 points) against the closed-form SSVI local vol, inside 0.7-1.3 forward and T >= 1 month:
ours through the seeds' API (``DupireLocalVol``: SVI per row + monotone cubic in sqrt(T)), the seeds'
finite differences and bicubic price spline (``core.localvol.price_dupire`` on the grid nodes, as the
seeds do), and QuantLib's ``LocalVolSurface`` on a bicubic ``BlackVarianceSurface``.
"""
from __future__ import annotations

import math

import numpy as np

from bench.common import NO_PEER, best_of, format_table, ratio, row
from core.forwards import Forwards
from core.localvol import local_vol_grid, price_dupire
from core.seeds import DupireLocalVol, ImpliedVolSurface, generate_market_surface
from core.surface.ssvi import SSVISurface, ThetaParametric
from tests.reference import ssvi_local_vol_reference

DAYS = np.array([30, 61, 91, 182, 273, 365, 456, 547, 730])
DEMO = dict(rho=-0.65, eta=1.1, gamma=0.4, v0=0.15**2, v_inf=0.20**2, kappa=1.5)


def _market():
    return generate_market_surface(0, r=0.03, q=0.01, maturities=DAYS / 365.0, **DEMO)


def _quantlib_lv(strikes, vols, S, r, q):
    """QuantLib ``LocalVolSurface`` over a bicubic ``BlackVarianceSurface`` (or None without QuantLib)."""
    try:
        import QuantLib as ql
    except ImportError:
        return None, None
    today = ql.Date(15, 6, 2026)
    ql.Settings.instance().evaluationDate = today
    dc = ql.Actual365Fixed()
    mat = ql.Matrix(len(strikes), len(DAYS))
    for i in range(len(strikes)):
        for j in range(len(DAYS)):
            mat[i][j] = float(vols[j, i])
    bvs = ql.BlackVarianceSurface(today, ql.NullCalendar(), [today + int(d) for d in DAYS],
                                  [float(k) for k in strikes], mat, dc)
    bvs.setInterpolation("bicubic")
    bvs.enableExtrapolation()
    lvs = ql.LocalVolSurface(ql.BlackVolTermStructureHandle(bvs), ql.YieldTermStructureHandle(ql.FlatForward(today, r, dc)),
                             ql.YieldTermStructureHandle(ql.FlatForward(today, q, dc)), ql.QuoteHandle(ql.SimpleQuote(S)))
    lvs.enableExtrapolation()

    def evaluate(K, T):
        out = np.full((len(T), len(K)), np.nan)
        f = lvs.localVol
        for i, t in enumerate(T.tolist()):
            for j, k in enumerate(K.tolist()):
                try:
                    out[i, j] = f(t, k, True)
                except RuntimeError:
                    pass
        return out

    return lvs, evaluate


def _err(lv, truth, box):
    e = np.abs(lv - truth)[box] * 1e4
    return float(np.nanmax(e)), float(np.nanmedian(e)), int(np.isnan(e).sum())


def run(quick: bool = False) -> list[dict]:
    """Rows: 100 x 50 local-vol grid time vs QuantLib, and max / median error (bp) of four methods."""
    repeat = 3 if quick else 7
    m = _market()
    K, T, iv, S, r, q = m
    rows = []

    # ---- speed: 100 x 50 grid
    surface = SSVISurface(rho=DEMO["rho"], eta=DEMO["eta"], gamma=DEMO["gamma"],
                          theta_curve=ThetaParametric(DEMO["v0"], DEMO["v_inf"], DEMO["kappa"]))
    fw = Forwards.from_rates(S, r, q, T)
    Kg = S * np.linspace(0.6, 1.45, 100)
    Tg = np.linspace(T[0], T[-1], 50)
    t_ours, res = best_of(lambda: local_vol_grid(surface, fw, Kg, Tg), repeat=repeat)
    _, ql_eval = _quantlib_lv(K, iv, S, r, q)
    if ql_eval is not None:
        t_ql, _ = best_of(lambda: ql_eval(Kg, Tg), repeat=max(1, repeat // 2))
        rows.append(row("local vol, 100 x 50 grid", "ms per grid", t_ours * 1e3, "QuantLib LocalVolSurface",
                        t_ql * 1e3, ratio(t_ours, t_ql, higher_is_better=False),
                        f"ours: SSVI analytic + flags + clip ({res.counts['cells']} cells); "
                        "QuantLib: localVol per cell over a bicubic BlackVarianceSurface"))
    else:
        rows.append(row("local vol, 100 x 50 grid", "ms per grid", t_ours * 1e3, notes="QuantLib not installed"))
    for meth in ("price-fd", "price-spline"):
        t_m, _ = best_of(lambda meth=meth: local_vol_grid(surface, fw, Kg, Tg, method=meth), repeat=repeat)
        rows.append(row(f"local vol, 100 x 50 grid, method={meth}", "ms per grid", t_m * 1e3, NO_PEER, math.nan,
                        math.nan, "the seeds' price-based method, same grid (reference)"))

    # ---- accuracy: bare grid of the user's kind, between the nodes, vs closed-form SSVI
    Kf = S * np.linspace(0.6, 1.45, 60)
    Tf = np.linspace(T[0], T[-1], 50)
    Ff = S * np.exp((r - q) * Tf)
    truth = ssvi_local_vol_reference(m.model, np.log(Kf[None, :] / Ff[:, None]), Tf[:, None])
    box = (Kf[None, :] / Ff[:, None] >= 0.7) & (Kf[None, :] / Ff[:, None] <= 1.3)
    t_fit, dup = best_of(lambda: DupireLocalVol(ImpliedVolSurface(K, T, iv, S, r, q)), repeat=1 if quick else 3)
    o_mx, o_med, _ = _err(dup.local_vol_surface(Kf, Tf), truth, box)
    # the seeds' methods only answer on their own grid nodes
    F = S * np.exp((r - q) * T)
    truth_n = ssvi_local_vol_reference(m.model, np.log(K[None, :] / F[:, None]), T[:, None])
    box_n = (K[None, :] / F[:, None] >= 0.7) & (K[None, :] / F[:, None] <= 1.3)
    naive = {}
    for meth in ("price-fd", "price-spline"):
        pr = price_dupire(K, T, iv, F, np.exp(-r * T), np.full(T.size, r), np.full(T.size, q), method=meth)
        naive[meth] = _err(np.sqrt(pr["local_var"]), truth_n, box_n)
    peers = [("seed 000: price finite differences", naive["price-fd"]),
             ("seed 002: bicubic price spline", naive["price-spline"])]
    if ql_eval is not None:
        peers.append(("QuantLib LocalVolSurface (bicubic BlackVarianceSurface)",
                      _err(ql_eval(Kf, Tf), truth, box)))
    note = ("SSVI bare grid 41 strikes x 9 expiries (1m-2y), box 0.7-1.3 F, T >= 1m, vs closed form; "
            f"ours = DupireLocalVol (fit {t_fit * 1e3:.0f} ms)")
    for name, (p_mx, p_med, n_nan) in peers:
        extra = f"; {n_nan} cells undefined (NaN) for the peer" if n_nan else ""
        rows.append(row("local vol accuracy, bare grid", "max error, bp", o_mx, name, p_mx,
                        ratio(o_mx, p_mx, higher_is_better=False), note + extra))
        rows.append(row("local vol accuracy, bare grid", "median error, bp", o_med, name, p_med,
                        ratio(o_med, p_med, higher_is_better=False), note + extra))
    return rows


if __name__ == "__main__":  # pragma: no cover - manual run
    print(format_table(run(quick=True)))
