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

from core.cleaning import use_mask
from core.errors import ConvergenceWarning, FitError, InputError
from core.quotes import expiry_keys
from core.surface.base import SliceData, VolSurface, check_arbitrage
from core.surface.essvi import fit_essvi_surface
from core.surface.smooth import fit_smooth_surface
from core.surface.ssvi_fit import fit_ssvi_surface
from core.surface.svi_fit import fit_svi_surface
from core.surface.tensor import fit_spline_surface

#: the fitters, one per model, each beside its model: ``fitter(SliceData, smoothing) -> ModelFit``; the keys are
#: the surface methods' names (the one list of them: ``core.pipeline`` adds the price-based local-vol methods)
FITTERS = {"spline": fit_spline_surface, "ssvi": fit_ssvi_surface, "essvi": fit_essvi_surface,
           "svi": fit_svi_surface, "smooth": fit_smooth_surface}
METHODS = tuple(FITTERS)
WEIGHTS = ("vega-spread", "vega", "uniform")
REQUIRED = ("expiry", "T", "strike", "y", "iv_mid")
MIN_QUOTES_PER_SLICE = 3
MIN_QUOTES = 5
LOW_INSIDE_SHARE = 0.8      # an expiry with at least LOW_INSIDE_MIN_QUOTES quotes fitted inside less often
LOW_INSIDE_MIN_QUOTES = 20  # than this is named in the warnings, with the reason


@dataclass(frozen=True)
class FitSpec:
    """How to fit the surface, validated once: ``method`` (a key of ``FITTERS``), ``smoothing`` in [0, 1]
    (0 follows the quotes as closely as arbitrage allows, 1 is strongly regularised; module docstring), ``weights``
    (one of ``WEIGHTS``). Frozen and hashable: it keys the dashboard's cached fit."""

    method: str = "spline"
    smoothing: float = 0.0
    weights: str = "vega-spread"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        try:
            s = float(self.smoothing)
        except (TypeError, ValueError):
            raise InputError(f"smoothing must be a number in [0, 1], got {self.smoothing!r}") from None
        if not (0.0 <= s <= 1.0):
            raise InputError(f"smoothing must be in [0, 1] (0 = follow quotes, 1 = smoothest), got {self.smoothing!r}")
        object.__setattr__(self, "smoothing", s)
        if self.weights not in WEIGHTS:
            raise InputError(f"weights must be one of {list(WEIGHTS)}, got {self.weights!r}")


@dataclass(frozen=True)
class SurfaceFit:
    """A fitted implied-vol surface with its diagnostics.

    ``surface``: ``VolSurface`` (analytic ``derivatives``); ``method``, ``smoothing``; ``params``: expiry
    (ISO date) -> JSON-able parameter dict; ``residuals``: one row per used quote (``expiry, expiry_key, T,
    strike, cp, y, iv_mid, iv_bid, iv_ask, iv_fit, resid_bp, inside, weight, fit_weight``: ``weight`` the quote's
    least-squares weight, ``fit_weight`` the model's factor on it in its final solve); ``rmse_bp`` / ``inside_share``: expiry ->
    float; ``seconds``: fit time; ``warnings``: messages; ``failed_expiries``: "expiry: reason" strings;
    ``global_params``: surface-wide parameters (SSVI ``rho, eta, gamma``); ``arbitrage``: counts of grid
    points with ``g < 0`` / ``w_T < 0`` inside the quoted range; ``forwards``: the forwards used.
    """

    surface: VolSurface
    method: str
    smoothing: float
    params: dict
    residuals: pd.DataFrame
    rmse_bp: dict = field(default_factory=dict)
    inside_share: dict = field(default_factory=dict)
    seconds: float = 0.0
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


