"""Compiled (numba) kernels of ``core.black``: the same algorithm as its numpy path, in one compiled call.

Private module: ``core.black`` imports it lazily, on the first call that needs it (importing compiles
the two entry points, or loads them from numba's on-disk cache), and falls back to the numpy path when
numba is missing or compilation fails. Every formula, region boundary and evaluation order mirrors the
numpy functions of ``core.black`` of the same name (read the maths there: Jaeckel, "Let's Be Rational",
Wilmott 2015); the numpy path's masks become per-element branches and index lists.

Options go through the solver in blocks of ``_BLOCK`` (256): one loop per step and per region/branch,
over scratch arrays that stay in L1. Consecutive iterations of such a loop are independent, so the CPU
overlaps them (and LLVM vectorises the branch-free ones); one option at a time through the whole solver
is a single long dependency chain with unpredictable branches, measured 2x slower.

The tables (``erfcx`` pieces, Gauss-Laguerre nodes) are arguments, not globals: numba would freeze
globals into its on-disk cache, which is keyed on this file only and would go stale when
``core.black`` refits them. ``fastmath`` stays off (it would reassociate the cancellation-sensitive
sums) and ``error_model="numpy"`` makes ``x / 0`` give inf/NaN, as in numpy, instead of raising.
"""
from __future__ import annotations

import math

import numpy as np
from numba import float64, int8, int64, njit, types

_JIT = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")
# small helpers are inlined at numba IR level: numba calls other jitted functions through pointers with
# an error-status check, which costs more than the helpers themselves and hides them from LLVM
_INLINE = dict(_JIT, inline="always")
# the entry points are compiled for exactly these types when this module is imported (core.black does
# that lazily, at first use): read-only inputs accept writeable arrays too, and nothing else ever
# triggers a second compilation
_IN = types.Array(float64, 1, "C", readonly=True)
_TAB = types.Array(float64, 2, "C", readonly=True)
_OUT = types.Array(float64, 1, "C")
_CODE = types.Array(int8, 1, "C")

_SQRT2 = math.sqrt(2.0)
_SQRT3 = math.sqrt(3.0)
_SQRT_PI = math.sqrt(math.pi)
_SQRT2PI = math.sqrt(2.0 * math.pi)
_INV_SQRT2PI = 1.0 / _SQRT2PI
_INV_SQRT2 = 1.0 / _SQRT2
_LN_SQRT2PI = math.log(_SQRT2PI)
_SQRT_PI_OVER_2 = math.sqrt(math.pi / 2.0)
_TWO_PI_OVER_SQRT27 = 2.0 * math.pi / math.sqrt(27.0)
_EPS = float(np.finfo(float).eps)
_R_MAX = 2.0 / (_EPS * _EPS)
_R_MIN = -(1.0 - math.sqrt(_EPS))
_TINY = float(np.finfo(float).tiny)

# region boundaries of b(x, s): the same numbers as core.black (checked there at import)
_T_TAYLOR = 0.1
_H_GL = 7.0
_TAU_GL = 0.02
_ERFCX_ZA = 50.0
_ERFCX_Y0 = 4.0 / (4.0 + _ERFCX_ZA)
_ERFCX_NP = 100
_ERFCX_DEG = 6
_ERFCX_SCALE = _ERFCX_NP / (1.0 - _ERFCX_Y0)
_N_HOUSEHOLDER = 2

# reason codes: positions in core.black.IV_REASONS (checked there at import)
_OK, _NON_FINITE, _NON_POSITIVE, _BELOW, _ABOVE, _BAD_CP, _NO_CONV = 0, 1, 2, 3, 4, 5, 6

# Wichura, "Algorithm AS 241: the percentage points of the normal distribution", Applied Statistics 37
# (1988) 477-484, PPND16 (relative accuracy ~1e-16): only the initial guess of the two outer branches
# uses it, and two Householder steps follow.
_AS241_A = (3.3871328727963666080e0, 1.3314166789178437745e+2, 1.9715909503065514427e+3,
            1.3731693765509461125e+4, 4.5921953931549871457e+4, 6.7265770927008700853e+4,
            3.3430575583588128105e+4, 2.5090809287301226727e+3)
