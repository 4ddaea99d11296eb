"""eSSVI: SSVI with a correlation and a curvature per expiry (Hendriks & Martini 2019), free of static
arbitrage by construction, C1 in ``T`` with analytic derivatives; and its whole-surface calibration.

Slice (Hendriks & Martini 2019, eq. 1.2; Gatheral & Jacquier 2014, eq. 4.1 with ``psi = theta phi``)::

    w(y) = theta/2 (1 + rho psi/theta y + sqrt((psi/theta y + rho)^2 + 1 - rho^2))
         = 1/2 (theta + a y + sqrt(psi^2 y^2 + 2 a theta y + theta^2)),    a = rho psi

``theta``: ATM total variance, ``rho``: correlation (skew), ``psi``: ATM curvature level. The wing slopes of
``w`` are ``P/2`` (calls, ``y -> +inf``) and ``M/2`` (puts) with ``P = psi (1 + rho)``, ``M = psi (1 - rho)``;
the model is written in ``(theta, P, M)``: ``psi = (P + M)/2``, ``rho = (P - M)/(P + M)``.

No butterfly arbitrage (Gatheral & Jacquier 2014, Theorem 4.2, per slice): ``psi (1 + |rho|) < 4`` and
``psi^2 (1 + |rho|) <= 4 theta``, i.e. ``max(P, M) < 4`` and ``R = psi max(P, M) / theta <= 4``.

No calendar arbitrage. With ``theta, P, M`` functions of ``T``, ``x = psi y / theta``,
``S = sqrt(x^2 + 2 rho x + 1)``, ``tau = theta'/theta``, ``u = psi'/psi``, ``v = a'/psi`` (' = d/dT)::

    dw/dT = theta/2 [tau (1 + (1 + rho x)/S) + v x (1 + 1/S) + u x^2/S]

which is ``>= 0`` for every ``y`` when ``tau >= u >= |v|`` (bound the middle term by ``-u |x| (1 + 1/S)``;
what is left is ``u [(1 - |x|) S + 1 + rho x + x^2 - |x|] / S >= 0``, whose square difference for ``|x| > 1`` is
``x^2 (1 +- rho)^2``). ``u >= |v|`` says that both wing slopes ``P, M`` are non-decreasing and ``tau >= u``
that ``phi = psi/theta`` is non-increasing: the continuous form of the conditions on consecutive slices of
Hendriks & Martini (2019, Prop. 3.1; sufficient form used by Corbetta et al. 2019 and Mingone 2022:
``theta_2 >= theta_1``, ``psi_2 (1 +- rho_2) >= psi_1 (1 +- rho_1)``, ``psi_2/theta_2 <= psi_1/theta_1``).

Construction (the T-interpolation). With ``s = ln theta``, ``ln P(s)`` and ``ln M(s)`` are integrals of
*log-slopes* ``p(s) = d ln P/ds``, ``m(s) = d ln M/ds`` that are piecewise linear between knots (``fit_knots``:
the expiries' ``s_i`` and the midpoints between them, or ``MAX_KNOTS`` evenly spaced knots over many close
expiries) with knot values in ``[0, 1]``; so ``p, m`` lie in ``[0, 1]`` everywhere, and ``d ln psi/ds`` (a
weighted mean of ``p`` and ``m``) too: with ``theta(T)`` non-decreasing, ``tau >= u >= |v|`` holds at every
``T``: no calendar arbitrage, for every ``T``, by construction (not only between the expiries' slices).
``ln P, ln M`` are C1 (piecewise quadratic) in ``s`` and ``theta(T)`` is C1 (``ThetaCurve``: a mean-reverting
parametric ATM term structure plus a spline correction through the fitted ``theta_i``, or the monotone spline
``core.surface.interp.MonotoneThetaCurve`` where that would decrease), so ``w_T`` is continuous: local vol
does not jump at the expiries. Per slice ``theta_i, rho_i, psi_i`` are free (with the knots at the expiries);
Mingone (2022) turns the conditions into a box with a global parametrisation of the nodes, here the box is
on the log-slopes, which also makes the interpolation between the nodes safe and smooth.

Extrapolation. Before the first expiry (``s < s_1``, ``T -> 0``) the log-slopes of both wings (equal at
``s_1``: ``rho`` is constant there) move to 1: ``p = m = 1 + (p_1 - 1) e^{(s - s_1)/L}``: ``psi`` becomes
proportional to ``theta`` (``phi`` constant), ``theta(T) -> 0`` proportionally to ``T``: the implied smile
tends to the first expiry's shape in ``y`` (a diffusion's finite short-time smile). Beyond the last expiry
the log-slopes decay, ``p = p_n e^{-(s - s_n)/L}`` (``P, M`` tend to finite limits; ``theta`` keeps growing
with the theta curve's forward variance). ``L = EXTRAP_LENGTH`` (in ``ln theta``).
Butterfly: ``d ln R/ds`` and ``d ln max(P, M)/ds`` lie in ``[-1, 1]``, so the bounds checked on a grid in ``s``
of step ``h`` with the margin ``e^{-h}`` hold everywhere (``ESSVISurface.butterfly_check``, over
``[s_1 - 8 L, s_n + 8 L]``; beyond that ``R`` only falls). The fit keeps them with smooth penalties at the
expiries, at the knots, on the closed-form sup of ``R`` over each extrapolation and on the wings' limit; if the
final check still fails, ``P`` and ``M`` are scaled down together (the log-slopes, hence the calendar
conditions, stay).

Calibration (``fit_essvi``): weighted least squares on implied vols of every quote at once, by
Levenberg-Marquardt on unbounded coordinates (``theta`` as ``ln theta_1`` and log-increments, knot log-slopes
through a logistic map onto ``[0, 1]``), with the normal equations assembled per expiry (each quote depends
on its expiry's ``(s_i, ln P_i, ln M_i)`` only; the parameters reach those through a small dense matrix): an
iteration costs one pass over the quotes and a solve of ``5 n`` (or ``n + 2 MAX_KNOTS``) unknowns, on one BLAS
thread. Start: ``theta_i`` from the quotes near the money (``core.surface.ssvi_fit.atm_total_variance``, made
increasing), ``rho, psi`` from the ATM slope and curvature of every expiry (``_start``). Passes: ``theta``
fixed with stiff log-slopes (an SSVI-like surface); everything; the knots moved to the fitted thetas
(``_reknot``) and everything again, with robust (Cauchy) weights on quotes many spreads off the surface.
Then the fit moves from the mids to the bid/ask (``_band_passes``, when the quotes have a band): the distance
beyond the band counts fully and the distance to the mid a little (``BAND_ALPHA``), then Cauchy weights on the
distance beyond the band, in half spreads, are refreshed until they settle (``BAND_SCALES``): a wing quote the
slice cannot reach stops pulling it off the many quotes it can. Fitted to the mids, the slice sits between
them and inside few spreads (SPX 2024-01-05: 17%); fitted to the band, 36%.
Penalties: first differences of the knot log-slopes (``ROUGHNESS``: small, it picks the smoothest of equally
close profiles) and of the forward ATM variance between expiries (``THETA_ROUGHNESS``: without it the per-expiry
``theta_i`` of a real chain make the local vol striped: 10% / 2% / 18% of the cells of the 50 x 100 grid off
their neighbours' mean by over 20% on SPX 2024-01-05 / NDX 2023-05-26 / SPX 2022-06-10 and cells clipped; at
3e-5, under 1% on every index chain of ``cboe_modern``; at 1e-3, 17 points of inside share fewer on SPX).
``smoothing`` in [0, 1] stiffens both (``10^(6 s)``, ``10^(4 s)``).

On real index chains eSSVI sits inside the bid/ask less often than the spline (``bench/bench_real.py``): 28-64%
of the used quotes on the index chains of ``cboe_modern``. That is near the ceiling of the slice: one free
SSVI slice per expiry, fitted alone to the same band objective, sits inside 54% of the SPX 2024-01-05 quotes
(``bench/bench_real.py``, the ceiling rows; a free five-parameter raw-SVI slice: 68%); three parameters cannot follow a whole SPX
smile within its 1-5 bp spreads, so the slice gives up the far wings (the Smiles page shows where). eSSVI's
strengths are elsewhere: no static arbitrage anywhere, a smooth analytic surface, exact recovery of SSVI and
eSSVI surfaces (the bare-grid path of ``core.surface.grid``).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import CubicSpline
from threadpoolctl import threadpool_limits

from core.errors import ConvergenceWarning, InputError
from core.surface.base import Derivatives, ModelFit, SliceData, VolSurface
from core.surface.interp import MonotoneThetaCurve, quoted_y_range
from core.surface.ssvi_fit import atm_total_variance, fit_theta_parametric, isotonic
from core.surface.svi import SVISlice

#: decay length (in ``ln theta``) of the log-slopes in the extrapolations before ``s_1`` and beyond ``s_n``
EXTRAP_LENGTH = 1.0
#: butterfly bounds of Gatheral & Jacquier (2014, Theorem 4.2): ``max(P, M) < 4``, ``psi max(P, M)/theta <= 4``
BUTTERFLY_BOUND = 4.0
#: step of the butterfly check grid in ``s = ln theta`` (bounds checked with the margin ``e^{-step}``)
CHECK_STEP = 0.002
#: margin (in ln) below the butterfly bounds that the fit's penalty keeps
BUTTERFLY_MARGIN = 0.005
#: width (in ln) over which the butterfly penalty's hinge is smoothed
HINGE_WIDTH = 2e-4
#: most knots of the wing curves (``fit_knots``)
MAX_KNOTS = 24
#: smallest scale of the robust (Cauchy) weights, in vol units at mean weight
ROBUST_FLOOR = 1e-3
#: roughness weight of the forward ATM variance, per unit of the data scale
THETA_ROUGHNESS = 3e-5
#: default roughness weight of the knot log-slopes, per unit of the data scale ``sqrt(sum wt)``
ROUGHNESS = 1e-4
#: band fits (``_band_passes``): weight of the distance to the mid, ...
BAND_ALPHA = 0.1
#: ... the share of the half spread that counts as inside, ...
BAND_SHRINK = 0.8
#: ... the Cauchy scales (in half spreads beyond the band) of the reweighted passes, ...
BAND_SCALES = (1.0, 0.3)
#: ... at most this many reweightings per scale, ...
BAND_ROUNDS = 12
#: ... fewer once no weight moves by more than this
BAND_SETTLED = 0.02


def essvi_slice(y, theta, rho, psi):
    """eSSVI slice ``w(y)`` and its ``y``-derivatives at fixed ``theta``: returns ``(w, w_y, w_yy)``.

    ``w = 1/2 (theta + a y + R)``, ``a = rho psi``, ``R = sqrt(psi^2 y^2 + 2 a theta y + theta^2)``;
    ``w_y = 1/2 (a + (psi^2 y + a theta)/R)``, ``w_yy = theta^2 psi^2 (1 - rho^2) / (2 R^3)``. Broadcasts.
    """
    y, theta, rho, psi = (np.asarray(v, dtype=float) for v in (y, theta, rho, psi))
    a = rho * psi
    R = np.sqrt(psi * psi * y * y + 2.0 * a * theta * y + theta * theta)
    w = 0.5 * (theta + a * y + R)
    w_y = 0.5 * (a + (psi * psi * y + a * theta) / R)
    w_yy = 0.5 * theta * theta * psi * psi * (1.0 - rho * rho) / R**3
    return w, w_y, w_yy


def _slice_partials(y, theta, P, M):
    """``w, w_y, w_yy`` and the partials ``dw/dtheta, dw/dpsi, dw/da`` of the slice in ``(theta, P, M)``."""
    psi = 0.5 * (P + M)
    a = 0.5 * (P - M)
    R = np.sqrt(psi * psi * y * y + 2.0 * a * theta * y + theta * theta)
    iR = 1.0 / R
    w = 0.5 * (theta + a * y + R)
    w_y = 0.5 * (a + (psi * psi * y + a * theta) * iR)
    w_yy = 0.5 * theta * theta * P * M * iR**3
    d_theta = 0.5 * (1.0 + (a * y + theta) * iR)
    d_psi = 0.5 * psi * y * y * iR
    d_a = 0.5 * y * (1.0 + theta * iR)
    return w, w_y, w_yy, d_theta, d_psi, d_a


@dataclass(frozen=True)
class LogSlopeCurve:
    """``F(s) = ln P(s)`` (or ``ln M``) from its log-slope ``g = dF/ds``, piecewise linear in ``s`` between
    ``knots`` (m,) with values ``slopes`` (m,) in [0, 1] and ``F(knots[0]) = F0``; before the first knot
    ``g = 1 + (g_0 - 1) e^{(s - t_0)/L}``, beyond the last ``g = g_m e^{-(s - t_m)/L}`` (module docstring)."""

    knots: tuple
    slopes: tuple
    F0: float
    L: float = EXTRAP_LENGTH

    def __post_init__(self) -> None:
        t = np.asarray(self.knots, float)
        q = np.asarray(self.slopes, float)
        if t.ndim != 1 or t.size == 0 or q.shape != t.shape or np.any(np.diff(t) <= 0):
            raise InputError("LogSlopeCurve needs increasing knots and one slope per knot")
        if not (np.all(q >= 0.0) and np.all(q <= 1.0)):
            raise InputError(f"LogSlopeCurve slopes must lie in [0, 1], got {q}")
        if not (np.isfinite(self.F0) and self.L > 0):
            raise InputError("LogSlopeCurve needs a finite F0 and a positive L")

    def __call__(self, s):
        """``(F(s), g(s))`` at ``s`` (any shape)."""
        s = np.asarray(s, dtype=float)
        F, g, _ = _curve_eval(np.asarray(self.knots), np.asarray(self.slopes), self.F0, self.L, s.ravel(),
                              want_basis=False)
        return F.reshape(s.shape), g.reshape(s.shape)


def _hat_integrals(t) -> np.ndarray:
    """``W`` (m, m): ``W[j] @ q`` is the integral from ``t_0`` to ``t_j`` of the piecewise-linear log-slope."""
    m = t.size
    W = np.zeros((m, m))
    if m > 1:
        h = np.diff(t)
        inc = np.zeros((m - 1, m))
        jj = np.arange(m - 1)
        inc[jj, jj] = 0.5 * h
        inc[jj, jj + 1] = 0.5 * h
        W[1:] = np.cumsum(inc, axis=0)
    return W


def _curve_eval(t, q, F0, L, s, want_basis=True, W=None):
    """``F(s)``, ``g(s)`` of a ``LogSlopeCurve`` at ``s`` (N,) and, with ``want_basis``, ``dF/dq`` (N, m).
    ``W``: ``_hat_integrals(t)`` when known."""
    m = t.size
    Wfull = _hat_integrals(t) if W is None else W
    C = F0 + Wfull @ q
    F = np.empty(s.shape)
    g = np.empty(s.shape)
    B = np.zeros((s.size, m)) if want_basis else None
    lo = s < t[0]
    hi = s > t[-1]
    mid = ~(lo | hi)
    if lo.any():
        e = np.exp((s[lo] - t[0]) / L)
        g[lo] = 1.0 + (q[0] - 1.0) * e
        F[lo] = F0 + (s[lo] - t[0]) + (q[0] - 1.0) * L * (e - 1.0)
        if want_basis:
            B[lo, 0] = L * (e - 1.0)
    if hi.any():
        e = np.exp(-(s[hi] - t[-1]) / L)
        g[hi] = q[-1] * e
        F[hi] = C[-1] + q[-1] * L * (1.0 - e)
        if want_basis:
            B[hi] = Wfull[-1]
            B[hi, -1] += L * (1.0 - e)
    if mid.any():
        sm = s[mid]
        if m == 1:
            g[mid] = q[0]
            F[mid] = F0
        else:
            j = np.clip(np.searchsorted(t, sm, side="right") - 1, 0, m - 2)
            d = sm - t[j]
            hj = t[j + 1] - t[j]
            dq = (q[j + 1] - q[j]) / hj
            g[mid] = q[j] + dq * d
            F[mid] = C[j] + q[j] * d + 0.5 * dq * d * d
            if want_basis:
                rows = np.flatnonzero(mid)
                B[rows] = Wfull[j]
                B[rows, j] += d - 0.5 * d * d / hj
                B[rows, j + 1] += 0.5 * d * d / hj
    return F, g, B


def _knots(s_nodes) -> np.ndarray:
    """Knots in ``s``: the expiries' ``s_i`` and the midpoints between them (``2 n - 1``)."""
    s = np.asarray(s_nodes, float)
    t = np.empty(2 * s.size - 1)
    t[0::2] = s
    t[1::2] = 0.5 * (s[:-1] + s[1:])
    return t


