"""American vanilla options under Black-Scholes (constant r, q, sigma per option): price and implied vol.

Method: the spectral collocation of the early-exercise boundary of Andersen, Lake and Offengenden (ALO),
"High-performance American option pricing", Journal of Computational Finance 20(1) (2016), written here
from the paper's description, with a full Newton solve of the collocation system. For a put (strike K,
rates r, q, vol sigma, time to expiry tau), the early-exercise premium is (ALO eq. 10, Kim 1990)

    V - v_E = int_0^tau [r K e^{-r t} N(-d_-(t, S/B(tau-t))) - q S e^{-q t} N(-d_+(t, S/B(tau-t)))] dt,

``d_+-(t, z) = (ln z + (r - q) t)/(sigma sqrt t) +- sigma sqrt(t)/2``. The boundary ``B`` solves the
smooth-pasting fixed point ``B(tau) = K e^{-(r-q) tau} N(tau, B)/D(tau, B)`` (ALO's "FP-B"),

    N = n(d_-(tau, B/K))/(sigma sqrt tau) + r int_0^tau e^{r u} n(d_-(tau-u, B(tau)/B(u)))/(sigma sqrt(tau-u)) du,
    D = n(d_+(tau, B/K))/(sigma sqrt tau) + N(d_+(tau, B/K))
        + q int_0^tau e^{q u} [N(d_+(tau-u, .)) + n(d_+(tau-u, .))/(sigma sqrt(tau-u))] du,

collocated at ``n + 1`` Chebyshev nodes (second kind) in ``sqrt(tau)`` on ``H = ln(B/X)^2``, ``X = B(0+)
= K min(1, r/q)`` (``K`` when ``q <= 0``) (ALO section 4). Steps, with the parameters of ``Scheme``:

1. start: Li's QD+ boundary (Li, Quantitative Finance 10, 2010), ``_QD_ITERS`` Newton steps on its exercise
   condition from ``X exp(-2 sigma sqrt(tau))``, at the even nodes (for even ``n`` the Chebyshev nodes of
   degree ``n/2``), and at the odd ones the polynomial through the even ones;
2. ``m`` Newton steps on the ``n`` equations ``ln B_i = ln f_i(B)`` in ``y_i = ln B(tau_i)``, with the exact
   Jacobian of the discretised system (including the integrals' dependence on the other nodes through the
   interpolation), where ALO's Jacobi-Newton keeps only the diagonal. From QD+, two steps suffice, and the
   first may use a coarser quadrature (``l_first`` points) at no loss: the second corrects it;
3. the fixed-point integrals use ``l``-point Gauss-Legendre in ``phi`` with ``u = tau cos^2 phi``, and the
   premium ``p``-point Gauss-Legendre with ``t = tau sin^2 phi``: both maps are smooth in ``sqrt(u)`` and
   ``sqrt(tau - u)``, where the integrands have their square-root behaviour (plain Gauss-Legendre in ``u``
   converges only like ``l^-3`` there).

Default ``Scheme(n=14, l=10, m=2, p=40, l_first=6)``. On the test grid of tests/pricing/test_american.py
(2,560 options: S/K 0.7-1.3, T 1 week-3 years, sigma 0.05-0.8, r -1%..5%, q 0..6%, calls and puts) its
max relative error on prices above 0.01 is 7.4e-7 against QuantLib's QdFpAmericanEngine iterated to
convergence (median 2e-14; the worst at sigma = 0.05, T = 3y; ``n = 16, l = 12, p = 48``: 3.5e-7 for 20%
more time, ``n = 12``: 3.7e-6); QuantLib's highPrecisionScheme itself is 2e-6 off there (10 fixed-point steps
are not enough at low vol). The weakest corner is low vol with a long expiry and a large carry.
``HIGH_PRECISION`` agrees with the converged reference to 1e-8. Cost: ~16 us of CPU per option (numba
backend, one core of
this machine), ~10x less than QuantLib's default QdFp scheme, ~250x less than its high-precision one.

Calls use the put-call symmetry ``C(S, K, r, q, sigma) = P(K, S, q, r, sigma)`` (McDonald and Schroder
1998). Early exercise of a put can pay only where ``r K - q S > 0`` below the strike, hence three regimes
(``_regimes``): ``r <= 0`` and ``q >= r`` (``r = 0 > q`` excepted): never exercised, the European price;
``r > 0``, or ``r = 0 > q``: one boundary, the collocation above (``X = K`` when ``q <= 0``); ``q < r < 0``:
two boundaries (Battauz, De Donno and Sbuelz 2015), which the collocation does not cover: finite
differences instead (``_fd_put``: Crank-Nicolson with projection, Richardson in time; ~1e-5 relative,
~0.15 s per option). For a call the same with ``r`` and ``q`` swapped (two boundaries when ``r < q < 0``).

Two backends compute the same algorithm: the numba kernel ``core._american_numba`` (option by option,
``nogil``, batches split over the CPUs by threads) and the numpy path of this module (batches of
``_CHUNK`` options), used when numba is absent or ``DUPIRE_DESK_NO_NUMBA=1``; they agree to ~1e-13.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.linalg import solve_banded
from scipy.special import ndtr

from core._kernels import LazyKernel
from core.black import _numba_tables, black_price, black_vega
from core.black import implied_vol as black_implied_vol
from core.errors import InputError


@dataclass(frozen=True)
class Scheme:
    """Discretisation of the collocation: ``n + 1`` Chebyshev nodes, ``l``-point fixed-point quadrature,
    ``m`` Newton iterations from the QD+ start (the first with ``l_first`` points), ``p``-point price
    quadrature."""

    n: int = 14
    l: int = 10  # noqa: E741 (the paper's name)
    m: int = 2
    p: int = 40
    l_first: int = 6   # quadrature points of the first Newton step (from QD+, a coarse step is as good)

    def __post_init__(self):
        for name, lo in (("n", 2), ("l", 2), ("m", 1), ("p", 2), ("l_first", 2)):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"Scheme.{name} must be an integer >= {lo}, got {v!r}")


#: the default: max relative error 7.4e-7 on the test grid (module docstring)
DEFAULT_SCHEME = Scheme()
#: a reference-grade scheme (~10x slower): 1e-8 on the test grid
HIGH_PRECISION = Scheme(n=24, l=32, m=4, p=96, l_first=32)

_QD_ITERS = 5       # Newton steps on the QD+ exercise condition (mirrored in core._american_numba)
_QD_START = 2.0     # ... started at X exp(-_QD_START sigma sqrt(tau)): from X itself they crawl
_LO_FRAC = 1e-8     # lowest QD+ boundary, as a fraction of X
_R_TINY = 1e-10     # the rate QD+ uses for r = 0
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _cheb_nodes(n: int) -> np.ndarray:
    """Chebyshev points of the second kind ``cos(j pi/n)``, j = 0..n (1 first, -1 last)."""
    return np.cos(np.pi * np.arange(n + 1) / n)


def _interp_matrix(n: int, z: np.ndarray) -> np.ndarray:
    """Matrix ``L`` (len(z), n+1) with ``L @ H`` the polynomial through ``(z_j, H_j)`` at ``z``
    (barycentric formula for Chebyshev points of the second kind, Berrut and Trefethen 2004)."""
    zj = _cheb_nodes(n)
    w = (-1.0) ** np.arange(n + 1)
    w[0] *= 0.5
    w[-1] *= 0.5
    z = np.asarray(z, dtype=float).reshape(-1)
    diff = z[:, None] - zj[None, :]
    hit = diff == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        cw = w[None, :] / diff
        L = cw / cw.sum(axis=1, keepdims=True)
    rows = hit.any(axis=1)
    L[rows] = hit[rows].astype(float)
    return L


@dataclass(frozen=True)
class _Tables:
    """Option-independent tables of a scheme (times as fractions of T, nodes with tau > 0 only)."""

    c: np.ndarray        # (n,) tau_i / T
    theta: np.ndarray    # (n, l) (tau_i - u_ik)/T
    u: np.ndarray        # (n, l) u_ik / T
    wq: np.ndarray       # (n, l) weights of int_0^tau_i du, divided by T
    Lq: np.ndarray       # (n, l, n+1) interpolation of H at u_ik from the n+1 node values
    tp: np.ndarray       # (p,) sqrt(t_k/T): price quadrature nodes in time to exercise t
    wp: np.ndarray       # (p,) weights of int_0^T dt, divided by T
    Lp: np.ndarray       # (p, n+1) interpolation of H at u = T - t_k
    half: np.ndarray     # (n/2, n/2+1) H at the odd nodes from the even ones (QD+ at half the nodes); n even


@functools.lru_cache(maxsize=8)
def _tables(s: Scheme) -> _Tables:
    """Nodes ``tau_i = T (1 + cos(i pi/n))^2/4``; quadratures in ``phi`` with ``u = tau cos^2 phi`` (fixed
    point) and ``t = T sin^2 phi`` (price): both smooth in ``sqrt(u)`` and in ``sqrt(tau - u)``, where the
    integrands have their square-root behaviour, so Gauss-Legendre converges fast at both ends."""
    n, nl, p = s.n, s.l, s.p
    c = 0.25 * (1.0 + _cheb_nodes(n)[:n]) ** 2
    y, wy = np.polynomial.legendre.leggauss(nl)
    ph = 0.25 * np.pi * (1.0 + y)
    theta = c[:, None] * (np.sin(ph) ** 2)[None, :]
    u = c[:, None] - theta
    wq = c[:, None] * (np.sin(2.0 * ph) * 0.25 * np.pi * wy)[None, :]
    Lq = _interp_matrix(n, (2.0 * np.sqrt(np.maximum(u, 0.0)) - 1.0).ravel()).reshape(n, nl, n + 1)
    x, wx = np.polynomial.legendre.leggauss(p)
    php = 0.25 * np.pi * (1.0 + x)
    tp = np.sin(php)
    wp = np.sin(2.0 * php) * 0.25 * np.pi * wx
    Lp = _interp_matrix(n, 2.0 * np.cos(php) - 1.0)
    # the even nodes cos(2j pi/n) are the Chebyshev nodes of degree n/2: interpolate the start there
    half = _interp_matrix(n // 2, _cheb_nodes(n)[1::2][: n // 2]) if n % 2 == 0 else np.zeros((0, 0))
    arrs = [np.ascontiguousarray(a, dtype=float) for a in (c, theta, u, wq, Lq, tp, wp, Lp, half)]
    for a in arrs:
        a.flags.writeable = False
    return _Tables(*arrs)


def _start(X, r, q, sig, tau, tb: _Tables):
    """Start of the Newton steps, ``ln B`` (N, n): QD+ at the even nodes, and (n even) at the odd ones the
    polynomial through the even ones' ``H`` (the Newton steps correct both alike)."""
    n = tau.shape[1]
    if tb.half.size == 0:
        return _qdplus_guess(X, r, q, sig, tau)
    y = np.empty(tau.shape)
    y[:, 0::2] = _qdplus_guess(X, r, q, sig, tau[:, 0::2])
    He = np.zeros((tau.shape[0], n // 2 + 1))
    He[:, : n // 2] = (np.log(X)[:, None] - y[:, 0::2]) ** 2
    y[:, 1::2] = np.log(X)[:, None] - np.sqrt(np.maximum(He @ tb.half.T, 0.0))
    return y


def _qdplus_guess(X, r, q, sig, tau):
    """``ln B`` at the nodes (N, n) from Li's QD+ boundary (Li, "Analytical approximations for the critical
    stock prices of American options", Quantitative Finance 10 (2010)): ``_QD_ITERS`` Newton steps on its
    exercise condition from ``X exp(-_QD_START sigma sqrt(tau))``. The formula needs ``r > 0``: ``r = 0``
    (reached only with ``q < 0``) uses its limit, approached with ``r = _R_TINY``."""
    r = np.maximum(r, _R_TINY)
    with np.errstate(all="ignore"):
        s2 = sig * sig
        sqt = np.sqrt(tau)
        v = sig * sqt
        dr = np.exp(-r * tau)
        dq = np.exp(-q * tau)
        h = -np.expm1(-r * tau)
        om = 2.0 * (r - q) / s2
        root = np.sqrt((om - 1.0) ** 2 + 8.0 * r / (s2 * h))
        lam = 0.5 * (-(om - 1.0) - root)
        lamp = 2.0 * r / (s2 * h * h * root)
        den = 2.0 * lam + om - 1.0
        alpha = 2.0 * dr * r / (s2 * den)
        beta = alpha * (1.0 / h + lamp / den) - lam
        c_theta = alpha / (dr * r)
        shift = np.log(dq / dr) / v + 0.5 * v
        out = np.empty(tau.shape)
        lo = _LO_FRAC * X
        n = tau.shape[1]
        for i in range(n - 1, -1, -1):
            ri, qi, si, ti, sq, vi = (np.broadcast_to(a, tau.shape)[:, i] for a in (r, q, sig, tau, sqt, v))
            dri, dqi, bet, cth, shi = dr[:, i], dq[:, i], beta[:, i], c_theta[:, i], shift[:, i]
            b = X * np.exp(-_QD_START * vi)
            for _ in range(_QD_ITERS):
                dp = np.log(b) / vi + shi
                dm = dp - vi
                Pp = ndtr(-dp)
                Pm = ndtr(-dm)
                fp = np.exp(-0.5 * dp * dp) * _INV_SQRT2PI
                npv = dri * Pm - b * dqi * Pp
                theta = ri * dri * Pm - qi * b * dqi * Pp - 0.5 * si * b * dqi * fp / sq
                charm = -dqi * (fp * ((ri - qi) / vi - dm / (2.0 * ti)) + qi * Pp)
                g = 1.0 - dqi * Pp
                F = g * b - bet * (1.0 - b - npv) + cth * theta
                Fd = g + dqi * fp / vi + bet * g + cth * charm
                bn = b - F / Fd
                bn = np.where(np.isfinite(bn), bn, b)
                b = np.minimum(np.maximum(bn, lo), X)
            out[:, i] = np.log(b)
        return out


def _put_premium_numpy(s, r, q, sig, T, scheme: Scheme = DEFAULT_SCHEME, _y0=None, _return_y=False):
    """Early-exercise premium per unit strike and boundary at expiry of single-boundary puts (strike 1,
    spot ``s``), 1-D arrays: QD+ start, ``m`` Newton steps on the collocation system, price quadrature."""
    tb = _tables(scheme)
    n, nl = scheme.n, scheme.l
    N = s.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        X = np.where(q > 0, np.minimum(1.0, r / np.where(q > 0, q, 1.0)), 1.0)
    lnX = np.log(X)
    r_, q_, sg, T_ = (a[:, None] for a in (r, q, sig, T))
    r3, q3, T3 = (a[:, None, None] for a in (r, q, T))
    tau = T_ * tb.c[None, :]                                   # (N, n)
    vt = sg * np.sqrt(tau)
    th = T3 * tb.theta[None]                                   # (N, n, l)
    uu = T3 * tb.u[None]
    wr = (r3 * T3 * tb.wq[None]) * np.exp(r3 * uu)
    wd = (q3 * T3 * tb.wq[None]) * np.exp(q3 * uu)
    drift = (r3 - q3) * th
    vs = sig[:, None, None] * np.sqrt(th)
    Lfp = tb.Lq.reshape(n * nl, n + 1).T
    Lt = tb.Lq[:, :, :n]
    eye = np.eye(n)[None]
    y = _start(X, r_, q_, sg, tau, tb) if _y0 is None else _y0
    steps = scheme.m
    if _y0 is None and scheme.l_first != nl:   # the first step on the coarse quadrature (same nodes)
        y = _put_premium_numpy(s, r, q, sig, T, dataclasses.replace(scheme, l=scheme.l_first, m=1), _y0=y,
                               _return_y=True)
        steps -= 1
    Hn = np.zeros((N, n + 1))
    with np.errstate(all="ignore"):
        for _ in range(steps):
            Hn[:, :n] = (lnX[:, None] - y) ** 2
            Hu = (Hn @ Lfp).reshape(N, n, nl)
            sHu = np.sqrt(np.maximum(Hu, 0.0))
            lnz = y[:, :, None] - lnX[:, None, None] + sHu
            dp = (lnz + drift) / vs + 0.5 * vs
            dm = dp - vs
            fp = np.exp(-0.5 * dp * dp) * _INV_SQRT2PI / vs
            fm = np.exp(-0.5 * dm * dm) * _INV_SQRT2PI / vs
            gN = wr * (-fm * dm / vs)                 # d(weighted integrand)/d ln z
            gD = wd * (fp * (1.0 - dp / vs))
            dp0 = (y + (r_ - q_) * tau) / vt + 0.5 * vt
            dm0 = dp0 - vt
            f0p = np.exp(-0.5 * dp0 * dp0) * _INV_SQRT2PI
            f0m = np.exp(-0.5 * dm0 * dm0) * _INV_SQRT2PI
            Nv = f0m / vt + (wr * fm).sum(-1)
            Dv = f0p / vt + ndtr(dp0) + (wd * (ndtr(dp) + fp)).sum(-1)
            dN0 = -f0m * dm0 / (vt * vt) + gN.sum(-1)
            dD0 = f0p * (1.0 - dp0 / vt) / vt + gD.sum(-1)
            # d ln B(u_ik)/d y_j = L_ikj sqrt(H_j)/sqrt(H(u_ik)): the off-diagonal part of the Jacobian
            inv = np.where(sHu > 1e-300, 1.0 / sHu, 0.0)
            sHn = np.sqrt(Hn[:, :n])[:, None, :]
            AN = np.einsum("bik,ikj->bij", gN * inv, Lt) * sHn
            AD = np.einsum("bik,ikj->bij", gD * inv, Lt) * sHn
            R = y + (r_ - q_) * tau - np.log(Nv) + np.log(Dv)
            J = eye - (dN0[:, :, None] * eye - AN) / Nv[:, :, None] + (dD0[:, :, None] * eye - AD) / Dv[:, :, None]
            ok = np.isfinite(J).all(axis=(1, 2)) & np.isfinite(R).all(axis=1)
            step = np.zeros_like(y)
            if ok.any():
                step[ok] = np.linalg.solve(J[ok], -R[ok][:, :, None])[:, :, 0]
            yn = y + step
            y = np.minimum(np.where(np.isfinite(yn), yn, y), lnX[:, None])
        Hn[:, :n] = (lnX[:, None] - y) ** 2
        t = T_ * tb.tp[None, :] ** 2
        lnB = lnX[:, None] - np.sqrt(np.maximum(Hn @ tb.Lp.T, 0.0))
        v = sg * np.sqrt(T_) * tb.tp[None, :]
        dp = (np.log(s)[:, None] - lnB + (r_ - q_) * t) / v + 0.5 * v
        dm = dp - v
        integrand = r_ * np.exp(-r_ * t) * ndtr(-dm) - q_ * s[:, None] * np.exp(-q_ * t) * ndtr(-dp)
        prem = T * (integrand * tb.wp[None, :]).sum(-1)
        bT = X * np.exp(-np.sqrt(Hn[:, 0]))
    if _return_y:
        return y
    return prem, bT


def _run_kernel(nb, s, r, q, sig, T, scheme, prem, bT):
    """``core._american_numba.put_premium`` on 1-D contiguous arrays, with the scheme's tables."""
    tb = _tables(scheme)
    t1 = _tables(dataclasses.replace(scheme, l=scheme.l_first))
    nb.put_premium(s, r, q, sig, T, scheme.m, tb.c, tb.theta, tb.u, tb.wq, tb.Lq, t1.theta, t1.u, t1.wq, t1.Lq,
                   tb.tp, tb.wp, tb.Lp, tb.half, _ERFCX_TAB, prem, bT)


_FD_NX = 1200        # space nodes of the double-boundary fallback
_FD_NT = 400         # time steps (and twice as many, for Richardson; the first _FD_RANNACHER implicit)
_FD_RANNACHER = 4
_FD_WIDTH = 6.0      # grid half-width in standard deviations sigma sqrt(T)


def _fd_put(s, r, q, sig, T):
    """``_fd_put_steps`` Richardson-extrapolated in time (``2 V(2 N) - V(N)``: the projection's error is first
    order in the time step)."""
    return 2.0 * _fd_put_steps(s, r, q, sig, T, 2 * _FD_NT) - _fd_put_steps(s, r, q, sig, T, _FD_NT)


def _fd_put_steps(s, r, q, sig, T, nt):
    """American put (strike 1, spot ``s``) by finite differences, for the double-boundary regime ``q < r < 0``:
    Crank-Nicolson in ``x = ln(S/K)`` on ``_FD_NX`` nodes with ``_FD_RANNACHER`` implicit start steps
    (Rannacher 1984) and the exercise constraint by projection after each of ``nt`` steps (any shape of
    exercise region, two boundaries included). Boundaries: ``V = e^{-r tau}`` as ``S -> 0`` (continuation:
    the lower boundary stays above 0), ``V = 0`` far above the strike."""
    w = _FD_WIDTH * sig * math.sqrt(T) + abs(r - q) * T
    ls = math.log(s)
    x = np.linspace(min(0.0, ls) - w, max(0.0, ls) + w, _FD_NX)
    dx = x[1] - x[0]
    dt = T / nt
    payoff = np.maximum(1.0 - np.exp(x), 0.0)
    a = 0.5 * sig * sig / (dx * dx)
    b = 0.5 * (r - q - 0.5 * sig * sig) / dx
    lo, di, up = a - b, -2.0 * a - r, a + b         # the operator's three diagonals (interior nodes)
    v = payoff.copy()
    tau = 0.0
    for step in range(nt):
        theta = 1.0 if step < _FD_RANNACHER else 0.5
        tau += dt
        rhs = v.copy()
        rhs[1:-1] += (1.0 - theta) * dt * (lo * v[:-2] + di * v[1:-1] + up * v[2:])
        ab = np.zeros((3, _FD_NX))
        ab[0, 2:] = -theta * dt * up
        ab[1, 1:-1] = 1.0 - theta * dt * di
        ab[2, :-2] = -theta * dt * lo
        ab[1, 0] = ab[1, -1] = 1.0
        rhs[0] = math.exp(-r * tau)
        rhs[-1] = 0.0
        v = np.maximum(solve_banded((1, 1), ab, rhs), payoff)
    return float(np.interp(ls, x, v)) if not (x[0] <= ls <= x[-1]) else float(CubicSpline(x, v)(ls))


def _check_kernel(nb):
    """Smoke test of the compiled kernel against the numpy path; returns the module."""
    one = np.ones(1)
    args = (np.array([0.9]), 0.05 * one, 0.01 * one, 0.3 * one, one)
    prem, bT = np.empty(1), np.empty(1)
    _run_kernel(nb, *args, DEFAULT_SCHEME, prem, bT)
    ref = _put_premium_numpy(*args, DEFAULT_SCHEME)
    if not (abs(prem[0] - ref[0][0]) < 1e-10 and abs(bT[0] - ref[1][0]) < 1e-10):
        raise RuntimeError(f"kernel smoke test gave premium {prem[0]!r}, numpy {ref[0][0]!r}")
    if (nb._QD_ITERS, nb._QD_START, nb._LO_FRAC, nb._R_TINY) != (_QD_ITERS, _QD_START, _LO_FRAC, _R_TINY):
        raise RuntimeError("core._american_numba constants differ from core.pricing.american's")
    return nb


#: the erfcx table of core.black (one home): the kernel's normal CDF uses it
_ERFCX_TAB = _numba_tables()[0]
_KERNEL = LazyKernel("core.pricing.american", "core._american_numba", _check_kernel)
_PAR_MIN = 512   # options per thread below which one thread does it all


def backend() -> str:
    """``"numba"`` or ``"numpy"``: the backend of the next call (compiles or loads the kernel if needed)."""
    return "numpy" if _KERNEL.get() is None else "numba"


_CHUNK = 1024   # options per numpy pass: (chunk, n, l) temporaries stay cache-sized

#: status codes of ``american_implied_vol_status``: code -> explanation
IV_STATUS: dict[str, str] = {
    "ok": "implied vol found",
    "invalid_input": "price, S, K or T is non-positive or not finite, r or q is not finite, or cp is not +1/-1",
    "below_intrinsic": "price at or below the American lower bound (the price at vol 0.001: intrinsic value or "
                       "the zero-vol value): no vol, or none the price can identify",
    "above_max": "price at or above the upper bound (S for a call, K for a put): no vol",
    "no_convergence": "the solver did not converge within its iteration budget",
}


def _flat(*args):
    """Broadcast shape and the arguments as 1-D contiguous float arrays; ``InputError`` when they do not
    broadcast or are not numbers."""
    try:
        arrs = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in args))
    except (ValueError, TypeError) as exc:
        shapes = [np.shape(a) for a in args]
        raise InputError(f"arguments must be numbers or arrays of numbers of compatible shapes (shapes {shapes}: "
                         f"{exc}); pass scalars or broadcastable arrays") from None
    shape = arrs[0].shape
    return shape, [np.ascontiguousarray(a).reshape(-1) for a in arrs]


def _as_put(S, K, r, q, cp):
    """Put-call symmetry: the put (spot/strike ``s``, strike ``k``, rates ``rr``, ``qq``) whose price equals
    the option's: ``C(S, K, r, q) = P(K, S, q, r)``."""
    put = cp < 0
    with np.errstate(all="ignore"):
        s = np.where(put, S / K, K / S)
    return s, np.where(put, K, S), np.where(put, r, q), np.where(put, q, r)


def _regimes(rr, qq):
    """Masks of the put's exercise regimes: ``european`` (never exercised early), ``single`` (one boundary),
    ``double`` (``q < r < 0``: two boundaries)."""
    european = (rr <= 0) & (qq >= rr) & ~((rr == 0) & (qq < 0))
    double = (rr < 0) & (qq < rr)
    return european, ~european & ~double, double


def _valid(S, K, T, r, q, sigma, cp):
    return (np.isfinite(S) & np.isfinite(K) & np.isfinite(T) & np.isfinite(r) & np.isfinite(q)
            & np.isfinite(sigma) & (S > 0) & (K > 0) & (T >= 0) & (sigma > 0) & ((cp == 1) | (cp == -1)))


def _premium_put(s, r, q, sig, T, scheme):
    """Premium per unit strike and immediate-exercise flag of single-boundary puts, 1-D arrays: the numba
    kernel (its ``nogil`` calls split over the CPUs for large batches) or the numpy path in chunks."""
    prem = np.empty(s.size)
    bT = np.empty(s.size)
    nb = _KERNEL.get()
    if nb is None:
        for lo in range(0, s.size, _CHUNK):
            sl = slice(lo, lo + _CHUNK)
            prem[sl], bT[sl] = _put_premium_numpy(s[sl], r[sl], q[sl], sig[sl], T[sl], scheme)
        return prem, s <= bT
    args = [np.ascontiguousarray(a, dtype=float) for a in (s, r, q, sig, T)]

    def run(sl):
        _run_kernel(nb, *(a[sl] for a in args), scheme, prem[sl], bT[sl])

    workers = min(os.cpu_count() or 1, s.size // _PAR_MIN)
    if workers <= 1:
        run(slice(None))
    else:
        bounds = np.linspace(0, s.size, workers + 1).astype(int)
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]))
    return prem, s <= bT