_AS241_B = (1.0, 4.2313330701600911252e+1, 6.8718700749205790830e+2, 5.3941960214247511077e+3,
            2.1213794301586595867e+4, 3.9307895800092710610e+4, 2.8729085735721942674e+4,
            5.2264952788528545610e+3)
_AS241_C = (1.42343711074968357734e0, 4.63033784615654529590e0, 5.76949722146069140550e0,
            3.64784832476320460504e0, 1.27045825245236838258e0, 2.41780725177450611770e-1,
            2.27238449892691845833e-2, 7.74545014278341407640e-4)
_AS241_D = (1.0, 2.05319162663775882187e0, 1.67638483018380384940e0, 6.89767334985100004550e-1,
            1.48103976427480074590e-1, 1.51986665636164571966e-2, 5.47593808499534494600e-4,
            1.05075007164441684324e-9)
_AS241_E = (6.65790464350110377720e0, 5.46378491116411436990e0, 1.78482653991729133580e0,
            2.96560571828504891230e-1, 2.65321895265761230930e-2, 1.24266094738807843860e-3,
            2.71155556874348757815e-5, 2.01033439929228813265e-7)
_AS241_F = (1.0, 5.99832206555887937690e-1, 1.36929880922735805310e-1, 1.48753612908506148525e-2,
            7.86869131145613259100e-4, 1.84631831751005468180e-5, 1.42151175831644588870e-7,
            2.04426310338993978564e-15)


_LN_AS241_TAIL = math.log(0.5 - 0.425)   # p below 0.075: AS 241's tail formulas


@njit(**_INLINE)
def _poly7(c, r):
    return (((((((c[7] * r + c[6]) * r + c[5]) * r + c[4]) * r + c[3]) * r + c[2]) * r + c[1]) * r + c[0])


@njit(**_INLINE)
def ndtri(p):
    """Inverse standard normal CDF (AS 241); NaN outside (0, 1) open, -inf/+inf at 0/1."""
    if not (p >= 0.0 and p <= 1.0):
        return math.nan
    if p == 0.0:
        return -math.inf
    if p == 1.0:
        return math.inf
    q = p - 0.5
    if abs(q) <= 0.425:
        r = 0.180625 - q * q
        return q * _poly7(_AS241_A, r) / _poly7(_AS241_B, r)
    r = p if q < 0.0 else 1.0 - p
    r = math.sqrt(-math.log(r))
    if r <= 5.0:
        r -= 1.6
        val = _poly7(_AS241_C, r) / _poly7(_AS241_D, r)
    else:
        r -= 5.0
        val = _poly7(_AS241_E, r) / _poly7(_AS241_F, r)
    return -val if q < 0.0 else val


@njit(**_INLINE)
def _ndtri_cbrt(v, lu):
    """``ndtri(cbrt(v))`` given ``lu = ln(v)/3``: in AS 241's tails ``sqrt(-ln p)`` is ``sqrt(-lu)``, no
    cube root needed."""
    if not lu < _LN_AS241_TAIL:
        return ndtri(np.cbrt(v))
    r = math.sqrt(-lu)
    if r <= 5.0:
        r -= 1.6
        return -(_poly7(_AS241_C, r) / _poly7(_AS241_D, r))
    r -= 5.0
    return -(_poly7(_AS241_E, r) / _poly7(_AS241_F, r))


