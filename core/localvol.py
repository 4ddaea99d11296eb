"""Dupire local volatility: Gatheral's formula, the clip band and its fallback, grids and callables.

The one home of local vol. Gatheral's formula in total implied variance with the surface's analytic
derivatives (Gatheral 2006, eq. 1.10; MATH.md "Dupire"):

    sigma_loc^2(y, T) = w_T / g(y, T),   g = butterfly_g(y, w, w_y, w_yy),   y = ln(K / F_T)

No finite differences: the result is exactly the local vol of the fitted surface. For comparison,
the price-based methods of the user's source documents are kept as selectable alternatives (written
here from their description, with the ``r``/``q`` terms done right, Dupire 1994):

    sigma_loc^2(K, T) = (C_T + (r_T - q_T) K C_K + q_T C) / (1/2 K^2 C_KK)

on Black prices ``C`` built from the surface's implied vols on the output grid, differentiated either
by central finite differences (``"price-fd"``, seed 000) or through a bicubic interpolating spline
(``"price-spline"``, seed 002). ``r_T``, ``q_T`` are the *instantaneous* rate and carry at ``T``
(``-d ln D/dT`` and ``r_T - d ln F/dT``), equal to the constant ``r``, ``q`` of the seeds when rates
are flat; ``Forwards.rates`` gives the averages.

Clip band and fallback (one rule, ``clip_local_vol``; default band ``DEFAULT_CLIP``): local variance
is undefined where ``g <= 0`` (butterfly) or ``w_T < 0`` (calendar) (for the price methods
``C_KK <= 0`` or a negative numerator); there the raw local vol is NaN. The clipped local vol is

    clip(raw, lo, hi)   where raw is finite,
    clip(iv,  lo, hi)   elsewhere (the cell's implied vol stands in, as in the seeds' spline method),
    lo                  where the implied vol is NaN too (nothing is known there; flagged).

Every clipped or undefined cell is flagged in ``LocalVolResult``; the raw value is kept beside the
clipped one. The pricers read local vol through callables ``lv(K, T)`` built here: on a surface
(``local_vol_from_surface``), on a table (``GridLocalVol``, bilinear in ``(K, T)``, flat beyond it),
or constant (``constant_local_vol``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.interpolate import RectBivariateSpline
from scipy.special import ndtr

from core.black import black_price
from core.errors import InputError
from core.surface.base import Derivatives, VolSurface, butterfly_g

METHODS = ("gatheral", "price-fd", "price-spline")
FLAGS = ("clipped_low", "clipped_high", "butterfly", "calendar", "extrapolated")
#: the default clip band ``(lo, hi)`` for local vol, in vol units (2% to 500%): the pipeline's
#: ``Settings``, the command line, the seeds' API and every pricing callable use this one default. The top
#: is wide because the wings of expiries one to three weeks out need local vols of 200-500% to reprice
#: (measured on real SPX and NDX chains: a 200% cap lost 5% of the NDX 2023-05-26 round trip); it is there
#: against blow-ups where the density vanishes, not to shape the surface.
DEFAULT_CLIP = (0.02, 5.0)
#: below this ``T`` (years, about 30 minutes) a pricing callable evaluates the surface at ``T_MIN``:
#: ``w -> 0`` makes Gatheral's formula 0/0 at ``T = 0``, and one half-hour of variance is immaterial
T_MIN = 1.0 / (365.0 * 48.0)
_SQRT_2PI = np.sqrt(2.0 * np.pi)


def check_clip(clip) -> tuple[float, float]:
    """The clip band as floats ``(lo, hi)``; ``InputError`` unless ``0 <= lo < hi < inf`` (vol units)."""
    try:
        lo, hi = (float(c) for c in clip)
    except (TypeError, ValueError):
        raise InputError(f"clip band must be a pair (lo, hi) of vols, e.g. (0.05, 1.5) for 5%-150%; "
                         f"got {clip!r}") from None
    if not (0.0 <= lo < hi and math.isfinite(hi)):
        raise InputError(f"clip band must satisfy 0 <= lo < hi < inf (vol units, e.g. (0.05, 1.5)); got {clip!r}")
    return lo, hi


@dataclass(frozen=True)
class LocalVolSpec:
    """How to compute local vol, validated once: ``method`` (one of ``METHODS``), the ``clip`` band ``(lo, hi)``
    (vol units; ``check_clip``) and the display grid's size ``n_strikes`` x ``n_expiries``. Frozen and hashable:
    it keys the dashboard's cached local-vol stages."""

    method: str = "gatheral"
    clip: tuple = DEFAULT_CLIP
    n_strikes: int = 100
    n_expiries: int = 50

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"local-vol method must be one of {METHODS}, got {self.method!r}")
        object.__setattr__(self, "clip", check_clip(self.clip))
        try:
            nk, nt = int(self.n_strikes), int(self.n_expiries)
        except (TypeError, ValueError):
            raise InputError(f"the local-vol grid size must be whole numbers, got {self.n_strikes!r} x "
                             f"{self.n_expiries!r}") from None
        if nk < 5 or nt < 2:
            raise InputError("the local-vol grid needs at least 5 strikes and 2 expiries")
        object.__setattr__(self, "n_strikes", nk)
        object.__setattr__(self, "n_expiries", nt)


