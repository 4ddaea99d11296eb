"""Black-76 prices, vega and implied volatility on broadcastable arrays (forward terms).

``C = D [F N(d1) - K N(d2)]``, ``P = D [K N(-d2) - F N(-d1)]``, ``d1 = -y/s + s/2``, ``d2 = d1 - s``,
``s = sigma sqrt(T)``, ``y = ln(K/F)`` (Black 1976; MATH.md). Discounting is a separate factor ``D``.

Everything is computed on the *normalised out-of-the-money call* of Jaeckel ("Let's Be Rational",
Wilmott 2015, section 2): with ``x = -|ln(F/K)|`` and ``s = sigma sqrt(T)``,

    b(x, s) = e^{x/2} N(x/s + s/2) - e^{-x/2} N(x/s - s/2),      0 < b < b_max = e^{x/2},

and ``price = D [max(cp (F - K), 0) + sqrt(F K) b(x, s)]`` (put-call parity moves every in-the-money
option to the out-of-the-money one with the same strike). ``b`` is never formed as the difference
``N(d1) F - N(d2) K``, which cancels catastrophically deep out of the money: with ``h = x/s``,
``t = s/2`` and ``E = exp(-(h^2 + t^2)/2)``, ``b = E Q`` where ``Q`` is, by region,

* ``(erfcx(-(h+t)/sqrt2) - erfcx((t-h)/sqrt2)) / 2`` (scaled complementary error function, as in LBR),
  or ``b_max - b = E (erfcx((h+t)/sqrt2) + erfcx((t-h)/sqrt2)) / 2`` when ``h + t > 0``; the difference
  loses ~max(|h|/2t, 1/t) ulps, so two regions use series instead:
* small ``t`` (``|h| < 7``, ``t < 0.1``): the odd Taylor series in ``t`` of ``Y(h+t) - Y(h-t)``,
  ``Y = N/n`` (Mills' ratio; ``Y' = 1 + zY``, ``Y^(k+1) = z Y^(k) + k Y^(k-1)``), ``Q = 2/sqrt(2pi)
  sum_{k odd} Y^(k)(h) t^k / k!``;
* ``|h| >= 7`` and ``t < 0.02 |h|``: ``Y(h+t) - Y(h-t) = int_0^inf 2 sinh(tu) e^{hu - u^2/2} du`` by
  12-point Gauss-Laguerre after ``u = v/|h|`` (all terms positive: no cancellation at all).

``erfcx`` itself is a fast piecewise polynomial (``_erfcx``, ~10 ns/element against scipy's 25-60).
Relative accuracy of ``b`` for exact double inputs: ~1e-15 typical, a few 1e-14 where ``h^2`` is large
(the rounding of ``h = x/s`` itself is amplified by ``h^2``, as in any implementation).

Implied vol: Jaeckel's four-branch rational-cubic initial guess (lower/upper maps, second-derivative
fitted control parameters) followed by two third-order Householder steps on his branch objectives
(``1/ln b`` in the lowest branch, ``b`` in the middle, ``ln(b_max - b)`` in the highest). This is our
own vectorised numpy implementation, written from the paper's description.

Two backends compute the same algorithm: compiled numba kernels (``core._black_numba``, one pass
element by element; compiled or loaded from numba's on-disk cache at the first call, never at import)
and the numpy code of this module, used when numba is not installed, when a kernel fails to compile
(with a warning) or when the environment variable ``DUPIRE_DESK_NO_NUMBA=1`` is set.
``backend()`` says which one the next call uses. The two agree to a few ulps (libm against numpy's
``exp``/``log``, Wichura's AS 241 against cephes' ``ndtri`` in the initial guess), and meet the same
accuracy targets (tests run both). numba's cache lives next to the kernels (``core/__pycache__``, or
``NUMBA_CACHE_DIR``): the first call on a machine compiles for ~15 s, later processes load in ~0.5 s.
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings

import numpy as np
import pandas as pd
from scipy.special import erfcx, ndtri

from core._kernels import NO_NUMBA_ENV, LazyKernel
from core.errors import ConvergenceWarning, InputError

#: reason codes of ``implied_vol(..., return_reason=True)``: code -> explanation. The integer code of a
#: reason is its position in this dict (``IV_REASON_CODES``).
IV_REASONS: dict[str, str] = {
    "ok": "implied vol found",
    "non_finite": "price, F, K, T, cp or D is NaN or infinite",
    "non_positive": "price, F, K, T or D is zero or negative",
    "below_intrinsic": "price at or below the discounted intrinsic value D max(cp (F - K), 0), or a time value "
                       "below 2.2e-308 sqrt(F K) (it underflows double precision): no implied vol",
    "above_upper_bound": "price at or above the upper bound (D F for a call, D K for a put): no implied vol",
    "bad_cp": "cp is neither +1 (call) nor -1 (put)",
    "no_convergence": "the solver did not reach a finite vol (numerical trouble; please report)",
    "no_quote": "no price on this side (bid/ask missing); used by quote_implied_vols",
}
IV_REASON_CODES: dict[str, int] = {k: i for i, k in enumerate(IV_REASONS)}
_REASON_NAMES = np.array(list(IV_REASONS))

_SQRT2 = math.sqrt(2.0)
_SQRT3 = math.sqrt(3.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)
_INV_SQRT2PI = 1.0 / _SQRT2PI
_INV_SQRT2 = 1.0 / _SQRT2
_LN_SQRT2PI = math.log(_SQRT2PI)
_SQRT_PI_OVER_2 = math.sqrt(math.pi / 2.0)
_TWO_PI_OVER_SQRT27 = 2.0 * math.pi / math.sqrt(27.0)

# Regions of b(x, s) (module docstring). The erfcx difference loses ~max(|h|/2t, 1/t) ulps to
# cancellation: at most ~35 outside the two series regions below (measured reprice error < 5e-14).
_T_TAYLOR = 0.1    # Taylor in t for |h| < _H_GL, t < 0.1
_H_GL = 7.0
_TAU_GL = 0.02     # Gauss-Laguerre for |h| >= 7, t < 0.02 |h|
_TAYLOR_KMAX = 13  # t < 0.1: the first omitted term is < 1e-17 of the sum
_GL_N = 12         # nodes: relative error < 3e-15 for |h| >= 7 (checked against 40-digit arithmetic)
_CHUNK = 1 << 16   # elements per pass (measured best among 2^12..2^20: few Python-level calls, cache-sized temporaries)
_N_HOUSEHOLDER = 2
_R_MAX = 2.0 / (np.finfo(float).eps ** 2)  # "infinite" rational-cubic control: linear interpolation
_R_MIN = -(1.0 - math.sqrt(np.finfo(float).eps))
_TINY = np.finfo(float).tiny  # normalised time values below this underflow: no implied vol


def _gauss_laguerre(n: int) -> tuple[np.ndarray, np.ndarray]:
    # numpy's nodes polished by Newton on L_n, and weights from 1/(v L_n'(v)^2): numpy's own weights
    # are off by ~1e-14, which is the whole error budget here
    v = np.polynomial.laguerre.laggauss(n)[0]

    def laguerre(v):
        p0, p1 = np.ones_like(v), 1.0 - v
        for k in range(1, n):
            p0, p1 = p1, ((2 * k + 1 - v) * p1 - k * p0) / (k + 1)
        return p1, n * (p1 - p0) / v

    for _ in range(3):
        p, dp = laguerre(v)
        v = v - p / dp
    _, dp = laguerre(v)
    return v, 1.0 / (v * dp * dp)


_GL_V, _GL_W = _gauss_laguerre(_GL_N)
_GL_V2 = 0.5 * _GL_V * _GL_V


# -- erfcx(z) for z >= 0, fast: scipy's erfcx costs 25-60 ns per element, this ~10 ns.
# Piecewise polynomials of degree 6 in y = 4/(4+z) on 100 equal pieces of [4/54, 1] (z < 50), fitted at
# import by least squares to scipy.special.erfcx at 28 Chebyshev nodes per piece (relative error
# < 3e-15, smooth within a piece); z >= 50: the asymptotic series, 6 terms (error < 1e-18).
_ERFCX_ZA = 50.0
_ERFCX_Y0 = 4.0 / (4.0 + _ERFCX_ZA)
_ERFCX_NP = 100
_ERFCX_DEG = 6


def _erfcx_table() -> np.ndarray:
    m = 4 * (_ERFCX_DEG + 1)
    u = np.cos(np.pi * (np.arange(m) + 0.5) / m)
    V = np.vander(u, _ERFCX_DEG + 1, increasing=True)
    y = _ERFCX_Y0 + (1.0 - _ERFCX_Y0) * (np.arange(_ERFCX_NP)[None, :] + 0.5 * (u[:, None] + 1.0)) / _ERFCX_NP
    return np.linalg.lstsq(V, erfcx(4.0 / y - 4.0), rcond=None)[0]  # (deg+1, pieces)


_ERFCX_TAB = _erfcx_table()
_ERFCX_SCALE = _ERFCX_NP / (1.0 - _ERFCX_Y0)


def _erfcx(z: np.ndarray) -> np.ndarray:
    """``erfcx(z) = exp(z^2) erfc(z)`` for ``z >= 0`` (NaN stays NaN), vectorised, ~2e-15 relative."""
    k = (4.0 / (4.0 + z) - _ERFCX_Y0) * _ERFCX_SCALE
    with np.errstate(invalid="ignore"):  # NaN -> any index; the NaN propagates through u
        idx = k.astype(np.intp)
    np.minimum(idx, _ERFCX_NP - 1, out=idx)
    np.maximum(idx, 0, out=idx)
    u = 2.0 * (k - idx) - 1.0
    tab = _ERFCX_TAB
    acc = tab[_ERFCX_DEG].take(idx)
    for j in range(_ERFCX_DEG - 1, -1, -1):
        acc *= u
        acc += tab[j].take(idx)
    big = z >= _ERFCX_ZA
    if big.any():
        i = np.flatnonzero(big)
        zi = z[i]
        v = 0.5 / zi / zi
        ser = 1.0 - v * (1.0 - 3.0 * v * (1.0 - 5.0 * v * (1.0 - 7.0 * v * (1.0 - 9.0 * v))))
        acc[i] = ser / (math.sqrt(math.pi) * zi)
    return acc


def _arrays(*args):
    try:
        return np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in args))
    except ValueError as exc:
        shapes = [np.shape(a) for a in args]
        raise InputError(f"arguments do not broadcast to one shape: shapes {shapes} ({exc}); "
                         "pass scalars or arrays of compatible shapes") from None
    except TypeError as exc:
        raise InputError(f"arguments must be numbers or arrays of numbers: {exc}") from None


def _flat_arrays(*args) -> tuple[tuple[int, ...], list[np.ndarray]]:
    """Broadcast shape and the arguments as 1-D C-contiguous float64 arrays (the numba kernels' types).

    Unlike ``_arrays`` no ``broadcast_arrays`` views are handed on: numba reads their writeable flag,
    which numpy deprecates; a broadcast argument is copied once, a full-size one is used as is."""
    arrs = _arrays(*args)  # validation and the InputError messages live there
    shape = arrs[0].shape
    flat = []
    for a in args:
        a = np.asarray(a, dtype=float)
        if a.shape != shape:
            a = np.broadcast_to(a, shape)
        flat.append(np.ascontiguousarray(a).reshape(-1))
    return shape, flat


# -------------------------------------------------------------------------------- backends

def _numba_tables() -> tuple[np.ndarray, np.ndarray]:
    # one piece's coefficients contiguous (pieces, deg+1); Gauss-Laguerre rows (v, w, v^2/2)
    tab = np.ascontiguousarray(_ERFCX_TAB.T)
    gl = np.ascontiguousarray(np.stack([_GL_V, _GL_W, _GL_V2], axis=1))
    tab.flags.writeable = False
    gl.flags.writeable = False
    return tab, gl


def _check_kernels(nb):
    """The kernels' constants must be ours, and a smoke test must pass; returns ``(nb, erfcx table, GL table)``."""
    same = {"_T_TAYLOR": _T_TAYLOR, "_H_GL": _H_GL, "_TAU_GL": _TAU_GL, "_ERFCX_ZA": _ERFCX_ZA,
            "_ERFCX_NP": _ERFCX_NP, "_ERFCX_DEG": _ERFCX_DEG, "_N_HOUSEHOLDER": _N_HOUSEHOLDER,
            "_R_MAX": _R_MAX, "_R_MIN": _R_MIN, "_TINY": _TINY}
    diff = [k for k, v in same.items() if getattr(nb, k) != v]
    codes = {"_OK": "ok", "_NON_FINITE": "non_finite", "_NON_POSITIVE": "non_positive",
             "_BELOW": "below_intrinsic", "_ABOVE": "above_upper_bound", "_BAD_CP": "bad_cp",
             "_NO_CONV": "no_convergence"}
    diff += [k for k, v in codes.items() if getattr(nb, k) != IV_REASON_CODES[v]]
    if diff:
        raise RuntimeError(f"core._black_numba constants {diff} differ from core.black's")
    tab, gl = _numba_tables()
    one = np.ones(1)
    out, code = np.empty(1), np.empty(1, dtype=np.int8)
    nb.implied_vol(0.5 * one, one, one, one, one, one, tab, gl, out, code)  # smoke test of the build
    if not (code[0] == 0 and abs(out[0] - 1.3489795003921634) < 1e-12):
        raise RuntimeError(f"kernel smoke test gave vol {out[0]!r}, reason code {code[0]}")
    return nb, tab, gl


_KERNELS = LazyKernel("core.black", "core._black_numba", _check_kernels)
#: ``(kernels module, erfcx table, Gauss-Laguerre table)`` or None (numpy path)
_numba = _KERNELS.get


def backend() -> str:
    """``"numba"`` or ``"numpy"``: the backend of the next ``implied_vol`` / ``black_price`` call.

    Compiles (or loads from cache) the numba kernels if that has not happened yet."""
    return "numpy" if _numba() is None else "numba"


@contextlib.contextmanager
def use_backend(name: str):
    """Run the body with ``implied_vol``/``black_price`` on backend ``name`` ("numba" or "numpy"), through
    ``DUPIRE_DESK_NO_NUMBA``; yields True when that backend is the one in use (False: numba absent)."""
    if name not in ("numba", "numpy"):
        raise InputError(f"backend must be 'numba' or 'numpy', got {name!r}")
    old = os.environ.get(NO_NUMBA_ENV)
    if name == "numpy":
        os.environ[NO_NUMBA_ENV] = "1"
    else:
        os.environ.pop(NO_NUMBA_ENV, None)
    try:
        yield backend() == name
    finally:
        if old is None:
            os.environ.pop(NO_NUMBA_ENV, None)
        else:
            os.environ[NO_NUMBA_ENV] = old


def _ln_f_over_k(F: np.ndarray, K: np.ndarray) -> np.ndarray:
    """``ln(F/K)`` to a few ulps *relative*: near the money ``log(F/K)`` has an absolute error of eps,
    which is a large relative error in ``x`` and, through ``exp(-x^2/2s^2)``, in deep-OTM prices."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        r = F / K
        near = (r > 0.5) & (r < 2.0)
        return np.where(near, np.log1p((F - K) / K), np.log(r))  # F - K is exact there (Sterbenz)


# ------------------------------------------------------------------------ normalised Black b(x, s)

def _q_taylor(h: np.ndarray, t: np.ndarray) -> np.ndarray:
    # Q = b/E for |h| < 7, t < 0.1: odd Taylor series of Y(h+t) - Y(h-t) in t, Y = N/n (Mills' ratio)
    m_prev = _SQRT_PI_OVER_2 * _erfcx(-h / _SQRT2)  # Y(h)
    m = 1.0 + h * m_prev                             # Y'(h); loses at most log10(h^2) < 1.7 digits
    odd = [m]
    for k in range(1, _TAYLOR_KMAX):
        m_prev, m = m, h * m + k * m_prev            # Y^(k+1)
        if k % 2 == 0:
            odd.append(m)
    t2 = t * t
    acc = odd[-1] * (1.0 / math.factorial(_TAYLOR_KMAX))
    for j in range(len(odd) - 2, -1, -1):
        acc *= t2
        acc += odd[j] * (1.0 / math.factorial(2 * j + 1))
    return (2.0 * _INV_SQRT2PI) * acc * t


def _q_laguerre(h: np.ndarray, t: np.ndarray) -> np.ndarray:
    # Q = b/E for |h| >= 7, t < 0.02 |h|: Gauss-Laguerre of int_0^inf 2 sinh(tau v) exp(-v^2/(2h^2)) e^-v dv
    ah = -h
    tau = t / ah
    inv_h2 = 1.0 / (h * h)
    acc = np.zeros_like(h)
    for v, w, v2 in zip(_GL_V, _GL_W, _GL_V2, strict=True):
        acc += w * np.sinh(tau * v) * np.exp(-v2 * inv_h2)
    return 2.0 * _INV_SQRT2PI * acc / ah


def _normalised_black(x: np.ndarray, s: np.ndarray, bmax: np.ndarray, want_log: bool = False):
    """Normalised OTM call ``b(x, s)`` for ``x <= 0``, ``s > 0``, ``bmax = e^{x/2}`` (1-D arrays of one length).

    Returns ``(b, c, ln_b, ln_vega)``: ``c = bmax - b`` computed without cancellation where ``b`` is near
    its bound, ``ln_b`` (only if ``want_log``, else None) without underflow, and
    ``ln_vega = ln(db/ds) = -(h^2 + t^2)/2 - ln sqrt(2 pi)``.
    """
    h = x / s
    t = 0.5 * s
    half_e2 = h * h
    half_e2 += t * t
    half_e2 *= 0.5
    E = np.exp(-half_e2)
    ah = -h
    taylor = (ah < _H_GL) & (t < _T_TAYLOR)
    laguerre = (ah >= _H_GL) & (t < _TAU_GL * ah)
    series = taylor | laguerre
    if not series.any():
        hpt = h + t
        upper = hpt > 0
        e1 = _erfcx(np.abs(hpt) * _INV_SQRT2)
        e2 = _erfcx((t - h) * _INV_SQRT2)
        q = 0.5 * np.where(upper, e1 + e2, e1 - e2)
    else:
        q = np.empty_like(s)
        upper = np.zeros(s.shape, dtype=bool)
        idx = np.flatnonzero(~series)
        if idx.size:
            hg, tg = h[idx], t[idx]
            hpt = hg + tg
            pos = hpt > 0
            e1 = _erfcx(np.abs(hpt) * _INV_SQRT2)
            e2 = _erfcx((tg - hg) * _INV_SQRT2)
            q[idx] = 0.5 * np.where(pos, e1 + e2, e1 - e2)
            upper[idx] = pos
        if taylor.any():
            i = np.flatnonzero(taylor)
            q[i] = _q_taylor(h[i], t[i])
        if laguerre.any():
            i = np.flatnonzero(laguerre)
            q[i] = _q_laguerre(h[i], t[i])
    eq = E * q
    if upper.any():
        b = np.where(upper, bmax - eq, eq)
        c = np.where(upper, eq, bmax - eq)
    else:
        b, c = eq, bmax - eq
    ln_b = None
    if want_log:
        with np.errstate(divide="ignore", invalid="ignore"):
            ln_b = np.log(q) - half_e2
            if upper.any():
                ln_b = np.where(upper, np.log(b), ln_b)
    return b, c, ln_b, -half_e2 - _LN_SQRT2PI


# ------------------------------------------------------------------ rational cubic (Delbourgo-Gregory)

def _rational_cubic(t, omt, y_l, y_r, d_l, d_r, h, r):
    # rational cubic through (0, y_l), (1, y_r) in the local coordinate t = (x - x_l)/h, omt = 1 - t
    # (passed separately so that t -> 1 keeps its precision); r -> inf is linear interpolation
    with np.errstate(invalid="ignore", over="ignore"):
        cubic = (y_r * t * t * t + (r * y_r - h * d_r) * t * t * omt + (r * y_l + h * d_l) * t * omt * omt
                 + y_l * omt * omt * omt) / (1.0 + (r - 3.0) * t * omt)
    return np.where(r < _R_MAX, cubic, y_r * t + y_l * omt)


def _min_control(d_l, d_r, slope, prefer_shape: bool):
    # smallest control parameter that keeps the interpolant monotone and convex/concave like the data
    big = _R_MAX if prefer_shape else -_R_MAX
    with np.errstate(divide="ignore", invalid="ignore"):
        monotonic = (d_l * slope >= 0) & (d_r * slope >= 0)
        convex = (d_l <= slope) & (slope <= d_r)
        concave = (d_l >= slope) & (slope >= d_r)
        r1 = np.where(monotonic, np.where(slope != 0, (d_r + d_l) / slope, big), -_R_MAX)
        ok = (slope - d_l != 0) & (d_r - slope != 0)
        r2c = np.where(ok, np.fmax(np.abs((d_r - d_l) / (d_r - slope)), np.abs((d_r - d_l) / (slope - d_l))), big)
        r2 = np.where(convex | concave, r2c, np.where(monotonic, big, -_R_MAX))
    return np.where(monotonic | convex | concave, np.fmax(_R_MIN, np.fmax(r1, r2)), _R_MIN)


def _control(x_l, x_r, y_l, y_r, d_l, d_r, second, left: bool, shape_preserving: bool):
    # control parameter that matches the second derivative at the left (or right) end, made convex
    h = x_r - x_l
    slope = (y_r - y_l) / h
    with np.errstate(divide="ignore", invalid="ignore"):
        num = 0.5 * h * second + (d_r - d_l)
        den = (slope - d_l) if left else (d_r - slope)
        r = np.where(num == 0, 0.0, np.where(den == 0, np.where(num > 0, _R_MAX, _R_MIN), num / den))
    r_min = _min_control(d_l, d_r, slope, shape_preserving)
    return np.fmax(r, r_min)


# ------------------------------------------------------------------------------------ the solver

def _householder_factor(nu, h2, h3):
    return (1.0 + 0.5 * h2 * nu) / (1.0 + nu * (h2 + h3 * nu / 6.0))


def _solve_normalised(beta, cbeta, x):
    """Total std dev ``s`` with ``b(x, s) = beta`` for ``x <= 0``, ``0 < beta < b_max``; ``cbeta = b_max - beta``."""
    bmax = np.exp(0.5 * x)
    ax = -x
    sc = np.sqrt(2.0 * ax)
    # b at the inflexion point s_c = sqrt(2|x|), where h + t = 0: b_c = b_max (1 - erfcx(sqrt|x|))/2,
    # cancellation-free enough (< 3 digits) for |x| >= 0.02; nearer the money the general routine
    ec = _erfcx(sc * _INV_SQRT2)
    bc = 0.5 * bmax * (1.0 - ec)
    cc = 0.5 * bmax * (1.0 + ec)
    near = ax < 0.02
    if near.any():
        i = np.flatnonzero(near & (ax > 0))
        if i.size:
            bc[i], cc[i] = _normalised_black(x[i], sc[i], bmax[i])[:2]
        atm = ax == 0
        bc[atm], cc[atm] = 0.0, bmax[atm]
    vc = bmax * _INV_SQRT2PI
    lower = beta < bc
    sl = sc - bc / vc
    su = sc + cc / vc
    s_lu = np.where(lower, sl, su)
    pos = s_lu > 0
    b_lu, c_lu, _, lnv_lu = _normalised_black(x, s_lu if pos.all() else np.where(pos, s_lu, 1.0), bmax)
    if not pos.all():
        b_lu = np.where(pos, b_lu, 0.0)
    v_lu = np.exp(lnv_lu)
    br0 = lower & (beta < b_lu)
    br3 = ~lower & (beta > b_lu)
    mid_lo = lower & ~br0
    mid_hi = ~lower & ~br3

    s = np.empty_like(beta)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # middle branches: s(beta) directly by rational cubic between (b_l, s_l), (b_c, s_c), (b_u, s_u)
        for mask, left in ((mid_lo, False), (mid_hi, True)):
            if not mask.any():
                continue
            i = np.flatnonzero(mask)
            if left:   # [b_c, b_u]: second derivative 0 at b_c (inflexion of b at s_c)
                x_l, x_r, y_l, y_r, d_l, d_r = bc[i], b_lu[i], sc[i], su[i], 1.0 / vc[i], 1.0 / v_lu[i]
            else:      # [b_l, b_c]: second derivative 0 at b_c
                x_l, x_r, y_l, y_r, d_l, d_r = b_lu[i], bc[i], sl[i], sc[i], 1.0 / v_lu[i], 1.0 / vc[i]
            r = _control(x_l, x_r, y_l, y_r, d_l, d_r, 0.0, left, False)
            hh = x_r - x_l
            tt = (beta[i] - x_l) / hh
            s[i] = np.where(hh > 0, _rational_cubic(tt, 1.0 - tt, y_l, y_r, d_l, d_r, hh, r), 0.5 * (y_l + y_r))
        if br0.any():
            # lowest: interpolate f = 2pi/sqrt27 |x| N(-z)^3, z = |x|/(sqrt3 s), between (0, 0) and (b_l, f_l)
            i = np.flatnonzero(br0)
            axi, sli, bli = ax[i], sl[i], b_lu[i]
            z = axi / (_SQRT3 * sli)
            y = z * z
            ex = _erfcx(z / _SQRT2)                      # N(-z) = ex/2 e^{-y/2}
            Phi = 0.5 * ex * np.exp(-0.5 * y)
            f_l = _TWO_PI_OVER_SQRT27 * axi * Phi * Phi * Phi
            fp = 2.0 * math.pi * y * 0.25 * ex * ex * np.exp(0.125 * sli * sli)
            s2 = sli * sli
            fpp = (math.pi / 6.0 * y / (s2 * sli) * 0.5 * ex * np.exp(1.5 * y + 0.25 * s2)
                   * (8.0 * _SQRT3 * sli * axi + (3.0 * s2 * (s2 - 8.0) - 8.0 * axi * axi) * 0.5 * ex * _SQRT2PI))
            r = _control(0.0, bli, 0.0, f_l, 1.0, fp, fpp, False, True)
            tt = beta[i] / bli
            f = _rational_cubic(tt, 1.0 - tt, 0.0, f_l, 1.0, fp, bli, r)
            f = np.where(f > 0, f, (f_l * tt + bli * (1.0 - tt)) * tt)
            u = np.cbrt(f / (_TWO_PI_OVER_SQRT27 * axi))
            s[i] = axi / (_SQRT3 * -ndtri(u))
        if br3.any():
            # highest: interpolate f = N(-s/2) between (b_u, f_u) and (b_max, 0)
            i = np.flatnonzero(br3)
            sui, bui, cui = su[i], b_lu[i], c_lu[i]
            hu = x[i] / sui
            f_u = 0.5 * _erfcx(sui / (2.0 * _SQRT2)) * np.exp(-0.125 * sui * sui)
            fp = -0.5 * np.exp(0.5 * hu * hu)
            fpp = _SQRT_PI_OVER_2 * np.exp(hu * hu + 0.125 * sui * sui) * hu * hu / sui
            r = _control(bui, bmax[i], f_u, 0.0, fp, -0.5, fpp, True, True)
            omt = cbeta[i] / cui                 # (b_max - beta)/(b_max - b_u), exact near b_max
            tt = 1.0 - omt
            f = _rational_cubic(tt, omt, f_u, 0.0, fp, -0.5, cui, r)
            f = np.where(f > 0, f, (f_u * omt + 0.5 * cui * tt) * omt)
            s[i] = -2.0 * ndtri(f)

        # Householder (third order) on the branch objectives
        ln_beta = np.log(beta)
        big = br3 & (beta > 0.5 * bmax)
        for _ in range(_N_HOUSEHOLDER):
            s = np.where((s > 0) & np.isfinite(s), s, np.where(lower, sl, su))
            b, c, ln_b, ln_v = _normalised_black(x, s, bmax, want_log=bool(br0.any()))
            vega = np.exp(ln_v)
            hs = x / s
            B = hs * hs / s - 0.25 * s               # b''/b'
            B3 = B * B - 3.0 * (hs / s) ** 2 - 0.25  # b'''/b'
            nu = (beta - b) / vega
            h2, h3 = B, B3
            if br0.any():
                bpob = np.exp(ln_v - ln_b)           # b'/b
                inv = 1.0 / ln_b
                nu_l = (ln_beta - ln_b) * ln_b / ln_beta / bpob
                h2_l = B - bpob * (1.0 + 2.0 * inv)
                h3_l = B3 + 2.0 * bpob * bpob * (1.0 + 3.0 * inv * (1.0 + inv)) - 3.0 * B * bpob * (1.0 + 2.0 * inv)
                nu, h2, h3 = np.where(br0, nu_l, nu), np.where(br0, h2_l, h2), np.where(br0, h3_l, h3)
            if big.any():
                i = np.flatnonzero(big)
                gp = vega[i] / c[i]
                Bi = B[i]
                nu[i] = -np.log(cbeta[i] / c[i]) / gp
                h2 = h2.copy() if h2 is B else h2
                h2[i] = Bi + gp
                h3 = h3.copy() if h3 is B3 else h3
                h3[i] = B3[i] + gp * (2.0 * gp + 3.0 * Bi)
            ds = nu * _householder_factor(nu, h2, h3)
            ds = np.where(np.isfinite(ds), ds, nu)
            s = s + np.maximum(ds, -0.5 * s)
    return s


# -------------------------------------------------------------------------------------- public API

def black_price(F, K, T, sigma, cp, D=1.0):
    """Discounted Black-76 price on broadcastable arrays.

    Parameters: ``F`` forward, ``K`` strike (price units), ``T`` years, ``sigma`` vol (decimal),
    ``cp`` +1 call / -1 put, ``D`` discount factor. Returns the broadcast shape (0-d array for scalars).
    ``price = D [max(cp (F - K), 0) + sqrt(F K) b(-|ln(F/K)|, sigma sqrt(T))]`` with the normalised
    OTM call ``b`` evaluated without cancellation (module docstring; Jaeckel 2015), so relative accuracy
    holds deep out of the money. ``sigma sqrt(T) = 0`` gives the discounted intrinsic value; NaN for
    negative or non-finite inputs (``sigma = inf`` gives the upper bound). Runs on ``backend()``.
    """
    kernels = _numba()
    if kernels is not None:
        nb, tab, gl = kernels
        shape, flat = _flat_arrays(F, K, T, sigma, cp, D)
        out = np.empty(flat[0].size)
        nb.black_price(*flat, tab, gl, out)
        return out.reshape(shape)
    F, K, T, sigma, cp, D = _arrays(F, K, T, sigma, cp, D)
    shape = F.shape
    F, K, T, sigma, cp, D = (a.ravel() for a in (F, K, T, sigma, cp, D))
    out = np.full(F.shape, np.nan)
    with np.errstate(all="ignore"):
        s = sigma * np.sqrt(T)
        valid = (F > 0) & (K > 0) & (T >= 0) & (sigma >= 0) & ((cp == 1) | (cp == -1)) & (D >= 0) \
            & np.isfinite(F) & np.isfinite(K) & np.isfinite(D) & ~np.isnan(s)
        intrinsic = np.maximum(cp * (F - K), 0.0)
        zero = valid & (s == 0)
        inf = valid & np.isinf(s)
        out[zero] = (D * intrinsic)[zero]
        out[inf] = (D * np.where(cp > 0, F, K))[inf]
        go = np.flatnonzero(valid & (s > 0) & np.isfinite(s))
        for lo in range(0, go.size, _CHUNK):
            i = go[lo:lo + _CHUNK]
            x = -np.abs(_ln_f_over_k(F[i], K[i]))
            b = _normalised_black(x, s[i], np.exp(0.5 * x))[0]
            out[i] = D[i] * (intrinsic[i] + np.sqrt(F[i]) * np.sqrt(K[i]) * b)
    return out.reshape(shape)


def black_vega(F, K, T, sigma, D=1.0):
    """Black-76 vega ``dPrice/dsigma`` (per unit of vol), the same for calls and puts.

    Parameters as ``black_price``. ``vega = D F n(d1) sqrt(T) = D sqrt(F K) sqrt(T) n(h) exp(-t^2/2)``
    with ``h = ln(F/K)/s``, ``t = s/2`` (the second form never overflows); 0 at ``s = 0`` off the money.
    """
    F, K, T, sigma, D = _arrays(F, K, T, sigma, D)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = sigma * np.sqrt(T)
        y = -_ln_f_over_k(F, K)
        h = np.where(y == 0, 0.0, y / s)
        v = D * np.sqrt(F * K) * np.sqrt(T) * np.exp(-0.5 * (h * h + 0.25 * s * s)) * _INV_SQRT2PI
    return v


def _implied_vol_flat(p, F, K, T, cp, D):
    """``(vol, code)`` for 1-D arrays of one length (the body of ``implied_vol``)."""
    code = np.zeros(p.shape, dtype=np.int8)
    vol = np.full(p.shape, np.nan)
    finite = np.isfinite(p) & np.isfinite(F) & np.isfinite(K) & np.isfinite(T) & np.isfinite(D) & np.isfinite(cp)
    positive = (p > 0) & (F > 0) & (K > 0) & (T > 0) & (D > 0)
    good_cp = (cp == 1) | (cp == -1)
    pu = p / D
    intrinsic = np.maximum(cp * (F - K), 0.0)
    upper = np.where(cp > 0, F, K)
    root = np.sqrt(F) * np.sqrt(K)              # no overflow for huge F, K
    beta = (pu - intrinsic) / root              # OTM time value, normalised (put-call parity)
    cbeta = (upper - pu) / root                 # distance to the upper bound, exact near it
    valid = finite & positive & good_cp
    code[valid & (pu >= upper)] = IV_REASON_CODES["above_upper_bound"]
    code[valid & ~(beta >= _TINY)] = IV_REASON_CODES["below_intrinsic"]   # also catches pu <= intrinsic
    code[finite & positive & ~good_cp] = IV_REASON_CODES["bad_cp"]
    code[finite & ~positive] = IV_REASON_CODES["non_positive"]
    code[~finite] = IV_REASON_CODES["non_finite"]
    go = code == 0
    if go.all():
        x = -np.abs(_ln_f_over_k(F, K))
        vol = _solve_normalised(beta, cbeta, x) / np.sqrt(T)
    elif go.any():
        i = np.flatnonzero(go)
        x = -np.abs(_ln_f_over_k(F[i], K[i]))
        vol[i] = _solve_normalised(beta[i], cbeta[i], x) / np.sqrt(T[i])
    bad = go & ~(np.isfinite(vol) & (vol > 0))
    code[bad] = IV_REASON_CODES["no_convergence"]
    vol[~go | bad] = np.nan
    return vol, code


def implied_vol(price, F, K, T, cp, D=1.0, *, return_reason: bool = False):
    """Black-76 implied vol of discounted prices, vectorised; NaN (with a reason) outside the bounds.

    Parameters (broadcastable arrays or scalars): ``price`` discounted option price, ``F`` forward,
    ``K`` strike, ``T`` years, ``cp`` +1 call / -1 put, ``D`` discount factor. Returns ``sigma`` of the
    broadcast shape (a 0-d array for scalar inputs); with ``return_reason=True`` also an array of
    reason strings, keys of ``IV_REASONS`` (``IV_REASON_CODES`` maps them to small ints).

    Method: Jaeckel, "Let's Be Rational" (Wilmott 2015): in-the-money prices become out-of-the-money
    time values by put-call parity, the normalised price is inverted by a rational-cubic initial guess
    on four branches and two third-order Householder steps (module docstring). Accuracy: the returned
    vol reprices (``black_price``) to the input within a few ulps times the condition number
    ``|d ln b / d ln s|`` -- within 1e-13 relative for ``|ln(K/F)| <= 8 sigma sqrt(T)``; out of the money
    it is within ~1e-14 absolute of the exact vol on the domain of issue 3. In the money, the time value
    ``price/D - intrinsic`` only holds the digits the price has beyond the intrinsic value.
    Outside ``(D max(cp (F-K), 0), D F | D K)`` (bounds excluded), for non-finite or non-positive inputs,
    or ``cp`` not +1/-1 the vol is NaN; one bad element never raises. Shapes that do not broadcast raise
    ``InputError``. Runs on ``backend()`` (numba kernels, else numpy; the same results to a few ulps).
    """
    kernels = _numba()
    if kernels is not None:
        nb, tab, gl = kernels
        shape, flat = _flat_arrays(price, F, K, T, cp, D)
        vol = np.empty(flat[0].size)
        code = np.empty(flat[0].size, dtype=np.int8)
        n_bad = nb.implied_vol(*flat, tab, gl, vol, code)
    else:
        price, F, K, T, cp, D = _arrays(price, F, K, T, cp, D)
        shape = price.shape
        p, F, K, T, cp, D = (a.ravel() for a in (price, F, K, T, cp, D))
        n = p.size
        code = np.zeros(n, dtype=np.int8)
        vol = np.full(n, np.nan)
        with np.errstate(all="ignore"):
            # chunk by chunk, validation included: every temporary stays cache-sized
            for lo in range(0, n, _CHUNK):
                sl = slice(lo, min(lo + _CHUNK, n))
                vol[sl], code[sl] = _implied_vol_flat(p[sl], F[sl], K[sl], T[sl], cp[sl], D[sl])
        n_bad = int(np.count_nonzero(code == IV_REASON_CODES["no_convergence"]))
    if n_bad:
        warnings.warn(f"implied_vol: {n_bad} prices inside the bounds gave no finite vol "
                      "(reason 'no_convergence')", ConvergenceWarning, stacklevel=2)
    vol = vol.reshape(shape)
    if return_reason:
        return vol, _REASON_NAMES[code].reshape(shape)
    return vol


def quote_implied_vols(quotes: pd.DataFrame, forwards) -> pd.DataFrame:
    """Bid, ask and mid implied vols of a quote table (a copy with columns added).

    ``quotes``: DataFrame with ``T`` (years), ``strike``, ``cp`` (+1/-1), ``bid``, ``ask`` and optionally
    ``mid`` (else ``(bid + ask)/2``, NaN when a side is missing); ``forwards``: ``core.forwards.Forwards``.
    Adds ``F``, ``D`` (``forwards.F(T)``, ``forwards.D(T)``), ``y = ln(K/F)``, ``iv_bid``, ``iv_ask``,
    ``iv_mid`` and ``iv_reason``: the reason of the mid (``IV_REASONS``; ``no_quote`` when the mid is
    missing). When the mid has a vol but a side does not, ``iv_reason`` is ``"ok"`` and that side's reason
    is in ``iv_bid_reason`` / ``iv_ask_reason`` (a zero bid is ``non_positive``: no implied vol).
    """
    need = [c for c in ("T", "strike", "cp", "bid", "ask") if c not in quotes.columns]
    if need:
        raise InputError(f"quotes lack columns {need}: pass a quote table (core.quotes.QUOTE_COLUMNS)")
    q = quotes.copy()
    T = pd.to_numeric(q["T"], errors="coerce").to_numpy(float)
    K = pd.to_numeric(q["strike"], errors="coerce").to_numpy(float)
    cp = pd.to_numeric(q["cp"], errors="coerce").to_numpy(float)
    bid = pd.to_numeric(q["bid"], errors="coerce").to_numpy(float)
    ask = pd.to_numeric(q["ask"], errors="coerce").to_numpy(float)
    if "mid" in q.columns:
        mid = pd.to_numeric(q["mid"], errors="coerce").to_numpy(float)
    else:
        mid = 0.5 * (bid + ask)
    okT = np.isfinite(T) & (T > 0)
    Tq = np.where(okT, T, 1.0)
    F = np.where(okT, np.asarray(forwards.F(Tq), float), np.nan)
    D = np.where(okT, np.asarray(forwards.D(Tq), float), np.nan)
    y = -_ln_f_over_k(F, K)
    out = {}
    for name, price in (("bid", bid), ("ask", ask), ("mid", mid)):
        iv, reason = implied_vol(price, F, K, T, cp, D, return_reason=True)
        reason = np.where(np.isnan(price), "no_quote", reason)
        out[name] = (iv, reason)
    q["F"], q["D"], q["y"] = F, D, y
    q["iv_bid"], q["iv_ask"], q["iv_mid"] = out["bid"][0], out["ask"][0], out["mid"][0]
    q["iv_reason"] = out["mid"][1]
    q["iv_bid_reason"], q["iv_ask_reason"] = out["bid"][1], out["ask"][1]
    return q
