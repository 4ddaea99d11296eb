"""Raw SVI per expiry (Gatheral 2004) with butterfly and calendar control.

Slice: ``w(y) = a + b (rho (y - m) + sqrt((y - m)^2 + sigma^2))`` with ``b >= 0``, ``|rho| < 1``,
``sigma > 0`` and ``a + b sigma sqrt(1 - rho^2) >= 0`` (minimum of ``w`` non-negative). The wings are
asymptotically linear with slopes ``b (1 +- rho)``; Roger Lee's moment formula bounds the slope of
total variance by 2, hence ``b (1 + |rho|) <= 2`` (in total variance; Gatheral's ``4 / T`` bound is the
same statement for variance ``w / T``). Both constraints are built into the parametrisation
``x = (v, u, rho, m, sigma)``: ``b = 2 u / (1 + |rho|)`` with ``0 < u <= U_MAX < 1`` and
``a = v - b sigma sqrt(1 - rho^2)`` with ``v`` (the minimum total variance) ``> 0``. ``m`` stays within
0.1 of the quoted range and ``sigma`` below twice its width (``_slice_bounds``).

Fit (``fit_svi_slice``): weighted least squares on implied vols (``scipy.optimize.least_squares``,
Levenberg-Marquardt in unbounded coordinates mapped onto the box (``box_least_squares``), analytic
Jacobian) plus penalty residuals on a dense ``y`` grid: ``max(0, G_MARGIN - g(y))``
(butterfly; ``g`` of Gatheral & Jacquier 2014, Lemma 2.2), ``max(0, vol_prev(y) - vol(y))`` against the
previous expiry (calendar, their Lemma 2.1; slices are fitted in increasing ``T``), ``max(0, vol(y_c) -
vol_cap)`` below the next expiry's ask vols at its quotes (so that an extrapolated wing cannot push the
next slice out of its band) and, with ``smoothing`` s in (0, 1), ``vol(y) - vol_prior(y)`` towards the
SSVI pre-fit slice with weight ``sqrt(s / (1 - s))`` (s = 1 returns the prior). Penalties still violated
after a solve are multiplied by 30 and the solve repeated (up to 4 times); a calendar crossing left
between grid points is removed by lifting ``a``. Starts: the SSVI pre-fit slice and a quasi-explicit one
(Zeliade 2009: for fixed ``m, sigma`` the slice is linear in ``(a, rho b sigma, b sigma)``, solved on a
small ``(m, sigma)`` grid); each gets a short run and the better one is solved to convergence.

Limitation: ``w'' = b sigma^2 / R^3 > 0``, so an SVI slice is convex in ``y``; quotes whose total variance
is locally concave (e.g. the 9-day slice of Andreasen & Huge's example data) cannot be matched closely.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import least_squares

from core.errors import ConvergenceWarning, InputError
from core.surface.base import butterfly_g

U_MAX = 0.995      # b (1 + |rho|) <= 2 U_MAX: strictly inside Lee's bound
G_MARGIN = 1e-4    # butterfly penalty acts below this g
RHO_MAX = 0.999


@dataclass(frozen=True)
class SVISlice:
    """One raw-SVI slice ``w(y) = a + b (rho (y - m) + sqrt((y - m)^2 + sigma^2))`` (total variance)."""

    a: float
    b: float
    rho: float
    m: float
    sigma: float

    def __post_init__(self) -> None:
        vals = (self.a, self.b, self.rho, self.m, self.sigma)
        if not all(np.isfinite(v) for v in vals):
            raise InputError(f"SVI parameters must be finite, got {vals}")
        if self.b < 0 or not (-1 < self.rho < 1) or self.sigma <= 0:
            raise InputError(f"SVI needs b >= 0, |rho| < 1, sigma > 0; got b={self.b}, rho={self.rho}, sigma={self.sigma}")

    def derivs(self, y):
        """``(w, w_y, w_yy)`` at log-moneyness ``y`` (any shape), closed form."""
        y = np.asarray(y, dtype=float)
        d = y - self.m
        R = np.sqrt(d * d + self.sigma**2)
        w = self.a + self.b * (self.rho * d + R)
        w_y = self.b * (self.rho + d / R)
        w_yy = self.b * self.sigma**2 / R**3
        return w, w_y, w_yy

    def w(self, y):
        """Total variance at ``y``."""
        return self.derivs(y)[0]

    def g(self, y):
        """Butterfly density function ``g(y)`` of the slice."""
        w, w_y, w_yy = self.derivs(y)
        return butterfly_g(y, w, w_y, w_yy)

    @property
    def min_w(self) -> float:
        """Minimum of ``w``: ``a + b sigma sqrt(1 - rho^2)``."""
        return self.a + self.b * self.sigma * np.sqrt(1.0 - self.rho**2)

    @classmethod
    def from_ssvi(cls, theta: float, rho: float, phi: float) -> "SVISlice":
        """The raw-SVI form of an SSVI slice (Gatheral & Jacquier 2014, Lemma 3.2):
        ``a = theta (1 - rho^2) / 2``, ``b = theta phi / 2``, ``m = -rho / phi``, ``sigma = sqrt(1 - rho^2) / phi``."""
        return cls(a=0.5 * theta * (1 - rho**2), b=0.5 * theta * phi, rho=rho, m=-rho / phi,
                   sigma=np.sqrt(1 - rho**2) / phi)

    def to_dict(self) -> dict:
        """JSON-able parameters."""
        return {k: float(v) for k, v in asdict(self).items()}


def _to_x(s: SVISlice) -> np.ndarray:
    u = min(max(s.b * (1 + abs(s.rho)) / 2.0, 1e-6), U_MAX)
    return np.array([max(s.min_w, 1e-10), u, np.clip(s.rho, -RHO_MAX, RHO_MAX), s.m, max(s.sigma, 1e-4)])


def _from_x(x) -> SVISlice:
    v, u, rho, m, sig = (float(t) for t in x)
    b = 2.0 * u / (1.0 + abs(rho))
    return SVISlice(a=v - b * sig * np.sqrt(1 - rho * rho), b=b, rho=rho, m=m, sigma=sig)


def quasi_explicit_start(y, w, wt, y_lo: float, y_hi: float) -> SVISlice | None:
    """A raw-SVI start by the quasi-explicit reduction (Zeliade 2009): for fixed ``(m, sigma)``,
    ``w = a + d z + c sqrt(z^2 + 1)`` with ``z = (y - m) / sigma`` is linear in ``(a, d, c)``; best of a
    5 x 6 grid of ``(m, sigma)``, projected onto the parameter constraints. ``None`` if nothing fits."""
    width = max(y_hi - y_lo, 1e-3)
    best, best_cost = None, np.inf
    sw = np.sqrt(wt)
    for m in np.linspace(y_lo + 0.2 * width, y_hi - 0.2 * width, 5):
        for sig in width * np.array([0.02, 0.05, 0.1, 0.2, 0.4, 0.8]):
            z = (y - m) / sig
            A = np.column_stack([np.ones_like(z), z, np.sqrt(z * z + 1)])
            coef, *_ = np.linalg.lstsq(A * sw[:, None], w * sw, rcond=None)
            a, d, c = coef
            if c <= 0:
                continue
            b, rho = c / sig, np.clip(d / c, -RHO_MAX, RHO_MAX)
            b = min(b, 2.0 * U_MAX / (1 + abs(rho)))
            a = max(a, -b * sig * np.sqrt(1 - rho**2) + 1e-8)
            cand = SVISlice(a=a, b=b, rho=float(rho), m=float(m), sigma=float(sig))
            cost = float(np.sum(wt * (cand.w(y) - w) ** 2))
            if cost < best_cost:
                best, best_cost = cand, cost
    return best


def _svi_jac(x, y, want_jac: bool = True):
    """``(w, w', w'')`` of the slice with parameters ``x = (v, u, rho, m, sigma)`` at ``y`` and (when
    ``want_jac``) their Jacobians in ``x`` (each (N, 5)), by the chain rule through ``b = 2u / (1 + |rho|)``,
    ``a = v - b sigma sqrt(1 - rho^2)``."""
    v, u, rho, m, sig = (float(t) for t in x)
    ap = 1.0 + abs(rho)
    b = 2.0 * u / ap
    q = np.sqrt(1.0 - rho * rho)
    a = v - b * sig * q
    d = y - m
    R = np.sqrt(d * d + sig * sig)
    iR = 1.0 / R
    iR3 = iR**3
    dR = d * iR
    w = a + b * (rho * d + R)
    w1 = b * (rho + dR)
    w2 = b * sig * sig * iR3
    if not want_jac:
        return (w, w1, w2), None
    sgn = np.sign(rho)
    db_du, db_drho = 2.0 / ap, -2.0 * u * sgn / ap**2
    da_du, da_drho, da_dsig = -db_du * sig * q, -(db_drho * sig * q - b * sig * rho / q), -b * q
    n = len(y)
    J0, J1, J2 = np.empty((n, 5)), np.empty((n, 5)), np.empty((n, 5))
    # w: raw partials (1, rho d + R, b d, -b (rho + d/R), b sigma / R) in (a, b, rho, m, sigma)
    f_b = rho * d + R
    J0[:, 0] = 1.0
    J0[:, 1] = da_du + f_b * db_du
    J0[:, 2] = da_drho + f_b * db_drho + b * d
    J0[:, 3] = -w1
    J0[:, 4] = da_dsig + b * sig * iR
    # w': (0, rho + d/R, b, -b sigma^2 / R^3, -b d sigma / R^3)
    f_b = rho + dR
    J1[:, 0] = 0.0
    J1[:, 1] = f_b * db_du
    J1[:, 2] = f_b * db_drho + b
    J1[:, 3] = -b * sig * sig * iR3
    J1[:, 4] = -b * d * sig * iR3
    # w'': (0, sigma^2 / R^3, 0, 3 b sigma^2 d / R^5, b sigma (2 / R^3 - 3 sigma^2 / R^5))
    f_b = sig * sig * iR3
    iR5 = iR3 * iR * iR
    J2[:, 0] = 0.0
    J2[:, 1] = f_b * db_du
    J2[:, 2] = f_b * db_drho
    J2[:, 3] = 3.0 * b * sig * sig * d * iR5
    J2[:, 4] = b * sig * (2.0 * iR3 - 3.0 * sig * sig * iR5)
    return (w, w1, w2), (J0, J1, J2)


def _g_partials(y, w, w1):
    """Partials of ``butterfly_g`` in ``w`` and ``w'`` (``dg/dw'' = 1/2``)."""
    A = 1.0 - y * w1 / (2.0 * w)
    g_w = A * y * w1 / (w * w) + w1 * w1 / (4.0 * w * w)
    g_w1 = -A * y / w - w1 / (2.0 * w) - w1 / 8.0
    return g_w, g_w1