def clip_local_vol(raw, iv, clip):
    """The clip-and-fallback rule (module docstring): ``clip(raw)`` where ``raw`` is finite, else
    ``clip(iv)``, else ``lo``. ``raw`` local vol and ``iv`` implied vol broadcast; ``clip`` a checked
    ``(lo, hi)``. Returns an array, finite everywhere."""
    lo, hi = clip
    raw = np.asarray(raw, dtype=float)
    iv = np.asarray(iv, dtype=float)
    stand_in = np.where(np.isnan(iv), lo, iv)
    return np.clip(np.where(np.isfinite(raw), raw, stand_in), lo, hi)


def gatheral_local_variance(y, d: Derivatives):
    """Local variance ``w_T / g(y, T)`` from analytic derivatives (Gatheral 2006, eq. 1.10).

    ``y`` log-moneyness and ``d`` the surface's ``Derivatives`` at ``(y, T)`` (broadcast shapes).
    Returns ``(local_var, g)``; ``local_var`` is NaN where ``g <= 0`` or ``w_T < 0`` (undefined).
    """
    y = np.broadcast_to(np.asarray(y, dtype=float), np.shape(d.w))
    g = butterfly_g(y, d.w, d.w_y, d.w_yy)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.where((g > 0) & (d.w_T >= 0), d.w_T / g, np.nan)
    return var, g


def instantaneous_rates(forwards, T):
    """Instantaneous ``(r_T, q_T)``: ``r = -d ln D/dT``, ``q = r - d ln F/dT`` (central differences
    of the forwards' interpolation; exact for constant rates). ``T`` years, any shape."""
    T = np.asarray(T, dtype=float)
    h = np.maximum(1e-5, 1e-4 * T)
    lo = np.maximum(T - h, 1e-10)
    hi = T + h
    r = -(np.log(forwards.D(hi)) - np.log(forwards.D(lo))) / (hi - lo)
    mu = (np.log(forwards.F(hi)) - np.log(forwards.F(lo))) / (hi - lo)
    return r, r - mu


def _second_diff(C, K):
    """Three-point second derivative in ``K`` on a non-uniform grid (axis 1); edges copy the neighbour."""
    out = np.full(C.shape, np.nan)
    if C.shape[1] < 3:
        return out
    h0 = np.diff(K)[:-1]
    h1 = np.diff(K)[1:]
    out[:, 1:-1] = 2.0 * (h0 * C[:, 2:] - (h0 + h1) * C[:, 1:-1] + h1 * C[:, :-2]) / (h0 * h1 * (h0 + h1))
    out[:, 0], out[:, -1] = out[:, 1], out[:, -2]
    return out