@dataclass(frozen=True)
class ThetaCurve:
    """ATM total variance ``theta(T) = theta_par(T) + c(T)`` through ``theta_nodes`` at ``T_nodes``: ``par`` a
    ``core.surface.ssvi.ThetaParametric`` (mean-reverting forward ATM variance) fitted to the nodes, ``c`` the
    not-a-knot cubic spline in ``sqrt(T)`` through the residuals; before ``T_1`` the cubic Hermite in ``T`` from
    ``c(0) = 0`` with slope ``c_1/T_1`` (C1 at ``T_1``), beyond ``T_n`` linear with the end slope. Exact for
    ``ThetaParametric`` data; unlike ``ThetaBackbone`` the end slope is not clamped (on a T-only smile
    ``sigma^2 = 0.04 + 0.03 e^{-1.5 T}`` at nine expiries, ATM local vol within 1.5 bp, against 47 bp clamped).
    Build with ``ThetaCurve.build`` (the monotone spline instead when this one would decrease)."""

    T_nodes: tuple
    theta_nodes: tuple
    par: object
    _spl: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        T = np.asarray(self.T_nodes, float)
        c = np.asarray(self.theta_nodes, float) - self.par.theta(T)
        spl = CubicSpline(np.sqrt(T), c, bc_type="not-a-knot") if T.size >= 2 else None
        object.__setattr__(self, "_spl", (spl, c))

    def _corr(self, T):
        T = np.asarray(T, float)
        spl, c = self._spl
        Tn = np.asarray(self.T_nodes)
        if spl is None:                                   # one expiry: the parametric curve passes through it
            return np.zeros(T.shape), np.zeros(T.shape)
        v = np.empty(T.shape)
        d = np.empty(T.shape)
        sq = np.sqrt(np.maximum(T, 0.0))
        mid = (T >= Tn[0]) & (T <= Tn[-1])
        v[mid] = spl(sq[mid])
        d[mid] = spl(sq[mid], 1) / (2.0 * sq[mid])
        pre = T < Tn[0]
        if pre.any():
            T1, s1 = Tn[0], np.sqrt(Tn[0])
            x = T[pre] / T1
            D = T1 * float(spl(s1, 1)) / (2.0 * s1)
            v[pre] = c[0] * (x + x * x - x**3) + D * (x**3 - x * x)
            d[pre] = (c[0] * (1.0 + 2.0 * x - 3.0 * x * x) + D * (3.0 * x * x - 2.0 * x)) / T1
        post = T > Tn[-1]
        if post.any():
            dn = float(spl(np.sqrt(Tn[-1]), 1)) / (2.0 * np.sqrt(Tn[-1]))
            v[post] = c[-1] + dn * (T[post] - Tn[-1])
            d[post] = dn
        return v, d

    def theta(self, T):
        """ATM total variance at ``T`` (years); broadcasts."""
        return self.par.theta(T) + self._corr(T)[0]

    def dtheta(self, T):
        """``d theta / dT`` at ``T`` (analytic)."""
        return self.par.dtheta(T) + self._corr(T)[1]

    def min_dtheta(self, per_interval: int = 64) -> float:
        """Smallest ``dtheta/dT``: on ``per_interval`` points in ``sqrt(T)`` of ``[0, T_1]`` and of each interval,
        and beyond ``T_n`` (where ``theta_par'`` is monotone: its ends ``T_n`` and ``v_inf``)."""
        s = np.r_[0.0, np.sqrt(self.T_nodes)]
        u = np.linspace(0.0, 1.0, per_interval + 1)
        grid = np.maximum((s[:-1, None] + np.diff(s)[:, None] * u[None, :]).ravel() ** 2, 1e-12)
        tail = float(self._corr(np.array([2.0 * self.T_nodes[-1]]))[1][0]) + self.par.v_inf
        return float(min(np.min(self.dtheta(grid)), tail))

    @staticmethod
    def build(T_nodes, theta_nodes):
        """This curve through ``theta_nodes`` (n,) at ``T_nodes`` (n,), or ``MonotoneThetaCurve`` when it would
        decrease somewhere or the parametric fit fails."""
        T, th = np.asarray(T_nodes, float), np.asarray(theta_nodes, float)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                curve = ThetaCurve(tuple(T), tuple(th), fit_theta_parametric(T, th))
                if curve.min_dtheta() >= 0.0 and np.all(curve.theta(T) > 0):
                    return curve
        except (InputError, ValueError, FloatingPointError, np.linalg.LinAlgError):
            pass
        return MonotoneThetaCurve(tuple(T), tuple(th))


