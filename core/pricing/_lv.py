"""Local-vol callables for the pricers: ``lv(K, T) -> sigma_loc`` (vectorised), and grids for Monte Carlo.

The pricers (forward Dupire PDE, Monte Carlo, exotics) take any vectorised callable
``lv(K, T)`` (arrays broadcast; ``T`` scalar or array). This module builds them:

- ``local_vol_from_surface``: Gatheral's formula ``sigma_loc^2 = w_T / g(y, T)`` (Gatheral 2006,
  eq. 1.10; MATH.md) on a surface's analytic derivatives, clipped, robust to ``g <= 0``.
- ``local_vol_from_grid``: bilinear interpolation of a ``(nK, nT)`` table (the seeds' layout),
  flat beyond the table.
- ``MCGrid``: the local vol tabulated once per Monte Carlo step on a uniform grid of
  ``z = ln(S / F(t))`` so that a lookup for 100,000 paths is an index computation and a lerp.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from core.errors import ConvergenceWarning, InputError
from core.localvol import gatheral_local_variance

#: below this ``T`` (years, about 30 minutes) the surface is evaluated at ``T_MIN``: ``w -> 0``
#: makes Gatheral's formula 0/0 at ``T = 0``, and one half-hour of variance is immaterial.
T_MIN = 1.0 / (365.0 * 48.0)


def _check_clip(clip) -> tuple[float, float]:
    lo, hi = (float(c) for c in clip)
    if not (0.0 <= lo < hi and np.isfinite(hi)):
        raise InputError(f"clip must be (lo, hi) with 0 <= lo < hi < inf, got {clip!r}")
    return lo, hi


class SurfaceLocalVol:
    """Callable ``sigma_loc(K, T)`` from a ``VolSurface`` and ``Forwards`` by Gatheral's formula.

    ``sigma_loc^2 = w_T / g``, ``g = (1 - y w'/(2w))^2 - w'^2/4 (1/w + 1/4) + w''/2`` at
    ``y = ln(K / F_T)`` (Gatheral 2006, eq. 1.10). Where ``g <= 0`` (butterfly arbitrage) or
    ``w_T < 0`` (calendar arbitrage) the formula has no meaning: the implied vol ``sqrt(w/T)``
    stands in (the seeds' choice) and the result is then clipped to ``clip``. ``self.n_fallback``
    counts the points that needed the stand-in over the callable's life (a diagnostic).
    """

    def __init__(self, surface, forwards, clip=(0.01, 3.0)):
        self.surface = surface
        self.forwards = forwards
        self.clip = _check_clip(clip)
        self.n_fallback = 0

    def __call__(self, K, T):
        K = np.asarray(K, dtype=float)
        T = np.maximum(np.asarray(T, dtype=float), T_MIN)
        K, T = np.broadcast_arrays(K, T)
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.log(K / self.forwards.F(T))
            d = self.surface.derivatives(y, T)
            var, g = gatheral_local_variance(y, d)
            ok = (g > 1e-12) & np.isfinite(var)
            fallback = np.maximum(d.w, 0.0) / T
        self.n_fallback += int(np.count_nonzero(~ok))
        var = np.where(ok, var, fallback)
        var = np.where(np.isfinite(var), var, self.clip[1] ** 2)
        return np.clip(np.sqrt(var), *self.clip)


def local_vol_from_surface(surface, forwards, clip=(0.01, 3.0)) -> SurfaceLocalVol:
    """Vectorised local vol ``lv(K, T)`` of an implied surface (Gatheral's formula, clipped).

    Parameters: ``surface`` a ``core.surface.base.VolSurface`` (analytic ``w, w_y, w_yy, w_T``);
    ``forwards`` a ``core.forwards.Forwards`` (``y = ln(K / F(T))``); ``clip`` = ``(lo, hi)`` bounds
    on ``sigma_loc`` (annualised). Returns a callable ``lv(K, T)``; ``K``, ``T`` broadcast.
    """
    return SurfaceLocalVol(surface, forwards, clip)


class GridLocalVol:
    """Bilinear ``sigma_loc(K, T)`` on a ``(nK, nT)`` table, flat beyond its edges (the seeds' clamp)."""

    def __init__(self, strikes, expiries, table):
        K = np.asarray(strikes, dtype=float)
        T = np.asarray(expiries, dtype=float)
        v = np.asarray(table, dtype=float)
        if K.ndim != 1 or T.ndim != 1 or v.shape != (K.size, T.size):
            raise InputError(f"local_vol_surface must have shape (len(strikes), len(expiries)) = "
                             f"({K.size}, {T.size}), got {v.shape}")
        if K.size < 2 or T.size < 1 or np.any(np.diff(K) <= 0) or np.any(np.diff(T) < 0):
            raise InputError("strikes must be increasing (at least 2) and expiries non-decreasing")
        if not np.all(np.isfinite(v)) or np.any(v < 0):
            raise InputError("local_vol_surface must be finite and non-negative; fill holes first")
        self.K, self.T, self.v = K, T, v

    def __call__(self, K, T):
        K = np.asarray(K, dtype=float)
        T = np.asarray(T, dtype=float)
        K, T = np.broadcast_arrays(K, T)
        Kc = np.clip(K, self.K[0], self.K[-1])
        i = np.clip(np.searchsorted(self.K, Kc, side="right") - 1, 0, self.K.size - 2)
        a = (Kc - self.K[i]) / (self.K[i + 1] - self.K[i])
        if self.T.size == 1:
            return (1 - a) * self.v[i, 0] + a * self.v[i + 1, 0]
        Tc = np.clip(T, self.T[0], self.T[-1])
        j = np.clip(np.searchsorted(self.T, Tc, side="right") - 1, 0, self.T.size - 2)
        dT = self.T[j + 1] - self.T[j]
        b = np.where(dT > 0, (Tc - self.T[j]) / np.where(dT > 0, dT, 1.0), 0.0)
        v = self.v
        return ((1 - a) * (1 - b) * v[i, j] + a * (1 - b) * v[i + 1, j]
                + (1 - a) * b * v[i, j + 1] + a * b * v[i + 1, j + 1])


def local_vol_from_grid(strikes, expiries, local_vol_surface) -> GridLocalVol:
    """Vectorised ``lv(K, T)`` from a table ``local_vol_surface[i, j] = sigma(K_i, T_j)``, shape ``(nK, nT)``.

    Bilinear in ``(K, T)``; flat (clamped) beyond the table, as the seeds' Monte Carlo did.
    """
    return GridLocalVol(strikes, expiries, local_vol_surface)


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


@dataclass(frozen=True)
class MCGrid:
    """Local vol tabulated per Monte Carlo step on a uniform ``z = ln(S/F(t))`` grid.

    ``times`` (n+1,) the simulation dates; ``z0``, ``dz``, ``nz`` the grid; ``vol`` (n, nz):
    ``vol[k, j] = sigma_loc(F(t_k) e^{z0 + j dz}, t_k)``; ``slope`` (n, nz): ``vol[k, j+1] - vol[k, j]``
    (last column 0) so that a lookup is ``vol[k, j] + frac * slope[k, j]``. Flat beyond the grid.
    """

    times: np.ndarray
    z0: float
    dz: float
    nz: int
    vol: np.ndarray
    slope: np.ndarray
    logF: np.ndarray

    def lookup(self, k: int, z: np.ndarray, out: np.ndarray | None = None, work=None) -> np.ndarray:
        """Local vol at step ``k`` for log-moneyness ``z`` (paths,), by index and lerp (no search)."""
        u = np.empty_like(z) if work is None else work[0]
        np.subtract(z, self.z0, out=u)
        u *= 1.0 / self.dz
        np.maximum(u, 0.0, out=u)
        np.minimum(u, self.nz - 1.0, out=u)
        i = u.astype(np.intp)
        u -= i
        out = np.empty_like(z) if out is None else out
        # mode="clip": no bounds-check buffering (indices are in range already)
        np.take(self.slope[k], i, out=out, mode="clip")
        out *= u
        out += np.take(self.vol[k], i, mode="clip")
        return out


def mc_grid(lv, forwards, times, *, nz: int = 801, width: float | None = None) -> MCGrid:
    """Tabulate ``lv`` for Monte Carlo at each step start ``times[:-1]`` on a uniform ``z`` grid.

    ``width``: half-width of the grid in ``z = ln(S/F)``; by default 8 ATM standard deviations at
    the last date (at least 0.5, at most 6), beyond which the local vol is held flat. The local vol of
    step ``k`` is read at ``t_k`` (left point: Euler), floored at ``T_MIN``.
    """
    times = np.asarray(times, dtype=float)
    if times.ndim != 1 or times.size < 2 or np.any(np.diff(times) <= 0) or times[0] < 0:
        raise InputError("times must be increasing, non-negative, at least two dates")
    t_eval = np.maximum(times[:-1], T_MIN)
    logF = np.log(forwards.F(times))
    if width is None:
        probe_t = np.linspace(t_eval[0], times[-1], 9)
        s_atm = np.nanmax(np.asarray(lv(forwards.F(probe_t), probe_t), float))
        if not np.isfinite(s_atm):
            raise InputError("lv returned no finite value at the money; check the local-vol callable")
        width = float(np.clip(8.0 * s_atm * np.sqrt(times[-1]), 0.5, 6.0))
    z = np.linspace(-width, width, nz)
    K = np.exp(logF[:-1, None] + z[None, :])
    vol = np.asarray(lv(K, t_eval[:, None]), dtype=float)
    bad = ~np.isfinite(vol) | (vol < 0)
    if bad.any():
        warnings.warn(f"local vol non-finite or negative at {int(bad.sum())} Monte Carlo grid points; "
                      "replaced by the nearest finite value in z", ConvergenceWarning, stacklevel=2)
        for k in np.nonzero(bad.any(axis=1))[0]:
            good = ~bad[k]
            vol[k] = np.interp(z, z[good], vol[k, good]) if good.any() else 0.2
    vol = np.ascontiguousarray(vol)
    slope = np.zeros_like(vol)
    slope[:, :-1] = np.diff(vol, axis=1)
    return MCGrid(times=times, z0=float(z[0]), dz=float(z[1] - z[0]), nz=nz, vol=vol, slope=slope, logF=logF)
