"""Barrier and arithmetic Asian options under local vol and under Black-Scholes, side by side.

Both models run on the same random numbers (common random numbers), so the difference of the two
prices, what the smile is worth, has a much smaller standard error than either price. The
Black-Scholes side uses the ATM implied vol at the option's maturity (given, or read off the local
vol by one forward Dupire sweep, so that both models agree on the ATM vanilla).

Barriers are monitored discretely at the simulation dates, at given dates, or continuously: between
two dates the path is a Brownian bridge in ``ln S`` and survives an upper barrier ``h = ln H`` with
probability ``1 - exp(-2 (h - a)(h - b) / (sigma^2 dt))`` (Glasserman 2003, sect. 6.4; Beaglehole,
Dybvig & Zhou 1997). The survival probabilities multiply the payoff (a conditional expectation, so
no extra noise). ``barrier_price_bs`` is the continuous-monitoring closed form of Reiner &
Rubinstein, "Breaking down the barriers", Risk 4(8), 1991 (in the A-D notation of Haug, *The
Complete Guide to Option Pricing Formulas*, 2nd ed., 2007, sect. 4.17.1), without rebate.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtr

from core.errors import InputError
from core.localvol import constant_local_vol
from core.pricing.mc import mc_grid, pair_stats, run_paths, time_grid
from core.pricing.pde import forward_dupire
from core.pricing.products import BARRIER_KINDS, Asian, Barrier


def barrier_price_bs(S, K, H, T, r, q, sigma, kind: str, cp: int = 1):
    """Black-Scholes price of a continuously monitored barrier option, no rebate (Reiner & Rubinstein 1991).

    ``S`` spot, ``K`` strike, ``H`` barrier, ``T`` years, ``r``, ``q`` continuous rates, ``sigma`` vol,
    ``kind`` one of ``BARRIER_KINDS``, ``cp`` +1 call / -1 put. Scalars or broadcastable arrays.
    Haug (2007) sect. 4.17.1: with ``b = r - q``, ``mu = (b - sigma^2/2)/sigma^2``, ``s = sigma sqrt T``,
    ``x1 = ln(S/K)/s + (1+mu)s``, ``x2 = ln(S/H)/s + (1+mu)s``, ``y1 = ln(H^2/(SK))/s + (1+mu)s``,
    ``y2 = ln(H/S)/s + (1+mu)s`` and terms A, B, C, D (phi = cp, eta = +1 down, -1 up).
    A knocked-out option whose barrier is already breached at ``S`` is worth 0 (knock-in: the vanilla).
    """
    if kind not in BARRIER_KINDS:
        raise InputError(f"kind must be one of {BARRIER_KINDS}, got {kind!r}")
    S, K, H, T, r, q, sigma = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (S, K, H, T, r, q, sigma)))
    phi = 1.0 if cp > 0 else -1.0
    up = kind.startswith("up")
    eta = -1.0 if up else 1.0
    b = r - q
    s = sigma * np.sqrt(T)
    mu = (b - 0.5 * sigma**2) / sigma**2
    x1 = np.log(S / K) / s + (1 + mu) * s
    x2 = np.log(S / H) / s + (1 + mu) * s
    y1 = np.log(H * H / (S * K)) / s + (1 + mu) * s
    y2 = np.log(H / S) / s + (1 + mu) * s
    fS = S * np.exp((b - r) * T)
    fK = K * np.exp(-r * T)
    hs = H / S
    A = phi * fS * ndtr(phi * x1) - phi * fK * ndtr(phi * x1 - phi * s)
    B = phi * fS * ndtr(phi * x2) - phi * fK * ndtr(phi * x2 - phi * s)
    C = phi * fS * hs ** (2 * (mu + 1)) * ndtr(eta * y1) - phi * fK * hs ** (2 * mu) * ndtr(eta * y1 - eta * s)
    D = phi * fS * hs ** (2 * (mu + 1)) * ndtr(eta * y2) - phi * fK * hs ** (2 * mu) * ndtr(eta * y2 - eta * s)
    above = K > H
    call = phi > 0
    # the eight cases of Haug's table (knock-out); knock-in = vanilla (A) - knock-out
    if call and not up:
        out = np.where(above, A - C, B - D)
    elif call and up:
        out = np.where(above, 0.0, A - B + C - D)
    elif not call and not up:
        out = np.where(above, A - B + C - D, 0.0)
    else:
        out = np.where(above, B - D, A - C)
    breached = (S >= H) if up else (S <= H)
    out = np.where(breached, 0.0, out)
    price = out if kind.endswith("out") else A - out
    return price[()] if price.ndim == 0 else price


class _Barrier:
    """Observer: survival weight per path (discrete and/or Brownian-bridge continuous)."""

    def __init__(self, grid, ln_h: float, up: bool, continuous: bool, monitor_steps):
        self.grid, self.h, self.up, self.continuous = grid, ln_h, up, continuous
        self.monitor = monitor_steps  # boolean per step end (k+1), or None = every date
        self.dts = np.diff(grid.times)

    def begin(self, sl, n):
        self.alive = np.ones(n)
        self.sl = sl
        # distance to the barrier in ln S at the last date, positive on the safe side, floored at 0
        d0 = self.h - self.grid.logF[0]
        self.d_prev = np.full(n, max(d0 if self.up else -d0, 0.0))
        self.buf = np.empty(n)

    def step(self, k, z_old, z_new, sig):
        d_new = np.subtract(self.h - self.grid.logF[k + 1], z_new, out=self.buf)
        if not self.up:
            np.negative(d_new, out=d_new)
        np.maximum(d_new, 0.0, out=d_new)
        if self.continuous:
            # survival of the bridge: 1 - exp(-2 d_old d_new / (sigma^2 dt)); a path on or beyond the
            # barrier has d = 0, so exp(0) = 1 kills it: no separate test needed
            e = d_new * self.d_prev
            with np.errstate(divide="ignore", invalid="ignore"):
                e /= sig * sig
            e *= -2.0 / self.dts[k]
            np.exp(e, out=e)
            np.subtract(1.0, e, out=e)
            self.alive *= e
            self.d_prev, self.buf = d_new, self.d_prev
        elif self.monitor is None or self.monitor[k + 1]:
            self.alive *= d_new > 0


class _Asian:
    """Observer: sum of ``S`` over the fixing dates (step ends flagged in ``fix``)."""

    def __init__(self, grid, fix):
        self.grid, self.fix = grid, fix

    def begin(self, sl, n):
        self.total = np.full(n, np.exp(self.grid.logF[0]) if self.fix[0] else 0.0)

    def step(self, k, z_old, z_new, sig):
        if self.fix[k + 1]:
            self.total += np.exp(self.grid.logF[k + 1] + z_new)


class _Collect:
    """Gather per-block observer arrays into full (n_paths,) arrays in the engine's pair layout."""

    def __init__(self, ob, attr, n_paths):
        self.ob, self.attr = ob, attr
        self.values = np.empty(n_paths)

    def begin(self, sl, n):
        self.ob.begin(sl, n)
        self.sl = sl

    def step(self, k, z_old, z_new, sig):
        self.ob.step(k, z_old, z_new, sig)
        # cheap: only store at the last step
        if k == len(self.ob.grid.times) - 2:
            v = getattr(self.ob, self.attr)
            if len(self.sl) == 2:
                h = len(v) // 2
                self.values[self.sl[0]] = v[:h]
                self.values[self.sl[1]] = v[h:]
            else:
                self.values[self.sl[0]] = v