@dataclass(frozen=True, eq=False)
class ESSVISurface(VolSurface):
    """eSSVI surface (module docstring): ``theta_curve`` (``theta(T)``, ``dtheta(T)``, non-decreasing,
    through ``theta_nodes`` at ``T_nodes``), wing curves ``lnP``, ``lnM`` (``LogSlopeCurve`` in
    ``s = ln theta``, knots at ``ln theta_nodes`` and the midpoints). ``y_lo, y_hi`` (n,): quoted ``y``-range
    per expiry. ``derivatives`` is exact (closed form). Build with ``ESSVISurface.from_nodes`` or
    ``fit_essvi``."""

    T_nodes: tuple
    theta_nodes: tuple
    lnP: LogSlopeCurve
    lnM: LogSlopeCurve
    theta_curve: object
    y_lo: tuple = ()
    y_hi: tuple = ()
    T_quoted: tuple = (0.0, np.inf)

    def __post_init__(self) -> None:
        T = np.asarray(self.T_nodes, float)
        th = np.asarray(self.theta_nodes, float)
        if T.ndim != 1 or T.size == 0 or th.shape != T.shape or np.any(np.diff(T) <= 0) or np.any(th <= 0):
            raise InputError("ESSVISurface needs increasing T_nodes and positive theta_nodes of one length")
        object.__setattr__(self, "T_nodes", tuple(float(x) for x in T))
        object.__setattr__(self, "theta_nodes", tuple(float(x) for x in th))
        if self.T_quoted == (0.0, np.inf):
            object.__setattr__(self, "T_quoted", (float(T[0]), float(T[-1])))

    @classmethod
    def from_nodes(cls, T_nodes, theta, rho, psi, *, theta_curve=None, y_lo=(), y_hi=()) -> "ESSVISurface":
        """The surface through per-expiry ``theta, rho, psi`` (each (n,)) at ``T_nodes`` (n,).

        The nodes must satisfy the conditions of the construction: ``theta`` increasing, both wing slopes
        ``P = psi (1 + rho)``, ``M = psi (1 - rho)`` non-decreasing and growing no faster than ``theta``
        (``0 <= d ln P / d ln theta <= 1`` between nodes), and the butterfly bounds; else ``InputError``.
        Knot log-slopes: at a node the mean of the neighbouring secants, moved into the range that lets
        the midpoint knots reproduce both intervals exactly. ``theta_curve``: default
        ``ThetaCurve.build(T_nodes, theta)``.
        """
        T, th, r, ps = (np.asarray(v, float).ravel() for v in (T_nodes, theta, rho, psi))
        n = T.size
        if not (th.size == r.size == ps.size == n) or n == 0:
            raise InputError("from_nodes needs T_nodes, theta, rho and psi of one equal length")
        if np.any(np.abs(r) >= 1) or np.any(ps <= 0) or np.any(np.diff(th) <= 0) or np.any(th <= 0):
            raise InputError("from_nodes needs |rho| < 1, psi > 0 and increasing positive theta")
        s = np.log(th)
        P, M = np.log(ps * (1 + r)), np.log(ps * (1 - r))
        curves = []
        if n == 1:
            curves = [np.array([1.0]), np.array([1.0])]
        else:
            hs = np.diff(s)
            secants = [np.diff(F) / hs for F in (P, M)]
            if any(np.any(d < -1e-12) or np.any(d > 1 + 1e-12) for d in secants):
                raise InputError("from_nodes: wing slopes P = psi (1 + rho), M = psi (1 - rho) must grow "
                                 "with theta and no faster than theta (calendar conditions)")
            secants = [np.clip(d, 0.0, 1.0) for d in secants]
            # the shared first slope: inside [2 d - 1, 2 d] of both wings' first intervals where possible
            lo0 = max(0.0, max(2 * d[0] - 1 for d in secants))
            hi0 = min(1.0, min(2 * d[0] for d in secants))
            q0 = float(np.clip(0.5 * (secants[0][0] + secants[1][0]), min(lo0, hi0), max(lo0, hi0)))
            for d in secants:
                # node slopes left to right: the interval's midpoint value 2 d - (q_a + q_b)/2 must lie in [0, 1]
                # (q_b in [4 d - 2 - q_a, 4 d - q_a]); aim at the mean of the neighbouring secants, kept inside
                # [2 d' - 1, 2 d'] of the next interval when that range meets the allowed one
                node = [q0]
                for j in range(1, n):
                    lo = max(0.0, 4 * d[j - 1] - 2 - node[-1])
                    hi = min(1.0, 4 * d[j - 1] - node[-1])
                    target = 0.5 * (d[j - 1] + d[j]) if j < n - 1 else d[j - 1]
                    if j < n - 1:
                        lo2, hi2 = max(lo, 2 * d[j] - 1), min(hi, 2 * d[j])
                        if lo2 <= hi2:
                            lo, hi = lo2, hi2
                    node.append(float(np.clip(target, lo, max(lo, hi))))
                node = np.array(node)
                q = np.empty(2 * n - 1)
                q[0::2] = node
                q[1::2] = np.clip(2 * d - 0.5 * (node[:-1] + node[1:]), 0.0, 1.0)
                curves.append(q)
        t = _knots(s) if n > 1 else s
        lnP = LogSlopeCurve(tuple(t), tuple(curves[0]), float(P[0]))
        lnM = LogSlopeCurve(tuple(t), tuple(curves[1]), float(M[0]))
        back = np.r_[lnP(s)[0] - P, lnM(s)[0] - M]
        if np.max(np.abs(back)) > 1e-9:
            raise InputError("from_nodes: these nodes change their wing log-slopes too abruptly for the C1 "
                             f"construction (mismatch {np.max(np.abs(back)):.2g} in ln P/ln M)")
        curve = theta_curve if theta_curve is not None else ThetaCurve.build(T, th)
        surf = cls(T_nodes=tuple(T), theta_nodes=tuple(th), lnP=lnP, lnM=lnM, theta_curve=curve,
                   y_lo=tuple(float(v) for v in y_lo), y_hi=tuple(float(v) for v in y_hi))
        chk = surf.butterfly_check()
        if chk["max_ratio"] > 1.0:
            raise InputError(f"from_nodes: butterfly bound exceeded (max of psi(1+|rho|)/4 and "
                             f"psi^2(1+|rho|)/(4 theta): {chk['max_ratio']:.4g} > 1)")
        return surf

    def params_at(self, T):
        """``theta, rho, psi, phi`` (each of ``T``'s shape) of the slice at ``T``."""
        T = np.asarray(T, dtype=float)
        th = np.maximum(np.asarray(self.theta_curve.theta(T), float), 1e-300)
        s = np.log(th)
        P = np.exp(self.lnP(s)[0])
        M = np.exp(self.lnM(s)[0])
        psi = 0.5 * (P + M)
        return th, (P - M) / (P + M), psi, psi / th

    def nodes(self) -> dict:
        """Per-expiry parameters at ``T_nodes``: lists ``T, theta, rho, psi, phi`` (JSON-able)."""
        th, rho, psi, phi = self.params_at(np.asarray(self.T_nodes))
        return {"T": list(self.T_nodes), "theta": [float(v) for v in th], "rho": [float(v) for v in rho],
                "psi": [float(v) for v in psi], "phi": [float(v) for v in phi]}

    def derivatives(self, y, T) -> Derivatives:
        """Closed-form ``w, w_y, w_yy, w_T`` at ``(y, T)`` (broadcast): ``w_T = dw/dtheta theta' +
        dw/dpsi psi' + dw/da a'`` with ``psi' = (P p + M m) s'/2``, ``a' = (P p - M m) s'/2``, ``s' = theta'/theta``."""
        y, T = np.broadcast_arrays(np.asarray(y, dtype=float), np.asarray(T, dtype=float))
        th = np.maximum(np.asarray(self.theta_curve.theta(T), float), 1e-300)
        dth = np.asarray(self.theta_curve.dtheta(T), float)
        s = np.log(th)
        FP, gP = self.lnP(s)
        FM, gM = self.lnM(s)
        P, M = np.exp(FP), np.exp(FM)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            w, w_y, w_yy, d_th, d_psi, d_a = _slice_partials(y, th, P, M)
            sT = dth / th
            w_T = d_th * dth + (d_psi * 0.5 * (P * gP + M * gM) + d_a * 0.5 * (P * gP - M * gM)) * sT
        return Derivatives(w=w, w_y=w_y, w_yy=w_yy, w_T=w_T)

    def y_quoted(self, T):
        """Quoted ``y``-range at ``T`` (linear in ``T`` between expiries, flat outside)."""
        if not self.y_lo:
            return super().y_quoted(T)
        return quoted_y_range(T, self.T_nodes, self.y_lo, self.y_hi)

    def butterfly_check(self) -> dict:
        """Largest ratios ``max(P, M)/4`` and ``psi max(P, M)/(4 theta)`` over ``s`` in
        ``[s_1 - 8 L, s_n + 8 L]`` on a grid of step ``CHECK_STEP``, times ``e^{CHECK_STEP}`` (a bound for the
        sup between grid points: module docstring). ``max_ratio <= 1``: no butterfly arbitrage at any ``T``."""
        s_n = np.log(np.asarray(self.theta_nodes))
        L = self.lnP.L
        s = np.arange(s_n[0] - 8 * L, s_n[-1] + 8 * L + CHECK_STEP, CHECK_STEP)
        FP, FM = self.lnP(s)[0], self.lnM(s)[0]
        big = np.maximum(FP, FM)
        ln_psi = np.logaddexp(FP, FM) - np.log(2.0)
        r1 = float(np.max(big)) - np.log(BUTTERFLY_BOUND)
        r2 = float(np.max(ln_psi + big - s)) - np.log(BUTTERFLY_BOUND)
        return {"max_ratio": float(np.exp(max(r1, r2) + CHECK_STEP)), "wing": float(np.exp(r1)),
                "curvature": float(np.exp(r2))}


