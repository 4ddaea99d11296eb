"""Non-parametric slices: a penalised cubic spline in total variance per expiry, checked for arbitrage.

Per expiry, ``w(y) = sum_j c_j B_j(y)`` on cubic B-splines with uniform knots over the quoted range
``[y_lo, y_hi]`` (one segment per two quotes, 2 to 12 segments), minimising the P-spline objective
(Eilers & Marx 1996)

    sum_i wt_i (w(y_i) - w_i)^2 / (2 sigma_i T)^2  +  lam ||Delta^2 c||^2

(a vol-scaled data term, ``dw = 2 sigma T dsigma``, plus the second-difference penalty). Smoothing
``s`` in [0, 1] sets ``lam = 10^(-5 + 6 s)`` times the mean diagonal of the data term: ``s = 0`` follows
the quotes, ``s = 1`` is nearly linear in ``y``.

Two stages. (1) A convex regression: the same objective under ``Delta^2 c >= 0`` (with uniform knots,
``w`` convex in ``y``), solved as bounded linear least squares in ``z = (c_0, c_1 - c_0, Delta^2 c)``
(``scipy.optimize.lsq_linear``); convexity removes the usual cause of butterfly arbitrage (``w'' < 0``).
(2) Convexity dropped, penalty residuals added for ``g < G_MARGIN`` on a ``y`` grid (the range, 12
points per knot segment, and a little beyond), calendar crossings with the previous expiry, ``w <= 0``
and end slopes beyond Lee's bound ``|w'| <= 1.98``; Levenberg-Marquardt from the convex solution with
an analytic Jacobian (``dg/dw``, ``dg/dw'``, ``dg/dw''`` in closed form), penalties x30 while violated.
Stage 2 is kept when it is clean and closer to the quotes (or less violating than a non-clean stage 1).
A calendar crossing left between grid points is removed by lifting the level; what remains is reported
in the fit's warnings.

Extrapolation in ``y`` (``SplineSlice.derivs``): linear with the end slope where that slope points away
from zero variance (``w' >= 0`` on the right, ``<= 0`` on the left; C1, ``w'' = 0``), otherwise
saturating, ``w_end + s L tanh(u / L)`` with ``L = w_end / (2 |s|)`` (C1, tends to ``w_end / 2 > 0``).
Slices are joined in ``T`` by ``core.surface.interp``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import BSpline

from core.errors import ConvergenceWarning, FitError
from core.surface.base import butterfly_g

SLOPE_MAX = 1.98
G_MARGIN = 0.02


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
    """Cubic spline ``w(y)`` on ``[y_lo, y_hi]`` with linear C1 extensions outside (total variance)."""

    knots: tuple
    coef: tuple
    y_lo: float
    y_hi: float

    def _spl(self):
        return BSpline(np.asarray(self.knots), np.asarray(self.coef), 3, extrapolate=True)

    def derivs(self, y):
        """``(w, w_y, w_yy)`` at ``y`` (any shape): the spline inside, the extensions outside."""
        y = np.asarray(y, dtype=float)
        spl = self._spl()
        d1 = spl.derivative(1)
        d2 = spl.derivative(2)
        yc = np.clip(y, self.y_lo, self.y_hi)
        w0, w1, w2 = spl(yc), d1(yc), d2(yc)
        u = y - yc
        out = u != 0
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


def fit_smooth_slice(y, iv, wt, T: float, *, smoothing: float = 0.0, prev=None, y_grid=None):
    """Fit one convex penalised-spline slice (module docstring).

    ``y, iv, wt`` (N,): log-moneyness, mid vols, weights; ``T`` years; ``prev``: the previous expiry's
    slice (calendar); ``y_grid``: where the penalties are checked. Returns ``(SplineSlice, info dict)``.
    """
    from scipy.optimize import least_squares, lsq_linear

    y, iv, wt = (np.asarray(a, float) for a in (y, iv, wt))
    lo, hi = float(y.min()), float(y.max())
    if hi - lo < 1e-6:
        raise FitError("all quotes of this expiry are at one strike")
    n_seg = int(np.clip(len(y) // 2, 2, 12))
    t = _knots(lo, hi, n_seg)
    B = _basis(t, y)
    nb = B.shape[1]
    w_mid = iv * iv * T
    sw = np.sqrt(wt) / (2.0 * iv * T)  # vol-scaled data weights: dw = 2 sigma T dsigma
    P = np.diff(np.eye(nb), n=2, axis=0)
    # c = L z with z = (c_0, c_1 - c_0, second differences >= 0): convex w by bounds only
    L = np.linalg.inv(np.vstack([np.eye(nb)[0], np.eye(nb)[1] - np.eye(nb)[0], P]))
    A = (B * sw[:, None]) @ L
    rhs = w_mid * sw
    AtA = A.T @ A
    lam = 10.0 ** (-5.0 + 6.0 * float(np.clip(smoothing, 0, 1))) * np.trace(AtA) / (nb - 2)
    Pz = np.hstack([np.zeros((nb - 2, 2)), np.eye(nb - 2)])
    lb = np.r_[-np.inf, -np.inf, np.zeros(nb - 2)]
    lin = lsq_linear(np.vstack([A, np.sqrt(lam) * Pz]), np.r_[rhs, np.zeros(nb - 2)], bounds=(lb, np.inf),
                     lsmr_tol="auto", method="bvls")
    z = lin.x
    yg = np.asarray(y_grid if y_grid is not None else np.linspace(lo - 0.3 * (hi - lo), hi + 0.3 * (hi - lo), 81))
    yg = np.unique(np.r_[yg, np.linspace(lo, hi, 12 * n_seg + 1)])
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
    wscale = scale / (2.0 * float(np.mean(iv)) * T)                     # w gaps in vol units

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

    info = {"relaxed": False, "nfev": 0, "lam": float(lam), "n_basis": int(nb)}

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


def fit_smooth(keys, Tn, y, iv, wt, idx, s, y_lo, y_hi, failed, notes):
    """All slices in increasing ``T`` (calendar against the last fitted one), joined by
    ``core.surface.interp.SliceSurface``. Returns ``(surface, params, global_params)``."""
    from core.surface.fit import _grid
    from core.surface.interp import SliceSurface

    slices, T_ok, lo_ok, hi_ok, params = [], [], [], [], {}
    prev = None
    for i, k in enumerate(keys):
        m = idx == i
        lo = min(y_lo[i], lo_ok[-1]) if lo_ok else y_lo[i]
        hi = max(y_hi[i], hi_ok[-1]) if hi_ok else y_hi[i]
        try:
            sl, info = fit_smooth_slice(y[m], iv[m], wt[m], float(Tn[i]), smoothing=s, prev=prev,
                                        y_grid=_grid(lo, hi, n=101))
        except (ValueError, FloatingPointError, np.linalg.LinAlgError, FitError) as exc:
            failed.append(f"{k}: smooth fit failed ({exc})")
            continue
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