def _why_outside(key: str, resid_bp, half_bp, share: float, z, inside) -> str:
    """A sentence naming an expiry whose fit misses its bid/ask often, why, and where the missed quotes are
    (``z = y / (iv sqrt T)``: standard deviations from the forward; put wing ``z < -1``, near the money, call wing
    ``z > 1``; ``inside`` the quotes' mask). The level is off when the missed quotes near the money are most of
    the misses and sit on one side (80%): the surface's term structure is smoother than this expiry's level (an
    event or a weekend between neighbouring expiries); otherwise the smile's shape is finer than the model."""
    resid_bp, half_bp = np.asarray(resid_bp, float), np.asarray(half_bp, float)
    out = ~np.asarray(inside, bool)
    zo, ro = np.asarray(z, float)[out], resid_bp[out]
    ok = np.isfinite(half_bp) & (half_bp > 0)
    hb = float(np.median(half_bp[ok])) if ok.any() else float("nan")
    near = np.abs(zo) <= 1
    head = f"{key}: {share:.0%} of {len(resid_bp)} quotes inside bid/ask"
    where = (f"; of the {zo.size} outside, {int(np.sum(zo < -1))} in the put wing (over one standard deviation "
             f"below the forward), {int(near.sum())} near the money, {int(np.sum(zo > 1))} in the call wing")
    if near.sum() >= 0.5 * max(zo.size, 1) and near.any():
        up = float(np.mean(ro[near] > 0))
        if max(up, 1 - up) >= 0.8:
            med = float(np.median(ro[near]))
            return (f"{head}: near the money the fit is {abs(med):.0f} bp {'above' if med > 0 else 'below'} the "
                    f"quotes it misses (median half spread {hb:.0f} bp): this expiry's level is off the smooth term "
                    f"structure of its neighbours (an event or a weekend between expiries){where}")
    return (f"{head}: the smile's shape is finer than the model follows (median residual "
            f"{float(np.median(resid_bp)):+.0f} bp, median half spread {hb:.0f} bp){where}")


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
        q = q[use_mask(q)]
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


def fit_surface(quotes: pd.DataFrame, forwards=None, *, method: str = FitSpec.method,
                smoothing: float = FitSpec.smoothing, weights: str = FitSpec.weights,
                spec: FitSpec | None = None) -> SurfaceFit:
    """Fit an arbitrage-free implied-vol surface to the usable quotes.

    ``quotes``: DataFrame with ``expiry, T, strike, y, iv_mid`` (and ``cp, iv_bid, iv_ask, use``); rows
    with ``use`` False or a non-finite / non-positive ``iv_mid`` are ignored (counted in the warnings).
    ``forwards``: ``core.forwards.Forwards`` (kept for ``implied_vol_at(K, T)``; also gives ``y`` when the
    column is absent). ``method``: a key of ``FITTERS`` (default ``FitSpec``'s); ``smoothing`` in [0, 1]; ``weights``:
    ``"vega-spread" | "vega" | "uniform"`` (module docstring); ``spec``: a ``FitSpec`` instead of the three
    (it wins when given). Returns ``SurfaceFit``.
    Raises ``InputError`` for malformed arguments and ``FitError`` when fewer than ``MIN_QUOTES`` quotes
    or no expiry with ``MIN_QUOTES_PER_SLICE`` quotes remain. Optimiser trouble warns
    (``ConvergenceWarning``) and is recorded in ``warnings``.
    """
    t0 = time.perf_counter()
    spec = spec if spec is not None else FitSpec(method=method, smoothing=smoothing, weights=weights)
    method, s, weights = spec.method, spec.smoothing, spec.weights
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

    data = SliceData(keys=tuple(keys), T=Tn, y=y, iv=iv, weight=wt, idx=idx, y_lo=y_lo, y_hi=y_hi,
                     bid=q["iv_bid"].to_numpy(float), ask=q["iv_ask"].to_numpy(float))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = FITTERS[method](data, s)
    surface, params, gparams = model.surface, model.params, model.global_params
    notes.extend(model.notes)
    failed.extend(model.failed)
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
        "fit_weight": np.ones(len(y)) if model.fit_weight is None else np.asarray(model.fit_weight, float),
    })
    rmse, share = {}, {}
    for i, k in enumerate(keys):
        m = idx == i
        if k in params:
            rmse[k] = float(np.sqrt(np.mean(res["resid_bp"].to_numpy()[m] ** 2)))
            share[k] = float(np.mean(inside[m]))
            if m.sum() >= LOW_INSIDE_MIN_QUOTES and share[k] < LOW_INSIDE_SHARE:
                z = y[m] / (iv[m] * np.sqrt(Tn[i]))
                notes.append(_why_outside(k, res["resid_bp"].to_numpy()[m], 0.5e4 * (hi_b - lo_b)[m], share[k],
                                          z=z, inside=inside[m]))
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
