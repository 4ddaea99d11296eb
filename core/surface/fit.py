"""Fit an arbitrage-free implied-vol surface to quotes: ``fit_surface`` and its result ``SurfaceFit``.

Methods (one module each): ``"ssvi"`` whole-surface power-law SSVI (``core.surface.ssvi_fit``),
``"essvi"`` eSSVI with a correlation and ATM variance per expiry, free of static arbitrage at every ``T`` by
construction (``core.surface.essvi``),
``"svi"`` raw SVI per expiry with butterfly/calendar penalties plus, where SVI's convex shape cannot follow
the quotes, a compactly supported spline correction (``core.surface.svi``: ``SVISplineSlice``,
``CorrectedSliceSurface``), ``"smooth"``
penalised cubic spline in total variance per expiry (``core.surface.smooth``). SVI and smooth slices
are joined in ``T`` by ``core.surface.interp`` (monotone C1 in total variance at fixed ``y``).

Weights (``weights=``): ``"vega-spread"`` (default) weights each vol residual by ``1 / (iv_ask - iv_bid)``,
i.e. residuals in units of the quote's vol spread; as ``iv_ask - iv_bid ~ (ask - bid) / vega`` this is
vega over price spread. Spreads are floored at ``max(1 bp, 0.25 x median spread)`` so that a few very
tight quotes cannot dominate; a missing bid vol (zero bid) counts as 0. ``"vega"``: residual weight
``vega / vega_ATM`` (Black vega in forward terms); ``"uniform"``: equal weights.

Smoothing ``s`` in [0, 1] (0 = follow the quotes as closely as arbitrage allows, 1 = strongly
regularised): SSVI pulls the ATM term structure towards a parametric ``theta(T)`` (weight ``s/(1-s)``;
at 1 the parametric curve itself); SVI pulls each slice towards the SSVI pre-fit slice (weight
``s/(1-s)``; at 1 the SSVI slices) and sets the curvature penalty of the spline correction to
``10^(-3 + 8 s)`` (``core.surface.svi.correction_lambda``: 0 follows the quotes as closely as the
butterfly/calendar conditions allow; 100 times stiffer per 0.25 of s); smooth sets the spline's curvature
penalty ``log10 lam_rel = (1 - s) log10 lam_0 + s``, ``lam_0`` from the quotes' bid/ask band (1e-8 for a
zero-width band, 1e-5 for a band of 50 bp or more), with robust (Huber, then bisquare) weights that
down-weight absurd quotes (listed in the warnings).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.errors import ConvergenceWarning, FitError, InputError
from core.quotes import expiry_keys
from core.surface.base import VolSurface, butterfly_g
from core.surface.tensor import fit_tensor

METHODS = ("spline", "ssvi", "essvi", "svi", "smooth")
WEIGHTS = ("vega-spread", "vega", "uniform")
REQUIRED = ("expiry", "T", "strike", "y", "iv_mid")
MIN_QUOTES_PER_SLICE = 3
MIN_QUOTES = 5
LOW_INSIDE_SHARE = 0.8      # an expiry with at least LOW_INSIDE_MIN_QUOTES quotes fitted inside less often
LOW_INSIDE_MIN_QUOTES = 20  # than this is named in the warnings, with the reason


@dataclass(frozen=True)
class SurfaceFit:
    """A fitted implied-vol surface with its diagnostics.

    ``surface``: ``VolSurface`` (analytic ``derivatives``); ``method``, ``smoothing``; ``params``: expiry
    (ISO date) -> JSON-able parameter dict; ``residuals``: one row per used quote (``expiry, T, strike, cp,
    y, iv_mid, iv_bid, iv_ask, iv_fit, resid_bp, inside``); ``rmse_bp`` / ``inside_share``: expiry ->
    float; ``seconds``: fit time; ``warnings``: messages; ``failed_expiries``: "expiry: reason" strings;
    ``global_params``: surface-wide parameters (SSVI ``rho, eta, gamma``); ``arbitrage``: counts of grid
    points with ``g < 0`` / ``w_T < 0`` inside the quoted range; ``forwards``: the forwards used.
    """

    surface: VolSurface
    method: str
    smoothing: float
    params: dict
    residuals: pd.DataFrame
    rmse_bp: dict
    inside_share: dict
    seconds: float
    warnings: list = field(default_factory=list)
    failed_expiries: list = field(default_factory=list)
    global_params: dict = field(default_factory=dict)
    arbitrage: dict = field(default_factory=dict)
    forwards: object = None

    def implied_vol_at(self, K, T):
        """Implied vol at strike ``K`` and expiry ``T`` (years), with ``y = ln(K / F(T))`` from ``forwards``."""
        if self.forwards is None:
            raise InputError("this fit has no forwards: use surface.implied_vol(y, T)")
        K, T = np.broadcast_arrays(np.asarray(K, float), np.asarray(T, float))
        return self.surface.implied_vol(np.log(K / self.forwards.F(T)), T)


def _expiry_key(e) -> str:
    try:
        return pd.Timestamp(e).strftime("%Y-%m-%d")
    except (ValueError, TypeError):
        return str(e)


def quote_weights(df: pd.DataFrame, kind: str) -> np.ndarray:
    """Least-squares weights per quote (squared residual weights, mean 1); see the module docstring."""
    n = len(df)
    if kind == "uniform" or n == 0:
        return np.ones(n)
    iv = df["iv_mid"].to_numpy(float)
    if kind == "vega":
        s = iv * np.sqrt(df["T"].to_numpy(float))
        d1 = -df["y"].to_numpy(float) / s + 0.5 * s
        rel = np.exp(-0.5 * d1 * d1)
        wt = np.maximum(rel, 1e-3) ** 2
    else:
        bid = df["iv_bid"].to_numpy(float) if "iv_bid" in df else np.full(n, np.nan)
        ask = df["iv_ask"].to_numpy(float) if "iv_ask" in df else np.full(n, np.nan)
        spread = np.where(np.isfinite(ask), ask, np.nan) - np.where(np.isfinite(bid), bid, 0.0)
        med = np.nanmedian(spread[spread > 0]) if np.any(spread > 0) else np.nan
        if not np.isfinite(med):
            return np.ones(n)
        spread = np.where(np.isfinite(spread) & (spread > 0), spread, 50.0 * med)
        spread = np.clip(spread, max(1e-4, 0.25 * med), 50.0 * med)
        wt = 1.0 / spread**2
    return wt / np.mean(wt)


def _why_outside(key: str, resid_bp, half_bp, share: float) -> str:
    """A sentence naming an expiry whose fit misses its bid/ask often, and why: a level off by more than the
    half spread on average (the surface's term structure is smoother than this expiry's level: an event or a
    weekend between neighbouring expiries), or a smile shape finer than the model."""
    bias = float(np.mean(resid_bp))
    hb = float(np.median(half_bp[np.isfinite(half_bp)])) if np.any(np.isfinite(half_bp)) else float("nan")
    head = f"{key}: {share:.0%} of {len(resid_bp)} quotes inside bid/ask"
    if np.isfinite(hb) and abs(bias) > 0.5 * hb:
        return (f"{head}: the fit is {abs(bias):.0f} bp {'above' if bias > 0 else 'below'} the quotes on average "
                f"(median half spread {hb:.0f} bp): this expiry's level is off the smooth term structure of its "
                "neighbours (an event or a weekend between expiries)")
    return (f"{head}: the level is right on average ({bias:+.0f} bp) but the smile's shape is finer than the model "
            f"follows (median half spread {hb:.0f} bp)")


def _select(quotes: pd.DataFrame, forwards) -> tuple[pd.DataFrame, int]:
    if not isinstance(quotes, pd.DataFrame):
        raise InputError(f"quotes must be a pandas DataFrame, got {type(quotes).__name__}")
    missing = [c for c in REQUIRED if c not in quotes.columns]
    if "y" in missing and forwards is not None and {"strike", "T"} <= set(quotes.columns):
        missing.remove("y")
    if missing:
        raise InputError(f"quotes lack columns {missing}: run core.black.quote_implied_vols first")
    q = quotes
    if "use" in q.columns:
        q = q[q["use"].fillna(False).astype(bool)]
    q = q.copy()
    if "y" not in q.columns:
        q["y"] = np.log(q["strike"].to_numpy(float) / forwards.F(q["T"].to_numpy(float)))
    for c in ("iv_bid", "iv_ask"):
        if c not in q.columns:
            q[c] = np.nan
    if "cp" not in q.columns:
        q["cp"] = np.where(q["y"] >= 0, 1, -1)
    iv, T, y = (pd.to_numeric(q[c], errors="coerce").to_numpy(float) for c in ("iv_mid", "T", "y"))
    ok = np.isfinite(iv) & (iv > 0) & np.isfinite(T) & (T > 0) & np.isfinite(y)
    n_bad = int((~ok).sum())
    q = q[ok].copy()
    # one slice per expiry series: SPX (AM) and SPXW (PM) of one date are two expiries (core.quotes.expiry_key)
    try:
        q["_key"] = expiry_keys(q).to_numpy() if len(q) else []
    except (ValueError, TypeError):
        q["_key"] = [_expiry_key(e) for e in q["expiry"]]
    return q, n_bad


def _grid(lo: float, hi: float, n: int = 81, ext: float = 0.05) -> np.ndarray:
    """Penalty grid: the quoted range ``[lo, hi]`` widened by ``ext`` (log-moneyness) on each side."""
    return np.linspace(lo - ext, hi + ext, n)


def check_arbitrage(surface: VolSurface, T_nodes, n_y: int = 121, n_sub: int = 8) -> dict:
    """Count grid points with ``g < 0`` or ``w_T < 0`` inside the quoted range (expiries, ``n_sub - 1``
    times between consecutive ones and two more close to each end, where blended corrections turn
    fastest; ``n_y`` values of ``y`` across ``y_quoted(T)``)."""
    Tn = np.asarray(T_nodes, float)
    frac = np.unique(np.r_[np.linspace(0.0, 1.0, n_sub + 1)[:-1], 0.04, 0.96])
    Ts = [Tn[0] * np.array([0.25, 0.5, 0.75])] + [a + (b - a) * frac for a, b in zip(Tn[:-1], Tn[1:], strict=True)]
    Tg = np.unique(np.r_[np.concatenate(Ts), Tn])
    lo, hi = surface.y_quoted(Tg)
    lo = np.where(np.isfinite(lo), lo, -1.0)
    hi = np.where(np.isfinite(hi), hi, 1.0)
    u = np.linspace(0.0, 1.0, n_y)
    Y = lo[:, None] + (hi - lo)[:, None] * u[None, :]
    TT = np.broadcast_to(Tg[:, None], Y.shape)
    d = surface.derivatives(Y, TT)
    g = butterfly_g(Y, d.w, d.w_y, d.w_yy)
    bad_g = ~(g >= -1e-10)
    bad_c = ~(d.w_T >= -1e-12)
    return {"points": int(Y.size), "butterfly": int(bad_g.sum()), "calendar": int(bad_c.sum()),
            "g_min": float(np.nanmin(g)), "w_T_min": float(np.nanmin(d.w_T)),
            "butterfly_T": sorted({round(float(t), 5) for t in TT[bad_g]})[:10],
            "calendar_T": sorted({round(float(t), 5) for t in TT[bad_c]})[:10]}


def fit_surface(quotes: pd.DataFrame, forwards=None, *, method: str = "ssvi", smoothing: float = 0.0,
                weights: str = "vega-spread") -> SurfaceFit:
    """Fit an arbitrage-free implied-vol surface to the usable quotes.

    ``quotes``: DataFrame with ``expiry, T, strike, y, iv_mid`` (and ``cp, iv_bid, iv_ask, use``); rows
    with ``use`` False or a non-finite / non-positive ``iv_mid`` are ignored (counted in the warnings).
    ``forwards``: ``core.forwards.Forwards`` (kept for ``implied_vol_at(K, T)``; also gives ``y`` when the
    column is absent). ``method``: ``"ssvi" | "svi" | "smooth" | "essvi"``; ``smoothing`` in [0, 1]; ``weights``:
    ``"vega-spread" | "vega" | "uniform"`` (module docstring). Returns ``SurfaceFit``.
    Raises ``InputError`` for malformed arguments and ``FitError`` when fewer than ``MIN_QUOTES`` quotes
    or no expiry with ``MIN_QUOTES_PER_SLICE`` quotes remain. Optimiser trouble warns
    (``ConvergenceWarning``) and is recorded in ``warnings``.
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise InputError(f"method must be one of {list(METHODS)}, got {method!r}")
    try:
        s = float(smoothing)
    except (TypeError, ValueError):
        raise InputError(f"smoothing must be a number in [0, 1], got {smoothing!r}") from None
    if not (0.0 <= s <= 1.0):
        raise InputError(f"smoothing must be in [0, 1] (0 = follow quotes, 1 = smoothest), got {smoothing!r}")
    if weights not in WEIGHTS:
        raise InputError(f"weights must be one of {list(WEIGHTS)}, got {weights!r}")
    q, n_bad = _select(quotes, forwards)
    notes: list[str] = []
    failed: list[str] = []
    if n_bad:
        notes.append(f"{n_bad} selected quotes without a usable implied vol were ignored")
    if len(q) < MIN_QUOTES:
        raise FitError(f"only {len(q)} usable quotes (need at least {MIN_QUOTES}): widen the quote filters "
                       "or choose more expiries")
    T_by = q.groupby("_key")["T"].median().sort_values()
    keys, T_list = [], []
    for key, T in T_by.items():
        n_k = int((q["_key"] == key).sum())
        if n_k < MIN_QUOTES_PER_SLICE:
            failed.append(f"{key}: only {n_k} usable quotes (need {MIN_QUOTES_PER_SLICE})")
        elif T_list and T - T_list[-1] < 1e-6:
            failed.append(f"{key}: same expiry time as {keys[-1]}")
        else:
            keys.append(key)
            T_list.append(float(T))
    if not keys:
        raise FitError(f"no expiry has {MIN_QUOTES_PER_SLICE} usable quotes: widen the quote filters")
    q = q[q["_key"].isin(keys)].copy()
    pos = {k: i for i, k in enumerate(keys)}
    q["_idx"] = q["_key"].map(pos).astype(int)
    q = q.sort_values(["_idx", "y"])
    Tn = np.array(T_list)
    q["_T"] = Tn[q["_idx"].to_numpy()]
    wt = quote_weights(q.assign(T=q["_T"]), weights)
    y = q["y"].to_numpy(float)
    iv = q["iv_mid"].to_numpy(float)
    idx = q["_idx"].to_numpy(int)
    y_lo = np.array([y[idx == i].min() for i in range(len(keys))])
    y_hi = np.array([y[idx == i].max() for i in range(len(keys))])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if method == "ssvi":
            surface, params, gparams = _fit_ssvi(keys, Tn, y, iv, wt, idx, s, y_lo, y_hi)
        elif method == "essvi":
            surface, params, gparams = _fit_essvi(keys, Tn, y, iv, wt, idx, s, y_lo, y_hi)
        elif method == "spline":
            surface, params, gparams = _fit_spline(keys, Tn, y, iv, wt, idx, s, y_lo, y_hi, notes,
                                                   band=(q["iv_bid"].to_numpy(float), q["iv_ask"].to_numpy(float)))
        elif method == "svi":
            surface, params, gparams = _fit_svi(keys, Tn, y, iv, wt, idx, s, y_lo, y_hi, failed, notes,
                                               ask=q["iv_ask"].to_numpy(float), bid=q["iv_bid"].to_numpy(float))
        else:
            from core.surface.smooth import fit_smooth

            surface, params, gparams = fit_smooth(keys, Tn, y, iv, wt, idx, s, y_lo, y_hi, failed, notes,
                                                  band=(q["iv_bid"].to_numpy(float), q["iv_ask"].to_numpy(float)))
    for wmsg in caught:
        if issubclass(wmsg.category, ConvergenceWarning):
            notes.append(str(wmsg.message))
            warnings.warn(str(wmsg.message), ConvergenceWarning, stacklevel=2)

    iv_fit = surface.implied_vol(y, q["_T"].to_numpy(float))
    bid = q["iv_bid"].to_numpy(float)
    ask = q["iv_ask"].to_numpy(float)
    lo_b = np.where(np.isfinite(bid), bid, 0.0)
    hi_b = np.where(np.isfinite(ask), ask, np.inf)
    inside = (iv_fit >= lo_b - 1e-12) & (iv_fit <= hi_b + 1e-12)
    res = pd.DataFrame({
        "expiry": q["expiry"].to_numpy(), "expiry_key": q["_key"].to_numpy(), "T": q["T"].to_numpy(float), "strike": q["strike"].to_numpy(float),
        "cp": q["cp"].to_numpy(), "y": y, "iv_mid": iv, "iv_bid": bid, "iv_ask": ask, "iv_fit": iv_fit,
        "resid_bp": (iv_fit - iv) * 1e4, "inside": inside, "weight": wt,
    })
    rmse, share = {}, {}
    for i, k in enumerate(keys):
        m = idx == i
        if k in params:
            rmse[k] = float(np.sqrt(np.mean(res["resid_bp"].to_numpy()[m] ** 2)))
            share[k] = float(np.mean(inside[m]))
            if m.sum() >= LOW_INSIDE_MIN_QUOTES and share[k] < LOW_INSIDE_SHARE:
                notes.append(_why_outside(k, res["resid_bp"].to_numpy()[m], 0.5e4 * (hi_b - lo_b)[m], share[k]))
    arb = check_arbitrage(surface, [Tn[i] for i, k in enumerate(keys) if k in params])
    if arb["butterfly"]:
        notes.append(f"butterfly arbitrage: g < 0 at {arb['butterfly']} of {arb['points']} grid points "
                     f"inside the quoted range (min g = {arb['g_min']:.3g}; T = {arb['butterfly_T']})")
    if arb["calendar"]:
        notes.append(f"calendar arbitrage: dw/dT < 0 at {arb['calendar']} of {arb['points']} grid points "
                     f"(min {arb['w_T_min']:.3g}; T = {arb['calendar_T']})")
    return SurfaceFit(surface=surface, method=method, smoothing=s, params=params, residuals=res, rmse_bp=rmse,
                      inside_share=share, seconds=time.perf_counter() - t0, warnings=notes,
                      failed_expiries=failed, global_params=gparams, arbitrage=arb, forwards=forwards)


