"""The bare-grid path: an implied-vol grid (maturities x strikes, NaN holes allowed) to a smooth
total-variance surface with analytic derivatives (the seeds' ``ImpliedVolSurface`` input).

Two fits of the same grid points, and the better one (``surface_from_grid``):

* **eSSVI, one global fit** (``core.surface.essvi.fit_essvi``, equal weights in vol, no robust weights, no
  term-structure penalty): per row the ATM total variance ``theta_i``, correlation ``rho_i`` and curvature
  ``psi_i``, joined in ``T`` by the construction of ``core.surface.essvi`` (``theta(T)`` the backbone of
  ``core.surface.ssvi_fit.ThetaBackbone``: a mean-reverting parametric ATM term structure plus a spline
  correction; ``ln psi (1 +- rho)`` with piecewise-linear log-slopes in ``ln theta``): free of static
  arbitrage at every ``T`` by construction, ``w_T`` continuous. An SSVI grid is an eSSVI surface, so it is
  recovered to rounding at the rows, and the smooth parametric interpolation in ``T`` follows SSVI's own
  between them: on power-law SSVI grids (``rho`` to -0.9, ATM-variance mean reversion up to 5 per year,
  rising and falling ATM term structures, first row at one month) the local vol is within 8 bp (max) and
  0.2 bp (median) of the closed form inside 0.7-1.3 F, against up to 67 bp / 9 bp for the SVI path alone.
* **SVI per row** (the fallback, for grids no eSSVI surface follows, e.g. CEV smiles or calendar arbitrage
  in the input): a raw SVI slice per maturity row (Gatheral 2004) fitted by ``core.surface.svi.fit_svi_slice``
  (least squares in implied vol, equal weights, butterfly penalty on a grid half a quoted width beyond the
  row): ``w(y) = a + b (rho (y - m) + sqrt((y - m)^2 + sigma^2))``. Between rows: ``core.surface.interp``
  (``TInterp``): at fixed ``y``, a cubic Hermite in ``sqrt(T)`` with the not-a-knot spline slopes, a
  monotonicity filter only where the slopes would make ``w`` decrease between non-decreasing rows (no
  calendar arbitrage is created), and the butterfly safeguard of ``core.surface.interp.butterfly_safeguard``.
  Why ``sqrt(T)``: at fixed ``y != 0`` total variance behaves like a power of ``T`` near the short end (SSVI:
  ``T^(1 - gamma)``), which a cubic in ``T`` follows badly and a cubic in ``sqrt(T)`` well. Extrapolation
  (``core.surface.interp``): before the first row a cubic in ``T`` from ``w = 0`` that starts as flat implied
  vol at fixed ``y`` and meets the first row C1; after the last row ``w`` continues linearly in ``T`` with the
  end slope (clipped at 0); one row: flat implied vol at fixed ``y``; in ``y`` each SVI slice extrapolates
  itself (linear wings, Lee-bounded).

The choice (``ESSVI_SLACK``): eSSVI when its RMSE against the grid, over all points and in the worst row, is
at most 15% above the SVI path's plus 0.1 bp (the SVI rows are not fitted when eSSVI is within 0.1 bp of every
point). Noise in a grid costs both fits alike (RMSE ratio 1.02-1.1 on SSVI grids with 2-20 bp noise, where
eSSVI's local vol is 2-5 times closer to the truth: max 9-34 bp against 20-190 bp at 2-20 bp noise); a smile
shape eSSVI cannot follow shows as a larger ratio (CEV, beta = 1/2: 2.35 bp against 1.7 bp), and the per-row SVI
is kept. ``surface.method`` says which.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from core.errors import ArbitrageWarning, ConvergenceWarning, InputError
from core.forwards import Forwards
from core.surface import svi
from core.surface.base import Derivatives, VolSurface
from core.surface.essvi import fit_essvi
from core.surface.interp import TInterp, butterfly_safeguard, quoted_y_range
from core.surface.svi import SVI_PARAMS, svi_raw

__all__ = ["SVI_PARAMS", "GridSurface", "GridESSVISurface", "fit_grid_row", "surface_from_grid", "svi_raw"]

#: eSSVI is chosen when its RMSE (all points, and worst row) is at most ``(1 + a) x`` SVI's plus ``b`` (vol units)
ESSVI_SLACK = (0.15, 1e-5)


def fit_grid_row(y, w, T: float, *, penalise_butterfly: bool = True, start=None):
    """Fit one raw SVI slice to total variances ``w`` at log-moneyness ``y`` (1-d, finite), ``T`` years.

    ``core.surface.svi.fit_svi_slice`` on the implied vols ``sqrt(w / T)`` with equal weights (every grid
    point counts alike in vol points) and its butterfly penalty on ``y`` half the data's width beyond
    them (``penalise_butterfly``; without it the penalty grid is the data's own range). ``start``: optional
    raw-SVI parameters (5,) tried besides the fitter's own starts (``surface_from_grid`` passes the previous
    row's fit: rows of a smooth surface are close, and the quasi-explicit start alone can miss a row whose
    minimum lies beyond the quoted range). One or two points: a flat slice; three or four: the quasi-explicit
    slice (``core.surface.svi.quasi_explicit_start``), also the fallback if the fit fails.
    Returns ``(params (5,) = a, b, rho, m, sigma, rmse in vol)``.
    """
    y = np.asarray(y, dtype=float)
    w = np.asarray(w, dtype=float)
    n = len(y)
    if n == 0:
        raise InputError("fit_grid_row needs at least one finite implied vol")
    iv = np.sqrt(np.maximum(w, 1e-300) / T)

    def rmse_of(q):
        return float(np.sqrt(np.mean((np.sqrt(np.maximum(svi_raw(y, *q)[0], 0.0) / T) - iv) ** 2)))

    # the flat slice (b = 0) is on the boundary the fitter's parametrisation only approaches: kept when it is at
    # least as good (a flat row must give exactly flat local vol), and the answer for one or two points
    cands = [np.array([float(np.mean(iv) ** 2 * T), 0.0, 0.0, 0.0, 0.1])]
    if n >= 3:
        # the quasi-explicit slice (Zeliade 2009) in vol-point weights: the answer for 3-4 points, a fallback
        qe = svi.quasi_explicit_start(y, w, 1.0 / (4.0 * np.maximum(w, 1e-12) * T), float(y.min()), float(y.max()))
        if qe is not None:
            cands.append(np.array([qe.a, qe.b, qe.rho, qe.m, qe.sigma], dtype=float))
    if n >= 5:
        span = max(float(y.max() - y.min()), 0.05)
        ext = 0.5 * span if penalise_butterfly else 0.0
        grid = np.linspace(y.min() - ext, y.max() + ext, 81)
        # plain raw SVI (no spline correction: the bare grid's rows are smooth, GridSurface is SVI-only)
        kw = {"correction": False}
        if start is not None:
            a, b, rho, m, sig = (float(v) for v in start)
            if b > 0 and abs(rho) < 1 and sig > 0:
                kw["start"] = svi.SVISlice(a=a, b=b, rho=rho, m=m, sigma=sig)
        try:
            with warnings.catch_warnings():
                # the caller judges the fit by its RMSE (surface_from_grid warns above 50 bp)
                warnings.simplefilter("ignore", ConvergenceWarning)
                sl, _ = svi.fit_svi_slice(y, iv, np.ones(n), float(T), y_grid=grid, **kw)
            sl = getattr(sl, "base", sl)
            cands.append(np.array([sl.a, sl.b, sl.rho, sl.m, sl.sigma], dtype=float))
        except (ValueError, FloatingPointError, np.linalg.LinAlgError):
            pass
    errs = [rmse_of(c) for c in cands]
    # prefer the full fit, then the quasi-explicit one, unless the flat slice does at least as well
    i = len(cands) - 1
    if errs[0] <= errs[i]:
        i = 0
    return cands[i], errs[i]


@dataclass(frozen=True, eq=False)
class _GridRows(VolSurface):
    """What both bare-grid surfaces keep of the grid: the kept rows' ``T_nodes``, quoted ``y_lo``, ``y_hi`` and
    fit RMSE ``rmse_vol`` (n,) (vol units), and the quoted ``y`` range between them."""

    T_nodes: np.ndarray
    y_lo: np.ndarray
    y_hi: np.ndarray
    rmse_vol: np.ndarray

    def y_quoted(self, T):
        """Quoted ``y`` range at ``T``: linear in ``T`` between rows, the end rows' range beyond."""
        return quoted_y_range(T, self.T_nodes, self.y_lo, self.y_hi)