def price_dupire(strikes, T, iv, F, D, r, q, *, method="price-fd"):
    """Dupire in prices on a grid, the naive way of the seeds (kept to show why we do not use it).

    ``strikes`` ``(nK,)``, ``T`` ``(nT,)`` years, ``iv`` ``(nT, nK)`` implied vols, ``F``, ``D``,
    ``r``, ``q`` ``(nT,)`` forward, discount and instantaneous rate / carry per expiry.
    ``method``: ``"price-fd"`` (central differences; ``numpy.gradient`` in ``T`` and ``K``, a
    three-point second difference in ``K``) or ``"price-spline"`` (interpolating bicubic spline
    through the price grid, derivatives of the spline).
    Returns a dict of ``(nT, nK)`` arrays: ``local_var`` (NaN where the density or the numerator is
    negative), ``numerator``, ``denominator`` (``1/2 K^2 C_KK``), ``C``, ``C_T``, ``C_K``, ``C_KK``.
    """
    K = np.asarray(strikes, dtype=float)
    T = np.asarray(T, dtype=float)
    iv = np.asarray(iv, dtype=float)
    F, D, r, q = (np.asarray(a, dtype=float).reshape(-1, 1) for a in (F, D, r, q))
    Kg = K[None, :]
    C = black_price(F, Kg, T[:, None], iv, 1.0, D)
    nT, nK = C.shape
    if method == "price-fd":
        C_T = np.gradient(C, T, axis=0) if nT >= 2 else np.full(C.shape, np.nan)
        C_K = np.gradient(C, K, axis=1) if nK >= 2 else np.full(C.shape, np.nan)
        C_KK = _second_diff(C, K)
    elif method == "price-spline":
        if nT < 2 or nK < 3:
            raise InputError("method='price-spline' needs at least 2 expiries and 3 strikes")
        kx, ky = min(3, nT - 1), min(3, nK - 1)
        sp = RectBivariateSpline(T, K, np.nan_to_num(C), kx=kx, ky=ky, s=0)
        # on the smallest grids (2 expiries, 3 strikes) the spline's degree is the derivative's order, which
        # FITPACK refuses: difference the spline's values there instead
        Cs = sp(T, K)
        C_T = sp(T, K, dx=1) if kx > 1 else np.gradient(Cs, T, axis=0)
        C_K = sp(T, K, dy=1) if ky > 1 else np.gradient(Cs, K, axis=1)
        C_KK = sp(T, K, dy=2) if ky > 2 else _second_diff(Cs, K)
    else:
        raise InputError(f"price_dupire method must be 'price-fd' or 'price-spline', got {method!r}")
    num = C_T + (r - q) * Kg * C_K + q * C
    den = 0.5 * Kg * Kg * C_KK
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.where((den > 0) & (num >= 0), num / den, np.nan)
    return {"local_var": var, "numerator": num, "denominator": den, "C": C, "C_T": C_T, "C_K": C_K, "C_KK": C_KK}