def _fit_ssvi(keys, Tn, y, iv, wt, idx, s, y_lo, y_hi):
    from core.surface.ssvi_fit import fit_ssvi
    from core.surface.svi import SVISlice

    r = fit_ssvi(Tn, y, iv, wt, idx, smoothing=s, y_lo=y_lo, y_hi=y_hi)
    params = {}
    for i, k in enumerate(keys):
        th = float(r.surface.theta_curve.theta(Tn[i]))
        phi = float(r.surface.phi(th))
        raw = SVISlice.from_ssvi(th, r.rho, phi).to_dict()
        params[k] = {"T": float(Tn[i]), "theta": th, "theta_start": float(r.theta_start[i]), "phi": phi,
                     "rho": r.rho, "eta": r.eta, "gamma": r.gamma, "svi": raw}
    gparams = {"rho": r.rho, "eta": r.eta, "gamma": r.gamma, "T": [float(t) for t in Tn],
               "theta": [float(t) for t in r.thetas], "theta_curve": type(r.surface.theta_curve).__name__,
               "nfev": r.nfev, "success": r.success}
    return r.surface, params, gparams


def _fit_essvi(keys, Tn, y, iv, wt, idx, s, y_lo, y_hi):
    from core.surface.essvi import fit_essvi
    from core.surface.svi import SVISlice

    r = fit_essvi(Tn, y, iv, wt, idx, smoothing=s, y_lo=y_lo, y_hi=y_hi)
    params = {}
    for i, k in enumerate(keys):
        p = r.slice_params(i)
        params[k] = {**p, "theta_start": float(r.theta_start[i]),
                     "svi": SVISlice.from_ssvi(p["theta"], p["rho"], p["phi"]).to_dict()}
    S = r.surface
    gparams = {"T": [float(t) for t in Tn], "theta": [float(t) for t in r.theta], "rho": [float(v) for v in r.rho],
               "psi": [float(v) for v in r.psi], "knots": list(S.lnP.knots), "slopes_P": list(S.lnP.slopes),
               "slopes_M": list(S.lnM.slopes), "lnP0": S.lnP.F0, "lnM0": S.lnM.F0,
               "theta_curve": type(S.theta_curve).__name__, "nfev": r.nfev, "success": r.success,
               "downweighted": r.downweighted, "butterfly_scale": r.butterfly_scale}
    return S, params, gparams


