"""Fit an arbitrage-free implied-vol surface to quotes: ``fit_surface`` and its result ``SurfaceFit``.

Methods (one module each): ``"ssvi"`` whole-surface power-law SSVI (``core.surface.ssvi_fit``),
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
from core.surface.base import VolSurface, butterfly_g

METHODS = ("ssvi", "svi", "smooth")
WEIGHTS = ("vega-spread", "vega", "uniform")
REQUIRED = ("expiry", "T", "strike", "y", "iv_mid")
MIN_QUOTES_PER_SLICE = 3
MIN_QUOTES = 5


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
    if pd.api.types.is_datetime64_any_dtype(q["expiry"]):
        q["_key"] = q["expiry"].dt.strftime("%Y-%m-%d")
    else:
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
    column is absent). ``method``: ``"ssvi" | "svi" | "smooth"``; ``smoothing`` in [0, 1]; ``weights``:
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


def svi_surface(slices, T_nodes, y_lo, y_hi) -> VolSurface:
    """The surface of fitted SVI slices: a ``SliceSurface`` of the slices when none has a spline correction,
    else ``CorrectedSliceSurface`` (the backbones' ``SliceSurface`` plus the corrections, linear in ``T``)."""
    from core.surface.interp import SliceSurface
    from core.surface.svi import CorrectedSliceSurface, SVISplineSlice

    base = [sl.base if isinstance(sl, SVISplineSlice) else sl for sl in slices]
    back = SliceSurface(T_nodes=tuple(T_nodes), slices=tuple(base), y_lo=tuple(y_lo), y_hi=tuple(y_hi))
    corr = [sl if isinstance(sl, SVISplineSlice) else None for sl in slices]
    if not any(c is not None for c in corr):
        return back
    return CorrectedSliceSurface(back, T_nodes, corr)


def _drop_corrections_where_arbitrage(slices, T_ok, lo_ok, hi_ok, grids, notes, max_rounds: int = 8):
    """The spline corrections are checked slice by slice, but the surface between expiries comes from the
    T-interpolation: where ``check_arbitrage`` finds ``g < 0`` or ``w_T < 0`` at or between expiries, the
    corrections of the expiries around it are removed (the SVI backbone stays, lifted above the previous
    slice if needed) until the surface is clean or no correction is left."""
    from core.surface.svi import SVISplineSlice, _lift

    slices = list(slices)
    orig = list(slices)
    for _ in range(max_rounds):
        surf = svi_surface(slices, T_ok, lo_ok, hi_ok)
        arb = check_arbitrage(surf, T_ok)
        if not (arb["butterfly"] or arb["calendar"]):
            break
        bad_T = np.array(arb["butterfly_T"] + arb["calendar_T"], float)
        Tn = np.asarray(T_ok)
        drop = set()
        for t in bad_T:
            k = int(np.searchsorted(Tn, t - 1e-9))
            drop.update(j for j in (k - 1, k) if 0 <= j < len(slices))
        drop = [j for j in sorted(drop) if isinstance(slices[j], SVISplineSlice)]
        if not drop:
            break
        for j in drop:
            sl = slices[j]
            if max(abs(c) for c in sl.coef) * 2 ** 4 <= max(abs(c) for c in orig[j].coef):
                slices[j] = sl.base
                notes.append(f"T={T_ok[j]:.4f}: SVI spline correction removed (static arbitrage in the T-interpolation)")
            else:
                slices[j] = SVISplineSlice(sl.base, sl.knots, tuple(0.5 * c for c in sl.coef))
        # keep calendar order after removals: lift any slice that now dips below its predecessor
        for j in range(1, len(slices)):
            yf = np.linspace(grids[j][0], grids[j][-1], 20 * len(grids[j]))
            gap = float(np.max(slices[j - 1].derivs(yf)[0] - slices[j].derivs(yf)[0]))
            if gap > 0:
                slices[j] = _lift(slices[j], gap + 1e-10)
    return slices


def _fit_svi(keys, Tn, y, iv, wt, idx, s, y_lo, y_hi, failed, notes, ask=None, bid=None):
    from core.surface.ssvi_fit import fit_ssvi
    from core.surface.svi import SVISlice, fit_svi_slice

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            pre = fit_ssvi(Tn, y, iv, wt, idx, smoothing=s, y_lo=y_lo, y_hi=y_hi)
    except (ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
        pre = None
        notes.append(f"SSVI pre-fit failed ({exc}); SVI slices start from the quasi-explicit guess")
    # Slices are fitted in increasing T, each above the previous one (calendar penalty on the union of
    # their y-ranges) and below the next expiry's ask total variances at that expiry's quotes (``cap``):
    # without the cap a short slice's extrapolated wing can rise where a longer slice is quoted and
    # push that slice out of its bid/ask band. Crossings left over are removed by lifting.
    slices, T_ok, lo_ok, hi_ok, infos, grids, keys_ok = [], [], [], [], [], [], []
    bid_b = np.full(len(y), np.nan) if bid is None else np.asarray(bid, float)
    ask_b = np.full(len(y), np.nan) if ask is None else np.asarray(ask, float)
    ask = np.full(len(y), np.inf) if ask is None else np.where(np.isfinite(ask), ask, np.inf)
    w_cap = ask**2 * Tn[idx]
    prev = None
    for i, k in enumerate(keys):
        m = idx == i
        prior = None
        if pre is not None:
            th = float(pre.surface.theta_curve.theta(Tn[i]))
            prior = SVISlice.from_ssvi(th, pre.rho, float(pre.surface.phi(th)))
        lo = min(y_lo[i], lo_ok[-1]) if lo_ok else y_lo[i]
        hi = max(y_hi[i], hi_ok[-1]) if hi_ok else y_hi[i]
        grid = _grid(lo, hi, n=121)
        cap = None
        if i + 1 < len(keys):
            mc = (idx == i + 1) & np.isfinite(w_cap)
            cap = (y[mc], w_cap[mc]) if mc.any() else None
        try:
            sl, info = fit_svi_slice(y[m], iv[m], wt[m], float(Tn[i]), y_grid=grid, start=prior, prev=prev,
                                     cap=cap, prior=prior, smoothing=s, band=(bid_b[m], ask_b[m]))
        except (ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
            failed.append(f"{k}: SVI fit failed ({exc})")
            continue
        slices.append(sl)
        infos.append(info)
        grids.append(grid)
        keys_ok.append(k)
        T_ok.append(float(Tn[i]))
        lo_ok.append(float(y_lo[i]))
        hi_ok.append(float(y_hi[i]))
        prev = sl
    if not slices:
        raise FitError("no expiry could be fitted with SVI: " + "; ".join(failed))
    slices = _drop_corrections_where_arbitrage(slices, T_ok, lo_ok, hi_ok, grids, notes)
    params = {}
    for k, sl, info, T, g in zip(keys_ok, slices, infos, T_ok, grids, strict=False):
        if info.lifted > 0:
            notes.append(f"{k}: SVI level lifted by {info.lifted:.2e} in total variance to stay above the previous expiry")
        params[k] = {"T": T, **sl.to_dict(), "g_min": float(np.min(sl.g(np.linspace(g[0], g[-1], 2001)))),
                     "start": info.start, "nfev": info.nfev, "success": info.success}
    surf = svi_surface(slices, T_ok, lo_ok, hi_ok)
    g = {"ssvi_prefit": {"rho": pre.rho, "eta": pre.eta, "gamma": pre.gamma} if pre is not None else None}
    return surf, params, g