def american_price(S, K, T, r, q, sigma, cp, *, scheme: Scheme = DEFAULT_SCHEME) -> np.ndarray:
    """American vanilla price under Black-Scholes with continuous rates, on broadcastable arrays.

    Parameters: ``S`` spot, ``K`` strike (price units), ``T`` years, ``r`` rate and ``q`` dividend yield
    (continuous, decimal), ``sigma`` vol (decimal), ``cp`` +1 call / -1 put. Returns the broadcast shape.
    ``T = 0`` gives the intrinsic value; NaN where ``S``, ``K``, ``sigma`` are not positive, ``T`` is
    negative, an input is not finite or ``cp`` is not +-1. Method and accuracy: module docstring.
    """
    shape, (S, K, T, r, q, sigma, cp) = _flat(S, K, T, r, q, sigma, cp)
    out = np.full(S.size, np.nan)
    valid = _valid(S, K, T, r, q, sigma, cp)
    with np.errstate(all="ignore"):
        intrinsic = np.maximum(cp * (S - K), 0.0)
    zero = valid & (T == 0)
    out[zero] = intrinsic[zero]
    go = valid & (T > 0)
    s, kk, rr, qq = _as_put(S, K, r, q, cp)
    european, single, double = _regimes(rr, qq)
    with np.errstate(all="ignore"):
        eur = black_price(S * np.exp((r - q) * T), K, T, sigma, cp, np.exp(-r * T))
    e = go & european
    out[e] = eur[e]
    i = np.flatnonzero(go & single)
    if i.size:
        prem, exercise = _premium_put(s[i], rr[i], qq[i], sigma[i], T[i], scheme)
        out[i] = np.where(exercise, intrinsic[i], np.maximum(eur[i] + kk[i] * prem, intrinsic[i]))
    d = np.flatnonzero(go & double)
    if d.size:   # two boundaries: not covered by the collocation; finite differences (slower, ~1e-5)
        fd = np.array([_fd_put(*a) for a in zip(s[d], rr[d], qq[d], sigma[d], T[d], strict=True)])
        out[d] = np.maximum(np.maximum(kk[d] * fd, eur[d]), intrinsic[d])
    return out.reshape(shape)