def _fit_spline(keys, Tn, y, iv, wt, idx, s, y_lo, y_hi, notes, band):
    r = fit_tensor(Tn, y, iv, wt, idx, smoothing=s, band=band, y_lo=y_lo, y_hi=y_hi)
    S = r.surface
    atm = S.implied_vol(np.zeros(len(Tn)), Tn)
    params = {k: {"T": float(Tn[i]), "atm_vol": float(atm[i]), "n_quotes": int(np.sum(idx == i)),
                  "downweighted": int(np.sum((idx == i) & (r.robust_weight < 1.0)))} for i, k in enumerate(keys)}
    n_dw = int(np.sum(r.robust_weight < 1.0))
    if n_dw:
        notes.append(f"spline surface down-weights {n_dw} quote(s) far from the rest of the surface "
                     "(more than 4 half bid/ask spreads off)")
    gparams = {**S.to_dict(), "rounds": r.rounds, "arbitrage_left": r.violations}
    return S, params, gparams


def svi_surface(slices, T_nodes, y_lo, y_hi) -> VolSurface:
    """The surface of fitted SVI slices (plain or spline-corrected): ``core.surface.interp.SliceSurface`` of the
    full slices, monotone in ``T`` at fixed ``y`` wherever consecutive slices are ordered (no calendar
    arbitrage between ordered slices) and evaluated in one stacked expression (``core.surface.svi.SVIStack``);
    before the first expiry the first slice at fixed ``y / sqrt(T)`` (``short_end="moneyness"``: no butterfly
    arbitrage there, unlike the slice scaled at fixed ``y`` for a steep short-dated skew)."""
    from core.surface.interp import SliceSurface

    return SliceSurface(T_nodes=tuple(T_nodes), slices=tuple(slices), y_lo=tuple(y_lo), y_hi=tuple(y_hi),
                        short_end="moneyness", check_n_y=121, check_n_sub=0)