@dataclass(frozen=True, eq=False)
class LocalVolResult:
    """Local vol on a grid of expiries ``T`` ``(nT,)`` x strikes ``K`` ``(nK,)``; arrays ``(nT, nK)``.

    ``y`` log-moneyness ``ln(K/F_T)``; ``iv`` the surface's implied vol; ``local_vol_raw`` the
    unclipped local vol (NaN where undefined); ``local_vol`` clipped into ``clip`` (undefined cells
    fall back to ``iv`` clipped). Flags (bool): ``clipped_low``, ``clipped_high`` (finite raw value
    outside the band), ``butterfly`` (density ``g <= 0``, or ``C_KK <= 0`` for price methods),
    ``calendar`` (``w_T < 0``, or a negative Dupire numerator), ``extrapolated`` (outside the
    quoted expiries or the quoted ``y`` range). ``counts``: cells and count / share per flag.
    ``F``, ``D`` ``(nT,)``; ``call_price``, ``dC_dT`` (at fixed ``K``), ``d2C_dK2`` ``(nT, nK)``.
    """

    T: np.ndarray
    K: np.ndarray
    y: np.ndarray
    iv: np.ndarray
    local_vol: np.ndarray
    local_vol_raw: np.ndarray
    clipped_low: np.ndarray
    clipped_high: np.ndarray
    butterfly: np.ndarray
    calendar: np.ndarray
    extrapolated: np.ndarray
    counts: dict
    method: str
    clip: tuple
    F: np.ndarray = field(default=None, repr=False)
    D: np.ndarray = field(default=None, repr=False)
    call_price: np.ndarray = field(default=None, repr=False)
    dC_dT: np.ndarray = field(default=None, repr=False)
    d2C_dK2: np.ndarray = field(default=None, repr=False)
    seconds: float = 0.0

    def to_frame(self) -> pd.DataFrame:
        """One row per cell: ``T, strike, y, iv, local_vol, local_vol_raw``, the flags, and the seeds'
        export columns ``iv_imp, call_price, dC_dT, d2C_dK2, sigma_loc``."""
        nT, nK = self.y.shape
        TT = np.repeat(self.T, nK)
        KK = np.tile(self.K, nT)
        cols = {"T": TT, "strike": KK, "y": self.y.ravel(), "iv": self.iv.ravel(),
                "local_vol": self.local_vol.ravel(), "local_vol_raw": self.local_vol_raw.ravel()}
        for f in FLAGS:
            cols[f] = getattr(self, f).ravel()
        nan = np.full(nT * nK, np.nan)
        cols.update({
            "iv_imp": self.iv.ravel(),
            "call_price": nan if self.call_price is None else self.call_price.ravel(),
            "dC_dT": nan if self.dC_dT is None else self.dC_dT.ravel(),
            "d2C_dK2": nan if self.d2C_dK2 is None else self.d2C_dK2.ravel(),
            "sigma_loc": self.local_vol.ravel(),
        })
        return pd.DataFrame(cols)

    def interpolator(self, *, raw: bool = False):
        """A fast vectorised ``sigma(K, T)`` on this grid (``GridLocalVol``: bilinear, flat beyond it).

        Uses the clipped ``local_vol`` (finite everywhere) unless ``raw=True``. ``K`` and ``T``
        broadcast (e.g. ``K`` per Monte Carlo path and a scalar ``T``); returns an array.
        """
        return GridLocalVol(self.K, self.T, self.local_vol_raw if raw else self.local_vol)

    def fixed_local_vol_layout(self) -> dict:
        """The grid in QuantLib's ``FixedLocalVolSurface`` layout: ``times`` ``(nT,)``, ``strikes``
        ``(nK,)`` and ``matrix`` ``(nK, nT)`` (rows are strikes, columns are times, as QuantLib checks);
        pass them as ``FixedLocalVolSurface(ref_date, times, strikes, ql.Matrix(matrix.tolist()), dc)``."""
        return {"times": [float(t) for t in self.T], "strikes": [float(k) for k in self.K],
                "matrix": np.ascontiguousarray(self.local_vol.T)}

    def to_quantlib(self, reference_date=None, day_counter=None):
        """A QuantLib ``FixedLocalVolSurface`` of the clipped grid (needs QuantLib; constant extrapolation)."""
        import QuantLib as ql  # optional dependency: only this export needs it

        lay = self.fixed_local_vol_layout()
        ref = reference_date or ql.Settings.instance().evaluationDate
        return ql.FixedLocalVolSurface(ref, lay["times"], lay["strikes"], ql.Matrix(lay["matrix"].tolist()),
                                       day_counter or ql.Actual365Fixed())


@dataclass(frozen=True, eq=False)
class GridLocalVol:
    """Local vol ``sigma(K, T)`` on a table: bilinear in ``(K, T)``, flat (clamped) beyond its edges.

    ``strikes`` ``(nK,)`` strictly increasing (price units), ``T`` ``(nT,)`` non-decreasing (years),
    ``table`` ``(nT, nK)`` with ``table[j, i] = sigma(K_i, T_j)`` (the layout of ``LocalVolResult``;
    NaN cells give NaN nearby). The one grid interpolator of the project: ``LocalVolResult.interpolator``,
    the seeds' tables (``local_vol_from_grid``) and saved calibrations all read local vol through it.
    """

    strikes: np.ndarray
    T: np.ndarray
    table: np.ndarray

    def __post_init__(self) -> None:
        K = np.asarray(self.strikes, dtype=float)
        T = np.asarray(self.T, dtype=float)
        v = np.asarray(self.table, dtype=float)
        if K.ndim != 1 or T.ndim != 1 or K.size == 0 or T.size == 0:
            raise InputError("strikes and T must be non-empty 1-d arrays")
        if v.shape != (T.size, K.size):
            raise InputError(f"the local-vol table must have shape (len(T), len(strikes)) = {(T.size, K.size)}, "
                             f"got {v.shape}")
        if not (np.all(np.isfinite(K)) and np.all(np.isfinite(T))):
            raise InputError("strikes and T must be finite")
        if np.any(np.diff(K) <= 0) or np.any(np.diff(T) < 0):
            raise InputError("strikes must be strictly increasing and T non-decreasing")
        object.__setattr__(self, "strikes", K)
        object.__setattr__(self, "T", T)
        object.__setattr__(self, "table", v)

    def __call__(self, K, T):
        """Local vol at strikes ``K`` and times ``T`` (broadcast arrays; a scalar ``T`` for all ``K`` is
        the Monte Carlo case and takes a fast path)."""
        T = np.asarray(T, dtype=float)
        if T.ndim == 0:
            j0, j1, b = _bracket(self.T, T)
            row = (1.0 - b) * self.table[j0] + b * self.table[j1]
            K = np.asarray(K, dtype=float)
            return np.interp(K, self.strikes, row) if self.strikes.size > 1 else np.full(K.shape, row[0])
        K = np.asarray(K, dtype=float)
        if not (K.ndim == T.ndim == 2 and K.shape[0] == 1 and T.shape[1] == 1):
            # an outer grid (strikes (1, n) x times (m, 1), as a PDE asks) keeps its axes: one search per axis,
            # the gathers below broadcast; anything else is searched point by point
            K, T = np.broadcast_arrays(K, T)
        i0, i1, a = _bracket(self.strikes, K)
        j0, j1, b = _bracket(self.T, T)
        G = self.table
        return (1.0 - b) * ((1.0 - a) * G[j0, i0] + a * G[j0, i1]) + b * ((1.0 - a) * G[j1, i0] + a * G[j1, i1])


