"""Interpolation of total variance in ``T`` between fitted slices, with analytic derivatives.

Scheme (``TInterp``; at fixed log-moneyness ``y``, for every ``y`` separately), in ``s = sqrt(T)``:

* Between the expiries ``T_1 < ... < T_n``: cubic Hermite in ``s`` through the node values ``w_k(y)``
  with the node slopes of the not-a-knot cubic spline in ``s`` (third-order accurate slopes, so ``dw/dT``
  is second-order accurate between expiries). Why ``s = sqrt(T)``: at fixed ``y != 0`` total variance
  behaves like a power of ``T`` at the short end (SSVI: ``T^(1 - gamma)``), which a cubic in ``T`` follows
  badly and a cubic in ``sqrt(T)`` well. Measured on exact power-law SSVI slices at 9 expiries (1 month
  to 2 years), local vol inside 0.7-1.3 forward: max error 4.5 bp, median 0.05 bp (monotone Fritsch-Carlson
  slopes in ``T``: 19 bp / 1.8 bp; a spline in ``T``: 46 bp / 0.12 bp).
* Monotonicity filter (Hyman 1983), only where the data require it: at a node whose neighbouring secants
  are both ``>= 0`` (the slices do not cross there), the slope is clipped to ``[0, 3 min(secants)]``;
  each Hermite segment between non-decreasing nodes then lies in the Fritsch-Carlson monotone region, so
  ``dw/dT >= 0`` wherever ``w_{k+1}(y) >= w_k(y)``: no calendar arbitrage is created. Smooth data are
  almost never touched (the spline slope already lies in the box). Where the slices themselves cross
  (calendar arbitrage in the input) nothing can be monotone; the interpolant is then kept piecewise
  monotone like the data (slope in ``[3 max(secants), 0]`` between two decreasing secants, 0 at a turn),
  so it never overshoots the node values and ``dw/dT`` is negative only on intervals where the data are.
* Butterfly safeguard (``butterfly_safeguard``, applied by ``SliceSurface`` when it knows the quoted
  ``y``-ranges): the spline slopes are global combinations of all slices, so with noisy or clustered
  expiries their ``y``-profile can make ``g < 0`` between two butterfly-free slices. Where a check grid
  finds that, the slopes at the nodes of that interval are blended towards safe slopes (Fritsch-Butland
  harmonic means of the secants; flat implied vol at the first node): ``m = safe + lam (spline - safe)``,
  ``lam`` halved per round down to 0. Smooth data keep ``lam = 1`` (``SliceSurface.slope_blend``). An
  interval still violating with the safe slopes is interpolated linearly in ``s`` (both end slopes its
  secant: ``w`` is the blend ``(1 - u) w_k + u w_{k+1}`` of its two slices; ``SliceSurface.linear_intervals``),
  C0 in ``T`` at its ends.
* Before the first expiry (``SliceSurface(short_end="moneyness")``: the first slice at fixed ``y / sqrt(T)``
  instead, which keeps its density; the class docstring) by default: the cubic Hermite in ``T`` from
  ``w(0) = 0`` with slope ``w_1 / T_1`` at ``T = 0``
  to ``w_1`` with slope ``d_1 = dw/dT(T_1)`` (C1 at ``T_1``): ``w = w_1 (t + t^2 - t^3) + T_1 d_1 (t^3 - t^2)``,
  ``t = T / T_1``. Near ``T = 0`` it is the first slice scaled, ``w ~ w_1(y) T / T_1`` (implied vol at
  fixed ``y`` tends to the first expiry's), so the short end inherits the first slice's shape in ``y``
  instead of mixing in the slope profile; exact for flat implied vol (``w`` proportional to ``T``).
  Non-decreasing iff ``0 <= d_1 <= 3 w_1 / T_1`` (Fritsch-Carlson with the secant ``w_1 / T_1`` and
  ``alpha = 1``): the filter at the first node also enforces that bound.
* After the last expiry: linear in ``T`` with the end slope (C1), clipped at 0 (only arbitrageable data
  can have a negative end slope).
* One expiry: ``w = w_1(y) T / T_1`` (flat implied vol at fixed ``y``). Two expiries: the slopes of the
  parabola in ``s`` through the origin and both nodes. With proportional node values ``w_k = c T_k`` every
  case reproduces ``w = c T`` exactly (the not-a-knot spline reproduces quadratics in ``s``).

The node slopes are linear in the node values (a fixed matrix, computed once per set of expiries), so
``w_y`` and ``w_yy`` follow by applying the same scheme to ``w_y(y)`` and ``w_yy(y)`` of the slices (on
the active branch of the filter): every derivative is analytic. Extrapolation in ``y`` is the slices' own
(SVI is asymptotically linear; the smooth slices extend linearly); see ``core.surface.svi`` and
``core.surface.smooth``.

Speed: the slices are evaluated once per call (raw-SVI slices in one vectorised expression); points are
grouped by interval (sorted by ``T``), and per interval the two node slopes are small matrix-vector
products on contiguous column blocks and the filter, blend and Hermite basis work on that group only
(timings: ``bench/bench_localvol.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import CubicSpline

from core.errors import InputError
from core.surface.base import Derivatives, VolSurface, butterfly_g
from core.surface.svi import SVI_PARAMS, SVISlice, svi_raw


def _rowdot(v, X):
    """``v @ X`` for ``v`` (n,), ``X`` (n, N), in blocks of columns: one large matrix-vector product
    goes to multithreaded BLAS, which was 100x slower than blocks under a loaded CPU."""
    N = X.shape[1]
    if N <= _BLOCK:
        return v @ X
    out = np.empty(N)
    for c in range(0, N, _BLOCK):
        out[c:c + _BLOCK] = v @ X[:, c:c + _BLOCK]
    return out


_BLOCK = 16384


def _slope_matrix(s: np.ndarray, clamped_end: bool) -> np.ndarray:
    """``M`` (n, n) with node slopes ``dW/ds = M W`` of the spline in ``s`` (module docstring)."""
    n = len(s)
    if n == 1:
        # flat implied vol: w = w_1 (s / s_1)^2, or constant (clamped end)
        return np.array([[0.0 if clamped_end else 2.0 / s[0]]])
    if clamped_end:
        bc = ("not-a-knot" if n >= 4 else (2, np.zeros(n)), (1, np.zeros(n)))
        return CubicSpline(s, np.eye(n), axis=0, bc_type=bc)(s, 1)
    if n == 2:
        # parabola through (0, 0), (s_1, W_1), (s_2, W_2): exact for w proportional to T = s^2
        s1, s2 = s
        # p(x) = W_1 L_1(x) + W_2 L_2(x), L_1 = x (x - s2) / (s1 (s1 - s2)), L_2 = x (x - s1) / (s2 (s2 - s1))
        d1 = lambda x: (2 * x - s2) / (s1 * (s1 - s2))  # noqa: E731
        d2 = lambda x: (2 * x - s1) / (s2 * (s2 - s1))  # noqa: E731
        return np.array([[d1(s1), d2(s1)], [d1(s2), d2(s2)]])
    return CubicSpline(s, np.eye(n), axis=0, bc_type="not-a-knot")(s, 1)


def _harmonic_slopes(sa, sa_y, sa_yy, sb, sb_y, sb_yy, wa, wb):
    """Weighted harmonic mean ``d = (wa + wb) a b / (wa b + wb a)`` of secants ``a, b`` and its first/second
    derivatives in ``y`` (chain rule); zero where ``a <= 0`` or ``b <= 0`` (Fritsch & Butland 1984)."""
    pos = (sa > 0) & (sb > 0)
    a = np.where(pos, sa, 1.0)
    b = np.where(pos, sb, 1.0)
    c = wa + wb
    den = wa * b + wb * a
    d = c * a * b / den
    d_a = c * wa * b * b / den**2
    d_b = c * wb * a * a / den**2
    d_aa = -2.0 * c * wa * wb * b * b / den**3
    d_bb = -2.0 * c * wa * wb * a * a / den**3
    d_ab = 2.0 * c * wa * wb * a * b / den**3
    dy = d_a * sa_y + d_b * sb_y
    dyy = d_aa * sa_y**2 + 2.0 * d_ab * sa_y * sb_y + d_bb * sb_y**2 + d_a * sa_yy + d_b * sb_yy
    return np.where(pos, d, 0.0), np.where(pos, dy, 0.0), np.where(pos, dyy, 0.0)


class TInterp:
    """The ``T``-interpolation of the module docstring for fixed expiries ``T_nodes`` (n,), increasing, > 0.

    ``monotone``: apply the monotonicity filter (total variance); ``clamped_end``: zero slope at the last
    node and constant beyond (used for corrections that must not drift, e.g. ``ThetaBackbone``), no filter;
    ``lam`` (n,) in [0, 1]: per-node weight of the spline slope against the safe slope (None = 1 everywhere;
    see ``butterfly_safeguard``); attribute ``linear`` (n - 1,) bool or None: intervals interpolated linearly in
    ``s`` (``butterfly_safeguard``'s last resort). Call with node values ``W, W_y, W_yy`` (n, N) (or (n, 1), broadcast) and
    ``T`` (N,) years: returns ``(w, w_y, w_yy, w_T)``, each (N,). Precomputes ``s = sqrt(T_nodes)`` and the
    slope matrix once.
    """

    def __init__(self, T_nodes, *, monotone: bool = True, clamped_end: bool = False, lam=None):
        T = np.asarray(T_nodes, dtype=float).ravel()
        if len(T) == 0 or not (np.all(np.isfinite(T)) and np.all(T > 0) and np.all(np.diff(T) > 0)):
            raise InputError(f"T_nodes must be positive, finite and increasing, got {T}")
        self.T = T
        self.s = np.sqrt(T)
        self.n = len(T)
        self.ds = np.diff(self.s)
        self.monotone = monotone and not clamped_end
        self.clamped_end = clamped_end
        # an owned C-ordered copy of the spline's matrix (its rows are used per interval)
        self.M = np.array(_slope_matrix(self.s, clamped_end), dtype=float, order="C", copy=True)
        self._last = None
        self.lam = None if lam is None else np.clip(np.asarray(lam, dtype=float).ravel(), 0.0, 1.0)
        if self.lam is not None and self.lam.shape != (self.n,):
            raise InputError(f"lam must have one value per node ({self.n}), got shape {self.lam.shape}")
        # intervals interpolated linearly in s (both end slopes the interval's secant): the last resort of
        # ``butterfly_safeguard`` (a convex combination of the two slices; C0 in T at the ends of the interval)
        self.linear = None

    def _node_slope(self, j: int, X3):
        """Node slopes (in ``s``) at node ``j`` for a group of points, with their ``y``-derivatives: the spline
        slope, blended towards the safe slope by ``lam[j]``, then the monotonicity filter.

        ``X3`` = (W, W_y, W_yy) restricted to the group's points (each (n, c))."""
        m = [_rowdot(self.M[j], X) for X in X3]
        if not self.monotone:
            return m
        n = self.n
        first, has_r = j == 0, j < n - 1
        hl = self.s[0] if first else self.ds[j - 1]
        # secants in s; at the first node the one from the origin
        left = [(X[j] if first else X[j] - X[j - 1]) / hl for X in X3]
        right = [(X[j + 1] - X[j]) / self.ds[j] for X in X3] if has_r else None
        if self.lam is not None and self.lam[j] < 1.0:
            lam = self.lam[j]
            safe = self._safe(first, left, right, hl, self.ds[j] if has_r else hl)
            m = [sf + lam * (mi - sf) for mi, sf in zip(m, safe, strict=True)]
        # increasing data: [0, 3 min(secants)] (6 w_1 / s_1 from the origin at the first node: the pre-T_1
        # cubic); decreasing data (calendar arbitrage in the input): [3 max(secants), 0]; a turn: 0
        lfac = 6.0 if first else 3.0
        rs = right[0] if has_r else left[0]
        inc = (left[0] >= 0) & (rs >= 0)
        dec = (left[0] <= 0) & (rs <= 0) & ~inc
        if first:
            dec = np.zeros_like(inc)
        bl = lfac * left[0]
        if has_r:
            br = 3.0 * right[0]
            use_l = np.where(inc, bl <= br, bl >= br)
        else:
            use_l = np.ones_like(inc)
        bound = np.where(use_l, bl, br) if has_r else bl
        zero = (~inc & ~dec) | (inc & (m[0] < 0)) | (dec & (m[0] > 0))
        clip = (inc & (m[0] > bound)) | (dec & (m[0] < bound))
        if not (zero.any() or clip.any()):
            return m
        out = []
        for i in range(3):
            b_i = np.where(use_l, lfac * left[i], 3.0 * right[i]) if has_r else lfac * left[i]
            out.append(np.where(zero, 0.0, np.where(clip, b_i, m[i])))
        return out

    @staticmethod
    def _safe(first, left, right, hl, hr):
        """Safe slopes: Fritsch-Butland weighted harmonic mean of the neighbouring secants (0 when they differ
        in sign); at the first node the flat-implied-vol slope ``2 w_1 / s_1``, at the last node the last
        secant. Returns the slope and its ``y``-derivatives (chain rule)."""
        if first:
            # flat implied vol at fixed y: with it the pre-T_1 segment is the first slice scaled by T / T_1,
            # butterfly-free whenever that slice is (g is concave in the scale, >= 0 at 0 and at 1)
            return [2.0 * x for x in left]
        sa = left
        if right is None:
            return list(sa)
        neg = (sa[0] < 0) & (right[0] < 0)
        sgn = np.where(neg, -1.0, 1.0)
        d, d_y, d_yy = _harmonic_slopes(sgn * sa[0], sgn * sa[1], sgn * sa[2], sgn * right[0], sgn * right[1],
                                        sgn * right[2], 2.0 * hr + hl, hr + 2.0 * hl)
        return [sgn * d, sgn * d_y, sgn * d_yy]

    def __call__(self, W, W_y, W_yy, T):
        A = [np.asarray(X, dtype=float) for X in (W, W_y, W_yy)]
        T = np.asarray(T, dtype=float).ravel()
        N = T.size
        n, Tn, sn = self.n, self.T, self.s
        wide = A[0].shape[1] > 1
        out = [np.empty(N) for _ in range(4)]
        if N == 0:
            return tuple(out)
        if n == 1:
            # one expiry: flat implied vol at fixed y (the slope 2 w_1 / s_1 makes both end segments so)
            for i in range(3):
                out[i][:] = A[i][0] * (T / Tn[0])
            out[3][:] = A[0][0] / Tn[0]
            return tuple(out)
        # points grouped by interval (sorted by T): slopes by one small matrix-vector product per group,
        # contiguous slices instead of gathers
        order = None
        if np.any(np.diff(T) < 0):
            order = np.argsort(T, kind="stable")
            T = T[order]
            if wide:
                A = [X[:, order] for X in A]
        sq = np.sqrt(T)
        k = np.clip(np.searchsorted(sn, sq, side="right") - 1, 0, n - 2)
        starts = np.searchsorted(k, np.arange(n))
        for j in range(n - 1):
            a, c = int(starts[j]), int(starts[j + 1]) if j < n - 2 else N
            if c <= a:
                continue
            X3 = [X[:, a:c] for X in A] if wide else A
            self._segment(j, X3, T[a:c], sq[a:c], [o[a:c] for o in out])
        if order is not None:
            res = [np.empty(N) for _ in range(4)]
            for r, o in zip(res, out, strict=True):
                r[order] = o
            out = res
        return tuple(out)

    def _segment(self, j: int, X3, T, sq, out) -> None:
        """Fill ``out`` = (w, w_y, w_yy, w_T) for points of interval ``j`` (and of the end segments next to it)."""
        n, Tn, sn = self.n, self.T, self.s
        Vk = [X[j] for X in X3]
        Vk1 = [X[j + 1] for X in X3]
        h = self.ds[j]
        if self.linear is not None and self.linear[j]:
            mk = mk1 = [(b - a) / h for a, b in zip(Vk, Vk1, strict=True)]
        else:
            mk = self._node_slope(j, X3)
            mk1 = self._node_slope(j + 1, X3)
        u = np.clip((sq - sn[j]) / h, 0.0, 1.0)
        u2 = u * u
        u3 = u2 * u
        h01 = -2.0 * u3 + 3.0 * u2
        h00, h10, h11 = 1.0 - h01, (u3 - 2.0 * u2 + u) * h, (u3 - u2) * h
        for i in range(3):
            out[i][:] = h00 * Vk[i] + h10 * mk[i] + h01 * Vk1[i] + h11 * mk1[i]
        d00, d10, d11 = (6.0 * u2 - 6.0 * u) / h, 3.0 * u2 - 4.0 * u + 1.0, 3.0 * u2 - 2.0 * u
        with np.errstate(divide="ignore", invalid="ignore"):
            out[3][:] = (d00 * (Vk[0] - Vk1[0]) + d10 * mk[0] + d11 * mk1[0]) / (2.0 * sq)
        if j == 0:
            pre = T < Tn[0]
            if pre.any():
                # cubic Hermite in T on [0, T_1]: w(0) = 0, w'(0) = w_1 / T_1, w(T_1) = w_1, w'(T_1) = d_1;
                # with D = T_1 d_1: w = w_1 (t + t^2 - t^3) + D (t^3 - t^2)
                T1 = Tn[0]
                t = T[pre] / T1
                t2 = t * t
                for i in range(3):
                    w1 = np.broadcast_to(Vk[i], T.shape)[pre]
                    D = np.broadcast_to(mk[i], T.shape)[pre] * (T1 / (2.0 * sn[0]))
                    out[i][pre] = w1 * (t + t2 - t2 * t) + D * (t2 * t - t2)
                    if i == 0:
                        out[3][pre] = (w1 * (1.0 + 2.0 * t - 3.0 * t2) + D * (3.0 * t2 - 2.0 * t)) / T1
        if j == n - 2:
            post = T > Tn[-1]
            if post.any():
                # linear in T with the end slope (C1), clipped at 0; constant for a clamped end
                dT = T[post] - Tn[-1]
                if self.clamped_end:
                    slope = [np.zeros(dT.shape)] * 3
                else:
                    slope = [np.broadcast_to(x, T.shape)[post] / (2.0 * sn[-1]) for x in mk1]
                    keep = slope[0] > 0
                    slope = [np.where(keep, x, 0.0) for x in slope]
                for i in range(3):
                    out[i][post] = np.broadcast_to(Vk1[i], T.shape)[post] + slope[i] * dT
                out[3][post] = slope[0]

    def curve(self, values, T):
        """One curve through ``values`` (n,) at ``T`` (any shape): ``(v, dv/dT)`` of the scheme.

        Evaluated once per distinct ``T`` (grids repeat each expiry across strikes), and the last call is
        remembered (``theta`` and ``dtheta`` are asked for one after the other)."""
        T = np.asarray(T, dtype=float)
        V = np.asarray(values, dtype=float).reshape(self.n)
        key = (T.shape, hash(T.tobytes()), hash(V.tobytes()), None if self.lam is None else self.lam.tobytes())
        last = self._last
        if last is not None and last[0] == key:
            return last[1][0].copy(), last[1][1].copy()
        Tf = T.ravel()
        inv = None
        if Tf.size > 64:
            uq, inv = np.unique(Tf, return_inverse=True)
            if 2 * uq.size < Tf.size:
                Tf = uq
            else:
                inv = None
        z = np.zeros((self.n, 1))
        v, _, _, dv = self(V.reshape(self.n, 1), z, z, Tf)
        if inv is not None:
            v, dv = v[inv], dv[inv]
        res = (v.reshape(T.shape), dv.reshape(T.shape))
        self._last = (key, res)
        return res[0].copy(), res[1].copy()


def monotone_hermite(T_nodes, V, V_y, V_yy, T):
    """Interpolate node values in ``T`` by the monotone scheme of the module docstring (``TInterp``).

    ``T_nodes`` (n,) increasing positive expiries; ``V, V_y, V_yy`` (n, N): node values of ``w`` and its
    ``y``-derivatives at the N points; ``T`` (N,): where to evaluate. Returns ``(w, w_y, w_yy, w_T)``,
    each (N,). For repeated calls on the same expiries build a ``TInterp`` once instead.
    """
    return TInterp(T_nodes)(V, V_y, V_yy, T)


@dataclass(frozen=True)
class MonotoneThetaCurve:
    """ATM total variance ``theta(T)`` through fitted nodes by the monotone scheme of the module docstring.

    ``T_nodes`` (n,) increasing expiries (years), ``theta_nodes`` (n,) non-decreasing positive ATM total
    variances. ``theta(0) = 0``; before ``T_1`` the cubic from the origin (C1); after ``T_n``
    constant forward variance (the end slope). ``dtheta`` is analytic.
    """

    T_nodes: tuple
    theta_nodes: tuple
    _scheme: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        T = np.asarray(self.T_nodes, float)
        th = np.asarray(self.theta_nodes, float)
        if T.ndim != 1 or len(T) == 0 or len(T) != len(th):
            raise InputError("MonotoneThetaCurve needs T_nodes and theta_nodes of one equal length >= 1")
        if not (np.all(np.isfinite(T)) and np.all(T > 0) and np.all(np.diff(T) > 0)):
            raise InputError(f"MonotoneThetaCurve.T_nodes must be positive and increasing, got {T}")
        if not (np.all(np.isfinite(th)) and np.all(th > 0) and np.all(np.diff(th) >= -1e-15)):
            raise InputError(f"MonotoneThetaCurve.theta_nodes must be positive and non-decreasing, got {th}")
        object.__setattr__(self, "T_nodes", tuple(float(x) for x in T))
        object.__setattr__(self, "theta_nodes", tuple(float(x) for x in th))
        object.__setattr__(self, "_scheme", TInterp(T))

    def theta(self, T):
        """ATM total variance at ``T`` (years); broadcasts."""
        return self._scheme.curve(self.theta_nodes, T)[0]

    def dtheta(self, T):
        """``d theta / dT`` at ``T`` (analytic)."""
        return self._scheme.curve(self.theta_nodes, T)[1]


def quoted_y_range(T, T_nodes, lo_nodes, hi_nodes):
    """Quoted log-moneyness range at ``T``: linear in ``T`` between expiries, flat outside."""
    T = np.asarray(T, dtype=float)
    return (np.interp(T, T_nodes, lo_nodes), np.interp(T, T_nodes, hi_nodes))


def butterfly_safeguard(scheme: TInterp, node_values, y_lo, y_hi, *, n_y: int = 201, n_sub: int = 6,
                        rounds: int = 3, linear_fallback: bool = False, check_short: bool = True):
    """Per-node blend weights ``lam`` (n,) in [0, 1] for ``scheme`` that keep ``g >= 0`` between the expiries.

    The spline slopes are global: with noisy or unevenly spaced slices their ``y``-profile can create
    butterfly arbitrage (``g < 0``) between two butterfly-free slices. On a check grid (``n_sub`` times in
    every interval and 3 before the first expiry, ``n_y`` values of ``y`` across the quoted range
    ``[y_lo, y_hi]`` interpolated linearly in ``T``), every interval with ``g < 0`` at a ``y`` where both
    of its slices have ``g >= 0`` halves ``lam`` at its two nodes (the last round sets 0: the safe slopes,
    ``TInterp._safe``); at most ``rounds + 1`` rounds. Smooth slices keep ``lam = 1`` (no change).
    With ``linear_fallback``, an interval still violating with the safe slopes is interpolated linearly in
    ``s = sqrt(T)`` (``TInterp.linear``): ``w`` is then the convex combination ``(1 - u) w_k + u w_{k+1}``.
    ``node_values(y)`` -> ``(W, W_y, W_yy)``, each (n, len(y)). Returns ``lam`` (and with
    ``linear_fallback`` the per-interval flags, ``(lam, linear)``). ``check_short=False``: no check before the
    first expiry (a surface that does not use the scheme there, ``SliceSurface(short_end="moneyness")``).
    """
    n = scheme.n
    lam = np.ones(n)
    linear = np.zeros(max(n - 1, 0), bool)
    if n < 2 or len(y_lo) != n or len(y_hi) != n:
        return (lam, None) if linear_fallback else lam
    s = scheme.s
    u = np.arange(1, n_sub + 1) / (n_sub + 1.0)
    n_pre = 3 if check_short else 0
    # in every interval: n_sub points uniform in s, and the fractions in T of ``core.surface.base.check_arbitrage``
    # (eighths, and close to both ends, where blends turn fastest)
    fr = np.unique(np.r_[np.linspace(0.0, 1.0, 9)[1:-1], 0.04, 0.96])
    T_chk = [scheme.T[0] * np.array([0.25, 0.5, 0.75][:n_pre])] + [
        np.r_[(s[k] + (s[k + 1] - s[k]) * u) ** 2, scheme.T[k] + (scheme.T[k + 1] - scheme.T[k]) * fr]
        for k in range(n - 1)]
    seg = np.concatenate([np.full(n_pre, -1)] + [np.full(n_sub + len(fr), k) for k in range(n - 1)])
    Tc = np.concatenate(T_chk)
    lo, hi = quoted_y_range(Tc, scheme.T, y_lo, y_hi)
    Y = lo[:, None] + (hi - lo)[:, None] * np.linspace(0.0, 1.0, n_y)[None, :]
    TT = np.broadcast_to(Tc[:, None], Y.shape).ravel()
    SEG = np.broadcast_to(seg[:, None], Y.shape).ravel()
    Y = Y.ravel()
    W, W_y, W_yy = node_values(Y)
    cols = np.arange(Y.size)
    k0 = np.maximum(SEG, 0)
    k1 = np.maximum(SEG + 1, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        g_nodes = np.minimum(butterfly_g(Y, W[k0, cols], W_y[k0, cols], W_yy[k0, cols]),
                             butterfly_g(Y, W[k1, cols], W_y[k1, cols], W_yy[k1, cols]))
    fixable = g_nodes >= 0
    saved = scheme.lam
    try:
        for r in range(rounds + 1):
            scheme.lam = lam
            w, w_y, w_yy, _ = scheme(W, W_y, W_yy, TT)
            with np.errstate(divide="ignore", invalid="ignore"):
                bad = fixable & (butterfly_g(Y, w, w_y, w_yy) < 0)
            if not bad.any():
                break
            segs = np.unique(SEG[bad])
            nodes = np.unique(np.r_[np.maximum(segs, 0), segs[segs >= 0] + 1])
            if r == rounds:
                linear[segs[segs >= 0]] = True
                break
            lam = lam.copy()
            lam[nodes] = 0.0 if r >= rounds - 1 else 0.5 * lam[nodes]
    finally:
        scheme.lam = saved
    if linear_fallback:
        return lam, (linear if linear.any() else None)
    return lam


def _is_raw_svi(sl) -> bool:
    """True for a plain raw-SVI slice (``core.surface.svi.SVISlice`` itself, not a subclass or a wrapper such
    as ``SVISplineSlice``), or an object declaring ``raw_svi = True``: only those may be evaluated from their
    ``a, b, rho, m, sigma`` alone; every other slice goes through its own ``derivs``."""
    flag = getattr(type(sl), "raw_svi", None)
    if flag is not None:
        return bool(flag)
    return type(sl) is SVISlice


def _svi_params(slices) -> np.ndarray | None:
    """Raw-SVI parameters (n, 5) when every slice is a raw-SVI slice (``_is_raw_svi``), else None."""
    if not slices or not all(_is_raw_svi(sl) for sl in slices):
        return None
    return np.array([[float(getattr(sl, p)) for p in SVI_PARAMS] for sl in slices])


@dataclass(frozen=True)
class SliceSurface(VolSurface):
    """A surface from per-expiry slices (objects with ``derivs(y) -> (w, w_y, w_yy)``), interpolated in
    ``T`` by ``TInterp`` (module docstring). ``T_nodes`` (n,), ``y_lo``/``y_hi`` (n,) the quoted
    ``y``-range per slice. When every slice is a plain raw-SVI slice (``_is_raw_svi``: ``SVISlice`` exactly, or a
    class with ``raw_svi = True``) they are evaluated together in one expression; spline-corrected SVI slices
    (``core.surface.svi.SVIStack``) and smooth slices (``core.surface.smooth.SplineStack``) stacked too; any
    other slice (subclasses, lookalikes) through its own ``derivs``.

    ``short_end``: before the first expiry ``"scaled"`` (``TInterp``: the first slice scaled in ``T``, flat
    implied vol at fixed ``y``) or ``"moneyness"``: ``w(y, T) = c W_1(y / sqrt(c))``, ``c = T / T_1`` (the
    first slice's implied vols at fixed ``y / sqrt(T)``). The latter is free of butterfly arbitrage whenever
    the first slice is: with ``z = y / sqrt(c)`` the terms ``y w' / w`` and ``w'^2 / w`` of ``g`` are those of
    ``W_1`` at ``z`` and ``g(y, T) = g_1(z) + (1 - c) W_1'(z)^2 / 16 >= g_1(z)``, while scaling at fixed ``y``
    turns ``g`` negative for steep short-dated skews (``g = A - c B`` with ``A < 0`` where ``|w'| > 2 sqrt(w)
    |1 - y w' / (2 w)|``). ``dw/dT = (W_1 - z W_1' / 2) / T_1`` (non-negative where ``1 - z W_1' / (2 W_1) >= 0``,
    the first factor of ``g``); ``w`` is continuous at ``T_1``, ``dw/dT`` in general not. ``check_n_y`` /
    ``check_n_sub``: the check grid of ``butterfly_safeguard`` (``n_sub = 0``: only the fractions of
    ``core.surface.base.check_arbitrage``)."""

    T_nodes: tuple
    slices: tuple
    y_lo: tuple = field(default=())
    y_hi: tuple = field(default=())
    T_quoted: tuple = (0.0, np.inf)
    short_end: str = "scaled"
    check_n_y: int = 201
    check_n_sub: int = 6
    _scheme: object = field(default=None, init=False, repr=False, compare=False)
    _svi: object = field(default=None, init=False, repr=False, compare=False)
    _stack: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        T = np.asarray(self.T_nodes, float)
        if len(T) == 0 or len(T) != len(self.slices) or not np.all(np.diff(T) > 0) or not np.all(T > 0):
            raise InputError("SliceSurface needs one slice per positive, increasing expiry")
        object.__setattr__(self, "T_quoted", (float(T[0]), float(T[-1])))
        P = _svi_params(self.slices)
        object.__setattr__(self, "_svi", None if P is None else tuple(P.T[:, :, None]))
        if P is None:
            # stacked evaluation (spline-corrected SVI slices, smooth slices): each kind of slice knows its stack
            stack_of = getattr(type(self.slices[0]), "stack_of", None)
            object.__setattr__(self, "_stack", stack_of(self.slices) if stack_of is not None else None)
        if self.short_end not in ("scaled", "moneyness"):
            raise InputError(f"short_end must be 'scaled' or 'moneyness', got {self.short_end!r}")
        scheme = TInterp(T)
        if self.y_lo and self.y_hi:
            scheme.lam, scheme.linear = butterfly_safeguard(scheme, self.node_values, self.y_lo, self.y_hi,
                                                            n_y=self.check_n_y, n_sub=self.check_n_sub,
                                                            linear_fallback=True,
                                                            check_short=self.short_end == "scaled")
        object.__setattr__(self, "_scheme", scheme)

    @property
    def slope_blend(self) -> np.ndarray:
        """Per-expiry weight of the spline slopes against the safe slopes (1 = spline; ``butterfly_safeguard``)."""
        lam = self._scheme.lam
        return np.ones(self._scheme.n) if lam is None else lam.copy()

    @property
    def linear_intervals(self) -> np.ndarray:
        """Per interval between expiries (n - 1,): True where it is interpolated linearly in ``sqrt(T)``
        (``butterfly_safeguard``'s last resort)."""
        lin = self._scheme.linear
        return np.zeros(max(self._scheme.n - 1, 0), bool) if lin is None else lin.copy()

    def node_values(self, y):
        """``(W, W_y, W_yy)`` of every slice at ``y`` (N,): each (n, N)."""
        y = np.asarray(y, dtype=float).ravel()
        if self._svi is not None:
            return svi_raw(y[None, :], *self._svi)
        if self._stack is not None:
            return self._stack(y)
        n = len(self.slices)
        out = [np.empty((n, y.size)) for _ in range(3)]
        for k, sl in enumerate(self.slices):
            for o, v in zip(out, sl.derivs(y), strict=True):
                o[k] = v
        return tuple(out)

    def derivatives(self, y, T) -> Derivatives:
        """``w, w_y, w_yy, w_T`` at ``(y, T)`` (broadcast), analytic through the ``T``-scheme."""
        y, T = np.broadcast_arrays(np.asarray(y, float), np.asarray(T, float))
        shape = y.shape
        yf, Tf = y.ravel(), T.ravel()
        T1 = float(self.T_nodes[0])
        pre = (Tf < T1) if self.short_end == "moneyness" else None
        if pre is None or not pre.any():
            W, W_y, W_yy = self.node_values(yf)
            w, w_y, w_yy, w_T = self._scheme(W, W_y, W_yy, Tf)
        else:
            out = [np.empty(yf.size) for _ in range(4)]
            post = ~pre
            if post.any():
                W, W_y, W_yy = self.node_values(yf[post])
                for o, v in zip(out, self._scheme(W, W_y, W_yy, Tf[post]), strict=True):
                    o[post] = v
            c = np.maximum(Tf[pre], 1e-12 * T1) / T1
            rc = np.sqrt(c)
            z = yf[pre] / rc
            V, V_y, V_yy = self.slices[0].derivs(z)
            out[0][pre], out[1][pre], out[2][pre] = c * V, rc * V_y, V_yy
            out[3][pre] = (V - 0.5 * z * V_y) / T1
            w, w_y, w_yy, w_T = out
        return Derivatives(w=w.reshape(shape), w_y=w_y.reshape(shape), w_yy=w_yy.reshape(shape),
                           w_T=w_T.reshape(shape))

    def y_quoted(self, T):
        """Quoted ``y``-range at ``T``, interpolated linearly between expiries."""
        if not self.y_lo:
            return super().y_quoted(T)
        return quoted_y_range(T, self.T_nodes, self.y_lo, self.y_hi)
