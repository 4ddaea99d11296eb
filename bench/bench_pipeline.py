"""The whole calibration on the demo chain, and the recompute after a slider move, against QuantLib.

Ours: ``core.pipeline`` on the full demo chain (13 expiries, 3,639 quotes): clean + parity forwards +
implied vols, the surface fit, and Dupire local vol on a 100 x 50 grid with flags and clip; then the
recompute a slider move triggers: a clip change re-runs only the local-vol step, a smoothing change the
fit and the local-vol step. Peer: QuantLib's local vol on the same 100 x 50 grid (``LocalVolSurface``
over a bicubic ``BlackVarianceSurface`` of the fitted implied vols on the quoted expiries and 41
strikes, ``localVol`` per cell): what a QuantLib user pays just for the local-vol evaluation.
"""
from __future__ import annotations

import numpy as np

from bench.bench_localvol import _quantlib_lv
from bench.common import NO_PEER, best_of, ratio, row
from core.demo import demo_chain
from core.pipeline import Settings, fit, grid_axes, local_vol, prepare


def _ql_peer(prep, fr, K, T):
    """QuantLib local vol on the grid (seconds of one evaluation, or None)."""
    import bench.bench_localvol as bl

    exp_T = np.array(sorted(prep.quotes.loc[prep.quotes["use"], "T"].unique()))
    S = float(prep.chain.spot)
    F = prep.forwards.F(exp_T)
    Kq = S * np.linspace(0.6, 1.45, 41)
    iv = fr.surface.implied_vol(np.log(Kq[None, :] / F[:, None]), exp_T[:, None])
    r, q = (float(np.mean(a)) for a in prep.forwards.rates(exp_T))
    saved = bl.DAYS
    try:
        bl.DAYS = np.maximum(np.round(exp_T * 365).astype(int), 1)
        _, evaluate = _quantlib_lv(Kq, iv, S, r, q)
    finally:
        bl.DAYS = saved
    if evaluate is None:
        return None
    t, _ = best_of(lambda: evaluate(K, T), repeat=2)
    return t


def run(quick: bool = False) -> list[dict]:
    """Rows: full pipeline per method; local-vol recompute after a clip change; fit + local vol after a
    smoothing change; each next to QuantLib's local-vol evaluation on the same grid."""
    repeat = 2 if quick else 5
    chain = demo_chain()
    base = Settings(n_strikes=100, n_expiries=50)
    rows = []
    t_prep, prep = best_of(lambda: prepare(chain, base), repeat=repeat)
    fr0 = fit(prep, base)
    K, T = grid_axes(prep, fr0, base)
    t_ql = _ql_peer(prep, fr0, K, T)
    peer = "QuantLib LocalVolSurface (100 x 50, evaluation only)" if t_ql is not None else NO_PEER
    t_ql = t_ql if t_ql is not None else float("nan")
    for method in (("ssvi", "svi", "smooth") if not quick else ("ssvi",)):
        s = Settings(method=method, n_strikes=100, n_expiries=50)
        t_fit, fr = best_of(lambda s=s: fit(prep, s), repeat=repeat)
        t_lv, _ = best_of(lambda s=s, fr=fr: local_vol(prep, fr, s), repeat=repeat)
        total = t_prep + t_fit + t_lv
        rows.append(row(f"calibrate demo chain, method={method}", "ms", total * 1e3, peer, t_ql * 1e3,
                        ratio(total, t_ql, higher_is_better=False),
                        f"prepare {t_prep * 1e3:.0f} ms + fit {t_fit * 1e3:.0f} ms + local vol {t_lv * 1e3:.0f} ms "
                        f"(3,639 quotes, 13 expiries, 100 x 50 grid)"))
    s_clip = Settings(clip=(0.10, 0.60), n_strikes=100, n_expiries=50)
    t_clip, _ = best_of(lambda: local_vol(prep, fr0, s_clip), repeat=repeat * 2)
    rows.append(row("slider: clip band change (local vol only)", "ms", t_clip * 1e3, peer, t_ql * 1e3,
                    ratio(t_clip, t_ql, higher_is_better=False), "target < 100 ms; SSVI fit, 100 x 50 grid"))
    s_sm = Settings(smoothing=0.5, n_strikes=100, n_expiries=50)
    t_sm, _ = best_of(lambda: local_vol(prep, fit(prep, s_sm), s_sm), repeat=repeat)
    rows.append(row("slider: smoothing change (fit + local vol)", "ms", t_sm * 1e3, peer, t_ql * 1e3,
                    ratio(t_sm, t_ql, higher_is_better=False), "SSVI, smoothing 0.5, 100 x 50 grid"))
    return rows
