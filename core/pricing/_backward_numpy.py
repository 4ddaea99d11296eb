"""Numpy time stepping of ``core.pricing.backward``: the fallback when numba is absent, and the reference.

The same algorithm as ``core.pricing._backward_numba.sweep``, step for step (the tests compare the two);
read the maths in ``core.pricing.backward``. Vectorised over the columns (right-hand sides); the loops
along the nodes stay in Python, so it is about 50x slower than the compiled kernel.
"""
from __future__ import annotations

import numpy as np


def sweep(geo, sig2, theta, dt, r, mu, V, obstacle, american, exercise_up, bc_lo, val_lo, bc_hi,
                 val_hi, i_spot, hist):
    """The numpy twin of ``_backward_numba.sweep`` (same arguments, same steps), vectorised over columns."""
    n = V.shape[0]
    ns = len(theta)
    c_lo, c_hi = geo[0, 0], geo[0, -1]
    mid = slice(1, n - 1)
    for k in range(ns):
        if k >= ns - 2:
            hist[ns - 1 - k] = V[i_spot]
        a_im, a_ex = 0.5 * sig2[k + 1, mid], 0.5 * sig2[k, mid]
        L_im = [a_im * geo[3 + c, mid] + (mu[k] - a_im) * geo[c, mid] for c in range(3)]
        L_ex = [a_ex * geo[3 + c, mid] + (mu[k] - a_ex) * geo[c, mid] for c in range(3)]
        e, h = (1.0 - theta[k]) * dt[k], theta[k] * dt[k]
        lo, di, up = -h * L_im[0], 1.0 - h * (L_im[1] - r[k]), -h * L_im[2]
        rhs = (e * L_ex[0])[:, None] * V[:-2] + (1.0 + e * (L_ex[1] - r[k]))[:, None] * V[1:-1] \
            + (e * L_ex[2])[:, None] * V[2:]
        if bc_lo == 0:
            di[0] += lo[0] * (1.0 + c_lo)
            up[0] -= lo[0] * c_lo
        else:
            rhs[0] -= lo[0] * val_lo
        if bc_hi == 0:
            di[-1] += up[-1] * (1.0 + c_hi)
            lo[-1] -= up[-1] * c_hi
        else:
            rhs[-1] -= up[-1] * val_hi
        V[1:-1] = _tridiag_projected(lo, di, up, rhs, obstacle[1:-1] if american else None, exercise_up)
        V[0] = val_lo if bc_lo == 1 else (1.0 + c_lo) * V[1] - c_lo * V[2]
        V[-1] = val_hi if bc_hi == 1 else (1.0 + c_hi) * V[-2] - c_hi * V[-3]
        if american:
            V[[0, -1]] = np.maximum(V[[0, -1]], obstacle[[0, -1]])
    return V


def _tridiag_projected(lo, di, up, rhs, obstacle, exercise_up: bool):
    """Solve the tridiagonal system for every column of ``rhs`` (n, m), projecting on ``obstacle`` (Brennan-
    Schwartz: downward elimination and substitution from the top when ``exercise_up``, else the reverse)."""
    if not exercise_up:  # the mirrored system: reverse the nodes, swap the off-diagonals
        ob = None if obstacle is None else obstacle[::-1]
        return _tridiag_projected(up[::-1], di[::-1], lo[::-1], rhs[::-1], ob, True)[::-1]
    n = len(di)
    c, inv, w = np.empty(n), np.empty(n), np.empty_like(rhs)
    inv[0] = 1.0 / di[0]
    c[0], w[0] = up[0] * inv[0], rhs[0] * inv[0]
    for i in range(1, n):
        inv[i] = 1.0 / (di[i] - lo[i] * c[i - 1])
        c[i] = up[i] * inv[i]
        w[i] = (rhs[i] - lo[i] * w[i - 1]) * inv[i]
    v = np.empty_like(rhs)
    v[-1] = w[-1] if obstacle is None else np.maximum(w[-1], obstacle[-1])
    for i in range(n - 2, -1, -1):
        v[i] = w[i] - c[i] * v[i + 1]
        if obstacle is not None:
            v[i] = np.maximum(v[i], obstacle[i])
    return v