def _bracket(nodes: np.ndarray, v):
    """``(i0, i1, t)``: the nodes around ``v`` and the weight of ``i1`` (``v`` clamped to the nodes)."""
    v = np.asarray(v, dtype=float)
    if nodes.size == 1:
        zero = np.zeros(v.shape, dtype=np.intp)
        return zero, zero, np.zeros(v.shape)
    vc = np.clip(v, nodes[0], nodes[-1])
    i = np.clip(np.searchsorted(nodes, vc, side="right") - 1, 0, nodes.size - 2)
    h = nodes[i + 1] - nodes[i]
    t = np.where(h > 0, (vc - nodes[i]) / np.where(h > 0, h, 1.0), 0.0)   # repeated expiries: h = 0
    return i, i + 1, t


def local_vol_from_grid(strikes, expiries, local_vol_surface) -> GridLocalVol:
    """``GridLocalVol`` from a table in the seeds' layout ``local_vol_surface[i, j] = sigma(K_i, T_j)``,
    shape ``(nK, nT)`` (as ``local_vol_mc`` takes it); at least 2 strikes; finite, non-negative values."""
    K = np.asarray(strikes, dtype=float)
    T = np.asarray(expiries, dtype=float)
    v = np.asarray(local_vol_surface, dtype=float)
    if K.ndim != 1 or T.ndim != 1 or v.shape != (K.size, T.size):
        raise InputError(f"local_vol_surface must have shape (len(strikes), len(expiries)) = "
                         f"({K.size}, {T.size}), got {v.shape}")
    if K.size < 2 or T.size < 1:
        raise InputError("a local-vol table needs at least 2 strikes and 1 expiry")
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise InputError("local_vol_surface must be finite and non-negative; fill holes first")
    return GridLocalVol(K, T, v.T)


