"""Compiled (numba) kernel of ``core.forwards``: the parity regressions of every expiry in one call.

Private module: ``core.forwards`` imports it lazily, on the first call that needs it (importing compiles
the entry point, or loads it from numba's on-disk cache), and falls back to its numpy path when numba
is missing or compilation fails. Every step mirrors the numpy function of ``core.forwards`` of the same
name (read the method there: first guess, band selection, Theil-Sen start, Huber IRLS, sanity checks),
in the same evaluation order: sums are numpy's pairwise summation (``_pairwise_sum``) and medians
numpy's (mean of the two middle values), so both backends give the same numbers to the last bit but
for ``log`` (libm against numpy's, a few ulps, which could only move a strike lying on a band edge).
``fastmath`` stays off (no reassociation) and ``error_model="numpy"`` gives inf/NaN instead of raising.
"""
from __future__ import annotations

import numpy as np
from numba import float64, int64, njit, types

_JIT = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")
# small helpers are inlined at numba IR level (no call overhead, visible to LLVM)
_INLINE = dict(_JIT, inline="always")
# the entry point is compiled for exactly these types when this module is imported (core.forwards does
# that lazily, at first use); read-only inputs accept writeable arrays too
_IN = types.Array(float64, 1, "C", readonly=True)
_IDX = types.Array(int64, 1, "C", readonly=True)
_OUT = types.Array(float64, 1, "C")
_NOUT = types.Array(int64, 1, "C")

#: the same constants as core.forwards (checked there when the kernel is loaded)
_HUBER_C = 1.345
_HUBER_ITERS = 50
_THEIL_SEN_MAX = 300
_MAD = 1.4826
_PW_BLOCK = 128  # numpy's PW_BLOCKSIZE (pairwise summation leaves)


