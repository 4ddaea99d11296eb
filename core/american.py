"""De-Americanise: carry per expiry from the quotes, and the European-equivalent quotes of an American chain.

Dupire's formula needs European prices. An American quote holds an early-exercise premium that a local
vol read off it would take for volatility. This step (run only for chains with ``exercise == 'american'``):

1. **Rate** ``r`` (flat in T, continuously compounded): the user's ``r`` (``Settings.r``), else the rate
   that makes the calls' and puts' American vols agree best over the longer expiries (``implied_rate``),
   else ``DEFAULT_RATE`` (the one home of the default). Stated in every result as ``rate_source``.
2. **Carry per expiry** (``implied_carry``): a continuous yield ``q_T`` (dividends plus borrow) per expiry
   series, chosen so that the *American* implied vols of the call and the put at the same strike agree.
   Equivalently: convert both mids to European at their own American vol, and ask European put-call parity
   ``C_e - P_e = D (F - K)`` with ``F = S e^{(r - q) T}`` to hold. Fixed point: ``q_0`` from raw parity at
   the three pairs nearest the money (early-exercise premium smallest there), then
   ``q_{k+1} = r - ln(F_k / S) / T`` with ``F_k`` the ``1/spread``-weighted median of
   ``K + (C_e - P_e) / D`` over the pairs within ``CARRY_BAND`` of the spot, ``C_e, P_e`` converted with
   ``q_k``. Diagnostics per expiry: pairs used, residual (median ``|sigma_call - sigma_put|``, vol bp, at the
   final ``q``), a flag when unreliable (``CARRY_FLAGS``).
3. **European equivalents** (``deamericanise``): each usable quote's bid, mid and ask are inverted under
   the American model (spot ``S``, ``r``, ``q_T``; ``core.pricing.american.american_implied_vol``) and
   repriced as European at that vol (``core.black.black_price`` with ``F = S e^{(r-q)T}``, ``D = e^{-rT}``).
   The Black implied vol of the converted price is then the American implied vol of the quote. Unreliable
   conversions get a reason code (``DEAM_REASONS``), become unusable for the fit, and are counted.

Dividend model: a continuous yield per expiry (no discrete schedule). Source of the idea of pricing
consistency between calls and puts: the American analogue of the parity regression; the failure modes
of de-Americanisation (deep in the money, premium large against the spread) follow Burkovska, Gass, Glau,
Mahlstedt, Mair and Wohlmuth (2018), "Calibration to American options: numerical investigation of the
de-Americanization method", Quantitative Finance 18(7).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from core.black import black_price
from core.cleaning import AMERICAN_REASONS, REASONS
from core.errors import InputError
from core.forwards import Forwards
from core.pricing.american import american_implied_vol

#: the rate when the user gives none and the quotes cannot imply one (``implied_rate``): 4% a year,
#: continuously compounded, flat in T. The quotes pin ``r - q`` (the forward) far better than ``r`` alone,
#: so a wrong ``r`` moves the implied ``q`` by the same amount: give ``r`` (Settings.r) when it is known.
DEFAULT_RATE = 0.04
#: candidate rates of ``implied_rate`` (continuous, per year)
RATE_GRID = np.round(np.arange(0.0, 0.1001, 0.01), 4)
#: series at least this long (years) and at least this many of them imply the rate
RATE_MIN_T = 0.2
RATE_MIN_EXPIRIES = 3
#: pairs per series that imply the rate (evenly spread over its strikes: the slope needs the range)
RATE_MAX_PAIRS = 20
#: pairs within ``|K / S - 1| <= CARRY_BAND`` of the spot feed the carry of an expiry
CARRY_BAND = 0.10
#: fewest pairs for an expiry's own carry; fewer: ``q`` interpolated in ``T`` from the other expiries
CARRY_MIN_PAIRS = 3
#: an expiry's carry is flagged ``noisy`` when its calls and puts still disagree by more than this (vol bp)
CARRY_NOISY_BP = 100.0
#: fixed-point iterations of the carry (each one American inversion of every pair)
CARRY_ITERATIONS = 6
#: a conversion is unreliable when the early-exercise premium exceeds this many bid/ask spreads: the premium
#: is computed at one flat vol, and under a skew the premium differs by a share of itself (measured on SPY
#: and QQQ: out-of-the-money puts whose flat-vol premium exceeds the spread come back inside their American
#: bid/ask under the calibrated local vol 5-35% of the time, against 90% for the others)
PREMIUM_SPREADS = 1.0
#: an in-the-money quote whose bid/ask spans more than this in American vol does not pin the vol
DEEP_ITM_VOL_BAND = 0.05

#: values of the per-expiry ``flag`` of the carry table
CARRY_FLAGS: dict[str, str] = {
    "": "q from this expiry's call/put pairs; calls and puts agree",
    "noisy": f"calls and puts still disagree by more than {CARRY_NOISY_BP:g} bp of vol after the fit",
    "not converged": "the fixed point for q moved by more than 1e-5 in its last iteration",
    "interpolated": f"fewer than {CARRY_MIN_PAIRS} call/put pairs near the spot: q interpolated in T "
                    "from the other expiries (flat beyond them)",
    "no pairs anywhere": "no expiry has call/put pairs near the spot: q = 0 assumed",
}

#: reason codes of a quote's conversion (column ``deam_reason``); all but ``ok`` and ``not_converted``
#: make the quote unusable (``reason`` of the quote table, see ``core.cleaning.REASONS``)
DEAM_REASONS: dict[str, str] = {
    "ok": "converted: American implied vol found, European price at that vol",
    "not_converted": "not converted (the quote failed an earlier check)",
    **{k: REASONS[k] for k in AMERICAN_REASONS},
}


@dataclass(frozen=True)
class Carry:
    """Rate and implied carry per expiry series.

    ``table`` columns: ``expiry``, ``expiry_time``, ``T`` (years), ``r``, ``q`` (continuous, per year),
    ``n_pairs``, ``residual_bp`` (median ``|sigma_call - sigma_put|`` of the American vols at ``q``, vol bp),
    ``iterations``, ``flag`` (key of ``CARRY_FLAGS``). ``rate_source``: 'user', 'implied' or 'default'; ``q_source``:
    'implied' (per expiry, from the quotes) or 'user' (the user's ``q`` for every expiry). ``trailing_yield``:
    the cash dividends of the 365 days before the market time over the spot, when the source gave them
    (``trailing_dividend_yield``; a cross-check of ``smoothness['level']``, not used by the fit).
    ``smoothness``: ``max_jump`` (largest ``|q_i - q_{i-1}|`` between adjacent reliable expiries with
    ``T >= SMOOTH_MIN_T``), ``level`` (median ``q`` over them), ``spread`` (1.4826 MAD of ``q`` over them),
    ``n`` (how many). ``model``: the dividend model, in words.
    """

    table: pd.DataFrame
    spot: float
    rate_source: str
    smoothness: dict
    q_source: str = "implied"
    trailing_yield: float | None = None
    model: str = "continuous yield per expiry (dividends and borrow), from call/put pairs under the American model"


#: the smoothness of the carry is measured over expiries at least this long (a continuous yield is a poor
#: model of one quarterly dividend inside a few weeks: the short expiries' q jumps at each ex-date)
SMOOTH_MIN_T = 0.25


@dataclass(frozen=True)
class Deamericanised:
    """The result of ``deamericanise``.

    ``quotes``: the cleaned table with ``bid, ask, mid`` replaced by their European equivalents where
    converted (NaN where a side has no American vol) and the American originals kept in ``bid_american``,
    ``ask_american``, ``mid_american``; ``iv_american`` (the mid's American vol), ``eep`` (early-exercise
    premium of the mid, price units), ``deam_reason`` (``DEAM_REASONS``); ``reason`` set to the
    conversion's code where it failed. ``carry``: the ``Carry``; ``forwards``: ``F = S e^{(r - q_T) T}``,
    ``D = e^{-rT}`` per expiry (not approximate). ``counts``: ``deam_reason`` -> number of quotes;
    ``share_converted``: converted quotes over the quotes that were usable before conversion.
    """

    quotes: pd.DataFrame
    carry: Carry
    forwards: Forwards
    counts: dict
    share_converted: float
    seconds: dict = field(default_factory=dict)
    premium_model: str = "Black-Scholes at the quote's own American implied vol (flat vol, r, q_T)"

    def summary(self) -> dict:
        """JSON-able summary: exercise, dividend and premium models, rate and its source, trailing dividend yield,
        conversion counts and share, carry smoothness and flags, seconds (carry, conversion)."""
        t = self.carry.table
        return {"exercise": "american", "dividend_model": self.carry.model, "premium_model": self.premium_model,
                "rate_source": self.carry.rate_source,
                "q_source": self.carry.q_source, "trailing_dividend_yield": self.carry.trailing_yield,
                "r": float(t["r"].iloc[0]) if len(t) else None, "counts": dict(self.counts),
                "share_converted": self.share_converted, "carry_smoothness": dict(self.carry.smoothness),
                "carry_flags": {k: int(v) for k, v in t["flag"].value_counts().items() if k},
                "seconds": dict(self.seconds)}


def _series_codes(q: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """Each row's expiry series (expiry, expiry_time) as a code ``0..G-1`` (-1 where unknown), and the
    series table ``expiry, expiry_time, T`` (median ``T`` of its rows), sorted by ``T``."""
    et = q["expiry_time"] if "expiry_time" in q.columns else pd.Series(pd.NaT, index=q.index)
    frame = pd.DataFrame({"expiry": pd.to_datetime(q["expiry"]), "expiry_time": et})
    codes, uniq = pd.factorize(pd.MultiIndex.from_frame(frame), sort=True)
    T = pd.to_numeric(q["T"], errors="coerce").to_numpy(float)
    G = len(uniq)
    Tg = np.array([np.nanmedian(T[codes == g]) if np.isfinite(T[codes == g]).any() else np.nan for g in range(G)])
    table = pd.DataFrame({"expiry": [u[0] for u in uniq], "expiry_time": [u[1] for u in uniq], "T": Tg})
    return np.asarray(codes, dtype=np.int64), table


def _wmedians(v: np.ndarray, w: np.ndarray, g: np.ndarray, G: int) -> np.ndarray:
    """Weighted median of ``v`` within each group ``g`` (NaN for an empty group)."""
    out = np.full(G, np.nan)
    o = np.lexsort((v, g))
    v, w, g = v[o], w[o], g[o]
    bounds = np.searchsorted(g, np.arange(G + 1))
    for j in range(G):
        lo, hi = bounds[j], bounds[j + 1]
        if hi > lo:
            cw = np.cumsum(w[lo:hi])
            out[j] = v[lo + np.searchsorted(cw, 0.5 * cw[-1])]
    return out


def _pairs(q: pd.DataFrame, code: np.ndarray, spot: float) -> dict:
    """Call/put pairs at equal strikes within ``CARRY_BAND`` of the spot, both sides usable: arrays of
    series code ``g``, ``K``, ``T``, call and put mids and spreads."""
    ok = q["reason"].astype(str).eq("ok").to_numpy() & (code >= 0)
    K = q["strike"].to_numpy(float)
    ok &= np.abs(K / spot - 1.0) <= CARRY_BAND
    cp = q["cp"].to_numpy(float)
    cols = pd.DataFrame({"g": code, "K": K, "T": q["T"].to_numpy(float), "mid": q["mid"].to_numpy(float),
                         "spread": q["spread"].to_numpy(float)})
    calls = cols[ok & (cp > 0)].drop_duplicates(["g", "K"])
    puts = cols[ok & (cp < 0)].drop_duplicates(["g", "K"])
    m = calls.merge(puts, on=["g", "K"], suffixes=("_c", "_p"))
    return {"g": m["g"].to_numpy(np.int64), "K": m["K"].to_numpy(float), "T": m["T_c"].to_numpy(float),
            "C": m["mid_c"].to_numpy(float), "P": m["mid_p"].to_numpy(float),
            "s": np.maximum(0.5 * (m["spread_c"].to_numpy(float) + m["spread_p"].to_numpy(float)), 1e-4)}


def _european_at_american_vol(price, S, K, T, r, q, cp):
    """``(sigma, european price)``: the American implied vol of ``price`` and the Black price at that vol."""
    sig = np.asarray(american_implied_vol(price, S, K, T, r, q, cp), dtype=float)
    with np.errstate(all="ignore"):
        F = S * np.exp((r - q) * T)
        D = np.exp(-r * T)
        eu = np.where(np.isfinite(sig), black_price(F, K, T, np.where(np.isfinite(sig), sig, 0.2), cp, D), np.nan)
    return sig, eu


def _start_q(p: dict, spot: float, r: float, G: int) -> np.ndarray:
    """First ``q`` of each series: raw parity ``F = K + (C - P)/D`` at its three pairs nearest the money
    (smallest ``|C - P|``, where the early-exercise premium is smallest), ``q = r - ln(F/S)/T``."""
    g, K, T, C, P = p["g"], p["K"], p["T"], p["C"], p["P"]
    qg = np.full(G, np.nan)
    near = np.lexsort((np.abs(C - P), g))
    gs = g[near]
    bounds = np.searchsorted(gs, np.arange(G + 1))
    for j in range(G):
        idx = near[bounds[j]:bounds[j + 1]][:3]
        if len(idx):
            Tj = float(np.median(T[idx]))
            F0 = float(np.median(K[idx] + (C[idx] - P[idx]) * np.exp(r * Tj)))
            if F0 > 0 and Tj > 0:
                qg[j] = r - np.log(F0 / spot) / Tj
    return qg


def _fit_q(p: dict, spot: float, r: float, q0: np.ndarray, Tg: np.ndarray, G: int, iterations: int) -> dict:
    """The carry fixed point of every series from ``q0`` (module docstring, step 2), and the call/put
    disagreement at the result: ``{'q', 'iterations', 'moved', 'residual_bp'}`` arrays (G,). With
    ``iterations = 0`` only the disagreement at ``q0`` is measured."""
    g, K, T, C, P, s = p["g"], p["K"], p["T"], p["C"], p["P"], p["s"]
    qg = np.array(q0, dtype=float)
    iters = np.zeros(G, dtype=int)
    moved = np.full(G, np.inf if iterations else 0.0)
    D = np.exp(-r * T)
    w = 1.0 / s
    sc, sp = np.full(len(g), np.nan), np.full(len(g), np.nan)
    for it in range(iterations + 1):
        last = it == iterations
        todo = np.isfinite(qg) & ((moved > 1e-5) | last)
        sel = todo[g] if len(g) else np.zeros(0, bool)
        if not sel.any():
            break
        qp = qg[g[sel]]
        sc[sel], Ce = _european_at_american_vol(C[sel], spot, K[sel], T[sel], r, qp, 1.0)
        sp[sel], Pe = _european_at_american_vol(P[sel], spot, K[sel], T[sel], r, qp, -1.0)
        if last:  # the vols at the final q: only the disagreement is wanted
            break
        est = K[sel] + (Ce - Pe) / D[sel]
        good = np.isfinite(est) & (est > 0)
        Fg = _wmedians(est[good], w[sel][good], g[sel][good], G)
        with np.errstate(all="ignore"):
            q_new = r - np.log(Fg / spot) / Tg
        upd = todo & np.isfinite(q_new)
        moved[todo & ~np.isfinite(q_new)] = 0.0  # nothing to improve on: keep the start
        moved[upd] = np.abs(q_new[upd] - qg[upd])
        qg[upd] = q_new[upd]
        iters[upd] = it + 1
    d = np.abs(sc - sp) * 1e4
    ok = np.isfinite(d)
    resid = np.full(G, np.nan)
    if ok.any():
        resid = _wmedians(d[ok], np.ones(int(ok.sum())), g[ok], G)
    return {"q": qg, "iterations": iters, "moved": moved, "residual_bp": resid}


def implied_rate(p: dict, spot: float, Tg: np.ndarray, G: int) -> tuple[float, str]:
    """The rate that makes calls and puts agree best: ``(r, source)``.

    The carry fit absorbs ``r - q`` (the forward), the rate alone moves the *slope* of the call/put
    disagreement across strikes (the discount factor of parity, and the puts' early exercise). Over the
    series with ``T >= RATE_MIN_T`` and at least ``CARRY_MIN_PAIRS`` pairs (at most ``RATE_MAX_PAIRS`` of each,
    evenly spread over the strikes), the mean disagreement (``_fit_q``'s ``residual_bp``) is computed on every
    other point of ``RATE_GRID``, then at the neighbours of the best, and refined by a parabola through the
    best grid point and its neighbours. ``source`` 'implied'; ``(DEFAULT_RATE, 'default')`` when fewer than
    ``RATE_MIN_EXPIRIES`` series qualify or the best point is at an end of the grid.
    """
    n_pairs = np.bincount(p["g"], minlength=G)
    long = (Tg >= RATE_MIN_T) & (n_pairs >= CARRY_MIN_PAIRS)
    if int(long.sum()) < RATE_MIN_EXPIRIES:
        return DEFAULT_RATE, "default"
    keep = long[p["g"]]
    # at most RATE_MAX_PAIRS pairs per series, evenly spaced in strike order (the slope needs the range)
    rank = np.zeros(len(keep), dtype=int)
    o = np.lexsort((p["K"], p["g"]))
    first = np.searchsorted(p["g"][o], p["g"][o])
    rank[o] = np.arange(len(o)) - first
    n_of = n_pairs[p["g"]]
    step = np.maximum(np.ceil(n_of / RATE_MAX_PAIRS), 1).astype(int)
    keep &= rank % step == 0
    sub = {k: v[keep] for k, v in p.items()}
    cost: dict[int, float] = {}
    fits: dict[int, np.ndarray] = {}

    def at(i: int) -> float:
        if i not in cost:
            r = float(RATE_GRID[i])
            q0 = _start_q(sub, spot, r, G)
            if fits:  # the carry moves with the rate (the forward is pinned): start from the nearest fit, shifted
                j = min(fits, key=lambda k: abs(k - i))
                q0 = np.where(np.isfinite(fits[j]), fits[j] + (r - RATE_GRID[j]), q0)
            fit = _fit_q(sub, spot, r, q0, Tg, G, 2)
            fits[i] = fit["q"]
            res = fit["residual_bp"][long]
            cost[i] = float(np.nanmean(res)) if np.isfinite(res).any() else np.nan
        return cost[i]

    n = len(RATE_GRID)
    for i in range(0, n, 2):
        at(i)
    finite = {k: v for k, v in cost.items() if np.isfinite(v)}
    if not finite:
        return DEFAULT_RATE, "default"
    best = min(finite, key=finite.get)
    for i in (best - 1, best + 1):
        if 0 <= i < n:
            at(i)
    finite = {k: v for k, v in cost.items() if np.isfinite(v)}
    i = min(finite, key=finite.get)
    if i == 0 or i == n - 1:
        return DEFAULT_RATE, "default"
    a, b, c = at(i - 1), cost[i], at(i + 1)
    if not (np.isfinite(a) and np.isfinite(c)):
        return DEFAULT_RATE, "default"
    h = RATE_GRID[1] - RATE_GRID[0]
    curv = a - 2 * b + c
    shift = 0.5 * h * (a - c) / curv if curv > 0 else 0.0
    return float(RATE_GRID[i] + np.clip(shift, -h, h)), "implied"


def implied_carry(quotes: pd.DataFrame, spot: float, r: float | None = None, q: float | None = None) -> Carry:
    """Rate and continuous carry ``q_T`` per expiry series from the American call/put pairs near the spot.

    ``quotes``: the output of ``core.cleaning.clean_quotes`` (``mid``, ``spread``, ``reason``, ``T``,
    ``expiry``, ``expiry_time``, ``strike``, ``cp``); ``spot`` the underlying price; ``r`` the user's
    continuously-compounded rate (None: ``implied_rate``, else ``DEFAULT_RATE``); ``q`` the user's yield for every expiry (None:
    implied per expiry; given, only the residual is measured). Method: the module docstring, step 2.
    """
    if not (spot is not None and np.isfinite(spot) and spot > 0):
        raise InputError("an American chain needs the spot to imply its carry: give the spot (--spot or the source)")
    code, series = _series_codes(quotes)
    G = len(series)
    Tg = series["T"].to_numpy(float)
    p = _pairs(quotes, code, spot)
    if r is not None:
        r, rate_source = float(r), "user"
    else:
        r, rate_source = implied_rate(p, spot, Tg, G)
    n_pairs = np.bincount(p["g"], minlength=G)
    if q is not None:
        fit = _fit_q(p, spot, r, np.full(G, float(q)), Tg, G, 0)
    else:
        fit = _fit_q(p, spot, r, _start_q(p, spot, r, G), Tg, G, CARRY_ITERATIONS)
    qg, iters, moved, resid = fit["q"], fit["iterations"], fit["moved"], fit["residual_bp"]
    flag = np.full(G, "", dtype=object)
    own = np.isfinite(qg) & ((n_pairs >= CARRY_MIN_PAIRS) | (q is not None))
    flag[own & (moved > 1e-5)] = "not converged"
    flag[own & (resid > CARRY_NOISY_BP)] = "noisy"
    Tg = series["T"].to_numpy(float)
    if own.any():
        o = np.argsort(Tg[own])
        qi = np.interp(Tg[~own], Tg[own][o], qg[own][o])
        qg[~own] = qi
        flag[~own] = "interpolated"
    else:
        qg[:] = 0.0
        flag[:] = "no pairs anywhere"
    table = series.assign(r=r, q=qg, n_pairs=n_pairs, residual_bp=resid, iterations=iters, flag=flag)
    table = table[np.isfinite(table["T"]) & (table["T"] > 0)].sort_values("T", ignore_index=True)
    return Carry(table=table, spot=float(spot), rate_source=rate_source, smoothness=carry_smoothness(table),
                 q_source="user" if q is not None else "implied")


def carry_smoothness(table: pd.DataFrame) -> dict:
    """Smoothness of the implied carry in ``T`` over the reliable expiries (``flag == ''``) with
    ``T >= SMOOTH_MIN_T``: ``max_jump`` = ``max |q_i - q_{i-1}|`` between adjacent ones, ``level`` = their
    median ``q``, ``spread`` = 1.4826 MAD of their ``q``, ``n``."""
    t = table[(table["flag"] == "") & (table["T"] >= SMOOTH_MIN_T)].sort_values("T")
    qv = t["q"].to_numpy(float)
    if len(qv) == 0:
        return {"n": 0, "max_jump": None, "level": None, "spread": None, "min_T": SMOOTH_MIN_T}
    med = float(np.median(qv))
    return {"n": int(len(qv)), "max_jump": float(np.max(np.abs(np.diff(qv)))) if len(qv) > 1 else 0.0,
            "level": med, "spread": float(1.4826 * np.median(np.abs(qv - med))), "min_T": SMOOTH_MIN_T}


def carry_forwards(carry: Carry) -> Forwards:
    """Forwards of the carry: ``F = S e^{(r - q_T) T}``, ``D = e^{-rT}`` per expiry series (``fallback``
    'american carry', not approximate), with the carry's diagnostics as extra columns."""
    t = carry.table
    T = t["T"].to_numpy(float)
    r = t["r"].to_numpy(float)
    qv = t["q"].to_numpy(float)
    table = pd.DataFrame({
        "expiry": t["expiry"], "T": T, "F": carry.spot * np.exp((r - qv) * T), "D": np.exp(-r * T),
        "n_pairs": t["n_pairs"].astype(int), "residual": np.nan,
        "fallback": np.where(t["flag"] == "interpolated", "american carry, interpolated", "american carry"),
        "approximate": False, "expiry_time": t["expiry_time"], "r": r, "q": qv,
        "carry_residual_bp": t["residual_bp"], "carry_flag": t["flag"]})
    return Forwards(table=table, spot=carry.spot)


def trailing_dividend_yield(dividends, spot: float, asof) -> float | None:
    """Cash dividends with an ex-date in the 365 days up to ``asof``, over ``spot`` (a fraction), or None.

    ``dividends``: records ``{'ex_date': 'YYYY-MM-DD', 'amount': float}`` (``core.sources.yahoo`` puts them in a
    chain's ``meta['dividends']``); None or an empty list (no history) gives None.
    """
    if not dividends or asof is None or not (spot and np.isfinite(spot) and spot > 0):
        return None
    end = pd.Timestamp(asof)
    end = end.tz_convert("UTC") if end.tzinfo else end.tz_localize("UTC")
    start = end - pd.Timedelta(days=365)
    total = 0.0
    for d in dividends:
        try:
            when = pd.Timestamp(d["ex_date"]).tz_localize("UTC")
            amount = float(d["amount"])
        except (KeyError, TypeError, ValueError):
            continue
        if start < when <= end and np.isfinite(amount) and amount > 0:
            total += amount
    return total / float(spot)


def deamericanise(quotes: pd.DataFrame, spot: float, r: float | None = None,
                  q: float | None = None, *, dividends=None, asof=None) -> Deamericanised:
    """European-equivalent bid, mid and ask of every usable American quote, with the carry they rest on.

    ``quotes``: the output of ``core.cleaning.clean_quotes``; ``spot``: the underlying price; ``r``, ``q``:
    the user's rate and yield (None: the implied rate and carry, ``implied_carry``); ``dividends``, ``asof``:
    the source's dividend history and the market time, for the trailing yield shown beside the carry. Rows with ``reason != 'ok'`` are kept untouched
    (``deam_reason = 'not_converted'``). Flags (``DEAM_REASONS``), first failing wins: ``american_no_vol``,
    ``american_deep_itm`` (in the money with a time value ``mid - max(cp (S - K), 0)`` below the spread, or a
    bid/ask wider than ``DEEP_ITM_VOL_BAND`` in American vol, or a bid without one),
    ``american_premium`` (premium ``mid - European(mid vol)`` above ``PREMIUM_SPREADS`` spreads).
    Returns a ``Deamericanised``; nothing is dropped.
    """
    t0 = time.perf_counter()
    if "reason" not in quotes.columns or "mid" not in quotes.columns:
        raise InputError("deamericanise needs the output of clean_quotes (columns 'mid', 'spread', 'reason')")
    carry = implied_carry(quotes, spot, r, q)
    carry = replace(carry, trailing_yield=trailing_dividend_yield(dividends, spot, asof))
    t1 = time.perf_counter()
    fwd = carry_forwards(carry)
    q = quotes.copy()
    code, series = _series_codes(q)
    # each row's q from its series' carry (matched on expiry, expiry time)
    key = pd.MultiIndex.from_frame(carry.table[["expiry", "expiry_time"]].assign(
        expiry=lambda d: pd.to_datetime(d["expiry"])))
    skey = pd.MultiIndex.from_frame(series[["expiry", "expiry_time"]].assign(
        expiry=lambda d: pd.to_datetime(d["expiry"])))
    pos = key.get_indexer(skey)
    q_series = np.where(pos >= 0, carry.table["q"].to_numpy(float)[np.maximum(pos, 0)], np.nan)
    qv = np.where(code >= 0, q_series[np.maximum(code, 0)], np.nan)
    rate = float(carry.table["r"].iloc[0]) if len(carry.table) else float(DEFAULT_RATE if r is None else r)
    K = q["strike"].to_numpy(float)
    T = q["T"].to_numpy(float)
    cp = q["cp"].to_numpy(float)
    bid, ask, mid = (q[c].to_numpy(float) for c in ("bid", "ask", "mid"))
    spread = q["spread"].to_numpy(float)
    ok = q["reason"].astype(str).eq("ok").to_numpy() & np.isfinite(qv) & np.isfinite(T) & (T > 0)
    n_ok = int(np.count_nonzero(q["reason"].astype(str).eq("ok")))
    out = {}
    for name, price in (("mid", mid), ("bid", bid), ("ask", ask)):
        sig = np.full(len(q), np.nan)
        eu = np.full(len(q), np.nan)
        if ok.any():
            sig[ok], eu[ok] = _european_at_american_vol(price[ok], spot, K[ok], T[ok], rate, qv[ok], cp[ok])
        out[name] = (sig, eu)
    reason = np.where(ok, "ok", "not_converted").astype(object)
    sig_mid, eu_mid = out["mid"]
    with np.errstate(invalid="ignore"):
        exercise_value = np.maximum(cp * (spot - K), 0.0)
        eep = mid - eu_mid
        no_vol = ok & ~np.isfinite(sig_mid)
        band = out["ask"][0] - out["bid"][0]
        loose = ~np.isfinite(out["bid"][0]) | (band > DEEP_ITM_VOL_BAND)
        deep = ok & ~no_vol & (exercise_value > 0) & ((mid - exercise_value < spread) | loose)
        premium = ok & ~no_vol & ~deep & (eep > PREMIUM_SPREADS * spread)
    reason[no_vol] = "american_no_vol"
    reason[deep] = "american_deep_itm"
    reason[premium] = "american_premium"
    conv = ok & ~no_vol
    q["bid_american"], q["ask_american"], q["mid_american"] = bid, ask, mid
    q["bid"] = np.where(conv, out["bid"][1], bid)
    q["ask"] = np.where(conv, out["ask"][1], ask)
    q["mid"] = np.where(conv, eu_mid, mid)
    q["iv_american"] = sig_mid
    q["eep"] = np.where(conv, eep, np.nan)
    q["deam_reason"] = pd.Series(reason, index=q.index, dtype=object).astype(str)
    flagged = np.isin(reason, AMERICAN_REASONS)
    q.loc[flagged, "reason"] = q.loc[flagged, "deam_reason"]
    counts = {k: int(np.count_nonzero(reason == k)) for k in DEAM_REASONS}
    share = float(counts["ok"] / n_ok) if n_ok else float("nan")
    return Deamericanised(quotes=q, carry=carry, forwards=fwd, counts=counts, share_converted=share,
                          seconds={"carry": t1 - t0, "convert": time.perf_counter() - t1})

