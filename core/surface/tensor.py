"""The whole surface as one penalised tensor-product spline: smooth in ``T`` by construction, flexible in ``y``.

Model. Implied variance ``v = sigma_imp^2`` is a bicubic B-spline in two coordinates,

    zeta = asinh(a),  a = y / (c sqrt(T))      (moneyness per unit sqrt(T); asinh spreads knots: dense at the
                                                 money, sparse in the wings; ``c = ZETA_SCALE``)
    u    = ln T                                (resolution where expiries are dense: the short end)

    v(zeta, u) = sum_jk C_jk B_j(zeta) B_k(u),   w(y, T) = T v

on uniform knots. With ``s = sinh(zeta) = a``, ``ch = cosh(zeta)``, ``th = tanh(zeta)`` the derivatives at fixed
``T`` / fixed ``y`` are, in closed form (chain rule; all linear in ``C``):

    w_y  = T v_zeta / (ch c sqrt(T))
    w_yy = (v_zz - th v_zeta) / (ch^2 c^2)
    w_T  = v - th v_zeta / 2 + v_u

so calendar order ``w_T >= 0`` is a linear condition on ``C`` and the butterfly condition ``g >= 0``
(Gatheral & Jacquier 2014) is a smooth function of three linear forms (linearised per round).

Fit (``fit_tensor``). Penalised least squares in vol units (P-splines in two dimensions):

    sum_i rho_i wt_i (v(zeta_i, u_i) - v_i)^2 / (2 sigma_i)^2  +  lam_z ||D2_zeta C||^2 + lam_u ||D2_u C||^2

(``wt_i`` the quote weights of ``core.surface.fit.quote_weights``: 1 / vol spread^2; ``dv = 2 sigma dsigma``).
Two Huber rounds down-weight gross outliers (residuals in units of the half bid/ask band), then two rounds
make the loss insensitive inside the band (weight ``0.1 + 0.9 min(1, (r / half band)^2)``: noise within the
spread is not followed; measured on the demo, whose mids sit off the true vols by up to 40% of the half
spread: local vol's median error against the closed form 43 -> 32 bp). The penalties grow as the square of
the median half spread beyond 8 bp (wide markets leave room to be smooth). Each round is one banded
Cholesky solve (coefficients numbered ``u``-major: bandwidth ``3 (nz + 3) + 3``). Then static arbitrage is
removed by a sequential QP (OSQP) on a check grid over the whole knot domain: ``w_T >= 0``, ``w > 0`` and
outward end slopes are linear in ``C``; ``g >= G_MARGIN`` is linearised at the current solution. Check points
that are in, or near, violation join the QP's active set until no new one appears.

Outside the knot domain: linear in ``zeta`` (``v_zz = 0``; end slopes are constrained to point away from
zero, so ``v`` grows outward, about logarithmically in ``|y|``: Lee's bound holds); before the first and after
the last expiry, implied vol is held at fixed ``y``: ``w(y, T) = (T / T_end) w(y, T_end)``, so that local vol
stays finite as ``T -> 0`` (holding the smile in ``zeta`` instead would let wing vols grow without bound).

Sources: Eilers & Marx (1996), "Flexible smoothing with B-splines and penalties"; Eilers, Currie & Durban
(2006) for the tensor-product penalties; Gatheral (2006) eq. 1.10 and Gatheral & Jacquier (2014) for the
conditions. The shortest expiries take part like any other: the ``u`` penalty is local (a few knots of
``ln T``), so a noisy 1-3 day smile bends the surface near it but cannot move the months beyond.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import osqp
import scipy.linalg as sla
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from core.errors import FitError
from core.surface.base import Derivatives, ModelFit, SliceData, VolSurface, butterfly_g, butterfly_g_grad

ZETA_SCALE = 0.1        # c: a = y / (c sqrt T); |a| = 1 at 0.1 sqrt(T) of log-moneyness (half an ATM sd)
DZETA = 0.22            # knot spacing in zeta (near the money 0.022 in y / sqrt(T))
DU = 0.08               # knot spacing in ln T (8% steps in T)
ZETA_MARGIN = 0.35      # knot domain beyond the outermost quote, in zeta
U_MARGIN = 0.05         # ... and beyond the first / last expiry, in ln T
LAM_Z = 3e-4            # relative roughness penalties at smoothing 0 (times the mean data diagonal)
LAM_U = 2e-3            # (the ln T penalty is what keeps local vol from striping between expiries)
B_REF = 8e-4            # half spread (8 bp, liquid SPX) at and below which the penalties take their base values
BAND_POW = 2.0          # ... as (median half spread / B_REF)^BAND_POW
SMOOTH_DECADES = 4.0    # smoothing 1 multiplies both penalties by 10^4
INSENSITIVE_ROUNDS = 2  # epsilon-insensitive rounds (below)
BAND_FLOOR = 0.1        # weight of a quote fitted at its mid, against 1 at the edge of its band or beyond
HUBER_C = 4.0           # gross outliers: residual beyond 4 half bands (and 4 x 10 bp) is down-weighted
G_MARGIN = 5e-3         # butterfly rows ask for g >= G_MARGIN
W_T_MARGIN = 5e-4       # calendar rows ask for w_T >= W_T_MARGIN (local vol >= about 2%: the clip floor)
SLOPE_TOL = 1e-9        # an end slope this close to zero points nowhere: not a violation (a flat smile's slopes are
                        # zero up to rounding; treating those as violations sent flat surfaces through the QP)
W_T_NEAR = 2e-3         # a check point with w_T below this (local vol ~4.5%) is watched by the QP
QP_EPS = 1e-6           # OSQP tolerances (absolute and relative), on the objective scaled to a unit diagonal
QP_RHO = 0.005          # OSQP's initial step: 150-300 ADMM iterations here, against about 2,000 at its default 0.1
QP_MAX_ITER = 4000      # ADMM iterations per QP at most (a round that stops there keeps its best iterate)
ARB_ROUNDS = 8          # QP rounds at most (each adds the check points that broke a condition)
QP_SECONDS = 3.0        # no new QP round after this long (real chains need 0.1-0.6 s)

_AR4 = np.arange(4)


def _bases(x, lo: float, h: float, n: int, deriv: int):
    """Uniform cubic B-splines on ``[lo, lo + n h]``: interval index ``i`` (M,) and the four non-zero basis
    functions ``B_i..B_{i+3}`` at ``x`` (M,) with derivatives up to ``deriv``: list of (M, 4) arrays."""
    t = (np.asarray(x, float) - lo) / h
    i = np.clip(np.floor(np.nan_to_num(t)).astype(np.intp), 0, n - 1)   # NaN stays NaN through t below
    t = t - i
    t2, t3, s = t * t, t * t * t, 1.0 - t
    out = [np.stack([s * s * s, 3 * t3 - 6 * t2 + 4, -3 * t3 + 3 * t2 + 3 * t + 1, t3], axis=-1) / 6.0]
    if deriv >= 1:
        out.append(np.stack([-s * s, 3 * t2 - 4 * t, -3 * t2 + 2 * t + 1, t2], axis=-1) / (2.0 * h))
    if deriv >= 2:
        out.append(np.stack([s, 3 * t - 2, 1 - 3 * t, t], axis=-1) / (h * h))
    return i, out


@dataclass(frozen=True)
class TensorGrid:
    """Knots of the tensor product: ``zeta`` on ``[z_lo, z_lo + nz hz]``, ``u = ln T`` on ``[u_lo, u_lo + nu hu]``
    (``nz``, ``nu`` intervals; ``nz + 3`` x ``nu + 3`` coefficients)."""

    z_lo: float
    hz: float
    nz: int
    u_lo: float
    hu: float
    nu: int
    c: float = ZETA_SCALE

    @property
    def shape(self) -> tuple[int, int]:
        return self.nz + 3, self.nu + 3

    @property
    def z_hi(self) -> float:
        return self.z_lo + self.nz * self.hz

    @property
    def u_hi(self) -> float:
        return self.u_lo + self.nu * self.hu

    def coords(self, y, T):
        """``(zeta, u)`` of log-moneyness ``y`` and expiry ``T`` (broadcast)."""
        T = np.asarray(T, float)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.arcsinh(np.asarray(y, float) / (self.c * np.sqrt(T))), np.log(T)

    def rows(self, zeta, u):
        """Linear forms at points inside the domain: ``(v, v_z, v_zz, v_u, v_zu)`` as sparse (M, P) matrices."""
        iz, (bz, bz1, bz2) = _bases(zeta, self.z_lo, self.hz, self.nz, 2)
        iu, (bu, bu1) = _bases(u, self.u_lo, self.hu, self.nu, 1)
        M = len(iz)
        nzc = self.nz + 3
        # coefficients are numbered u-major (k * nzc + j): the normal matrix is banded with 3 nzc + 3 bands
        cols = ((iu[:, None, None] + _AR4[None, None, :]) * nzc + iz[:, None, None] + _AR4[None, :, None]).reshape(M, 16)
        rr = np.repeat(np.arange(M), 16)
        P = int(np.prod(self.shape))

        def mat(a, b):
            return sp.csr_matrix(((a[:, :, None] * b[:, None, :]).reshape(-1), (rr, cols.reshape(-1))), shape=(M, P))

        return mat(bz, bu), mat(bz1, bu), mat(bz2, bu), mat(bz, bu1), mat(bz1, bu1)

    def evaluate(self, C, zeta, u):
        """``(v, v_z, v_zz, v_u, v_zu)`` at points (M,) inside the domain, from coefficients ``C`` (nz+3, nu+3)."""
        iz, (bz, bz1, bz2) = _bases(zeta, self.z_lo, self.hz, self.nz, 2)
        iu, (bu, bu1) = _bases(u, self.u_lo, self.hu, self.nu, 1)
        blk = C[iz[:, None, None] + _AR4[None, :, None], iu[:, None, None] + _AR4[None, None, :]]   # (M, 4, 4)
        cu, cu1 = np.einsum("mjk,mk->mj", blk, bu), np.einsum("mjk,mk->mj", blk, bu1)
        return (np.einsum("mj,mj->m", cu, bz), np.einsum("mj,mj->m", cu, bz1), np.einsum("mj,mj->m", cu, bz2),
                np.einsum("mj,mj->m", cu1, bz), np.einsum("mj,mj->m", cu1, bz1))


def _to_w(grid: TensorGrid, zeta, T, v, v_z, v_zz, v_u):
    """``(w, w_y, w_yy, w_T)`` from the spline's values in ``(zeta, u)`` (module docstring)."""
    ch = np.cosh(zeta)
    th = np.tanh(zeta)
    sq = np.sqrt(T)
    return (T * v, sq * v_z / (ch * grid.c), (v_zz - th * v_z) / (ch * ch * grid.c * grid.c),
            v - 0.5 * th * v_z + v_u)