@dataclass(frozen=True, eq=False)
class GridSurface(_GridRows):
    """SVI slices at ``T_nodes`` joined in ``T`` by ``core.surface.interp.TInterp`` (module docstring).

    ``params`` ``(n, 5)``: raw SVI ``a, b, rho, m, sigma`` per node; ``y_lo``, ``y_hi`` ``(n,)``: the
    quoted log-moneyness range per node; ``rmse_vol`` ``(n,)``: fit RMSE per node in vol;
    ``warnings``: what went wrong (dropped rows, arbitrage in the input). ``derivatives`` is exact
    for this interpolant (analytic in ``y`` and ``T``; no finite differences).
    """

    params: np.ndarray = None
    warnings: tuple = ()
    T_quoted: tuple = field(default=(0.0, np.inf))
    _scheme: object = field(default=None, init=False, repr=False, compare=False)
    method: ClassVar[str] = "svi"

    def __post_init__(self) -> None:
        T = np.asarray(self.T_nodes, dtype=float)
        P = np.asarray(self.params, dtype=float)
        if P.shape != (len(T), 5):
            raise InputError(f"params must have shape (n_nodes, 5) = ({len(T)}, 5), got {P.shape}")
        object.__setattr__(self, "T_nodes", T)
        object.__setattr__(self, "params", P)
        scheme = TInterp(T)
        scheme.lam = butterfly_safeguard(scheme, self._node_values, np.asarray(self.y_lo, float),
                                         np.asarray(self.y_hi, float))
        object.__setattr__(self, "_scheme", scheme)
        object.__setattr__(self, "T_quoted", (float(T[0]), float(T[-1])))

    def slices(self, y):
        """``(w, w_y, w_yy)`` of every node slice at ``y`` (any shape): each ``(n_nodes, *y.shape)``."""
        y = np.asarray(y, dtype=float)
        P = self.params.reshape((len(self.T_nodes), 5) + (1,) * y.ndim)
        return svi_raw(y[None], *(P[:, i] for i in range(5)))

    def _node_values(self, y):
        return self.slices(np.asarray(y, dtype=float).ravel())

    def derivatives(self, y, T) -> Derivatives:
        """``w, w_y, w_yy, w_T`` of the interpolated surface at ``(y, T)`` (broadcast)."""
        y, T = np.broadcast_arrays(np.asarray(y, dtype=float), np.asarray(T, dtype=float))
        shape = y.shape
        W, W_y, W_yy = self._node_values(y)
        out = self._scheme(W, W_y, W_yy, T.ravel())
        return Derivatives(*(np.reshape(a, shape) for a in out))


