"""Backward local-vol PDE: vanillas (European/American), barriers and digitals, with spot Greeks.

The price ``V(S, t)`` of a claim on ``S`` solves ``V_t + mu S V_S + 1/2 sigma_loc(S, t)^2 S^2 V_SS - r V = 0``
backward from the payoff, with deterministic ``r(t) = -d ln D/dt`` and carry ``mu(t) = d ln F/dt`` read
off ``Forwards`` (piecewise constant per step). We solve it in ``x = ln S`` (a fixed grid in time):
``V_t + 1/2 sigma^2 V_xx + (mu - sigma^2/2) V_x - r V = 0``.

- Grid: non-uniform in ``x``, node density ``floor + sum_p 1/sqrt(1 + ((x - p)/alpha)^2)`` (a sum of sinh
  stretchings, Tavella & Randall 2000, ch. 5) around the spot, the strike and the barrier, ``FLOOR_SHARE`` of
  the nodes spread evenly; the spot, the strike and the barrier are exact nodes (a piecewise-linear remap of
  the uniform coordinate, which changes spacing ratios by O(h) only, so second order is kept). Each side
  reaches ``N_SD`` standard deviations, measured with the side's own RMS local vol (a steep put skew
  widens the downside: with the ATM vol, SPX puts lost up to 2% of their value to the truncation).
- Time: uniform steps; Crank-Nicolson after a Rannacher start (the first ``RANNACHER`` steps replaced by
  twice as many implicit half steps: Rannacher 1984; Giles & Carter 2006). Second order in both.
- Boundaries: ``V_SS = 0`` (linear in ``S``) at far ends; a continuously monitored barrier is a grid end with
  ``V = rebate`` (Dirichlet, rebate paid at the hit). Knock-ins by in-out parity:
  ``in = vanilla - out(rebate 0) + rebate * no-touch`` (rebate of a knock-in paid at expiry if never hit).
- American exercise: Brennan-Schwartz (1977) projection inside the tridiagonal solve (elimination towards the
  exercise side, back substitution with ``max(V, intrinsic)``), exact for the discrete obstacle problem when
  the exercise region is one interval at the grid's end (puts low, calls high).
- Payoffs are cell averaged over ``[x_{i-1/2}, x_{i+1/2}]`` in the strike's cell only (kinks and jumps off
  nodes keep second order, linear branches stay exact).
- Greeks at ``t = 0`` from the three nodes around the spot (second-order non-uniform differences);
  ``theta = dV/dt`` per year (calendar time passing) by the second-order one-sided difference
  ``(-3 V(0) + 4 V(dt) - V(2 dt)) / (2 dt)`` over the first two steps of calendar time (the sweep's last two).

All strikes of one expiry share one grid and one matrix per step (``price_pde_strikes``): many right-hand
sides, the projection per column, compiled by numba (``core.pricing._backward_numba``) with this module's
numpy path (``core.pricing._backward_numpy``) as the fallback and reference.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core._kernels import LazyKernel
from core.errors import InputError
from core.localvol import T_MIN
from core.pricing._backward_numpy import sweep as _sweep_numpy
from core.pricing.products import Barrier, Digital, Vanilla

#: reach of the grid beyond spot, strike and forward, in standard deviations (each side's RMS local vol)
N_SD = 6.0
#: concentration width ``alpha`` of the node density, in units of the ATM ``sigma sqrt(T)``
ALPHA = 0.4
#: share of the nodes spread uniformly over the grid (the rest follow the concentration bumps)
FLOOR_SHARE = 0.2
#: number of Crank-Nicolson steps replaced by two implicit half steps each
RANNACHER = 2

_KERNEL = LazyKernel("core.pricing.backward", "core.pricing._backward_numba", lambda mod: mod.sweep)


@dataclass(frozen=True)
class BackwardResult:
    """One backward PDE solve: price and spot Greeks at ``t = 0``.

    ``price``; ``delta = dV/dS`` and ``gamma = d2V/dS2`` at the spot from the grid at ``t = 0``;
    ``theta = dV/dt`` per year (calendar time passing, from the first two time steps); ``spot``;
    ``n_x``, ``n_t`` the grid; ``seconds``; ``method`` (text); ``grid`` the S nodes (n,) and ``values``
    ``V(S, 0)`` on them (n,).
    """

    price: float
    delta: float
    gamma: float
    theta: float
    spot: float
    n_x: int
    n_t: int
    seconds: float
    method: str
    grid: np.ndarray = field(repr=False)
    values: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        """Flat JSON-able summary (without the arrays)."""
        return {k: getattr(self, k) for k in ("price", "delta", "gamma", "theta", "spot", "n_x", "n_t",
                                               "seconds", "method")}


# ----------------------------------------------------------------------------------------- grids
def _density_integral(x, centres, alpha, floor):
    """``G(x) = floor x + sum_p alpha asinh((x - p)/alpha)``: the integral of the node density."""
    return floor * x + sum(alpha * np.arcsinh((x - p) / alpha) for p in centres)


def _x_nodes(lo: float, hi: float, n: int, centres, required, alpha: float) -> np.ndarray:
    """``n`` nodes on ``[lo, hi]`` (ends included) dense near ``centres``, with every ``required`` point a node."""
    bumps = sum(alpha * (np.arcsinh((hi - p) / alpha) - np.arcsinh((lo - p) / alpha)) for p in centres)
    floor = FLOOR_SHARE / (1.0 - FLOOR_SHARE) * bumps / (hi - lo)
    fine = np.linspace(lo, hi, 40 * n)
    G = _density_integral(fine, centres, alpha, floor)
    xi_req = np.interp(required, fine, (G - G[0]) / (G[-1] - G[0]))
    k = np.clip(np.round(xi_req * (n - 1)).astype(int), 1, n - 2)
    for j in range(1, len(k)):  # distinct required points need distinct nodes
        k[j] = max(k[j], k[j - 1] + 1)
    if len(k) and k[-1] > n - 2:
        raise InputError(f"n_x = {n} is too small for the points {np.exp(required)}; raise n_x")
    u = np.linspace(0.0, 1.0, n)
    xi = np.interp(u, np.r_[0.0, k / (n - 1), 1.0], np.r_[0.0, xi_req, 1.0])
    target = G[0] + xi * (G[-1] - G[0])
    x = np.interp(target, G, fine)
    g = floor + sum(1.0 / np.sqrt(1.0 + ((x - p) / alpha) ** 2) for p in centres)
    x = x - (_density_integral(x, centres, alpha, floor) - target) / g  # one Newton step polishes the inversion
    x[0], x[-1] = lo, hi
    x[k] = required
    return x


def _geometry(x: np.ndarray) -> np.ndarray:
    """(6, n) weights of ``V_x`` (lo1, di1, up1) and ``V_xx`` (lo2, di2, up2) at interior nodes (non-uniform,
    second order); the unused slots ``[0, 0]`` and ``[0, n-1]`` carry the linear-in-S boundary ratios."""
    geo = np.zeros((6, len(x)))
    hm, hp = np.diff(x)[:-1], np.diff(x)[1:]
    s = hm + hp
    d1 = np.array([-hp / (hm * s), (hp - hm) / (hm * hp), hm / (hp * s)])
    d2 = np.array([2.0 / (hm * s), -2.0 / (hm * hp), 2.0 / (hp * s)])
    # exact on V = S (and on constants): D1 e^x = D2 e^x = e^x after rescaling by their O(h^2) errors, so the
    # scheme carries the forward exactly (put-call parity to rounding); both stay second order
    e = np.exp(np.array([-hm, np.zeros_like(hm), hp]))
    d1 = d1 / (d1 * e).sum(axis=0)
    d2 = d2 - ((d2 * e).sum(axis=0) - 1.0) * d1
    geo[:, 1:-1] = np.r_[d1, d2]
    S = np.exp(x)
    geo[0, 0] = (S[1] - S[0]) / (S[2] - S[1])  # V_0 = (1 + c) V_1 - c V_2 (V linear in S)
    geo[0, -1] = (S[-1] - S[-2]) / (S[-2] - S[-3])
    return geo


def _time_nodes(T: float, n_t: int):
    """Descending time nodes from ``T`` to 0 and per-step ``theta`` (1 implicit, 0.5 Crank-Nicolson)."""
    t = T * np.linspace(1.0, 0.0, n_t + 1)
    m = min(RANNACHER, n_t - 2) if n_t > 2 else 0
    halves = T - T / n_t * np.arange(0.5, m, 1.0)
    nodes = np.sort(np.r_[t, halves])[::-1]
    theta = np.r_[np.ones(2 * m), np.full(n_t - m, 0.5)]
    return nodes, theta


def _widths(lv, S0: float, T: float) -> tuple[float, float, float]:
    """``(scale, w_lo, w_hi)``: the ATM vol scale ``sigma sqrt T`` (concentration) and the widths in ``ln S``
    below and above: ``N_SD`` times ``sqrt(T)`` times the root-mean-square local vol over the side's own
    range (a fixed point, three passes), so a steep skew widens the side where the vol is high."""
    times = np.array([0.25, 0.5, 1.0]) * T
    tt = np.maximum(times, T_MIN)[:, None]

    def rms(K):
        v = np.asarray(lv(K[None, :], tt), float)
        v = v[np.isfinite(v)]
        return float(np.clip(np.sqrt(np.mean(v * v)), 0.05, 2.0)) if v.size else 0.3

    root = np.sqrt(T)
    atm = rms(S0 * np.exp(np.array([-0.05, 0.0, 0.05]) * root))
    widths = []
    for side in (-1.0, 1.0):
        w = N_SD * atm * root
        for _ in range(3):
            w = N_SD * rms(S0 * np.exp(side * w * np.linspace(0.0, 1.0, 9))) * root
        widths.append(w)
    return atm * root, widths[0], widths[1]


def _setup(lv, forwards, T: float, n_t: int, x: np.ndarray):
    """Time nodes, per-step ``theta, dt, r, mu`` and the local variance table ``(n_nodes, n)``."""
    nodes, theta = _time_nodes(T, n_t)
    dt = nodes[:-1] - nodes[1:]
    lnD = np.log(np.asarray(forwards.D(nodes), float))
    lnF = np.log(np.asarray(forwards.F(nodes), float))
    r = (lnD[1:] - lnD[:-1]) / dt
    mu = (lnF[:-1] - lnF[1:]) / dt
    sig = np.asarray(lv(np.exp(x)[None, :], np.maximum(nodes, T_MIN)[:, None]), float)
    sig = np.broadcast_to(sig, (len(nodes), len(x)))
    if not np.all(np.isfinite(sig)) or np.any(sig <= 0):
        raise InputError("the local vol is NaN or non-positive on the PDE grid: clip it (core.localvol.DEFAULT_CLIP)"
                         " or narrow the grid")
    return theta, dt, r, mu, np.ascontiguousarray(sig * sig)


# ---------------------------------------------------------------------------------------- payoffs
def _cell_average(x: np.ndarray, K, cp, digital: bool = False) -> np.ndarray:
    """(n, m) payoffs ``(cp (S - K))^+`` or ``1{cp (S - K) > 0}`` at the nodes, except in the cell
    ``[x_{i-1/2}, x_{i+1/2}]`` holding the strike, where the node takes the payoff's cell average: the kink
    or jump then costs no order of accuracy wherever it falls (Pooley, Vetzal & Forsyth 2003), and the
    smooth branches stay exact (a linear payoff is carried exactly: put-call parity holds to rounding)."""
    mid = 0.5 * (x[1:] + x[:-1])
    a, b = np.r_[x[0], mid][:, None], np.r_[mid, x[-1]][:, None]
    k = np.log(np.atleast_1d(np.asarray(K, float)))[None, :]
    cp = np.broadcast_to(np.atleast_1d(np.asarray(cp, float)), k.shape[1:])[None, :]
    Kb = np.exp(k)
    lo_c, hi_p = np.maximum(a, k), np.minimum(b, k)
    S = np.exp(x)[:, None]
    if digital:
        call, put = np.maximum(b - lo_c, 0.0), np.maximum(hi_p - a, 0.0)
        point = np.where(cp > 0, S > Kb, S < Kb).astype(float)
    else:
        call = np.where(b > k, np.exp(b) - np.exp(lo_c) - Kb * (b - lo_c), 0.0)
        put = np.where(a < k, Kb * (hi_p - a) - (np.exp(hi_p) - np.exp(a)), 0.0)
        point = np.maximum(cp * (S - Kb), 0.0)
    inside = (a < k) & (k < b)
    return np.where(inside, np.where(cp > 0, call, put) / np.maximum(b - a, 1e-300), point)


# ----------------------------------------------------------------------------------------- solver
def _solve(lv, forwards, T, n_t, x, payoff, i_spot, *, obstacle=None, exercise_up=None, bc=(0, 0), vals=(0.0, 0.0)):
    """Run the backward sweep: returns ``V(x, 0)`` (n, m) and ``theta`` (m,) at ``i_spot``.

    ``payoff`` (n, m); ``obstacle`` (n, m) for American exercise (else None); ``exercise_up`` (m,) True where
    the exercise region is at the top (calls); ``bc`` (lower, upper) 0 linear in S / 1 Dirichlet ``vals``.
    """
    theta, dt, r, mu, sig2 = _setup(lv, forwards, T, n_t, x)
    V = np.array(payoff, dtype=float)
    m = V.shape[1]
    american = obstacle is not None
    ups = np.ones(m, bool) if exercise_up is None else np.asarray(exercise_up, bool)
    val_lo, val_hi = (np.broadcast_to(np.asarray(v, float), (m,)) for v in vals)
    geo, hist = _geometry(x), np.zeros((2, m))
    kernel = _KERNEL.get()
    sweep = kernel if kernel is not None else _sweep_numpy
    for flag in (True, False):  # calls and puts apart: their eliminations run in opposite directions
        cols = np.flatnonzero(ups == flag)
        if cols.size == 0:
            continue
        Vc = np.ascontiguousarray(V[:, cols])
        ob = np.ascontiguousarray(obstacle[:, cols] if american else np.zeros((1, 1)), dtype=float)
        hc = np.zeros((2, cols.size))
        V[:, cols] = sweep(geo, sig2, theta, dt, r, mu, Vc, ob, american, flag, int(bc[0]),
                           np.ascontiguousarray(val_lo[cols]), int(bc[1]), np.ascontiguousarray(val_hi[cols]),
                           int(i_spot), hc)
        hist[:, cols] = hc
    th = (-3.0 * V[i_spot] + 4.0 * hist[0] - hist[1]) / (2.0 * (T / n_t))
    return V, th


def _greeks(x: np.ndarray, V: np.ndarray, i: int):
    """``(delta, gamma)`` (m,) at node ``i`` from its two neighbours: ``V_S = V_x/S``, ``V_SS = (V_xx - V_x)/S^2``."""
    g = _geometry(x[i - 1:i + 2])
    Vx = g[0, 1] * V[i - 1] + g[1, 1] * V[i] + g[2, 1] * V[i + 1]
    Vxx = g[3, 1] * V[i - 1] + g[4, 1] * V[i] + g[5, 1] * V[i + 1]
    S = np.exp(x[i])
    return Vx / S, (Vxx - Vx) / (S * S)


# ---------------------------------------------------------------------------------------- products
def _spot(forwards, spot) -> float:
    S0 = forwards.spot if spot is None else spot
    if S0 is None:
        raise InputError("the spot is unknown: pass spot= or build Forwards with a spot")
    if not (np.isfinite(S0) and S0 > 0):
        raise InputError(f"spot must be positive and finite, got {S0!r}")
    return float(S0)


def _grid(lv, forwards, S0, T, n_x, points, required, lo=None, hi=None, centres=None):
    """Nodes in ``x = ln S`` covering ``points`` (log prices) and the forward +- ``N_SD`` std devs (ends
    ``lo``/``hi`` when given: a barrier), dense near the spot and ``centres`` (default ``points``), every
    ``required`` point a node; returns ``(x, i_spot)``."""
    scale, w_lo, w_hi = _widths(lv, S0, T)
    x0 = np.log(S0)
    xF = x0 + float(np.log(forwards.F(T) / forwards.F(0.0)))
    span = np.r_[points, x0, xF]
    lo = span.min() - w_lo if lo is None else lo
    hi = span.max() + w_hi if hi is None else hi
    req = np.unique(np.asarray(required, float))
    req = req[(req > lo + 1e-12) & (req < hi - 1e-12)]
    if len(req) > 1:
        req = req[np.r_[True, np.diff(req) > 1e-9]]
    x = _x_nodes(lo, hi, n_x, np.r_[x0, points if centres is None else centres], req, ALPHA * scale)
    return x, int(np.argmin(np.abs(x - x0)))


def _vanilla(lv, forwards, p, S0, n_x, n_t, digital=False):
    xk = np.log(p.strike)
    x, i0 = _grid(lv, forwards, S0, p.T, n_x, [xk], [np.log(S0), xk])
    pay = _cell_average(x, p.strike, p.cp, digital)
    american = bool(getattr(p, "american", False))
    ob = np.maximum(p.cp * (np.exp(x) - p.strike), 0.0)[:, None] if american else None
    V, th = _solve(lv, forwards, p.T, n_t, x, pay, i0, obstacle=ob, exercise_up=np.array([p.cp > 0]))
    how = "; Brennan-Schwartz early exercise" if american else ""
    return x, V[:, 0], th[0], i0, how


def _barrier(lv, forwards, p, S0, n_x, n_t):
    """Knock-out: the barrier is a grid end with ``V = rebate``. Knock-in: ``vanilla - out(0) + rebate * no-touch``
    on a grid holding the barrier as a node (the knock-in equals the vanilla beyond the barrier)."""
    xh, xk, x0 = np.log(p.barrier), np.log(p.strike), np.log(S0)
    side = (0, 1) if p.up else (1, 0)
    if p.knock_out:
        x, i0 = _grid(lv, forwards, S0, p.T, n_x, [xk, xh], [x0, xk], **({"hi": xh} if p.up else {"lo": xh}))
        pay = _cell_average(x, p.strike, p.cp)
        pay[-1 if p.up else 0] = p.rebate
        vals = (0.0, p.rebate) if p.up else (p.rebate, 0.0)
        V, th = _solve(lv, forwards, p.T, n_t, x, pay, i0, bc=side, vals=vals)
        return x, V[:, 0], th[0], i0, "; barrier = grid end, V = rebate"
    x, i0 = _grid(lv, forwards, S0, p.T, n_x, [xk, xh], [x0, xk, xh])
    V, th = _solve(lv, forwards, p.T, n_t, x, _cell_average(x, p.strike, p.cp), i0)
    ih = int(np.argmin(np.abs(x - xh)))
    part = slice(0, ih + 1) if p.up else slice(ih, x.size)
    xs, js = x[part], i0 - part.start
    cols = np.c_[_cell_average(xs, p.strike, p.cp), np.ones(xs.size)]
    cols[-1 if p.up else 0] = 0.0
    Vo, tho = _solve(lv, forwards, p.T, n_t, xs, cols, js, bc=side)
    V, th = V[:, 0].copy(), th[0] - tho[0] + p.rebate * tho[1]
    V[part] += p.rebate * Vo[:, 1] - Vo[:, 0]
    return x, V, th, i0, "; knock-in = vanilla - knock-out + rebate x no-touch"


def _check_sizes(n_x, n_t) -> None:
    if not (isinstance(n_x, (int, np.integer)) and n_x >= 11):
        raise InputError(f"n_x must be an integer >= 11 (space nodes), got {n_x!r}")
    if not (isinstance(n_t, (int, np.integer)) and n_t >= 4):
        raise InputError(f"n_t must be an integer >= 4 (time steps), got {n_t!r}")


def price_pde(lv, forwards, product, *, n_x: int = 301, n_t: int = 200, spot: float | None = None) -> BackwardResult:
    """Price a ``Vanilla`` (European/American), ``Barrier`` or ``Digital`` under local vol by the backward PDE.

    ``lv(K, T)`` vectorised local vol (price units, years); ``forwards`` gives ``F(T)``, ``D(T)`` and the spot
    (``spot`` overrides it); ``n_x`` space nodes, ``n_t`` time steps. See the module docstring for the scheme.
    Returns a ``BackwardResult`` (price, delta, gamma, theta per year, grid and values at ``t = 0``).
    """
    t0 = time.perf_counter()
    _check_sizes(n_x, n_t)
    S0 = _spot(forwards, spot)
    base = f"Crank-Nicolson in ln S ({n_x}x{n_t}, Rannacher {2 * RANNACHER} implicit half steps)"
    if isinstance(product, Barrier):
        hit = S0 >= product.barrier if product.up else S0 <= product.barrier
        if hit and product.knock_out:
            return BackwardResult(float(product.rebate), 0.0, 0.0, 0.0, S0, n_x, n_t, time.perf_counter() - t0,
                                  "barrier already hit: the rebate, paid now", np.array([S0]),
                                  np.array([float(product.rebate)]))
        if hit:
            product = Vanilla(product.strike, product.T, product.cp)
            base += "; barrier already hit: the vanilla"
    if isinstance(product, Barrier):
        x, V, th, i0, how = _barrier(lv, forwards, product, S0, n_x, n_t)
    elif isinstance(product, (Vanilla, Digital)):
        x, V, th, i0, how = _vanilla(lv, forwards, product, S0, n_x, n_t, digital=isinstance(product, Digital))
    else:
        raise InputError(f"price_pde prices Vanilla, Barrier and Digital products, got {type(product).__name__}: "
                         "price Asians with core.pricing.exotics.price_asian")
    delta, gamma = _greeks(x, V[:, None], i0)
    return BackwardResult(float(V[i0]), float(delta[0]), float(gamma[0]), float(th), S0, n_x, n_t,
                          time.perf_counter() - t0, base + how, np.exp(x), V)


def price_pde_strikes(lv, forwards, strikes, T: float, cp=1, *, american: bool = False, n_x: int = 301,
                      n_t: int = 200, spot: float | None = None):
    """All strikes of one expiry on one grid and one matrix per step: ``(prices, deltas, gammas)``, each (m,).

    ``strikes`` (m,) price units; ``T`` years; ``cp`` +1/-1, scalar or (m,); ``american`` early exercise
    (Brennan-Schwartz per column). The grid is concentrated at the spot; payoffs are cell averaged, so a
    strike off the nodes keeps second order.
    """
    _check_sizes(n_x, n_t)
    S0 = _spot(forwards, spot)
    K = np.atleast_1d(np.asarray(strikes, float))
    if K.ndim != 1 or K.size == 0 or not np.all(np.isfinite(K) & (K > 0)):
        raise InputError("strikes must be a non-empty 1-d array of positive prices")
    if not (np.isfinite(T) and T > 0):
        raise InputError(f"T must be positive (years), got {T!r}")
    cps = np.broadcast_to(np.asarray(cp, float), K.shape)
    if not np.all(np.abs(cps) == 1):
        raise InputError("cp must be +1 (call) or -1 (put), per strike or one for all")
    x, i0 = _grid(lv, forwards, S0, float(T), n_x, np.log(K), [np.log(S0)], centres=[])
    ob = np.maximum(cps * (np.exp(x)[:, None] - K), 0.0) if american else None
    V, _ = _solve(lv, forwards, float(T), n_t, x, _cell_average(x, K, cps), i0, obstacle=ob, exercise_up=cps > 0)
    delta, gamma = _greeks(x, V, i0)
    return V[i0].copy(), delta, gamma


def pde_convergence(lv, forwards, product, sizes=((301, 200), (601, 400)), *, spot: float | None = None):
    """Price and Greeks at each grid size ``(n_x, n_t)``: a DataFrame with columns ``n_x, n_t, price, delta,
    gamma, seconds, change`` (``change`` = price minus the previous row's: the error of the coarser grid is
    about 4/3 of it at second order)."""
    rows = []
    for n_x, n_t in sizes:
        res = price_pde(lv, forwards, product, n_x=int(n_x), n_t=int(n_t), spot=spot)
        rows.append({"n_x": int(n_x), "n_t": int(n_t), "price": res.price, "delta": res.delta,
                     "gamma": res.gamma, "seconds": res.seconds})
    out = pd.DataFrame(rows)
    out["change"] = out["price"].diff()
    return out