@dataclass(frozen=True, eq=False)
class TensorSplineSurface(VolSurface):
    """``w(y, T) = T v(zeta, ln T)`` with ``v`` a bicubic spline on ``grid`` (module docstring).

    ``C`` (nz+3, nu+3) coefficients; ``T_nodes`` the fitted expiries with their quoted ``y`` range
    ``y_lo``/``y_hi`` (for ``y_quoted``, linear in ``T`` between expiries)."""

    grid: TensorGrid
    C: np.ndarray
    T_nodes: tuple
    y_lo: tuple
    y_hi: tuple
    T_quoted: tuple = field(default=(0.0, np.inf))

    def __post_init__(self) -> None:
        object.__setattr__(self, "T_quoted", (float(self.T_nodes[0]), float(self.T_nodes[-1])))

    def y_quoted(self, T):
        """Quoted log-moneyness range at ``T``: linear in ``T`` between the fitted expiries, held beyond."""
        T = np.asarray(T, float)
        Tn = np.asarray(self.T_nodes)
        return np.interp(T, Tn, np.asarray(self.y_lo)), np.interp(T, Tn, np.asarray(self.y_hi))

    def derivatives(self, y, T) -> Derivatives:
        """``w, w_y, w_yy, w_T`` at ``(y, T)`` (broadcast), analytic; extrapolation as in the module docstring."""
        y, T = np.broadcast_arrays(np.asarray(y, float), np.asarray(T, float))
        shape = y.shape
        g = self.grid
        T1 = T.ravel()
        Tc = np.clip(T1, np.exp(g.u_lo), np.exp(g.u_hi))
        zeta, u = g.coords(y.ravel(), Tc)
        zc = np.clip(zeta, g.z_lo, g.z_hi)
        v, v_z, v_zz, v_u, v_zu = self.grid.evaluate(self.C, zc, u)
        dz = zeta - zc
        v = np.maximum(v + v_z * dz, 1e-12)
        v_u = v_u + v_zu * dz
        v_zz = np.where(dz == 0, v_zz, 0.0)
        w, w_y, w_yy, w_T = _to_w(g, zeta, Tc, v, v_z, v_zz, v_u)
        # beyond the first / last expiry: implied vol held at fixed y, w = (T / Tc) w(y, Tc)
        out = T1 != Tc
        if out.any():
            k = T1 / Tc
            w, w_y, w_yy = w * k, w_y * k, w_yy * k
            w_T = np.where(out, w / T1, w_T)
        return Derivatives(w=w.reshape(shape), w_y=w_y.reshape(shape), w_yy=w_yy.reshape(shape),
                           w_T=w_T.reshape(shape))

    def to_dict(self) -> dict:
        """JSON-able description: the knots and coefficients."""
        g = self.grid
        return {"zeta_lo": g.z_lo, "zeta_step": g.hz, "n_zeta": g.nz, "lnT_lo": g.u_lo, "lnT_step": g.hu,
                "n_lnT": g.nu, "zeta_scale": g.c, "coef": np.asarray(self.C).tolist()}


