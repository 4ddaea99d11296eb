"""Non-parametric slices: a penalised cubic spline in total variance per expiry, checked for arbitrage.

Per expiry, ``w(y) = sum_j c_j B_j(y)`` on cubic B-splines with uniform knots over the quoted range
``[y_lo, y_hi]``, widened to the previous expiry's (``fit_smooth_surface``), with about one segment per quote gap
(2 to ``N_SEG_MAX`` segments: a P-spline, Eilers & Marx 1996, whose flexibility comes from the knots and
whose smoothness from the penalty), minimising

    sum_i r_i wt_i (w(y_i) - w_i)^2 / (2 sigma_i T)^2  +  lam ||Delta^2 c||^2

(a vol-scaled data term, ``dw = 2 sigma T dsigma``, robustness weights ``r_i`` below, plus the
second-difference penalty). ``lam = lam_rel x`` the mean diagonal of the data term, with
``log10 lam_rel = (1 - s) log10 lam_0 + s`` for the smoothing ``s`` in [0, 1] (``s = 1``: ``lam_rel = 10``,
nearly linear in ``y``). ``lam_0`` scales with the slice's quote band: ``lam_0 = max(LAM_FLOOR,
LAM_BAND min(1, (b / B_REF)^2))``, ``b`` the median half bid/ask vol spread (``LAM_BAND`` when the band is
unknown); a zero-width band (exact data) gives ``LAM_FLOOR``: ``s = 0`` then follows the quotes. Measured
on exact power-law SSVI (strikes every 2.5% of spot, 9 expiries 1m..2y; local vol inside 0.7-1.3 forward,
T >= 1m, against the closed form): band passed (zero): slice vols within 0.5 bp, local vol max 5.0 bp /
median 0.11 bp; band unknown: 6.5 / 0.12 bp (the former 12-segment slices: 70 / 1.2 bp).

Robustness (quotes such as Yahoo's 2000% or 1e-8 vols): (a) the quote whose vol differs most from the
median of its up-to-four nearest neighbours (two each side, in ``y``), when by more than a factor
``OUTLIER_RATIO``, gets ``r_i = 0``, and the search is repeated without it (at most a third of the slice);
(b) IRLS (rounds of stage 1 with the ``s = 0`` penalty, so that the weights do not depend on the
smoothing): Huber rounds ``r_i = min(1, HUBER_C / |u_i|)``, then two of Tukey's bisquare
``r_i = (1 - (v_i / BISQUARE_C)^2)^2`` (0 beyond), so that a wrong quote stops pulling; with
``u_i = (fitted vol - mid vol) / scale_i``, ``scale_i = max(half band_i, 1.4826 MAD, RESID_FLOOR)``, and
``v_i`` the same with ``max(scale_i, BISQUARE_FLOOR)`` (stage 1 is convex: a real but non-convex smile,
e.g. Andreasen-Huge's, leaves residuals of about a vol point that must not be cut). Quotes with ``r_i < 0.5``
keep that weight and are listed in ``info["downweighted"]``; the others count fully (``r_i = 1``) (and by ``fit_smooth_surface`` in the fit's warnings and ``params``).

Across expiries (``fit_smooth_surface``): where the ``T``-interpolated surface has static arbitrage between two
butterfly-free slices, their penalty is raised ``STIFFEN`` times and they are refitted (``STIFFEN_ROUNDS``).

Two stages. (1) A convex regression: the same objective under ``Delta^2 c >= 0`` (with uniform knots,
``w`` convex in ``y``), solved as bounded linear least squares in ``z = (c_0, c_1 - c_0, Delta^2 c)``
(``scipy.optimize.lsq_linear``); convexity removes the usual cause of butterfly arbitrage (``w'' < 0``).
(2) Convexity dropped, penalty residuals added for ``g < G_MARGIN`` on a ``y`` grid (the range,
``min(12 n_seg, N_GRID_IN)`` points, and a little beyond), calendar crossings with the previous expiry, ``w <= 0``
and end slopes beyond Lee's bound ``|w'| <= 1.98``; Levenberg-Marquardt from the convex solution with
an analytic Jacobian (``dg/dw``, ``dg/dw'``, ``dg/dw''`` in closed form), penalties x30 while violated.
Stage 2 is kept when it is clean and closer to the quotes (or less violating than a non-clean stage 1).
A calendar crossing left between grid points is removed by lifting the level; what remains is reported
in the fit's warnings.

Extrapolation in ``y`` (``SplineSlice.derivs``): linear with the end slope where that slope points away
from zero variance (``w' >= 0`` on the right, ``<= 0`` on the left; C1, ``w'' = 0``), otherwise
saturating, ``w_end + s L tanh(u / L)`` with ``L = w_end / (2 |s|)`` (C1, tends to ``w_end / 2 > 0``).
``SplineSlice`` caches its piecewise-polynomial coefficients (an evaluation is one ``searchsorted`` and a
Horner step); ``SplineStack`` evaluates all slices of a surface at once (uniform breakpoints: the interval
index is arithmetic). Slices are joined in ``T`` by ``core.surface.interp``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import BSpline, PPoly
from scipy.optimize import least_squares, lsq_linear

from core.errors import ConvergenceWarning, FitError
from core.surface.base import ModelFit, SliceData, butterfly_g, butterfly_g_grad, check_arbitrage, penalty_grid
from core.surface.interp import SliceSurface

SLOPE_MAX = 1.98
G_MARGIN = 0.02
N_SEG_MAX = 40          # knot segments per slice at most
LAM_FLOOR = 1e-8        # relative penalty at s = 0 for a zero-width band: follow the quotes
LAM_BAND = 1e-5         # relative penalty at s = 0 for a band of B_REF or wider, or an unknown band
B_REF = 0.005           # half bid/ask vol spread (50 bp) from which s = 0 is fully band-regularised
OUTLIER_RATIO = 3.0     # vol vs its neighbours' median beyond this factor: ignored (r_i = 0)
HUBER_C = 3.0           # Huber threshold in scaled residuals
BISQUARE_C = 6.0        # Tukey bisquare cut-off in scaled residuals (weight 0 beyond)
BISQUARE_FLOOR = 5e-3   # 50 bp: the smallest bisquare scale (weight 0 only beyond 3 vol points)
RESID_FLOOR = 1e-3      # 10 bp: the smallest residual scale of the Huber weights
STIFFEN = 10.0          # penalty factor per round where the joined surface has static arbitrage
STIFFEN_ROUNDS = 4
N_GRID_IN = 120         # penalty grid points inside the quoted range at most
MAX_NFEV = 100          # Levenberg-Marquardt evaluations per round at most


def _knots(lo: float, hi: float, n_seg: int) -> np.ndarray:
    inner = np.linspace(lo, hi, n_seg + 1)
    h = inner[1] - inner[0]
    return np.r_[lo - 3 * h, lo - 2 * h, lo - h, inner, hi + h, hi + 2 * h, hi + 3 * h]


def _basis(t: np.ndarray, y: np.ndarray, nu: int = 0) -> np.ndarray:
    nb = len(t) - 4
    spl = BSpline(t, np.eye(nb), 3, extrapolate=True)
    return (spl if nu == 0 else spl.derivative(nu))(y)


def _extend(u, w0, w1, w2):
    """Values outside the quoted range from the end values ``(w0, w1, w2)`` at distance ``u`` (0 inside);
    ``w0, w1, w2`` are fresh arrays of the shape of ``u`` and are overwritten."""
    out = u != 0
    if not out.any():
        return w0, w1, w2
    # linear where the end slope points away from zero total variance (right: >= 0, left: <= 0);
    # otherwise saturating, w_end + s L tanh(u / L) with L = w_end / (2 |s|): C2-smooth at the end,
    # w'' of the convex sign, and w tends to w_end / 2 > 0 instead of crossing zero
    bad = ((u > 0) & (w1 < 0)) | ((u < 0) & (w1 > 0))
    if bad.any():
        b0, b1, ub = w0[bad], w1[bad], u[bad]
        L = 0.5 * np.maximum(b0, 1e-12) / np.maximum(np.abs(b1), 1e-300)
        t = np.tanh(ub / L)
        sat = (b0 + b1 * L * t, b1 * (1 - t * t), -2.0 * b1 * t * (1 - t * t) / L)
    w = w1 * u
    w += w0
    w2[out] = 0.0
    if bad.any():
        w[bad], w1[bad], w2[bad] = sat
    return w, w1, w2


@dataclass(frozen=True)
class SplineSlice:
    """Cubic spline ``w(y)`` on ``[y_lo, y_hi]`` with C1 extensions outside (total variance).

    ``knots`` / ``coef``: the B-spline (degree 3); the piecewise-polynomial form is cached at construction."""

    knots: tuple
    coef: tuple
    y_lo: float
    y_hi: float
    _x: object = field(default=None, init=False, repr=False, compare=False)
    _c: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pp = PPoly.from_spline(BSpline(np.asarray(self.knots, float), np.asarray(self.coef, float), 3,
                                       extrapolate=True))
        x, c = np.asarray(pp.x, float), np.asarray(pp.c, float)
        keep = np.diff(x) > 0                      # drop empty intervals (repeated knots)
        object.__setattr__(self, "_x", np.ascontiguousarray(x[:-1][keep]))
        object.__setattr__(self, "_c", np.ascontiguousarray(c[:, keep]))

    def _poly(self, yc):
        """``(w, w', w'')`` of the cubic pieces at ``yc`` (inside the knot span)."""
        x, c = self._x, self._c
        i = np.searchsorted(x, yc, side="right") - 1
        np.clip(i, 0, len(x) - 1, out=i)
        dx = yc - x[i]
        c3, c2, c1, c0 = c[0][i], c[1][i], c[2][i], c[3][i]
        w = ((c3 * dx + c2) * dx + c1) * dx + c0
        w1 = (3.0 * c3 * dx + 2.0 * c2) * dx + c1
        w2 = 6.0 * c3 * dx + 2.0 * c2
        return w, w1, w2

    def derivs(self, y):
        """``(w, w_y, w_yy)`` at ``y`` (any shape): the spline inside, the extensions outside."""
        y = np.asarray(y, dtype=float)
        y1 = y.reshape(-1)
        yc = np.clip(y1, self.y_lo, self.y_hi)
        return tuple(v.reshape(y.shape) for v in _extend(y1 - yc, *self._poly(yc)))

    @staticmethod
    def stack_of(slices):
        """The slices evaluated together (``SplineStack.of``), or None when they cannot be (another kind among them)."""
        return SplineStack.of(slices)

    def to_dict(self) -> dict:
        """JSON-able description."""
        return {"knots": [float(k) for k in self.knots], "coef": [float(c) for c in self.coef],
                "y_lo": float(self.y_lo), "y_hi": float(self.y_hi)}


class SplineStack:
    """Several ``SplineSlice`` with uniform breakpoints evaluated together: ``stack(y)`` -> ``(W, W_y, W_yy)``,
    each (n, N), in a few array operations (the interval index is ``floor((y - x_0) / h)``, no search).
    Build with ``SplineStack.of(slices)``, which returns None when a slice's breakpoints are not uniform."""

    def __init__(self, x0, h, m, C, lo, hi):
        self.x0, self.h, self.m, self.lo, self.hi = x0, h, m, lo, hi
        self.C = C                                    # (4, n * M): padded coefficients, row-major

    @classmethod
    def of(cls, slices):
        if not slices or not all(type(sl) is SplineSlice for sl in slices):
            return None
        xs = [sl._x for sl in slices]
        for x in xs:
            d = np.diff(x)
            if len(x) > 1 and not np.allclose(d, d[0], rtol=1e-9, atol=0.0):
                return None
        n, M = len(slices), max(len(x) for x in xs)
        C = np.zeros((4, n, M))
        for k, sl in enumerate(slices):
            C[:, k, :len(xs[k])] = sl._c
        col = lambda v: np.asarray(v, float)[:, None]  # noqa: E731
        return cls(col([x[0] for x in xs]), col([x[1] - x[0] if len(x) > 1 else 1.0 for x in xs]),
                   np.array([len(x) for x in xs])[:, None], C.reshape(4, n * M),
                   col([sl.y_lo for sl in slices]), col([sl.y_hi for sl in slices]))

    def __call__(self, y):
        y = np.asarray(y, dtype=float).reshape(1, -1)
        yc = np.clip(y, self.lo, self.hi)
        dx = yc - self.x0
        dx /= self.h
        i = dx.astype(np.intp)
        np.clip(i, 0, self.m - 1, out=i)
        dx -= i
        dx *= self.h                                   # offset from the interval's left breakpoint
        i += (np.arange(len(self.m)) * (self.C.shape[1] // len(self.m)))[:, None]
        c3, c2, c1, c0 = (np.take(self.C[j], i) for j in range(4))
        # Horner, in place (this is on the hot path of every local-vol evaluation)
        w = c3 * dx
        w += c2
        w *= dx
        w += c1
        w *= dx
        w += c0
        c2 *= 2.0
        c3 *= 3.0
        w1 = c3 * dx
        w1 += c2
        w1 *= dx
        w1 += c1
        c3 *= 2.0
        c3 *= dx
        c3 += c2
        yc -= y
        np.negative(yc, out=yc)                        # u = y - clip(y)
        return _extend(yc, w, w1, c3)


def _penalised(A, rhs, lam, Pz, yg, G0, G1, G2, E1, w_prev, w_floor, scale, wscale, mix=()):
    """Residuals and analytic Jacobian of the penalised spline problem in ``z``: data, smoothness,
    butterfly (``g >= G_MARGIN`` on ``yg``, also for the blends ``(1 - t) w_before + t w`` in ``mix``:
    ``(t, w_b, w_b', w_b'')``), positivity, Lee-bounded end slopes, calendar."""

    def res(z, k):
        w, w1, w2 = G0 @ z, G1 @ z, G2 @ z
        g = butterfly_g(yg, np.maximum(w, w_floor), w1, w2)
        s_lo, s_hi = E1 @ z
        parts = [A @ z - rhs, np.sqrt(lam) * z[2:], k[0] * scale * np.maximum(0.0, G_MARGIN - g),
                 k[1] * wscale * np.maximum(0.0, 1.01 * w_floor - w),
                 k[1] * scale * np.maximum(0.0, [s_lo - SLOPE_MAX, -SLOPE_MAX - s_lo, -s_hi - SLOPE_MAX, s_hi - SLOPE_MAX])]
        if w_prev is not None:
            parts.append(k[1] * wscale * np.maximum(0.0, w_prev - w))
        for t, b0, b1, b2 in mix:
            gt = butterfly_g(yg, np.maximum((1 - t) * b0 + t * w, w_floor), (1 - t) * b1 + t * w1, (1 - t) * b2 + t * w2)
            parts.append(k[0] * scale * np.maximum(0.0, G_MARGIN - gt))
        return np.concatenate(parts)

    def jac(z, k):
        w, w1, w2 = G0 @ z, G1 @ z, G2 @ z
        wp = np.maximum(w, w_floor)
        g, g_w, g_w1, g_w2 = butterfly_g_grad(yg, wp, w1, w2)
        act = ((G_MARGIN - g) > 0)[:, None]
        s_lo, s_hi = E1 @ z
        sl = np.array([s_lo - SLOPE_MAX, -SLOPE_MAX - s_lo, -s_hi - SLOPE_MAX, s_hi - SLOPE_MAX]) > 0
        parts = [A, np.sqrt(lam) * Pz,
                 -k[0] * scale * act * (g_w[:, None] * G0 + g_w1[:, None] * G1 + g_w2 * G2),
                 -k[1] * wscale * G0 * ((1.01 * w_floor - w) > 0)[:, None],
                 k[1] * scale * np.vstack([E1[0], -E1[0], -E1[1], E1[1]]) * sl[:, None]]
        if w_prev is not None:
            parts.append(-k[1] * wscale * G0 * ((w_prev - w) > 0)[:, None])
        for t, b0, b1, b2 in mix:
            gt, gt_w, gt_w1, gt_w2 = butterfly_g_grad(yg, np.maximum((1 - t) * b0 + t * w, w_floor),
                                                 (1 - t) * b1 + t * w1, (1 - t) * b2 + t * w2)
            act_t = ((G_MARGIN - gt) > 0)[:, None]
            parts.append(-k[0] * scale * t * act_t * (gt_w[:, None] * G0 + gt_w1[:, None] * G1 + gt_w2 * G2))
        return np.vstack(parts)

    return res, jac


def _screen(y, iv) -> np.ndarray:
    """Gross outliers (bool, (N,)), ``y`` sorted: the quote whose vol is furthest (in log) from the median of
    its up-to-four nearest unflagged neighbours (two each side) is flagged when that is more than a factor
    ``OUTLIER_RATIO``; repeated without the flagged quotes (at most a third of the slice)."""
    n = len(y)
    bad = np.zeros(n, dtype=bool)
    if n < 3:
        return bad
    lv = np.log(iv)
    for _ in range(n // 3):
        good = np.flatnonzero(~bad)
        dev = np.zeros(len(good))
        for k in range(len(good)):
            nb = lv[np.r_[good[max(0, k - 2):k], good[k + 1:k + 3]]]
            dev[k] = abs(lv[good[k]] - np.median(nb))
        j = int(np.argmax(dev))
        if dev[j] <= np.log(OUTLIER_RATIO):
            break
        bad[good[j]] = True
    return bad


def _lam_rel(smoothing: float, half_band) -> float:
    """Relative penalty ``lam_rel`` for smoothing ``s`` and the median half band (module docstring)."""
    s = float(np.clip(smoothing, 0.0, 1.0))
    lam0 = LAM_BAND                    # band unknown: as for a band of B_REF
    if half_band is not None and np.isfinite(half_band):
        lam0 = max(LAM_FLOOR, LAM_BAND * min(1.0, (half_band / B_REF) ** 2))
    return 10.0 ** ((1.0 - s) * np.log10(lam0) + s)


def fit_smooth_slice(y, iv, wt, T: float, *, smoothing: float = 0.0, prev=None, y_grid=None, band=None,
                     stiffen: float = 1.0, y_domain=None):
    """Fit one penalised-spline slice (module docstring), robust to outlying quotes.

    ``y, iv, wt`` (N,): log-moneyness (increasing), mid vols, weights; ``T`` years; ``prev``: the previous
    expiry's slice (calendar); ``y_grid``: where the penalties are checked; ``band``: ``(iv_bid, iv_ask)``
    (N,) each, NaN where unknown (sets the penalty scale and the Huber scale); ``stiffen``: factor on the
    penalty (``fit_smooth_surface`` raises it where the surface between expiries has static arbitrage);
    ``y_domain``: ``(lo, hi)`` over which the spline is defined (at least the quoted range; ``fit_smooth_surface``
    passes the union with the previous expiry's, so that where only that expiry is quoted this slice may
    bend to keep the surface between them butterfly-free instead of extending linearly). Returns
    ``(SplineSlice, info dict)``; ``info["robust_weight"]`` (N,) are the ``r_i``, ``info["downweighted"]``
    the indices with ``r_i < 0.5``.
    """
    y, iv, wt = (np.asarray(a, float) for a in (y, iv, wt))
    if np.any(np.diff(y) < 0):
        order = np.argsort(y, kind="stable")
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        b2 = None if band is None else tuple(np.asarray(x, float)[order] for x in band)
        sl, info = fit_smooth_slice(y[order], iv[order], wt[order], T, smoothing=smoothing, prev=prev,
                                    y_grid=y_grid, band=b2, stiffen=stiffen, y_domain=y_domain)
        info["robust_weight"] = info["robust_weight"][inv]
        info["downweighted"] = sorted(int(order[i]) for i in info["downweighted"])
        return sl, info
    lo, hi = float(y.min()), float(y.max())
    if hi - lo < 1e-6:
        raise FitError("all quotes of this expiry are at one strike")
    width_q = hi - lo
    if y_domain is not None:
        lo, hi = min(lo, float(y_domain[0])), max(hi, float(y_domain[1]))
    half = np.full(len(y), np.nan)
    if band is not None:
        bid, ask = (np.asarray(x, float) for x in band)
        with np.errstate(invalid="ignore"):
            half = np.where(np.isfinite(bid) & np.isfinite(ask) & (ask >= bid), 0.5 * (ask - bid), np.nan)
    rw = np.where(_screen(y, iv), 0.0, 1.0)
    if np.sum(rw > 0) < 3:
        raise FitError("fewer than 3 quotes of this expiry have mutually consistent implied vols")
    iv_ref = np.where(rw > 0, iv, np.interp(y, y[rw > 0], iv[rw > 0]))   # for the weights of ignored quotes
    n_seg = int(np.clip(round((len(y) - 1) * (hi - lo) / width_q), 2, N_SEG_MAX))
    t = _knots(lo, hi, n_seg)
    B = _basis(t, y)
    nb = B.shape[1]
    w_mid = iv_ref * iv_ref * T
    sw0 = np.sqrt(wt) / (2.0 * iv_ref * T)  # vol-scaled data weights: dw = 2 sigma T dsigma
    P = np.diff(np.eye(nb), n=2, axis=0)
    # c = L z with z = (c_0, c_1 - c_0, second differences >= 0): convex w by bounds only
    L = np.linalg.inv(np.vstack([np.eye(nb)[0], np.eye(nb)[1] - np.eye(nb)[0], P]))
    A0 = (B * sw0[:, None]) @ L
    kept = rw > 0
    hb = float(np.nanmedian(half[kept])) if np.any(np.isfinite(half[kept])) else None
    lam = float(stiffen) * _lam_rel(smoothing, hb) * float(np.sum(A0[kept] ** 2)) / (nb - 2)
    Pz = np.hstack([np.zeros((nb - 2, 2)), np.eye(nb - 2)])
    lb = np.r_[-np.inf, -np.inf, np.zeros(nb - 2)]
    BL = B @ L

    def stage1(r):
        sr = np.sqrt(r)
        A_, rhs_ = A0 * sr[:, None], w_mid * sw0 * sr
        sol = lsq_linear(np.vstack([A_, np.sqrt(lam) * Pz]), np.r_[rhs_, np.zeros(nb - 2)], bounds=(lb, np.inf),
                         lsmr_tol="auto", method="bvls")
        return sol.x

    # Huber IRLS on a lightly penalised fit (the s = 0 penalty), so that which quotes count as outliers
    # does not depend on the smoothing; residuals in vol, scaled by the half band (or by the residuals'
    # own spread, 10 bp at least)
    lam_s, lam = lam, _lam_rel(0.0, hb) * float(np.sum(A0[kept] ** 2)) / (nb - 2)
    z = stage1(rw)
    kinds = ("huber",) * 3 + ("bisquare",) * 2
    it = 0
    while it < len(kinds):
        res_v = np.sqrt(np.maximum(BL @ z, 1e-12) / T) - iv
        mad = 1.4826 * float(np.median(np.abs(res_v[rw > 0])))
        scale = np.fmax(np.where(np.isfinite(half), half, 0.0), max(mad, RESID_FLOOR))
        u = np.abs(res_v) / scale
        if kinds[it] == "huber":
            rob = np.minimum(1.0, HUBER_C / np.maximum(u, 1e-300))
        else:   # from the Huber fit, redescending (Tukey's bisquare): a wrong quote stops pulling
            ub = np.abs(res_v) / np.fmax(scale, BISQUARE_FLOOR)
            rob = np.clip(1.0 - (ub / BISQUARE_C) ** 2, 0.0, 1.0) ** 2
        rw_new = np.where(rw > 0, rob, 0.0)
        converged = bool(np.all(np.abs(rw_new - rw) < 1e-3))
        if converged and kinds[it] == "bisquare":
            break
        if converged:
            it = kinds.index("bisquare")
            continue
        rw = rw_new
        z = stage1(rw)
        it += 1
    # only the outliers stay down-weighted: a quote the convex IRLS fit merely misses (a real non-convex
    # smile) counts fully in the final fit
    rw = np.where(rw < 0.5, rw, 1.0)
    lam = lam_s
    z = stage1(rw)
    A = A0 * np.sqrt(rw)[:, None]
    rhs = w_mid * sw0 * np.sqrt(rw)
    yg = np.asarray(y_grid if y_grid is not None else np.linspace(lo - 0.3 * (hi - lo), hi + 0.3 * (hi - lo), 81))
    yg = np.unique(np.r_[yg, np.linspace(lo, hi, min(12 * n_seg, N_GRID_IN) + 1)])
    # grid rows: inside the range the basis; outside, the linear extension through the end values
    ygc = np.clip(yg, lo, hi)
    Bg0, Bg1, Bg2 = _basis(t, ygc), _basis(t, ygc, 1), _basis(t, ygc, 2)
    out = (yg != ygc)[:, None]
    G0 = np.where(out, Bg0 + Bg1 * (yg - ygc)[:, None], Bg0) @ L
    G1 = Bg1 @ L
    G2 = np.where(out, 0.0, Bg2) @ L
    E1 = _basis(t, np.array([lo, hi]), 1) @ L  # end slopes
    w_prev = prev.derivs(yg)[0] * (1 + 1e-7) if prev is not None else None
    # the surface between this expiry and the previous one (or T = 0) blends the two slices: keep the
    # blends butterfly-free too (linear blends at t = 1/4, 1/2, 3/4 as a proxy for the T-interpolation)
    before = prev.derivs(yg) if prev is not None else (np.zeros_like(yg),) * 3
    mix = [(t, *before) for t in (0.25, 0.5, 0.75)]
    w_floor = 1e-3 * float(np.min(w_mid))
    scale = np.sqrt(len(y) / len(yg)) * float(np.sqrt(np.mean(wt)))  # g and slopes are dimensionless
    wscale = scale / (2.0 * float(np.median(iv_ref)) * T)                    # w gaps in vol units

    def violations(z):
        w, w1, w2 = G0 @ z, G1 @ z, G2 @ z
        g = butterfly_g(yg, np.maximum(w, w_floor), w1, w2)
        for t, b0, b1, b2 in mix:
            g = np.minimum(g, butterfly_g(yg, np.maximum((1 - t) * b0 + t * w, w_floor), (1 - t) * b1 + t * w1,
                                          (1 - t) * b2 + t * w2))
        s_lo, s_hi = E1 @ z
        slope_bad = max(abs(s_lo), abs(s_hi)) - SLOPE_MAX
        gap = float(np.max(w_prev - w)) if w_prev is not None else -np.inf
        return float(np.min(g)), gap, float(np.min(w)), slope_bad

    info = {"relaxed": False, "nfev": 0, "lam": float(lam), "n_basis": int(nb), "robust_weight": rw,
            "downweighted": [int(i) for i in np.flatnonzero(rw < 0.5)]}

    def clean(v):
        return v[0] >= 0 and v[1] <= 0 and v[2] > w_floor and v[3] <= 0

    def badness(v):
        return max(-v[0], 0.0) + max(v[1], 0.0) / max(float(np.mean(w_mid)), 1e-12) + max(v[3], 0.0)

    # From the convex solution, drop the convexity and follow the quotes as closely as the butterfly /
    # calendar / positivity / slope penalties allow (Levenberg-Marquardt; penalties x30 while violated).
    # The relaxed solution is kept when it is clean and closer to the quotes, or when the convex one
    # is not clean and the relaxed one violates less.
    v_c = violations(z)
    res, jac = _penalised(A, rhs, lam, Pz, yg, G0, G1, G2, E1, w_prev, w_floor, scale, wscale, mix)
    k = np.array([30.0, 30.0])
    zr, v_r, sol = z, v_c, None
    for _ in range(4):
        sol = least_squares(res, zr, jac=jac, args=(k,), method="lm", x_scale="jac", max_nfev=min(100 * (nb + 1), MAX_NFEV))
        zr = sol.x
        info["nfev"] += int(sol.nfev)
        v_r = violations(zr)
        if clean(v_r):
            break
        k = k * np.array([30.0 if v_r[0] < 0 else 1.0, 30.0 if (v_r[1] > 0 or v_r[3] > 0 or v_r[2] <= w_floor) else 1.0])
    closer = np.sum((A @ zr - rhs) ** 2) < np.sum((A @ z - rhs) ** 2)
    if (clean(v_r) and (closer or not clean(v_c))) or (not clean(v_c) and badness(v_r) < badness(v_c)):
        z, info["relaxed"] = zr, True
    if not clean(violations(z)) and sol is not None and sol.status <= 0:
        warnings.warn(f"smooth slice T={T:.4f}: optimiser stopped: {sol.message}", ConvergenceWarning, stacklevel=2)
    lifted = 0.0
    if prev is not None:
        # a crossing between grid points, or what the penalty left: lift the level (a constant in w)
        yf = np.linspace(yg[0], yg[-1], 20 * len(yg))
        cand = SplineSlice(knots=tuple(t), coef=tuple(L @ z), y_lo=lo, y_hi=hi)
        gap_f = float(np.max(prev.derivs(yf)[0] - cand.derivs(yf)[0]))
        if gap_f > 0:
            lifted = gap_f + 1e-10
            z = z.copy()
            z[0] += lifted
    c = L @ z
    sl = SplineSlice(knots=tuple(t), coef=tuple(c), y_lo=lo, y_hi=hi)
    yf = np.linspace(yg[0], yg[-1], 10 * len(yg))
    wf, wf1, wf2 = sl.derivs(yf)
    g_min = float(np.min(butterfly_g(yf, wf, wf1, wf2)))
    gap = float(np.max(prev.derivs(yf)[0] - wf)) if prev is not None else -np.inf
    s_lo, s_hi = E1 @ z
    info.update(g_min=g_min, calendar_gap=gap, slope_lo=float(s_lo), slope_hi=float(s_hi), lifted=lifted)
    return sl, info


def fit_smooth_surface(data: SliceData, smoothing: float) -> ModelFit:
    """All slices in increasing ``T`` (calendar against the last fitted one), joined by
    ``core.surface.interp.SliceSurface``: the ``"smooth"`` method for the dispatcher. Ignored or down-weighted
    quotes are listed in the notes.

    The slices are checked one by one, but between expiries the surface is the ``T``-interpolation of
    their ``y``-profiles: where ``core.surface.base.check_arbitrage`` finds ``g < 0`` or ``dw/dT < 0`` at or
    between expiries, the penalty of the slices on either side is raised ``STIFFEN`` times and those
    slices (and the later ones, for the calendar condition) are refitted, at most ``STIFFEN_ROUNDS`` times.
    """
    keys, Tn, y, iv, wt, idx, y_lo, y_hi = (data.keys, data.T, data.y, data.iv, data.weight, data.idx, data.y_lo,
                                             data.y_hi)
    s = smoothing
    band = (data.bid, data.ask)
    failed: list[str] = []
    notes: list[str] = []
    n = len(keys)
    stiff = np.ones(n)
    results: list = [None] * n          # per expiry: (slice, info) or an error message
    start = 0
    for rnd in range(STIFFEN_ROUNDS + 1):
        prev, lo_prev, hi_prev = None, None, None
        for i in range(n):
            r = results[i]
            if i >= start:
                m = idx == i
                lo = min(y_lo[i], lo_prev) if lo_prev is not None else y_lo[i]
                hi = max(y_hi[i], hi_prev) if hi_prev is not None else y_hi[i]
                try:
                    bd = (band[0][m], band[1][m])
                    r = fit_smooth_slice(y[m], iv[m], wt[m], float(Tn[i]), smoothing=s, prev=prev,
                                         y_grid=penalty_grid(lo, hi, n=101), band=bd, stiffen=stiff[i],
                                         y_domain=(lo, hi))
                except (ValueError, FloatingPointError, np.linalg.LinAlgError, FitError) as exc:
                    r = f"{keys[i]}: smooth fit failed ({exc})"
                results[i] = r
            if not isinstance(r, str):
                prev, lo_prev, hi_prev = r[0], float(y_lo[i]), float(y_hi[i])
        ok = [i for i in range(n) if not isinstance(results[i], str)]
        if not ok:
            break
        T_ok = [float(Tn[i]) for i in ok]
        surf = SliceSurface(T_nodes=tuple(T_ok), slices=tuple(results[i][0] for i in ok),
                            y_lo=tuple(float(y_lo[i]) for i in ok), y_hi=tuple(float(y_hi[i]) for i in ok))
        if rnd == STIFFEN_ROUNDS:
            break
        arb = check_arbitrage(surf, T_ok, n_sub=8)   # denser in T than the fit report
        if not (arb["butterfly"] or arb["calendar"]):
            break
        bad = set()
        for t in arb["butterfly_T"] + arb["calendar_T"]:
            k = int(np.searchsorted(T_ok, t - 1e-9))
            bad.update(ok[j] for j in (k - 1, k) if 0 <= j < len(ok))
        if not bad:
            break
        for j in bad:
            stiff[j] *= STIFFEN
        start = min(bad)
    for i in range(n):
        if isinstance(results[i], str):
            failed.append(results[i])
    if not any(not isinstance(r, str) for r in results):
        raise FitError("no expiry could be fitted with the smooth method: " + "; ".join(failed))
    params = {}
    for i in ok:
        k = keys[i]
        sl, info = results[i]
        m = idx == i
        rw = info["robust_weight"]
        if info["downweighted"]:
            ym, ivm = y[m], iv[m]
            lst = ", ".join(f"y={ym[j]:.3f} iv={ivm[j]:.4g} ({'ignored' if rw[j] == 0 else f'weight {rw[j]:.2f}'})"
                            for j in info["downweighted"][:8])
            more = len(info["downweighted"]) - 8
            notes.append(f"{k}: smooth fit down-weights {len(info['downweighted'])} quote(s) inconsistent with the "
                         f"rest of the slice: {lst}" + (f" and {more} more" if more > 0 else ""))
        if stiff[i] > 1:
            notes.append(f"{k}: smooth penalty raised x{stiff[i]:.0f} to remove static arbitrage between expiries")
        info = {kk: v for kk, v in info.items() if kk != "robust_weight"}
        info["downweighted"] = [{"y": float(y[m][j]), "iv": float(iv[m][j]), "weight": float(rw[j])}
                                for j in info["downweighted"]]
        info["stiffen"] = float(stiff[i])
        if info["g_min"] < 0:
            notes.append(f"{k}: smooth slice keeps g < 0 (min {info['g_min']:.3g}) near the quoted range")
        if info["lifted"] > 0:
            notes.append(f"{k}: smooth slice lifted by {info['lifted']:.2e} in total variance to stay above the previous expiry")
        if info["calendar_gap"] > 0:
            notes.append(f"{k}: smooth slice dips below the previous expiry by {info['calendar_gap']:.2e} in w")
        params[k] = {"T": float(Tn[i]), **sl.to_dict(), **info}
    return ModelFit(surface=surf, params=params, global_params={"smoothing_lambda": {k: params[k]["lam"] for k in params}},
                    notes=tuple(notes), failed=tuple(failed))
