"""The ``"svi"`` method's orchestration: raw-SVI slices (``core.surface.svi``) fitted in increasing ``T``, joined
in ``T`` (``core.surface.interp.SliceSurface``), static arbitrage between expiries repaired.

Why each step is there is told in ``core.surface.svi``'s docstring; ``fit_svi_surface`` is the fitter the
dispatcher (``core.surface.fit``) calls.
"""
from __future__ import annotations

import warnings

import numpy as np

from core.errors import ConvergenceWarning, FitError, InputError
from core.surface.base import ModelFit, SliceData, VolSurface, check_arbitrage, penalty_grid
from core.surface.interp import SliceSurface
from core.surface.ssvi_fit import fit_ssvi
from core.surface.svi import LIFT_SEP, SVISlice, calendar_envelope, fit_svi_slice, lift, scaled_slice

SVI_FAR = (0.1, 0.25, 0.5, 1.0, 2.0)   # butterfly points of the SVI backbone beyond the quoted ranges
SVI_CAL_EXT = 0.002        # the calendar condition is held on the union of two neighbours' ranges, widened by this
SVI_BOUND_POINTS = 30      # bound points per side beyond a slice's quotes, geometric in the distance ...
SVI_BOUND_NEAR = 0.05      # ... beyond every envelope grid point this close to the quotes
SVI_BACKTRACK = 1.0        # a slice lifted by more than this many bp of vol has its predecessor refitted below it
SVI_RETRY_LIFT = 5.0       # a slice lifted by more than this many bp of vol is refitted ...
SVI_RETRY_EFFORT = 4       # ... with its iteration budgets this many times larger
SVI_REPAIR_ROUNDS = 3      # refits for static arbitrage left between expiries at most


def svi_surface(slices, T_nodes, y_lo, y_hi) -> VolSurface:
    """The surface of fitted SVI slices (plain or spline-corrected): ``core.surface.interp.SliceSurface`` of the
    full slices, monotone in ``T`` at fixed ``y`` wherever consecutive slices are ordered (no calendar
    arbitrage between ordered slices) and evaluated in one stacked expression (``core.surface.svi.SVIStack``);
    before the first expiry the first slice at fixed ``y / sqrt(T)`` (``short_end="moneyness"``: no butterfly
    arbitrage there, unlike the slice scaled at fixed ``y`` for a steep short-dated skew)."""
    return SliceSurface(T_nodes=tuple(T_nodes), slices=tuple(slices), y_lo=tuple(y_lo), y_hi=tuple(y_hi),
                        short_end="moneyness", check_n_y=121, check_n_sub=0)


def _repair_svi_arbitrage(calls, slices, infos, T_ok, lo_ok, hi_ok, notes, keys=None):
    """The last step of ``fit_svi_surface``: each slice is butterfly-free and above the previous one, but between
    expiries ``g`` comes from the ``T``-interpolation (``core.surface.interp.butterfly_safeguard`` already
    falls back to linear interpolation in ``sqrt(T)``, a blend of the two slices). Where ``check_arbitrage``
    still finds ``g < 0`` or ``w_T < 0`` in an interval (or at an expiry), the later slice is refitted with its
    blends with the previous one held butterfly-free too (``fit_svi_slice(blend=True)``), and the slice after it
    lifted if it now dips below (``SVI_REPAIR_ROUNDS`` rounds at most). Each refit is named in ``notes``.
    Updates ``slices``, ``infos`` and ``calls`` in place; returns the surface."""
    Tn = np.asarray(T_ok)
    surf = svi_surface(slices, T_ok, lo_ok, hi_ok)
    for _ in range(SVI_REPAIR_ROUNDS):
        arb = check_arbitrage(surf, T_ok)
        if not (arb["butterfly"] or arb["calendar"]):
            break
        bad = set()
        for t in arb["butterfly_T"] + arb["calendar_T"]:
            k = int(np.argmin(np.abs(Tn - t)))
            bad.add(k if abs(Tn[k] - t) <= 1e-5 * max(t, 1e-6) else int(np.searchsorted(Tn, t)))
        for j in sorted(b for b in bad if 0 < b < len(slices)):
            args, kw = calls[j]
            kw = {**kw, "prev": slices[j - 1], "blend": True}
            if j + 1 < len(slices):
                # below the next slice where the two are held in calendar order: the refit must not push it
                g1 = np.asarray(calls[j + 1][1]["y_grid"], float)
                c1 = calls[j + 1][1]["cal_range"]
                kw.update(nxt=slices[j + 1], nxt_grid=g1[(g1 >= c1[0]) & (g1 <= c1[1])])
            slices[j], infos[j] = fit_svi_slice(*args, **kw)
            calls[j] = (args, kw)
            name = keys[j] if keys is not None else f"T={T_ok[j]:.4f}"
            notes.append(f"{name}: SVI slice refitted with its blends with the previous expiry held "
                         "butterfly-free (static arbitrage in the T-interpolation)")
            # calendar order with the slices after it: lifted where a slice now dips below its predecessor
            for i in range(j + 1, len(slices)):
                a1, k1 = calls[i]
                yf = np.linspace(*k1["cal_range"], 2001)
                sep = 2.0 * float(np.mean(a1[1])) * float(a1[3]) * LIFT_SEP
                gap = float(np.max(slices[i - 1].w(yf) - slices[i].w(yf)))
                calls[i] = (a1, {**k1, "prev": slices[i - 1]})
                if gap <= -sep:
                    break
                slices[i] = lift(slices[i], gap + sep)
        surf = svi_surface(slices, T_ok, lo_ok, hi_ok)
    return surf