@dataclass(frozen=True)
class TensorFit:
    """What ``fit_tensor`` returns: the surface, the robust weight of each quote (below 1: a gross outlier, more
    than HUBER_C half spreads off the surface, down-weighted), ``fit_weight`` the factor each quote's weight
    carried in the last least-squares solve (robust and band-insensitive: ``tensor_system(...).solve(fit_weight)``
    reproduces the fit before its arbitrage QP), and
    per-round diagnostics (``rounds``: list of dicts) with the arbitrage left on the check grid (``violations``)."""

    surface: TensorSplineSurface
    robust_weight: np.ndarray
    rounds: list
    violations: dict
    fit_weight: np.ndarray = None


def _conditions(c, Gw, Gwy, Gwyy, GwT, yc) -> dict:
    """``w, w_y, w_yy, w_T`` and ``g`` at the check points for coefficients ``c``."""
    w, wy, wyy, wT = Gw @ c, Gwy @ c, Gwyy @ c, GwT @ c
    wp = np.maximum(w, 1e-12)
    return {"g": butterfly_g(yc, wp, wy, wyy), "w": w, "wp": wp, "wy": wy, "wyy": wyy, "wT": wT}


def _violations(cd: dict, s_lo, s_hi) -> dict:
    """Counts of check points breaking each condition (``g < 0``, ``w_T < 0``, ``w <= 0``, end slopes)."""
    return {"butterfly": int((cd["g"] < 0).sum()), "calendar": int((cd["wT"] < 0).sum()),
            "positivity": int((cd["w"] <= 0).sum()),
            "slopes": int((s_lo > SLOPE_TOL).sum() + (s_hi < -SLOPE_TOL).sum()),
            "points": int(len(cd["g"])), "g_min": float(np.min(cd["g"])), "w_T_min": float(np.min(cd["wT"]))}