@njit(**_JIT)
def _block_sum(a, lo, n):
    """numpy's pairwise-summation leaf (``n <= 128``): a plain loop below 8 terms, else 8 running sums."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    while i < n - (n % 8):
        r0 += a[lo + i]
        r1 += a[lo + i + 1]
        r2 += a[lo + i + 2]
        r3 += a[lo + i + 3]
        r4 += a[lo + i + 4]
        r5 += a[lo + i + 5]
        r6 += a[lo + i + 6]
        r7 += a[lo + i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@njit(**_JIT)
def _pairwise_sum(a, lo, n):
    """``a[lo:lo+n].sum()`` added exactly as numpy adds it: halves (cut at a multiple of 8) summed
    recursively down to leaves of at most 128 terms (``_block_sum``). The recursion runs on an explicit
    stack (numba's on-disk cache cannot link a self-recursive function)."""
    if n <= _PW_BLOCK:
        return _block_sum(a, lo, n)
    st_lo = np.empty(64, np.int64)
    st_n = np.empty(64, np.int64)
    st_phase = np.empty(64, np.int64)  # 0: nothing summed yet, 1: left half running, 2: right half running
    st_left = np.empty(64)
    top = 0
    st_lo[0], st_n[0], st_phase[0] = lo, n, 0
    val = 0.0
    have_val = False  # val holds the sum of the frame just finished (a child of frame `top`)
    while top >= 0:
        if have_val:
            if st_phase[top] == 1:  # left half done: start the right half
                st_left[top] = val
                st_phase[top] = 2
                n2 = st_n[top] // 2
                n2 -= n2 % 8
                top += 1
                st_lo[top], st_n[top], st_phase[top] = st_lo[top - 1] + n2, st_n[top - 1] - n2, 0
                have_val = False
            else:  # both halves done
                val = st_left[top] + val
                top -= 1
            continue
        m = st_n[top]
        if m <= _PW_BLOCK:
            val = _block_sum(a, st_lo[top], m)
            top -= 1
            have_val = True
        else:
            st_phase[top] = 1
            n2 = m // 2
            n2 -= n2 % 8
            top += 1
            st_lo[top], st_n[top], st_phase[top] = st_lo[top - 1], n2, 0
    return val


@njit(**_INLINE)
def _median(v):
    """numpy's median of a 1-D array of finite numbers (numba's quickselect; the mean of the two middle
    values when the count is even, computed as numpy computes it)."""
    return np.median(v)


@njit(**_INLINE)
def _first_guess(K, z):
    """Forward guess: median of ``K + (C - P)`` over the three pairs of smallest ``|C - P|`` (ties: lower strike)."""
    o = np.argsort(np.abs(z), kind="mergesort")[:3]
    return _median(K[o] + z[o] / 1.0)


@njit(**_INLINE)
def _near(K, F0, T, width, at_least):
    """Indices of the pairs within ``max(0.02, width sqrt(T))`` in ``|ln(K/F0)|`` (else the nearest)."""
    dist = np.abs(np.log(K / F0))
    band = max(0.02, width * np.sqrt(max(T, 0.0)))
    idx = np.flatnonzero(dist <= band)
    if idx.shape[0] < at_least:
        idx = np.sort(np.argsort(dist, kind="mergesort")[:at_least])
    return idx


@njit(**_INLINE)
def _theil_sen(x, z):
    """Theil-Sen line ``z = a + b x`` (median pairwise slope on at most 300 evenly spaced points)."""
    n = x.shape[0]
    if n > _THEIL_SEN_MAX:  # numpy: np.linspace(0, n - 1, 300).round(); no index lies near a .5 tie
        step = (n - 1) / (_THEIL_SEN_MAX - 1)
        keep = np.empty(_THEIL_SEN_MAX, np.int64)
        for k in range(_THEIL_SEN_MAX - 1):
            keep[k] = round(k * step)
        keep[_THEIL_SEN_MAX - 1] = n - 1
        x, z = x[keep], z[keep]
        n = _THEIL_SEN_MAX
    slopes = np.empty(n * (n - 1) // 2)
    m = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx = x[j] - x[i]
            if dx != 0.0:
                slopes[m] = (z[j] - z[i]) / dx
                m += 1
    b = _median(slopes[:m]) if m > 0 else 0.0
    return _median(z - b * x), b


@njit(**_INLINE)
def _huber_line(x, z, s):
    """Huber IRLS from Theil-Sen, weights ``1/s^2`` times ``min(1, c/|u|)``; ``(a, b, residuals)``."""
    a, b = _theil_sen(x, z)
    n = x.shape[0]
    w0 = 1.0 / (s * s)
    r = np.empty(n)
    W, Wx, Wxx, Wz, Wxz = np.empty(n), np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    for _ in range(_HUBER_ITERS):
        for i in range(n):
            r[i] = (z[i] - a - b * x[i]) / s[i]
        ar = np.abs(r)
        scale = _MAD * _median(ar)
        flat = not np.isfinite(scale) or scale <= 1e-12
        for i in range(n):
            if flat:
                hw = 1.0
            else:
                u = ar[i] / scale
                hw = 1.0 if u <= _HUBER_C else _HUBER_C / max(u, 1e-300)
            W[i] = w0[i] * hw
            Wx[i] = W[i] * x[i]
            Wxx[i] = Wx[i] * x[i]
            Wz[i] = W[i] * z[i]
            Wxz[i] = Wx[i] * z[i]
        sw, swx, swxx = _pairwise_sum(W, 0, n), _pairwise_sum(Wx, 0, n), _pairwise_sum(Wxx, 0, n)
        swz, swxz = _pairwise_sum(Wz, 0, n), _pairwise_sum(Wxz, 0, n)
        det = sw * swxx - swx * swx
        if not np.isfinite(det) or det <= 1e-300 * max(sw * swxx, 1e-300):
            break
        a_new = (swxx * swz - swx * swxz) / det
        b_new = (sw * swxz - swx * swz) / det
        done = abs(a_new - a) <= 1e-12 * (1 + abs(a)) and abs(b_new - b) <= 1e-12 * (1 + abs(b))
        a, b = a_new, b_new
        if done:
            break
    return a, b, z - a - b * x


@njit(**_JIT)
def _parity_regression(K, z, s, T, width, min_pairs, max_abs_rate):
    """One expiry's full parity fit: ``(ok, F, D, n_pairs, residual)`` (``ok`` False: too few pairs or nonsense)."""
    if K.shape[0] < min_pairs:
        return False, np.nan, np.nan, 0, np.nan
    F0 = _first_guess(K, z)
    if not (np.isfinite(F0) and F0 > 0):
        F0 = _median(K)
    F = F0
    D = np.nan
    idx = np.empty(0, np.int64)
    res = np.empty(0)
    for _ in range(2):  # select around the guess, fit, reselect around the fitted forward, refit
        idx = _near(K, F, T, width, min_pairs)
        x = K[idx] - F
        a, b, res = _huber_line(x, z[idx], s[idx])
        D = -b
        if not (np.isfinite(D) and D > 0):
            return False, np.nan, np.nan, 0, np.nan
        F_new = F + a / D
        if not (np.isfinite(F_new) and F_new > 0):
            return False, np.nan, np.nan, 0, np.nan
        F = F_new
    used = K[idx]
    if not (0.0 < D <= 1.5 and abs(np.log(D)) <= max_abs_rate * T + 1e-3
            and 0.5 * used.min() <= F <= 2.0 * used.max()):
        return False, np.nan, np.nan, 0, np.nan
    return True, F, D, idx.shape[0], _MAD * _median(np.abs(res))


@njit((_IN, _IN, _IN, _IDX, _IN, float64, int64, float64, _OUT, _OUT, _NOUT, _OUT), **_JIT)
def parity_regressions(K, z, s, bounds, T, width, min_pairs, max_abs_rate, F, D, n_pairs, residual):
    """Parity regressions of every expiry: the pairs of expiry ``g`` are ``bounds[g]:bounds[g+1]`` of
    ``K, z, s`` (sorted by strike), its time ``T[g]``. Writes ``F, D, n_pairs, residual`` (NaN, NaN, 0,
    NaN where the fit is refused, where ``core.forwards._parity_regression`` returns None)."""
    for g in range(T.shape[0]):
        lo, hi = bounds[g], bounds[g + 1]
        ok, f, d, n, res = _parity_regression(K[lo:hi], z[lo:hi], s[lo:hi], T[g], width, min_pairs, max_abs_rate)
        F[g], D[g], n_pairs[g], residual[g] = f, d, n, res