class _Box:
    """Smooth map from unbounded ``z`` to the box ``[lb, ub]``: ``lb + (ub - lb) sigmoid(z)`` for finite
    bounds, ``lb + exp(z)`` for a lower bound only, identity when unbounded. Levenberg-Marquardt in ``z``
    (MINPACK's own QR) avoids the LAPACK SVD of the bounded trust-region solver, which is slow under
    multithreaded BLAS on small problems."""

    def __init__(self, lb, ub):
        self.lb, self.ub = np.asarray(lb, float), np.asarray(ub, float)
        self.both = np.isfinite(self.lb) & np.isfinite(self.ub)
        self.low = np.isfinite(self.lb) & ~np.isfinite(self.ub)

    def x(self, z):
        sig = 0.5 * (1.0 + np.tanh(0.5 * z))
        span = np.where(self.both, self.ub - self.lb, 1.0)
        return np.where(self.both, self.lb + span * sig,
                        np.where(self.low, np.where(self.low, self.lb, 0.0) + np.exp(np.minimum(z, 700.0)), z))

    def dx(self, z):
        sig = 0.5 * (1.0 + np.tanh(0.5 * z))
        span = np.where(self.both, self.ub - self.lb, 1.0)
        return np.where(self.both, span * sig * (1.0 - sig), np.where(self.low, np.exp(np.minimum(z, 700.0)), 1.0))

    def z(self, x):
        span = np.where(self.both, self.ub - self.lb, 1.0)
        eps = 1e-9
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.clip((x - self.lb) / span, eps, 1.0 - eps)
            zb = np.log(t / (1.0 - t))
            zl = np.log(np.maximum(x - np.where(self.low, self.lb, 0.0), 1e-300))
        return np.where(self.both, zb, np.where(self.low, np.maximum(zl, -690.0), x))