def row_norms(G) -> np.ndarray:
    """Euclidean norm of each row of a sparse matrix (1 where a row is empty)."""
    n = np.sqrt(np.asarray(G.multiply(G).sum(axis=1)).ravel())
    return np.where(n > 0, n, 1.0)


def check_points(grid: TensorGrid, nz_per: int = 3, nu_per: int = 4):
    """Check grid over the knot domain: ``nz_per`` points per ``zeta`` interval, ``nu_per`` per ``u`` interval."""
    z = np.linspace(grid.z_lo, grid.z_hi, grid.nz * nz_per + 1)
    u = np.linspace(grid.u_lo, grid.u_hi, grid.nu * nu_per + 1)
    Z, U = np.meshgrid(z, u, indexing="ij")
    return Z.ravel(), U.ravel()


@dataclass(frozen=True, eq=False)
class TensorSystem:
    """The penalised least-squares problem of ``fit_tensor`` for fixed quotes (module docstring).

    ``A`` (N, P) data rows (``v`` at each quote), ``scale`` (N,) ``sqrt(wt) / (2 sigma)`` (residuals in vol units),
    ``v_mid`` (N,) mid variances, ``half`` (N,) half bid/ask band in vol (the median where unknown), ``Pen``
    (P, P) the roughness penalties, ``ridge``, ``diag`` (the mean data diagonal) and ``v_ref`` (the weighted
    mean variance the ridge pulls towards) scalars; ``nband`` the
    half bandwidth of the normal matrix. ``normal(weights)`` -> ``(M, rhs)``; ``solve(weights)`` -> coefficients
    (banded Cholesky); ``cholesky(weights)`` the banded factor (upper form of ``scipy.linalg.cholesky_banded``).
    """

    A: object
    scale: np.ndarray
    v_mid: np.ndarray
    half: np.ndarray
    Pen: object
    ridge: float
    diag: float
    nband: int
    v_ref: float = 0.0

    def normal(self, weights):
        """Normal matrix ``A' W A + Pen + ridge I`` (sparse) and right-hand side ``A' W v_mid + ridge v_ref``, ``W``
        the squared scales times ``weights`` (N,): the ridge pulls every coefficient towards the reference variance
        ``v_ref`` (the B-splines sum to one, so a constant surface costs no ridge)."""
        sw = self.scale * np.sqrt(weights)
        Aw = self.A.multiply(sw[:, None]).tocsr()
        P = self.A.shape[1]
        return Aw.T @ Aw + self.Pen + self.ridge * sp.eye(P), Aw.T @ (self.v_mid * sw) + self.ridge * self.v_ref

    def banded(self, weights):
        """``(ab, rhs)``: the normal matrix in upper banded storage and the right-hand side."""
        M, rhs = self.normal(weights)
        M = M.tocoo()
        up = M.col >= M.row
        ab = np.zeros((self.nband + 1, M.shape[0]))
        ab[self.nband + M.row[up] - M.col[up], M.col[up]] = M.data[up]
        return ab, rhs

    def cholesky(self, weights):
        """Upper banded Cholesky factor of the normal matrix (``scipy.linalg.cho_solve_banded((f, False), b)``)."""
        return sla.cholesky_banded(self.banded(weights)[0], lower=False, check_finite=False)

    def solve(self, weights):
        """Coefficients (P,) of the penalised solve with quote weights ``weights`` (N,)."""
        ab, rhs = self.banded(weights)
        try:
            return sla.solveh_banded(ab, rhs, lower=False, check_finite=False)
        except (sla.LinAlgError, ValueError):
            return sla.lstsq(self.normal(weights)[0].toarray(), rhs, check_finite=False)[0]