@njit(**_INLINE)
def erfcx(z, tab):
    """``exp(z^2) erfc(z)`` for ``z >= 0`` from ``core.black``'s piecewise table ``tab`` (pieces, deg+1)."""
    if z != z:
        return z
    if z >= _ERFCX_ZA:
        v = 0.5 / z / z
        ser = 1.0 - v * (1.0 - 3.0 * v * (1.0 - 5.0 * v * (1.0 - 7.0 * v * (1.0 - 9.0 * v))))
        return ser / (_SQRT_PI * z)
    k = (4.0 / (4.0 + z) - _ERFCX_Y0) * _ERFCX_SCALE
    idx = int(k)
    if idx > _ERFCX_NP - 1:
        idx = _ERFCX_NP - 1
    if idx < 0:
        idx = 0
    u = 2.0 * (k - idx) - 1.0
    acc = tab[idx, 6]   # _ERFCX_DEG = 6, unrolled
    acc = acc * u + tab[idx, 5]
    acc = acc * u + tab[idx, 4]
    acc = acc * u + tab[idx, 3]
    acc = acc * u + tab[idx, 2]
    acc = acc * u + tab[idx, 1]
    return acc * u + tab[idx, 0]


@njit(**_INLINE)
def _fmax(a, b):
    # np.fmax: a NaN loses to a number
    if a != a:
        return b
    if b != b:
        return a
    return a if a >= b else b


@njit(**_INLINE)
def _ln_f_over_k(F, K):
    r = F / K
    if r > 0.5 and r < 2.0:
        return math.log1p((F - K) / K)  # F - K exact there (Sterbenz)
    return math.log(r)


@njit(**_INLINE)
def _taylor_series(h, t, y0):
    # Q for |h| < 7, t < 0.1 from y0 = Y(h) = N/n (Mills' ratio): odd Taylor series of Y(h+t) - Y(h-t)
    y1 = 1.0 + h * y0                 # Y^(k+1) = h Y^(k) + k Y^(k-1)
    y2 = h * y1 + 1.0 * y0
    y3 = h * y2 + 2.0 * y1
    y4 = h * y3 + 3.0 * y2
    y5 = h * y4 + 4.0 * y3
    y6 = h * y5 + 5.0 * y4
    y7 = h * y6 + 6.0 * y5
    y8 = h * y7 + 7.0 * y6
    y9 = h * y8 + 8.0 * y7
    y10 = h * y9 + 9.0 * y8
    y11 = h * y10 + 10.0 * y9
    y12 = h * y11 + 11.0 * y10
    y13 = h * y12 + 12.0 * y11
    t2 = t * t
    acc = y13 * (1.0 / 6227020800.0)            # 13!
    acc = acc * t2 + y11 * (1.0 / 39916800.0)   # 11!
    acc = acc * t2 + y9 * (1.0 / 362880.0)
    acc = acc * t2 + y7 * (1.0 / 5040.0)
    acc = acc * t2 + y5 * (1.0 / 120.0)
    acc = acc * t2 + y3 * (1.0 / 6.0)
    acc = acc * t2 + y1 * (1.0 / 1.0)
    return (2.0 * _INV_SQRT2PI) * acc * t


@njit(**_JIT)
def _q_taylor(h, t, tab):
    return _taylor_series(h, t, _SQRT_PI_OVER_2 * erfcx(-h / _SQRT2, tab))


@njit(**_JIT)
def _q_laguerre(h, t, gl):
    ah = -h
    tau = t / ah
    inv_h2 = 1.0 / (h * h)
    acc = 0.0
    for j in range(gl.shape[0]):
        acc += gl[j, 1] * math.sinh(tau * gl[j, 0]) * math.exp(-gl[j, 2] * inv_h2)
    return 2.0 * _INV_SQRT2PI * acc / ah


@njit(**_JIT)
def normalised_black(x, s, bmax, tab, gl):
    """``(b, c, q, half_e2, upper)`` of ``core.black._normalised_black`` for one ``x <= 0``, ``s > 0``:
    ``b = E q`` (or ``b_max - E q`` when ``upper``), ``c = b_max - b``, ``E = exp(-half_e2)``."""
    h = x / s
    t = 0.5 * s
    half_e2 = 0.5 * (h * h + t * t)
    ah = -h
    upper = False
    if ah < _H_GL and t < _T_TAYLOR:
        q = _q_taylor(h, t, tab)
    elif ah >= _H_GL and t < _TAU_GL * ah:
        q = _q_laguerre(h, t, gl)
    else:
        hpt = h + t
        e1 = erfcx(abs(hpt) * _INV_SQRT2, tab)
        e2 = erfcx((t - h) * _INV_SQRT2, tab)
        if hpt > 0:
            upper = True
            q = 0.5 * (e1 + e2)
        else:
            q = 0.5 * (e1 - e2)
    eq = math.exp(-half_e2) * q
    if upper:
        return bmax - eq, eq, q, half_e2, True
    return eq, bmax - eq, q, half_e2, False