@dataclass(frozen=True, eq=False)
class GridESSVISurface(_GridRows):
    """The bare grid's eSSVI surface (module docstring): ``essvi`` (``core.surface.essvi.ESSVISurface`` fitted
    to every finite grid point at once) with the grid's bookkeeping: ``T_nodes``, ``y_lo``, ``y_hi``,
    ``rmse_vol`` (n,) per kept row, ``svi_rmse_vol`` (n,) of the per-row SVI fits it was compared with (NaN
    when the eSSVI fit was within 0.1 bp everywhere and the SVI rows were not fitted), ``warnings``.
    ``derivatives`` is the eSSVI surface's (closed form)."""

    essvi: object = None
    svi_rmse_vol: np.ndarray = None
    warnings: tuple = ()
    T_quoted: tuple = field(default=(0.0, np.inf))
    method: ClassVar[str] = "essvi"

    def __post_init__(self) -> None:
        object.__setattr__(self, "T_nodes", np.asarray(self.T_nodes, dtype=float))
        object.__setattr__(self, "T_quoted", (float(self.T_nodes[0]), float(self.T_nodes[-1])))

    def derivatives(self, y, T) -> Derivatives:
        """``w, w_y, w_yy, w_T`` of the eSSVI surface at ``(y, T)`` (broadcast)."""
        return self.essvi.derivatives(y, T)