@dataclass(frozen=True)
class ExoticResult:
    """An exotic priced under local vol and under Black-Scholes (ATM implied vol) on the same paths.

    ``price_lv``, ``se_lv``, ``price_bs``, ``se_bs``; ``smile_value = price_lv - price_bs`` and its
    standard error ``se_smile`` (paired); ``atm_vol`` used for Black-Scholes; ``vanilla_lv``,
    ``vanilla_bs`` the plain European on the same paths (same strike and ``cp``, no variance
    reduction: ``in + out = vanilla`` holds exactly); ``product`` (dict of the contract terms);
    ``n_paths``, ``n_steps``, ``seconds``.
    """

    product: dict
    price_lv: float
    se_lv: float
    price_bs: float
    se_bs: float
    smile_value: float
    se_smile: float
    atm_vol: float
    vanilla_lv: float
    vanilla_bs: float
    n_paths: int
    n_steps: int
    seconds: float
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Flat JSON-able summary."""
        d = dict(self.product)
        d.update({k: getattr(self, k) for k in ("price_lv", "se_lv", "price_bs", "se_bs", "smile_value",
                                                 "se_smile", "atm_vol", "vanilla_lv", "vanilla_bs",
                                                 "n_paths", "n_steps", "seconds")})
        return d


def atm_implied_vol(lv, forwards, T: float, **grid) -> float:
    """ATM (``K = F_T``) Black implied vol of the local-vol model at ``T``, by one forward Dupire sweep."""
    grid.setdefault("n_x", 301)
    grid.setdefault("n_t", 120)
    res = forward_dupire(lv, forwards, [T], **grid)
    return float(res.implied_vol(res.F[0], T))


def _run_both(lv, forwards, times, make_observers, n_paths, seed, antithetic, atm_vol, nz):
    """Run local vol and Black-Scholes on the same normals; returns per-model lists of collected arrays."""
    if isinstance(seed, np.random.Generator):
        raise InputError("pass an integer seed: both models must replay the same normals")
    out = {}
    for name, model in (("lv", lv), ("bs", constant_local_vol(atm_vol))):
        grid = mc_grid(model, forwards, times, nz=nz)
        n_eff = n_paths + (1 if antithetic and n_paths % 2 else 0)
        obs = make_observers(grid, n_eff)
        z = run_paths(grid, n_eff, np.random.default_rng(seed), antithetic=antithetic, observers=obs)
        out[name] = (grid, z, obs)
    return out


def _stats(pay_lv, pay_bs, antithetic, D):
    m_lv, s_lv = pair_stats(pay_lv, antithetic)
    m_bs, s_bs = pair_stats(pay_bs, antithetic)
    m_d, s_d = pair_stats(pay_lv - pay_bs, antithetic)
    return D * m_lv, D * s_lv, D * m_bs, D * s_bs, D * m_d, D * s_d


def price_barrier(lv, forwards, *, strike: float, barrier: float, T: float, kind: str = "up-and-out",
                  cp: int = 1, monitoring="continuous", atm_vol: float | None = None,
                  n_paths: int = 100_000, n_steps: int = 252, seed: int = 0, antithetic: bool = True,
                  nz: int = 801) -> ExoticResult:
    """Barrier option (no rebate) under local vol and under Black-Scholes with the ATM implied vol.

    Parameters: ``lv(K, t)`` local vol; ``forwards`` (``F``, ``D``, spot); ``strike``, ``barrier`` in
    price units; ``T`` years; ``kind`` in ``BARRIER_KINDS``; ``cp`` +1/-1; ``monitoring``
    ``"continuous"`` (Brownian-bridge correction between dates), ``"discrete"`` (at every simulation
    date) or an array of dates in ``(0, T]`` (added to the grid; monitored only there); ``atm_vol``
    for the Black-Scholes side (default: the local-vol model's own ATM implied vol at ``T``);
    ``n_paths``, ``n_steps``, integer ``seed``. Knock-in = vanilla - knock-out on the same paths.
    """
    t0 = time.perf_counter()
    if kind not in BARRIER_KINDS:
        raise InputError(f"kind must be one of {BARRIER_KINDS}, got {kind!r}")
    for name, v in (("strike", strike), ("barrier", barrier), ("T", T)):
        if not (np.isfinite(v) and v > 0):
            raise InputError(f"{name} must be positive and finite, got {v!r}")
    up = kind.startswith("up")
    if isinstance(monitoring, str):
        if monitoring not in ("continuous", "discrete"):
            raise InputError(f"monitoring must be 'continuous', 'discrete' or an array of dates, got {monitoring!r}")
        times = time_grid(T, n_steps)
        mon = None
        continuous = monitoring == "continuous"
    else:
        dates = np.unique(np.asarray(monitoring, dtype=float).ravel())
        times = time_grid(T, n_steps, dates)
        mon = np.zeros(len(times), bool)
        mon[np.searchsorted(times, dates - 1e-9 * T / n_steps)] = True
        continuous = False
    if atm_vol is None:
        atm_vol = atm_implied_vol(lv, forwards, T)
    S0 = float(forwards.F(0.0)) if forwards.spot is None else float(forwards.spot)
    breached = (S0 >= barrier) if up else (S0 <= barrier)

    def make(grid, n_eff):
        return [_Collect(_Barrier(grid, np.log(barrier), up, continuous, mon), "alive", n_eff)]

    runs = _run_both(lv, forwards, times, make, n_paths, seed, antithetic, atm_vol, nz)
    D = float(forwards.D(T))
    pays, vans = {}, {}
    for name, (grid, z, obs) in runs.items():
        S_T = np.exp(grid.logF[-1] + z)
        van = np.maximum(cp * (S_T - strike), 0.0)
        alive = 0.0 if breached else obs[0].values
        out_pay = van * alive
        pays[name] = out_pay if kind.endswith("out") else van - out_pay
        vans[name] = van
    p_lv, s_lv, p_bs, s_bs, d, s_d = _stats(pays["lv"], pays["bs"], antithetic, D)
    v_lv, _ = pair_stats(vans["lv"], antithetic)
    v_bs, _ = pair_stats(vans["bs"], antithetic)
    product = {"type": "barrier", "kind": kind, "cp": int(cp), "strike": float(strike),
               "barrier": float(barrier), "T": float(T),
               "monitoring": monitoring if isinstance(monitoring, str) else f"{int(mon.sum())} dates"}
    return ExoticResult(product=product, price_lv=float(p_lv), se_lv=float(s_lv), price_bs=float(p_bs),
                        se_bs=float(s_bs), smile_value=float(d), se_smile=float(s_d), atm_vol=float(atm_vol),
                        vanilla_lv=float(D * v_lv), vanilla_bs=float(D * v_bs),
                        n_paths=len(runs["lv"][1]), n_steps=len(times) - 1, seconds=time.perf_counter() - t0)


def price_asian(lv, forwards, *, strike: float, T: float, fixings=None, n_fixings: int = 12, cp: int = 1,
                atm_vol: float | None = None, n_paths: int = 100_000, n_steps: int = 252, seed: int = 0,
                antithetic: bool = True, nz: int = 801) -> ExoticResult:
    """Arithmetic-average Asian option ``(cp (A - K))^+``, ``A`` the mean of ``S`` over the fixing dates.

    ``fixings``: dates in ``[0, T]`` (years; a fixing at 0 uses the spot), default ``n_fixings``
    equally spaced dates ending at ``T``. Local vol and Black-Scholes (ATM implied vol at ``T``) on the
    same normals; see ``ExoticResult``.
    """
    t0 = time.perf_counter()
    for name, v in (("strike", strike), ("T", T)):
        if not (np.isfinite(v) and v > 0):
            raise InputError(f"{name} must be positive and finite, got {v!r}")
    if fixings is None:
        if int(n_fixings) < 1:
            raise InputError(f"n_fixings must be >= 1, got {n_fixings!r}")
        fixings = T * np.arange(1, int(n_fixings) + 1) / int(n_fixings)
    fixings = np.unique(np.asarray(fixings, dtype=float).ravel())
    if fixings.size == 0 or fixings[0] < 0 or fixings[-1] > T * (1 + 1e-12):
        raise InputError("fixings must be dates in [0, T]")
    pos = fixings[fixings > 0]
    times = time_grid(T, n_steps, pos)
    fix = np.zeros(len(times), bool)
    fix[np.searchsorted(times, pos - 1e-9 * T / n_steps)] = True
    fix[0] = bool(fixings[0] == 0)
    n_fix = fixings.size
    if atm_vol is None:
        atm_vol = atm_implied_vol(lv, forwards, T)

    def make(grid, n_eff):
        return [_Collect(_Asian(grid, fix), "total", n_eff)]

    runs = _run_both(lv, forwards, times, make, n_paths, seed, antithetic, atm_vol, nz)
    D = float(forwards.D(T))
    pays, vans = {}, {}
    for name, (grid, z, obs) in runs.items():
        A = obs[0].values / n_fix
        pays[name] = np.maximum(cp * (A - strike), 0.0)
        vans[name] = np.maximum(cp * (np.exp(grid.logF[-1] + z) - strike), 0.0)
    p_lv, s_lv, p_bs, s_bs, d, s_d = _stats(pays["lv"], pays["bs"], antithetic, D)
    v_lv, _ = pair_stats(vans["lv"], antithetic)
    v_bs, _ = pair_stats(vans["bs"], antithetic)
    product = {"type": "asian", "cp": int(cp), "strike": float(strike), "T": float(T), "n_fixings": int(n_fix)}
    return ExoticResult(product=product, price_lv=float(p_lv), se_lv=float(s_lv), price_bs=float(p_bs),
                        se_bs=float(s_bs), smile_value=float(d), se_smile=float(s_d), atm_vol=float(atm_vol),
                        vanilla_lv=float(D * v_lv), vanilla_bs=float(D * v_bs),
                        n_paths=len(runs["lv"][1]), n_steps=len(times) - 1, seconds=time.perf_counter() - t0)


def price_mc(lv, forwards, product, *, n_paths: int = 100_000, n_steps: int = 252, seed: int = 0) -> ExoticResult:
    """Price a ``core.pricing.products`` ``Barrier`` (continuous monitoring, no rebate) or ``Asian`` by Monte Carlo
    under local vol and Black-Scholes side by side (``price_barrier`` / ``price_asian``). ``InputError`` for
    other products (vanillas and digitals: ``core.pricing.backward.price_pde``) and barriers with a rebate."""
    if isinstance(product, Barrier):
        if product.rebate:
            raise InputError("the Monte Carlo barrier pays no rebate: price a barrier with a rebate by the PDE "
                             "(core.pricing.backward.price_pde)")
        return price_barrier(lv, forwards, strike=product.strike, barrier=product.barrier, T=product.T,
                             kind=product.kind, cp=product.cp, monitoring=product.monitoring, n_paths=n_paths,
                             n_steps=n_steps, seed=seed)
    if isinstance(product, Asian):
        return price_asian(lv, forwards, strike=product.strike, T=product.T, n_fixings=product.n_fixings,
                           cp=product.cp, n_paths=n_paths, n_steps=n_steps, seed=seed)
    raise InputError(f"Monte Carlo prices barriers and Asians, got {type(product).__name__}: price vanillas and "
                     "digitals with core.pricing.backward.price_pde")