def _interp_nan(x, X, F):
    """Linear interpolation of ``F`` (NaN = undefined) on the increasing grid ``X`` at ``x``: NaN where a
    neighbouring grid value is NaN or ``x`` is outside the grid."""
    x = np.asarray(x, float)
    j = np.clip(np.searchsorted(X, x), 1, len(X) - 1)
    t = (x - X[j - 1]) / (X[j] - X[j - 1])
    v = F[j - 1] + t * (F[j] - F[j - 1])
    return np.where((x >= X[0]) & (x <= X[-1]), v, np.nan)


def _bound_points(Y, lo: float, hi: float, ok) -> np.ndarray:
    """Indices of the envelope grid ``Y`` (where ``ok``) beyond ``[lo, hi]`` used as bound points: every point
    within ``SVI_BOUND_NEAR`` of the range (the neighbouring expiries' quotes matter most there), then
    ``SVI_BOUND_POINTS`` more a side spaced geometrically in the distance."""
    out = []
    for cand, edge in ((np.flatnonzero((Y < lo) & ok), lo), (np.flatnonzero((Y > hi) & ok), hi)):
        if not len(cand):
            continue
        dist = np.abs(Y[cand] - edge)
        pick = cand[dist <= SVI_BOUND_NEAR]
        far = dist > SVI_BOUND_NEAR
        if far.any():
            order = np.argsort(dist[far])
            fc, fd = cand[far][order], dist[far][order]
            marks = SVI_BOUND_NEAR * (fd[-1] / SVI_BOUND_NEAR) ** np.linspace(0.0, 1.0, SVI_BOUND_POINTS)
            pick = np.r_[pick, fc[np.clip(np.searchsorted(fd, marks), 0, len(fd) - 1)]]
        out.append(np.unique(pick))
    return np.concatenate(out) if out else np.zeros(0, dtype=int)


def _svi_backtrack(calls, slices, infos, sl, info, args, kw, prev_range):
    """A slice had to be lifted above the previous one (``info.lifted``): where the previous slice is an
    extrapolation (outside its quoted range ``prev_range``) it is refitted below this slice (``nxt``), then this
    slice again above it. Kept when the lift shrinks. Updates ``slices`` / ``infos`` in place; returns the
    (new) ``(slice, info)``."""
    grid = np.asarray(kw["y_grid"], float)
    c_lo, c_hi = kw["cal_range"]
    pts = grid[(grid >= c_lo) & (grid <= c_hi) & ((grid < prev_range[0]) | (grid > prev_range[1]))]
    if not len(pts):
        return sl, info
    p_args, p_kw = calls[-1]
    p_sl, p_info = fit_svi_slice(*p_args, **{**p_kw, "nxt": lift(sl, -info.lifted), "nxt_grid": pts})
    sl2, info2 = fit_svi_slice(*args, **{**kw, "prev": p_sl})
    if info2.lifted < info.lifted:
        slices[-1], infos[-1] = p_sl, p_info
        calls[-1] = (p_args, {**p_kw, "nxt": lift(sl, -info.lifted), "nxt_grid": pts})
        return sl2, info2
    return sl, info


