"""Compiled (numba) kernel of ``core.pricing.american``: the same algorithm as its numpy path, option by option.

Private module: ``core.pricing.american`` imports it lazily through ``core._kernels.LazyKernel`` and falls back
to its numpy path when numba is missing, compilation fails or ``DUPIRE_DESK_NO_NUMBA=1``. Read the maths in
``core.pricing.american`` (Andersen, Lake and Offengenden 2016; Li 2010 for the QD+ start): every step,
clip and guard mirrors the numpy function of the same name there. The scheme's tables (nodes, weights,
interpolation matrices) are arguments, not globals, so that numba's on-disk cache never freezes them.
``nogil`` lets the caller split a batch across threads. ``fastmath`` allows fused multiply-adds, ``x/y`` as
``x*(1/y)`` and signed-zero freedom only (no reassociation: the sums keep their order); measured 5% faster,
and the two backends still agree to ~1e-13.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from core._black_numba import erfcx

_JIT = dict(cache=True, nogil=True, fastmath={"contract", "arcp", "nsz"}, error_model="numpy")
_INLINE = dict(_JIT, inline="always")

_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_QD_ITERS = 5       # Newton steps on the QD+ exercise condition (the same number as the numpy path)
_QD_START = 2.0     # ... started at X exp(-_QD_START sigma sqrt(tau))
_LO_FRAC = 1e-8     # lowest QD+ boundary, as a fraction of X
_R_TINY = 1e-10     # the rate QD+ uses for r = 0


@njit(**_INLINE)
def _ncdf(x, e, tab):
    """N(x) given ``e = exp(-x^2/2)`` (computed anyway for the density): ``erfc = erfcx e``, with core.black's
    table ``erfcx`` (~5 ns against libm's ``erfc`` ~15 ns, 2e-15 relative)."""
    t = 0.5 * erfcx(abs(x) * _INV_SQRT2, tab) * e
    return t if x < 0.0 else 1.0 - t


@njit(**_JIT)
def _qdplus(X, r, q, sig, tau, tab, y, work):
    """QD+ boundary ``ln B`` at every node ``tau`` (strike 1) into ``y``; ``work`` scratch (9, n). The nodes'
    Newton steps are interleaved (one step at every node, then the next): independent chains that the
    CPU overlaps, where node after node would wait on each step's latency."""
    n = tau.shape[0]
    r = max(r, _R_TINY)
    s2 = sig * sig
    om = 2.0 * (r - q) / s2
    lo = _LO_FRAC * X
    iv, shift, dr, dq, beta, c_theta, i2t, hs, bb = (work[0], work[1], work[2], work[3], work[4], work[5],
                                                     work[6], work[7], work[8])
    for i in range(n):
        t = tau[i]
        sqt = math.sqrt(t)
        v = sig * sqt
        dr[i] = math.exp(-r * t)
        dq[i] = math.exp(-q * t)
        h = -math.expm1(-r * t)
        root = math.sqrt((om - 1.0) ** 2 + 8.0 * r / (s2 * h))
        lam = 0.5 * (-(om - 1.0) - root)
        lamp = 2.0 * r / (s2 * h * h * root)
        den = 2.0 * lam + om - 1.0
        alpha = 2.0 * dr[i] * r / (s2 * den)
        beta[i] = alpha * (1.0 / h + lamp / den) - lam
        c_theta[i] = alpha / (dr[i] * r)
        iv[i] = 1.0 / v
        shift[i] = math.log(dq[i] / dr[i]) * iv[i] + 0.5 * v
        i2t[i] = 0.5 / t
        hs[i] = 0.5 * sig / sqt
        bb[i] = X * math.exp(-_QD_START * v)
    rq = r - q
    for _ in range(_QD_ITERS):
        for i in range(n):
            b = bb[i]
            v = 1.0 / iv[i]
            dp = math.log(b) * iv[i] + shift[i]
            dm = dp - v
            ep = math.exp(-0.5 * dp * dp)
            Pp = _ncdf(-dp, ep, tab)
            Pm = _ncdf(-dm, math.exp(-0.5 * dm * dm), tab)
            fp = ep * _INV_SQRT2PI
            dri = dr[i]
            dqi = dq[i]
            npv = dri * Pm - b * dqi * Pp
            theta = r * dri * Pm - q * b * dqi * Pp - hs[i] * b * dqi * fp
            charm = -dqi * (fp * (rq * iv[i] - dm * i2t[i]) + q * Pp)
            g = 1.0 - dqi * Pp
            F = g * b - beta[i] * (1.0 - b - npv) + c_theta[i] * theta
            Fd = g + dqi * fp * iv[i] + beta[i] * g + c_theta[i] * charm
            bn = b - F / Fd
            if not math.isfinite(bn):
                bn = b
            bb[i] = min(max(bn, lo), X)
    for i in range(n):
        y[i] = math.log(bb[i])


@njit(**_JIT)
def _solve(A, rhs, n):
    """Solve ``A x = rhs`` in place (Gaussian elimination, partial pivoting); ``rhs`` becomes ``x``."""
    for col in range(n):
        piv = col
        best = abs(A[col, col])
        for row in range(col + 1, n):
            if abs(A[row, col]) > best:
                best = abs(A[row, col])
                piv = row
        if piv != col:
            for j in range(n):
                A[col, j], A[piv, j] = A[piv, j], A[col, j]
            rhs[col], rhs[piv] = rhs[piv], rhs[col]
        d = A[col, col]
        for row in range(col + 1, n):
            f = A[row, col] / d
            if f != 0.0:
                for j in range(col, n):
                    A[row, j] -= f * A[col, j]
                rhs[row] -= f * rhs[col]
    for row in range(n - 1, -1, -1):
        acc = rhs[row]
        for j in range(row + 1, n):
            acc -= A[row, j] * rhs[j]
        rhs[row] = acc / A[row, row]


@njit(**_JIT)
def _setup_points(To, so, ro, qo, theta, sth, isth, u, wq, wr, wd, ivs, vss, drift):
    """Per-option quadrature data at the points ``(i, k)`` of one fixed-point quadrature: ``wr`` holds ``r u``
    (the step multiplies ``r T wq`` by ``exp(r u - d_-^2/2)``), ``wd`` the weight ``q T wq e^{q u}``;
    ``sth``, ``isth`` are ``sqrt(theta)`` and its inverse (no square root or division per point)."""
    n, nl = theta.shape
    sv = so * math.sqrt(To)
    isv = 1.0 / sv
    for i in range(n):
        for k in range(nl):
            th = To * theta[i, k]
            uu = To * u[i, k]
            vss[i, k] = sv * sth[i, k]
            ivs[i, k] = isv * isth[i, k]
            drift[i, k] = (ro - qo) * th
            wr[i, k] = ro * uu           # the weight's exponent: exp(r u) joins n(d_-)'s exp in the step
            wd[i, k] = qo * To * wq[i, k] * math.exp(qo * uu)


@njit(**_JIT)
def _newton_step(y, lnX, ro, qo, To, tau, vt, wq, wr, wd, ivs, vss, drift, Lq, LqT, tab, Hn, sHn, Hk, ga, gb, AN,
                 AD, J, R):
    """One Newton step on the collocation system in ``y = ln B(tau_i)`` (in place), with the quadrature
    ``(wr, wd, ivs, vss, drift, Lq, LqT)``: ``core.pricing.american._put_premium_numpy``'s loop body."""
    n, nl = wr.shape
    for j in range(n):
        Hn[j] = (lnX - y[j]) ** 2
        sHn[j] = lnX - y[j]      # sqrt(H_j): y <= ln X
    Hn[n] = 0.0
    for i in range(n):
        Nv = 0.0
        Dv = 0.0
        gNs = 0.0
        gDs = 0.0
        for k in range(nl):
            Hk[k] = 0.0
        for j in range(n + 1):   # k innermost: independent sums, vectorised
            h = Hn[j]
            for k in range(nl):
                Hk[k] += LqT[i, j, k] * h
        for k in range(nl):
            Hu = Hk[k]
            sHu = math.sqrt(Hu) if Hu > 0.0 else 0.0
            lnz = y[i] - lnX + sHu
            iv = ivs[i, k]
            v = vss[i, k]
            dp = (lnz + drift[i, k]) * iv + 0.5 * v
            dm = dp - v
            ep = math.exp(-0.5 * dp * dp)
            fp = ep * _INV_SQRT2PI * iv
            fm = math.exp(wr[i, k] - 0.5 * dm * dm) * _INV_SQRT2PI * iv    # e^{r u} n(d_-)/v
            rw = ro * To * wq[i, k]
            Nv += rw * fm
            Dv += wd[i, k] * (_ncdf(dp, ep, tab) + fp)
            gN = rw * (-fm * dm * iv)
            gD = wd[i, k] * (fp * (1.0 - dp * iv))
            gNs += gN
            gDs += gD
            inv = 1.0 / sHu if sHu > 1e-300 else 0.0
            ga[k] = gN * inv
            gb[k] = gD * inv
        for j in range(n):
            AN[i, j] = 0.0
            AD[i, j] = 0.0
        for k in range(nl):      # j innermost: independent sums, vectorised
            a = ga[k]
            b = gb[k]
            for j in range(n):
                AN[i, j] += a * Lq[i, k, j]
                AD[i, j] += b * Lq[i, k, j]
        vti = vt[i]
        ivt = 1.0 / vti
        dp0 = (y[i] + (ro - qo) * tau[i]) * ivt + 0.5 * vti
        dm0 = dp0 - vti
        e0 = math.exp(-0.5 * dp0 * dp0)
        f0p = e0 * _INV_SQRT2PI
        f0m = math.exp(-0.5 * dm0 * dm0) * _INV_SQRT2PI
        Nv += f0m * ivt
        Dv += f0p * ivt + _ncdf(dp0, e0, tab)
        dN0 = -f0m * dm0 * ivt * ivt + gNs
        dD0 = f0p * (1.0 - dp0 * ivt) * ivt + gDs
        iN = 1.0 / Nv
        iD = 1.0 / Dv
        R[i] = -(y[i] + (ro - qo) * tau[i] + math.log(Dv * iN))
        for j in range(n):
            J[i, j] = (AN[i, j] * iN - AD[i, j] * iD) * sHn[j]
        J[i, i] += 1.0 - dN0 * iN + dD0 * iD
    _solve(J, R, n)
    for i in range(n):
        yi = y[i] + R[i]
        if not math.isfinite(yi):
            yi = y[i]
        y[i] = min(yi, lnX)


@njit(**_JIT)
def put_premium(s, r, q, sig, T, m, c, theta, u, wq, Lq, theta1, u1, wq1, Lq1, tp, wp, Lp, half, tab, prem, bT):
    """Early-exercise premium per unit strike ``prem`` and boundary at expiry ``bT`` of single-boundary puts
    (spot/strike ``s``), 1-D arrays; ``m`` Newton iterations, the first with the quadrature ``(theta1, u1,
    wq1, Lq1)``, the others with ``(theta, u, wq, Lq)``; the QD+ start at the even nodes only and ``half``
    interpolating the odd ones (when it is not empty); tables of ``core.pricing.american._tables``;
    ``tab`` the erfcx table of ``core.black``."""
    n, nl = theta.shape
    nl1 = theta1.shape[1]
    p = tp.shape[0]
    Hn = np.zeros(n + 1)
    sHn = np.empty(n)
    y = np.empty(n)
    tau = np.empty(n)
    vt = np.empty(n)
    wr = np.empty((n, nl))
    wd = np.empty((n, nl))
    ivs = np.empty((n, nl))
    vss = np.empty((n, nl))
    drift = np.empty((n, nl))
    wr1 = np.empty((n, nl1))
    wd1 = np.empty((n, nl1))
    ivs1 = np.empty((n, nl1))
    vss1 = np.empty((n, nl1))
    drift1 = np.empty((n, nl1))
    big = max(nl, nl1)
    ga = np.empty(big)
    gb = np.empty(big)
    Hk = np.empty(big)
    LqT = np.ascontiguousarray(Lq.transpose(0, 2, 1))
    LqT1 = np.ascontiguousarray(Lq1.transpose(0, 2, 1))
    LpT = np.ascontiguousarray(Lp.T)
    sth = np.sqrt(theta)
    isth = 1.0 / sth
    sth1 = np.sqrt(theta1)
    isth1 = 1.0 / sth1
    Hp = np.empty(p)
    work = np.empty((9, n))
    nh = half.shape[0]
    tau_e = np.empty(nh)
    y_e = np.empty(nh)
    He = np.zeros(nh + 1)
    AN = np.empty((n, n))
    AD = np.empty((n, n))
    J = np.empty((n, n))
    R = np.empty(n)
    for o in range(s.shape[0]):
        ro, qo, so, To = r[o], q[o], sig[o], T[o]
        X = min(1.0, ro / qo) if qo > 0.0 else 1.0
        lnX = math.log(X)
        for i in range(n):
            tau[i] = To * c[i]
            vt[i] = so * math.sqrt(tau[i])
        if nh == 0:
            _qdplus(X, ro, qo, so, tau, tab, y, work)
        else:
            for j in range(nh):
                tau_e[j] = tau[2 * j]
            _qdplus(X, ro, qo, so, tau_e, tab, y_e, work)
            for j in range(nh):
                y[2 * j] = y_e[j]
                He[j] = (lnX - y_e[j]) ** 2
            for i in range(nh):
                h = 0.0
                for j in range(nh + 1):
                    h += half[i, j] * He[j]
                y[2 * i + 1] = lnX - (math.sqrt(h) if h > 0.0 else 0.0)
        _setup_points(To, so, ro, qo, theta1, sth1, isth1, u1, wq1, wr1, wd1, ivs1, vss1, drift1)
        _newton_step(y, lnX, ro, qo, To, tau, vt, wq1, wr1, wd1, ivs1, vss1, drift1, Lq1, LqT1, tab, Hn, sHn, Hk,
                     ga, gb, AN, AD, J, R)
        if m > 1:
            _setup_points(To, so, ro, qo, theta, sth, isth, u, wq, wr, wd, ivs, vss, drift)
            for _ in range(m - 1):
                _newton_step(y, lnX, ro, qo, To, tau, vt, wq, wr, wd, ivs, vss, drift, Lq, LqT, tab, Hn, sHn, Hk,
                             ga, gb, AN, AD, J, R)
        for j in range(n):
            Hn[j] = (lnX - y[j]) ** 2
        Hn[n] = 0.0
        lns = math.log(s[o])
        for k in range(p):
            Hp[k] = 0.0
        for j in range(n + 1):   # k innermost: independent sums, vectorised
            h = Hn[j]
            for k in range(p):
                Hp[k] += LpT[j, k] * h
        acc = 0.0
        sqT = math.sqrt(To)
        for k in range(p):
            th = To * tp[k] * tp[k]
            v = so * sqT * tp[k]
            H = Hp[k]
            lnB = lnX - (math.sqrt(H) if H > 0.0 else 0.0)
            dp = (lns - lnB + (ro - qo) * th) / v + 0.5 * v
            dm = dp - v
            Pm = _ncdf(-dm, math.exp(-0.5 * dm * dm), tab)
            Pp = _ncdf(-dp, math.exp(-0.5 * dp * dp), tab)
            acc += wp[k] * (ro * math.exp(-ro * th) * Pm - qo * s[o] * math.exp(-qo * th) * Pp)
        prem[o] = To * acc
        bT[o] = X * math.exp(-math.sqrt(Hn[0]))