def tensor_system(grid: TensorGrid, y, T, iv, wt, *, band=None, smoothing: float = 0.0) -> TensorSystem:
    """The least-squares problem of ``fit_tensor`` on ``grid`` for quotes (N,) at ``y``, ``T`` (each quote's
    expiry time), mid vols ``iv``, weights ``wt``, ``band`` ``(iv_bid, iv_ask)`` (NaN where unknown): data rows
    in vol units, and the penalties ``lam_z ||D2_zeta C||^2 + lam_u ||D2_u C||^2`` scaled by the mean data
    diagonal, by ``10^(SMOOTH_DECADES smoothing)`` and by ``(median half band / B_REF)^BAND_POW`` beyond B_REF."""
    y, T, iv, wt = (np.asarray(a, float) for a in (y, T, iv, wt))
    zeta, u = grid.coords(y, T)
    A = grid.rows(zeta, u)[0]
    nzc, nuc = grid.shape
    P = nzc * nuc
    scale = np.sqrt(wt) / (2.0 * iv)
    half = np.full(len(y), np.nan)
    if band is not None:
        bid, ask = (np.asarray(b, float) for b in band)
        with np.errstate(invalid="ignore"):
            half = np.where(np.isfinite(ask), 0.5 * (ask - np.where(np.isfinite(bid), bid, 0.0)), np.nan)
    med = float(np.nanmedian(half)) if np.any(np.isfinite(half)) else 1e-3
    half = np.where(np.isfinite(half) & (half > 0), half, med)

    def D2(n):
        return np.diff(np.eye(n), 2, axis=0)

    Pz = sp.kron(sp.eye(nuc), sp.csr_matrix(D2(nzc).T @ D2(nzc)))
    Pu = sp.kron(sp.csr_matrix(D2(nuc).T @ D2(nuc)), sp.eye(nzc))
    diag = float(np.mean(((A.multiply(scale[:, None] ** 2)).T @ A).diagonal())) if P else 1.0
    mult = 10.0 ** (SMOOTH_DECADES * float(np.clip(smoothing, 0.0, 1.0)))
    # wide spreads leave room: the penalties grow with the median half spread beyond B_REF (a market quoted
    # 50 bp wide is not followed as closely as one quoted 8 bp wide; the data term alone cannot tell them
    # apart, its weights being relative)
    mult *= max(1.0, float(np.median(half)) / B_REF) ** BAND_POW
    # a whisper of ridge towards the mean variance keeps far corners determined
    w2 = scale * scale
    v_ref = float(np.sum(w2 * iv * iv) / np.sum(w2)) if len(iv) else 0.0
    return TensorSystem(A=A, scale=scale, v_mid=iv * iv, half=half, Pen=diag * mult * (LAM_Z * Pz + LAM_U * Pu),
                        ridge=1e-7 * diag, diag=diag, nband=3 * nzc + 3, v_ref=v_ref)