@njit(**_INLINE)
def _rational_cubic(t, omt, y_l, y_r, d_l, d_r, h, r):
    if r < _R_MAX:
        return (y_r * t * t * t + (r * y_r - h * d_r) * t * t * omt + (r * y_l + h * d_l) * t * omt * omt
                + y_l * omt * omt * omt) / (1.0 + (r - 3.0) * t * omt)
    return y_r * t + y_l * omt


@njit(**_INLINE)
def _min_control(d_l, d_r, slope, prefer_shape):
    big = _R_MAX if prefer_shape else -_R_MAX
    monotonic = (d_l * slope >= 0) and (d_r * slope >= 0)
    convex = (d_l <= slope) and (slope <= d_r)
    concave = (d_l >= slope) and (slope >= d_r)
    if not (monotonic or convex or concave):
        return _R_MIN
    if monotonic:
        r1 = (d_r + d_l) / slope if slope != 0 else big
    else:
        r1 = -_R_MAX
    if convex or concave:
        if (slope - d_l != 0) and (d_r - slope != 0):
            r2 = _fmax(abs((d_r - d_l) / (d_r - slope)), abs((d_r - d_l) / (slope - d_l)))
        else:
            r2 = big
    else:
        r2 = big if monotonic else -_R_MAX
    return _fmax(_R_MIN, _fmax(r1, r2))


@njit(**_INLINE)
def _control(x_l, x_r, y_l, y_r, d_l, d_r, second, left, shape_preserving):
    h = x_r - x_l
    slope = (y_r - y_l) / h
    num = 0.5 * h * second + (d_r - d_l)
    den = (slope - d_l) if left else (d_r - slope)
    if num == 0:
        r = 0.0
    elif den == 0:
        r = _R_MAX if num > 0 else _R_MIN
    else:
        r = num / den
    return _fmax(r, _min_control(d_l, d_r, slope, shape_preserving))


@njit(**_JIT)
def _guess_high(cbeta, x, su, bu, cu, bmax, tab):
    # highest branch: f = N(-s/2) between (b_u, f_u) and (b_max, 0)
    hu = x / su
    f_u = 0.5 * erfcx(su / (2.0 * _SQRT2), tab) * math.exp(-0.125 * su * su)
    fp = -0.5 * math.exp(0.5 * hu * hu)
    fpp = _SQRT_PI_OVER_2 * math.exp(hu * hu + 0.125 * su * su) * hu * hu / su
    r = _control(bu, bmax, f_u, 0.0, fp, -0.5, fpp, True, True)
    omt = cbeta / cu               # (b_max - beta)/(b_max - b_u), exact near b_max
    tt = 1.0 - omt
    f = _rational_cubic(tt, omt, f_u, 0.0, fp, -0.5, cu, r)
    if not f > 0:
        f = (f_u * omt + 0.5 * cu * tt) * omt
    return -2.0 * ndtri(f)


@njit(**_INLINE)
def _guess_mid(beta, lower, sl, sc, su, blu, bc, vc, vlu):
    # middle branches: s(beta) by rational cubic, second derivative 0 at the inflexion b_c
    if lower:
        x_l, x_r, y_l, y_r, d_l, d_r = blu, bc, sl, sc, 1.0 / vlu, 1.0 / vc
    else:
        x_l, x_r, y_l, y_r, d_l, d_r = bc, blu, sc, su, 1.0 / vc, 1.0 / vlu
    r = _control(x_l, x_r, y_l, y_r, d_l, d_r, 0.0, not lower, False)
    hh = x_r - x_l
    if hh > 0:
        tt = (beta - x_l) / hh
        return _rational_cubic(tt, 1.0 - tt, y_l, y_r, d_l, d_r, hh, r)
    return 0.5 * (y_l + y_r)