# ----------------------------------------------------------------------------------------------------------
# calibration

@dataclass(frozen=True)
class ESSVIFitResult:
    """What ``fit_essvi`` returns: ``surface``, per-expiry ``T, theta, rho, psi, phi`` (n,), the starting
    thetas, the optimiser's diagnostics (``success``, ``nfev`` Levenberg-Marquardt iterations, ``message``),
    ``downweighted`` (quotes given a robust weight below 1/2), ``butterfly_scale`` (the factor applied to
    ``P, M`` by the final check, 1 when not needed), ``seconds`` and ``fit_weight`` (N,): the robust factor on
    each quote's weight in the last pass (1: none)."""

    surface: ESSVISurface
    T: np.ndarray
    theta: np.ndarray
    rho: np.ndarray
    psi: np.ndarray
    phi: np.ndarray
    theta_start: np.ndarray
    success: bool
    nfev: int
    message: str
    downweighted: int = 0
    butterfly_scale: float = 1.0
    seconds: float = 0.0
    fit_weight: np.ndarray | None = None

    def slice_params(self, i: int) -> dict:
        """JSON-able parameters of expiry ``i``."""
        return {"T": float(self.T[i]), "theta": float(self.theta[i]), "rho": float(self.rho[i]),
                "psi": float(self.psi[i]), "phi": float(self.phi[i])}


