"""Monte Carlo under local vol: log-Euler, vectorised over paths, the local vol read from a grid.

Each path carries ``z = ln(S_t / F(t))``; a step is the log-Euler step of MATH.md written for ``z``:
``z += -1/2 sigma^2 dt + sigma sqrt(dt) Z``, ``sigma = sigma_loc(F(t) e^z, t)`` (Glasserman 2003,
sect. 6.2). The carry ``r - q`` of every step comes from the ``ln F`` increments, so
``E[S_t] = F(t)`` holds exactly at every date (``e^z`` is a discrete martingale), whatever the rate
curve. The local vol is tabulated once per step on a uniform ``z`` grid (``MCGrid``):
a lookup is an index computation and a linear interpolation for a whole block of paths; no scalar
call per path. Paths are processed in cache-sized blocks. Antithetic pairs ``(Z, -Z)`` and, for
vanillas, the terminal forward as a control variate (its mean is known exactly) reduce the variance;
standard errors are computed over antithetic pairs (independent).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np

from core.errors import ConvergenceWarning, InputError
from core.forwards import Forwards
from core.localvol import T_MIN, local_vol_from_grid

BLOCK = 16384


def time_grid(T: float, n_steps: int, extra=()) -> np.ndarray:
    """``n_steps`` uniform steps on ``[0, T]`` plus the dates ``extra`` (monitoring, fixings); sorted, unique."""
    T = float(T)
    if not (np.isfinite(T) and T > 0):
        raise InputError(f"T must be positive (years), got {T!r}")
    if int(n_steps) < 1:
        raise InputError(f"n_steps must be >= 1, got {n_steps!r}")
    extra = np.asarray(extra, dtype=float).ravel()
    if extra.size and (np.any(extra <= 0) or np.any(extra > T * (1 + 1e-12))):
        raise InputError("monitoring / fixing dates must lie in (0, T]")
    t = np.unique(np.r_[np.linspace(0.0, T, int(n_steps) + 1), extra])
    # merge dates closer than a millionth of a step (rounding), keeping the requested ones
    keep = np.r_[True, np.diff(t) > 1e-9 * T / n_steps]
    return t[keep]


@dataclass(frozen=True)
class MCGrid:
    """Local vol tabulated per Monte Carlo step on a uniform ``z = ln(S/F(t))`` grid.

    ``times`` (n+1,) the simulation dates; ``z0``, ``dz``, ``nz`` the grid; ``vol`` (n, nz):
    ``vol[k, j] = sigma_loc(F(t_k) e^{z0 + j dz}, t_k)``; ``slope`` (n, nz): ``vol[k, j+1] - vol[k, j]``
    (last column 0) so that a lookup is ``vol[k, j] + frac * slope[k, j]``. Flat beyond the grid.
    """

    times: np.ndarray
    z0: float
    dz: float
    nz: int
    vol: np.ndarray
    slope: np.ndarray
    logF: np.ndarray

    def lookup(self, k: int, z: np.ndarray, out: np.ndarray | None = None, work=None) -> np.ndarray:
        """Local vol at step ``k`` for log-moneyness ``z`` (paths,), by index and lerp (no search)."""
        u = np.empty_like(z) if work is None else work[0]
        np.subtract(z, self.z0, out=u)
        u *= 1.0 / self.dz
        np.maximum(u, 0.0, out=u)
        np.minimum(u, self.nz - 1.0, out=u)
        i = u.astype(np.intp)
        u -= i
        out = np.empty_like(z) if out is None else out
        # mode="clip": no bounds-check buffering (indices are in range already)
        np.take(self.slope[k], i, out=out, mode="clip")
        out *= u
        out += np.take(self.vol[k], i, mode="clip")
        return out


def mc_grid(lv, forwards, times, *, nz: int = 801, width: float | None = None) -> MCGrid:
    """Tabulate ``lv`` for Monte Carlo at each step start ``times[:-1]`` on a uniform ``z`` grid.

    ``width``: half-width of the grid in ``z = ln(S/F)``; by default 8 ATM standard deviations at
    the last date (at least 0.5, at most 6), beyond which the local vol is held flat. The local vol of
    step ``k`` is read at ``t_k`` (left point: Euler), floored at ``T_MIN``.
    """
    times = np.asarray(times, dtype=float)
    if times.ndim != 1 or times.size < 2 or np.any(np.diff(times) <= 0) or times[0] < 0:
        raise InputError("times must be increasing, non-negative, at least two dates")
    t_eval = np.maximum(times[:-1], T_MIN)
    logF = np.log(forwards.F(times))
    if width is None:
        probe_t = np.linspace(t_eval[0], times[-1], 9)
        s_atm = np.nanmax(np.asarray(lv(forwards.F(probe_t), probe_t), float))
        if not np.isfinite(s_atm):
            raise InputError("lv returned no finite value at the money; check the local-vol callable")
        width = float(np.clip(8.0 * s_atm * np.sqrt(times[-1]), 0.5, 6.0))
    z = np.linspace(-width, width, nz)
    K = np.exp(logF[:-1, None] + z[None, :])
    vol = np.asarray(lv(K, t_eval[:, None]), dtype=float)
    bad = ~np.isfinite(vol) | (vol < 0)
    if bad.any():
        warnings.warn(f"local vol non-finite or negative at {int(bad.sum())} Monte Carlo grid points; "
                      "replaced by the nearest finite value in z", ConvergenceWarning, stacklevel=2)
        for k in np.nonzero(bad.any(axis=1))[0]:
            good = ~bad[k]
            vol[k] = np.interp(z, z[good], vol[k, good]) if good.any() else 0.2
    vol = np.ascontiguousarray(vol)
    slope = np.zeros_like(vol)
    slope[:, :-1] = np.diff(vol, axis=1)
    return MCGrid(times=times, z0=float(z[0]), dz=float(z[1] - z[0]), nz=nz, vol=vol, slope=slope, logF=logF)


def _rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def run_paths(grid: MCGrid, n_paths: int, seed=None, *, antithetic: bool = True, observers=(),
              block: int = BLOCK) -> np.ndarray:
    """The engine: simulate ``z = ln(S/F)`` on ``grid.times``; returns terminal ``z`` (n_paths,).

    ``observers``: objects with ``begin(sl, n)`` (``sl`` the output slice(s) of the block) and
    ``step(k, z_old, z_new, sigma)`` called after every step ``k`` (``t_k -> t_{k+1}``) on the
    block's arrays (``z_old`` is None: observers keep what they need of the previous date).
    With ``antithetic``, path ``i`` and path ``i + n_paths/2`` are a pair ``(Z, -Z)``.
    """
    n_paths = int(n_paths)
    if n_paths < 2:
        raise InputError(f"n_paths must be at least 2, got {n_paths}")
    if antithetic and n_paths % 2:
        n_paths += 1  # pairs need an even count; documented in the results
    rng = _rng(seed)
    times = grid.times
    dts = np.diff(times)
    sq = np.sqrt(dts)
    out = np.empty(n_paths)
    half = n_paths // 2
    step_blk = max(2, int(block) // 2 * 2)
    starts = range(0, half if antithetic else n_paths, step_blk // 2 if antithetic else step_blk)
    for s0 in starts:
        if antithetic:
            h = min(step_blk // 2, half - s0)
            nb = 2 * h
            sl = (slice(s0, s0 + h), slice(half + s0, half + s0 + h))
        else:
            nb = min(step_blk, n_paths - s0)
            h = nb
            sl = (slice(s0, s0 + nb),)
        z = np.zeros(nb)
        Z = np.empty(nb)
        sig = np.empty(nb)
        tmp = np.empty(nb)
        work = (np.empty(nb),)
        for ob in observers:
            ob.begin(sl, nb)
        for k in range(len(dts)):
            if antithetic:
                rng.standard_normal(out=Z[:h])
                np.negative(Z[:h], out=Z[h:])
            else:
                rng.standard_normal(out=Z)
            grid.lookup(k, z, out=sig, work=work)
            # z += sigma (sqrt(dt) Z - sigma dt / 2)
            np.multiply(Z, sq[k], out=tmp)
            np.multiply(sig, 0.5 * dts[k], out=Z)
            tmp -= Z
            tmp *= sig
            z += tmp
            for ob in observers:
                ob.step(k, None, z, sig)
        if antithetic:
            out[sl[0]] = z[:h]
            out[sl[1]] = z[h:]
        else:
            out[sl[0]] = z
    return out


class _Store:
    """Observer keeping ``ln S`` at chosen step indices (columns of ``self.lnS``)."""

    def __init__(self, grid: MCGrid, n_paths: int, idx):
        self.grid, self.idx = grid, {int(k): j for j, k in enumerate(idx)}
        self.lnS = np.empty((n_paths, len(idx)))
        if 0 in self.idx:
            self.lnS[:, self.idx[0]] = grid.logF[0]

    def begin(self, sl, n):
        self.sl = sl

    def step(self, k, z_old, z_new, sig):
        j = self.idx.get(k + 1)
        if j is None:
            return
        v = z_new + self.grid.logF[k + 1]
        if len(self.sl) == 2:
            h = len(v) // 2
            self.lnS[self.sl[0], j] = v[:h]
            self.lnS[self.sl[1], j] = v[h:]
        else:
            self.lnS[self.sl[0], j] = v


@dataclass(frozen=True)
class Paths:
    """Simulated paths. ``times`` (n_dates,) the stored dates; ``S`` (n_paths, n_dates) (or (n_paths,) for
    ``store="terminal"``); ``all_times`` the simulation dates; ``antithetic`` (pairs ``i``, ``i + n/2``);
    ``seconds``."""

    times: np.ndarray
    S: np.ndarray
    all_times: np.ndarray
    antithetic: bool
    seconds: float


def simulate_paths(lv, forwards: Forwards, T: float, n_paths: int, n_steps: int, seed=None, *,
                   antithetic: bool = True, store="terminal", nz: int = 801) -> Paths:
    """Simulate ``S`` under local vol ``lv(K, t)`` with carry and discounting from ``forwards``.

    Parameters: ``T`` horizon (years); ``n_steps`` uniform steps (plus any monitoring dates);
    ``seed`` int, ``None`` or ``numpy.random.Generator``; ``store`` ``"terminal"`` (``S_T`` only),
    ``"all"`` (every date: ``n_paths x (n_steps+1)`` floats, mind the memory) or an array of
    monitoring dates in ``(0, T]`` (added to the time grid, stored exactly there).
    Scheme: log-Euler in ``z = ln(S/F(t))`` (module docstring); ``E[S_t] = F(t)`` exactly.
    """
    t0 = time.perf_counter()
    if isinstance(store, str):
        if store not in ("terminal", "all"):
            raise InputError(f"store must be 'terminal', 'all' or an array of dates, got {store!r}")
        times = time_grid(T, n_steps)
    else:
        mon = np.unique(np.asarray(store, dtype=float).ravel())
        times = time_grid(T, n_steps, mon)
    grid = mc_grid(lv, forwards, times, nz=nz)
    if isinstance(store, str) and store == "terminal":
        z = run_paths(grid, n_paths, seed, antithetic=antithetic)
        return Paths(times=times[-1:], S=np.exp(z + grid.logF[-1]), all_times=times, antithetic=antithetic,
                     seconds=time.perf_counter() - t0)
    if isinstance(store, str):
        idx = np.arange(len(times))
    else:
        idx = np.searchsorted(times, mon - 1e-9 * T / n_steps)
    n_eff = n_paths + (1 if antithetic and n_paths % 2 else 0)
    obs = _Store(grid, n_eff, idx)
    run_paths(grid, n_eff, seed, antithetic=antithetic, observers=(obs,))
    return Paths(times=times[idx], S=np.exp(obs.lnS), all_times=times, antithetic=antithetic,
                 seconds=time.perf_counter() - t0)


def pair_stats(values: np.ndarray, antithetic: bool, control=None, control_mean=None):
    """Mean and standard error of per-path ``values`` (n_paths, ...) over independent units.

    With ``antithetic`` the units are the pair averages ``(v_i + v_{i+n/2}) / 2``. With a ``control``
    (n_paths,) of known mean ``control_mean``, the estimator is ``mean(v - beta (c - control_mean))``
    with the regression ``beta`` (Glasserman 2003, sect. 4.1). Returns ``(mean, stderr)``.
    """
    v = np.asarray(values, dtype=float)
    if antithetic:
        h = v.shape[0] // 2
        v = 0.5 * (v[:h] + v[h:2 * h])
        if control is not None:
            control = 0.5 * (control[:h] + control[h:2 * h])
    m = v.shape[0]
    if control is not None:
        c = np.asarray(control, float) - control_mean
        c = c.reshape((m,) + (1,) * (v.ndim - 1))
        cc = c - c.mean(axis=0)
        beta = np.sum(cc * (v - v.mean(axis=0)), axis=0) / max(float(np.sum(cc * cc)), 1e-300)
        v = v - beta * c
    return v.mean(axis=0), v.std(axis=0, ddof=1) / np.sqrt(m)


@dataclass(frozen=True)
class MCResult:
    """Monte Carlo European prices: ``price``, ``stderr`` (same shape as the strikes), ``T``, ``strikes``,
    ``cp``, ``n_paths``, ``n_steps``, ``antithetic``, ``control_variate``, ``seconds``."""

    price: np.ndarray
    stderr: np.ndarray
    T: float
    strikes: np.ndarray
    cp: np.ndarray
    n_paths: int
    n_steps: int
    antithetic: bool
    control_variate: bool
    seconds: float


def mc_european(lv, forwards: Forwards, strikes, T: float, cp=1, *, n_paths: int = 100_000,
                n_steps: int = 252, seed=None, antithetic: bool = True, control_variate: bool = True,
                nz: int = 801) -> MCResult:
    """Discounted European prices for every strike from one set of local-vol paths.

    ``strikes`` (nK,), ``cp`` +1/-1 (scalar or (nK,)), ``T`` years. ``price = D(T) E[(cp (S_T - K))^+]``;
    the control variate is ``S_T`` with ``E[S_T] = F(T)`` (exact in this scheme).
    """
    t0 = time.perf_counter()
    K = np.atleast_1d(np.asarray(strikes, dtype=float))
    cpa = np.broadcast_to(np.sign(np.asarray(cp, dtype=float)), K.shape)
    if np.any(~np.isfinite(K)) or np.any(K <= 0) or np.any(cpa == 0):
        raise InputError("strikes must be positive and finite; cp +1 (call) or -1 (put)")
    paths = simulate_paths(lv, forwards, T, n_paths, n_steps, seed, antithetic=antithetic, nz=nz)
    S = paths.S
    pay = np.maximum(cpa[None, :] * (S[:, None] - K[None, :]), 0.0)
    F = float(forwards.F(T))
    D = float(forwards.D(T))
    m, se = pair_stats(pay, antithetic, S if control_variate else None, F)
    return MCResult(price=D * m, stderr=D * se, T=float(T), strikes=K, cp=cpa.copy(), n_paths=len(S),
                    n_steps=int(n_steps), antithetic=antithetic, control_variate=control_variate,
                    seconds=time.perf_counter() - t0)


def simulate(lv, S0: float, forwards: Forwards, T: float, n_paths: int, n_steps: int, seed=None, **kw) -> Paths:
    """ARCHITECTURE.md's name: ``simulate_paths`` with an explicit spot check (``S0`` must match ``forwards``)."""
    if forwards.spot is not None and not np.isclose(S0, forwards.spot, rtol=1e-10):
        raise InputError(f"S0={S0} differs from forwards.spot={forwards.spot}; rebuild the forwards")
    return simulate_paths(lv, forwards, T, n_paths, n_steps, seed, **kw)


