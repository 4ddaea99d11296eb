"""Whole-surface power-law SSVI fit (Gatheral & Jacquier 2014), free of static arbitrage by construction.

Model: ``core.surface.ssvi`` (``w = theta/2 (1 + rho phi y + sqrt((phi y + rho)^2 + 1 - rho^2))``,
``phi = eta / (theta^gamma (1 + theta)^(1 - gamma))``). The constraints of their Remark 4.4 are
built into the parameters: ``gamma`` in ``[GAMMA_MIN, 1/2]``, ``eta = 2 u / (1 + |rho|)`` with
``u`` in ``(0, 1]`` (so ``eta (1 + |rho|) <= 2``), and the ATM total variances at the expiries as
``theta_1 > 0`` plus non-negative increments (non-decreasing ``theta``).

Theta curve between and beyond the expiries (``ThetaBackbone``): local vol needs ``dtheta/dT``, so the
curve must be smooth as well as monotone. A parametric term structure ``ThetaParametric``
(``theta_par(T) = v_inf T + (v0 - v_inf)(1 - e^{-kappa T}) / kappa``) is fitted to the per-expiry thetas
by relative least squares; the residuals ``theta_i - theta_par(T_i)`` are interpolated by the spline in
``sqrt(T)`` of ``core.surface.interp.TInterp`` (zero slope at the last expiry, constant beyond; before the
first expiry the cubic from the origin of ``TInterp``), and ``theta = theta_par + correction`` passes through
every fitted theta. Beyond the last expiry the forward ATM variance is the parametric one (``-> v_inf``).
If the combined curve would decrease anywhere (``dtheta/dT < 0`` on a dense check grid: 64 points per
interval), the monotone spline of ``core.surface.interp.MonotoneThetaCurve`` through the thetas is used
instead (also with fewer than 3 expiries or when the parametric fit fails). On exact SSVI data with a
``ThetaParametric`` term structure the backbone is the generating curve (local vol error < 0.1 bp on the
9-expiry check grid, against 3.3 bp for the monotone spline alone and 19 bp for monotone PCHIP slopes).

Steps: (1) ``theta`` per expiry from the quotes near the money (weighted quadratic in ``y`` of the
mid total variance), made non-decreasing by isotonic regression (pool adjacent violators);
(2) ``rho, u, gamma`` by bounded weighted least squares on implied vols with those thetas fixed
(three starts); (3) all parameters jointly. Both by Levenberg-Marquardt in unbounded coordinates
(``core.surface.svi.box_least_squares``: a sigmoid / exp map onto the bounds).

Smoothing ``s`` in [0, 1]: the parametric term structure fitted to the step-(1) thetas; step (3) adds
residuals ``sqrt(s / (1 - s)) c (theta_i / theta_par(T_i) - 1)`` (``c`` puts a relative theta error on the
scale of a vol error) pulling the thetas towards it; at ``s = 1`` the surface uses the parametric curve
itself and only ``rho, eta, gamma`` are fitted.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import numpy as np

from core.errors import ConvergenceWarning, InputError
from core.surface.base import ModelFit, SliceData
from core.surface.interp import MonotoneThetaCurve, TInterp, quoted_y_range
from core.surface.ssvi import SSVISurface, ThetaParametric, power_law_phi, ssvi_slice
from core.surface.svi import SVISlice, box_least_squares

GAMMA_MIN = 1e-3
RHO_MAX = 0.999


@dataclass(frozen=True)
class FittedSSVISurface(SSVISurface):
    """An ``SSVISurface`` that knows its quoted ranges: ``y_quoted(T)`` interpolates the quoted
    ``y``-range per expiry (``T_nodes``, ``y_lo``, ``y_hi``) linearly in ``T``."""

    T_nodes: tuple = field(default=())
    y_lo: tuple = field(default=())
    y_hi: tuple = field(default=())

    def y_quoted(self, T):
        """Quoted ``y``-range at ``T``."""
        if not self.T_nodes:
            return super().y_quoted(T)
        return quoted_y_range(T, self.T_nodes, self.y_lo, self.y_hi)


def isotonic(values, weights=None) -> np.ndarray:
    """Non-decreasing least-squares fit (pool adjacent violators)."""
    v = np.asarray(values, float)
    wts = np.ones_like(v) if weights is None else np.asarray(weights, float)
    blocks: list[list[float]] = []  # [value, weight, count]
    for x, wt in zip(v, wts, strict=False):
        blocks.append([x, wt, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            x2, w2, n2 = blocks.pop()
            x1, w1, n1 = blocks.pop()
            blocks.append([(x1 * w1 + x2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return np.concatenate([np.full(n, x) for x, _, n in blocks])


def atm_total_variance(y, w, wt) -> float:
    """ATM total variance of one slice from its quotes: weighted quadratic in ``y`` over the quotes
    nearest the money (at least 3, about a third of them), evaluated at ``y = 0``; with fewer quotes
    or no bracket of the money, the nearest quotes' linear interpolation / value."""
    y, w, wt = (np.asarray(a, float) for a in (y, w, wt))
    order = np.argsort(np.abs(y))
    k = min(len(y), max(5, len(y) // 3))
    sel = order[:k]
    if k >= 3 and np.ptp(y[sel]) > 0 and y[sel].min() < 0 < y[sel].max():
        A = np.column_stack([np.ones(k), y[sel], y[sel] ** 2]) * np.sqrt(wt[sel])[:, None]
        coef, *_ = np.linalg.lstsq(A, w[sel] * np.sqrt(wt[sel]), rcond=None)
        if coef[0] > 0 and coef[0] <= 1.5 * w[sel].max():
            return float(coef[0])
    srt = np.argsort(y)
    return float(max(np.interp(0.0, y[srt], w[srt]), 1e-8))


def fit_theta_parametric(T, theta) -> ThetaParametric:
    """``ThetaParametric`` fitted to thetas ``theta`` (n,) at ``T`` (n,) by relative least squares
    ``theta_par(T_i) / theta_i - 1`` (log-parameters in a box that keeps it valid; three starts of
    ``kappa``, the best one kept)."""
    T, theta = np.asarray(T, float), np.asarray(theta, float)
    v_atm = theta / T
    if T.size < 3:  # three parameters need three thetas: flat ATM vol through their mean
        v = float(np.mean(v_atm))
        return ThetaParametric(v, v, 1.0)

    def res(x):
        tp = ThetaParametric(*np.exp(x))
        return tp.theta(T) / theta - 1.0

    lb, ub = np.log([1e-6, 1e-6, 1e-3]), np.log([25.0, 25.0, 200.0])
    best = None
    for kappa in (0.5, 2.0, 8.0):
        x0 = np.clip(np.log([v_atm[0], v_atm[-1], kappa]), lb + 1e-6, ub - 1e-6)
        x, *_ = box_least_squares(res, x0, lb, ub, tol=1e-12)
        cost = float(np.sum(res(x) ** 2))
        if best is None or cost < best[0]:
            best = (cost, x)
    return ThetaParametric(*np.exp(best[1]))


@dataclass(frozen=True)
class ThetaBackbone:
    """ATM total variance ``theta(T) = theta_par(T) + c(T)`` (module docstring): ``par`` a ``ThetaParametric``,
    ``c`` the spline in ``sqrt(T)`` through the residuals ``theta_i - theta_par(T_i)`` at ``T_nodes`` (zero
    slope at the last node, constant beyond; the cubic from the origin before the first).
    ``theta`` passes through ``theta_nodes``; ``dtheta`` is analytic. Use ``ThetaBackbone.build`` to get
    the monotone fallback when the combined curve would decrease."""

    T_nodes: tuple
    theta_nodes: tuple
    par: ThetaParametric

    def __post_init__(self) -> None:
        T = np.asarray(self.T_nodes, float)
        th = np.asarray(self.theta_nodes, float)
        if T.ndim != 1 or len(T) == 0 or len(T) != len(th) or not np.all(np.isfinite(th)):
            raise InputError("ThetaBackbone needs finite T_nodes and theta_nodes of one equal length >= 1")
        object.__setattr__(self, "T_nodes", tuple(float(x) for x in T))
        object.__setattr__(self, "theta_nodes", tuple(float(x) for x in th))

    @functools.cached_property
    def _scheme(self) -> TInterp:
        return TInterp(np.asarray(self.T_nodes), clamped_end=True)

    @functools.cached_property
    def _resid(self) -> np.ndarray:
        return np.asarray(self.theta_nodes) - self.par.theta(np.asarray(self.T_nodes))

    def theta(self, T):
        """ATM total variance at ``T`` (years); broadcasts."""
        return self.par.theta(T) + self._scheme.curve(self._resid, T)[0]

    def dtheta(self, T):
        """``d theta / dT`` at ``T`` (analytic)."""
        return self.par.dtheta(T) + self._scheme.curve(self._resid, T)[1]

    def min_dtheta(self, per_interval: int = 64) -> float:
        """Smallest ``dtheta/dT`` on a check grid: ``per_interval`` points in ``sqrt(T)`` on ``[0, T_1]`` and
        on every interval between expiries (beyond the last expiry ``dtheta = dtheta_par > 0``)."""
        s = np.r_[0.0, np.sqrt(self.T_nodes)]
        u = np.linspace(0.0, 1.0, per_interval + 1)
        grid = (s[:-1, None] + np.diff(s)[:, None] * u[None, :]).ravel() ** 2
        return float(np.min(self.dtheta(np.maximum(grid, 1e-12))))

    @staticmethod
    def build(T_nodes, theta_nodes):
        """The backbone through ``theta_nodes`` (n,) at ``T_nodes`` (n,), or ``MonotoneThetaCurve`` when it
        would decrease somewhere, when ``n < 3`` or when the parametric fit fails (module docstring)."""
        T, th = np.asarray(T_nodes, float), np.asarray(theta_nodes, float)
        if len(T) >= 3:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    curve = ThetaBackbone(tuple(T), tuple(th), fit_theta_parametric(T, th))
                    if curve.min_dtheta() >= 0.0:
                        return curve
            except (InputError, ValueError, FloatingPointError, np.linalg.LinAlgError):
                pass
        return MonotoneThetaCurve(tuple(T), tuple(th))


@dataclass(frozen=True)
class SSVIFitResult:
    """What ``fit_ssvi`` returns: the surface, its parameters and the optimiser's diagnostics."""

    surface: FittedSSVISurface
    rho: float
    eta: float
    gamma: float
    thetas: np.ndarray
    theta_start: np.ndarray
    success: bool
    nfev: int
    message: str


def fit_ssvi(T_nodes, y, iv, wt, idx, *, smoothing: float = 0.0, y_lo=(), y_hi=()) -> SSVIFitResult:
    """Fit power-law SSVI to implied vols of several expiries at once (module docstring).

    ``T_nodes`` (n,) increasing expiries (years); ``y, iv, wt, idx`` (N,): log-moneyness, mid implied
    vol, weight (residuals in vol units times ``sqrt(wt)``), index of the quote's expiry in ``T_nodes``.
    ``y_lo, y_hi`` (n,): quoted ``y``-range per expiry (for ``y_quoted``). Returns ``SSVIFitResult``.
    """
    Tn = np.asarray(T_nodes, float)
    y, iv, wt = (np.asarray(a, float) for a in (y, iv, wt))
    idx = np.asarray(idx, int)
    n = len(Tn)
    Tq = Tn[idx]
    w_mid = iv * iv * Tq
    sq = np.sqrt(wt)
    s = float(np.clip(smoothing, 0.0, 1.0))
    th0 = np.array([atm_total_variance(y[idx == i], w_mid[idx == i], wt[idx == i]) for i in range(n)])
    nq = np.array([np.sum(idx == i) for i in range(n)], float)
    th0 = np.maximum(isotonic(th0, nq), 1e-8)
    par = fit_theta_parametric(Tn, th0) if (s > 0 and n >= 1) else None
    if par is not None and s >= 1.0:
        th_fixed = par.theta(Tn)
    else:
        th_fixed = th0

    def model_vol(rho, u, gamma, theta_q):
        eta = 2.0 * u / (1.0 + abs(rho))
        phi, _ = power_law_phi(theta_q, eta, gamma)
        w = ssvi_slice(y, theta_q, rho, phi)[0]
        return np.sqrt(np.maximum(w, 1e-14) / Tq)

    def res_shape(x, theta):
        return sq * (model_vol(x[0], x[1], x[2], theta[idx]) - iv)

    lb3, ub3 = np.array([-RHO_MAX, 1e-4, GAMMA_MIN]), np.array([RHO_MAX, 1.0, 0.5])
    best = None
    nfev = 0
    for x0 in ([-0.5, 0.5, 0.3], [-0.2, 0.2, 0.45], [-0.8, 0.8, 0.1]):
        x, nf, ok_, msg_ = box_least_squares(res_shape, np.array(x0), lb3, ub3, args=(th_fixed,), max_nfev=300)
        nfev += nf
        cost = float(np.sum(res_shape(x, th_fixed) ** 2))
        if best is None or cost < best[0]:
            best = (cost, x, ok_, msg_)
    _, x_shape, ok, msg = best
    if par is not None and s >= 1.0:
        thetas = th_fixed
        curve = par
    else:
        k_s = np.sqrt(s / (1.0 - s)) * 0.1 * np.sqrt(len(y) / n) * float(np.sqrt(np.mean(wt))) if s > 0 else 0.0
        th_par = par.theta(Tn) if par is not None else None

        def unpack(x):
            return x[:3], np.cumsum(x[3:])

        def res_all(x):
            shp, th = unpack(x)
            r = res_shape(shp, th)
            if k_s:
                r = np.concatenate([r, k_s * (th / th_par - 1.0)])
            return r

        # increments start strictly inside (0, inf): the box map reaches 0 only asymptotically
        x0 = np.r_[x_shape, th0[0], np.maximum(np.diff(th0), 1e-6 * th0[-1])]
        lb = np.r_[lb3, 1e-10, np.zeros(n - 1)]
        ub = np.r_[ub3, np.full(n, np.inf)]
        x, nf, ok, msg = box_least_squares(res_all, np.clip(x0, lb, ub), lb, ub, max_nfev=200 * (n + 3))
        nfev += nf
        x_shape, thetas = unpack(x)
        thetas = np.maximum.accumulate(np.maximum(thetas, 1e-10))
        curve = ThetaBackbone.build(Tn, thetas)
    rho, u, gamma = (float(v) for v in x_shape)
    eta = 2.0 * u / (1.0 + abs(rho))
    if not ok:
        warnings.warn(f"SSVI fit: optimiser stopped: {msg}", ConvergenceWarning, stacklevel=2)
    surf = FittedSSVISurface(rho=rho, eta=eta, gamma=gamma, theta_curve=curve,
                             T_quoted=(float(Tn[0]), float(Tn[-1])), T_nodes=tuple(float(t) for t in Tn),
                             y_lo=tuple(float(v) for v in y_lo), y_hi=tuple(float(v) for v in y_hi))
    return SSVIFitResult(surface=surf, rho=rho, eta=eta, gamma=gamma, thetas=np.asarray(thetas, float),
                         theta_start=th0, success=ok, nfev=nfev, message=str(msg))


def fit_ssvi_surface(data: SliceData, smoothing: float) -> ModelFit:
    """The ``"ssvi"`` method for the dispatcher: ``fit_ssvi`` on the grouped quotes, with per-expiry parameters
    (``theta, phi`` and the raw-SVI slice they make) and the global ``rho, eta, gamma``."""
    Tn = data.T
    r = fit_ssvi(Tn, data.y, data.iv, data.weight, data.idx, smoothing=smoothing, y_lo=data.y_lo, y_hi=data.y_hi)
    params = {}
    for i, k in enumerate(data.keys):
        th = float(r.surface.theta_curve.theta(Tn[i]))
        phi = float(r.surface.phi(th))
        params[k] = {"T": float(Tn[i]), "theta": th, "theta_start": float(r.theta_start[i]), "phi": phi,
                     "rho": r.rho, "eta": r.eta, "gamma": r.gamma, "svi": SVISlice.from_ssvi(th, r.rho, phi).to_dict()}
    gparams = {"rho": r.rho, "eta": r.eta, "gamma": r.gamma, "T": [float(t) for t in Tn],
               "theta": [float(t) for t in r.thetas], "theta_curve": type(r.surface.theta_curve).__name__,
               "nfev": r.nfev, "success": r.success}
    return ModelFit(surface=r.surface, params=params, global_params=gparams)