@njit(**_INLINE)
def _householder(s, hs, E, beta, cbeta, ln_beta, kind, b, c, q, half_e2, upper):
    """One third-order Householder step on the branch objective (kind 0: ``1/ln b``, lowest branch;
    2: ``ln(b_max - b)``, highest branch above b_max/2; else ``b``); ``hs = x/s``, ``E = exp(-half_e2)``."""
    ln_v = -half_e2 - _LN_SQRT2PI
    vega = E * _INV_SQRT2PI
    B = hs * hs / s - 0.25 * s                       # b''/b'
    B3 = B * B - 3.0 * ((hs / s) * (hs / s)) - 0.25  # third over first derivative of b
    if kind == 0:
        if upper:
            ln_b = math.log(b)
            bpob = math.exp(ln_v - ln_b)             # b'/b
        else:   # b = E q, b' = E/sqrt(2 pi): b'/b without exp, and without cancelling half_e2
            ln_b = math.log(q) - half_e2
            bpob = _INV_SQRT2PI / q
        inv = 1.0 / ln_b
        nu = (ln_beta - ln_b) * ln_b / ln_beta / bpob
        h2 = B - bpob * (1.0 + 2.0 * inv)
        h3 = B3 + 2.0 * bpob * bpob * (1.0 + 3.0 * inv * (1.0 + inv)) - 3.0 * B * bpob * (1.0 + 2.0 * inv)
    elif kind == 2:
        gp = vega / c
        nu = -math.log(cbeta / c) / gp
        h2 = B + gp
        h3 = B3 + gp * (2.0 * gp + 3.0 * B)
    else:
        nu = (beta - b) / vega
        h2 = B
        h3 = B3
    ds = nu * ((1.0 + 0.5 * h2 * nu) / (1.0 + nu * (h2 + h3 * nu / 6.0)))
    if not math.isfinite(ds):
        ds = nu
    lim = -0.5 * s
    if ds < lim:   # a NaN passes through, as with np.maximum
        ds = lim
    return s + ds


# ------------------------------------------------------------------------------ block kernels

_BLOCK = 256


@njit(**_JIT)
def _nb_block(m, x, s, bmax, tab, gl, b, c, q, he, up, hh, tt, i_t, i_e, i_l, ph, pt, py):
    """``normalised_black`` of elements ``0..m-1`` of the block arrays into ``b, c, q, he, up``; on return
    ``hh`` holds ``h = x/s`` and ``tt`` holds ``E = exp(-he)`` (``ph, pt, py``, index lists: scratch)."""
    nt = 0
    ne = 0
    nl = 0
    for i in range(m):
        h = x[i] / s[i]
        t = 0.5 * s[i]
        hh[i] = h
        tt[i] = t
        he[i] = 0.5 * (h * h + t * t)
        ah = -h
        tay = (ah < _H_GL) & (t < _T_TAYLOR)
        lag = (ah >= _H_GL) & (t < _TAU_GL * ah)
        i_t[nt] = i
        i_l[nl] = i
        i_e[ne] = i
        nt += 1 if tay else 0
        nl += 1 if lag else 0
        ne += 0 if (tay | lag) else 1
    # Taylor region in three loops: the table look-ups, then the series on packed arrays (branch-free,
    # so that LLVM vectorises it), then back in place
    for k in range(nt):
        i = i_t[k]
        ph[k] = hh[i]
        pt[k] = tt[i]
        py[k] = _SQRT_PI_OVER_2 * erfcx(-hh[i] / _SQRT2, tab)
    for k in range(nt):
        py[k] = _taylor_series(ph[k], pt[k], py[k])
    for k in range(nt):
        i = i_t[k]
        q[i] = py[k]
        up[i] = 0
    for k in range(nl):
        i = i_l[k]
        q[i] = _q_laguerre(hh[i], tt[i], gl)
        up[i] = 0
    for k in range(ne):
        i = i_e[k]
        h = hh[i]
        t = tt[i]
        hpt = h + t
        e1 = erfcx(abs(hpt) * _INV_SQRT2, tab)
        e2 = erfcx((t - h) * _INV_SQRT2, tab)
        u = hpt > 0
        q[i] = 0.5 * (e1 + e2) if u else 0.5 * (e1 - e2)
        up[i] = 1 if u else 0
    for i in range(m):
        E = math.exp(-he[i])
        tt[i] = E   # from here on tt holds E = exp(-half_e2): vega = E / sqrt(2 pi)
        eq = E * q[i]
        if up[i]:
            b[i] = bmax[i] - eq
            c[i] = eq
        else:
            b[i] = eq
            c[i] = bmax[i] - eq