def local_vol_mc(
    S: float,
    K: float,
    T: float,
    r: float,
    strikes: np.ndarray,
    expiries: np.ndarray,
    local_vol_surface: np.ndarray,
    option_type: str = "call",
    q: float = 0.0,
    n_paths: int = 100_000,
    n_steps: int = 252,
    seed: int | None = None,
) -> float:
    """Price a European option by Monte Carlo under a tabulated local vol (the seeds' API, vectorised).

    Parameters: ``S`` spot; ``K`` strike; ``T`` expiry (years); ``r``, ``q`` continuous rate and
    dividend yield; ``strikes`` (nK,), ``expiries`` (nT,) and ``local_vol_surface`` (nK, nT) with
    ``local_vol_surface[i, j] = sigma(K_i, T_j)``; ``option_type`` 'call' or 'put'; ``n_paths``,
    ``n_steps``, ``seed``. Returns the discounted price (float).

    Same model as the seeds' version (``dS = (r-q) S dt + sigma_loc(S, t) S dW``, log-Euler, local vol
    held flat beyond the table), but the table is interpolated bilinearly once per step onto a uniform
    ``ln S`` grid and paths look it up by index (no scalar spline call per path), with antithetic
    variates and the forward as a control variate. Standard error: use ``mc_european``.
    """
    kind = str(option_type).lower()
    if kind not in ("call", "put"):
        raise InputError(f"option_type must be 'call' or 'put', got {option_type!r}")
    for name, val in (("S", S), ("K", K), ("T", T)):
        if not (np.isfinite(val) and val > 0):
            raise InputError(f"{name} must be positive and finite, got {val!r}")
    lv = local_vol_from_grid(strikes, expiries, local_vol_surface)
    fw = Forwards.from_rates(float(S), float(r), float(q), [float(T)])
    res = mc_european(lv, fw, [float(K)], float(T), 1 if kind == "call" else -1, n_paths=n_paths,
                      n_steps=n_steps, seed=seed)
    return float(res.price[0])