def early_exercise_premium(S, K, T, r, q, sigma, cp, *, scheme: Scheme = DEFAULT_SCHEME) -> np.ndarray:
    """American minus European price (``core.black.black_price`` with ``F = S e^{(r-q)T}``, ``D = e^{-rT}``),
    same arguments and shape as ``american_price``; 0 where early exercise never pays."""
    shape, (S, K, T, r, q, sigma, cp) = _flat(S, K, T, r, q, sigma, cp)
    am = american_price(S, K, T, r, q, sigma, cp, scheme=scheme)
    with np.errstate(all="ignore"):
        eur = black_price(S * np.exp((r - q) * T), K, T, sigma, cp, np.exp(-r * T))
    return (am - eur).reshape(shape)


@dataclass(frozen=True)
class AmericanIV:
    """Result of ``american_implied_vol_status``: ``vol`` (NaN where no solution), ``status`` (codes of
    ``IV_STATUS``, same shape) and ``iterations`` (pricing passes used)."""

    vol: np.ndarray
    status: np.ndarray
    iterations: int


_VOL_LO, _VOL_HI = 1e-3, 5.0   # search interval of the implied vol
_MAX_ITER = 40
_PREMIUM_STEPS = 1    # first steps of the implied-vol solver: European vol of (price - early-exercise premium)
_PRICE_RTOL = 1e-13   # a price this close (relative) to the target is the vol's solution to rounding


