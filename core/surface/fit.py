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
        "expiry": q["expiry"].to_numpy(), "T": q["T"].to_numpy(float), "strike": q["strike"].to_numpy(float),
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
    arbitrage between ordered slices) and evaluated in one stacked expression (``core.surface.svi.SVIStack``)."""
    from core.surface.interp import SliceSurface

    return SliceSurface(T_nodes=tuple(T_nodes), slices=tuple(slices), y_lo=tuple(y_lo), y_hi=tuple(y_hi))


def _drop_corrections_where_arbitrage(slices, T_ok, lo_ok, hi_ok, grids, notes, max_rounds: int = 4):
    """Last resort for the ``T``-interpolation: each slice is butterfly-free and above the previous one, but
    between expiries ``g`` comes from the interpolation. Where ``check_arbitrage`` still finds ``g < 0`` or
    ``w_T < 0``, the spline corrections of the two expiries around it are halved (and after ``max_rounds``
    halvings removed: the SVI backbone stays), each slice lifted above the previous one where that made it
    dip below, until the surface is clean. Each change is named in ``notes``. Returns the slices."""
    from core.surface.svi import SVISplineSlice, _lift

    slices = list(slices)
    for r in range(max_rounds + 1):
        surf = svi_surface(slices, T_ok, lo_ok, hi_ok)
        arb = check_arbitrage(surf, T_ok)
        if not (arb["butterfly"] or arb["calendar"]):
            break
        Tn = np.asarray(T_ok)
        drop = set()
        for t in arb["butterfly_T"] + arb["calendar_T"]:
            k = int(np.searchsorted(Tn, t - 1e-9))
            drop.update(j for j in (k - 1, k) if 0 <= j < len(slices))
        drop = [j for j in sorted(drop) if isinstance(slices[j], SVISplineSlice)]
        if not drop:
            break
        for j in drop:
            sl = slices[j]
            if r == max_rounds:
                slices[j] = sl.base
                notes.append(f"T={T_ok[j]:.4f}: SVI spline correction removed (static arbitrage in the T-interpolation)")
            else:
                slices[j] = SVISplineSlice(sl.base, sl.knots, tuple(0.5 * c for c in sl.coef))
                notes.append(f"T={T_ok[j]:.4f}: SVI spline correction halved (static arbitrage in the T-interpolation)")
        # keep calendar order after the changes: lift any slice that now dips below its predecessor
        for j in range(1, len(slices)):
            yf = np.linspace(grids[j][0], grids[j][-1], 20 * len(grids[j]))
            gap = float(np.max(slices[j - 1].derivs(yf)[0] - slices[j].derivs(yf)[0]))
            if gap > 0:
                slices[j] = _lift(slices[j], gap + 1e-12)
    return slices


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
SVI_CAL_EXT = 0.02         # the calendar condition is held on the union of two neighbours' ranges, widened by this
SVI_BOUND_POINTS = 30      # bound points per side beyond a slice's quotes, geometric in the distance ...
SVI_BOUND_NEAR = 0.05      # ... beyond every envelope grid point this close to the quotes
SVI_POOR_SHARE = 0.8       # an expiry with SVI_POOR_MIN quotes or more and a smaller share inside is named
SVI_POOR_MIN = 20
_SVI_SKIP_DROP = True


def _fit_svi(keys, Tn, y, iv, wt, idx, s, y_lo, y_hi, failed, notes, ask=None, bid=None):
    """The ``"svi"`` method (``core.surface.svi``): slices in increasing ``T``, each aimed at its quotes'
    bid/ask intersected with the calendar envelope of the other expiries' quotes (``calendar_envelope``),
    bounded by that envelope beyond its own quotes, above the previous slice on the union of their ranges
    and at far points (ordered wings), butterfly-free; joined by ``svi_surface``."""
    from core.surface.svi import SVISlice, calendar_envelope, fit_svi_slice

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
    slices, T_ok, lo_ok, hi_ok, infos, grids, keys_ok, clashes = [], [], [], [], [], [], [], []
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
        # beyond the slice's quotes: the envelope as soft bounds (at most SVI_BOUND_POINTS a side)
        bounds = None
        sel = _bound_points(Y, y_lo[i], y_hi[i], np.isfinite(L[i]) | np.isfinite(U[i]))
        if len(sel):
            bounds = (Y[sel], L[i][sel], U[i][sel])
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
        guesses = ()
        if prev is not None:
            # the previous expiry's backbone, scaled to this T: the natural start of a neighbour
            b = getattr(prev, "base", prev)
            r = T / T_ok[-1]
            guesses = (("previous", SVISlice(a=b.a * r, b=b.b * r, rho=b.rho, m=b.m, sigma=b.sigma)),)
        try:
            sl, info = fit_svi_slice(yk, iv[m], wt[m], T, y_grid=grid, start=prior, prev=prev, prior=prior,
                                     smoothing=s, band=(lo_e, hi_e), bounds=bounds, guesses=guesses,
                                     support=support, cal_range=(lo - SVI_CAL_EXT * (hi - lo), hi + SVI_CAL_EXT * (hi - lo)))
        except (ValueError, FloatingPointError, np.linalg.LinAlgError, InputError) as exc:
            failed.append(f"{k}: SVI fit failed ({exc})")
            continue
        slices.append(sl)
        infos.append(info)
        grids.append(grid)
        keys_ok.append(k)
        T_ok.append(T)
        lo_ok.append(float(y_lo[i]))
        hi_ok.append(float(y_hi[i]))
        clashes.append((i, int(clash.sum())))
        prev = sl
    if not slices:
        raise FitError("no expiry could be fitted with SVI: " + "; ".join(failed))
    if not _SVI_SKIP_DROP:
        slices = _drop_corrections_where_arbitrage(slices, T_ok, lo_ok, hi_ok, grids, notes)
    params = {}
    for k, sl, info, T, g, (i, n_clash) in zip(keys_ok, slices, infos, T_ok, grids, clashes, strict=True):
        if info.lifted > 1e-9:
            notes.append(f"{k}: SVI level lifted by {info.lifted:.2e} in total variance to stay above the previous expiry")
        params[k] = {"T": T, **sl.to_dict(), "g_min": float(np.min(sl.g(np.linspace(g[0], g[-1], 2001)))),
                     "start": info.start, "nfev": info.nfev, "success": info.success}
        # an expiry the fit cannot hold inside its quotes is named, with the reason found
        m = idx == i
        if m.sum() >= SVI_POOR_MIN:
            v = np.sqrt(np.maximum(sl.w(y[m]), 0.0) / T)
            inside = (v >= np.nan_to_num(bid_b[m], nan=0.0) - 1e-12) & (v <= np.nan_to_num(ask_b[m], nan=np.inf) + 1e-12)
            if inside.mean() < SVI_POOR_SHARE:
                why = (f"{n_clash} of its quotes are outside the bid/ask of neighbouring expiries (calendar "
                       "arbitrage in the quotes)" if n_clash >= 0.1 * m.sum() else
                       "its quotes cannot be followed closer without butterfly or calendar arbitrage")
                notes.append(f"{k}: only {inside.mean():.0%} of {int(m.sum())} quotes inside bid/ask with SVI: {why}")
    surf = svi_surface(slices, T_ok, lo_ok, hi_ok)
    g = {"ssvi_prefit": {"rho": pre.rho, "eta": pre.eta, "gamma": pre.gamma} if pre is not None else None}
    return surf, params, g