def _soft_hinge(v):
    """``max(v, 0)`` smoothed over ``HINGE_WIDTH`` (softplus): value and derivative. A sharp hinge makes
    Levenberg-Marquardt crawl along an active bound."""
    x = v / HINGE_WIDTH
    return HINGE_WIDTH * np.logaddexp(0.0, x), 0.5 * (1.0 + np.tanh(0.5 * x))


def _sig(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _logit(q):
    q = np.clip(np.asarray(q, float), 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


def fit_knots(s_nodes, max_knots: int = MAX_KNOTS) -> np.ndarray:
    """Knots in ``s = ln theta`` for the wing curves: the expiries' ``s_i`` and the midpoints between them
    (``2 n - 1``, each slice gets its own correlation and curvature) when that is at most ``max_knots``, else
    ``max_knots`` knots evenly spaced from ``s_1`` to ``s_n`` (a smooth term structure of ``rho`` and ``psi``
    over many close expiries, as in Mingone's (2022) global parametrisation)."""
    s = np.asarray(s_nodes, float)
    if s.size == 1:
        return s.copy()
    if 2 * s.size - 1 <= max_knots:
        return _knots(s)
    return np.linspace(s[0], s[-1], max_knots)


class _Problem:
    """Residuals, cost and normal equations in the unbounded coordinates ``z`` (module docstring).

    Layout of ``z`` (``n`` expiries, ``m`` knots fixed in ``s``): ``[s_1, ln h_1..ln h_{n-1}, ln P(t_0),
    ln M(t_0), logit q_0, logit qP_1..qP_{m-1}, logit qM_1..qM_{m-1}]`` (``h_i = s_{i+1} - s_i``; the slope
    ``q_0`` at the first knot is shared by both wings)."""

    def __init__(self, Tn, y, iv, wt, idx, band, knots, lam_rough, k_bfly, like=None):
        if like is not None:                          # the same data as ``like``, other knots
            keep = ("n", "Tn", "Tq", "y", "iv", "idx", "sw", "band", "rw", "v_ref", "alpha", "shrink")
            self.__dict__.update({k: like.__dict__[k] for k in keep})
        else:
            self.n = len(Tn)
            self.Tn = np.asarray(Tn, float)
            self.Tq = Tn[idx]
            self.y, self.iv, self.idx = y, iv, idx
            self.sw = np.sqrt(wt)
            self.band = band
            self.rw = np.ones_like(y)                 # robust weights (last pass)
            self.v_ref = float(np.median(iv)) ** 2     # variance scale of the forward-variance penalty
            self.alpha = 1.0                          # weight of the distance to the mid (band fits: small)
            self.shrink = 1.0                         # the band's half-widths scaled by this
        n = self.n
        self.lam_theta = like.lam_theta if like is not None else 0.0
        self.t = np.asarray(knots, float)
        self.m = m = self.t.size
        self.lam = lam_rough
        self.k_bfly = k_bfly
        self.npar = n + 2 + 1 + 2 * (m - 1)
        self.low = np.tril(np.ones((n, max(n - 1, 0))), -1)
        dt = np.diff(self.t)
        self.rough_scale = 1.0 / np.sqrt(dt / dt.mean()) if m > 1 else np.zeros(0)
        self.Lx = EXTRAP_LENGTH
        self.W = _hat_integrals(self.t)
        self.cols = [self.qcols(0), self.qcols(1)]

    def unpack(self, z):
        n, m = self.n, self.m
        h = np.exp(z[1:n])
        q = _sig(z[n + 2:])
        qP = q[:m]
        qM = np.concatenate((q[:1], q[m:]))
        return z[0], h, z[n], z[n + 1], qP, qM

    def qcols(self, c):
        """z-column of each knot slope of wing ``c`` (0: P, 1: M)."""
        n, m = self.n, self.m
        off = n + 3 + c * (m - 1)
        return np.r_[n + 2, np.arange(off, off + m - 1)]

    def nodes(self, z, want_jac=True):
        """``s, lnP, lnM`` at the expiries (each (n,)) and ``D`` (n, 3, npar): their partials in ``z``."""
        n = self.n
        s1, h, F0P, F0M, qP, qM = self.unpack(z)
        s = np.empty(n)
        s[0] = s1
        np.cumsum(h, out=s[1:])
        s[1:] += s1
        D = np.zeros((n, 3, self.npar)) if want_jac else None
        if want_jac:
            D[:, 0, 0] = 1.0
            D[:, 0, 1:n] = self.low * h[None, :]
        out = []
        for c, (F0, q) in enumerate(((F0P, qP), (F0M, qM))):
            F, g, B = _curve_eval(self.t, q, F0, self.Lx, s, want_basis=want_jac, W=self.W)
            out.append(F)
            if want_jac:
                D[:, 1 + c, :] = g[:, None] * D[:, 0, :]
                D[:, 1 + c, n + c] += 1.0
                cols = self.cols[c]
                D[:, 1 + c, cols] += B * (q * (1 - q))[None, :]
        return s, out[0], out[1], D

    def data(self, s, lnP, lnM, want_jac=True):
        """Weighted vol residuals (N,) and their partials in ``(s_i, lnP_i, lnM_i)`` of each quote's expiry (N, 3)."""
        i = self.idx
        th = np.exp(s)[i]
        P = np.exp(lnP)[i]
        M = np.exp(lnM)[i]
        y = self.y
        psi = 0.5 * (P + M)
        a = 0.5 * (P - M)
        ay = a * y
        R = np.sqrt((psi * y) ** 2 + th * (2.0 * ay + th))
        w = 0.5 * (th + ay + R)
        vol = np.sqrt(np.maximum(w, 1e-300) / self.Tq)
        e = vol - self.iv
        sw = self.sw * self.rw
        if self.band is not None:
            lo, hi = self.band
            if self.shrink != 1.0:
                lo = self.iv - self.shrink * (self.iv - lo)
                hi = self.iv + self.shrink * (hi - self.iv)
            out_hi, out_lo = vol > hi, vol < lo
            r = sw * (self.alpha * e + np.where(out_hi, vol - hi, 0.0) - np.where(out_lo, lo - vol, 0.0))
            slope = self.alpha + (out_hi | out_lo)
        else:
            r = sw * e
            slope = 1.0
        if not want_jac:
            return r, None
        # dw/dtheta, dw/dpsi, dw/da of the slice (``_slice_partials``), folded into ln theta, ln P, ln M
        iR = 1.0 / R
        d_th = 0.5 * (1.0 + (ay + th) * iR)
        d_psi = 0.5 * psi * y * y * iR
        d_a = 0.5 * y * (1.0 + th * iR)
        dv = sw * slope / (2.0 * vol * self.Tq)
        G = np.empty((y.size, 3))
        G[:, 0] = dv * th * d_th
        G[:, 1] = dv * P * 0.5 * (d_psi + d_a)
        G[:, 2] = dv * M * 0.5 * (d_psi - d_a)
        return r, G

    def extra(self, z, s, lnP, lnM, D, want_jac=True):
        """Penalty residuals (and Jacobian rows): roughness of the forward ATM variance and of the knot
        log-slopes; the butterfly hinges (``ln R``, ``ln max(P, M)`` below ``ln 4`` minus ``BUTTERFLY_MARGIN``)."""
        n, m = self.n, self.m
        _, _, _, _, qP, qM = self.unpack(z)
        rows, J = [], []
        if self.lam_theta > 0 and n > 2:
            # roughness of the forward ATM variance fv_i = (theta_{i+1} - theta_i)/(T_{i+1} - T_i), relative to
            # the quotes' typical variance, each difference weighted like int (d fv/dT)^2 dT (close expiries: stiff)
            th = np.exp(s)
            dT = np.diff(self.Tn)
            fv = np.diff(th) / dT
            wgt = self.lam_theta * np.sqrt(self.Tn[-1] / (dT[:-1] + dT[1:])) / self.v_ref
            rows.append(wgt * np.diff(fv))
            if want_jac:
                dth = th[:, None] * D[:, 0, :]                      # d theta_i / dz
                dfv = (dth[1:] - dth[:-1]) / dT[:, None]
                J.append(wgt[:, None] * (dfv[1:] - dfv[:-1]))
        if self.lam > 0 and m > 1:
            k = np.arange(m - 1)
            for c, q in enumerate((qP, qM)):
                cols = self.qcols(c)
                sc = self.lam * self.rough_scale
                rows.append(sc * np.diff(q))
                if want_jac:
                    Jr = np.zeros((m - 1, self.npar))
                    dq = q * (1 - q)
                    Jr[k, cols[k + 1]] += sc * dq[k + 1]
                    Jr[k, cols[k]] -= sc * dq[k]
                    J.append(Jr)
        # butterfly hinges (bounds of the module docstring, BUTTERFLY_MARGIN below them): at the expiries and at the
        # knots, the sup of the curvature ratio over each extrapolation (closed forms below) and the wings' limit
        marg = np.log(BUTTERFLY_BOUND) - BUTTERFLY_MARGIN
        L = self.Lx
        W = self.W
        dqP, dqM = qP * (1 - qP), qM * (1 - qM)
        _, _, F0P, F0M, _, _ = self.unpack(z)
        CP = F0P + W @ qP
        CM = F0M + W @ qM
        Dk = np.zeros((m, 3, self.npar)) if want_jac else None
        if want_jac:
            Dk[:, 1, n] = 1.0
            Dk[:, 2, n + 1] = 1.0
            Dk[:, 1, self.cols[0]] += W * dqP[None, :]
            Dk[:, 2, self.cols[1]] += W * dqM[None, :]
        # left of the first knot ln R grows by L (1 - 2 q0 - ln(2 (1 - q0))) at most when q0 < 1/2; right of the
        # last by L (2 q - 1 - ln(2 q)) at most, q the larger end slope, when q > 1/2
        q0 = qP[0]
        addL = L * (1 - 2 * q0 - np.log(2 * (1 - q0))) if q0 < 0.5 else 0.0
        dL = L * (-2 + 1 / (1 - q0)) * dqP[0] if q0 < 0.5 else 0.0
        qe, ce, dqe = (qP[-1], self.cols[0][-1], dqP[-1]) if qP[-1] >= qM[-1] else (qM[-1], self.cols[1][-1], dqM[-1])
        addR = L * (2 * qe - 1 - np.log(2 * qe)) if qe > 0.5 else 0.0
        dR = L * (2 - 1 / qe) * dqe if qe > 0.5 else 0.0
        for (sv, Fp, Fm, DD, extra_v) in ((s, lnP, lnM, D, None), (self.t, CP, CM, Dk, (addL, dL, addR, dR))):
            big = np.maximum(Fp, Fm)
            lse = np.logaddexp(Fp, Fm)
            Pw = np.exp(Fp - lse)
            pbig = (Fp >= Fm).astype(float)
            lnR = lse - np.log(2.0) + big - sv
            if extra_v is not None:
                lnR = lnR.copy()
                lnR[0] += extra_v[0]
                lnR[-1] += extra_v[2]
            for val, dS, dP, dM, kind in ((lnR - marg, -1.0, Pw + pbig, (1 - Pw) + (1 - pbig), 0),
                                          (big - marg, 0.0, pbig, 1 - pbig, 1)):
                act = val > -30.0 * HINGE_WIDTH
                if not act.any():
                    continue
                hv, hd = _soft_hinge(val[act])
                rows.append(self.k_bfly * hv)
                if want_jac:
                    Jb = dS * DD[act, 0, :] + dP[act, None] * DD[act, 1, :] + dM[act, None] * DD[act, 2, :]
                    if extra_v is not None and kind == 0:
                        ia = np.flatnonzero(act)
                        Jb[ia == 0, n + 2] += extra_v[1]
                        Jb[ia == m - 1, ce] += extra_v[3]
                    J.append(self.k_bfly * hd[:, None] * Jb)
        # wings' limit beyond the last knot: ln P -> C_last + q_last L (and ln M)
        for C, q, col, dq in ((CP, qP, self.cols[0][-1], dqP[-1]), (CM, qM, self.cols[1][-1], dqM[-1])):
            val = C[-1] + q[-1] * L - marg
            if val > -30.0 * HINGE_WIDTH:
                hv, hd = _soft_hinge(np.array([val]))
                rows.append(self.k_bfly * hv)
                if want_jac:
                    row = (Dk[-1, 1, :] if q is qP else Dk[-1, 2, :]).copy()
                    row[col] += L * dq
                    J.append(self.k_bfly * hd[0] * row[None, :])
        re = np.concatenate(rows) if rows else np.zeros(0)
        Je = np.vstack(J) if (want_jac and J) else np.zeros((0, self.npar))
        return re, Je

    def cost_parts(self, z, want_jac=True):
        s, lnP, lnM, D = self.nodes(z, want_jac)
        r, G = self.data(s, lnP, lnM, want_jac)
        re, Je = self.extra(z, s, lnP, lnM, D, want_jac)
        cost = float(r @ r + re @ re)
        if not want_jac:
            return cost, None, None
        n = self.n
        # J^T J and J^T r of the data part, per expiry: sum_i D_i^T (G_i^T G_i) D_i, with G_i^T G_i = C_i C_i^T
        A = np.empty((n, 3, 3))
        for a in range(3):
            for b in range(a, 3):
                A[:, a, b] = A[:, b, a] = np.bincount(self.idx, G[:, a] * G[:, b], minlength=n)
        g3 = np.stack([np.bincount(self.idx, G[:, a] * r, minlength=n) for a in range(3)], axis=1)
        E = np.matmul(A, D).reshape(3 * n, -1)
        JtJ = D.reshape(3 * n, -1).T @ E + Je.T @ Je
        Jtr = np.einsum("ia,iap->p", g3, D) + Je.T @ re
        return cost, JtJ, Jtr


def _lm(prob: _Problem, z, *, max_iter: int = 100, tol: float = 1e-4, free=None):
    """Levenberg-Marquardt on the normal equations (Marquardt's diagonal scaling). ``free``: boolean mask of
    the coordinates to move. Stops when an iteration lowers the cost by less than ``tol`` (relative) twice
    in a row. Returns ``(z, iterations, converged, message)``."""
    z = z.copy()
    mu = 1e-3
    cost, JtJ, Jtr = prob.cost_parts(z)
    fr = np.ones(z.size, bool) if free is None else np.asarray(free, bool)
    it, small, ok = 0, 0, False
    msg = "maximum number of iterations reached"
    while it < max_iter:
        it += 1
        H = JtJ[np.ix_(fr, fr)]
        gr = Jtr[fr]
        dg = np.maximum(np.diag(H), 1e-12 * max(1.0, float(np.max(np.diag(H)))))
        improved = False
        for _ in range(10):
            try:
                step = -np.linalg.solve(H + mu * np.diag(dg), gr)
            except np.linalg.LinAlgError:
                mu *= 10.0
                continue
            zn = z.copy()
            zn[fr] += step
            cn = prob.cost_parts(zn, want_jac=False)[0]
            if np.isfinite(cn) and cn < cost:
                improved = True
                break
            mu *= 10.0
        if not improved:
            ok, msg = True, "no further decrease"
            break
        rel = (cost - cn) / max(cost, 1e-300)
        z = zn
        cost, JtJ, Jtr = prob.cost_parts(z)
        mu = max(mu / 10.0, 1e-10)
        small = small + 1 if rel < tol else 0
        if small >= 2:
            ok, msg = True, "converged"
            break
    return z, it, ok, msg


def _band_passes(prob: _Problem, z, *, max_iter: int, tol: float):
    """From a fit to the mids to a fit inside the bid/ask: the distance beyond the band (its half-widths times
    ``BAND_SHRINK``) counts fully and the distance to the mid with weight ``BAND_ALPHA``; then iteratively
    reweighted passes with Cauchy weights on the distance beyond the band in units of the quote's half spread
    (scales ``BAND_SCALES``, each until the weights settle, at most ``BAND_ROUNDS`` rounds): a quote the slice
    cannot reach stops pulling it away from the many it can (the three-parameter slice cannot follow a whole
    SPX smile within its spreads: fitted to the mids it sits inside few of them). Returns ``(z, iterations,
    converged, message, robust weights)``."""
    prob.alpha, prob.shrink = BAND_ALPHA, BAND_SHRINK
    prob.rw = np.ones_like(prob.y)
    lo, hi = prob.band
    half_lo = np.maximum(prob.iv - lo, 1e-4) * BAND_SHRINK
    half_hi = np.maximum(hi - prob.iv, 1e-4) * BAND_SHRINK
    z, nfev, ok, msg = _lm(prob, z, max_iter=max_iter, tol=tol)
    for c in BAND_SCALES:
        for _ in range(BAND_ROUNDS):
            s, lnP, lnM, _ = prob.nodes(z, want_jac=False)
            i = prob.idx
            P, M = np.exp(lnP)[i], np.exp(lnM)[i]
            w = essvi_slice(prob.y, np.exp(s)[i], (P - M) / (P + M), 0.5 * (P + M))[0]
            e = np.sqrt(np.maximum(w, 1e-300) / prob.Tq) - prob.iv
            out = np.maximum(np.where(e > 0, e / half_hi, -e / half_lo) - 1.0, 0.0)
            rw = 1.0 / np.sqrt(1.0 + (out / c) ** 2)
            settled = float(np.max(np.abs(rw - prob.rw))) < BAND_SETTLED
            prob.rw = rw
            if settled:
                break
            z, it, ok, msg = _lm(prob, z, max_iter=max_iter, tol=tol)
            nfev += it
    return z, nfev, ok, msg, prob.rw


def _atm_shape(y, w, wt, theta):
    """``(rho, psi)`` of the SSVI slice with the quotes' ATM slope and curvature: a weighted parabola
    ``w ~ theta + b y + c y^2`` through the third of the quotes nearest the money (at least 5), and the slice's
    ``w_y(0) = rho psi``, ``w_yy(0) = psi^2 (1 - rho^2) / (2 theta)``. None when it cannot be read."""
    k = min(y.size, max(5, y.size // 3))
    if k < 3:
        return None
    sel = np.argsort(np.abs(y))[:k]
    ys, ws, sw = y[sel], w[sel] - theta, np.sqrt(wt[sel] + 1e-12)
    if np.ptp(ys) <= 0:
        return None
    A = np.column_stack([ys, ys * ys]) * sw[:, None]
    (b, c), *_ = np.linalg.lstsq(A, ws * sw, rcond=None)
    psi2 = b * b + 2.0 * theta * max(c, 0.0)
    if not (np.isfinite(psi2) and psi2 > 0):
        return None
    psi = float(np.sqrt(psi2))
    return float(np.clip(b / psi, -0.95, 0.95)), psi


def _start(Tn, y, iv, wt, idx):
    """Starting point: ``theta_i`` from the quotes near the money (non-decreasing, at least 0.5% apart);
    ``rho, psi`` per expiry from its ATM slope and curvature (``_atm_shape``); one ``rho`` (the median) and
    ``ln psi = c + kappa ln theta`` fitted through them (``kappa`` in [0.2, 0.8]). Returns ``theta`` (n,),
    ``P, M`` at the first expiry (inside the butterfly bounds) and ``kappa`` (the starting log-slope)."""
    n = len(Tn)
    w = iv * iv * Tn[idx]
    th = np.array([atm_total_variance(y[idx == i], w[idx == i], wt[idx == i]) for i in range(n)])
    nq = np.bincount(idx, minlength=n).astype(float)
    th = np.maximum(isotonic(th, nq), 1e-8)
    for i in range(1, n):
        th[i] = max(th[i], th[i - 1] * 1.005)
    shapes = [(i, _atm_shape(y[idx == i], w[idx == i], wt[idx == i], th[i])) for i in range(n)]
    shapes = [(i, v) for i, v in shapes if v is not None]
    if shapes:
        ii = np.array([i for i, _ in shapes])
        rho = float(np.median([v[0] for _, v in shapes]))
        lp = np.log([v[1] for _, v in shapes])
        s = np.log(th[ii])
        if ii.size >= 2 and np.ptp(s) > 0:
            kappa, c = np.polyfit(s, lp, 1, w=np.sqrt(nq[ii]))
            kappa = float(np.clip(kappa, 0.2, 0.8))
            c = float(np.average(lp - kappa * s, weights=nq[ii]))
        else:
            kappa, c = 0.5, float(lp[0] - 0.5 * s[0])
        psi = float(np.exp(c + kappa * np.log(th[0])))
    else:
        rho, kappa, psi = -0.5, 0.5, float(np.sqrt(th[0]))
    P0, M0 = psi * (1 + rho), psi * (1 - rho)
    lim = 0.8 * min(BUTTERFLY_BOUND, np.sqrt(BUTTERFLY_BOUND * th[0] * max(P0, M0) / psi))
    c = min(1.0, lim / max(P0, M0))
    return th, P0 * c, M0 * c, kappa


def _reknot(prob: _Problem, z, max_knots: int):
    """A copy of ``prob`` with knots ``fit_knots`` of the thetas in ``z``, and ``z`` carried over: the new knot
    log-slopes are the old curves' log-slopes there, ``ln P, ln M`` at the new first knot the old values."""
    n = prob.n
    s1, h, F0P, F0M, qP, qM = prob.unpack(z)
    s = s1 + np.concatenate(([0.0], np.cumsum(h)))
    t = fit_knots(s, max_knots)
    new = _Problem(None, None, None, None, None, None, t, prob.lam, prob.k_bfly, like=prob)
    FP, gP, _ = _curve_eval(prob.t, qP, F0P, prob.Lx, t, want_basis=False, W=prob.W)
    FM, gM, _ = _curve_eval(prob.t, qM, F0M, prob.Lx, t, want_basis=False, W=prob.W)
    zn = np.empty(new.npar)
    zn[:n] = z[:n]
    zn[n], zn[n + 1] = FP[0], FM[0]
    zn[n + 2] = _logit(0.5 * (gP[0] + gM[0]))
    zn[n + 3:n + 2 + new.m] = _logit(gP[1:])
    zn[n + 2 + new.m:] = _logit(gM[1:])
    return new, zn


def _one_blas_thread():
    """Context limiting BLAS to one thread (small dense solves: a pool of threads was 20x slower on a busy
    machine)."""
    return threadpool_limits(limits=1, user_api="blas")


def fit_essvi(T_nodes, y, iv, wt, idx, *, band=None, smoothing: float = 0.0, y_lo=(), y_hi=(),
              robust: bool = True, max_knots: int = MAX_KNOTS, max_iter: int = 100,
              tol: float = 1e-4, roughness: float | None = None,
              theta_roughness: float | None = None) -> ESSVIFitResult:
    """Fit an eSSVI surface to implied vols of several expiries at once (module docstring).

    ``T_nodes`` (n,) increasing expiries (years); ``y, iv, wt, idx`` (N,): log-moneyness, mid implied vol,
    weight (residuals in vol units times ``sqrt(wt)``), index of the quote's expiry in ``T_nodes``.
    ``band``: optional ``(iv_bid, iv_ask)`` (N,) each (NaN: open side); with it the last passes fit the band,
    not the mids (``_band_passes``). ``smoothing`` in [0, 1]: stiffens the penalties on the knot log-slopes
    (``roughness``, default ``ROUGHNESS 10^(6 s)``) and on the forward ATM
    variance (``theta_roughness``, default ``THETA_ROUGHNESS 10^(4 s)``; 0 lets every ``theta_i`` follow its
    quotes); both in units of ``sqrt(sum wt)``. ``y_lo, y_hi`` (n,): quoted ``y``-range per expiry (for
    ``y_quoted``). ``robust``: Cauchy weights in the last pass (scale: three robust standard deviations of the
    weighted residuals, at least ``ROBUST_FLOOR``). ``max_knots``: see ``fit_knots``. ``tol``: a pass stops when
    two iterations in a row lower the cost by less than this (relative); ``max_iter`` iterations per pass.
    Returns ``ESSVIFitResult``; optimiser trouble warns (``ConvergenceWarning``).
    """
    t0 = time.perf_counter()
    Tn = np.asarray(T_nodes, float).ravel()
    y, iv, wt = (np.asarray(a, float).ravel() for a in (y, iv, wt))
    idx = np.asarray(idx, int).ravel()
    n = Tn.size
    if n == 0 or y.size == 0 or not (y.size == iv.size == wt.size == idx.size):
        raise InputError("fit_essvi needs T_nodes and y, iv, wt, idx of one equal length")
    if np.any(np.diff(Tn) <= 0) or np.any(Tn <= 0) or idx.min() < 0 or idx.max() >= n:
        raise InputError("fit_essvi: T_nodes must be positive and increasing and idx index into them")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(iv)) and np.all(iv > 0) and np.all(wt >= 0)):
        raise InputError("fit_essvi: y and iv must be finite (iv > 0) and wt non-negative")
    if np.any(np.bincount(idx, minlength=n) == 0):
        raise InputError("fit_essvi: every expiry needs at least one quote")
    sm = float(np.clip(smoothing, 0.0, 1.0))
    bnd = None
    if band is not None:
        lo, hi = (np.asarray(b, float).ravel() for b in band)
        lo = np.where(np.isfinite(lo), lo, 0.0)
        hi = np.where(np.isfinite(hi), hi, np.inf)
        bnd = (np.minimum(lo, iv), np.maximum(hi, iv))
    th0, P0, M0, kappa = _start(Tn, y, iv, wt, idx)
    knots = fit_knots(np.log(th0), max_knots)
    scale = float(np.sqrt(np.sum(wt)))             # sqrt(N) for mean-one weights
    lam = (ROUGHNESS * 10.0 ** (6.0 * sm) if roughness is None else roughness) * scale
    prob = _Problem(Tn, y, iv, wt, idx, bnd, knots, 100.0 * lam, 10.0 * scale)
    prob.lam_theta = (THETA_ROUGHNESS * 10.0 ** (4.0 * sm) if theta_roughness is None else theta_roughness) * scale
    z = np.zeros(prob.npar)
    z[0] = np.log(th0[0])
    z[1:n] = np.log(np.diff(np.log(th0)))
    z[n], z[n + 1] = np.log(P0), np.log(M0)
    z[n + 2:] = _logit(kappa)
    free = np.ones(prob.npar, bool)
    free[:n] = False
    with np.errstate(all="ignore"), _one_blas_thread():
        # first pass: thetas fixed, stiff log-slopes (an SSVI-like surface); then everything, then robust
        z, nfev, _, _ = _lm(prob, z, max_iter=30, tol=1e-3, free=free)
        prob.lam = lam
        z, it, ok, msg = _lm(prob, z, max_iter=max_iter, tol=tol)
        nfev += it
        # the knots were placed at the starting thetas: move them to the fitted ones (the first knot at the first
        # expiry, so that no expiry falls in the extrapolation), carry the log-slope profile over, refit
        prob, z = _reknot(prob, z, max_knots)
        rw = np.ones_like(y)
        if robust:
            s, lnP, lnM, _ = prob.nodes(z, want_jac=False)
            r, _ = prob.data(s, lnP, lnM, want_jac=False)
            # scale: three robust standard deviations, at least 10 bp of vol for a quote of mean weight
            c = max(3.0 * float(np.median(np.abs(r))) / 0.6745, ROBUST_FLOOR * float(np.sqrt(np.mean(wt))))
            rw = 1.0 / np.sqrt(1.0 + (r / c) ** 2)
            prob.rw = rw
        z, it, ok, msg = _lm(prob, z, max_iter=max_iter, tol=tol)
        nfev += it
        if bnd is not None:
            z, it, ok, msg, rw = _band_passes(prob, z, max_iter=max_iter, tol=tol)
            nfev += it
        n_down = int(np.sum(rw < 0.5))
    knots = prob.t
    s1, h, F0P, F0M, qP, qM = prob.unpack(z)
    theta = np.exp(s1 + np.r_[0.0, np.cumsum(h)])
    curve = ThetaCurve.build(Tn, theta)

    def make(shift):
        return ESSVISurface(T_nodes=tuple(Tn), theta_nodes=tuple(theta),
                            lnP=LogSlopeCurve(tuple(knots), tuple(np.clip(qP, 0, 1)), float(F0P + shift)),
                            lnM=LogSlopeCurve(tuple(knots), tuple(np.clip(qM, 0, 1)), float(F0M + shift)),
                            theta_curve=curve, y_lo=tuple(float(v) for v in y_lo),
                            y_hi=tuple(float(v) for v in y_hi))

    surf = make(0.0)
    chk = surf.butterfly_check()
    scale_b = 1.0
    if chk["max_ratio"] > 1.0:
        # P and M scaled together: the curvature ratio goes with the square, the wing ratio linearly
        scale_b = float(min(1.0 / chk["wing"], 1.0 / np.sqrt(chk["curvature"])) * np.exp(-2 * CHECK_STEP))
        surf = make(np.log(scale_b))
    if not ok:
        warnings.warn(f"eSSVI fit: optimiser stopped: {msg}", ConvergenceWarning, stacklevel=2)
    th, rho, psi, phi = surf.params_at(Tn)
    return ESSVIFitResult(surface=surf, T=Tn, theta=th, rho=rho, psi=psi, phi=phi, theta_start=th0,
                          success=ok, nfev=nfev, message=msg, downweighted=n_down, butterfly_scale=scale_b,
                          seconds=time.perf_counter() - t0, fit_weight=rw)


def fit_essvi_surface(data: SliceData, smoothing: float) -> ModelFit:
    """The ``"essvi"`` method for the dispatcher: ``fit_essvi`` on the grouped quotes, with per-expiry
    ``theta, rho, psi`` (and the raw-SVI slice they make) and the curves of the global fit."""
    Tn = data.T
    r = fit_essvi(Tn, data.y, data.iv, data.weight, data.idx, band=(data.bid, data.ask), smoothing=smoothing,
                  y_lo=data.y_lo, y_hi=data.y_hi)
    params = {}
    for i, k in enumerate(data.keys):
        p = r.slice_params(i)
        params[k] = {**p, "theta_start": float(r.theta_start[i]),
                     "svi": SVISlice.from_ssvi(p["theta"], p["rho"], p["phi"]).to_dict()}
    S = r.surface
    gparams = {"T": [float(t) for t in Tn], "theta": [float(t) for t in r.theta], "rho": [float(v) for v in r.rho],
               "psi": [float(v) for v in r.psi], "knots": list(S.lnP.knots), "slopes_P": list(S.lnP.slopes),
               "slopes_M": list(S.lnM.slopes), "lnP0": S.lnP.F0, "lnM0": S.lnM.F0,
               "theta_curve": type(S.theta_curve).__name__, "nfev": r.nfev, "success": r.success,
               "downweighted": r.downweighted, "butterfly_scale": r.butterfly_scale}
    return ModelFit(surface=S, params=params, global_params=gparams, fit_weight=r.fit_weight)