def _repair_svi_arbitrage(fit_svi_slice, calls, slices, infos, T_ok, lo_ok, hi_ok, notes, keys=None):
    """The last step of ``_fit_svi``: each slice is butterfly-free and above the previous one, but between
    expiries ``g`` comes from the ``T``-interpolation (``core.surface.interp.butterfly_safeguard`` already
    falls back to linear interpolation in ``sqrt(T)``, a blend of the two slices). Where ``check_arbitrage``
    still finds ``g < 0`` or ``w_T < 0`` in an interval (or at an expiry), the later slice is refitted with its
    blends with the previous one held butterfly-free too (``fit_svi_slice(blend=True)``), and the slice after it
    lifted if it now dips below (``SVI_REPAIR_ROUNDS`` rounds at most). Each refit is named in ``notes``.
    Updates ``slices``, ``infos`` and ``calls`` in place; returns the surface."""
    from core.surface.svi import LIFT_SEP, _lift

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
                slices[i] = _lift(slices[i], gap + sep)
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


SVI_FAR = (0.1, 0.25, 0.5, 1.0, 2.0)   # butterfly points of the SVI backbone beyond the quoted ranges
SVI_CAL_EXT = 0.002        # the calendar condition is held on the union of two neighbours' ranges, widened by this
SVI_BOUND_POINTS = 30      # bound points per side beyond a slice's quotes, geometric in the distance ...
SVI_BOUND_NEAR = 0.05      # ... beyond every envelope grid point this close to the quotes
SVI_BACKTRACK = 1.0        # a slice lifted by more than this many bp of vol has its predecessor refitted below it
SVI_RETRY_LIFT = 5.0       # a slice lifted by more than this many bp of vol is refitted ...
SVI_RETRY_EFFORT = 4       # ... with its iteration budgets this many times larger
SVI_REPAIR_ROUNDS = 3      # refits for static arbitrage left between expiries at most