def fit_svi_surface(data: SliceData, smoothing: float) -> ModelFit:
    """The ``"svi"`` method (``core.surface.svi``, whose docstring gives the why): slices in increasing ``T``,
    each aimed at its quotes' bid/ask intersected with the calendar envelope of the other expiries' quotes
    (``calendar_envelope``), below the later expiries' asks beyond its own quotes, above the previous slice on
    the union of their quoted ranges (its correction reaching over the neighbours' ranges), butterfly-free; the
    PM slice of a date on the AM slice scaled; a slice that had to be lifted by more than ``SVI_RETRY_LIFT`` bp
    refitted with larger budgets, and (``SVI_BACKTRACK``) its predecessor refitted below it where that one is
    an extrapolation; joined by ``svi_surface``; arbitrage left between expiries repaired by
    ``_repair_svi_arbitrage``. Quotes whose band does not meet the envelope (calendar arbitrage in the quotes)
    are counted per expiry in ``notes`` and ``params``; expiries that miss their spreads are named by
    ``fit_surface``."""
    keys, Tn, y, iv, wt, idx, y_lo, y_hi = (data.keys, data.T, data.y, data.iv, data.weight, data.idx, data.y_lo,
                                             data.y_hi)
    s = smoothing
    failed: list[str] = []
    notes: list[str] = []
    n = len(keys)
    pre = None
    if s > 0:
        # the smoothing target (and a start): the SSVI pre-fit; not needed at s = 0
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                pre = fit_ssvi(Tn, y, iv, wt, idx, smoothing=s, y_lo=y_lo, y_hi=y_hi)
        except (ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
            notes.append(f"SSVI pre-fit failed ({exc}); SVI slices are not pulled towards it")
    bid_b = np.where(np.isfinite(data.bid) & (data.bid > 0), data.bid, np.nan)
    ask_b = np.where(np.isfinite(data.ask) & (data.ask > 0), data.ask, np.nan)
    Y, L, U = calendar_envelope(y, Tn[idx], bid_b, ask_b, idx, n)
    slices, T_ok, lo_ok, hi_ok, infos, grids, keys_ok, clashes, calls = [], [], [], [], [], [], [], [], []
    prev = None
    for i, k in enumerate(keys):
        m = idx == i
        T = float(Tn[i])
        yk, bk, ak = y[m], bid_b[m], ask_b[m]
        # the band each quote aims into: its bid/ask within the other expiries' envelope, where they meet
        with np.errstate(invalid="ignore"):
            lo_e = np.fmax(bk, np.sqrt(_interp_nan(yk, Y, L[i]) / T))
            hi_e = np.fmin(ak, np.sqrt(_interp_nan(yk, Y, U[i]) / T))
            clash = lo_e > hi_e
        lo_e, hi_e = np.where(clash, bk, lo_e), np.where(clash, ak, hi_e)
        # beyond the slice's quotes: the later expiries' asks as soft upper bounds (the earlier side is the
        # previous slice itself, a hard lower bound: the earlier bids add nothing there but conflicts)
        bounds = None
        sel = _bound_points(Y, y_lo[i], y_hi[i], np.isfinite(U[i]))
        if len(sel):
            bounds = (Y[sel], np.full(len(sel), np.nan), U[i][sel])
        lo = min(y_lo[i], lo_ok[-1]) if lo_ok else y_lo[i]
        hi = max(y_hi[i], hi_ok[-1]) if hi_ok else y_hi[i]
        # the penalty grid: the union of this and the previous expiry's quoted ranges (where the calendar
        # condition is checked) and a few points beyond (butterfly of the backbone's wings)
        far = np.asarray(SVI_FAR)
        grid = np.r_[lo - 0.05 - far[::-1], penalty_grid(lo, hi, n=121), hi + 0.05 + far]
        # the correction reaches over the neighbours' quoted ranges: where this slice is extrapolated but the
        # calendar condition with them is checked
        nb_ = [j for j in (i - 1, i + 1) if 0 <= j < n]
        support = (min(y_lo[j] for j in [i, *nb_]), max(y_hi[j] for j in [i, *nb_]))
        prior = None
        if pre is not None:
            th = float(pre.surface.theta_curve.theta(T))
            prior = SVISlice.from_ssvi(th, pre.rho, float(pre.surface.phi(th)))
        backbone = None
        if prev is not None and keys_ok and str(keys_ok[-1])[:10] == str(k)[:10]:
            # the PM series of a date whose AM series was just fitted (6.5 hours apart): calendar order holds
            # them within a fraction of their bid/ask, so the PM slice is the AM slice scaled to its T (flat
            # implied vol at fixed y) plus its own correction
            backbone = scaled_slice(prev, T / T_ok[-1])
        guesses = ()
        if prev is not None:
            # the previous expiry's backbone, scaled to this T: the natural start of a neighbour
            b = getattr(prev, "base", prev)
            r = T / T_ok[-1]
            guesses = (("previous", SVISlice(a=b.a * r, b=b.b * r, rho=b.rho, m=b.m, sigma=b.sigma)),)
        cal = (lo - SVI_CAL_EXT * (hi - lo), hi + SVI_CAL_EXT * (hi - lo))
        args = (yk, iv[m], wt[m], T)
        kw = dict(y_grid=grid, start=prior, prev=prev, prior=prior, smoothing=s, band=(lo_e, hi_e), bounds=bounds,
                  guesses=guesses, support=support, cal_range=cal, backbone=backbone)
        try:
            sl, info = fit_svi_slice(*args, **kw)
            w_bp = 2.0 * float(np.mean(iv[m])) * T * 1e-4      # 1 bp of vol in total variance
            if prev is not None and info.lifted > SVI_RETRY_LIFT * w_bp:
                # a slice that had to be lifted by more than a few bp: once more with larger iteration budgets
                sl2, info2 = fit_svi_slice(*args, **kw, effort=SVI_RETRY_EFFORT)
                if info2.lifted < info.lifted:
                    sl, info = sl2, info2
            if prev is not None and backbone is None and info.lifted > SVI_BACKTRACK * w_bp:
                sl, info = _svi_backtrack(calls, slices, infos, sl, info, args, kw,
                                          (lo_ok[-1], hi_ok[-1]))
        except (ValueError, FloatingPointError, np.linalg.LinAlgError, InputError) as exc:
            failed.append(f"{k}: SVI fit failed ({exc})")
            continue
        calls.append((args, kw))
        slices.append(sl)
        infos.append(info)
        grids.append(grid)
        keys_ok.append(k)
        T_ok.append(T)
        lo_ok.append(float(y_lo[i]))
        hi_ok.append(float(y_hi[i]))
        clashes.append(int(clash.sum()))
        prev = sl
    if not slices:
        raise FitError("no expiry could be fitted with SVI: " + "; ".join(failed))
    surf = _repair_svi_arbitrage(calls, slices, infos, T_ok, lo_ok, hi_ok, notes, keys_ok)
    params = {}
    for k, sl, info, T, g, n_clash in zip(keys_ok, slices, infos, T_ok, grids, clashes, strict=True):
        if info.lifted > 1e-9:
            notes.append(f"{k}: SVI level lifted by {info.lifted:.2e} in total variance to stay above the previous expiry")
        if n_clash:
            notes.append(f"{k}: {n_clash} quotes outside the bid/ask of neighbouring expiries (calendar arbitrage in "
                         "the quotes): aimed at their own bid/ask")
        params[k] = {"T": T, **sl.to_dict(), "g_min": float(np.min(sl.g(np.linspace(g[0], g[-1], 2001)))),
                     "start": info.start, "nfev": info.nfev, "success": info.success, "calendar_clashes": n_clash}
    g = {"ssvi_prefit": {"rho": pre.rho, "eta": pre.eta, "gamma": pre.gamma} if pre is not None else None}
    return ModelFit(surface=surf, params=params, global_params=g, notes=tuple(notes), failed=tuple(failed))
