"""The round trip: European prices under local vol by one forward sweep of Dupire's PDE.

In normalised prices ``c(x, T) = C / (D_T F_T)``, ``x = K / F_T`` the forward equation is
``dc/dT = 1/2 sigma_loc^2(x F_T, T) x^2 d2c/dx2``, ``c(x, 0) = (1 - x)^+`` (Dupire 1994; MATH.md,
"Repricing under local vol"). Carry and discounting drop out of it. We solve it in
``u = ln x`` (``dc/dT = 1/2 sigma^2 (c_uu - c_u)``) on a sinh-stretched grid that is dense near the
money, with Crank-Nicolson steps after a Rannacher start (four implicit half steps smooth the
payoff kink: Rannacher 1984; Giles & Carter 2006), steps landing exactly on every expiry, and one
banded (tridiagonal) solve per step. One sweep prices every strike of every expiry. By default a
second sweep on the nested grid with half the spacing and half the steps is combined with the first
by Richardson extrapolation, ``(4 fine - coarse) / 3``: the deep out-of-the-money prices of short
expiries, tiny numbers whose implied vols are the hardest part of the round trip, gain about two
orders of accuracy for five times the work of one coarse sweep.

``reprice`` turns those prices back into implied vols and compares them with the quotes (vol
basis points against the mid, inside the bid/ask vol band). ``pde_convergence`` shows the error
shrinking with the grid.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.interpolate import CubicSpline
from scipy.linalg import solve_banded

from core.black import implied_vol
from core.cleaning import use_mask
from core.errors import ConvergenceWarning, InputError
from core.localvol import T_MIN

FIRST_STEPS = 64        # time steps before the first expiry, at least (at n_t = 300; in proportion to n_t)
T_POWER = 3.0           # step dates uniform in T^(1/T_POWER): dense where the solution moves fast


def _x_grid(half_width_lo: float, half_width_hi: float, n_x: int, concentration: float,
            refine: int = 1) -> np.ndarray:
    """``u = ln x`` nodes on ``[-lo, hi]``, dense near ``u = 0`` (an exact node there).

    ``u(xi) = L sinh(a xi) / sinh(a)``: spacing near the money is ``L a / sinh(a)`` times the
    uniform one (Tavella & Randall 2000, ch. 5, the sinh stretching).
    """
    n_lo = max(int(round((n_x - 1) * half_width_lo / (half_width_lo + half_width_hi))), 3)
    n_hi = max(n_x - 1 - n_lo, 3)
    n_lo, n_hi = refine * n_lo, refine * n_hi  # nested grids for Richardson extrapolation
    a = concentration
    L = max(half_width_lo, half_width_hi)
    # one stretching for both sides (same spacing at the money), cut at each side's width
    xi_lo = np.arcsinh(half_width_lo / L * np.sinh(a)) / a
    xi_hi = np.arcsinh(half_width_hi / L * np.sinh(a)) / a
    xi = np.r_[np.linspace(-xi_lo, 0.0, n_lo + 1)[:-1], np.linspace(0.0, xi_hi, n_hi + 1)]
    return L * np.sinh(a * xi) / np.sinh(a)


def _t_grid(expiries: np.ndarray, n_t: int, refine: int = 1) -> np.ndarray:
    """Step dates: uniform in ``T^(1/T_POWER)`` (fine where the solution moves fast; measured on real chains,
    cube roots put about twice as many steps as square roots among the daily expiries of the first weeks, where
    the round trip of QQQ 2023-06-12 missed by 10-25 bp), ``FIRST_STEPS`` more before the first expiry, and
    every expiry.

    With ``refine = 2`` every step of the ``refine = 1`` grid is halved (nested grids).
    """
    T_max = expiries[-1]
    base = T_max * np.linspace(0.0, 1.0, n_t + 1) ** T_POWER
    # the first expiry gets at least FIRST_STEPS steps of its own: a few days' expiry on a two-year grid
    # would otherwise see a dozen, too few for the kink of the payoff to be resolved
    n_first = max(4, int(round(FIRST_STEPS * n_t / 300)))     # in proportion: refined grids stay refinements
    if np.count_nonzero(base < expiries[0]) < n_first:
        base = np.sort(np.r_[base, expiries[0] * np.linspace(0.0, 1.0, n_first + 1) ** 2])
    # keep every expiry; drop base nodes too close to one (no tiny steps)
    min_gap = 0.25 * T_max / n_t**2
    keep = np.all(np.abs(base[:, None] - expiries[None, :]) > min_gap, axis=1)
    nodes = np.unique(np.r_[0.0, base[keep], expiries])
    for _ in range(refine - 1):
        nodes = np.unique(np.r_[nodes, 0.5 * (nodes[:-1] + nodes[1:])])
    return nodes


def _operator(u: np.ndarray):
    """Coefficients of ``c_uu - c_u`` at interior nodes on a non-uniform grid: (lower, diag, upper)."""
    hm = u[1:-1] - u[:-2]
    hp = u[2:] - u[1:-1]
    s = hm + hp
    lo = 2.0 / (hm * s) + hp / (hm * s)
    di = -2.0 / (hm * hp) - (hp - hm) / (hm * hp)
    up = 2.0 / (hp * s) - hm / (hp * s)
    return lo, di, up


@dataclass(frozen=True)
class PDEResult:
    """Forward Dupire sweep: normalised call prices ``c[j, i] = C(K, T_j) / (D F)`` at ``x_i = e^{u_i}``.

    ``T`` (nT,) the requested expiries (sorted, unique); ``u`` (nx,) ``ln(K/F_T)`` nodes; ``c`` (nT, nx);
    ``F``, ``D`` (nT,); ``steps`` the number of time steps; ``seconds``; ``n_x``, ``n_t`` the grid;
    ``diagnostics``: ``u_range``, ``richardson`` and, for ``SurfaceLocalVol``, ``lv_fallback`` (nodes
    where Gatheral's formula had no meaning, ``g <= 0`` or ``w_T < 0``, and the implied vol stood in).
    ``price(K, T, cp)`` interpolates (cubic spline in ``u``) and returns discounted prices.
    """

    T: np.ndarray
    u: np.ndarray
    c: np.ndarray
    F: np.ndarray
    D: np.ndarray
    steps: int
    seconds: float
    n_x: int
    n_t: int
    diagnostics: dict = field(default_factory=dict)
    _splines: list = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._splines.extend(CubicSpline(self.u, self.c[j]) for j in range(len(self.T)))

    def _row(self, T) -> np.ndarray:
        T = np.asarray(T, dtype=float)
        j = np.searchsorted(self.T, T)
        j = np.clip(j, 0, len(self.T) - 1)
        jm = np.clip(j - 1, 0, len(self.T) - 1)
        j = np.where(np.abs(self.T[jm] - T) < np.abs(self.T[j] - T), jm, j)
        if np.any(np.abs(self.T[j] - T) > 1e-10 * np.maximum(1.0, T)):
            raise InputError("price(K, T): every T must be one of the swept expiries "
                             f"{np.round(self.T, 6).tolist()}; add it to `expiries`")
        return j

    def normalised(self, x, T) -> np.ndarray:
        """Normalised call ``c(x, T)`` (``x = K/F_T``; ``T`` among ``self.T``); intrinsic beyond the grid."""
        x, T = np.broadcast_arrays(np.asarray(x, float), np.asarray(T, float))
        j = self._row(T)
        out = np.empty(x.shape)
        u = np.log(x)
        for jj in np.unique(j):
            m = j == jj
            out[m] = self._splines[jj](np.clip(u[m], self.u[0], self.u[-1]))
        out = np.where(u < self.u[0], 1.0 - x, out)
        out = np.where(u > self.u[-1], 0.0, out)
        # never below intrinsic, never above the bound: splines may wiggle by rounding
        return np.clip(out, np.maximum(1.0 - x, 0.0), 1.0)

    def price(self, K, T, cp=1) -> np.ndarray:
        """Discounted call (``cp=+1``) or put (``-1``) price at strike ``K``, expiry ``T`` (broadcast)."""
        K, T, cp = np.broadcast_arrays(np.asarray(K, float), np.asarray(T, float), np.asarray(cp, float))
        j = self._row(T)
        F, D = self.F[j], self.D[j]
        call = D * F * self.normalised(K / F, T)
        return np.where(cp > 0, call, call - D * (F - K))

    def implied_vol(self, K, T) -> np.ndarray:
        """Black implied vol of the swept prices (out-of-the-money side), NaN where none exists."""
        K, T = np.broadcast_arrays(np.asarray(K, float), np.asarray(T, float))
        j = self._row(T)
        cp = np.where(K >= self.F[j], 1.0, -1.0)
        return implied_vol(self.price(K, T, cp), self.F[j], K, T, cp, self.D[j])


def forward_dupire(lv, forwards, expiries, strikes=None, *, n_x: int = 601, n_t: int = 300,
                   n_sd: float = 6.0, concentration: float = 4.0, rannacher: int = 2,
                   theta: float = 0.5, richardson: bool = True) -> PDEResult:
    """Call prices of every expiry in one forward sweep of Dupire's PDE in ``(u = ln K/F_T, T)``.

    Parameters
    ----------
    lv : callable ``lv(K, T) -> sigma_loc`` (vectorised; ``K`` array, ``T`` scalar).
    forwards : ``core.forwards.Forwards`` (``F(T)``, ``D(T)``).
    expiries : years, any order (sorted, de-duplicated); time steps land on each.
    strikes : optional strikes the grid must cover (it is widened to include them with margin).
    n_x, n_t : space nodes and (about) time steps over ``[0, T_max]`` (``_t_grid``).
    n_sd : grid half-width in ATM standard deviations at ``T_max``; ``concentration``: sinh stretching.
    rannacher : number of full steps replaced by two implicit half steps each at ``T = 0``.
    theta : 0.5 Crank-Nicolson, 1.0 fully implicit (Andreasen & Huge 2011 style).
    richardson : also sweep a nested grid with half the spacing and half the steps and combine
        ``(4 fine - coarse) / 3`` (Richardson extrapolation: the ``h^2`` and ``dt^2`` errors cancel);
        costs 5x one coarse sweep, gains about two orders of accuracy in the far wings.

    Notes
    -----
    ``dc/dT = 1/2 sigma^2(F_T e^u, T) (c_uu - c_u)``, ``c(u, 0) = (1 - e^u)^+``; Dirichlet
    ``c = 1 - e^u`` at the left edge (no mass below) and ``c = 0`` at the right edge. The local vol
    is read at the middle of each step (second order in time for Crank-Nicolson).
    """
    t0 = time.perf_counter()
    T_out = np.unique(np.asarray(expiries, dtype=float).ravel())
    if T_out.size == 0 or not np.all(np.isfinite(T_out)) or T_out[0] <= 0 or T_out[-1] > 100.0:
        raise InputError("expiries must be finite, positive and at most 100 years")
    if n_x < 21 or n_t < 4:
        raise InputError(f"grid too small: n_x={n_x} (>= 21), n_t={n_t} (>= 4)")
    if not (0.5 <= theta <= 1.0):
        raise InputError(f"theta must be in [0.5, 1], got {theta}")
    T_max = T_out[-1]
    probe_T = np.linspace(min(T_out[0], T_max), T_max, 7)
    s_atm = np.nanmax(np.asarray(lv(forwards.F(probe_T), probe_T), dtype=float))
    if not np.isfinite(s_atm) or s_atm <= 0:
        raise InputError("lv(F(T), T) is not positive and finite at the money; check the local vol")
    # skew: the downside may carry more vol than the money; probe one ATM sd either side
    sd = s_atm * np.sqrt(T_max)
    s_side = np.asarray(lv(forwards.F(T_max) * np.exp(np.array([-2 * sd, 2 * sd])), T_max), dtype=float)
    s_lo = max(s_atm, float(np.nan_to_num(s_side[0], nan=s_atm)))
    s_hi = max(s_atm, float(np.nan_to_num(s_side[1], nan=s_atm)))
    half_lo = n_sd * s_lo * np.sqrt(T_max) + 0.5 * s_lo**2 * T_max
    half_hi = n_sd * s_hi * np.sqrt(T_max)
    if strikes is not None:
        K = np.asarray(strikes, dtype=float).ravel()
        K = K[np.isfinite(K) & (K > 0)]
        if K.size:
            Fs = forwards.F(T_out)
            y_all = np.log(K[None, :] / Fs[:, None])
            half_lo = max(half_lo, -y_all.min() + 3 * sd)
            half_hi = max(half_hi, y_all.max() + 3 * sd)
    half_lo = float(np.clip(half_lo, 0.3, 12.0))
    half_hi = float(np.clip(half_hi, 0.3, 8.0))
    steps = 0
    n_fb0 = getattr(lv, "n_fallback", None)
    sweeps = []
    for refine in ((1, 2) if richardson else (1,)):
        u = _x_grid(half_lo, half_hi, n_x, concentration, refine)
        t_nodes = _t_grid(T_out, n_t, refine)
        # Rannacher: the first steps (same span on both grids) become implicit half steps
        n_r = rannacher * refine
        if n_r > 0:
            head = t_nodes[: n_r + 1]
            t_nodes = np.unique(np.r_[t_nodes, 0.5 * (head[:-1] + head[1:])])
        sweeps.append(_sweep(lv, forwards, u, t_nodes, 2 * n_r, theta, T_out, s_atm))
        steps += len(t_nodes) - 1
    if richardson:
        # both errors are O(h^2 + dt^2) on nested grids: (4 fine - coarse) / 3 cancels them
        u = sweeps[0][0]
        out = (4.0 * sweeps[1][1][:, ::2] - sweeps[0][1]) / 3.0
    else:
        u, out = sweeps[0]
    diag = {"u_range": (float(u[0]), float(u[-1])), "richardson": bool(richardson)}
    if n_fb0 is not None:
        diag["lv_fallback"] = int(lv.n_fallback - n_fb0)
    return PDEResult(T=T_out, u=u, c=out, F=np.asarray(forwards.F(T_out), float),
                     D=np.asarray(forwards.D(T_out), float), steps=steps,
                     seconds=time.perf_counter() - t0, n_x=n_x, n_t=n_t, diagnostics=diag)


def _sweep(lv, forwards, u, t_nodes, n_implicit, theta, T_out, s_atm):
    """One forward sweep on nodes ``u`` and dates ``t_nodes``: returns ``(u, c)``, ``c`` (nT, nu). The first
    ``n_implicit`` steps are implicit Euler, then the theta scheme."""
    x = np.exp(u)
    lo, di, up = _operator(u)
    c = np.maximum(1.0 - x, 0.0)
    out = np.empty((T_out.size, u.size))
    n = u.size
    ab = np.zeros((3, n - 2))
    rhs_extra = np.zeros(n - 2)
    # the local vol of every step in a few vectorised calls (surfaces are cheaper per call than per point)
    tm_all = np.maximum(0.5 * (t_nodes[:-1] + t_nodes[1:]), T_MIN)
    sig_all = np.empty((tm_all.size, n - 2))
    F_all = np.asarray(forwards.F(tm_all), dtype=float)
    for r0 in range(0, tm_all.size, 128):
        r1 = min(r0 + 128, tm_all.size)
        sig_all[r0:r1] = np.asarray(lv(F_all[r0:r1, None] * x[None, 1:-1], tm_all[r0:r1, None]), dtype=float)
    bad = ~np.isfinite(sig_all)
    if bad.any():
        warnings.warn(f"local vol non-finite at {int(bad.sum())} PDE nodes; replaced by the nearest finite value",
                      ConvergenceWarning, stacklevel=3)
        for k in np.nonzero(bad.any(axis=1))[0]:
            good = ~bad[k]
            sig_all[k] = np.interp(u[1:-1], u[1:-1][good], sig_all[k, good]) if good.any() else s_atm
    j_out = 0
    # boundary values: c(left) = 1 - x_left (no mass below), c(right) = 0
    cl, cr = 1.0 - x[0], 0.0

    def implicit(rhs, f, L_lo, L_di, L_up):
        """``(I - f L) c_new = rhs`` on the interior, the boundary values fixed: ``c_new`` (n,)."""
        ab[0, 1:] = -f * L_up[:-1]
        ab[1, :] = 1.0 - f * L_di
        ab[2, :-1] = -f * L_lo[1:]
        rhs_extra[0] = f * L_lo[0] * cl
        rhs_extra[-1] = f * L_up[-1] * cr
        c_new = np.empty_like(c)
        c_new[1:-1] = solve_banded((1, 1), ab, rhs + rhs_extra, overwrite_ab=False, overwrite_b=True,
                                   check_finite=False)
        c_new[0], c_new[-1] = cl, cr
        return c_new

    for k in range(len(t_nodes) - 1):
        ta, tb = t_nodes[k], t_nodes[k + 1]
        dt = tb - ta
        sig = sig_all[k]
        a = 0.5 * sig * sig
        L_lo, L_di, L_up = a * lo, a * di, a * up
        if k < n_implicit or theta == 1.0:
            c = implicit(c[1:-1].copy(), dt, L_lo, L_di, L_up)
        else:
            Lc = L_di * c[1:-1] + L_lo * c[:-2] + L_up * c[2:]
            c = implicit(c[1:-1] + (1.0 - theta) * dt * Lc, theta * dt, L_lo, L_di, L_up)
        while j_out < T_out.size and abs(tb - T_out[j_out]) <= 1e-12 * max(1.0, tb):
            out[j_out] = c
            j_out += 1
    if j_out != T_out.size:  # pragma: no cover - the grid always contains the expiries
        raise RuntimeError("time grid missed an expiry")
    return u, out


@dataclass(frozen=True)
class RepricingResult:
    """Round trip per quote and in summary.

    ``table``: the quotes with ``F, D, price_model, iv_model, error_bp`` (model minus mid, vol bp),
    ``inside`` (model vol within ``[iv_bid, iv_ask]``; a missing bid vol counts as 0, a missing ask
    as unbounded), ``iv_reason``. ``by_expiry``: per expiry ``n, max_bp, mean_bp, inside_bid_ask``.
    ``max_bp``, ``mean_bp`` (of ``|error|``) and ``inside_bid_ask`` (fraction) over the rows with
    ``use`` (all rows when the column is absent) and a model vol; ``n_failed`` rows with none.
    """

    table: pd.DataFrame
    by_expiry: pd.DataFrame
    max_bp: float
    mean_bp: float
    inside_bid_ask: float
    n: int
    n_failed: int
    seconds: float
    pde: PDEResult

    def summary(self) -> dict:
        """JSON-able summary (``max_bp``, ``mean_bp``, ``inside_bid_ask``, ``n``, ``n_failed``, ``seconds``)."""
        return {"max_bp": self.max_bp, "mean_bp": self.mean_bp, "inside_bid_ask": self.inside_bid_ask,
                "n": self.n, "n_failed": self.n_failed, "seconds": self.seconds}


def reprice(quotes: pd.DataFrame, lv, forwards, **grid) -> RepricingResult:
    """Reprice quotes under local vol by one forward Dupire sweep; errors in vol bp vs the market.

    Parameters: ``quotes`` DataFrame with ``T`` (years), ``strike``, ``cp`` (+1/-1), ``iv_mid``,
    ``iv_bid``, ``iv_ask`` (optional ``expiry``, ``use``); ``lv(K, T)`` the local vol; ``forwards``
    (``F(T)``, ``D(T)``); ``**grid`` passed to ``forward_dupire`` (``n_x``, ``n_t``, ...).
    Model price -> Black implied vol (``core.black.implied_vol``) -> ``error_bp = 1e4 (iv_model - iv_mid)``.
    """
    t0 = time.perf_counter()
    need = [c for c in ("T", "strike", "cp", "iv_mid") if c not in quotes.columns]
    if need:
        raise InputError(f"reprice: quotes lack columns {need}")
    q = quotes.copy()
    for col in ("iv_bid", "iv_ask"):
        if col not in q.columns:
            q[col] = np.nan
    T = q["T"].to_numpy(float)
    K = q["strike"].to_numpy(float)
    cp = np.sign(q["cp"].to_numpy(float))
    valid = np.isfinite(T) & (T > 0) & np.isfinite(K) & (K > 0) & (cp != 0)
    if not valid.any():
        raise InputError("reprice: no quote with positive T, strike and cp = +1/-1")
    pde = forward_dupire(lv, forwards, T[valid], K[valid], **grid)
    price = np.full(T.shape, np.nan)
    price[valid] = pde.price(K[valid], T[valid], cp[valid])
    F = np.asarray(forwards.F(np.where(valid, T, 1.0)), float)
    D = np.asarray(forwards.D(np.where(valid, T, 1.0)), float)
    iv, reason = implied_vol(price, F, K, np.where(valid, T, np.nan), np.where(valid, cp, 1.0), D,
                             return_reason=True)
    q["F"], q["D"], q["price_model"], q["iv_model"], q["iv_reason"] = F, D, price, iv, reason
    q["error_bp"] = 1e4 * (iv - q["iv_mid"].to_numpy(float))
    bid = q["iv_bid"].to_numpy(float)
    ask = q["iv_ask"].to_numpy(float)
    q["inside"] = np.isfinite(iv) & (np.isnan(bid) | (iv >= bid - 1e-12)) & (np.isnan(ask) | (iv <= ask + 1e-12))
    use = use_mask(q)
    ok = use & np.isfinite(q["error_bp"].to_numpy(float))
    n_failed = int(np.count_nonzero(use & ~ok))
    err = np.abs(q["error_bp"].to_numpy(float))
    key = "expiry" if "expiry" in q.columns else "T"
    rows = []
    for e, g in q[ok].groupby(key, sort=True):
        a = np.abs(g["error_bp"].to_numpy(float))
        rows.append({key: e, "T": float(g["T"].iloc[0]), "n": len(g), "max_bp": float(a.max()),
                     "mean_bp": float(a.mean()), "inside_bid_ask": float(g["inside"].mean())})
    by_exp = pd.DataFrame(rows, columns=[key, "T", "n", "max_bp", "mean_bp", "inside_bid_ask"] if key != "T"
                          else ["T", "n", "max_bp", "mean_bp", "inside_bid_ask"])
    if n_failed:
        warnings.warn(f"reprice: {n_failed} quotes have no model implied vol (see iv_reason)",
                      ConvergenceWarning, stacklevel=2)
    return RepricingResult(
        table=q, by_expiry=by_exp,
        max_bp=float(err[ok].max()) if ok.any() else float("nan"),
        mean_bp=float(err[ok].mean()) if ok.any() else float("nan"),
        inside_bid_ask=float(q["inside"].to_numpy(bool)[use].mean()) if use.any() else float("nan"),
        n=int(ok.sum()), n_failed=n_failed, seconds=time.perf_counter() - t0, pde=pde)


def pde_convergence(lv, forwards, expiries, strikes, *, exact_iv=None,
                    grids=((101, 50), (201, 100), (401, 200), (801, 400)), **kw) -> pd.DataFrame:
    """Grid refinement of the forward sweep: max and mean |error| in vol bp per grid.

    ``exact_iv`` (nT, nK) the true implied vols when known (e.g. SSVI), else the finest grid is the
    reference. ``strikes`` (nK,) and ``expiries`` (nT,) the points compared. Returns a DataFrame with
    ``n_x, n_t, max_bp, mean_bp, seconds`` and the observed ``order`` (log2 of successive error ratios).
    """
    T = np.unique(np.asarray(expiries, float))
    K = np.asarray(strikes, float)
    ivs, rows = [], []
    for n_x, n_t in grids:
        res = forward_dupire(lv, forwards, T, K, n_x=n_x, n_t=n_t, **kw)
        ivs.append(res.implied_vol(K[None, :], T[:, None]))
        rows.append({"n_x": n_x, "n_t": n_t, "seconds": res.seconds})
    ref = np.asarray(exact_iv, float) if exact_iv is not None else ivs[-1]
    for r, iv in zip(rows, ivs, strict=True):
        e = np.abs(iv - ref) * 1e4
        r["max_bp"], r["mean_bp"] = float(np.nanmax(e)), float(np.nanmean(e))
    df = pd.DataFrame(rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        df["order"] = np.r_[np.nan, np.log2(df["max_bp"].to_numpy()[:-1] / df["max_bp"].to_numpy()[1:])]
    if exact_iv is None:
        df = df.iloc[:-1]
    return df