@njit(int64(_IN, _IN, _IN, _IN, _IN, _IN, _TAB, _TAB, _OUT, _CODE), **_JIT)
def implied_vol(p, F, K, T, cp, D, tab, gl, vol, code):
    """Fill ``vol`` and ``code`` (int8 reason codes) for 1-D float64 arrays of one length; returns the
    number of ``no_convergence`` elements. ``core.black._implied_vol_flat`` and ``_solve_normalised``."""
    n = p.shape[0]
    nB = _BLOCK
    idx = np.empty(nB, np.int64)
    i_t = np.empty(nB, np.int64)
    i_e = np.empty(nB, np.int64)
    i_l = np.empty(nB, np.int64)
    kind = np.empty(nB, np.int8)
    low = np.empty(nB, np.int8)
    up = np.empty(nB, np.int8)
    x = np.empty(nB)
    beta = np.empty(nB)
    cbeta = np.empty(nB)
    ln_beta = np.zeros(nB)
    rT = np.empty(nB)
    bmax = np.empty(nB)
    sc = np.empty(nB)
    bc = np.empty(nB)
    cc = np.empty(nB)
    sl = np.empty(nB)
    su = np.empty(nB)
    s = np.empty(nB)
    b = np.empty(nB)
    c = np.empty(nB)
    q = np.empty(nB)
    he = np.empty(nB)
    hh = np.empty(nB)
    tt = np.empty(nB)
    ph = np.empty(nB)
    pt = np.empty(nB)
    py = np.empty(nB)
    n_bad = 0
    for lo in range(0, n, nB):
        hi = min(lo + nB, n)
        # validation; the elements with a vol to find are packed into the block arrays
        m = 0
        for i in range(lo, hi):
            pi, Fi, Ki, Ti, ci, Di = p[i], F[i], K[i], T[i], cp[i], D[i]
            vol[i] = math.nan
            if not (math.isfinite(pi) and math.isfinite(Fi) and math.isfinite(Ki) and math.isfinite(Ti)
                    and math.isfinite(Di) and math.isfinite(ci)):
                code[i] = _NON_FINITE
                continue
            if not (pi > 0 and Fi > 0 and Ki > 0 and Ti > 0 and Di > 0):
                code[i] = _NON_POSITIVE
                continue
            if not (ci == 1.0 or ci == -1.0):
                code[i] = _BAD_CP
                continue
            pu = pi / Di
            intrinsic = ci * (Fi - Ki)
            if not intrinsic > 0.0:
                intrinsic = 0.0
            upper = Fi if ci > 0 else Ki
            root = math.sqrt(Fi) * math.sqrt(Ki)
            bt = (pu - intrinsic) / root      # OTM time value, normalised (put-call parity)
            if not bt >= _TINY:
                code[i] = _BELOW
                continue
            if pu >= upper:
                code[i] = _ABOVE
                continue
            code[i] = _OK
            idx[m] = i
            beta[m] = bt
            cbeta[m] = (upper - pu) / root
            x[m] = -abs(_ln_f_over_k(Fi, Ki))
            rT[m] = math.sqrt(Ti)
            m += 1
        # b at the inflexion s_c = sqrt(2|x|): b_c = b_max (1 - erfcx(sqrt|x|))/2
        for j in range(m):
            bm = math.exp(0.5 * x[j])
            bmax[j] = bm
            scj = math.sqrt(2.0 * -x[j])
            sc[j] = scj
            ec = erfcx(scj * _INV_SQRT2, tab)
            bc[j] = 0.5 * bm * (1.0 - ec)
            cc[j] = 0.5 * bm * (1.0 + ec)
        for j in range(m):
            ax = -x[j]
            if ax < 0.02:   # near the money that difference cancels: the general routine
                if ax > 0:
                    bc[j], cc[j], _, _, _ = normalised_black(x[j], sc[j], bmax[j], tab, gl)
                else:
                    bc[j] = 0.0
                    cc[j] = bmax[j]
        # the tangent points s_l (below the inflexion) or s_u (above), and b there
        for j in range(m):
            vc = bmax[j] * _INV_SQRT2PI
            lw = beta[j] < bc[j]
            low[j] = 1 if lw else 0
            sl[j] = sc[j] - bc[j] / vc
            su[j] = sc[j] + cc[j] / vc
            slu = sl[j] if lw else su[j]
            s[j] = slu if slu > 0 else 1.0
        _nb_block(m, x, s, bmax, tab, gl, b, c, q, he, up, hh, tt, i_t, i_e, i_l, ph, pt, py)
        # initial guess, one loop per branch (so that each loop's branches are predictable)
        n0 = 0
        n1 = 0
        n3 = 0
        for j in range(m):
            lw = low[j] == 1
            slu = sl[j] if lw else su[j]
            if not slu > 0:
                b[j] = 0.0
            br0 = lw & (beta[j] < b[j])
            br3 = (not lw) & (beta[j] > b[j])
            i_t[n0] = j
            i_e[n1] = j
            i_l[n3] = j
            n0 += 1 if br0 else 0
            n3 += 1 if br3 else 0
            n1 += 0 if (br0 | br3) else 1
        for k in range(n1):
            j = i_e[k]
            kind[j] = 1
            s[j] = _guess_mid(beta[j], low[j] == 1, sl[j], sc[j], su[j], b[j], bc[j], bmax[j] * _INV_SQRT2PI,
                              tt[j] * _INV_SQRT2PI)
        # lowest branch: f = 2pi/sqrt27 |x| N(-z)^3, z = |x|/(sqrt3 s), interpolated between (0, 0) and
        # (b_l, f_l); in short loops (shorter dependency chains overlap better), scratch in ph, py, hh, tt, q, he
        for k in range(n0):
            j = i_t[k]
            kind[j] = 0
            ln_beta[j] = math.log(beta[j])
            z = -x[j] / (_SQRT3 * sl[j])
            ph[k] = z * z
            py[k] = erfcx(z / _SQRT2, tab)
        for k in range(n0):
            j = i_t[k]
            ax = -x[j]
            slj = sl[j]
            y = ph[k]
            ex = py[k]
            Phi = 0.5 * ex * math.exp(-0.5 * y)
            hh[j] = _TWO_PI_OVER_SQRT27 * ax * Phi * Phi * Phi                       # f_l
            tt[j] = 2.0 * math.pi * y * 0.25 * ex * ex * math.exp(0.125 * slj * slj)   # f'(b_l)
            s2 = slj * slj
            q[j] = (math.pi / 6.0 * y / (s2 * slj) * 0.5 * ex * math.exp(1.5 * y + 0.25 * s2)    # f''(b_l)
                    * (8.0 * _SQRT3 * slj * ax + (3.0 * s2 * (s2 - 8.0) - 8.0 * ax * ax) * 0.5 * ex * _SQRT2PI))
        for k in range(n0):
            j = i_t[k]
            bl = b[j]
            f_l = hh[j]
            fp = tt[j]
            r = _control(0.0, bl, 0.0, f_l, 1.0, fp, q[j], False, True)
            u = beta[j] / bl
            f = _rational_cubic(u, 1.0 - u, 0.0, f_l, 1.0, fp, bl, r)
            if not f > 0:
                f = (f_l * u + bl * (1.0 - u)) * u
            he[j] = f / (_TWO_PI_OVER_SQRT27 * -x[j])
        for k in range(n0):
            ph[k] = math.log(he[i_t[k]]) / 3.0
        for k in range(n0):
            j = i_t[k]
            s[j] = -x[j] / (_SQRT3 * -_ndtri_cbrt(he[j], ph[k]))
        for k in range(n3):
            j = i_l[k]
            kind[j] = 2 if beta[j] > 0.5 * bmax[j] else 3
            s[j] = _guess_high(cbeta[j], x[j], su[j], b[j], c[j], bmax[j], tab)
        for _ in range(_N_HOUSEHOLDER):
            for j in range(m):
                sj = s[j]
                if not (sj > 0 and math.isfinite(sj)):
                    s[j] = sl[j] if low[j] == 1 else su[j]
            _nb_block(m, x, s, bmax, tab, gl, b, c, q, he, up, hh, tt, i_t, i_e, i_l, ph, pt, py)
            for j in range(m):
                s[j] = _householder(s[j], hh[j], tt[j], beta[j], cbeta[j], ln_beta[j], kind[j], b[j], c[j], q[j],
                                    he[j], up[j] == 1)
        for j in range(m):
            v = s[j] / rT[j]
            i = idx[j]
            if math.isfinite(v) and v > 0:
                vol[i] = v
            else:
                code[i] = _NO_CONV
                n_bad += 1
    return n_bad