def _svi_backtrack(fit_svi_slice, calls, slices, infos, sl, info, args, kw, prev_range):
    """A slice had to be lifted above the previous one (``info.lifted``): where the previous slice is an
    extrapolation (outside its quoted range ``prev_range``) it is refitted below this slice (``nxt``), then this
    slice again above it. Kept when the lift shrinks. Updates ``slices`` / ``infos`` in place; returns the
    (new) ``(slice, info)``."""
    from core.surface.svi import _lift

    grid = np.asarray(kw["y_grid"], float)
    c_lo, c_hi = kw["cal_range"]
    pts = grid[(grid >= c_lo) & (grid <= c_hi) & ((grid < prev_range[0]) | (grid > prev_range[1]))]
    if not len(pts):
        return sl, info
    p_args, p_kw = calls[-1]
    p_sl, p_info = fit_svi_slice(*p_args, **{**p_kw, "nxt": _lift(sl, -info.lifted), "nxt_grid": pts})
    sl2, info2 = fit_svi_slice(*args, **{**kw, "prev": p_sl})
    if info2.lifted < info.lifted:
        slices[-1], infos[-1] = p_sl, p_info
        calls[-1] = (p_args, {**p_kw, "nxt": _lift(sl, -info.lifted), "nxt_grid": pts})
        return sl2, info2
    return sl, info


