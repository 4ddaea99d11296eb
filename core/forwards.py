"""Forwards and discount factors per expiry, and their interpolation in ``T``.

``Forwards`` holds one row per expiry (``F_T``, ``D_T`` and how they were obtained) and
interpolates ``ln F`` and ``ln D`` linearly in ``T`` (piecewise-constant carry and rate), anchored at
``ln S`` and ``0`` at ``T = 0`` when the spot is known; flat carry beyond the last expiry.
Estimation from put-call parity: ``implied_forwards`` (MATH.md, "Forward and discount").

Cost is linear in quotes and expiries: the calls and puts of every expiry series are paired in one sort
of the whole table (``_pairs_by_expiry``), and the robust regressions of all series run in one compiled
call (``core._forwards_numba``, numba, loaded lazily at the first call like ``core.black``'s kernels),
with the numpy functions of this module as the fallback when numba is missing or ``DUPIRE_DESK_NO_NUMBA=1``
(``core.black.use_backend`` switches both modules). Both backends give the same numbers bit for bit as
the original per-expiry algorithm (``tests/reference_forwards.py``) on the demo and the real chains.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from core._kernels import LazyKernel
from core.cleaning import CleaningConfig, clean_quotes
from core.errors import InputError, optional_number

FORWARD_COLUMNS = ("expiry", "T", "F", "D", "n_pairs", "residual", "fallback", "approximate")

#: values of the ``fallback`` column: how an expiry's ``F`` and ``D`` were obtained.
FALLBACKS: dict[str, str] = {
    "": "F and D from the robust put-call parity regression of this expiry",
    "interpolated discount": "too few call/put pairs (or a nonsensical slope) for a regression: D interpolated "
                             "from the other expiries' discount factors, F from parity with that D",
    "interpolated": "no usable call/put pair: F and D interpolated in T from the other expiries "
                    "(log-linear, i.e. piecewise-constant carry, anchored at the spot when known)",
    "discount from r": "D = exp(-r T) from the user's rate r, F from put-call parity with that D",
    "forward from q": "F = S exp(-q T) / D from the spot and the user's dividend yield q, D from parity",
    "rates": "F = S exp((r - q) T), D = exp(-r T) from the spot and the user's r and q",
    "rates, q = 0": "no usable pair anywhere: F = S exp(r T), D = exp(-r T) from the user's r (q = 0 assumed)",
    "discount assumed 1": "no expiry gave a discount factor and no r was given: D = 1 assumed, F from parity",
    "spot, zero carry": "nothing to estimate from: F = spot, D = 1 (r = q = 0 assumed)",
    "model": "F and D from a known model (the demo market's true forwards)",
    "american carry": "American chain: F = S exp((r - q) T), D = exp(-r T) with q implied from this expiry's "
                      "call/put pairs under the American model (core.american.implied_carry)",
    "american carry, interpolated": "American chain: too few call/put pairs near the spot for this expiry's "
                                    "own q: q interpolated in T from the other expiries (core.american)",
}


@dataclass(frozen=True)
class Forwards:
    """Forward ``F_T`` and discount ``D_T`` per expiry, with diagnostics; ``F(T)``, ``D(T)`` for any ``T``.

    ``table`` columns: ``expiry`` (date), ``T`` (years), ``F``, ``D``, ``n_pairs`` (parity pairs used),
    ``residual`` (robust fit residual, price units), ``fallback`` ('' when from parity, else how it was
    obtained: a key of ``FALLBACKS``), ``approximate`` (True for an American chain's parity forwards, which
    carry the early-exercise premium; False for the carry of ``core.american``); ``implied_forwards`` adds
    ``expiry_time`` (settlement time, UTC), ``core.american.carry_forwards`` adds ``r``, ``q`` and the carry's
    diagnostics.
    ``spot``: the underlying price when known.
    """

    table: pd.DataFrame
    spot: float | None = None

    def __post_init__(self) -> None:
        missing = [c for c in ("T", "F", "D") if c not in self.table.columns]
        if missing:
            raise InputError(f"Forwards table lacks columns {missing}")
        t = self.table
        if len(t) == 0 and self.spot is None:
            raise InputError("Forwards need at least one expiry or a spot")
        bad = ~(np.isfinite(t["F"]) & (t["F"] > 0) & np.isfinite(t["D"]) & (t["D"] > 0) & (t["T"] > 0))
        if bad.any():
            raise InputError(f"Forwards table has non-positive or non-finite F, D or T in rows {list(t.index[bad])[:5]}")

    @classmethod
    def from_rates(cls, spot: float, r: float, q: float, T, expiries=None) -> "Forwards":
        """Forwards from constant continuously-compounded ``r`` and ``q``: ``F = S e^{(r-q)T}``, ``D = e^{-rT}``."""
        T = np.atleast_1d(np.asarray(T, dtype=float))
        if not (np.isfinite(spot) and spot > 0):
            raise InputError(f"spot must be positive, got {spot!r}")
        table = pd.DataFrame({
            "expiry": list(expiries) if expiries is not None else [pd.NaT] * len(T),
            "T": T, "F": spot * np.exp((r - q) * T), "D": np.exp(-r * T),
            "n_pairs": 0, "residual": np.nan, "fallback": "rates", "approximate": False,
        })
        return cls(table=table, spot=float(spot))

    def _nodes(self, col: str):
        T = self.table["T"].to_numpy(float)
        o = np.argsort(T)  # the order of table.sort_values("T"), without building a sorted frame per call
        T = T[o]
        v = np.log(self.table[col].to_numpy(float)[o])
        if col == "F" and self.spot is not None:
            T, v = np.r_[0.0, T], np.r_[np.log(self.spot), v]
        elif col == "D":
            T, v = np.r_[0.0, T], np.r_[0.0, v]
        return T, v

    def _interp(self, col: str, T):
        Tn, v = self._nodes(col)
        T = np.asarray(T, dtype=float)
        if len(Tn) == 1:
            return np.exp(np.full(T.shape, v[0]))
        out = np.interp(T, Tn, v)
        # flat carry (constant log-slope) beyond the ends
        lo_slope = (v[1] - v[0]) / (Tn[1] - Tn[0])
        hi_slope = (v[-1] - v[-2]) / (Tn[-1] - Tn[-2])
        out = np.where(T < Tn[0], v[0] + lo_slope * (T - Tn[0]), out)
        out = np.where(T > Tn[-1], v[-1] + hi_slope * (T - Tn[-1]), out)
        return np.exp(out)

    def F(self, T):
        """Forward at ``T`` (years), interpolated linearly in ``ln F``; broadcasts."""
        return self._interp("F", T)

    def D(self, T):
        """Discount factor at ``T`` (years), interpolated linearly in ``ln D``; broadcasts."""
        return self._interp("D", T)

    def rates(self, T):
        """Average continuously-compounded ``(r, q)`` to ``T`` implied by ``D`` and ``F`` (needs a spot)."""
        T = np.asarray(T, dtype=float)
        r = -np.log(self.D(T)) / T
        S = self.spot if self.spot is not None else float(self.table.sort_values("T")["F"].iloc[0])
        q = r - np.log(self.F(T) / S) / T
        return r, q


# --------------------------------------------------------------------------------------------
# Put-call parity: C(K) - P(K) = D (F - K)  (MATH.md, "Forward and discount from put-call parity")
# --------------------------------------------------------------------------------------------

_HUBER_C = 1.345  # 95% efficiency at the normal (Huber 1964)
_HUBER_ITERS = 50
_THEIL_SEN_MAX = 300  # Theil-Sen on at most this many evenly spaced pairs (O(n^2) slopes)
_MAD = 1.4826  # MAD -> standard deviation at the normal


def _wmedian(x: np.ndarray, w: np.ndarray) -> float:
    """Weighted median (the smallest x whose cumulative weight reaches half)."""
    o = np.argsort(x, kind="stable")
    cw = np.cumsum(w[o])
    return float(x[o][np.searchsorted(cw, 0.5 * cw[-1])])


def _theil_sen(x: np.ndarray, z: np.ndarray) -> tuple[float, float]:
    """Theil-Sen line ``z = a + b x``: median of pairwise slopes, median intercept (Sen 1968)."""
    if len(x) > _THEIL_SEN_MAX:  # O(n^2) pairs: an even subsample is as good a start and keeps memory small
        keep = np.linspace(0, len(x) - 1, _THEIL_SEN_MAX).round().astype(int)
        x, z = x[keep], z[keep]
    i, j = np.triu_indices(len(x), k=1)
    dx = x[j] - x[i]
    keep = dx != 0
    b = float(np.median((z[j] - z[i])[keep] / dx[keep])) if keep.any() else 0.0
    return float(np.median(z - b * x)), b


def _huber_line(x: np.ndarray, z: np.ndarray, s: np.ndarray, iters: int = _HUBER_ITERS) -> tuple[float, float, np.ndarray]:
    """Robust weighted line ``z = a + b x`` by Huber IRLS started at Theil-Sen.

    ``s`` is each point's price uncertainty (half the summed bid/ask spreads); weights are
    ``1/s^2`` times Huber's ``min(1, c/|u|)`` on residuals ``u`` scaled by their MAD, so a stale
    or mistyped pair cannot pull the line the way it pulls OLS. Returns ``(a, b, residuals)``.
    """
    a, b = _theil_sen(x, z)
    w0 = 1.0 / (s * s)
    for _ in range(iters):
        r = (z - a - b * x) / s
        scale = _MAD * float(np.median(np.abs(r)))
        if not np.isfinite(scale) or scale <= 1e-12:
            hw = np.ones_like(r)
        else:
            u = np.abs(r) / scale
            hw = np.where(u <= _HUBER_C, 1.0, _HUBER_C / np.maximum(u, 1e-300))
        W = w0 * hw
        sw, swx, swxx = W.sum(), (W * x).sum(), (W * x * x).sum()
        swz, swxz = (W * z).sum(), (W * x * z).sum()
        det = sw * swxx - swx * swx
        if not np.isfinite(det) or det <= 1e-300 * max(sw * swxx, 1e-300):
            break
        a_new = (swxx * swz - swx * swxz) / det
        b_new = (sw * swxz - swx * swz) / det
        done = abs(a_new - a) <= 1e-12 * (1 + abs(a)) and abs(b_new - b) <= 1e-12 * (1 + abs(b))
        a, b = float(a_new), float(b_new)
        if done:
            break
    return a, b, z - a - b * x


def _first_guess(K: np.ndarray, z: np.ndarray, D: float = 1.0) -> float:
    """Forward guess from the pairs nearest the money (the three smallest ``|C - P|``, ties to the lower
    strike): median of ``K + (C-P)/D``."""
    o = np.argsort(np.abs(z), kind="stable")[:3]
    return float(np.median(K[o] + z[o] / D))


def _near(K: np.ndarray, F0: float, T: float, cfg: Any, at_least: int) -> np.ndarray:
    """Indices of the pairs within ``max(0.02, parity_width sqrt(T))`` in ``|ln(K/F0)|``, or the
    ``at_least`` nearest when the band holds fewer."""
    dist = np.abs(np.log(K / F0))
    band = max(0.02, cfg.parity_width * np.sqrt(max(T, 0.0)))
    idx = np.flatnonzero(dist <= band)
    if len(idx) < at_least:
        idx = np.argsort(dist, kind="stable")[:at_least]
    return np.sort(idx)


def _parity_regression(K, z, s, T, cfg):
    """Full parity fit of one expiry: ``(F, D, n_pairs, residual)`` or None when too few pairs or nonsense.

    Slope of ``C - P`` on ``K`` is ``-D``, intercept ``D F``; strikes centred on the first guess
    ``F0`` so that the intercept is ``D (F - F0)`` (well conditioned). Sanity: ``0 < D <= 1.5``,
    ``|ln D| <= max_abs_rate T + 0.001``, ``F`` finite, positive and within the strikes used x [1/2, 2].
    The numpy path; ``core._forwards_numba.parity_regressions`` runs the same steps for every expiry at once.
    """
    if len(K) < cfg.parity_min_pairs:
        return None
    F0 = _first_guess(K, z)
    if not (np.isfinite(F0) and F0 > 0):
        F0 = float(np.median(K))
    F = F0
    for _ in range(2):  # select around the guess, fit, reselect around the fitted forward, refit
        idx = _near(K, F, T, cfg, cfg.parity_min_pairs)
        x = K[idx] - F
        a, b, res = _huber_line(x, z[idx], s[idx])
        D = -b
        if not (np.isfinite(D) and D > 0):
            return None
        F_new = F + a / D
        if not (np.isfinite(F_new) and F_new > 0):
            return None
        F = F_new
    used = K[idx]
    if not (0.0 < D <= 1.5 and abs(np.log(D)) <= cfg.max_abs_rate * T + 1e-3
            and 0.5 * used.min() <= F <= 2.0 * used.max()):
        return None
    return F, D, len(idx), _MAD * float(np.median(np.abs(res)))


def _parity_forward(K, z, s, T, D, cfg):
    """Forward with the discount fixed: weighted median of ``K + (C - P)/D`` over the near pairs.

    Returns ``(F, n_pairs, residual)`` or None when nothing sensible comes out.
    """
    if len(K) == 0:
        return None
    F0 = _first_guess(K, z, D)
    if not (np.isfinite(F0) and F0 > 0):
        return None
    idx = _near(K, F0, T, cfg, min(len(K), cfg.parity_min_pairs))
    est = K[idx] + z[idx] / D
    F = _wmedian(est, 1.0 / s[idx])
    if not (np.isfinite(F) and F > 0 and 0.5 * K[idx].min() <= F <= 2.0 * K[idx].max()):
        return None
    return F, len(idx), _MAD * float(np.median(np.abs(D * (est - F))))


# ------------------------------------------------------------------------------- numba backend

def _check_kernel(nb):
    """The kernel's constants must be ours, and a smoke test must pass; returns the module."""
    same = {"_HUBER_C": _HUBER_C, "_HUBER_ITERS": _HUBER_ITERS, "_THEIL_SEN_MAX": _THEIL_SEN_MAX, "_MAD": _MAD}
    diff = [k for k, v in same.items() if getattr(nb, k) != v]
    if diff:
        raise RuntimeError(f"core._forwards_numba constants {diff} differ from core.forwards'")
    K = np.array([90.0, 100.0, 110.0])
    out = np.empty(1), np.empty(1), np.empty(1, np.int64), np.empty(1)
    nb.parity_regressions(K, 0.99 * (100.0 - K), np.ones(3), np.array([0, 3]), np.ones(1), 0.5, 3, 0.5, *out)
    if not (abs(out[0][0] - 100.0) < 1e-9 and abs(out[1][0] - 0.99) < 1e-12):  # smoke test of the build
        raise RuntimeError(f"kernel smoke test gave F={out[0][0]!r}, D={out[1][0]!r}")
    return nb


