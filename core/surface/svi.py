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

Spline correction (the ``"svi"`` method of ``fit_surface``). ``w'' = b sigma^2 / R^3 > 0``: a raw-SVI slice is
convex in ``y``, and quotes whose total variance is locally concave (the 9-day slice of Andreasen & Huge's
data at ``y = 0.078 .. 0.111``: no convex slice within 15 bp) cannot be matched. So each slice is the SVI
backbone above plus ``c(y) = sum_j d_j B_j(y)`` (``SVISplineSlice``): cubic B-splines on uniform knots, one
segment per quote over the quoted range (at most ``CORR_SEG_MAX``) and ``CORR_EXT`` more each side, whose
support ends there, so beyond it the slice is SVI exactly (Lee-bounded linear wings). With the backbone
fixed, ``d`` minimises (Levenberg-Marquardt, analytic Jacobian) the distance of the fitted vols from a
target band around each mid (a dead zone: ``max(CORR_TOL, CORR_BAND x half the bid/ask vol spread)``, so
the correction fixes what SVI leaves outside the band and nothing else) plus ``lam ||Delta^2 d||^2`` (in vol
units), a small ridge, a curvature penalty beyond the quotes (``LAM_OUT``: the correction fades out
smoothly) and penalties for ``g < G_MARGIN_CORR`` on a grid refined to ``G_PER_SEG`` points per knot
segment, for falling below the previous expiry and for rising above the caps; slices with at most
``SLSQP_MAX_QUOTES`` quotes are then solved with the same terms as explicit constraints (SLSQP, warm start).
The correction is kept when it lowers the data term by ``CORR_MIN_GAIN`` and leaves ``g >= 0`` on a fine
grid (where the backbone's own far wing already has ``g < 0`` it must not make it worse); else the plain
SVI slice stays. Smoothing ``s``: ``lam = 10^(LAM_LOG0 + LAM_DECADES s)`` (``correction_lambda``): ``s = 0``
follows the quotes as closely as the butterfly/calendar conditions allow, larger ``s`` flattens the
correction towards pure SVI, and at ``s = 1`` the slice is the SSVI pre-fit slice itself (no correction).

Across expiries (``CorrectedSliceSurface``): the backbones are joined by ``core.surface.interp.SliceSurface``
and the corrections locally, ``C = (1 - u) c_k + u c_{k+1}``, ``u = 3 t^2 - 2 t^3``, so a correction that
one expiry needs is not carried into other intervals (a spline in ``T`` overshoots, and ``g`` with it).
``core.surface.fit`` checks the whole surface and halves (then removes) the corrections next to any
remaining ``g < 0`` / ``w_T < 0``.

Speed: the backbone is evaluated once per call for all point sets and memoised while the correction is
solved; penalty rows far from activity (``MASK_G``, ``MASK_V``) are left out of the least-squares problems
between penalty rounds (the QR costs ``m n^2``); SLSQP gets the near-active constraints only and adds any
it then violates.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy.interpolate import BSpline
from scipy.optimize import least_squares

from core.errors import ConvergenceWarning, InputError
from core.surface.base import Derivatives, VolSurface, butterfly_g

U_MAX = 0.995      # b (1 + |rho|) <= 2 U_MAX: strictly inside Lee's bound
G_MARGIN = 1e-4    # butterfly penalty acts below this g
RHO_MAX = 0.999
SVI_TOL = 1e-7      # Levenberg-Marquardt xtol = ftol = gtol of the backbone
SVI_MAX_NFEV = 60   # backbone solve, per penalty round (the correction takes what it leaves)
# spline correction (see the module docstring)
CORR_SEG_MAX = 16     # knot segments over the quoted range at most
CORR_EXT = 6          # knot segments of the correction's support beyond the quotes, each side
CORR_MIN_QUOTES = 5   # fewer quotes: SVI alone
CORR_MAX_NFEV = 100   # per penalty round
SLSQP_MAX_QUOTES = 16  # slices up to this size also get an SLSQP solve of the correction
SLSQP_NEAR = 0.3      # constraints (g - margin; calendar in vol bp) below this at the start go to SLSQP
MASKING = True        # penalty rows far from activity left out of the least-squares problems
MASK_G = 0.3          # ... butterfly rows with g above the margin by more than this
MASK_V = 0.01         # ... calendar rows with the vol above the previous slice's by more than this
CORR_MIN_GAIN = 0.05  # kept when it lowers the data cost by at least this fraction
CORR_TOL = 2e-4       # correction's dead zone around the mid at least (vol units: 2 bp)
CORR_BAND = 0.5       # ... and this fraction of the bid/ask vol band
G_MARGIN_CORR = 0.02  # butterfly margin of the corrected slice (g between grid points, T-interpolation)
CORR_OFF = 1.0        # smoothing at or above which the correction is off
LAM_LOG0 = -3.0       # log10 of the curvature penalty at smoothing 0
LAM_DECADES = 8.0     # decades the penalty grows from smoothing 0 to 1
LAM_OUT = 0.1         # curvature penalty of the correction beyond the quotes
RIDGE = 1e-2          # size penalty, relative to the curvature penalty
G_PER_SEG = 4         # butterfly grid points per knot segment


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


def _corr_knots(lo: float, hi: float, n_quotes: int) -> np.ndarray:
    """Knot vector of the correction: ``n`` uniform segments over ``[lo, hi]`` (one per quote, 3 to
    ``CORR_SEG_MAX``), ``CORR_EXT`` more segments each side (room to return to zero smoothly beyond the
    quotes), and three zero-coefficient pads each side so that ``scipy``'s base interval is the support
    ``[lo - CORR_EXT h, hi + CORR_EXT h]``."""
    n = int(np.clip(n_quotes - 1, 3, CORR_SEG_MAX))
    h = (hi - lo) / n
    return lo + h * np.arange(-3 - CORR_EXT, n + CORR_EXT + 4, dtype=float)


def _corr_basis(t: np.ndarray, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values, first and second derivatives (each (N, nb)) of the active correction B-splines (those
    whose support lies inside ``[t[3], t[-4]]``) at ``y``; zero outside the support."""
    y = np.clip(np.asarray(y, float), t[3], t[-4])
    nb_all = len(t) - 4
    spl = BSpline(t, np.eye(nb_all), 3, extrapolate=False)
    act = slice(3, nb_all - 3)
    B0 = np.nan_to_num(spl(y))[:, act]
    B1 = np.nan_to_num(spl.derivative(1)(y))[:, act]
    B2 = np.nan_to_num(spl.derivative(2)(y))[:, act]
    return B0, B1, B2


@dataclass(frozen=True)
class SVISplineSlice:
    """Raw-SVI backbone plus a compactly supported cubic-spline correction of total variance:
    ``w(y) = w_SVI(y) + sum_j d_j B_j(y)``, the ``B_j`` cubic B-splines on uniform ``knots`` whose support
    lies in ``[knots[3], knots[-4]]`` (the quoted range and one knot spacing beyond): outside that the
    slice is the SVI backbone exactly (asymptotically linear wings within Lee's bound). C2 in ``y``."""

    base: SVISlice
    knots: tuple
    coef: tuple

    def __post_init__(self) -> None:
        t = np.asarray(self.knots, float)
        spl = BSpline(t, np.r_[np.zeros(3), np.asarray(self.coef, float), np.zeros(3)], 3, extrapolate=False)
        object.__setattr__(self, "_splines", (spl, spl.derivative(1), spl.derivative(2)))

    def correction(self, y):
        """``(c, c', c'')`` of the correction at ``y`` (zero outside its support)."""
        y = np.asarray(y, dtype=float)
        yc = np.clip(y, self.knots[3], self.knots[-4])
        return tuple(np.nan_to_num(s(yc)) for s in self._splines)

    def derivs(self, y):
        """``(w, w_y, w_yy)`` at ``y`` (any shape): backbone plus correction, closed form."""
        w, w1, w2 = self.base.derivs(y)
        c0, c1, c2 = self.correction(y)
        return w + c0, w1 + c1, w2 + c2

    def w(self, y):
        """Total variance at ``y``."""
        return self.derivs(y)[0]

    def g(self, y):
        """Butterfly density function ``g(y)`` of the slice."""
        w, w_y, w_yy = self.derivs(y)
        return butterfly_g(y, w, w_y, w_yy)

    # no ``a, b, rho, m, sigma`` attributes on purpose: ``core.surface.interp.SliceSurface`` evaluates slices
    # that have them as raw SVI (vectorised), which would drop the correction; use ``base``

    def lifted(self, da: float) -> "SVISplineSlice":
        """The same slice with the backbone's level ``a`` raised by ``da``."""
        b = self.base
        return SVISplineSlice(SVISlice(a=b.a + da, b=b.b, rho=b.rho, m=b.m, sigma=b.sigma), self.knots, self.coef)

    def to_dict(self) -> dict:
        """JSON-able parameters: the backbone's ``a, b, rho, m, sigma`` and the correction."""
        return {**self.base.to_dict(), "correction_knots": [float(k) for k in self.knots],
                "correction_coef": [float(c) for c in self.coef]}


class CorrectedSliceSurface(VolSurface):
    """SVI backbones joined in ``T`` by ``backbone`` (a ``core.surface.interp.SliceSurface``), plus the slices'
    spline corrections joined locally in ``T``: ``w(y, T) = W(y, T) + C(y, T)`` with
    ``C = (1 - u) c_k(y) + u c_{k+1}(y)``, ``u = 3 t^2 - 2 t^3`` (``t`` the fraction of the interval
    ``[T_k, T_{k+1}]``), ``C = u c_1(y)`` with ``t = T / T_1`` before the first expiry (``w(y, 0) = 0``) and
    ``C = c_n(y)`` after the last. Why local: the correction is a feature of one expiry; a spline in ``T``
    (the backbone's scheme) would carry it, and its curvature in ``y``, into the neighbouring intervals with
    overshoot, and ``g`` between expiries with it. The smoothstep keeps ``C`` between its node values and
    makes ``dC/dT`` continuous (zero at the expiries), so local vol has no jumps in ``T``.
    ``corrections``: per expiry an ``SVISplineSlice`` (its correction is used) or ``None``."""

    def __init__(self, backbone, T_nodes, corrections):
        self.backbone = backbone
        self.T_nodes = tuple(float(t) for t in T_nodes)
        self.corrections = tuple(corrections)
        self.T_quoted = backbone.T_quoted

    def derivatives(self, y, T) -> Derivatives:
        """``w, w_y, w_yy, w_T`` at ``(y, T)`` (broadcast): the backbone's plus the interpolated correction."""
        y, T = np.broadcast_arrays(np.asarray(y, float), np.asarray(T, float))
        d = self.backbone.derivatives(y, T)
        yf, Tf = y.ravel(), T.ravel()
        Tn = np.asarray(self.T_nodes)
        n = len(Tn)
        C = np.zeros((3, n, yf.size))
        for k, c in enumerate(self.corrections):
            if c is not None:
                C[:, k, :] = c.correction(yf)
        k = np.clip(np.searchsorted(Tn, Tf, side="right") - 1, -1, n - 1)
        cols = np.arange(yf.size)
        lo = np.maximum(k, 0)
        hi = np.minimum(k + 1, n - 1)
        h = np.where(k >= 0, Tn[hi] - Tn[lo], Tn[0])
        h = np.where(h > 0, h, 1.0)
        t = np.where(k < 0, Tf / Tn[0], np.where(k >= n - 1, 1.0, (Tf - Tn[lo]) / h))
        # smoothstep weight: values stay between the two nodes' (no overshoot), dC/dT = 0 at the nodes (C1)
        u = t * t * (3.0 - 2.0 * t)
        u_t = 6.0 * t * (1.0 - t) / h
        out = []
        for i in range(3):
            c_lo = np.where(k < 0, 0.0, C[i, lo, cols])
            c_hi = np.where(k < 0, C[i, 0, cols], np.where(k >= n - 1, C[i, lo, cols], C[i, hi, cols]))
            out.append((1.0 - u) * c_lo + u * c_hi)
        c_lo0 = np.where(k < 0, 0.0, C[0, lo, cols])
        c_hi0 = np.where(k < 0, C[0, 0, cols], C[0, hi, cols])
        c_T = np.where(k >= n - 1, 0.0, (c_hi0 - c_lo0) * u_t)
        sh = y.shape
        return Derivatives(w=d.w + out[0].reshape(sh), w_y=d.w_y + out[1].reshape(sh),
                           w_yy=d.w_yy + out[2].reshape(sh), w_T=d.w_T + c_T.reshape(sh))

    def y_quoted(self, T):
        """The backbone's quoted ``y``-range."""
        return self.backbone.y_quoted(T)


def _lift(sl, da: float):
    if isinstance(sl, SVISplineSlice):
        return sl.lifted(da)
    return SVISlice(a=sl.a + da, b=sl.b, rho=sl.rho, m=sl.m, sigma=sl.sigma)


class _Problem:
    """Least-squares objective of one slice in ``p = (v, u, rho, m, sigma, d_1..d_nb)`` (``nb = 0``: pure
    SVI): vol residuals; penalties for ``g < G_MARGIN`` on the grid, for falling below the previous
    expiry / rising above the next one (vols, on the grid), for rising above the caps, and (smoothing)
    towards the prior slice; the correction's second differences and size. Analytic dense Jacobian."""

    def __init__(self, y, iv, wt, T, yg, *, prev=None, nxt=None, nxt_grid=None, cap=None, prior=None,
                 k_prior=0.0, knots=None, lam=0.0, band=None, cal_range=None, g_margin=G_MARGIN):
        self.band = band
        self.g_margin = g_margin
        self.g_floor = 0.0      # violations count g below this (per point where a backbone already violates)
        self._memo = {}
        self._all = None
        self.gmask = self.cmask = np.ones(len(yg), bool)
        self.gmask_keep = self.cmask_keep = np.zeros(len(yg), bool)
        self.y, self.iv, self.T, self.yg = y, iv, T, yg
        self.sq = np.sqrt(wt)
        self.sc = np.sqrt(len(y) / len(yg)) * float(np.sqrt(np.mean(wt ** 2)))
        self.knots = knots
        pts = {"q": y, "g": yg}
        self.w_lower = np.maximum(prev.derivs(yg)[0], 1e-12) if prev is not None else None
        if self.w_lower is not None and cal_range is not None:
            # no calendar condition outside the caller's grid (the previous slice's extrapolated wing)
            self.w_lower = np.where((yg >= cal_range[0]) & (yg <= cal_range[1]), self.w_lower, 1e-12)
        if nxt is not None:
            pts["u"] = np.asarray(nxt_grid, float)
            self.w_upper = np.maximum(nxt.derivs(pts["u"])[0], 0.0)
        if cap is not None:
            pts["c"] = np.asarray(cap[0], float)
            self.w_cap = np.asarray(cap[1], float)
        self.pts = pts
        self.nb = 0
        self.B = {}
        if knots is not None:
            for k, v in pts.items():
                self.B[k] = _corr_basis(knots, v)
            self.nb = self.B["q"][0].shape[1]
            # the correction's penalty in vol units: d is total variance, dvol = dw / (2 sigma T)
            vs = 1.0 / (2.0 * float(np.mean(iv)) * T)
            nb = self.nb
            self.P = np.sqrt(lam) * vs * np.sqrt(len(y) / max(nb - 2, 1)) * np.diff(np.eye(nb), n=2, axis=0)
            self.R = np.sqrt(RIDGE * lam) * vs * np.sqrt(len(y) / nb) * np.eye(nb)
            # beyond the quotes nothing holds the correction but the butterfly condition: a curvature
            # penalty there (in units of one knot spacing) lets it fade to zero smoothly
            h = float(knots[1] - knots[0])
            y_out = yg[(yg < y.min()) | (yg > y.max())]
            if len(y_out) and LAM_OUT > 0:
                B2o = _corr_basis(knots, y_out)[2]
                self.R = np.vstack([self.R, np.sqrt(LAM_OUT) * vs * np.sqrt(len(y) / len(y_out)) * h * h * B2o])
        self.k_prior = k_prior
        self.v_prior = np.sqrt(np.maximum(prior.w(yg), 0.0) / T) if (prior is not None and k_prior > 0) else None
        self.npar = 5 + self.nb

    def _model(self, p, key, want_jac):
        # the backbone is fixed while the correction is solved: memoise its values per point set
        x = np.asarray(p[:5], float)
        # and evaluate the backbone at every point set at once (one call instead of one per set)
        hit = self._memo.get(want_jac)
        if hit is None or not np.array_equal(hit[0], x):
            if self._all is None:
                keys = list(self.pts)
                self._all = (np.concatenate([self.pts[k] for k in keys]), None, keys)
            yall, _, keys = self._all
            vals, Js = _svi_jac(x, yall, want_jac)
            out, i0 = {}, 0
            for k in keys:
                i1 = i0 + len(self.pts[k])
                out[k] = (tuple(v[i0:i1] for v in vals), tuple(Jk[i0:i1] for Jk in Js) if want_jac else None)
                i0 = i1
            hit = (x.copy(), out)
            self._memo[want_jac] = hit
        (w, w1, w2), J = hit[1][key]
        if self.nb:
            d = p[5:]
            B0, B1, B2 = self.B[key]
            w, w1, w2 = w + B0 @ d, w1 + B1 @ d, w2 + B2 @ d
            if want_jac:
                J = (np.hstack([J[0], B0]), np.hstack([J[1], B1]), np.hstack([J[2], B2]))
        return (w, w1, w2), J

    def _parts(self, p, kg, kc, want_jac):
        rows, jrows = [], []
        T, sc = self.T, self.sc

        def vol(w, J):
            wq = np.maximum(w, 1e-12)
            v = np.sqrt(wq / T)
            return v, ((1.0 / (2.0 * np.sqrt(wq * T)))[:, None] * J if want_jac else None)

        (w, _, _), J = self._model(p, "q", want_jac)
        v, dv = vol(w, J[0] if want_jac else None)
        if self.band is None:
            rows.append(self.sq * (v - self.iv))
            if want_jac:
                jrows.append(self.sq[:, None] * dv)
        else:
            # dead zone: only the distance outside the target band counts
            lo, hi = self.band
            rows.append(self.sq * (np.maximum(0.0, v - hi) - np.maximum(0.0, lo - v)))
            if want_jac:
                jrows.append((self.sq * ((v > hi) | (v < lo)))[:, None] * dv)
        (wg, wg1, wg2), Jg = self._model(p, "g", want_jac)
        wp = np.maximum(wg, 1e-12)
        g = butterfly_g(self.yg, wp, wg1, wg2)
        gm, cm = self.gmask, self.cmask   # rows that can be active (``set_masks``): the others are zero
        act = (self.g_margin - g) > 0
        rows.append(kg * sc * np.maximum(0.0, self.g_margin - g)[gm])
        if want_jac:
            g_w, g_w1 = _g_partials(self.yg, wp, wg1)
            jrows.append((-(kg * sc) * act[:, None] * (g_w[:, None] * Jg[0] + g_w1[:, None] * Jg[1] + 0.5 * Jg[2]))[gm])
        vg, dvg = vol(wg, Jg[0] if want_jac else None)
        if self.w_lower is not None:
            r = np.sqrt(self.w_lower / T) + 1e-5 - vg
            rows.append(kc * sc * np.maximum(0.0, r)[cm])
            if want_jac:
                jrows.append((-(kc * sc) * (r > 0)[:, None] * dvg)[cm])
        if "u" in self.pts:
            (wu, _, _), Ju = self._model(p, "u", want_jac)
            vu, dvu = vol(wu, Ju[0] if want_jac else None)
            r = vu + 1e-5 - np.sqrt(self.w_upper / T)
            rows.append(kc * sc * np.maximum(0.0, r))
            if want_jac:
                jrows.append((kc * sc) * (r > 0)[:, None] * dvu)
        if "c" in self.pts:
            (wk, _, _), Jk = self._model(p, "c", want_jac)
            vk, dvk = vol(wk, Jk[0] if want_jac else None)
            r = vk - np.sqrt(self.w_cap / T)
            rows.append(kc * sc * np.maximum(0.0, r))
            if want_jac:
                jrows.append((kc * sc) * (r > 0)[:, None] * dvk)
        if self.v_prior is not None:
            kp = self.k_prior * sc
            rows.append(kp * (vg - self.v_prior))
            if want_jac:
                jrows.append(kp * dvg)
        if self.nb:
            d = p[5:]
            rows += [self.P @ d, self.R @ d]
            if want_jac:
                Z = np.zeros((self.nb - 2, 5))
                jrows += [np.hstack([Z, self.P]), np.hstack([np.zeros((self.R.shape[0], 5)), self.R])]
        if want_jac:
            return np.vstack(jrows)
        return np.concatenate(rows)

    def set_masks(self, p, g_near: float = MASK_G, v_near: float = MASK_V):
        """Keep only the butterfly / calendar penalty rows that are active or close to it at ``p`` (``g`` below
        ``g_margin + g_near``; within ``v_near`` in vol of the previous slice): the Levenberg-Marquardt QR
        costs ``m n^2``, and most grid rows are zero. ``violations`` still checks every point; the solvers
        refresh the masks between rounds."""
        if not MASKING:
            self.gmask = np.ones(len(self.yg), bool)
            self.cmask = self.gmask
            return
        wg, wg1, wg2 = self._model(p, "g", False)[0]
        wp = np.maximum(wg, 1e-12)
        g = butterfly_g(self.yg, wp, wg1, wg2)
        self.gmask = ~(g >= self.g_margin + g_near) | self.gmask_keep
        if self.w_lower is not None:
            gap = np.sqrt(self.w_lower / self.T) - np.sqrt(wp / self.T)
            self.cmask = ~(gap <= -v_near) | self.cmask_keep
        self.gmask_keep, self.cmask_keep = self.gmask.copy(), self.cmask.copy()

    def resid(self, p, kg, kc):
        return self._parts(p, kg, kc, False)

    def jac(self, p, kg, kc):
        return self._parts(p, kg, kc, True)

    def violations(self, p):
        """``(min g, largest calendar shortfall in w)`` on the grid."""
        wg, wg1, wg2 = self._model(p, "g", False)[0]
        g_min = float(np.min(butterfly_g(self.yg, np.maximum(wg, 1e-12), wg1, wg2) - self.g_floor))
        gap = -np.inf
        if self.w_lower is not None:
            gap = float(np.max(self.w_lower - wg))
        if "u" in self.pts:
            gap = max(gap, float(np.max(self._model(p, "u", False)[0][0] - self.w_upper)))
        return g_min, gap

    def solve(self, p0, lb, ub, max_rounds: int = 4, max_nfev: int = 200):
        """Levenberg-Marquardt in box coordinates; penalties x30 while violated. ``(p, nfev, ok, msg)``."""
        kg, kc = 10.0, 10.0
        p, nfev, ok, msg = np.clip(p0, lb, ub), 0, True, ""
        for _ in range(max_rounds):
            self.set_masks(p)
            p, nf, ok, msg = box_least_squares(self.resid, p, lb, ub, jac=self.jac, args=(kg, kc),
                                               max_nfev=max_nfev, tol=SVI_TOL)
            nfev += nf
            g_min, gap = self.violations(p)
            if g_min >= 0 and gap <= 0:
                break
            kg, kc = kg * (30.0 if g_min < 0 else 1.0), kc * (30.0 if gap > 0 else 1.0)
        return p, nfev, ok, str(msg)

    def solve_correction(self, p0, max_rounds: int = 4, max_nfev: int = 100):
        """Like ``solve`` with the backbone ``p0[:5]`` fixed: least squares in the correction only."""
        x = p0[:5]
        kg, kc = 10.0, 10.0
        d, nfev, ok, msg = np.asarray(p0[5:], float), 0, True, ""
        for _ in range(max_rounds):
            self.set_masks(np.r_[x, d])
            sol = least_squares(lambda d, *a: self.resid(np.r_[x, d], *a), d,
                                jac=lambda d, *a: self.jac(np.r_[x, d], *a)[:, 5:], args=(kg, kc),
                                method="lm", x_scale="jac", xtol=1e-8, ftol=1e-8, gtol=1e-8, max_nfev=max_nfev)
            d, nfev, ok, msg = sol.x, nfev + int(sol.nfev), bool(sol.status > 0), str(sol.message)
            g_min, gap = self.violations(np.r_[x, d])
            if g_min >= 0 and gap <= 0:
                break
            kg, kc = kg * (30.0 if g_min < 0 else 1.0), kc * (30.0 if gap > 0 else 1.0)
        return np.r_[x, d], nfev, ok, msg

    def constraints(self, p, want_jac: bool = True):
        """Inequalities ``c(p) >= 0`` (butterfly ``g - G_MARGIN`` on the grid; calendar from below / above
        and caps, in vols) and their Jacobian in ``p``."""
        T = self.T
        (wg, wg1, wg2), Jg = self._model(p, "g", want_jac)
        wp = np.maximum(wg, 1e-12)
        cs = [butterfly_g(self.yg, wp, wg1, wg2) - self.g_margin]
        js = []
        if want_jac:
            g_w, g_w1 = _g_partials(self.yg, wp, wg1)
            js.append(g_w[:, None] * Jg[0] + g_w1[:, None] * Jg[1] + 0.5 * Jg[2])
        vg = np.sqrt(wp / T)
        if self.w_lower is not None:
            cs.append(vg - np.sqrt(self.w_lower / T) - 1e-6)
            if want_jac:
                js.append((1.0 / (2.0 * np.sqrt(wp * T)))[:, None] * Jg[0])
        for key, bound in (("u", getattr(self, "w_upper", None)), ("c", getattr(self, "w_cap", None))):
            if key in self.pts:
                (wk, _, _), Jk = self._model(p, key, want_jac)
                wk = np.maximum(wk, 1e-12)
                cs.append(np.sqrt(bound / T) - np.sqrt(wk / T))
                if want_jac:
                    js.append(-(1.0 / (2.0 * np.sqrt(wk * T)))[:, None] * Jk[0])
        return np.concatenate(cs), (np.vstack(js) if want_jac else None)

    def solve_correction_slsqp(self, p0, max_iter: int = 60):
        """The correction (backbone ``p0[:5]`` fixed) by SLSQP: least squares of the data, curvature and size
        terms subject to ``constraints``. Returns ``(p, nit, ok, msg)``."""
        from scipy.optimize import minimize

        x = p0[:5]
        # SLSQP's tolerances are absolute: work in vol basis points (residuals) and in units of 1 bp of vol
        # (correction coefficients) so that both are O(1)
        ds = 2.0 * float(np.mean(self.iv)) * self.T * 1e-4
        full = lambda u: np.r_[x, ds * u]  # noqa: E731
        c0 = self.constraints(p0, False)[0]
        scale = np.ones(len(c0))
        scale[len(self.yg):] = 1e4   # calendar and caps are in vols
        # SLSQP's cost grows with the number of constraints: pass those near activity at the warm start; a
        # constraint the result violates is added and the solve repeated from there
        near = np.flatnonzero(scale * c0 < SLSQP_NEAR)
        if len(near) == 0:
            near = np.array([int(np.argmin(scale * c0))])

        def f(u):
            r = self.resid(full(u), 0.0, 0.0) * 1e4
            J = self.jac(full(u), 0.0, 0.0)[:, 5:] * (1e4 * ds)
            return 0.5 * float(r @ r), J.T @ r

        u, nit = np.asarray(p0[5:], float) / ds, 0
        for _ in range(3):
            idx = near
            con = {"type": "ineq", "fun": lambda u, idx=idx: scale[idx] * self.constraints(full(u), False)[0][idx],
                   "jac": lambda u, idx=idx: scale[idx, None] * self.constraints(full(u), True)[1][idx, 5:] * ds}
            sol = minimize(f, u, jac=True, method="SLSQP", constraints=[con],
                           options={"maxiter": max_iter, "ftol": 1e-6})
            u, nit = sol.x, nit + int(sol.nit)
            c_all = scale * self.constraints(full(u), False)[0]
            missing = np.setdiff1d(np.flatnonzero(c_all < 0.0), near)
            if len(missing) == 0:
                break
            near = np.union1d(near, np.union1d(missing, np.flatnonzero(c_all < SLSQP_NEAR)))
        return full(u), nit, bool(sol.success), str(sol.message)

    def cost(self, p) -> float:
        return float(np.sum(self.resid(p, 10.0, 10.0) ** 2))

    def data_cost(self, p) -> float:
        """Sum of squared data residuals (dead zone included)."""
        w = self._model(p, "q", False)[0][0]
        v = np.sqrt(np.maximum(w, 1e-12) / self.T)
        if self.band is None:
            return float(np.sum((self.sq * (v - self.iv)) ** 2))
        lo, hi = self.band
        return float(np.sum((self.sq * (np.maximum(0.0, v - hi) - np.maximum(0.0, lo - v))) ** 2))


def _slice_bounds(y) -> tuple[np.ndarray, np.ndarray]:
    """Box for ``x = (v, u, rho, m, sigma)``. ``m`` (where the smile turns) stays within 0.1 of the
    quoted range and ``sigma`` below twice its width: beyond that the data see one branch of the
    hyperbola only, the fit degenerates (a valley in which the unquoted wing runs to Lee's bound)."""
    y_lo, y_hi = float(np.min(y)), float(np.max(y))
    width = max(y_hi - y_lo, 0.05)
    return (np.array([1e-10, 1e-6, -RHO_MAX, y_lo - 0.1, 1e-4]),
            np.array([np.inf, U_MAX, RHO_MAX, y_hi + 0.1, 2.0 * width]))


def correction_lambda(smoothing: float) -> float:
    """Curvature penalty of the spline correction for ``smoothing`` s in [0, 1):
    ``lam = 10^(LAM_LOG0 + LAM_DECADES s)`` (relative to the data term, in vol units); the correction is
    off at ``s >= CORR_OFF``."""
    return 10.0 ** (LAM_LOG0 + LAM_DECADES * float(smoothing))


@dataclass(frozen=True)
class SliceFitInfo:
    """Diagnostics of one slice fit: optimiser status, remaining penalties, start used, and whether the
    spline correction was kept (``corrected``) with its largest size in vol bp (``correction_bp``)."""

    success: bool
    nfev: int
    message: str
    g_min: float
    calendar_gap: float
    start: str
    lifted: float
    corrected: bool = False
    correction_bp: float = 0.0


def fit_svi_slice(y, iv, wt, T: float, *, y_grid, start: SVISlice | None = None, prev=None, nxt=None,
                  nxt_grid=None, cap=None, prior: SVISlice | None = None,
                  smoothing: float = 0.0, correction: bool = True, band=None):
    """Fit one slice: raw SVI (the backbone) with butterfly / calendar / prior penalties, then (``correction``
    and ``smoothing < CORR_OFF``) a spline correction on top (module docstring).

    ``y, iv, wt`` (N,): log-moneyness, mid implied vols, weights (mean about 1; residuals in vol units);
    ``T`` years; ``y_grid`` (M,): where the penalties are evaluated (refined inside the correction's
    support); ``prev``: the previous expiry's slice (anything with ``derivs``) for the calendar penalty
    from below; ``nxt``: the next expiry's slice, from above, on ``nxt_grid``; ``cap``: ``(y_c, w_c)``
    upper bounds on ``w`` (the next expiry's ask total variances at its quotes: a slice that rose above
    them would force the next one out of its band); ``prior``: the SSVI pre-fit slice (start and
    smoothing target). Both starts (prior, quasi-explicit) get a short run; the better one is solved.
    Returns ``(SVISlice | SVISplineSlice, SliceFitInfo)``.
    """
    y, iv, wt = (np.asarray(a, float) for a in (y, iv, wt))
    yg = np.asarray(y_grid, float)
    s = float(np.clip(smoothing, 0.0, 1.0))
    if prior is not None and s >= 1.0:
        return prior, SliceFitInfo(True, 0, "smoothing = 1: the SSVI slice", float(np.min(prior.g(yg))), 0.0,
                                   "prior", 0.0)
    k_prior = np.sqrt(s / (1.0 - s)) if (prior is not None and s > 0) else 0.0
    kw = dict(prev=prev, nxt=nxt, nxt_grid=nxt_grid, cap=cap, prior=prior, k_prior=k_prior)
    prob = _Problem(y, iv, wt, T, yg, **kw)
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
        X, nf, ok, msg = prob.solve(x0, lb, ub, max_rounds=1, max_nfev=15)
        nfev += nf
        c = prob.cost(X)
        if best is None or c < best[0]:
            best = (c, name, X)
    _, best_name, X = best
    x0, nf, ok, msg = prob.solve(X, lb, ub, max_nfev=SVI_MAX_NFEV)
    nfev += nf
    sl = _from_x(x0)
    corrected, corr_bp = False, 0.0
    if correction and s < CORR_OFF and len(y) >= CORR_MIN_QUOTES and y_hi - y_lo > 1e-6:
        knots = _corr_knots(y_lo, y_hi, len(y))
        # refine the penalty grid inside the correction's support: g must hold between knots too
        ygc = np.unique(np.r_[yg, np.linspace(knots[3], knots[-4], G_PER_SEG * (len(knots) - 7) + 1)])
        if band is None:
            half = np.full(len(y), CORR_TOL)
        else:
            b_lo, b_hi = (np.asarray(b, float) for b in band)
            half = np.where(np.isfinite(b_lo) & np.isfinite(b_hi), CORR_BAND * 0.5 * (b_hi - b_lo), CORR_TOL)
            half = np.maximum(half, CORR_TOL)
        pc = _Problem(y, iv, wt, T, ygc, knots=knots, lam=correction_lambda(s), band=(iv - half, iv + half),
                      cal_range=(yg[0], yg[-1]), g_margin=G_MARGIN_CORR, **kw)
        p0 = np.r_[x0, np.zeros(pc.nb)]
        # outside the caller's grid the support reaches into SVI's own wings, where the backbone itself may
        # have g < 0 (nothing checks there): the correction must not make it worse, and need not repair it
        out = (ygc < yg[0]) | (ygc > yg[-1])
        g_b = sl.g(ygc)
        pc.g_floor = np.where(out, np.minimum(0.0, g_b), 0.0)
        pc.g_margin = np.where(out, np.minimum(G_MARGIN_CORR, g_b), G_MARGIN_CORR)
        # the backbone stays fixed: the correction is a regularised fit of what SVI leaves (nearly
        # linear in d, so a few Levenberg-Marquardt steps), and SVI cannot trade level for correction
        p1, nf, ok1, msg1 = pc.solve_correction(p0, max_nfev=CORR_MAX_NFEV)
        nfev += nf
        if len(y) <= SLSQP_MAX_QUOTES:
            # small slices: the constrained optimum (SLSQP, warm start) instead of the penalty's compromise
            p2, nf, ok2, msg2 = pc.solve_correction_slsqp(p1)
            nfev += nf
            v2 = pc.violations(p2)
            if v2[0] >= 0 and v2[1] <= 1e-12 and pc.data_cost(p2) < pc.data_cost(p1):
                p1, msg1 = p2, msg2
        cand = SVISplineSlice(_from_x(p1[:5]), tuple(float(k) for k in knots), tuple(float(c) for c in p1[5:]))
        yf = np.linspace(min(ygc[0], knots[3]), max(ygc[-1], knots[-4]), 8 * len(ygc))
        out_f = (yf < yg[0]) | (yf > yg[-1])
        floor_f = np.where(out_f, np.minimum(0.0, sl.g(yf)), 0.0)
        g_new, g_old = float(np.min(cand.g(yf) - floor_f)), float(np.min(sl.g(yf) - floor_f))
        # kept when it removes a material part of what SVI leaves (otherwise the plain SVI slice is simpler)
        cost0 = pc.data_cost(p0)
        if cost0 == 0.0 and not ok:
            # every quote already inside its target band: the budget stop costs nothing
            ok, msg = True, f"backbone stopped at its budget with every quote inside its target band ({msg})"
        better = pc.data_cost(p1) < (1.0 - CORR_MIN_GAIN) * cost0
        if better and (g_new >= 0 or g_new >= g_old):
            # accepted only when free of the grid violations and closer to the quotes: a backbone stopped
            # at its evaluation budget is then no trouble (the correction took the rest)
            sl, ok, msg, corrected = cand, True, f"backbone: {msg}; correction: {msg1}", True
            corr_bp = float(np.max(np.abs(cand.correction(y)[0]) / (2.0 * iv * T))) * 1e4
    lifted, gap = 0.0, -np.inf
    if prev is not None:
        # the penalty grid can miss a crossing between its points: check on a fine grid
        yf = np.linspace(yg[0], yg[-1], 20 * len(yg))
        w_prev = prev.derivs(yf)[0]
        gap = float(np.max(w_prev - sl.w(yf)))
        if gap > 0:
            lifted = gap + 1e-10
            sl = _lift(sl, lifted)
        gap = float(np.max(w_prev - sl.w(yf)))
    g_min = float(np.min(sl.g(np.linspace(yg[0], yg[-1], 10 * len(yg)))))
    if not ok:
        warnings.warn(f"SVI slice T={T:.4f}: optimiser stopped: {msg}", ConvergenceWarning, stacklevel=2)
    return sl, SliceFitInfo(ok, nfev, str(msg), g_min, gap, best_name, lifted, corrected, corr_bp)