def _as_grid_axis(name, v):
    a = np.atleast_1d(np.asarray(v, dtype=float))
    if a.ndim != 1 or a.size == 0:
        raise InputError(f"{name} must be a non-empty 1-d array, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise InputError(f"{name} must be positive and finite (years for T, price units for strikes)")
    if a.size > 1 and np.any(np.diff(a) <= 0):
        raise InputError(f"{name} must be strictly increasing")
    return a


def _counts(flags: dict, n: int) -> dict:
    out = {"cells": int(n)}
    any_clip = flags["clipped_low"] | flags["clipped_high"]
    out["clipped"] = int(any_clip.sum())
    for k in FLAGS:
        out[k] = int(flags[k].sum())
    for k in ("clipped",) + FLAGS:
        out[f"{k}_share"] = out[k] / n if n else 0.0
    return out


def local_vol_grid(surface: VolSurface, forwards, strikes, T, *, clip=DEFAULT_CLIP,
                   method="gatheral") -> LocalVolResult:
    """Dupire local vol of ``surface`` on the grid ``T`` ``(nT,)`` years x ``strikes`` ``(nK,)``.

    ``forwards``: a ``core.forwards.Forwards`` (``F(T)``, ``D(T)``; rates for the price methods);
    ``y = ln(K / F(T))`` per cell. ``clip`` ``(lo, hi)``: the band for the clipped ``local_vol``
    (``clip_local_vol``'s rule).
    ``method``: ``"gatheral"`` (analytic, default), ``"price-fd"`` or ``"price-spline"`` (the seeds'
    naive methods; see the module docstring). Returns a ``LocalVolResult`` (arrays ``(nT, nK)``).
    """
    t0 = time.perf_counter()
    spec = LocalVolSpec(method=method, clip=clip)
    K = _as_grid_axis("strikes", strikes)
    T = _as_grid_axis("T", T)
    lo, hi = spec.clip
    F = np.asarray(forwards.F(T), dtype=float)
    D = np.asarray(forwards.D(T), dtype=float)
    Y = np.log(K[None, :] / F[:, None])
    TT = np.broadcast_to(T[:, None], Y.shape)
    d = surface.derivatives(Y, TT)
    w = np.asarray(d.w, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        iv = np.sqrt(np.maximum(w, 0.0) / TT)
    r_i, q_i = instantaneous_rates(forwards, T)
    mu = (r_i - q_i)[:, None]

    # call price and its derivatives from the surface (chain rule through w(y, T), y = ln K - ln F(T))
    sw = np.sqrt(np.maximum(w, 1e-300))
    d1 = -Y / sw + 0.5 * sw
    d2 = d1 - sw
    n_d1 = np.exp(-0.5 * d1 * d1) / _SQRT_2PI
    n_d2 = np.exp(-0.5 * d2 * d2) / _SQRT_2PI
    Fg, Dg, Kg = F[:, None], D[:, None], K[None, :]
    call = Dg * (Fg * ndtr(d1) - Kg * ndtr(d2))
    c_y = -Kg / Fg * ndtr(d2)                    # d(C / DF)/dy at fixed w
    c_w = n_d1 / (2.0 * sw)                      # d(C / DF)/dw at fixed y
    dC_dT = (mu - r_i[:, None]) * call + Dg * Fg * (-mu * c_y + c_w * (d.w_T - mu * d.w_y))

    if method == "gatheral":
        var, g = gatheral_local_variance(Y, d)
        butterfly = ~(g > 0)
        calendar = d.w_T < 0
        with np.errstate(invalid="ignore", divide="ignore"):
            d2C = Dg * n_d2 * g / (Kg * sw)            # Breeden-Litzenberger density times D
    else:
        pr = price_dupire(K, T, iv, F, D, r_i, q_i, method=method)
        var = pr["local_var"]
        butterfly = ~(pr["denominator"] > 0)
        calendar = (pr["numerator"] < 0) & ~butterfly
        call, dC_dT, d2C = pr["C"], pr["C_T"], pr["C_KK"]

    raw = np.sqrt(var)
    finite = np.isfinite(raw)
    clipped_low = finite & (raw < lo)
    clipped_high = finite & (raw > hi)
    local = clip_local_vol(raw, iv, (lo, hi))

    Tq = surface.T_quoted
    ylo, yhi = surface.y_quoted(T)
    ylo, yhi = np.broadcast_to(ylo, T.shape), np.broadcast_to(yhi, T.shape)
    tol = 1e-9
    outside_T = (T < Tq[0] * (1 - tol)) | (T > Tq[1] * (1 + tol))
    extrapolated = outside_T[:, None] | (Y < ylo[:, None] - tol) | (Y > yhi[:, None] + tol)

    flags = {"clipped_low": clipped_low, "clipped_high": clipped_high, "butterfly": np.asarray(butterfly),
             "calendar": np.asarray(calendar), "extrapolated": np.asarray(extrapolated)}
    return LocalVolResult(T=T, K=K, y=Y, iv=iv, local_vol=local, local_vol_raw=raw, counts=_counts(flags, Y.size),
                          method=method, clip=(lo, hi), F=F, D=D, call_price=call, dC_dT=dC_dT, d2C_dK2=d2C,
                          seconds=time.perf_counter() - t0, **flags)


def _raw_and_iv(surface: VolSurface, forwards, K, T):
    """Raw Gatheral local vol (NaN where undefined) and implied vol at broadcast ``(K, T)``."""
    K, T = np.broadcast_arrays(np.asarray(K, dtype=float), np.asarray(T, dtype=float))
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(K / np.asarray(forwards.F(T), dtype=float))
        d = surface.derivatives(y, T)
        var, _ = gatheral_local_variance(y, d)
        iv = np.sqrt(np.maximum(d.w, 0.0) / T)
    return np.sqrt(var), iv


def local_vol_at(surface: VolSurface, forwards, K, T, *, clip=None):
    """Gatheral local vol at scattered points ``(K, T)`` (broadcast arrays; strikes in price units).

    ``clip=None``: the raw value (NaN where undefined). ``clip=(lo, hi)``: ``clip_local_vol``'s rule.
    """
    raw, iv = _raw_and_iv(surface, forwards, K, T)
    return raw if clip is None else clip_local_vol(raw, iv, check_clip(clip))


class SurfaceLocalVol:
    """The pricers' local vol: a vectorised callable ``sigma_loc(K, T)`` of a surface and its forwards.

    Gatheral's formula at ``y = ln(K / F_T)`` with the clip-and-fallback rule (``clip_local_vol``);
    ``T`` below ``T_MIN`` is read at ``T_MIN``. ``n_fallback`` counts the points where local variance
    was undefined and the implied vol stood in, over the callable's life (a diagnostic).
    """

    def __init__(self, surface: VolSurface, forwards, clip=DEFAULT_CLIP):
        self.surface = surface
        self.forwards = forwards
        self.clip = check_clip(clip)
        self.n_fallback = 0

    def __call__(self, K, T):
        raw, iv = _raw_and_iv(self.surface, self.forwards, K, np.maximum(np.asarray(T, dtype=float), T_MIN))
        self.n_fallback += int(np.count_nonzero(~np.isfinite(raw)))
        return clip_local_vol(raw, iv, self.clip)


def local_vol_from_surface(surface: VolSurface, forwards, clip=DEFAULT_CLIP) -> SurfaceLocalVol:
    """Vectorised local vol ``lv(K, T)`` of an implied surface (Gatheral's formula, clipped).

    ``surface`` a ``VolSurface`` (analytic ``w, w_y, w_yy, w_T``); ``forwards`` a ``Forwards``
    (``y = ln(K / F(T))``); ``clip`` ``(lo, hi)`` bounds on ``sigma_loc`` (annualised vol).
    """
    return SurfaceLocalVol(surface, forwards, clip)


def constant_local_vol(sigma: float):
    """``lv(K, T) = sigma`` everywhere (Black-Scholes as a local-vol model)."""
    sigma = float(sigma)
    if not (np.isfinite(sigma) and sigma > 0):
        raise InputError(f"sigma must be positive, got {sigma!r}")

    def lv(K, T):
        K, T = np.broadcast_arrays(np.asarray(K, float), np.asarray(T, float))
        return np.full(K.shape, sigma)

    lv.sigma = sigma
    return lv


def local_vol_y(surface: VolSurface, y, T):
    """Raw Gatheral local vol at log-moneyness ``y`` and ``T`` (broadcast; NaN where undefined)."""
    y, T = np.broadcast_arrays(np.asarray(y, dtype=float), np.asarray(T, dtype=float))
    var, _ = gatheral_local_variance(y, surface.derivatives(y, T))
    return np.sqrt(var)


def rules_of_thumb(surface: VolSurface, T, h: float = 0.01) -> pd.DataFrame:
    """The seed document's rules of thumb at the money, per ``T`` (years, (n,)), from the analytic surface.

    Columns: ``T, atm_iv, atm_lv, rule_lv = sigma_imp + T dsigma_imp/dT`` (``dsigma/dT =
    (w_T/T - w/T^2) / (2 sigma)``), ``iv_skew = dsigma_imp/dy = w_y / (2 sigma T)`` at ``y = 0``,
    ``lv_skew`` (central difference of local vol over ``y = +-h``) and ``skew_ratio = lv_skew / iv_skew``
    (about 2 for short maturities: Gatheral 2006, ch. 3; MATH.md "Known properties").
    """
    T = np.asarray(T, dtype=float)
    zero = np.zeros_like(T)
    d = surface.derivatives(zero, T)
    with np.errstate(divide="ignore", invalid="ignore"):
        iv = np.sqrt(np.maximum(d.w, 0.0) / T)
        div_dT = (d.w_T / T - d.w / T**2) / (2.0 * iv)
        iv_skew = d.w_y / (2.0 * iv * T)
        lv = local_vol_y(surface, zero, T)
        lv_skew = (local_vol_y(surface, zero + h, T) - local_vol_y(surface, zero - h, T)) / (2.0 * h)
        ratio = lv_skew / iv_skew
    return pd.DataFrame({"T": T, "atm_iv": iv, "atm_lv": lv, "rule_lv": iv + T * div_dT,
                         "iv_skew": iv_skew, "lv_skew": lv_skew, "skew_ratio": ratio})
