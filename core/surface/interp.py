"""Interpolation of total variance in ``T`` between fitted slices, with analytic derivatives.

Scheme (at fixed log-moneyness ``y``, for every ``y`` separately):

* Nodes ``(0, 0), (T_1, w_1(y)), ..., (T_n, w_n(y))``: the origin is a node because ``w(y, 0) = 0``.
* Between nodes: monotone cubic Hermite in ``T`` (Fritsch & Carlson 1980) with node slopes from the
  weighted harmonic mean of the neighbouring secants (Fritsch & Butland 1984, the PCHIP slopes):
  ``d_k = (w1 + w2) / (w1 / s_{k-1} + w2 / s_k)`` with ``w1 = 2 h_k + h_{k-1}``, ``w2 = h_k + 2 h_{k-1}``,
  ``d_k = 0`` when either secant is ``<= 0``. These slopes satisfy ``0 <= d_k <= 3 min(s_{k-1}, s_k)``,
  so the interpolant is non-decreasing whenever the slices are (``w_{k+1}(y) >= w_k(y)``): no calendar
  arbitrage is created, and ``w`` is C1 in ``T`` (local vol continuous across expiries).
* Before the first expiry: the Hermite segment from the origin with slope ``d_0 = w_1(y) / T_1`` at
  ``T = 0``, so ``sigma_imp(y, 0+) = sigma_imp(y, T_1)``: implied vol at fixed ``y`` goes from the first
  expiry's value to it again, close to "flat implied vol at fixed y" (``w`` proportional to ``T``),
  which it equals exactly when ``w_2 / T_2 = w_1 / T_1``, and with a single expiry.
* After the last expiry: linear in ``T`` with the last forward variance ``(w_n - w_{n-1}) / (T_n - T_{n-1})``
  (the Hermite slope at ``T_n`` is set to that secant, so the extension is C1).

The node slopes are smooth functions of the node values where the secants are positive, so ``w_y``
and ``w_yy`` follow by the chain rule through the harmonic means: every derivative is analytic.
Extrapolation in ``y`` is the slices' own (SVI is asymptotically linear; the smooth slices extend
linearly with a Lee-bounded slope); see ``core.surface.svi`` and ``core.surface.smooth``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.errors import InputError
from core.surface.base import Derivatives, VolSurface


def _harmonic_slopes(sa, sa_y, sa_yy, sb, sb_y, sb_yy, wa: float, wb: float):
    """Weighted harmonic mean ``d = (wa + wb) a b / (wa b + wb a)`` of secants ``a, b`` and its
    first/second derivatives in ``y`` (chain rule); zero where ``a <= 0`` or ``b <= 0``."""
    pos = (sa > 0) & (sb > 0)
    a = np.where(pos, sa, 1.0)
    b = np.where(pos, sb, 1.0)
    c = wa + wb
    den = wa * b + wb * a
    d = c * a * b / den
    d_a = c * wa * b * b / den**2
    d_b = c * wb * a * a / den**2
    d_aa = -2.0 * c * wa * wb * b * b / den**3
    d_bb = -2.0 * c * wa * wb * a * a / den**3
    d_ab = 2.0 * c * wa * wb * a * b / den**3
    dy = d_a * sa_y + d_b * sb_y
    dyy = d_aa * sa_y**2 + 2.0 * d_ab * sa_y * sb_y + d_bb * sb_y**2 + d_a * sa_yy + d_b * sb_yy
    z = np.zeros_like(d)
    return np.where(pos, d, z), np.where(pos, dy, z), np.where(pos, dyy, z)


def monotone_hermite(T_nodes, V, V_y, V_yy, T):
    """Monotone C1 interpolation in ``T`` of node values through the origin, with ``y``-derivatives.

    ``T_nodes`` (n,) increasing positive expiries; ``V, V_y, V_yy`` (n, N): node values of ``w`` and its
    ``y``-derivatives at the N points; ``T`` (N,): where to evaluate. Returns ``(w, w_y, w_yy, w_T)``,
    each (N,). Scheme and extrapolation: the module docstring.
    """
    Tn = np.r_[0.0, np.asarray(T_nodes, dtype=float)]
    n = len(Tn)
    Z = np.zeros((1,) + V.shape[1:])
    V, V_y, V_yy = (np.concatenate([Z, np.asarray(a, float)], axis=0) for a in (V, V_y, V_yy))
    T = np.asarray(T, dtype=float)
    h = np.diff(Tn)[:, None]
    S, S_y, S_yy = np.diff(V, axis=0) / h, np.diff(V_y, axis=0) / h, np.diff(V_yy, axis=0) / h
    D = np.empty_like(V)
    D_y = np.empty_like(V)
    D_yy = np.empty_like(V)
    D[0], D_y[0], D_yy[0] = S[0], S_y[0], S_yy[0]
    D[-1], D_y[-1], D_yy[-1] = S[-1], S_y[-1], S_yy[-1]
    for k in range(1, n - 1):
        h0, h1 = Tn[k] - Tn[k - 1], Tn[k + 1] - Tn[k]
        D[k], D_y[k], D_yy[k] = _harmonic_slopes(S[k - 1], S_y[k - 1], S_yy[k - 1], S[k], S_y[k], S_yy[k],
                                                 2.0 * h1 + h0, h1 + 2.0 * h0)
    # segment per point; beyond the last node: linear with the last slope
    k = np.clip(np.searchsorted(Tn, T, side="right") - 1, 0, n - 2)
    cols = np.arange(V.shape[1])
    T0, H = Tn[k], Tn[k + 1] - Tn[k]
    t = (T - T0) / H
    beyond = T > Tn[-1]
    tt = np.where(beyond, 1.0, t)
    h00 = 2 * tt**3 - 3 * tt**2 + 1
    h10 = tt**3 - 2 * tt**2 + tt
    h01 = -2 * tt**3 + 3 * tt**2
    h11 = tt**3 - tt**2
    dh00 = (6 * tt**2 - 6 * tt) / H
    dh10 = (3 * tt**2 - 4 * tt + 1) / H
    dh01 = (-6 * tt**2 + 6 * tt) / H
    dh11 = (3 * tt**2 - 2 * tt) / H

    def comb(A, DA, c00, c10, c01, c11):
        return c00 * A[k, cols] + c10 * H * DA[k, cols] + c01 * A[k + 1, cols] + c11 * H * DA[k + 1, cols]

    w = comb(V, D, h00, h10, h01, h11)
    w_y = comb(V_y, D_y, h00, h10, h01, h11)
    w_yy = comb(V_yy, D_yy, h00, h10, h01, h11)
    w_T = comb(V, D, dh00, dh10, dh01, dh11)
    if beyond.any():
        dt = np.where(beyond, T - Tn[-1], 0.0)
        w = np.where(beyond, V[-1] + D[-1] * dt, w)
        w_y = np.where(beyond, V_y[-1] + D_y[-1] * dt, w_y)
        w_yy = np.where(beyond, V_yy[-1] + D_yy[-1] * dt, w_yy)
        w_T = np.where(beyond, D[-1], w_T)
    return w, w_y, w_yy, w_T


@dataclass(frozen=True)
class MonotoneThetaCurve:
    """ATM total variance ``theta(T)`` through fitted nodes: monotone C1 cubic (module docstring).

    ``T_nodes`` (n,) increasing expiries (years), ``theta_nodes`` (n,) non-decreasing positive ATM total
    variances. ``theta(0) = 0``; before ``T_1`` a Hermite segment starting with slope ``theta_1 / T_1``;
    after ``T_n`` constant forward variance (last secant). ``dtheta`` is analytic.
    """

    T_nodes: tuple
    theta_nodes: tuple

    def __post_init__(self) -> None:
        T = np.asarray(self.T_nodes, float)
        th = np.asarray(self.theta_nodes, float)
        if T.ndim != 1 or len(T) == 0 or len(T) != len(th):
            raise InputError("MonotoneThetaCurve needs T_nodes and theta_nodes of one equal length >= 1")
        if not (np.all(np.isfinite(T)) and np.all(T > 0) and np.all(np.diff(T) > 0)):
            raise InputError(f"MonotoneThetaCurve.T_nodes must be positive and increasing, got {T}")
        if not (np.all(np.isfinite(th)) and np.all(th > 0) and np.all(np.diff(th) >= -1e-15)):
            raise InputError(f"MonotoneThetaCurve.theta_nodes must be positive and non-decreasing, got {th}")
        object.__setattr__(self, "T_nodes", tuple(float(x) for x in T))
        object.__setattr__(self, "theta_nodes", tuple(float(x) for x in th))

    def _eval(self, T):
        T = np.asarray(T, dtype=float)
        flat = T.ravel()
        V = np.asarray(self.theta_nodes)[:, None] * np.ones((1, flat.size))
        z = np.zeros_like(V)
        th, _, _, dth = monotone_hermite(self.T_nodes, V, z, z, flat)
        return th.reshape(T.shape), dth.reshape(T.shape)

    def theta(self, T):
        """ATM total variance at ``T`` (years); broadcasts."""
        return self._eval(T)[0]

    def dtheta(self, T):
        """``d theta / dT`` at ``T`` (analytic)."""
        return self._eval(T)[1]


def quoted_y_range(T, T_nodes, lo_nodes, hi_nodes):
    """Quoted log-moneyness range at ``T``: linear in ``T`` between expiries, flat outside."""
    T = np.asarray(T, dtype=float)
    return (np.interp(T, T_nodes, lo_nodes), np.interp(T, T_nodes, hi_nodes))


@dataclass(frozen=True)
class SliceSurface(VolSurface):
    """A surface from per-expiry slices (objects with ``derivs(y) -> (w, w_y, w_yy)``), interpolated in
    ``T`` by ``monotone_hermite`` (module docstring). ``T_nodes`` (n,), ``y_lo``/``y_hi`` (n,) the quoted
    ``y``-range per slice."""

    T_nodes: tuple
    slices: tuple
    y_lo: tuple = field(default=())
    y_hi: tuple = field(default=())
    T_quoted: tuple = (0.0, np.inf)

    def __post_init__(self) -> None:
        T = np.asarray(self.T_nodes, float)
        if len(T) == 0 or len(T) != len(self.slices) or not np.all(np.diff(T) > 0) or not np.all(T > 0):
            raise InputError("SliceSurface needs one slice per positive, increasing expiry")
        object.__setattr__(self, "T_quoted", (float(T[0]), float(T[-1])))

    def derivatives(self, y, T) -> Derivatives:
        """``w, w_y, w_yy, w_T`` at ``(y, T)`` (broadcast), analytic through the Hermite scheme."""
        y, T = np.broadcast_arrays(np.asarray(y, float), np.asarray(T, float))
        shape = y.shape
        yf, Tf = y.ravel(), T.ravel()
        vals = [s.derivs(yf) for s in self.slices]
        V = np.stack([v[0] for v in vals])
        V_y = np.stack([v[1] for v in vals])
        V_yy = np.stack([v[2] for v in vals])
        w, w_y, w_yy, w_T = monotone_hermite(self.T_nodes, V, V_y, V_yy, Tf)
        return Derivatives(w=w.reshape(shape), w_y=w_y.reshape(shape), w_yy=w_yy.reshape(shape),
                           w_T=w_T.reshape(shape))

    def y_quoted(self, T):
        """Quoted ``y``-range at ``T``, interpolated linearly between expiries."""
        if not self.y_lo:
            return super().y_quoted(T)
        return quoted_y_range(T, self.T_nodes, self.y_lo, self.y_hi)
