"""Compiled (numba) time stepping of ``core.pricing.backward``: the same algorithm as its numpy path.

Private module, imported lazily through ``core._kernels.LazyKernel`` on the first solve. One call runs
every time step for every column (right-hand side) of ``V``; read the maths in ``core.pricing.backward``
(``core.pricing._backward_numpy.sweep`` is the numpy twin, step for step; the tests compare the two). The loops run over
nodes outside and columns inside: the elimination is a chain of dependent operations along the nodes,
and the independent columns (contiguous in memory) fill the pipeline and the SIMD lanes meanwhile.
"""
from __future__ import annotations

import numpy as np
from numba import njit

_JIT = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")


@njit(**_JIT)
def _coefficients(geo, sig2, k, th, h, rk, mk, lo, di, up, el, ed, eu):
    """Step ``k``: implicit ``I - th h L(t_lo)`` (lo, di, up) and explicit ``I + (1-th) h L(t_hi)`` (el, ed, eu)."""
    n = geo.shape[1]
    e = (1.0 - th) * h
    for i in range(1, n - 1):
        a = 0.5 * sig2[k + 1, i]
        b = mk - a
        lo[i] = -th * h * (a * geo[3, i] + b * geo[0, i])
        di[i] = 1.0 - th * h * (a * geo[4, i] + b * geo[1, i] - rk)
        up[i] = -th * h * (a * geo[5, i] + b * geo[2, i])
        a = 0.5 * sig2[k, i]
        b = mk - a
        el[i] = e * (a * geo[3, i] + b * geo[0, i])
        ed[i] = 1.0 + e * (a * geo[4, i] + b * geo[1, i] - rk)
        eu[i] = e * (a * geo[5, i] + b * geo[2, i])


@njit(**_JIT)
def _solve_from_top(lo, di, up, w, V, obstacle, american, cc, inv):
    """Eliminate downward, substitute (and project) from the top: Brennan-Schwartz for calls."""
    n, m = V.shape
    inv[1] = 1.0 / di[1]
    cc[1] = up[1] * inv[1]
    for i in range(2, n - 1):
        inv[i] = 1.0 / (di[i] - lo[i] * cc[i - 1])
        cc[i] = up[i] * inv[i]
    for j in range(m):
        w[1, j] *= inv[1]
    for i in range(2, n - 1):
        for j in range(m):
            w[i, j] = (w[i, j] - lo[i] * w[i - 1, j]) * inv[i]
    for j in range(m):
        V[n - 2, j] = max(w[n - 2, j], obstacle[n - 2, j]) if american else w[n - 2, j]
    for i in range(n - 3, 0, -1):
        for j in range(m):
            v = w[i, j] - cc[i] * V[i + 1, j]
            V[i, j] = max(v, obstacle[i, j]) if american else v


@njit(**_JIT)
def _solve_from_bottom(lo, di, up, w, V, obstacle, american, cc, inv):
    """Eliminate upward, substitute (and project) from the bottom: Brennan-Schwartz for puts."""
    n, m = V.shape
    inv[n - 2] = 1.0 / di[n - 2]
    cc[n - 2] = lo[n - 2] * inv[n - 2]
    for i in range(n - 3, 0, -1):
        inv[i] = 1.0 / (di[i] - up[i] * cc[i + 1])
        cc[i] = lo[i] * inv[i]
    for j in range(m):
        w[n - 2, j] *= inv[n - 2]
    for i in range(n - 3, 0, -1):
        for j in range(m):
            w[i, j] = (w[i, j] - up[i] * w[i + 1, j]) * inv[i]
    for j in range(m):
        V[1, j] = max(w[1, j], obstacle[1, j]) if american else w[1, j]
    for i in range(2, n - 1):
        for j in range(m):
            v = w[i, j] - cc[i] * V[i - 1, j]
            V[i, j] = max(v, obstacle[i, j]) if american else v


@njit(**_JIT)
def sweep(geo, sig2, theta, dt, r, mu, V, obstacle, american, exercise_up, bc_lo, val_lo, bc_hi, val_hi,
          i_spot, hist):
    """Backward theta-scheme steps; ``V`` (n, m) is overwritten with the values at the last time node.

    ``geo`` (6, n) first/second-derivative weights (lo1, di1, up1, lo2, di2, up2) at interior nodes, with the
    linear-in-S boundary ratios in ``geo[0, 0]`` and ``geo[0, n-1]``; ``sig2`` (n_nodes, n) local variance at
    the time nodes (descending in t); step k goes from node k to k+1 with ``theta[k]``, ``dt[k]``, ``r[k]``,
    ``mu[k]``. ``bc_*``: 0 linear in S, 1 Dirichlet ``val_*`` (m,). ``exercise_up``: True when the exercise
    region is at the top (calls), else at the bottom (puts). ``hist`` (2, m) receives V at ``i_spot``
    before the last and the second-last step.
    """
    n, m = V.shape
    ns = theta.shape[0]
    lo, di, up, cc, inv = np.empty(n), np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    el, ed, eu = np.zeros(n), np.zeros(n), np.zeros(n)
    w = np.empty((n, m))
    c_lo = geo[0, 0]
    c_hi = geo[0, n - 1]
    for k in range(ns):
        if k >= ns - 2:
            for j in range(m):
                hist[ns - 1 - k, j] = V[i_spot, j]
        _coefficients(geo, sig2, k, theta[k], dt[k], r[k], mu[k], lo, di, up, el, ed, eu)
        if bc_lo == 0:
            di[1] += lo[1] * (1.0 + c_lo)
            up[1] -= lo[1] * c_lo
        if bc_hi == 0:
            di[n - 2] += up[n - 2] * (1.0 + c_hi)
            lo[n - 2] -= up[n - 2] * c_hi
        for i in range(1, n - 1):
            for j in range(m):
                w[i, j] = el[i] * V[i - 1, j] + ed[i] * V[i, j] + eu[i] * V[i + 1, j]
        for j in range(m):  # Dirichlet values move to the right-hand side
            if bc_lo == 1:
                w[1, j] -= lo[1] * val_lo[j]
            if bc_hi == 1:
                w[n - 2, j] -= up[n - 2] * val_hi[j]
        if exercise_up:
            _solve_from_top(lo, di, up, w, V, obstacle, american, cc, inv)
        else:
            _solve_from_bottom(lo, di, up, w, V, obstacle, american, cc, inv)
        for j in range(m):
            V[0, j] = val_lo[j] if bc_lo == 1 else (1.0 + c_lo) * V[1, j] - c_lo * V[2, j]
            V[n - 1, j] = val_hi[j] if bc_hi == 1 else (1.0 + c_hi) * V[n - 2, j] - c_hi * V[n - 3, j]
            if american:
                V[0, j] = max(V[0, j], obstacle[0, j])
                V[n - 1, j] = max(V[n - 1, j], obstacle[n - 1, j])
    return V