def _essvi_grid(T, ys, ivs, ylo, yhi):
    """eSSVI fitted to the rows' points (lists of arrays per kept row): ``(ESSVISurface, rmse per row)``, or
    None when the fit fails."""
    idx = np.concatenate([np.full(v.size, i) for i, v in enumerate(ys)])
    y, iv = np.concatenate(ys), np.concatenate(ivs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            # a grid is smooth data: no robust weights, no pull on theta, the log-slope penalty only to pick the
            # smoothest of equally close profiles (rows reproduced to 1e-9 in vol on SSVI grids)
            r = fit_essvi(T, y, iv, np.ones(y.size), idx, robust=False, roughness=1e-6, theta_roughness=0.0,
                          tol=1e-10, max_iter=300, y_lo=ylo, y_hi=yhi)
    except (InputError, ValueError, FloatingPointError, np.linalg.LinAlgError):
        return None
    e = r.surface.implied_vol(y, T[idx]) - iv
    if not np.all(np.isfinite(e)):
        return None
    rmse = np.sqrt(np.bincount(idx, e * e, minlength=len(ys)) / np.bincount(idx, minlength=len(ys)))
    return r.surface, rmse


def _as_1d(name: str, x) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 1 or a.size == 0:
        raise InputError(f"{name} must be a non-empty 1-d array, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise InputError(f"{name} must be positive and finite; check the values {a[~(np.isfinite(a) & (a > 0))][:5]}")
    if np.any(np.diff(a) <= 0):
        raise InputError(f"{name} must be strictly increasing (sort them, drop duplicates)")
    return a


def surface_from_grid(strikes, maturities, implied_vols, S0, r=0.0, q=0.0):
    """Smooth arbitrage-aware total-variance surface from a bare implied-vol grid.

    Parameters: ``strikes`` ``(nK,)`` increasing, in price units; ``maturities`` ``(nT,)`` years,
    increasing, > 0; ``implied_vols`` ``(nT, nK)`` Black vols as decimals (NaN = missing quote);
    ``S0`` spot; ``r``, ``q`` continuously-compounded rate and dividend yield (constants).
    Forwards ``F_T = S0 e^{(r-q)T}``, ``D_T = e^{-rT}``; ``y = ln(K / F_T)`` per row.
    Returns ``(surface, Forwards)``: ``surface`` a ``GridESSVISurface`` (the global eSSVI fit) or a
    ``GridSurface`` (SVI per row), whichever the module docstring's rule picks (``surface.method``).
    Rows without a finite vol are dropped (warned, and listed in ``surface.warnings``);
    ``InputError`` if none is left or on malformed input.
    """
    K = _as_1d("strikes", strikes)
    T = _as_1d("maturities", maturities)
    iv = np.asarray(implied_vols, dtype=float)
    if iv.shape != (len(T), len(K)):
        raise InputError(f"implied_vols must have shape (n_maturities, n_strikes) = {(len(T), len(K))}, got {iv.shape}")
    if not (np.isscalar(S0) or np.ndim(S0) == 0) or not (np.isfinite(S0) and S0 > 0):
        raise InputError(f"S0 must be a positive number, got {S0!r}")
    for name, v in (("r", r), ("q", q)):
        if np.ndim(v) != 0 or not np.isfinite(v):
            raise InputError(f"{name} must be a finite number (a constant rate), got {v!r}")
    bad = np.isfinite(iv) & (iv <= 0)
    iv = np.where(bad, np.nan, iv)
    fwd = Forwards.from_rates(float(S0), float(r), float(q), T)
    F = fwd.F(T)
    notes: list[str] = []
    if bad.any():
        notes.append(f"{int(bad.sum())} non-positive implied vols treated as missing")
    rows, ylo, yhi, ys, ivs = [], [], [], [], []
    for i in range(len(T)):
        ok = np.isfinite(iv[i])
        if not ok.any():
            notes.append(f"maturity {T[i]:.4g} has no finite implied vol: dropped")
            continue
        y = np.log(K[ok] / F[i])
        rows.append(i)
        ylo.append(y.min())
        yhi.append(y.max())
        ys.append(y)
        ivs.append(iv[i, ok])
    if not rows:
        raise InputError("implied_vols has no finite value: give at least one positive vol")
    Tk = T[rows]
    n_pts = np.array([v.size for v in ys])
    a, b = ESSVI_SLACK
    ess = _essvi_grid(Tk, ys, ivs, np.array(ylo), np.array(yhi))
    # within b of every point the SVI rows cannot do better by more than the slack: they are not needed
    use_essvi = ess is not None and float(ess[1].max()) <= b
    params, rmse = [], np.full(len(rows), np.nan)
    if not use_essvi:
        for k, (i, y, v) in enumerate(zip(rows, ys, ivs, strict=True)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                p, rmse[k] = fit_grid_row(y, v * v * T[i], T[i], start=params[-1] if params else None)
            params.append(p)
        if ess is not None:
            tot_e = np.sqrt(np.sum(n_pts * ess[1] ** 2) / n_pts.sum())
            tot_s = np.sqrt(np.sum(n_pts * rmse**2) / n_pts.sum())
            use_essvi = tot_e <= (1 + a) * tot_s + b and ess[1].max() <= (1 + a) * rmse.max() + b
    if not use_essvi:
        notes += [f"maturity {t:.4g} has only {k} vols: reduced SVI fit" for t, k in zip(Tk, n_pts, strict=True)
                  if k < 5]
    fit_rmse = ess[1] if use_essvi else rmse
    for t, e in zip(Tk, fit_rmse, strict=True):
        if e > 0.005:
            notes.append(f"maturity {t:.4g}: {'eSSVI' if use_essvi else 'SVI'} fit RMSE {e * 1e4:.0f} bp")
            warnings.warn(f"surface_from_grid: the fit at T={t:.4g} is off by {e * 1e4:.0f} bp RMS",
                          ConvergenceWarning, stacklevel=2)
    # calendar check between rows on the common quoted range (the interpolant keeps monotone data monotone)
    if len(rows) > 1 and not use_essvi:
        yg = np.linspace(min(ylo), max(yhi), 101)
        W = GridSurface(T_nodes=Tk, params=np.array(params), y_lo=np.array(ylo), y_hi=np.array(yhi),
                        rmse_vol=rmse).slices(yg)[0]
        if np.any(np.diff(W, axis=0) < -1e-10):
            msg = "calendar arbitrage in the grid: total variance decreases in T at some moneyness"
            notes.append(msg)
            warnings.warn(f"surface_from_grid: {msg}", ArbitrageWarning, stacklevel=2)
    if use_essvi:
        surf = GridESSVISurface(essvi=ess[0], T_nodes=Tk, y_lo=np.array(ylo), y_hi=np.array(yhi), rmse_vol=ess[1],
                                svi_rmse_vol=rmse, warnings=tuple(notes))
    else:
        surf = GridSurface(T_nodes=Tk, params=np.array(params), y_lo=np.array(ylo), y_hi=np.array(yhi),
                           rmse_vol=rmse, warnings=tuple(notes))
    for n in notes:
        if "dropped" in n:
            warnings.warn(f"surface_from_grid: {n}", ConvergenceWarning, stacklevel=2)
    return surf, fwd