@dataclass(frozen=True, eq=False)
class ConditionForms:
    """Linear forms (M, P) of ``w, w_y, w_yy, w_T`` at the arbitrage check points of a grid (``check_points``),
    with the points' ``yc`` (log-moneyness) and ``Tc`` (years): ``G @ c`` evaluates them for coefficients ``c``
    (numbered ``u``-major)."""

    Gw: object
    Gwy: object
    Gwyy: object
    GwT: object
    yc: np.ndarray
    Tc: np.ndarray


def condition_forms(grid: TensorGrid) -> ConditionForms:
    """``ConditionForms`` at ``check_points(grid)`` (module docstring: the derivatives are linear in ``C``)."""
    Zc, Uc = check_points(grid)
    Tc = np.exp(Uc)
    R0, Rz, Rzz, Ru, _ = grid.rows(Zc, Uc)
    ch, th = np.cosh(Zc), np.tanh(Zc)
    return ConditionForms(
        Gw=R0.multiply(Tc[:, None]).tocsr(),
        Gwy=Rz.multiply((np.sqrt(Tc) / (ch * grid.c))[:, None]).tocsr(),
        Gwyy=(Rzz - Rz.multiply(th[:, None])).multiply((1.0 / (ch * ch * grid.c * grid.c))[:, None]).tocsr(),
        GwT=(R0 - Rz.multiply(0.5 * th[:, None]) + Ru).tocsr(),
        yc=grid.c * np.sqrt(Tc) * np.sinh(Zc), Tc=Tc)


def fit_tensor(T_nodes, y, iv, wt, idx, *, smoothing: float = 0.0, band=None, y_lo=None, y_hi=None) -> TensorFit:
    """Fit the tensor-spline surface to quotes (module docstring).

    ``T_nodes`` (n,) expiries in years; per quote (N,): ``y`` log-moneyness, ``iv`` mid implied vol, ``wt`` weight,
    ``idx`` expiry index into ``T_nodes``; ``band`` ``(iv_bid, iv_ask)`` (N,) each, NaN where unknown;
    ``smoothing`` in [0, 1]; ``y_lo``/``y_hi`` (n,) quoted ranges (default: from ``y``). Returns ``TensorFit``.
    Raises ``FitError`` when the quotes cannot determine a surface.
    """
    # the systems are small and banded: BLAS threads only add overhead (and stall badly on a busy machine)
    with threadpool_limits(1):
        return _fit_tensor(T_nodes, y, iv, wt, idx, smoothing=smoothing, band=band, y_lo=y_lo, y_hi=y_hi)


def _robust_solve(system: TensorSystem, iv):
    """The least-squares rounds of ``fit_tensor``: two Huber rounds on residuals in half-band units (gross
    outliers stay down-weighted), then ``INSENSITIVE_ROUNDS`` band-insensitive rounds. Returns ``(c, rho,
    outlier)``: coefficients, the final weight factors (N,), and the gross outliers (bool, N)."""
    half = system.half
    c = system.solve(np.ones(len(iv)))

    def fitted_iv(c):
        return np.sqrt(np.maximum(system.A @ c, 1e-12))

    for _ in range(2):
        r = (fitted_iv(c) - iv) / np.maximum(half, 1e-3)
        rho = np.minimum(1.0, HUBER_C / np.maximum(np.abs(r), 1e-300))
        c = system.solve(rho)
    # only gross outliers stay down-weighted; a quote the surface merely misses counts fully
    outlier = rho < 0.5
    rho = np.where(outlier, rho, 1.0)
    c = system.solve(rho)
    # inside its band a quote asks for little: weights fall to BAND_FLOOR well inside the bid/ask (an
    # epsilon-insensitive loss by reweighting), so that noise within the spread is not followed
    for _ in range(INSENSITIVE_ROUNDS):
        r = np.abs(fitted_iv(c) - iv) / half
        rho = np.where(rho < 0.5, rho, BAND_FLOOR + (1.0 - BAND_FLOOR) * np.minimum(1.0, r * r))
        c = system.solve(rho)
    return c, rho, outlier