def american_implied_vol_status(price, S, K, T, r, q, cp, *, tol: float = 1e-10,
                                scheme: Scheme = DEFAULT_SCHEME) -> AmericanIV:
    """American implied vol with a status code per option (``IV_STATUS``); arguments as
    ``american_implied_vol``. Returns ``AmericanIV(vol, status, iterations)``.

    Bounds: no vol at or below the price at vol ``_VOL_LO`` (the intrinsic/zero-vol lower bound) or at or
    above ``S`` (call) / ``K`` (put); vols above ``_VOL_HI`` are not searched (``no_convergence``).
    Solver, vectorised over the options still unconverged: start at the European implied vol of the price;
    ``_PREMIUM_STEPS`` step(s) to the European vol of the price less the early-exercise premium at the
    current vol (the premium depends little on the vol); then secant steps on ``g = ln(A(vol) - A(_VOL_LO))
    - ln(price - A(_VOL_LO))`` (the log time value: near linear in the vol even deep in the money, where the
    price flattens exponentially). Every step stays inside a bracket that each evaluation tightens
    (bisection when a step leaves it). Stops when the step is below ``tol``, or the price error is below
    ``tol`` times the (European) vega or ``_PRICE_RTOL`` times the price. ``iterations`` counts pricing
    passes; typically ~4 pricings per option in all.
    """
    shape, (price, S, K, T, r, q, cp) = _flat(price, S, K, T, r, q, cp)
    n = price.size
    vol = np.full(n, np.nan)
    status = np.full(n, "invalid_input", dtype=object)
    ok = _valid(S, K, T, r, q, np.ones(n), cp) & np.isfinite(price) & (price > 0) & (T > 0)
    upper = np.where(cp > 0, S, K)
    above = ok & (price >= upper)
    status[above] = "above_max"
    idx = np.flatnonzero(ok & ~above)
    lo = np.full(idx.size, _VOL_LO)
    hi = np.full(idx.size, _VOL_HI)
    args = (S[idx], K[idx], T[idx], r[idx], q[idx])
    c = cp[idx]
    p = price[idx]
    p_lo = american_price(*args, lo, c, scheme=scheme)
    below = p <= p_lo
    st = np.where(below, "below_intrinsic", "ok").astype(object)
    with np.errstate(all="ignore"):
        ln_tv = np.log(p - p_lo)   # the solver works on ln(time value): near linear in vol, even deep ITM
    # start: European implied vol of the price, clipped into the bracket
    Si, Ki, Ti, ri, qi = args
    F = Si * np.exp((ri - qi) * Ti)
    D = np.exp(-ri * Ti)
    x = black_implied_vol(p, F, Ki, Ti, c, D)
    x = np.where(np.isfinite(x), np.clip(x, lo, hi), 0.3)
    active = ~below
    x_prev = np.full(idx.size, np.nan)
    f_prev = np.full(idx.size, np.nan)
    iters = 0
    for it in range(_MAX_ITER):
        a = np.flatnonzero(active)
        if a.size == 0:
            break
        iters += 1
        pa = american_price(Si[a], Ki[a], Ti[a], ri[a], qi[a], x[a], c[a], scheme=scheme)
        fa = pa - p[a]
        with np.errstate(all="ignore"):
            tva = pa - p_lo[a]
            ga = np.log(tva) - ln_tv[a]
        # tighten the bracket
        up = fa > 0
        hi[a] = np.where(up, np.minimum(hi[a], x[a]), hi[a])
        lo[a] = np.where(up, lo[a], np.maximum(lo[a], x[a]))
        vega = black_vega(F[a], Ki[a], Ti[a], x[a], D[a])
        with np.errstate(all="ignore"):
            newton = x[a] - ga * tva / vega
            sec = x[a] - ga * (x[a] - x_prev[a]) / (ga - f_prev[a])
            if it < _PREMIUM_STEPS:   # the European vol of the price less the premium at the current vol
                prem = pa - black_price(F[a], Ki[a], Ti[a], x[a], c[a], D[a])
                newton = np.where(np.isfinite(x_e := black_implied_vol(p[a] - prem, F[a], Ki[a], Ti[a], c[a], D[a])),
                                  x_e, newton)
        use_sec = np.isfinite(sec) & (it >= _PREMIUM_STEPS)
        step_to = np.where(use_sec, sec, newton)
        bad = ~np.isfinite(step_to) | (step_to <= lo[a]) | (step_to >= hi[a])
        step_to = np.where(bad, 0.5 * (lo[a] + hi[a]), step_to)
        x_prev[a] = x[a]
        f_prev[a] = ga
        # converged: a step below tol, or a price error at rounding level (where the vega is tiny, a
        # vol error of tol can be below the price's resolution)
        exact = np.abs(fa) <= np.maximum(_PRICE_RTOL * p[a], tol * vega)
        done = (np.abs(step_to - x[a]) < tol) | exact | (hi[a] - lo[a] < tol)
        x[a] = np.where(exact, x[a], step_to)
        active[a[done]] = False
    st[active | (x >= _VOL_HI * (1 - 1e-9))] = "no_convergence"
    good = st == "ok"
    vol[idx[good]] = x[good]
    status[idx] = st
    return AmericanIV(vol.reshape(shape), status.reshape(shape), iters)


def american_implied_vol(price, S, K, T, r, q, cp, *, tol: float = 1e-10,
                         scheme: Scheme = DEFAULT_SCHEME) -> np.ndarray:
    """Black-Scholes vol that reproduces the American ``price``, on broadcastable arrays.

    Parameters as ``american_price`` with ``price`` in price units instead of ``sigma``; ``tol`` is the
    absolute tolerance on the vol. NaN where no vol exists (below the lower bound, at or above the upper
    bound) or the inputs are invalid; ``american_implied_vol_status`` says why.
    """
    return american_implied_vol_status(price, S, K, T, r, q, cp, tol=tol, scheme=scheme).vol
