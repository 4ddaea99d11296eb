"""Non-parametric slices: a penalised cubic spline in total variance per expiry, checked for arbitrage.

Per expiry, ``w(y) = sum_j c_j B_j(y)`` on cubic B-splines with uniform knots over the quoted range
``[y_lo, y_hi]`` (one segment per quote gap, 2 to ``N_SEG_MAX`` segments: a P-spline, Eilers & Marx 1996,
whose flexibility comes from the knots and whose smoothness from the penalty), minimising

    sum_i r_i wt_i (w(y_i) - w_i)^2 / (2 sigma_i T)^2  +  lam ||Delta^2 c||^2

(a vol-scaled data term, ``dw = 2 sigma T dsigma``, robustness weights ``r_i`` below, plus the
second-difference penalty). ``lam = lam_rel x`` the mean diagonal of the data term, with
``log10 lam_rel = (1 - s) log10 lam_0 + s`` for the smoothing ``s`` in [0, 1] (``s = 1``: ``lam_rel = 10``,
nearly linear in ``y``). ``lam_0`` scales with the slice's quote band: ``lam_0 = max(LAM_FLOOR,
LAM_BAND min(1, (b / B_REF)^2))``, ``b`` the median half bid/ask vol spread; a zero-width band (exact
data) or an unknown band gives ``LAM_FLOOR``: ``s = 0`` then follows the quotes (measured on exact
power-law SSVI at 9 expiries 1m..2y: slice vols within 0.2 bp; local vol inside 0.7-1.3 forward, T >= 1m:
max 5 bp, median 0.1 bp).

Robustness (quotes such as Yahoo's 2000% or 1e-8 vols): (a) a quote whose vol differs from the median of
its up-to-four nearest neighbours (two each side, in ``y``) by more than a factor ``OUTLIER_RATIO`` gets
``r_i = 0``; (b) Huber IRLS (three rounds on stage 1): ``r_i = min(1, HUBER_C / |u_i|)`` with
``u_i = (fitted vol - mid vol) / max(half band_i, 1.4826 MAD, RESID_FLOOR)``. Quotes with ``r_i < 0.5``
are listed in ``info["downweighted"]`` (and by ``fit_smooth`` in the fit's warnings).

Two stages. (1) A convex regression: the same objective under ``Delta^2 c >= 0`` (with uniform knots,
``w`` convex in ``y``), solved as bounded linear least squares in ``z = (c_0, c_1 - c_0, Delta^2 c)``
(``scipy.optimize.lsq_linear``); convexity removes the usual cause of butterfly arbitrage (``w'' < 0``).
(2) Convexity dropped, penalty residuals added for ``g < G_MARGIN`` on a ``y`` grid (the range,
``min(12 n_seg, 240)`` points, and a little beyond), calendar crossings with the previous expiry, ``w <= 0``
and end slopes beyond Lee's bound ``|w'| <= 1.98``; Levenberg-Marquardt from the convex solution with
an analytic Jacobian (``dg/dw``, ``dg/dw'``, ``dg/dw''`` in closed form), penalties x30 while violated.
Stage 2 is kept when it is clean and closer to the quotes (or less violating than a non-clean stage 1).
A calendar crossing left between grid points is removed by lifting the level; what remains is reported
in the fit's warnings.

Extrapolation in ``y`` (``SplineSlice.derivs``): linear with the end slope where that slope points away
from zero variance (``w' >= 0`` on the right, ``<= 0`` on the left; C1, ``w'' = 0``), otherwise
saturating, ``w_end + s L tanh(u / L)`` with ``L = w_end / (2 |s|)`` (C1, tends to ``w_end / 2 > 0``).
``SplineSlice`` caches its piecewise-polynomial coefficients: an evaluation is one ``searchsorted`` and a
Horner step. Slices are joined in ``T`` by ``core.surface.interp``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import BSpline, PPoly

from core.errors import ConvergenceWarning, FitError
from core.surface.base import butterfly_g

SLOPE_MAX = 1.98
G_MARGIN = 0.02
N_SEG_MAX = 40          # knot segments per slice at most
LAM_FLOOR = 1e-8        # relative penalty at s = 0 for a zero-width or unknown band: follow the quotes
LAM_BAND = 1e-5         # relative penalty at s = 0 for a band of B_REF or wider
B_REF = 0.005           # half bid/ask vol spread (50 bp) from which s = 0 is fully band-regularised
OUTLIER_RATIO = 3.0     # vol vs its neighbours' median beyond this factor: ignored (r_i = 0)
HUBER_C = 3.0           # Huber threshold in scaled residuals
RESID_FLOOR = 1e-3      # 10 bp: the smallest residual scale of the Huber weights


def _knots(lo: float, hi: float, n_seg: int) -> np.ndarray:
    inner = np.linspace(lo, hi, n_seg + 1)
    h = inner[1] - inner[0]
    return np.r_[lo - 3 * h, lo - 2 * h, lo - h, inner, hi + h, hi + 2 * h, hi + 3 * h]


def _basis(t: np.ndarray, y: np.ndarray, nu: int = 0) -> np.ndarray:
    nb = len(t) - 4
    spl = BSpline(t, np.eye(nb), 3, extrapolate=True)
    return (spl if nu == 0 else spl.derivative(nu))(y)


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
        yc = np.clip(y, self.y_lo, self.y_hi)
        w0, w1, w2 = self._poly(yc)
        u = y - yc
        out = u != 0
        if not out.any():
            return w0, w1, w2
        # linear where the end slope points away from zero total variance (right: >= 0, left: <= 0);
        # otherwise saturating, w_end + s L tanh(u / L) with L = w_end / (2 |s|): C2-smooth at the end,
        # w'' of the convex sign, and w tends to w_end / 2 > 0 instead of crossing zero
        bad = ((u > 0) & (w1 < 0)) | ((u < 0) & (w1 > 0))
        L = np.where(bad, 0.5 * np.maximum(w0, 1e-12) / np.maximum(np.abs(w1), 1e-300), 1.0)
        t = np.tanh(u / L)
        w_sat, w1_sat, w2_sat = w0 + w1 * L * t, w1 * (1 - t * t), -2.0 * w1 * t * (1 - t * t) / L
        w = np.where(out, np.where(bad, w_sat, w0 + w1 * u), w0)
        wy = np.where(out & bad, w1_sat, w1)
        wyy = np.where(out, np.where(bad, w2_sat, 0.0), w2)
        return w, wy, wyy

    def to_dict(self) -> dict:
        """JSON-able description."""
        return {"knots": [float(k) for k in self.knots], "coef": [float(c) for c in self.coef],
                "y_lo": float(self.y_lo), "y_hi": float(self.y_hi)}


def _g_and_grad(y, w, w1, w2):
    """``g`` and its partial derivatives in ``(w, w', w'')`` (closed form of ``butterfly_g``)."""
    A = 1.0 - y * w1 / (2.0 * w)
    g = A * A - w1 * w1 / (4.0 * w) - w1 * w1 / 16.0 + 0.5 * w2
    g_w = 2.0 * A * y * w1 / (2.0 * w * w) + w1 * w1 / (4.0 * w * w)
    g_w1 = 2.0 * A * (-y / (2.0 * w)) - w1 / (2.0 * w) - w1 / 8.0
    return g, g_w, g_w1, 0.5


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
        g, g_w, g_w1, g_w2 = _g_and_grad(yg, wp, w1, w2)
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
            gt, gt_w, gt_w1, gt_w2 = _g_and_grad(yg, np.maximum((1 - t) * b0 + t * w, w_floor),
                                                 (1 - t) * b1 + t * w1, (1 - t) * b2 + t * w2)
            act_t = ((G_MARGIN - gt) > 0)[:, None]
            parts.append(-k[0] * scale * t * act_t * (gt_w[:, None] * G0 + gt_w1[:, None] * G1 + gt_w2 * G2))
        return np.vstack(parts)

    return res, jac


def _screen(y, iv) -> np.ndarray:
    """Gross outliers (bool, (N,)): vol off the median of its up-to-four nearest neighbours in ``y`` (two
    each side) by more than a factor ``OUTLIER_RATIO`` (``y`` sorted)."""
    n = len(y)
    bad = np.zeros(n, dtype=bool)
    if n < 3:
        return bad
    lv = np.log(iv)
    for i in range(n):
        nb = np.r_[lv[max(0, i - 2):i], lv[i + 1:i + 3]]
        bad[i] = abs(lv[i] - np.median(nb)) > np.log(OUTLIER_RATIO)
    return bad


def _lam_rel(smoothing: float, half_band) -> float:
    """Relative penalty ``lam_rel`` for smoothing ``s`` and the median half band (module docstring)."""
    s = float(np.clip(smoothing, 0.0, 1.0))
    lam0 = LAM_FLOOR
    if half_band is not None and np.isfinite(half_band):
        lam0 = max(LAM_FLOOR, LAM_BAND * min(1.0, (half_band / B_REF) ** 2))
    return 10.0 ** ((1.0 - s) * np.log10(lam0) + s)


def fit_smooth_slice(y, iv, wt, T: float, *, smoothing: float = 0.0, prev=None, y_grid=None, band=None):
    """Fit one penalised-spline slice (module docstring), robust to outlying quotes.

    ``y, iv, wt`` (N,): log-moneyness (increasing), mid vols, weights; ``T`` years; ``prev``: the previous
    expiry's slice (calendar); ``y_grid``: where the penalties are checked; ``band``: ``(iv_bid, iv_ask)``
    (N,) each, NaN where unknown (sets the penalty scale and the Huber scale). Returns
    ``(SplineSlice, info dict)``; ``info["robust_weight"]`` (N,) are the ``r_i``, ``info["downweighted"]``
    the indices with ``r_i < 0.5``.
    """
    from scipy.optimize import least_squares, lsq_linear

    y, iv, wt = (np.asarray(a, float) for a in (y, iv, wt))
    if np.any(np.diff(y) < 0):
        order = np.argsort(y, kind="stable")
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        b2 = None if band is None else tuple(np.asarray(x, float)[order] for x in band)
        sl, info = fit_smooth_slice(y[order], iv[order], wt[order], T, smoothing=smoothing, prev=prev,
                                    y_grid=y_grid, band=b2)
        info["robust_weight"] = info["robust_weight"][inv]
        info["downweighted"] = sorted(int(order[i]) for i in info["downweighted"])
        return sl, info
    lo, hi = float(y.min()), float(y.max())
    if hi - lo < 1e-6:
        raise FitError("all quotes of this expiry are at one strike")
    half = np.full(len(y), np.nan)
    if band is not None:
        bid, ask = (np.asarray(x, float) for x in band)
        with np.errstate(invalid="ignore"):
            half = np.where(np.isfinite(bid) & np.isfinite(ask) & (ask >= bid), 0.5 * (ask - bid), np.nan)
    rw = np.where(_screen(y, iv), 0.0, 1.0)
    if np.sum(rw > 0) < 3:
        raise FitError("fewer than 3 quotes of this expiry have mutually consistent implied vols")
    iv_ref = np.where(rw > 0, iv, np.interp(y, y[rw > 0], iv[rw > 0]))   # for the weights of ignored quotes
    n_seg = int(np.clip(len(y) - 1, 2, N_SEG_MAX))
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
    lam = _lam_rel(smoothing, hb) * float(np.sum(A0[kept] ** 2)) / (nb - 2)
    Pz = np.hstack([np.zeros((nb - 2, 2)), np.eye(nb - 2)])
    lb = np.r_[-np.inf, -np.inf, np.zeros(nb - 2)]
    BL = B @ L

    def stage1(r):
        sr = np.sqrt(r)
        A_, rhs_ = A0 * sr[:, None], w_mid * sw0 * sr
        sol = lsq_linear(np.vstack([A_, np.sqrt(lam) * Pz]), np.r_[rhs_, np.zeros(nb - 2)], bounds=(lb, np.inf),
                         lsmr_tol="auto", method="bvls")
        return sol.x

    z = stage1(rw)
    # Huber IRLS: residuals in vol, scaled by the half band (or the residuals' own spread, 10 bp at least)
    for _ in range(3):
        res_v = np.sqrt(np.maximum(BL @ z, 1e-12) / T) - iv
        mad = 1.4826 * float(np.median(np.abs(res_v[rw > 0])))
        scale = np.fmax(np.where(np.isfinite(half), half, 0.0), max(mad, RESID_FLOOR))
        hub = np.minimum(1.0, HUBER_C / np.maximum(np.abs(res_v) / scale, 1e-300))
        rw_new = np.where(rw > 0, hub, 0.0)
        if np.all(np.abs(rw_new - rw) < 1e-3):
            break
        rw = rw_new
        z = stage1(rw)
    A = A0 * np.sqrt(rw)[:, None]
    rhs = w_mid * sw0 * np.sqrt(rw)
    yg = np.asarray(y_grid if y_grid is not None else np.linspace(lo - 0.3 * (hi - lo), hi + 0.3 * (hi - lo), 81))
    yg = np.unique(np.r_[yg, np.linspace(lo, hi, min(12 * n_seg, 240) + 1)])
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
        sol = least_squares(res, zr, jac=jac, args=(k,), method="lm", x_scale="jac", max_nfev=100 * (nb + 1))
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


def fit_smooth(keys, Tn, y, iv, wt, idx, s, y_lo, y_hi, failed, notes, band=None):
    """All slices in increasing ``T`` (calendar against the last fitted one), joined by
    ``core.surface.interp.SliceSurface``. Returns ``(surface, params, global_params)``.

    Arrays ``y, iv, wt, idx`` (N,) over all quotes (``idx`` the expiry index into ``keys`` / ``Tn``), ``s``
    the smoothing, ``band`` optional ``(iv_bid, iv_ask)`` (N,) each; ``failed`` / ``notes`` collect
    failed expiries and warnings (ignored or down-weighted quotes are listed there)."""
    from core.surface.fit import _grid
    from core.surface.interp import SliceSurface

    slices, T_ok, lo_ok, hi_ok, params = [], [], [], [], {}
    prev = None
    for i, k in enumerate(keys):
        m = idx == i
        lo = min(y_lo[i], lo_ok[-1]) if lo_ok else y_lo[i]
        hi = max(y_hi[i], hi_ok[-1]) if hi_ok else y_hi[i]
        try:
            bd = None if band is None else (np.asarray(band[0], float)[m], np.asarray(band[1], float)[m])
            sl, info = fit_smooth_slice(y[m], iv[m], wt[m], float(Tn[i]), smoothing=s, prev=prev,
                                        y_grid=_grid(lo, hi, n=101), band=bd)
        except (ValueError, FloatingPointError, np.linalg.LinAlgError, FitError) as exc:
            failed.append(f"{k}: smooth fit failed ({exc})")
            continue
        rw = info["robust_weight"]
        if info["downweighted"]:
            ym, ivm = y[m], iv[m]
            lst = ", ".join(f"y={ym[j]:.3f} iv={ivm[j]:.4g} ({'ignored' if rw[j] == 0 else f'weight {rw[j]:.2f}'})"
                            for j in info["downweighted"][:8])
            more = len(info["downweighted"]) - 8
            notes.append(f"{k}: smooth fit down-weights {len(info['downweighted'])} quote(s) inconsistent with the "
                         f"rest of the slice: {lst}" + (f" and {more} more" if more > 0 else ""))
        info = {kk: v for kk, v in info.items() if kk != "robust_weight"}
        info["downweighted"] = [{"y": float(y[m][j]), "iv": float(iv[m][j]), "weight": float(rw[j])}
                                for j in info["downweighted"]]
        if info["g_min"] < 0:
            notes.append(f"{k}: smooth slice keeps g < 0 (min {info['g_min']:.3g}) near the quoted range")
        if info["lifted"] > 0:
            notes.append(f"{k}: smooth slice lifted by {info['lifted']:.2e} in total variance to stay above the previous expiry")
        if info["calendar_gap"] > 0:
            notes.append(f"{k}: smooth slice dips below the previous expiry by {info['calendar_gap']:.2e} in w")
        slices.append(sl)
        T_ok.append(float(Tn[i]))
        lo_ok.append(float(y_lo[i]))
        hi_ok.append(float(y_hi[i]))
        params[k] = {"T": float(Tn[i]), **sl.to_dict(), **{kk: v for kk, v in info.items()}}
        prev = sl
    if not slices:
        raise FitError("no expiry could be fitted with the smooth method: " + "; ".join(failed))
    surf = SliceSurface(T_nodes=tuple(T_ok), slices=tuple(slices), y_lo=tuple(lo_ok), y_hi=tuple(hi_ok))
    return surf, params, {"smoothing_lambda": {k: params[k]["lam"] for k in params}}