def _remove_arbitrage(system: TensorSystem, grid: TensorGrid, c, rho):
    """Static arbitrage removed by a sequential QP (OSQP, Stellato et al. 2020) over the check points that are,
    or come close to being, in violation: calendar order, positive variance and outward end slopes are linear
    conditions on the coefficients; the butterfly condition is linearised at the current solution,
    ``g + J dc >= G_MARGIN``. Points that break a condition after a round join the active set; at most
    ``ARB_ROUNDS`` rounds, no new round after ``QP_SECONDS``. Returns ``(c, rounds, violations left)``."""
    forms = condition_forms(grid)
    Gw, Gwy, Gwyy, GwT, yc, Tc = forms.Gw, forms.Gwy, forms.Gwyy, forms.GwT, forms.yc, forms.Tc
    # end slopes point away from zero variance: v_z <= 0 at the left end, >= 0 at the right end
    iu_end = np.linspace(grid.u_lo, grid.u_hi, grid.nu * 2 + 1)
    _, Ez_lo, _, _, _ = grid.rows(np.full(iu_end.shape, grid.z_lo), iu_end)
    _, Ez_hi, _, _, _ = grid.rows(np.full(iu_end.shape, grid.z_hi), iu_end)
    rounds: list = []
    cd = _conditions(c, Gw, Gwy, Gwyy, GwT, yc)
    s_lo, s_hi = Ez_lo @ c, Ez_hi @ c
    viol = _violations(cd, s_lo, s_hi)
    rounds.append({"kind": "arbitrage", **viol})
    act = {"g": np.zeros(len(yc), bool), "c": np.zeros(len(yc), bool), "v": np.zeros(len(yc), bool),
           "lo": np.zeros(len(s_lo), bool), "hi": np.zeros(len(s_hi), bool)}
    M, rhs = system.normal(rho)
    # the objective scaled to a unit mean diagonal (the constraint rows have unit length): ADMM converges
    # in far fewer iterations on a well-scaled problem
    Pq = sp.triu(M).tocsc() / system.diag
    qv = -rhs / system.diag
    t_qp = time.perf_counter()
    for _ in range(ARB_ROUNDS):
        if not any(viol[k] for k in ("butterfly", "calendar", "positivity", "slopes")):
            break
        if time.perf_counter() - t_qp > QP_SECONDS:
            # quotes with much arbitrage of their own (e.g. forwards from a wrong rate override): stop, and
            # let the fit report what is left (core.surface.fit names it in its warnings)
            rounds.append({"kind": "arbitrage", "status": f"stopped after {QP_SECONDS:g} s"})
            break
        near = {"g": cd["g"] < 4 * G_MARGIN, "c": cd["wT"] < W_T_NEAR, "v": cd["w"] <= 1e-5 * Tc,
                "lo": s_lo > -1e-4, "hi": s_hi < 1e-4}
        grew = False
        for key in act:
            grew |= bool((near[key] & ~act[key]).any())
            act[key] |= near[key]
        if not grew:
            break
        rows, lows = [], []
        m = act["g"]
        if m.any():
            _, g_w, g_wy, g_wyy = butterfly_g_grad(yc[m], cd["wp"][m], cd["wy"][m], cd["wyy"][m])
            J = Gw[m].multiply(g_w[:, None]) + Gwy[m].multiply(g_wy[:, None]) + Gwyy[m].multiply(g_wyy)
            rows.append(J)
            lows.append(G_MARGIN - cd["g"][m] + J @ c)
        for key, G_, h in (("c", GwT, np.full(len(yc), W_T_MARGIN)), ("v", Gw, 1e-6 * Tc),
                           ("lo", -Ez_lo, np.zeros(len(s_lo))), ("hi", Ez_hi, np.zeros(len(s_hi)))):
            m = act[key]
            if m.any():
                rows.append(G_[m])
                lows.append(h[m])
        G = sp.vstack(rows).tocsr()
        nr = row_norms(G)
        Acon = G.multiply((1.0 / nr)[:, None]).tocsc()
        lo_con = np.concatenate(lows) / nr
        solver = osqp.OSQP()
        solver.setup(Pq, qv, Acon, lo_con, np.full(len(lo_con), np.inf), verbose=False, polishing=True,
                     eps_abs=QP_EPS, eps_rel=QP_EPS, max_iter=QP_MAX_ITER, rho=QP_RHO)
        solver.warm_start(x=c)
        res = solver.solve(raise_error=False)
        if res.x is None or not np.all(np.isfinite(res.x)):
            rounds.append({"kind": "arbitrage", "status": str(res.info.status)})
            break
        c = res.x
        cd = _conditions(c, Gw, Gwy, Gwyy, GwT, yc)
        s_lo, s_hi = Ez_lo @ c, Ez_hi @ c
        viol = _violations(cd, s_lo, s_hi)
        rounds.append({"kind": "arbitrage", "status": str(res.info.status), "rows": int(len(lo_con)),
                       "iter": int(res.info.iter), "seconds": float(res.info.run_time), **viol})
    return c, rounds, viol


