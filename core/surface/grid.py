"""The bare-grid path: an implied-vol grid (maturities x strikes, NaN holes allowed) to a smooth
total-variance surface with analytic derivatives (the seeds' ``ImpliedVolSurface`` input).

Per maturity row a raw SVI slice (Gatheral 2004) is fitted by least squares to the finite grid
points: ``w(y) = a + b (rho (y - m) + sqrt((y - m)^2 + sigma^2))``, started from the best
quasi-explicit fit (Zeliade 2009: for fixed ``m, sigma`` the slice is linear in ``a, b rho, b``).
An SSVI row is exactly an SVI slice, so SSVI-generated grids are recovered to rounding.
Between rows, ``w`` at fixed ``y`` is a cubic spline (not-a-knot) in ``sqrt(T)`` whose node slopes
go through Hyman's (1983) monotonicity filter, so ``w`` stays non-decreasing in ``T`` wherever the
rows are (no calendar arbitrage is created). Why ``sqrt(T)``: at fixed ``y != 0`` total variance
behaves like a power of ``T`` near the short end (SSVI: ``T^(1 - gamma)``), which a cubic in ``T``
follows badly while a cubic in ``sqrt(T)`` follows well; on the seeds' 9-expiry grid this takes
the ``dw/dT`` error at the first expiry from ~50 bp of local vol to ~5 bp (measured against the
closed-form SSVI local vol). Extrapolation: before the first row implied vol is flat in ``T`` at
fixed ``y`` (``w = w_1(y) T / T_1``); after the last row ``w`` continues linearly in ``T`` with the
end slope (clipped at 0); in ``y`` each SVI slice extrapolates itself (linear wings, Lee-bounded).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.optimize import least_squares

from core.errors import ArbitrageWarning, ConvergenceWarning, InputError
from core.forwards import Forwards
from core.surface.base import Derivatives, VolSurface, butterfly_g

#: SVI parameter order in arrays: ``a, b, rho, m, sigma``.
SVI_PARAMS = ("a", "b", "rho", "m", "sigma")


def svi_raw(y, a, b, rho, m, sigma):
    """Raw SVI slice and its ``y``-derivatives ``(w, w_y, w_yy)`` (Gatheral 2004); broadcasts."""
    y = np.asarray(y, dtype=float)
    x = y - m
    R = np.sqrt(x * x + sigma * sigma)
    w = a + b * (rho * x + R)
    w_y = b * (rho + x / R)
    w_yy = b * sigma * sigma / R**3
    return w, w_y, w_yy


def _quasi_explicit(y, w, wt, m_grid, s_grid):
    """Best linear least-squares ``(a, b rho, b)`` for every ``(m, sigma)`` of a grid (batched).

    Returns the parameter rows ``(G, 5)`` and their weighted squared errors ``(G,)``.
    """
    M, Sg = np.meshgrid(m_grid, s_grid, indexing="ij")
    M, Sg = M.ravel(), Sg.ravel()
    x = y[None, :] - M[:, None]
    R = np.sqrt(x * x + Sg[:, None] ** 2)
    X = np.stack([np.ones_like(x), x, R], axis=-1) * wt[None, :, None]       # (G, n, 3)
    rhs = (w * wt)[None, :]
    XtX = np.einsum("gni,gnj->gij", X, X) + 1e-12 * np.eye(3)
    Xty = np.einsum("gni,gn->gi", X, rhs)
    coef = np.linalg.solve(XtX, Xty[..., None])[..., 0]
    a, d, c = coef.T
    c = np.maximum(c, 1e-10)
    d = np.clip(d, -0.999 * c, 0.999 * c)
    params = np.stack([a, c, d / c, M, Sg], axis=1)
    wf = svi_raw(y[None, :], *(params[:, i:i + 1] for i in range(5)))[0]
    sse = np.sum(((wf - w[None, :]) * wt[None, :]) ** 2, axis=1)
    return params, sse


def fit_svi_slice(y, w, T: float, *, penalise_butterfly: bool = True):
    """Fit one raw SVI slice to total variances ``w`` at log-moneyness ``y`` (1-d, finite).

    Residuals are in implied vol, ``(w_fit - w) / (2 sqrt(w T))``, so every grid point counts alike
    in vol points. Start: the best quasi-explicit fit over an ``(m, sigma)`` grid; then a bounded
    Levenberg-Marquardt-type polish of all five parameters (``b >= 0``, ``|rho| < 1``, ``sigma > 0``).
    If the slice has butterfly arbitrage (``g < 0`` on a dense ``y`` range) and
    ``penalise_butterfly``, it is refitted with a penalty on ``min(g, 0)``.
    Fewer than 5 points: the quasi-explicit fit only (3-4 points) or a flat slice (1-2 points).
    Returns ``(params (5,), rmse in vol)``.
    """
    y = np.asarray(y, dtype=float)
    w = np.asarray(w, dtype=float)
    n = len(y)
    if n == 0:
        raise InputError("fit_svi_slice needs at least one finite implied vol")
    wt = 1.0 / (2.0 * np.sqrt(np.maximum(w, 1e-12) * T))
    if n < 3:
        p = np.array([float(np.mean(w)), 0.0, 0.0, 0.0, 0.1])
        return p, float(np.sqrt(np.mean(((p[0] - w) * wt) ** 2)))
    span = max(float(y.max() - y.min()), 0.05)
    m_grid = np.linspace(y.min() - 0.1 * span, y.max() + 0.1 * span, 11)
    s_grid = span * np.geomspace(0.01, 2.0, 10)
    grid_params, sse = _quasi_explicit(y, w, wt, m_grid, s_grid)
    p0 = grid_params[int(np.argmin(sse))]
    if n < 5:
        return p0, float(np.sqrt(sse.min() / n))

    lo = np.array([-np.inf, 0.0, -0.999, y.min() - 2.0 * span - 1.0, 1e-5])
    hi = np.array([np.inf, np.inf, 0.999, y.max() + 2.0 * span + 1.0, 10.0 * span + 1.0])
    eps = 1e-9
    p0 = np.minimum(np.maximum(p0, lo + eps), hi - eps)
    y_dense = np.linspace(y.min() - 0.5 * span, y.max() + 0.5 * span, 81)

    def resid(p, lam=0.0):
        r = (svi_raw(y, *p)[0] - w) * wt
        if lam > 0:
            wd, wdy, wdyy = svi_raw(y_dense, *p)
            g = butterfly_g(y_dense, np.maximum(wd, 1e-12), wdy, wdyy)
            r = np.r_[r, lam * np.minimum(g, 0.0), lam * np.minimum(wd, 0.0)]
        return r

    def jac(p):
        a, b, rho, m, sig = p
        x = y - m
        R = np.sqrt(x * x + sig * sig)
        return np.stack([np.ones_like(y), rho * x + R, b * x, -b * (rho + x / R), b * sig / R], axis=1) * wt[:, None]

    x_scale = np.array([max(float(np.mean(w)), 1e-4), max(float(np.mean(w)), 1e-4), 0.1, 0.05 * span, 0.05 * span])
    sol = least_squares(resid, p0, jac=jac, bounds=(lo, hi), x_scale=x_scale, xtol=1e-12, ftol=1e-12, gtol=1e-12,
                        max_nfev=100)
    p = sol.x
    if penalise_butterfly:
        wd, wdy, wdyy = svi_raw(y_dense, *p)
        if np.any(butterfly_g(y_dense, np.maximum(wd, 1e-12), wdy, wdyy) < 0) or np.any(wd < 0):
            sol = least_squares(lambda q: resid(q, 10.0), p, bounds=(lo, hi), x_scale=x_scale, max_nfev=300)
            p = sol.x
    rmse = float(np.sqrt(np.mean(resid(p) ** 2)))
    return p, rmse


def _hermite_basis(u):
    """Cubic Hermite basis on ``[0, 1]`` and its derivative: ``(h00, h10, h01, h11), (d...)``."""
    u2, u3 = u * u, u * u * u
    h = (2 * u3 - 3 * u2 + 1, u3 - 2 * u2 + u, -2 * u3 + 3 * u2, u3 - u2)
    dh = (6 * u2 - 6 * u, 3 * u2 - 4 * u + 1, -6 * u2 + 6 * u, 3 * u2 - 2 * u)
    return h, dh


@dataclass(frozen=True, eq=False)
class GridSurface(VolSurface):
    """SVI slices at ``T_nodes`` joined in ``T`` by a Hyman-filtered cubic spline in ``sqrt(T)``.

    ``params`` ``(n, 5)``: raw SVI ``a, b, rho, m, sigma`` per node; ``y_lo``, ``y_hi`` ``(n,)``: the
    quoted log-moneyness range per node; ``rmse_vol`` ``(n,)``: fit RMSE per node in vol;
    ``warnings``: what went wrong (dropped rows, arbitrage in the input). ``derivatives`` is exact
    for this interpolant (analytic in ``y`` and ``T``; no finite differences).
    """

    T_nodes: np.ndarray
    params: np.ndarray
    y_lo: np.ndarray
    y_hi: np.ndarray
    rmse_vol: np.ndarray
    warnings: tuple = ()
    T_quoted: tuple = field(default=(0.0, np.inf))
    _slope_matrix: np.ndarray = field(default=None, repr=False)

    def __post_init__(self) -> None:
        s = np.sqrt(self.T_nodes)
        n = len(s)
        if n >= 2:
            # node slopes of the not-a-knot spline are linear in the node values: dW/ds = M W
            M = CubicSpline(s, np.eye(n), axis=0, bc_type="not-a-knot" if n >= 4 else "natural")(s, 1)
        else:
            M = np.zeros((1, 1))
        object.__setattr__(self, "_slope_matrix", M)
        object.__setattr__(self, "T_quoted", (float(self.T_nodes[0]), float(self.T_nodes[-1])))

    def y_quoted(self, T):
        """Quoted ``y`` range at ``T``: linear in ``T`` between rows, the end rows' range beyond."""
        T = np.asarray(T, dtype=float)
        return np.interp(T, self.T_nodes, self.y_lo), np.interp(T, self.T_nodes, self.y_hi)

    def slices(self, y):
        """``(w, w_y, w_yy)`` of every node slice at ``y`` (any shape): each ``(n_nodes, *y.shape)``."""
        y = np.asarray(y, dtype=float)
        P = self.params.reshape((len(self.T_nodes), 5) + (1,) * y.ndim)
        return svi_raw(y[None], *(P[:, i] for i in range(5)))

    def _node_slopes(self, W, Wy, Wyy, ds):
        """Hyman-filtered spline slopes ``dW/ds`` at the nodes, with their ``y``-derivatives."""
        M = self._slope_matrix
        m, my, myy = (np.tensordot(M, A, axes=(1, 0)) for A in (W, Wy, Wyy))
        if len(ds) == 0:
            return m, my, myy
        dl = np.diff(W, axis=0) / ds[:, None]
        dly = np.diff(Wy, axis=0) / ds[:, None]
        dlyy = np.diff(Wyy, axis=0) / ds[:, None]
        inf = np.full((1,) + W.shape[1:], np.inf)
        zero = np.zeros((1,) + W.shape[1:])
        # bound at node i: 3 min(delta_{i-1}, delta_i) (one-sided at the ends); applies where the
        # data are non-decreasing on both sides (Hyman 1983); elsewhere the spline slope is kept
        left = np.concatenate([inf, dl], axis=0)
        right = np.concatenate([dl, inf], axis=0)
        left_y, right_y = np.concatenate([zero, dly]), np.concatenate([dly, zero])
        left_yy, right_yy = np.concatenate([zero, dlyy]), np.concatenate([dlyy, zero])
        use_left = left <= right
        bound = 3.0 * np.where(use_left, left, right)
        bound_y = 3.0 * np.where(use_left, left_y, right_y)
        bound_yy = 3.0 * np.where(use_left, left_yy, right_yy)
        monotone = (np.concatenate([zero, dl]) >= 0) & (np.concatenate([dl, zero]) >= 0)
        neg = monotone & (m < 0)
        big = monotone & (m > bound)
        m_out = np.where(neg, 0.0, np.where(big, bound, m))
        my_out = np.where(neg, 0.0, np.where(big, bound_y, my))
        myy_out = np.where(neg, 0.0, np.where(big, bound_yy, myy))
        return m_out, my_out, myy_out

    def derivatives(self, y, T) -> Derivatives:
        """``w, w_y, w_yy, w_T`` of the interpolated surface at ``(y, T)`` (broadcast)."""
        y, T = np.broadcast_arrays(np.asarray(y, dtype=float), np.asarray(T, dtype=float))
        shape = y.shape
        y, T = y.ravel(), T.ravel()
        W, Wy, Wyy = self.slices(y)                       # (n, P)
        Tn = self.T_nodes
        n = len(Tn)
        if n == 1:
            with np.errstate(divide="ignore", invalid="ignore"):
                f = T / Tn[0]
            out = (W[0] * f, Wy[0] * f, Wyy[0] * f, W[0] / Tn[0])
            return Derivatives(*(np.reshape(a, shape) for a in out))
        s_n = np.sqrt(Tn)
        ds = np.diff(s_n)
        m, my, myy = self._node_slopes(W, Wy, Wyy, ds)
        sq = np.sqrt(np.clip(T, Tn[0], Tn[-1]))
        k = np.clip(np.searchsorted(s_n, sq, side="right") - 1, 0, n - 2)
        h = ds[k]
        u = (sq - s_n[k]) / h
        (h00, h10, h01, h11), (d00, d10, d01, d11) = _hermite_basis(u)
        cols = np.arange(len(y))

        def herm(A, mA):
            return (h00 * A[k, cols] + h10 * h * mA[k, cols] + h01 * A[k + 1, cols] + h11 * h * mA[k + 1, cols])

        w, w_y, w_yy = herm(W, m), herm(Wy, my), herm(Wyy, myy)
        dW_ds = (d00 * W[k, cols] + d10 * h * m[k, cols] + d01 * W[k + 1, cols] + d11 * h * m[k + 1, cols]) / h
        w_T = dW_ds / (2.0 * sq)
        # short end: flat implied vol at fixed y; long end: linear in T with the end slope (>= 0)
        lo = T < Tn[0]
        if lo.any():
            f = T[lo] / Tn[0]
            w[lo], w_y[lo], w_yy[lo] = W[0, lo] * f, Wy[0, lo] * f, Wyy[0, lo] * f
            w_T[lo] = W[0, lo] / Tn[0]
        hi = T > Tn[-1]
        if hi.any():
            c = 1.0 / (2.0 * s_n[-1])
            slope = m[-1, hi] * c
            pos = slope > 0
            dT = T[hi] - Tn[-1]
            w[hi] = W[-1, hi] + np.where(pos, slope, 0.0) * dT
            w_y[hi] = Wy[-1, hi] + np.where(pos, my[-1, hi] * c, 0.0) * dT
            w_yy[hi] = Wyy[-1, hi] + np.where(pos, myy[-1, hi] * c, 0.0) * dT
            w_T[hi] = np.where(pos, slope, 0.0)
        return Derivatives(*(np.reshape(a, shape) for a in (w, w_y, w_yy, w_T)))


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
    Returns ``(GridSurface, Forwards)``; see the module docstring for the construction.
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
    rows, params, ylo, yhi, rmse = [], [], [], [], []
    for i in range(len(T)):
        ok = np.isfinite(iv[i])
        if not ok.any():
            notes.append(f"maturity {T[i]:.4g} has no finite implied vol: dropped")
            continue
        y = np.log(K[ok] / F[i])
        w = iv[i, ok] ** 2 * T[i]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            p, e = fit_svi_slice(y, w, T[i])
        if ok.sum() < 5:
            notes.append(f"maturity {T[i]:.4g} has only {int(ok.sum())} vols: reduced SVI fit")
        if e > 0.005:
            notes.append(f"maturity {T[i]:.4g}: SVI fit RMSE {e * 1e4:.0f} bp")
            warnings.warn(f"surface_from_grid: SVI fit at T={T[i]:.4g} is off by {e * 1e4:.0f} bp RMS",
                          ConvergenceWarning, stacklevel=2)
        rows.append(i)
        params.append(p)
        ylo.append(y.min())
        yhi.append(y.max())
        rmse.append(e)
    if not rows:
        raise InputError("implied_vols has no finite value: give at least one positive vol")
    surf = GridSurface(T_nodes=T[rows], params=np.array(params), y_lo=np.array(ylo), y_hi=np.array(yhi),
                       rmse_vol=np.array(rmse), warnings=tuple(notes))
    # calendar check between rows on the common quoted range (the interpolant keeps monotone data monotone)
    if len(rows) > 1:
        yg = np.linspace(min(ylo), max(yhi), 101)
        W = surf.slices(yg)[0]
        if np.any(np.diff(W, axis=0) < -1e-10):
            msg = "calendar arbitrage in the grid: total variance decreases in T at some moneyness"
            object.__setattr__(surf, "warnings", surf.warnings + (msg,))
            warnings.warn(f"surface_from_grid: {msg}", ArbitrageWarning, stacklevel=2)
    for n in notes:
        if "dropped" in n:
            warnings.warn(f"surface_from_grid: {n}", ConvergenceWarning, stacklevel=2)
    return surf, fwd
