"""Raw SVI per expiry (Gatheral 2004) plus a spline correction, with butterfly and calendar control: the
``"svi"`` method of ``core.surface.fit`` (the chain loop, envelope and repairs are in ``core.surface.svi_fit``).

Slice: ``w(y) = a + b (rho (y - m) + sqrt((y - m)^2 + sigma^2))`` with ``b >= 0``, ``|rho| < 1``,
``sigma > 0`` and ``a + b sigma sqrt(1 - rho^2) >= 0`` (minimum of ``w`` non-negative). The wings are
asymptotically linear with slopes ``b (1 +- rho)``; Roger Lee's moment formula bounds the slope of
total variance by 2, hence ``b (1 + |rho|) <= 2`` (in total variance; Gatheral's ``4 / T`` bound is the
same statement for variance ``w / T``). Both constraints are built into the parametrisation
``x = (v, u, rho, m, sigma)``: ``b = 2 u / (1 + |rho|)`` with ``0 < u <= U_MAX < 1`` and
``a = v - b sigma sqrt(1 - rho^2)`` with ``v`` (the minimum total variance) ``> 0``. ``m`` stays within
0.1 of the quoted range and ``sigma`` below twice its width (``_slice_bounds``).

Spline correction (``SVISplineSlice``). ``w'' = b sigma^2 / R^3 > 0``: a raw-SVI slice is convex in ``y``
and has five parameters; real index smiles are neither (the 9-day slice of Andreasen & Huge's data is
concave in total variance at ``y = 0.078 .. 0.111``; a one-year SPX smile quoted from ``y = -2.1`` to ``0.4``
within 6-15 bp is outside SVI's reach: measured 10-30% of its quotes inside with SVI alone). Each slice is
the SVI backbone plus ``c(y) = sum_j d_j B_j(y)``: cubic B-splines on uniform knots, one segment per quote
over the quoted range (at most ``CORR_SEG_MAX``), the same spacing over ``support`` (the neighbouring
expiries' quoted ranges, at most ``CORR_SEG_TOTAL`` segments) and ``CORR_EXT`` segments beyond, where the
support ends (``c, c', c''`` vanish there): beyond it the slice is SVI exactly (Lee-bounded linear wings).

Fit of one slice (``fit_svi_slice``), in vol units, by a small dense Levenberg-Marquardt (``_lm``: normal
equations, Marquardt scaling, analytic Jacobians; a penalty row enters only while active; BLAS on one thread):

1. Backbone (``_fit_backbone``): least squares of the SVI vols to the centres of the target bands with the
   quotes' weights to the power ``BACKBONE_POWER`` (0: a global shape, not the at-the-money quotes alone;
   the correction follows the quotes), plus a penalty for ``g < G_MARGIN`` (butterfly; ``g`` of Gatheral &
   Jacquier 2014, Lemma 2.2) on the penalty grid and (smoothing ``s`` in (0, 1)) one towards the SSVI
   pre-fit slice with weight ``sqrt(s / (1 - s))`` (``s = 1`` returns the prior). Parameters in a box
   (``_Box``: unbounded coordinates). Starts: the caller's guesses (the previous expiry's backbone scaled to
   this ``T``), the SSVI slice, and a quasi-explicit one (Zeliade 2009: for fixed ``m, sigma`` the slice is
   linear in ``(a, rho b sigma, b sigma)``, solved on a small ``(m, sigma)`` grid); each gets a short run on
   the quotes alone and the best is solved to convergence, then penalised. Or a given ``backbone`` (the AM
   slice of the same date scaled, for the PM slice; ``core.surface.fit``).
2. Correction, linear in ``d`` (backbone fixed): the distance of the fitted vols from the target band of
   each quote (a dead zone: the middle ``CORR_BAND`` of the band, ``target_band``), ``lam ||Delta^2 d||^2``,
   a small ridge, a curvature penalty beyond the quotes (``LAM_OUT``), and penalties for ``g`` below its
   margin (``G_MARGIN_CORR`` over the quotes, ``G_MARGIN_OUT`` beyond, on a grid refined to ``G_PER_SEG``
   points per knot segment; with ``blend`` also ``g`` of the blends with the previous slice), for falling
   below the previous expiry on ``cal_range`` (calendar, Gatheral & Jacquier's Lemma 2.1; slices are fitted
   in increasing ``T``) and for leaving the ``bounds``. Started from one linear least-squares solve
   (``_correction_start``: the band centres, and the previous slice where this one is an extrapolation below
   it). Penalties still violated after a solve are multiplied by ``K_GROW`` (``PENALTY_ROUNDS``); a butterfly
   violation left then gets ``G_ROUNDS`` more with the calendar and bound weights reset: ``g >= 0`` wins, and
   where the soft bounds and the butterfly condition cannot both hold the bounds are dropped. Smoothing
   ``s``: ``lam = 10^(LAM_LOG0 + LAM_DECADES s)`` (``correction_lambda``); at ``s >= CORR_OFF`` no correction.
   Kept when it lowers the data term by ``CORR_MIN_GAIN`` or a condition needs it.
3. A calendar crossing with the previous expiry left between grid points is removed by lifting ``a`` (with a
   separation of ``LIFT_SEP``, so that none hides between the check points).

Across expiries: where the calendar condition must hold. Measured on the SPX close of 2024-01-05 before this
design (each slice held above the previous one on the union of their ``y``-ranges): every slice from
2024-01-30 on sat above all its quotes (bias +60 bp growing to +600 bp at one to two years, 40% of the quotes
inside, 451 calendar violations left). The short slices' SVI wings, extrapolated to where the longer
expiries are quoted, lay above those quotes; each slice was lifted onto the previous one's wing and handed
the lift on, and a convex five-parameter slice cannot raise a far wing without raising its quoted part. Now:

* Calendar order is held where ``check_arbitrage`` and the local-vol grid look, the union of two neighbours'
  quoted ranges (``cal_range``), and the correction reaches there (``support``): a slice bends its own
  extrapolated wing instead of shifting its quotes.
* The other expiries' quotes bound each slice (``calendar_envelope``): with ``L_k(y)`` the largest bid total
  variance of the earlier expiries and ``U_k(y)`` the smallest ask total variance of the later ones (each
  linear between its own quotes, nothing outside its quoted range), a slice fitted inside its bid/ask on a
  calendar-free surface lies in ``[L_k, U_k]``. Each quote aims at its band intersected with ``[L_k, U_k]``
  (its own band where they do not meet: calendar arbitrage in the quotes), and beyond its quotes the slice
  stays below ``U_k`` (``bounds``): a short slice's wing cannot rise above the longer expiries' quotes.
* Far beyond every quoted range the wings are the SVI backbones' (Lee-bounded), not held in order.

The full slices are joined in ``T`` by ``core.surface.interp.SliceSurface`` (monotone where the slices are
ordered: no calendar arbitrage between ordered slices; a butterfly safeguard that falls back to linear
interpolation in ``sqrt(T)``; before the first expiry the first slice at fixed ``y / sqrt(T)``, which keeps
its density); ``SVIStack`` evaluates all slices of a surface at once. ``CorrectedSliceSurface`` (backbones
joined by the spline scheme, corrections by a smoothstep) is an alternative joining kept for callers;
``fit_surface`` no longer uses it. How close it sits inside the bid/ask of real chains, and how fast:
``bench/bench_real.py`` and ``tests/surface/test_svi_real.py``.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import least_squares
from threadpoolctl import threadpool_limits

from core.errors import ConvergenceWarning, InputError
from core.surface.base import Derivatives, VolSurface, butterfly_g, butterfly_g_grad

#: raw-SVI parameter names, in the order of ``svi_raw``'s arguments and of parameter arrays.
SVI_PARAMS = ("a", "b", "rho", "m", "sigma")


def svi_raw(y, a, b, rho, m, sigma):
    """Raw SVI ``w = a + b (rho (y - m) + sqrt((y - m)^2 + sigma^2))`` (Gatheral 2004) and its
    ``y``-derivatives ``(w, w_y, w_yy)``; everything broadcasts (e.g. parameters ``(n, 1)`` against
    ``y`` ``(N,)`` evaluates ``n`` slices at once). ``w_y = b (rho + x / R)``, ``w_yy = b sigma^2 / R^3``
    with ``x = y - m``, ``R = sqrt(x^2 + sigma^2)``."""
    y = np.asarray(y, dtype=float)
    a, b, rho, m, sigma = (np.asarray(v, dtype=float) for v in (a, b, rho, m, sigma))
    # in place where possible: this is on the hot path of every local-vol evaluation
    x = np.subtract(y, m)
    if np.ndim(x) == 0:
        x = np.reshape(x, 1)   # the in-place steps below need an array
    shape = np.broadcast_shapes(y.shape, *(v.shape for v in (a, b, rho, sigma, m)))
    R = x * x
    R += sigma * sigma
    np.sqrt(R, out=R)
    w = rho * x
    w += R
    w *= b
    w += a
    np.reciprocal(R, out=R)                     # R is 1 / R from here
    w_yy = R * R
    w_yy *= R
    w_yy *= b * sigma * sigma
    np.multiply(x, R, out=x)
    x += rho
    x *= b
    return w.reshape(shape), x.reshape(shape), w_yy.reshape(shape)


U_MAX = 0.995      # b (1 + |rho|) <= 2 U_MAX: strictly inside Lee's bound
G_MARGIN = 1e-4    # butterfly penalty of the backbone acts below this g
RHO_MAX = 0.999
SVI_TOL = 1e-9      # relative cost decrease at which the Levenberg-Marquardt iterations stop
SVI_MAX_ITER = 60   # backbone solve, per penalty round
START_ITER = 8      # short run from each start
BACKBONE_POWER = 0.0  # the backbone's weights are the quotes' weights to this power (a global shape, not the ATM)
PENALTY_ROUNDS = 4  # penalty solves at most (factor K_GROW per round while violated)
K_START = 10.0      # calendar / bound penalty weight relative to the data (per row, see _SliceProblem)
KG_START = 0.01     # butterfly penalty weight (g is O(1) where vols are O(1e-2): 0.01 of g weighs like 1 bp)
K_GROW = 30.0
G_ROUNDS = 3        # extra rounds for the butterfly condition alone when it is still violated
CAL_MARGIN = 1e-5   # vol: a slice stays this far above the previous one (0.1 bp) in the penalties ...
LIFT_SEP = 1e-6     # ... and at least this far (0.01 bp) after the check on a fine grid (lifted if needed)
BOUND_TOL = 1e-4    # vol: a bound violated by less than this (1 bp) is not escalated
# spline correction (see the module docstring)
CORR_SEG_MAX = 32     # knot segments over the quoted range at most
CORR_EXT = 12         # knot segments of the correction's support beyond the quotes, each side
CORR_MIN_QUOTES = 5   # fewer quotes: SVI alone
CORR_MAX_ITER = 150   # per penalty round
CORR_MIN_GAIN = 0.05  # kept when it lowers the data cost by at least this fraction
CORR_TOL = 2e-4       # target band half-width at least this (vol units: 2 bp) where the quote's band allows
CORR_BAND = 0.5       # ... and this fraction of the band's half-width
G_MARGIN_CORR = 0.02  # butterfly margin of the corrected slice over its quotes (g between grid points, T-interpolation)
G_MARGIN_OUT = 0.005  # ... and beyond its quotes
G_MARGIN_MIX = 0.002  # ... and of its blends with the previous slice (``blend=True``)
BLEND_TS = (0.25, 0.5, 0.75)   # the blends checked
CORR_OFF = 1.0        # smoothing at or above which the correction is off
LAM_LOG0 = -3.0       # log10 of the curvature penalty at smoothing 0
LAM_DECADES = 8.0     # decades the penalty grows from smoothing 0 to 1
LAM_OUT = 0.01        # curvature penalty of the correction beyond the quotes
RIDGE = 1e-2          # size penalty, relative to the curvature penalty
G_PER_SEG = 4         # butterfly grid points per knot segment
CORR_SEG_TOTAL = 64   # knot segments over the whole support (the quoted ranges of the neighbours too) at most


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
        return svi_raw(y, self.a, self.b, self.rho, self.m, self.sigma)

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

    @staticmethod
    def stack_of(slices):
        """The slices evaluated together (``SVIStack.of``), or None when they cannot be (another kind among them)."""
        return SVIStack.of(slices)

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
    5 x 6 grid of ``(m, sigma)`` (weighted least squares in ``w`` with weights ``wt``, all 30 normal
    equations solved at once), projected onto the parameter constraints. ``None`` if nothing fits."""
    y, w, wt = (np.asarray(v, float) for v in (y, w, wt))
    width = max(y_hi - y_lo, 1e-3)
    M, S = np.meshgrid(np.linspace(y_lo + 0.2 * width, y_hi - 0.2 * width, 5),
                       width * np.array([0.02, 0.05, 0.1, 0.2, 0.4, 0.8]), indexing="ij")
    M, S = M.ravel(), S.ravel()
    Z = (y[None, :] - M[:, None]) / S[:, None]                            # (30, n)
    A = np.stack([np.ones_like(Z), Z, np.sqrt(Z * Z + 1.0)], axis=2)      # (30, n, 3)
    Aw = A * wt[None, :, None]
    N = np.einsum("kni,knj->kij", Aw, A) + 1e-14 * np.eye(3)
    rhs = np.einsum("kni,n->ki", Aw, w)
    try:
        coef = np.linalg.solve(N, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return None
    best, best_cost = None, np.inf
    for k in np.flatnonzero(np.isfinite(coef).all(axis=1) & (coef[:, 2] > 0)):
        a, d, c = coef[k]
        sig = S[k]
        b, rho = c / sig, float(np.clip(d / c, -RHO_MAX, RHO_MAX))
        b = min(b, 2.0 * U_MAX / (1 + abs(rho)))
        a = max(a, -b * sig * np.sqrt(1 - rho**2) + 1e-8)
        cand = SVISlice(a=float(a), b=float(b), rho=rho, m=float(M[k]), sigma=float(sig))
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
    w, w1, w2 = svi_raw(y, a, b, rho, m, sig)
    if not want_jac:
        return (w, w1, w2), None
    d = y - m
    R = np.sqrt(d * d + sig * sig)
    iR = 1.0 / R
    iR3 = iR**3
    dR = d * iR
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


def _corr_knots(lo: float, hi: float, n_quotes: int, support=None) -> np.ndarray:
    """Knot vector of the correction: uniform segments of the width ``h`` that gives ``[lo, hi]`` (the quoted
    range) one segment per quote (3 to ``CORR_SEG_MAX``) over ``support`` (default ``[lo, hi]``; widened to
    at most ``CORR_SEG_TOTAL`` segments), ``CORR_EXT`` more segments each side (room to return to zero
    smoothly), and three zero-coefficient pads each side so that the support of the active B-splines is
    ``[knots[3], knots[-4]] = [s_lo - CORR_EXT h, s_hi + CORR_EXT h]``; ``len(knots) - 10`` active coefficients."""
    n = int(np.clip(n_quotes, 3, CORR_SEG_MAX))
    s_lo, s_hi = (lo, hi) if support is None else (min(lo, support[0]), max(hi, support[1]))
    h = (hi - lo) / n
    m = int(np.clip(np.ceil((s_hi - s_lo) / h - 1e-9), n, max(n, CORR_SEG_TOTAL)))
    h = (s_hi - s_lo) / m
    return s_lo + h * np.arange(-3 - CORR_EXT, m + CORR_EXT + 4, dtype=float)


def _uniform_knots(knots) -> tuple[float, float, int]:
    """``(start, spacing, pieces)`` of a correction's support from its uniform knot vector (``InputError`` if
    the knots are not uniform)."""
    t = np.asarray(knots, float)
    if t.ndim != 1 or len(t) < 11 or not np.all(np.isfinite(t)):
        raise InputError(f"correction knots must be a finite vector of at least 11 values, got {len(t)}")
    d = np.diff(t)
    h = float(np.mean(d))
    if not (h > 0 and np.allclose(d, h, rtol=1e-8, atol=1e-12 * max(1.0, abs(t).max()))):
        raise InputError("correction knots must be uniform and increasing")
    return float(t[3]), h, len(t) - 7


def _corr_basis(knots, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values, first and second derivatives (each (N, nb), dense) of the active correction B-splines (uniform
    cubic, ``nb = len(knots) - 10``) at ``y``: on the piece ``[t_i, t_i + h)`` with ``u = (y - t_i) / h`` the
    four B-splines are ``(1 - u)^3 / 6``, ``(3u^3 - 6u^2 + 4) / 6``, ``(-3u^3 + 3u^2 + 3u + 1) / 6``,
    ``u^3 / 6``; zero outside the support."""
    x0, h, M = _uniform_knots(knots)
    y = np.asarray(y, float).ravel()
    nb = M - 3
    z = (y - x0) / h
    inside = (z >= 0.0) & (z <= M)
    i = np.clip(np.floor(z), 0, M - 1).astype(np.intp)
    u = np.where(inside, z - i, 0.0)
    u2, u3 = u * u, u * u * u
    om = 1.0 - u
    vals = ((om**3) / 6.0, (3 * u3 - 6 * u2 + 4) / 6.0, (-3 * u3 + 3 * u2 + 3 * u + 1) / 6.0, u3 / 6.0)
    d1 = (-0.5 * om * om, 1.5 * u2 - 2 * u, -1.5 * u2 + u + 0.5, 0.5 * u2)
    d2 = (om, 3 * u - 2, -3 * u + 1, u)
    out = [np.zeros((y.size, nb)) for _ in range(3)]
    rows = np.arange(y.size)
    for j in range(4):
        col = i + j - 3            # piece i carries active B-splines i-3 .. i (pads excluded)
        ok = inside & (col >= 0) & (col < nb)
        r, c = rows[ok], col[ok]
        out[0][r, c] = vals[j][ok]
        out[1][r, c] = d1[j][ok] / h
        out[2][r, c] = d2[j][ok] / (h * h)
    return out[0], out[1], out[2]


def _piece_coefficients(coef) -> np.ndarray:
    """Power-basis coefficients ``(4, M)`` (``c0 + c1 u + c2 u^2 + c3 u^3`` in ``u`` = fraction of the piece) of
    the uniform cubic spline with active coefficients ``coef`` (three zero pads each side)."""
    c = np.r_[np.zeros(3), np.asarray(coef, float), np.zeros(3)]
    a, b, d, e = c[:-3], c[1:-2], c[2:-1], c[3:]      # B-splines i-3 .. i of piece i
    return np.array([(a + 4 * b + d) / 6.0, (d - a) / 2.0, (a - 2 * b + d) / 2.0, (-a + 3 * b - 3 * d + e) / 6.0])


def _eval_pieces(C, x0, h, M, y):
    """``(c, c', c'')`` of uniform cubic pieces ``C`` (4, ..., Mmax) (leading axes broadcast against ``y``) with
    support ``[x0, x0 + M h]``; zero outside. Used by ``SVISplineSlice`` and ``SVIStack``."""
    z = (y - x0) / h
    inside = (z >= 0.0) & (z <= M)
    i = np.clip(np.floor(z), 0, M - 1).astype(np.intp)
    u = np.where(inside, z - i, 0.0)
    c0, c1, c2, c3 = C
    if c0.ndim == 1:
        c0, c1, c2, c3 = c0[i], c1[i], c2[i], c3[i]
    else:
        rows = np.arange(c0.shape[0])[:, None]
        c0, c1, c2, c3 = c0[rows, i], c1[rows, i], c2[rows, i], c3[rows, i]
    w = ((c3 * u + c2) * u + c1) * u + c0
    w1 = ((3.0 * c3 * u + 2.0 * c2) * u + c1) / h
    w2 = (6.0 * c3 * u + 2.0 * c2) / (h * h)
    return np.where(inside, w, 0.0), np.where(inside, w1, 0.0), np.where(inside, w2, 0.0)


@dataclass(frozen=True)
class SVISplineSlice:
    """Raw-SVI backbone plus a compactly supported cubic-spline correction of total variance:
    ``w(y) = w_SVI(y) + sum_j d_j B_j(y)``, the ``B_j`` cubic B-splines on uniform ``knots`` (``_corr_knots``)
    whose support lies in ``[knots[3], knots[-4]]`` (the quoted range and ``CORR_EXT`` segments beyond):
    outside that the slice is the SVI backbone exactly (asymptotically linear wings within Lee's bound).
    C2 in ``y``. The piecewise-polynomial form is cached at construction (evaluation: arithmetic piece
    index and a Horner step)."""

    base: SVISlice
    knots: tuple
    coef: tuple

    def __post_init__(self) -> None:
        x0, h, M = _uniform_knots(self.knots)
        coef = np.asarray(self.coef, float)
        if coef.shape != (M - 3,) or not np.all(np.isfinite(coef)):
            raise InputError(f"SVISplineSlice needs {M - 3} finite coefficients for {len(self.knots)} knots, "
                             f"got {coef.shape}")
        object.__setattr__(self, "_pieces", (_piece_coefficients(coef), x0, h, M))

    def correction(self, y):
        """``(c, c', c'')`` of the correction at ``y`` (zero outside its support)."""
        y = np.asarray(y, dtype=float)
        C, x0, h, M = self._pieces
        return _eval_pieces(C, x0, h, M, y)

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

    @staticmethod
    def stack_of(slices):
        """The slices evaluated together (``SVIStack.of``), or None when they cannot be (another kind among them)."""
        return SVIStack.of(slices)

    def to_dict(self) -> dict:
        """JSON-able parameters: the backbone's ``a, b, rho, m, sigma`` and the correction."""
        return {**self.base.to_dict(), "correction_knots": [float(k) for k in self.knots],
                "correction_coef": [float(c) for c in self.coef]}


class SVIStack:
    """The slices of a surface (``SVISlice`` and ``SVISplineSlice``, exactly those types) evaluated together:
    ``stack(y)`` -> ``(W, W_y, W_yy)``, each (n, N): the backbones in one ``svi_raw`` expression, the
    corrections by their cached pieces (arithmetic piece index). Build with ``SVIStack.of(slices)`` (None
    when another kind of slice is present)."""

    def __init__(self, slices):
        bases = [sl.base if type(sl) is SVISplineSlice else sl for sl in slices]
        P = np.array([[b.a, b.b, b.rho, b.m, b.sigma] for b in bases], dtype=float)
        self.params = tuple(P.T[:, :, None])
        self.rows = np.array([k for k, sl in enumerate(slices) if type(sl) is SVISplineSlice], dtype=np.intp)
        if len(self.rows):
            pieces = [slices[k]._pieces for k in self.rows]
            Mmax = max(p[3] for p in pieces)
            C = np.zeros((4, len(pieces), Mmax))
            for j, p in enumerate(pieces):
                C[:, j, :p[3]] = p[0]
            self.C = C
            col = lambda i: np.array([p[i] for p in pieces], dtype=float)[:, None]  # noqa: E731
            self.x0, self.h, self.M = col(1), col(2), col(3)

    @classmethod
    def of(cls, slices):
        """An ``SVIStack`` when every slice is an ``SVISlice`` or an ``SVISplineSlice`` (not a subclass), else None."""
        if not slices or not all(type(sl) in (SVISlice, SVISplineSlice) for sl in slices):
            return None
        return cls(slices)

    def __call__(self, y):
        y = np.asarray(y, dtype=float).ravel()
        if len(self.rows) == 0:
            return svi_raw(y[None, :], *self.params)
        # the corrections are evaluated on their supports only: the points sorted once, each support is then a
        # contiguous block (short expiries' supports are a small part of a long expiry's range)
        order = None
        if np.any(np.diff(y) < 0):
            order = np.argsort(y, kind="stable")
            y = y[order]
        W, W1, W2 = svi_raw(y[None, :], *self.params)
        ends = np.searchsorted(y, np.c_[self.x0[:, 0], self.x0[:, 0] + self.M[:, 0] * self.h[:, 0]])
        for j, k in enumerate(self.rows):
            a, b = int(ends[j, 0]), int(ends[j, 1])
            if b > a:
                c0, c1, c2 = _eval_pieces(self.C[:, j, :int(self.M[j, 0])], float(self.x0[j, 0]), float(self.h[j, 0]),
                                          int(self.M[j, 0]), y[a:b])
                W[k, a:b] += c0
                W1[k, a:b] += c1
                W2[k, a:b] += c2
        if order is not None:
            inv = np.empty_like(order)
            inv[order] = np.arange(order.size)
            W, W1, W2 = W[:, inv], W1[:, inv], W2[:, inv]
        return W, W1, W2


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


def scaled_slice(sl, r: float):
    """The slice ``r w(y)`` (an ``SVISlice`` scaled is one: ``a, b`` times ``r``; a correction's coefficients
    times ``r``): the slice of the same implied vols at ``r`` times the expiry time."""
    if isinstance(sl, SVISplineSlice):
        return SVISplineSlice(scaled_slice(sl.base, r), sl.knots, tuple(r * c for c in sl.coef))
    return SVISlice(a=sl.a * r, b=sl.b * r, rho=sl.rho, m=sl.m, sigma=sl.sigma)


def lift(sl, da: float):
    """The slice ``sl`` (plain or spline-corrected) with its level ``a`` raised by ``da`` (total variance)."""
    if isinstance(sl, SVISplineSlice):
        return sl.lifted(da)
    return SVISlice(a=sl.a + da, b=sl.b, rho=sl.rho, m=sl.m, sigma=sl.sigma)


def _lm(fun, p0, *, max_iter: int, tol: float = SVI_TOL):
    """Levenberg-Marquardt (Marquardt's diagonal scaling, Nielsen's damping update) on ``fun(p) -> (r, J)``.

    Small dense problems: one ``p x p`` solve of the normal equations per step (MINPACK's QR of the full
    Jacobian costs ``m p^2`` per step and a Python round trip per evaluation; here rows of inactive penalties
    are simply absent, so ``r`` may change length between calls). Stops when an accepted step lowers the
    cost by less than ``tol`` (relative), the cost is zero, or the damping explodes. Returns
    ``(p, nfev, converged)``."""
    p = np.array(p0, dtype=float)
    r, J = fun(p)
    c = float(r @ r)
    nfev, mu, nu = 1, None, 2.0
    for _ in range(max_iter):
        if c == 0.0:
            return p, nfev, True
        A = J.T @ J
        gv = J.T @ r
        d = np.diag(A).copy()
        dmax = float(d.max()) if d.size else 0.0
        if not dmax > 0.0:
            return p, nfev, True
        d = np.maximum(d, 1e-12 * dmax)
        if mu is None:
            mu = 1e-3
        try:
            step = np.linalg.solve(A + mu * np.diag(d), -gv)
        except np.linalg.LinAlgError:
            mu, nu = mu * nu, 2.0 * nu
            continue
        p_new = p + step
        r_new, J_new = fun(p_new)
        nfev += 1
        c_new = float(r_new @ r_new)
        pred = -float(2.0 * step @ gv + step @ A @ step)
        if np.isfinite(c_new) and c_new < c:
            ratio = (c - c_new) / pred if pred > 0 else 1.0
            mu *= max(1.0 / 3.0, 1.0 - (2.0 * ratio - 1.0) ** 3)
            nu = 2.0
            rel = (c - c_new) / c
            p, r, J, c = p_new, r_new, J_new, c_new
            if rel < tol:
                return p, nfev, True
        else:
            mu, nu = mu * nu, 2.0 * nu
            if mu > 1e12:
                return p, nfev, True
    return p, nfev, False


class _SliceProblem:
    """Residual rows of one slice fit in vol units, for a model given by its values ``(w, w', w'')`` at the
    stacked points ``[quotes, penalty grid, bound points]`` and their Jacobians in the parameters.

    Rows: quotes ``sqrt(wt) (v - band)`` (a dead zone: zero inside ``[lo, hi]``; ``lo = hi`` is plain least
    squares); butterfly ``k_g sc (margin - g)`` where ``g < margin`` on the grid; calendar
    ``k_c sc (v_prev + CAL_MARGIN - v)`` where the slice dips below the previous one on the grid; bounds
    ``k_c sc_b`` times the distance outside ``[v_lo, v_hi]`` at the bound points; smoothing ``k_prior sc
    (v - v_prior)`` on the grid; with ``mix = (ts, (W, W', W''))`` (the previous slice on the grid) butterfly
    rows for the blends ``(1 - t) W + t w`` too, ``t`` in ``ts``, where ``W > 0`` (the calendar region): the
    slices between two expiries interpolated linearly are such blends. ``sc`` scales a grid row like one quote
    of mean weight."""

    def __init__(self, y, T, wt, lo, hi, yg, *, w_lower=None, yb=None, b_lo=None, b_hi=None, v_prior=None,
                 k_prior=0.0, g_margin=G_MARGIN, g_floor=0.0, mix=None):
        self.T = float(T)
        self.y, self.yg = np.asarray(y, float), np.asarray(yg, float)
        self.n, self.ng = len(self.y), len(self.yg)
        self.sq = np.sqrt(np.asarray(wt, float))
        self.lo, self.hi = np.asarray(lo, float), np.asarray(hi, float)
        rms = float(np.sqrt(np.mean(self.sq**2))) if self.n else 1.0
        self.sc = np.sqrt(max(self.n, 1) / max(self.ng, 1)) * rms
        self.g_margin = np.broadcast_to(np.asarray(g_margin, float), self.yg.shape)
        self.g_floor = np.broadcast_to(np.asarray(g_floor, float), self.yg.shape)
        self.v_lower = None if w_lower is None else np.sqrt(np.maximum(w_lower, 0.0) / self.T) + CAL_MARGIN
        if w_lower is not None:
            self.v_lower = np.where(np.asarray(w_lower) > 0, self.v_lower, -np.inf)
        yb = np.zeros(0) if yb is None else np.asarray(yb, float)
        self.nb = len(yb)
        if self.nb:
            self.v_lo = np.where(np.isfinite(b_lo), np.sqrt(np.maximum(np.nan_to_num(b_lo, nan=0.0), 0.0) / self.T), -np.inf)
            self.v_hi = np.where(np.isfinite(b_hi), np.sqrt(np.maximum(np.nan_to_num(b_hi, nan=np.inf), 0.0) / self.T), np.inf)
            self.sc_b = np.sqrt(max(self.n, 1) / self.nb) * rms
        self.v_prior = None if v_prior is None else np.asarray(v_prior, float)
        self.k_prior = float(k_prior)
        self.mix = None
        if mix is not None:
            ts, Wm = mix
            keep = (np.asarray(Wm[0]) > 0) if w_lower is None else (np.asarray(w_lower) > 0)
            self.mix = (tuple(float(t) for t in ts), tuple(np.asarray(v, float) for v in Wm), keep)
        self.pts = np.concatenate([self.y, self.yg, yb])
        self.sl_q, self.sl_g = slice(0, self.n), slice(self.n, self.n + self.ng)
        self.sl_b = slice(self.n + self.ng, self.n + self.ng + self.nb)

    def rows(self, w, w1, w2, J0, J1, J2, kg, kc, *, data=True):
        """``(r, J)``: the active rows (module docstring) for model values at ``self.pts`` and their
        Jacobians ``J0, J1, J2`` (N, p); ``kg = kc = 0``: the data and prior rows only."""
        T = self.T
        rs, js = [], []
        wpos = np.maximum(w, 1e-14)
        v = np.sqrt(wpos / T)
        dv = 1.0 / (2.0 * np.sqrt(wpos * T))
        if data and self.n:
            q = self.sl_q
            vq = v[q]
            above, below = vq > self.hi, vq < self.lo
            r = np.where(above, vq - self.hi, 0.0) + np.where(below, vq - self.lo, 0.0)
            rs.append(self.sq * r)
            js.append((self.sq * (above | below) * dv[q])[:, None] * J0[q])
        g_sl = self.sl_g
        wg = wpos[g_sl]
        g, g_w, g_w1, g_w2 = butterfly_g_grad(self.yg, wg, w1[g_sl], w2[g_sl])
        act = (g < self.g_margin) & (kg > 0)
        if kg > 0 and act.any():
            k = kg * self.sc
            rs.append(k * (self.g_margin - g)[act])
            js.append(-k * (g_w[act, None] * J0[g_sl][act] + g_w1[act, None] * J1[g_sl][act]
                            + g_w2 * J2[g_sl][act]))
        if self.mix is not None and kg > 0:
            ts, (Wp, Wp1, Wp2), keep = self.mix
            for t in ts:
                wm, w1m, w2m = (1 - t) * Wp + t * wg, (1 - t) * Wp1 + t * w1[g_sl], (1 - t) * Wp2 + t * w2[g_sl]
                gm, gm_w, gm_w1, gm_w2 = butterfly_g_grad(self.yg, np.maximum(wm, 1e-14), w1m, w2m)
                act = keep & (gm < G_MARGIN_MIX)
                if act.any():
                    k = kg * self.sc
                    rs.append(k * (G_MARGIN_MIX - gm)[act])
                    js.append(-k * t * (gm_w[act, None] * J0[g_sl][act] + gm_w1[act, None] * J1[g_sl][act]
                                        + gm_w2 * J2[g_sl][act]))
        vg = v[g_sl]
        if self.v_lower is not None and kc > 0:
            act = vg < self.v_lower
            if act.any():
                k = kc * self.sc
                rs.append(k * (self.v_lower - vg)[act])
                js.append(-k * (dv[g_sl][act, None] * J0[g_sl][act]))
        if self.nb and kc > 0:
            b = self.sl_b
            vb = v[b]
            above, below = vb > self.v_hi, vb < self.v_lo
            act = above | below
            if act.any():
                k = kc * self.sc_b
                r = np.where(above, vb - self.v_hi, 0.0) + np.where(below, vb - self.v_lo, 0.0)
                rs.append(k * r[act])
                js.append(k * (dv[b][act, None] * J0[b][act]))
        if self.v_prior is not None and self.k_prior > 0:
            k = self.k_prior * self.sc
            rs.append(k * (vg - self.v_prior))
            js.append(k * (dv[g_sl][:, None] * J0[g_sl]))
        p = J0.shape[1]
        if not rs:
            return np.zeros(1), np.zeros((1, p))
        return np.concatenate(rs), np.vstack(js)

    def violations(self, w, w1, w2) -> tuple[float, float, float]:
        """``(min g - floor, largest calendar shortfall in vol, largest bound violation in vol)`` at the points."""
        wpos = np.maximum(w, 1e-14)
        g_sl = self.sl_g
        g = butterfly_g(self.yg, wpos[g_sl], w1[g_sl], w2[g_sl])
        g_min = float(np.min(g - self.g_floor)) if self.ng else np.inf
        if self.mix is not None:
            ts, (Wp, Wp1, Wp2), keep = self.mix
            for t in ts:
                if keep.any():
                    gm = butterfly_g(self.yg, np.maximum((1 - t) * Wp + t * wpos[g_sl], 1e-14),
                                     (1 - t) * Wp1 + t * w1[g_sl], (1 - t) * Wp2 + t * w2[g_sl])
                    g_min = min(g_min, float(np.min(gm[keep])))
        v = np.sqrt(wpos / self.T)
        cal = float(np.max(self.v_lower - CAL_MARGIN - v[g_sl])) if self.v_lower is not None else -np.inf
        bnd = -np.inf
        if self.nb:
            vb = v[self.sl_b]
            bnd = float(np.max(np.maximum(vb - self.v_hi, self.v_lo - vb)))
        return g_min, cal, bnd

    def data_cost(self, w) -> float:
        """Sum of squared quote rows (dead zone included)."""
        v = np.sqrt(np.maximum(w[self.sl_q], 1e-14) / self.T)
        r = np.maximum(0.0, v - self.hi) - np.maximum(0.0, self.lo - v)
        return float(np.sum((self.sq * r) ** 2))


def _flat(vj):
    """``((w, w1, w2), (J0, J1, J2))`` -> ``(w, w1, w2, J0, J1, J2)``."""
    return (*vj[0], *vj[1])


def _solve_penalised(prob, model, p0, *, max_iter, rounds=PENALTY_ROUNDS, extra=None, data=True,
                     skip_if_clean=False):
    """Penalty rounds: solve with ``_lm``; while the butterfly / calendar / bound penalties are violated, raise
    their weights ``K_GROW`` times and solve again. ``model(p, want_jac) -> ((w, w1, w2), (J0, J1, J2))``
    at ``prob.pts``; ``extra(p) -> (r, J)``: fixed rows (the correction's regularisation); ``skip_if_clean``:
    ``p0`` is returned as it is when no condition is violated there (it already minimises the rest). Returns
    ``(p, nfev, converged)``."""
    kg, kc = KG_START, K_START
    p, nfev, ok = np.asarray(p0, float), 0, True
    if skip_if_clean:
        g_min, cal, bnd = prob.violations(*model(p, False)[0])
        if g_min >= _margin_floor(prob) and cal <= 0 and bnd <= BOUND_TOL:
            return p, 0, True

    def fun(p, kg, kc):
        vals, Js = model(p, True)
        r, J = prob.rows(*vals, *Js, kg, kc, data=data)
        if extra is not None:
            re, Je = extra(p)
            r, J = np.concatenate([r, re]), np.vstack([J, Je])
        return r, J

    g_min = 0.0
    for _ in range(rounds):
        p, nf, ok = _lm(lambda q, kg=kg, kc=kc: fun(q, kg, kc), p, max_iter=max_iter)
        nfev += nf
        g_min, cal, bnd = prob.violations(*model(p, False)[0])
        if g_min >= 0 and cal <= 0 and bnd <= BOUND_TOL:
            break
        kg *= K_GROW if g_min < 0 else 1.0
        kc *= K_GROW if (cal > 0 or bnd > BOUND_TOL) else 1.0
    # butterfly first: where it conflicts with the calendar and bound penalties (a previous slice or a bound
    # that this slice cannot meet without g < 0), those go back to their first weight and g wins; the calendar
    # shortfall left is removed by lifting the level (``fit_svi_slice``)
    for _ in range(G_ROUNDS if g_min < 0 else 0):
        p, nf, ok = _lm(lambda q, kg=kg, kc=K_START: fun(q, kg, kc), p, max_iter=max_iter)
        nfev += nf
        g_min = prob.violations(*model(p, False)[0])[0]
        if g_min >= 0:
            break
        kg *= K_GROW
    return p, nfev, ok


def _margin_floor(prob) -> float:
    """The ``g - floor`` a clean start must reach to skip the penalised rounds: the smallest margin (the penalty
    rows act below the margin, not only below 0)."""
    return float(np.min(prob.g_margin - prob.g_floor)) if prob.ng else 0.0


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


def target_band(iv, band=None, *, frac: float = CORR_BAND, tol: float = CORR_TOL):
    """Per quote the band ``(lo, hi)`` (vols) a fit aims into: the middle ``frac`` of the two-sided band
    ``band = (lo, hi)`` (e.g. bid/ask vols), at least ``2 tol`` wide where the band is that wide; with one
    side missing (NaN: a zero bid) ``iv +- tol`` clipped to the side known; without ``band``, ``iv +- tol``."""
    iv = np.asarray(iv, float)
    if band is None:
        return iv - tol, iv + tol
    b_lo, b_hi = (np.broadcast_to(np.asarray(b, float), iv.shape) for b in band)
    two = np.isfinite(b_lo) & np.isfinite(b_hi) & (b_hi >= b_lo)
    c = np.where(two, 0.5 * (b_lo + b_hi), iv)
    half_w = np.where(two, 0.5 * (b_hi - b_lo), 0.0)
    half = np.where(two, np.maximum(frac * half_w, np.minimum(tol, half_w)), tol)
    lo, hi = c - half, c + half
    lo = np.where(~two & np.isfinite(b_lo), np.maximum(lo, np.nan_to_num(b_lo)), lo)
    hi = np.where(~two & np.isfinite(b_hi), np.minimum(hi, np.nan_to_num(b_hi, nan=np.inf)), hi)
    hi = np.maximum(hi, lo)
    return lo, hi


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


def _fine(yg, k: int = 8) -> np.ndarray:
    """``yg`` with ``k - 1`` points between consecutive values (a check grid as fine as ``yg`` is, everywhere)."""
    yg = np.unique(np.asarray(yg, float))
    if len(yg) < 2:
        return yg
    u = np.arange(k) / k
    return np.r_[(yg[:-1, None] + np.diff(yg)[:, None] * u[None, :]).ravel(), yg[-1]]


def _bound_rows(bounds, cap, nxt, nxt_grid):
    """The ``(y, w_lo, w_hi)`` bound points of ``fit_svi_slice`` (NaN: no bound on that side)."""
    ys, los, his = [], [], []
    if bounds is not None:
        yb, lo, hi = (np.asarray(v, float) for v in bounds)
        ys.append(yb), los.append(lo), his.append(hi)
    if cap is not None:
        yc, wc = (np.asarray(v, float) for v in cap)
        ys.append(yc), los.append(np.full(len(yc), np.nan)), his.append(wc)
    if nxt is not None and nxt_grid is not None:
        yn = np.asarray(nxt_grid, float)
        ys.append(yn), los.append(np.full(len(yn), np.nan)), his.append(np.maximum(nxt.derivs(yn)[0], 0.0))
    if not ys:
        return None, None, None
    y, lo, hi = np.concatenate(ys), np.concatenate(los), np.concatenate(his)
    keep = np.isfinite(y) & (np.isfinite(lo) | np.isfinite(hi))
    lo, hi = lo[keep], hi[keep]
    clash = np.isfinite(lo) & np.isfinite(hi) & (lo > hi)       # inconsistent neighbours: no bound there
    return y[keep][~clash], lo[~clash], hi[~clash]


def _fit_backbone(y, T, wt, centre, yg, *, v_prior, k_prior, start, guesses, effort: int = 1):
    """Stage 1 of ``fit_svi_slice``: the raw-SVI backbone by least squares to the band centres (weights
    ``wt ** BACKBONE_POWER``: a global shape, not the at-the-money quotes alone) with the butterfly (and
    smoothing prior) penalties, from the best of several starts. Returns ``(SVISlice, start name, nfev, ok,
    message)``."""
    y_lo, y_hi = float(np.min(y)), float(np.max(y))
    wt_b = wt**BACKBONE_POWER
    prob = _SliceProblem(y, T, wt_b / np.mean(wt_b), centre, centre, yg, v_prior=v_prior, k_prior=k_prior)
    lb, ub = _slice_bounds(y)
    box = _Box(lb, ub)

    def model(z, want_jac):
        vals, Js = _svi_jac(box.x(z), prob.pts, want_jac)
        if want_jac:
            dx = box.dx(z)
            Js = tuple(J * dx[None, :] for J in Js)
        return vals, Js

    starts = [(str(name), g) for name, g in guesses if g is not None]
    if start is not None:
        starts.append(("ssvi", start))
    if len(y) >= 4:
        qe = quasi_explicit_start(y, centre**2 * T, wt / np.maximum(2 * centre * T, 1e-12) ** 2, y_lo, y_hi)
        if qe is not None:
            starts.append(("quasi-explicit", qe))
    if not starts:
        atm = float(np.interp(0.0, np.sort(y), (centre**2 * T)[np.argsort(y)]))
        starts.append(("flat", SVISlice(a=max(atm, 1e-6) - 0.05 * 0.1, b=0.05, rho=-0.3, m=0.0, sigma=0.1)))
    # a short run from every start on the quotes alone (penalties far from a start would decide the basin),
    # the best one to convergence, then the penalised solve from there
    best, nfev = None, 0
    sq = np.sqrt(wt_b / np.mean(wt_b))

    def data_only(z):
        """The quote rows alone (and the prior's, with smoothing): the SVI evaluated at the quotes only."""
        if k_prior > 0:
            return prob.rows(*_flat(model(z, True)), 0.0, 0.0)
        (w, _, _), (J0, _, _) = _svi_jac(box.x(z), y, True)
        wq = np.maximum(w, 1e-14)
        v = np.sqrt(wq / T)
        return sq * (v - centre), (sq / (2.0 * np.sqrt(wq * T)))[:, None] * J0 * box.dx(z)[None, :]

    for name, sl0 in starts:
        z, nf, _ = _lm(data_only, box.z(np.clip(_to_x(sl0), lb, ub)), max_iter=START_ITER * effort)
        nfev += nf
        r, _ = data_only(z)
        c = float(r @ r)
        if best is None or c < best[0]:
            best = (c, name, z)
    _, best_name, z = best
    z, nf, _ = _lm(data_only, z, max_iter=SVI_MAX_ITER * effort)
    nfev += nf
    z, nf, ok = _solve_penalised(prob, model, z, max_iter=SVI_MAX_ITER * effort, skip_if_clean=True)
    nfev += nf
    msg = "backbone converged" if ok else f"backbone stopped after {SVI_MAX_ITER * effort} iterations per round"
    return _from_x(box.x(z)), best_name, nfev, ok, msg



def _correction_start(prob, W, B, reg, centre, prev, y_lo: float, y_hi: float) -> np.ndarray:
    """A start for the correction by one linear least-squares solve: the quotes' band centres (vol-weighted
    total variance) and, beyond this slice's quotes where the calendar condition applies, the previous slice
    wherever it lies above the backbone (there the correction has no quote to follow, and building that shape
    from hinge penalties alone is slow), with the regularisation rows."""
    T = prob.T
    q, g_ = prob.sl_q, prob.sl_g
    sw = prob.sq / (2.0 * centre * T)
    rows, rhs = [sw[:, None] * B[0][q]], [sw * (centre**2 * T - W[0][q])]
    if prev is not None and prob.v_lower is not None:
        yg = prob.yg
        need = np.isfinite(prob.v_lower) & (prob.v_lower > CAL_MARGIN) & ((yg < y_lo) | (yg > y_hi))
        target = prob.v_lower**2 * T
        need &= target > W[0][g_]
        if need.any():
            a = prob.sc / (2.0 * np.sqrt(target[need] * T))
            rows.append(a[:, None] * B[0][g_][need])
            rhs.append(a * (target[need] - W[0][g_][need]))
    rows.append(reg)
    rhs.append(np.zeros(reg.shape[0]))
    A, b = np.vstack(rows), np.concatenate(rhs)
    try:
        return np.linalg.lstsq(A, b, rcond=None)[0]
    except np.linalg.LinAlgError:
        return np.zeros(B[0].shape[1])


def _lower(prev, y, cal_range):
    """The previous slice's total variance at ``y`` as a lower bound (0, no bound, outside ``cal_range``)."""
    if prev is None:
        return None
    w = np.maximum(prev.derivs(y)[0], 0.0)
    if cal_range is not None:
        w = np.where((y >= cal_range[0]) & (y <= cal_range[1]), w, 0.0)
    return w


def _one_blas_thread(fun):
    """Run ``fun`` with BLAS on one thread: the fits' dense solves are small (tens of parameters), and a pool of
    BLAS threads made them 8 times slower on a busy 2-core machine (measured: ``J.T @ J`` of 700 x 70)."""

    @functools.wraps(fun)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1, user_api="blas"):
            return fun(*args, **kwargs)

    return wrapper


@_one_blas_thread
def fit_svi_slice(y, iv, wt, T: float, *, y_grid, start: SVISlice | None = None, prev=None, nxt=None,
                  nxt_grid=None, cap=None, prior: SVISlice | None = None, smoothing: float = 0.0,
                  correction: bool = True, band=None, bounds=None, guesses=(), support=None, cal_range=None,
                  backbone=None, blend: bool = False, effort: int = 1):
    """Fit one slice in two stages (module docstring): the raw-SVI backbone to the quotes (butterfly and prior
    penalties), then (``correction`` and ``smoothing < CORR_OFF``) the spline correction, linear in its
    coefficients, with the butterfly, calendar and bound conditions.

    ``y, iv, wt`` (N,): log-moneyness, mid implied vols, weights (mean about 1; residuals in vol units);
    ``T`` years; ``band``: ``(lo, hi)`` vols per quote, the band the slice should lie in (bid/ask, or its
    intersection with the calendar envelope; ``target_band`` picks its middle); ``y_grid`` (M,): where the
    butterfly, calendar and prior penalties are evaluated (refined inside the correction's support);
    ``prev``: the previous expiry's slice (anything with ``derivs``): the slice stays above it on
    ``y_grid``; ``bounds``: ``(y_b, w_lo, w_hi)`` soft bounds on total variance (NaN: none), e.g. the other
    expiries' quotes beyond this slice's; ``cap``: ``(y_c, w_c)`` upper bounds and ``nxt`` / ``nxt_grid``
    an upper slice, both added to ``bounds``; ``support``: ``(lo, hi)``, a range the correction must cover
    besides the quotes (the neighbouring expiries' quoted ranges: where the calendar condition is checked);
    ``cal_range``: ``(lo, hi)``, where the slice must stay above ``prev`` (default: all of ``y_grid``);
    ``backbone``: a slice used as the backbone instead of fitting one (``SVISlice``, or ``SVISplineSlice``
    whose knots and correction the new correction starts from); ``blend``: the blends ``(1 - t) prev + t w``
    (``t`` in ``BLEND_TS``) must be butterfly-free too (the linear interpolation between the two expiries);
    ``effort``: the iteration budgets are multiplied by this (a retry of a slice that went wrong);
    ``prior``: the SSVI pre-fit slice (a start and the smoothing target); ``start``: a start slice;
    ``guesses``: more ``(name, SVISlice)`` starts (e.g. the previous expiry's backbone).
    Returns ``(SVISlice | SVISplineSlice, SliceFitInfo)``.
    """
    y, iv, wt = (np.asarray(a, float) for a in (y, iv, wt))
    T = float(T)
    yg = np.asarray(y_grid, float)
    if cal_range is not None:
        # the calendar region's ends are penalty points too (a crossing there is not between grid points)
        yg = np.unique(np.r_[yg, np.clip(cal_range, yg.min(), yg.max())])
    s = float(np.clip(smoothing, 0.0, 1.0))
    if prior is not None and s >= 1.0:
        return prior, SliceFitInfo(True, 0, "smoothing = 1: the SSVI slice", float(np.min(prior.g(yg))), 0.0,
                                   "prior", 0.0)
    k_prior = np.sqrt(s / (1.0 - s)) if (prior is not None and s > 0) else 0.0
    lo_t, hi_t = target_band(iv, band)
    centre = 0.5 * (lo_t + hi_t)
    y_lo, y_hi = float(np.min(y)), float(np.max(y))

    # stage 1: the SVI backbone, least squares to the band centres with the butterfly (and prior) penalties;
    # or the backbone given (the previous expiry of the same date, scaled), whose correction is kept and added to
    v_prior = np.sqrt(np.maximum(prior.w(yg), 0.0) / T) if k_prior > 0 else None
    knots0, d0 = None, None
    if backbone is not None:
        base = sl = getattr(backbone, "base", backbone)
        if isinstance(backbone, SVISplineSlice) and len(backbone.knots):
            knots0, d0 = np.asarray(backbone.knots, float), np.asarray(backbone.coef, float)
            sl = backbone
        best_name, nfev, ok, msg = "backbone given", 0, True, "backbone given"
    else:
        base, best_name, nfev, ok, msg = _fit_backbone(y, T, wt, centre, yg, v_prior=v_prior, k_prior=k_prior,
                                                       start=start, guesses=guesses, effort=int(effort))
        sl = base

    # stage 2: the correction (linear in its coefficients) with every condition
    yb, b_lo, b_hi = _bound_rows(bounds, cap, nxt, nxt_grid)
    if prev is not None and yb is not None:
        # the previous slice is a hard lower bound, the bounds soft: an upper bound below it cannot be met
        b_hi = np.fmax(b_hi, prev.derivs(yb)[0] * (1.0 + 1e-6))
    corrected, corr_bp = False, 0.0
    if correction and s < CORR_OFF and len(y) >= CORR_MIN_QUOTES and y_hi - y_lo > 1e-6:
        knots = _corr_knots(y_lo, y_hi, len(y), support) if knots0 is None else knots0
        c_lo, c_hi = float(knots[3]), float(knots[-4])
        # the penalty grid refined inside the correction's support: g must hold between knots too
        ygc = np.unique(np.r_[yg, np.linspace(c_lo, c_hi, G_PER_SEG * (len(knots) - 7) + 1)])
        # beyond the correction's support the slice is the backbone: its g there is what it is (the backbone's
        # penalty took care of it); the same where the caller's grid does not reach
        out = (ygc < max(yg[0], c_lo)) | (ygc > min(yg[-1], c_hi))
        g_b = (backbone if backbone is not None else base).g(ygc)
        g_floor = np.where(out, np.minimum(0.0, g_b), 0.0)
        # the full margin over the quotes; beyond them (an extrapolation that must stay above the previous
        # slice's quoted wing, often near the butterfly bound itself) a smaller one
        m_in = np.where((ygc >= y_lo) & (ygc <= y_hi), G_MARGIN_CORR, G_MARGIN_OUT)
        g_margin = np.where(out, np.minimum(m_in, g_b), m_in)
        if yb is not None:
            # bounds only where the correction can meet them: over the support asked for (not at the ends of
            # the B-splines' reach, where the correction returns to zero)
            r_lo, r_hi = (c_lo, c_hi) if support is None else (min(y_lo, support[0]), max(y_hi, support[1]))
            inb = (yb >= r_lo) & (yb <= r_hi)
            yb, b_lo, b_hi = yb[inb], b_lo[inb], b_hi[inb]
        kw_c = dict(g_margin=g_margin, g_floor=g_floor, w_lower=_lower(prev, ygc, cal_range), k_prior=k_prior,
                    v_prior=np.sqrt(np.maximum(prior.w(ygc), 0.0) / T) if k_prior > 0 else None,
                    mix=(BLEND_TS, prev.derivs(ygc)) if (blend and prev is not None) else None)
        pc = _SliceProblem(y, T, wt, lo_t, hi_t, ygc, yb=yb, b_lo=b_lo, b_hi=b_hi, **kw_c)
        B = _corr_basis(knots, pc.pts)
        nb = B[0].shape[1]
        W = base.derivs(pc.pts)
        if d0 is not None:
            # the given backbone's correction is part of the backbone: the new correction adds to it
            W = tuple(Wi + Bi @ d0 for Wi, Bi in zip(W, B, strict=True))
        lam = correction_lambda(s)
        h = float(knots[1] - knots[0])
        # the correction's penalties in vol units: d is total variance, dvol = dw / (2 sigma T)
        vs = 1.0 / (2.0 * float(np.mean(iv)) * T)
        P = np.sqrt(lam) * vs * np.sqrt(len(y) / max(nb - 2, 1)) * np.diff(np.eye(nb), n=2, axis=0)
        R = np.sqrt(RIDGE * lam) * vs * np.sqrt(len(y) / nb) * np.eye(nb)
        # beyond the quotes nothing holds the correction but the conditions: a curvature penalty there (in
        # units of one knot spacing) lets it fade to zero smoothly
        y_out = ygc[((ygc < y_lo) | (ygc > y_hi)) & (ygc > c_lo) & (ygc < c_hi)]
        if len(y_out) and LAM_OUT > 0:
            B2o = _corr_basis(knots, y_out)[2]
            R = np.vstack([R, np.sqrt(LAM_OUT) * vs * np.sqrt(len(y) / len(y_out)) * h * h * B2o])
        reg = np.vstack([P, R])

        def cmodel(d, want_jac):
            return tuple(Wi + Bi @ d for Wi, Bi in zip(W, B, strict=True)), B

        d_start = _correction_start(pc, W, B, reg, centre, prev, y_lo, y_hi)
        d1, nf, ok1 = _solve_penalised(pc, cmodel, d_start, max_iter=CORR_MAX_ITER * effort,
                                       extra=lambda d: (reg @ d, reg))
        nfev += nf
        if pc.nb and pc.violations(*cmodel(d1, False)[0])[0] < 0:
            # the other expiries' bounds and the butterfly condition could not both be met: the bounds give way
            # (they are soft: the calendar condition with the neighbours is checked where it is required)
            pc = _SliceProblem(y, T, wt, lo_t, hi_t, ygc, **kw_c)
            n_q = len(y) + len(ygc)
            W, B = tuple(v[:n_q] for v in W), tuple(v[:n_q] for v in B)
            d1, nf, ok1 = _solve_penalised(pc, cmodel, d_start, max_iter=CORR_MAX_ITER * effort,
                                           extra=lambda d: (reg @ d, reg))
            nfev += nf
            msg = f"{msg}; bounds beyond the quotes dropped for the butterfly condition"
        # kept when it removes a material part of what SVI leaves, or the conditions need it (otherwise the
        # plain SVI slice is simpler)
        cost0, cost1 = pc.data_cost(W[0]), pc.data_cost(cmodel(d1, False)[0][0])
        g0, cal0, bnd0 = pc.violations(*W)
        if (cost1 < (1.0 - CORR_MIN_GAIN) * cost0 or not (g0 >= 0 and cal0 <= 0 and bnd0 <= BOUND_TOL)
                or d0 is not None):
            d1 = d1 if d0 is None else d0 + d1
            sl = SVISplineSlice(base, tuple(float(k) for k in knots), tuple(float(c) for c in d1))
            corrected = True
            corr_bp = float(np.max(np.abs(B[0][: len(y)] @ d1) / (2.0 * iv * T))) * 1e4
            # the correction took what the backbone left: its iteration budget is then no trouble
            ok = True
            msg = f"{msg}; correction {'converged' if ok1 else 'stopped at its budget'}"
        elif cost0 == 0.0 and not ok:
            ok, msg = True, f"{msg}; every quote already inside its target band"
    lifted, gap = 0.0, -np.inf
    if prev is not None:
        # the penalty grid can miss a crossing between its points: check on a finer grid, and keep a minimal
        # separation (LIFT_SEP, in vol) so that no crossing hides between the check points either
        yf = _fine(yg, 16)
        if cal_range is not None:
            yf = np.unique(np.r_[yf[(yf >= cal_range[0]) & (yf <= cal_range[1])], cal_range])
        w_prev = prev.derivs(yf)[0]
        sep = 2.0 * float(np.mean(iv)) * T * LIFT_SEP
        gap = float(np.max(w_prev - sl.w(yf)))
        if gap > -sep:
            lifted = gap + sep
            sl = lift(sl, lifted)
        gap = float(np.max(w_prev - sl.w(yf)))
    g_min = float(np.min(sl.g(_fine(yg, 4))))
    if not ok:
        warnings.warn(f"SVI slice T={T:.4f}: optimiser stopped: {msg}", ConvergenceWarning, stacklevel=2)
    return sl, SliceFitInfo(ok, nfev, str(msg), g_min, gap, best_name, lifted, corrected, corr_bp)


def calendar_envelope(y, T, bid, ask, idx, n: int, *, step: float = 0.0025):
    """The other expiries' quotes as bounds for each expiry (module docstring: across expiries).

    ``y, T, bid, ask, idx`` (N,): log-moneyness, expiry time, bid / ask vols (NaN: none) and expiry index
    (0 .. n-1, increasing ``T``) of every quote. On a common grid ``Y`` (spacing ``step``) each expiry's bid
    and ask total variances are interpolated linearly between its own quotes (NaN outside its quoted
    range); ``L[k]`` is the largest bid of the expiries before ``k``, ``U[k]`` the smallest ask of those
    after it (NaN where none is quoted). A slice inside its bid/ask on a calendar-free surface lies in
    ``[L_k, U_k]``. Cost ``O(N + n len(Y))``. Returns ``(Y, L, U)``, ``L`` and ``U`` (n, len(Y))."""
    y, T, bid, ask = (np.asarray(v, float) for v in (y, T, bid, ask))
    idx = np.asarray(idx, int)
    lo, hi = float(np.min(y)), float(np.max(y))
    Y = np.linspace(lo, hi, max(int(np.ceil((hi - lo) / step)) + 1, 2))
    BID = np.full((n, len(Y)), np.nan)
    ASK = np.full((n, len(Y)), np.nan)
    order = np.lexsort((y, idx))
    bounds = np.searchsorted(idx[order], np.arange(n + 1))
    for k in range(n):
        o = order[bounds[k]:bounds[k + 1]]
        for src, dst in ((bid, BID), (ask, ASK)):
            ok = o[np.isfinite(src[o]) & (src[o] > 0)]
            if len(ok) < 2:
                continue
            yk, wk = y[ok], src[ok] ** 2 * T[ok]
            inside = (Y >= yk[0]) & (Y <= yk[-1])
            dst[k, inside] = np.interp(Y[inside], yk, wk)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        L = np.full_like(BID, np.nan)
        U = np.full_like(ASK, np.nan)
        if n > 1:
            L[1:] = np.fmax.accumulate(BID, axis=0)[:-1]
            U[:-1] = np.fmin.accumulate(ASK[::-1], axis=0)[::-1][1:]
    return Y, L, U