@njit(int64(_IN, _IN, _IN, _IN, _IN, _IN, _TAB, _TAB, _OUT), **_JIT)
def black_price(F, K, T, sigma, cp, D, tab, gl, out):
    """Fill ``out`` with discounted Black-76 prices (``core.black.black_price`` element-wise, 1-D float64)."""
    n = F.shape[0]
    nB = _BLOCK
    idx = np.empty(nB, np.int64)
    i_t = np.empty(nB, np.int64)
    i_e = np.empty(nB, np.int64)
    i_l = np.empty(nB, np.int64)
    up = np.empty(nB, np.int8)
    x = np.empty(nB)
    s = np.empty(nB)
    bmax = np.empty(nB)
    base = np.empty(nB)
    scale = np.empty(nB)
    dd = np.empty(nB)
    b = np.empty(nB)
    c = np.empty(nB)
    q = np.empty(nB)
    he = np.empty(nB)
    hh = np.empty(nB)
    tt = np.empty(nB)
    ph = np.empty(nB)
    pt = np.empty(nB)
    py = np.empty(nB)
    for lo in range(0, n, nB):
        hi = min(lo + nB, n)
        m = 0
        for i in range(lo, hi):
            Fi, Ki, ci, Di = F[i], K[i], cp[i], D[i]
            si = sigma[i] * math.sqrt(T[i])
            if not (Fi > 0 and Ki > 0 and T[i] >= 0 and sigma[i] >= 0 and (ci == 1.0 or ci == -1.0) and Di >= 0
                    and math.isfinite(Fi) and math.isfinite(Ki) and math.isfinite(Di) and si == si):
                out[i] = math.nan
                continue
            intrinsic = ci * (Fi - Ki)
            if not intrinsic > 0.0:
                intrinsic = 0.0
            if si == 0:
                out[i] = Di * intrinsic
            elif math.isinf(si):
                out[i] = Di * (Fi if ci > 0 else Ki)
            else:
                xi = -abs(_ln_f_over_k(Fi, Ki))
                idx[m] = i
                x[m] = xi
                s[m] = si
                bmax[m] = math.exp(0.5 * xi)
                dd[m] = Di
                base[m] = intrinsic
                scale[m] = math.sqrt(Fi) * math.sqrt(Ki)
                m += 1
        _nb_block(m, x, s, bmax, tab, gl, b, c, q, he, up, hh, tt, i_t, i_e, i_l, ph, pt, py)
        for j in range(m):
            out[idx[j]] = dd[j] * (base[j] + scale[j] * b[j])
    return n