def _fit_tensor(T_nodes, y, iv, wt, idx, *, smoothing, band, y_lo, y_hi) -> TensorFit:
    Tn = np.asarray(T_nodes, float)
    y, iv, wt = (np.asarray(a, float) for a in (y, iv, wt))
    idx = np.asarray(idx, int)
    T = Tn[idx]
    if len(y) < 5:
        raise FitError(f"only {len(y)} quotes: the tensor spline needs more")
    if y_lo is None:
        y_lo = np.array([y[idx == i].min() for i in range(len(Tn))])
        y_hi = np.array([y[idx == i].max() for i in range(len(Tn))])
    zeta = np.arcsinh(y / (ZETA_SCALE * np.sqrt(T)))
    u = np.log(T)
    z_lo, z_hi = float(zeta.min()) - ZETA_MARGIN, float(zeta.max()) + ZETA_MARGIN
    u_lo, u_hi = float(u.min()) - U_MARGIN, float(u.max()) + U_MARGIN
    nz = max(4, int(np.ceil((z_hi - z_lo) / DZETA)))
    nu = max(1, int(np.ceil((u_hi - u_lo) / DU)))
    grid = TensorGrid(z_lo=z_lo, hz=(z_hi - z_lo) / nz, nz=nz, u_lo=u_lo, hu=(u_hi - u_lo) / nu, nu=nu)
    nzc, nuc = grid.shape

    system = tensor_system(grid, y, T, iv, wt, band=band, smoothing=smoothing)
    c, rho, outlier = _robust_solve(system, iv)
    c, rounds, viol = _remove_arbitrage(system, grid, c, rho)
    C = c.reshape(nuc, nzc).T.copy()
    surf = TensorSplineSurface(grid=grid, C=C, T_nodes=tuple(float(t) for t in Tn),
                               y_lo=tuple(float(v) for v in y_lo), y_hi=tuple(float(v) for v in y_hi))
    return TensorFit(surface=surf, robust_weight=np.where(outlier, rho, 1.0), fit_weight=rho, rounds=rounds,
                     violations=viol)


def fit_spline_surface(data: SliceData, smoothing: float) -> ModelFit:
    """The ``"spline"`` method for the dispatcher: ``fit_tensor`` on the grouped quotes (aimed at their bid/ask
    band), with per-expiry ATM vol, quote counts and robustly down-weighted quotes."""
    Tn, idx = data.T, data.idx
    r = fit_tensor(Tn, data.y, data.iv, data.weight, idx, smoothing=smoothing, band=(data.bid, data.ask),
                   y_lo=data.y_lo, y_hi=data.y_hi)
    S = r.surface
    atm = S.implied_vol(np.zeros(len(Tn)), Tn)
    params = {k: {"T": float(Tn[i]), "atm_vol": float(atm[i]), "n_quotes": int(np.sum(idx == i)),
                  "downweighted": int(np.sum((idx == i) & (r.robust_weight < 1.0)))} for i, k in enumerate(data.keys)}
    n_dw = int(np.sum(r.robust_weight < 1.0))
    notes = ((f"spline surface down-weights {n_dw} quote(s) far from the rest of the surface "
              "(more than 4 half bid/ask spreads off)",) if n_dw else ())
    gparams = {**S.to_dict(), "rounds": r.rounds, "arbitrage_left": r.violations}
    return ModelFit(surface=S, params=params, global_params=gparams, notes=notes, fit_weight=r.fit_weight)