def box_least_squares(fun, x0, lb, ub, *, jac=None, args=(), max_nfev: int = 200, tol: float = 1e-8):
    """``least_squares`` over the box ``[lb, ub]`` by Levenberg-Marquardt in unbounded coordinates (``_Box``).
    ``jac(x, *args)`` in ``x`` is chained through the map; without it MINPACK differences. Returns
    ``(x, nfev, ok, message)``."""
    box = _Box(lb, ub)
    z0 = box.z(np.clip(np.asarray(x0, float), lb, ub))
    fz = lambda z, *a: fun(box.x(z), *a)  # noqa: E731
    jz = (lambda z, *a: jac(box.x(z), *a) * box.dx(z)[None, :]) if jac is not None else "2-point"  # noqa: E731
    sol = least_squares(fz, z0, jac=jz, args=args, method="lm", x_scale="jac", xtol=tol, ftol=tol, gtol=tol,
                        max_nfev=max_nfev)
    return box.x(sol.x), int(sol.nfev), bool(sol.status > 0), str(sol.message)


class _Block:
    """Least-squares objective of consecutive slices: vol residuals, butterfly penalty on each slice's
    grid, calendar penalties between neighbours (and against fixed ``lower`` / ``upper`` slices at the
    ends), optional prior penalty. Analytic dense Jacobian."""

    def __init__(self, data, grids, Ts, *, lower=None, upper=None, upper_grid=None, priors=None, k_prior=0.0,
                 caps=None):
        self.data, self.grids, self.Ts = data, [np.asarray(g, float) for g in grids], list(Ts)
        self.n = len(data)
        self.scales = [np.sqrt(len(d[0]) / len(g)) * float(np.sqrt(np.mean(d[2] ** 2)))
                       for d, g in zip(data, self.grids, strict=False)]
        self.w_lower = lower.derivs(self.grids[0])[0] if lower is not None else None
        self.upper_grid = np.asarray(upper_grid, float) if upper is not None else None
        self.w_upper = upper.derivs(self.upper_grid)[0] if upper is not None else None
        self.caps = caps or [None] * self.n
        self.k_prior = k_prior
        self.v_prior = [np.sqrt(np.maximum(p.w(g), 0.0) / T) if (p is not None and k_prior > 0) else None
                        for p, g, T in zip(priors or [None] * self.n, self.grids, self.Ts, strict=False)]

    def _parts(self, X, kg, kc, want_jac):
        n = self.n
        rows, jrows = [], []

        def add(r, cols=None):
            rows.append(r)
            if want_jac:
                J = np.zeros((len(r), 5 * n))
                for i, Ji in (cols or []):
                    J[:, 5 * i: 5 * i + 5] += Ji
                jrows.append(J)

        for i in range(n):
            x = X[5 * i: 5 * i + 5]
            y, iv, wt = self.data[i]
            T, yg, sc = self.Ts[i], self.grids[i], self.scales[i]
            (w, _, _), J = _svi_jac(x, y, want_jac)
            Jw = J[0] if want_jac else None
            wq = np.maximum(w, 1e-12)
            vq = np.sqrt(wq / T)
            sq = np.sqrt(wt)
            add(sq * (vq - iv), [(i, (sq / (2.0 * np.sqrt(wq * T)))[:, None] * Jw)] if want_jac else None)
            (wg, wg1, wg2), J = _svi_jac(x, yg, want_jac)
            Jg0, Jg1, Jg2 = J if want_jac else (None, None, None)
            wp = np.maximum(wg, 1e-12)
            g = butterfly_g(yg, wp, wg1, wg2)
            act = (G_MARGIN - g) > 0
            if want_jac:
                g_w, g_w1 = _g_partials(yg, wp, wg1)
                Jg = -(kg * sc) * act[:, None] * (g_w[:, None] * Jg0 + g_w1[:, None] * Jg1 + 0.5 * Jg2)
            add(kg * sc * np.maximum(0.0, G_MARGIN - g), [(i, Jg)] if want_jac else None)
            vg = np.sqrt(wp / T)
            dvg = (1.0 / (2.0 * np.sqrt(wp * T)))[:, None] * Jg0 if want_jac else None
            if i > 0 or self.w_lower is not None:
                if i > 0:
                    (wl, _, _), J = _svi_jac(X[5 * i - 5: 5 * i], yg, want_jac)
                    Jl = J[0] if want_jac else None
                else:
                    wl, Jl = self.w_lower, None
                wl = np.maximum(wl, 1e-12)
                vl = np.sqrt(wl / T)
                r = vl + 1e-5 - vg
                a_ = (r > 0)[:, None]
                cols = None
                if want_jac:
                    cols = [(i, -(kc * sc) * a_ * dvg)]
                    if Jl is not None:
                        cols.append((i - 1, (kc * sc) * a_ * (1.0 / (2.0 * np.sqrt(wl * T)))[:, None] * Jl))
                add(kc * sc * np.maximum(0.0, r), cols)
            if i == n - 1 and self.w_upper is not None:
                (wu, _, _), J = _svi_jac(x, self.upper_grid, want_jac)
                Ju = J[0] if want_jac else None
                wu = np.maximum(wu, 1e-12)
                r = np.sqrt(wu / T) + 1e-5 - np.sqrt(np.maximum(self.w_upper, 0.0) / T)
                a_ = (r > 0)[:, None]
                add(kc * sc * np.maximum(0.0, r),
                    [(i, (kc * sc) * a_ * (1.0 / (2.0 * np.sqrt(wu * T)))[:, None] * Ju)] if want_jac else None)
            if self.caps[i] is not None:
                yc, wc = self.caps[i]
                (wk, _, _), J = _svi_jac(x, yc, want_jac)
                Jk = J[0] if want_jac else None
                wk = np.maximum(wk, 1e-12)
                r = np.sqrt(wk / T) - np.sqrt(wc / T)
                a_ = (r > 0)[:, None]
                add(kc * sc * np.maximum(0.0, r),
                    [(i, (kc * sc) * a_ * (1.0 / (2.0 * np.sqrt(wk * T)))[:, None] * Jk)] if want_jac else None)
            if self.v_prior[i] is not None:
                kp = self.k_prior * sc
                add(kp * (vg - self.v_prior[i]), [(i, kp * dvg)] if want_jac else None)
        if want_jac:
            return np.vstack(jrows)
        return np.concatenate(rows)

    def resid(self, X, kg, kc):
        return self._parts(X, kg, kc, False)

    def jac(self, X, kg, kc):
        return self._parts(X, kg, kc, True)

    def violations(self, X):
        """``(min g, largest calendar shortfall in w)`` over the block's grids."""
        g_min, gap = np.inf, -np.inf
        for i in range(self.n):
            yg = self.grids[i]
            wg, wg1, wg2 = _svi_jac(X[5 * i: 5 * i + 5], yg, False)[0]
            g_min = min(g_min, float(np.min(butterfly_g(yg, np.maximum(wg, 1e-12), wg1, wg2))))
            if i > 0:
                gap = max(gap, float(np.max(_svi_jac(X[5 * i - 5: 5 * i], yg, False)[0][0] - wg)))
            elif self.w_lower is not None:
                gap = max(gap, float(np.max(self.w_lower - wg)))
            if i == self.n - 1 and self.w_upper is not None:
                gap = max(gap, float(np.max(_svi_jac(X[5 * i: 5 * i + 5], self.upper_grid, False)[0][0] - self.w_upper)))
        return g_min, gap

    def solve(self, X0, lb, ub, max_rounds: int = 4, max_nfev: int = 200):
        """Bounded trust-region least squares; penalties x30 while violated. Returns ``(X, nfev, ok, msg)``."""
        kg, kc = 10.0, 10.0
        X, nfev, ok, msg = np.clip(X0, lb, ub), 0, True, ""
        for _ in range(max_rounds):
            X, nf, ok, msg = box_least_squares(self.resid, X, lb, ub, jac=self.jac, args=(kg, kc),
                                               max_nfev=max_nfev, tol=1e-7)
            nfev += nf
            g_min, gap = self.violations(X)
            if g_min >= 0 and gap <= 0:
                break
            kg, kc = kg * (30.0 if g_min < 0 else 1.0), kc * (30.0 if gap > 0 else 1.0)
        return X, nfev, ok, str(msg)

    def cost(self, X) -> float:
        return float(np.sum(self.resid(X, 10.0, 10.0) ** 2))