_KERNEL = LazyKernel("core.forwards", "core._forwards_numba", _check_kernel)
#: the kernel module, or None for the numpy path (numba missing, unusable, or ``NO_NUMBA_ENV`` set)
_numba = _KERNEL.get


def _parity_regressions(K, z, s, bounds, T, cfg) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``_parity_regression`` of every expiry: pairs of expiry ``g`` are ``bounds[g]:bounds[g+1]``.

    Returns arrays ``(F, D, n_pairs, residual)``, ``F`` NaN where the fit is refused. One compiled call
    over all expiries when numba is available (``core._forwards_numba``), else the numpy loop.
    """
    G = len(T)
    F, D, res = np.full(G, np.nan), np.full(G, np.nan), np.full(G, np.nan)
    n = np.zeros(G, dtype=np.int64)
    nb = _numba()
    if nb is not None:
        nb.parity_regressions(K, z, s, bounds, np.ascontiguousarray(T, dtype=float), float(cfg.parity_width),
                              int(cfg.parity_min_pairs), float(cfg.max_abs_rate), F, D, n, res)
        return F, D, n, res
    for g in range(G):
        lo, hi = bounds[g], bounds[g + 1]
        fit = _parity_regression(K[lo:hi], z[lo:hi], s[lo:hi], T[g], cfg)
        if fit is not None:
            F[g], D[g], n[g], res[g] = fit
    return F, D, n, res


# ------------------------------------------------------------------------------------ pairing

def _group_medians(v: np.ndarray, g: np.ndarray, G: int) -> np.ndarray:
    """Median of ``v`` within each group ``g`` (codes ``0..G-1``; NaN where a group is empty), as
    ``np.median`` computes it (mean of the two middle values when the count is even)."""
    o = np.lexsort((v, g))
    vs = v[o]
    cnt = np.bincount(g, minlength=G)
    start = np.r_[0, np.cumsum(cnt)[:-1]]
    out = np.full(G, np.nan)
    has = cnt > 0
    lo = start[has] + (cnt[has] - 1) // 2
    hi = start[has] + cnt[has] // 2
    out[has] = np.where(lo == hi, vs[lo], (vs[lo] + vs[hi]) / 2.0)
    return out


def _pairs_by_expiry(q: pd.DataFrame):
    """Call/put pairs of every expiry series, formed in one sort over the whole table.

    An expiry series is an ``(expiry, expiry_time)`` pair: SPX (AM) and SPXW (PM) of one date are two
    series with two ``T`` and are never paired with each other. Per series, with ``reason == "ok"``: the
    first call and the first put (in row order) of each strike, paired at equal strikes; ``z = C_mid - P_mid``,
    ``s = (call spread + put spread) / 2``, floored at ``max(1e-3 median(s), 1e-8 median(K))`` so that a
    locked or sub-tick pair cannot get an infinite weight. Series whose median ``T`` is not positive are left out.

    Returns ``(groups, K, z, s, bounds)``: ``groups`` a list (sorted by expiry, then expiry time) of dicts
    ``key, expiry, expiry_time, T, K, z, s`` whose arrays are views of the flat ``K, z, s`` (sorted by
    series, then strike); series ``g`` holds ``bounds[g]:bounds[g+1]``.
    """
    keys = ["expiry", "expiry_time"] if "expiry_time" in q.columns else ["expiry"]
    codes, uniques = [], []
    for k in keys:
        c, u = pd.factorize(q[k], sort=True)
        codes.append(c)
        uniques.append(u)
    valid = np.logical_and.reduce([c >= 0 for c in codes])
    combined = np.zeros(len(q), dtype=np.int64)
    for c, u in zip(codes, uniques, strict=True):
        combined = combined * max(len(u), 1) + c
    ukeys, gcode = np.unique(combined[valid], return_inverse=True)
    code = np.full(len(q), -1, dtype=np.int64)
    code[valid] = gcode
    G = len(ukeys)
    # each series' T: the median over its rows (NaN ignored)
    T_all = pd.to_numeric(q["T"], errors="coerce").to_numpy(float)
    fin = (code >= 0) & np.isfinite(T_all)
    T_g = _group_medians(T_all[fin], code[fin], G)
    keep_g = np.isfinite(T_g) & (T_g > 0)
    new = np.cumsum(keep_g) - 1  # series code among the kept ones
    # usable quotes with a finite positive strike and cp = +-1, in row order
    cp = pd.to_numeric(q["cp"], errors="coerce").to_numpy(float)
    K = pd.to_numeric(q["strike"], errors="coerce").to_numpy(float)
    ok = q["reason"].astype(str).eq("ok").to_numpy()
    with np.errstate(invalid="ignore"):
        rows = ok & (code >= 0) & ((cp == 1) | (cp == -1)) & np.isfinite(K) & (K > 0)
    rows &= keep_g[np.maximum(code, 0)]
    idx = np.flatnonzero(rows)
    gi, Ki, ci = new[code[idx]], K[idx], cp[idx]
    o = np.lexsort((ci, Ki, gi))  # stable: equal (series, strike, side) stay in row order
    idx, gi, Ki, ci = idx[o], gi[o], Ki[o], ci[o]
    first = np.ones(len(idx), dtype=bool)  # the first quote of each (series, strike, side)
    first[1:] = (gi[1:] != gi[:-1]) | (Ki[1:] != Ki[:-1]) | (ci[1:] != ci[:-1])
    idx, gi, Ki = idx[first], gi[first], Ki[first]
    # sorted by side within a strike: a pair is a put immediately followed by a call of the same strike
    pair = np.flatnonzero((gi[1:] == gi[:-1]) & (Ki[1:] == Ki[:-1]))
    put, call = idx[pair], idx[pair + 1]
    mid = pd.to_numeric(q["mid"], errors="coerce").to_numpy(float)
    spread = pd.to_numeric(q["spread"], errors="coerce").to_numpy(float)
    Kp, gp = Ki[pair], gi[pair]
    zp = mid[call] - mid[put]
    sp = 0.5 * (spread[call] + spread[put])
    good = np.isfinite(zp) & np.isfinite(sp)
    Kp, gp, zp, sp = Kp[good], gp[good], zp[good], sp[good]
    Gk = int(keep_g.sum())
    if len(sp):  # a locked or sub-tick pair must not get an infinite weight
        floor = np.maximum(1e-3 * _group_medians(sp, gp, Gk), 1e-8 * _group_medians(Kp, gp, Gk))
        sp = np.maximum(sp, floor[gp])
    bounds = np.searchsorted(gp, np.arange(Gk + 1)).astype(np.int64)
    groups = []
    for j, g in enumerate(np.flatnonzero(keep_g)):
        parts, rest = [], int(ukeys[g])
        for u in reversed(uniques):
            rest, c = divmod(rest, max(len(u), 1))
            parts.append(u[c])
        key = tuple(reversed(parts))
        lo, hi = bounds[j], bounds[j + 1]
        groups.append({"expiry": key[0], "T": float(T_g[g]),
                       "K": Kp[lo:hi], "z": zp[lo:hi], "s": sp[lo:hi],
                       "expiry_time": key[1] if len(key) > 1 else pd.NaT})
    return groups, Kp, zp, sp, bounds


def implied_forwards(quotes: Any, *, spot: float | None = None, r: float | None = None,
                     q: float | None = None, exercise: str | None = None, config: Any = None) -> Forwards:
    """Forward ``F_T`` and discount ``D_T`` per expiry from put-call parity, with explicit fallbacks.

    Parameters
    ----------
    quotes : DataFrame or QuoteChain
        Quote table (``core.quotes`` schema). If it has no ``reason`` column it is cleaned first
        with ``config``; only rows with ``reason == "ok"`` make pairs. A ``QuoteChain`` also
        supplies the default ``spot`` and ``exercise``.
    spot : float, optional
        Underlying price; anchors the interpolation at ``T = 0`` and is needed for ``q``.
    r, q : float, optional
        User overrides, continuously compounded per year. ``r`` fixes ``D = exp(-r T)`` (``F`` still
        from parity); ``r`` and ``q`` with a spot give ``F = S exp((r - q) T)``; ``q`` alone with a
        spot gives ``F = S exp(-q T) / D`` with ``D`` from parity.
    exercise : 'european' or 'american'
        American chains: ``C - P`` carries the early-exercise premium, so every row is flagged
        ``approximate`` (the pipeline uses this only for an American chain without a spot; with a spot the
        forwards come from ``core.american``, not approximate).
    config : CleaningConfig, optional
        ``parity_width``, ``parity_min_pairs``, ``max_abs_rate`` (and the cleaning settings).

    Method (MATH.md): per expiry, ``C_mid - P_mid = D F - D K`` over strikes with both sides usable
    and near the money (``|ln(K/F0)| <= max(0.02, parity_width sqrt(T))``, ``F0`` from the pairs
    with the smallest ``|C - P|``); Huber IRLS started at Theil-Sen, weights ``1/spread^2``; the
    band is re-centred on the first fit and refitted once. ``residual`` is ``1.4826 MAD`` of the
    fit residuals (price units). Expiries with fewer than ``parity_min_pairs`` pairs, or whose fit is
    nonsense, fall back as recorded in ``fallback`` (see ``FALLBACKS``).

    Returns a ``Forwards`` with one row per expiry (expiry, expiry time) with ``T > 0``.
    Raises ``InputError`` for bad arguments, or when no expiry gives a forward and there is no spot.
    """

    cfg = config if config is not None else CleaningConfig()
    if not isinstance(cfg, CleaningConfig):
        raise InputError(f"config must be a CleaningConfig, got {type(cfg).__name__}")
    if spot is None and getattr(quotes, "spot", None) is not None and hasattr(quotes, "quotes"):
        spot = quotes.spot
    if exercise is None:
        exercise = getattr(quotes, "exercise", "european") if hasattr(quotes, "quotes") else "european"
    if exercise not in ("european", "american"):
        raise InputError(f"exercise must be 'european' or 'american', got {exercise!r}")
    S = optional_number("spot", spot, positive=True)
    r_ = optional_number("r", r)
    q_ = optional_number("q", q)
    if q_ is not None and S is None:
        raise InputError("a dividend yield q needs the spot: pass spot= (or leave q out and let parity give the forward)")

    table = getattr(quotes, "quotes", quotes)
    if not isinstance(table, pd.DataFrame):
        raise InputError(f"quotes must be a quote DataFrame or a QuoteChain, got {type(quotes).__name__}")
    if not {"reason", "mid", "spread"} <= set(table.columns):
        table = clean_quotes(table, cfg)
    else:
        for c in ("expiry", "strike", "cp", "T"):
            if c not in table.columns:
                raise InputError(f"quotes lack the column {c!r}; build them with core.quotes.make_quotes")

    groups, K_all, z_all, s_all, bounds = _pairs_by_expiry(table)
    if not groups:
        raise InputError("no expiry with a positive time to expiry in the quotes: nothing to compute forwards for")
    rows = [{"expiry": g["expiry"], "expiry_time": g["expiry_time"], "T": g["T"], "F": np.nan, "D": np.nan,
             "n_pairs": 0, "residual": np.nan, "fallback": None} for g in groups]
    if r_ is None:
        F_fit, D_fit, n_fit, res_fit = _parity_regressions(K_all, z_all, s_all, bounds,
                                                           np.array([g["T"] for g in groups]), cfg)
        for j, row in enumerate(rows):
            if np.isfinite(F_fit[j]):
                row.update(F=float(F_fit[j]), D=float(D_fit[j]), n_pairs=int(n_fit[j]),
                           residual=float(res_fit[j]), fallback="")

    def _interp(col: str, T: float, have: list[dict], anchor: float | None) -> float | None:
        pts = [(h["T"], h[col]) for h in have if np.isfinite(h[col])]
        if not pts:
            return None
        t = pd.DataFrame({"T": [p[0] for p in pts], "F": [p[1] if col == "F" else 1.0 for p in pts],
                          "D": [p[1] if col == "D" else 1.0 for p in pts]}).drop_duplicates("T")
        fw = Forwards(table=t, spot=anchor)
        return float(fw.F(T)) if col == "F" else float(fw.D(T))

    fitted = [w for w in rows if w["fallback"] == ""]
    # discount factors for expiries without a full fit
    for w, g in zip(rows, groups, strict=True):
        if w["fallback"] == "":
            continue
        if r_ is not None:
            w["D"], how = float(np.exp(-r_ * g["T"])), "discount from r"
        else:
            D_i = _interp("D", g["T"], fitted, None)
            w["D"], how = (D_i, "interpolated discount") if D_i is not None else (1.0, "discount assumed 1")
        pf = _parity_forward(g["K"], g["z"], g["s"], g["T"], w["D"], cfg)
        if pf is not None:
            w.update(F=pf[0], n_pairs=pf[1], residual=pf[2], fallback=how)
    # user's dividend yield with the spot: F from carry, D as estimated
    if q_ is not None:
        for w, g in zip(rows, groups, strict=True):
            if not np.isfinite(w["D"]):
                D_i = _interp("D", g["T"], [v for v in rows if np.isfinite(v["D"])], None)
                w["D"] = float(np.exp(-r_ * g["T"])) if r_ is not None else (D_i if D_i is not None else 1.0)
            if r_ is not None:
                w.update(F=S * np.exp((r_ - q_) * g["T"]), D=float(np.exp(-r_ * g["T"])), fallback="rates")
            else:
                w.update(F=S * np.exp(-q_ * g["T"]) / w["D"], fallback="forward from q")
    # expiries with no usable pair: interpolate in T over those that have a forward
    have = [w for w in rows if w["fallback"] is not None]
    for w, g in zip(rows, groups, strict=True):
        if w["fallback"] is not None:
            continue
        F_i = _interp("F", g["T"], have, S)
        if F_i is not None:
            if not np.isfinite(w["D"]):
                D_i = _interp("D", g["T"], have, None)
                w["D"] = D_i if D_i is not None else 1.0
            w.update(F=F_i, fallback="interpolated")
        elif S is not None:
            D = float(np.exp(-r_ * g["T"])) if r_ is not None else 1.0
            w.update(F=S / D, D=D, fallback="rates, q = 0" if r_ is not None else "spot, zero carry")
        else:
            raise InputError("no expiry has a usable call/put pair at the same strike and no spot was given: "
                             "pass spot= (and r=, q=) or quotes with two-sided calls and puts")
    # user-fixed forwards: report how far market parity is from them (same pair selection)
    for w, g in zip(rows, groups, strict=True):
        if w["fallback"] in ("rates", "forward from q", "rates, q = 0"):
            if len(g["K"]):
                idx = _near(g["K"], w["F"], g["T"], cfg, min(len(g["K"]), cfg.parity_min_pairs))
                res = g["z"][idx] - w["D"] * (w["F"] - g["K"][idx])
                w.update(n_pairs=len(idx), residual=_MAD * float(np.median(np.abs(res))))
            else:
                w.update(n_pairs=0, residual=np.nan)
    out = pd.DataFrame(rows)
    out["approximate"] = exercise == "american"
    out["n_pairs"] = out["n_pairs"].astype(int)
    out["fallback"] = out["fallback"].astype(str)
    bad = ~(np.isfinite(out["F"]) & (out["F"] > 0) & np.isfinite(out["D"]) & (out["D"] > 0))
    if bad.any():  # should not happen: every branch above yields positive numbers
        raise InputError(f"forwards could not be determined for expiries {list(out.loc[bad, 'expiry'])[:5]}")
    out = out.sort_values("T", ignore_index=True)
    cols = list(FORWARD_COLUMNS) + [c for c in out.columns if c not in FORWARD_COLUMNS]
    return Forwards(table=out[cols], spot=S)