def _fit_svi(keys, Tn, y, iv, wt, idx, s, y_lo, y_hi, failed, notes, ask=None, bid=None):
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
    from core.surface.svi import SVISlice, calendar_envelope, fit_svi_slice, scaled_slice

    n = len(keys)
    pre = None
    if s > 0:
        # the smoothing target (and a start): the SSVI pre-fit; not needed at s = 0
        from core.surface.ssvi_fit import fit_ssvi

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                pre = fit_ssvi(Tn, y, iv, wt, idx, smoothing=s, y_lo=y_lo, y_hi=y_hi)
        except (ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
            notes.append(f"SSVI pre-fit failed ({exc}); SVI slices are not pulled towards it")
    bid_b = np.full(len(y), np.nan) if bid is None else np.asarray(bid, float)
    ask_b = np.full(len(y), np.nan) if ask is None else np.asarray(ask, float)
    bid_b = np.where(np.isfinite(bid_b) & (bid_b > 0), bid_b, np.nan)
    ask_b = np.where(np.isfinite(ask_b) & (ask_b > 0), ask_b, np.nan)
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
        grid = np.r_[lo - 0.05 - far[::-1], _grid(lo, hi, n=121), hi + 0.05 + far]
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
                sl, info = _svi_backtrack(fit_svi_slice, calls, slices, infos, sl, info, args, kw,
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
    surf = _repair_svi_arbitrage(fit_svi_slice, calls, slices, infos, T_ok, lo_ok, hi_ok, notes, keys_ok)
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
    return surf, params, g