def _slice_bounds(y) -> tuple[np.ndarray, np.ndarray]:
    """Box for ``x = (v, u, rho, m, sigma)``. ``m`` (where the smile turns) stays within 0.1 of the
    quoted range and ``sigma`` below twice its width: beyond that the data see one branch of the
    hyperbola only, the fit degenerates (a valley in which the unquoted wing runs to Lee's bound)."""
    y_lo, y_hi = float(np.min(y)), float(np.max(y))
    width = max(y_hi - y_lo, 0.05)
    return (np.array([1e-10, 1e-6, -RHO_MAX, y_lo - 0.1, 1e-4]),
            np.array([np.inf, U_MAX, RHO_MAX, y_hi + 0.1, 2.0 * width]))


@dataclass(frozen=True)
class SliceFitInfo:
    """Diagnostics of one slice fit: optimiser status, remaining penalties, start used."""

    success: bool
    nfev: int
    message: str
    g_min: float
    calendar_gap: float
    start: str
    lifted: float


def fit_svi_slice(y, iv, wt, T: float, *, y_grid, start: SVISlice | None = None, prev=None, nxt=None,
                  nxt_grid=None, cap=None, prior: SVISlice | None = None,
                  smoothing: float = 0.0) -> tuple[SVISlice, SliceFitInfo]:
    """Fit one raw-SVI slice to implied vols with butterfly / calendar / prior penalties (module docstring).

    ``y, iv, wt`` (N,): log-moneyness, mid implied vols, weights (mean about 1; residuals in vol units);
    ``T`` years; ``y_grid`` (M,): where the penalties are evaluated; ``prev``: the previous expiry's slice
    (anything with ``derivs``) for the calendar penalty from below; ``nxt``: the next expiry's slice, from
    above, on ``nxt_grid``; ``cap``: ``(y_c, w_c)`` upper bounds on ``w`` (the next expiry's ask total
    variances at its quotes: a slice that rose above them would force the next one out of its band);
    ``prior``: the SSVI pre-fit slice (start and
    smoothing target). Both starts (prior, quasi-explicit) are solved; the lower cost wins.
    Returns the slice and a ``SliceFitInfo``.
    """
    y, iv, wt = (np.asarray(a, float) for a in (y, iv, wt))
    yg = np.asarray(y_grid, float)
    s = float(np.clip(smoothing, 0.0, 1.0))
    if prior is not None and s >= 1.0:
        return prior, SliceFitInfo(True, 0, "smoothing = 1: the SSVI slice", float(np.min(prior.g(yg))), 0.0,
                                   "prior", 0.0)
    k_prior = np.sqrt(s / (1.0 - s)) if (prior is not None and s > 0) else 0.0
    block = _Block([(y, iv, wt)], [yg], [T], lower=prev, upper=nxt, upper_grid=nxt_grid, priors=[prior],
                   k_prior=k_prior, caps=[cap])
    lb, ub = _slice_bounds(y)
    starts = []
    if start is not None:
        starts.append(("ssvi", _to_x(start)))
    y_lo, y_hi = float(np.min(y)), float(np.max(y))
    qe = quasi_explicit_start(y, iv * iv * T, wt / np.maximum(2 * iv * T, 1e-12) ** 2, y_lo, y_hi) if len(y) >= 4 else None
    if qe is not None:
        starts.append(("quasi-explicit", _to_x(qe)))
    if not starts:
        atm = float(np.interp(0.0, np.sort(y), (iv * iv * T)[np.argsort(y)]))
        starts.append(("flat", np.array([max(atm, 1e-6), 0.05, -0.3, 0.0, 0.1])))
    # a short run from every start, then the best one to convergence
    best = None
    nfev = 0
    for name, x0 in starts:
        X, nf, ok, msg = block.solve(x0, lb, ub, max_rounds=1, max_nfev=15)
        nfev += nf
        if best is None or block.cost(X) < best[0]:
            best = (block.cost(X), name, X)
    _, best_name, X = best
    x0, nf, ok, msg = block.solve(X, lb, ub)
    nfev += nf
    sl = _from_x(x0)
    lifted, gap = 0.0, -np.inf
    if prev is not None:
        # the penalty grid can miss a crossing between its points: check on a fine grid
        yf = np.linspace(yg[0], yg[-1], 20 * len(yg))
        w_prev = prev.derivs(yf)[0]
        gap = float(np.max(w_prev - sl.w(yf)))
        if gap > 0:
            lifted = gap + 1e-10
            sl = SVISlice(a=sl.a + lifted, b=sl.b, rho=sl.rho, m=sl.m, sigma=sl.sigma)
        gap = float(np.max(w_prev - sl.w(yf)))
    g_min = float(np.min(sl.g(np.linspace(yg[0], yg[-1], 10 * len(yg)))))
    if not ok:
        warnings.warn(f"SVI slice T={T:.4f}: optimiser stopped: {msg}", ConvergenceWarning, stacklevel=2)
    return sl, SliceFitInfo(ok, nfev, str(msg), g_min, gap, best_name, lifted)
