"""Static-arbitrage diagnostics: on a fitted surface, and model-free on the raw quotes.

Surface (Gatheral & Jacquier 2014, Lemmas 2.1 and 2.2; MATH.md "Static arbitrage"): the butterfly
function ``g(y, T) >= 0`` (a non-negative density) and ``w_T >= 0`` at fixed ``y`` (no calendar
spread arbitrage), evaluated on a grid with the masks where either fails.

Quotes (no model, bid/ask respected): per expiry and side,
- vertical spreads: calls non-increasing in ``K`` with slope ``>= -D``; puts non-decreasing with
  slope ``<= D`` (``D`` the discount factor to the expiry);
- butterflies: prices convex in ``K`` at any strikes (weighted butterfly ``lambda C(K1) + (1 -
  lambda) C(K3) - C(K2) >= 0`` with ``lambda = (K3 - K2)/(K3 - K1)``);
- calendar spreads: at fixed moneyness ``K/F``, undiscounted prices per unit forward ``C/(D F)``
  non-decreasing in ``T`` (forwards carrying proportional dividends).
Each violation names its legs at executable prices (buy at the ask, sell at the bid) and their
cost; ``cost < 0`` means one is paid to enter a position whose payoff is never negative
(``survives_spread``). Violations that exist only at mid prices are listed too, with
``survives_spread = False``. The executable search is exact and linear per expiry: suffix
maxima / minima for verticals, the lower convex envelope of the asks for butterflies and for the
super-replication of the longer-dated leg of a calendar (a convex combination of calls at strikes
around ``K`` costs at least a call at ``K``, by convexity of the payoff).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.errors import InputError
from core.surface.base import VolSurface, butterfly_g

ARBITRAGE_COLUMNS = ("kind", "side", "expiry", "expiry2", "T", "T2", "strikes", "legs", "cost", "mid_cost",
                     "survives_spread", "size", "rows")


@dataclass(frozen=True, eq=False)
class SurfaceArbitrage:
    """``g`` and ``w_T`` of a surface on ``T`` ``(nT,)`` x ``y`` ``(ny,)`` (arrays ``(nT, ny)``).

    ``butterfly``: ``g < -tol``; ``calendar``: ``w_T < -tol``; ``undefined``: ``g`` or ``w_T`` not
    finite (not counted as a violation). ``counts``: cells, butterfly, calendar, undefined and their
    shares; ``min_g``, ``min_w_T``; ``clean`` when neither violation mask is set.
    """

    y: np.ndarray
    T: np.ndarray
    g: np.ndarray
    w_T: np.ndarray
    butterfly: np.ndarray
    calendar: np.ndarray
    counts: dict
    undefined: np.ndarray = None

    @property
    def clean(self) -> bool:
        return not (self.butterfly.any() or self.calendar.any())

    @property
    def min_g(self) -> float:
        return float(np.nanmin(self.g))

    @property
    def min_w_T(self) -> float:
        return float(np.nanmin(self.w_T))

    def to_frame(self) -> pd.DataFrame:
        """One row per cell: ``T, y, g, w_T, butterfly, calendar``."""
        nT, ny = self.g.shape
        return pd.DataFrame({"T": np.repeat(self.T, ny), "y": np.tile(self.y, nT), "g": self.g.ravel(),
                             "w_T": self.w_T.ravel(), "butterfly": self.butterfly.ravel(),
                             "calendar": self.calendar.ravel(),
                             "undefined": (np.zeros(self.g.size, bool) if self.undefined is None
                                           else self.undefined.ravel())})


def surface_arbitrage(surface: VolSurface, y_grid, T_grid, *, tol: float = 1e-12) -> SurfaceArbitrage:
    """Butterfly function ``g(y, T)`` and ``dw/dT`` of ``surface`` on the grid ``T_grid x y_grid``.

    ``y_grid`` ``(ny,)`` log-moneyness, ``T_grid`` ``(nT,)`` years > 0; ``tol`` tolerance for
    rounding. Butterfly-free iff ``g >= 0`` (Gatheral & Jacquier 2014, Lemma 2.2), calendar-free
    iff ``w_T >= 0`` (their Lemma 2.1).
    """
    y = np.atleast_1d(np.asarray(y_grid, dtype=float))
    T = np.atleast_1d(np.asarray(T_grid, dtype=float))
    if y.ndim != 1 or T.ndim != 1 or y.size == 0 or T.size == 0:
        raise InputError("y_grid and T_grid must be non-empty 1-d arrays")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(T)) and np.all(T > 0)):
        raise InputError("y_grid must be finite and T_grid positive (years)")
    Y, TT = np.meshgrid(y, T)
    d = surface.derivatives(Y, TT)
    g = butterfly_g(Y, d.w, d.w_y, d.w_yy)
    w_T = np.asarray(d.w_T, dtype=float)
    with np.errstate(invalid="ignore"):
        bfly = g < -tol
        cal = w_T < -tol
    undefined = ~(np.isfinite(g) & np.isfinite(w_T))     # e.g. overflow at absurd y: counted apart
    n = Y.size
    counts = {"cells": n, "butterfly": int(bfly.sum()), "calendar": int(cal.sum()), "undefined": int(undefined.sum()),
              "butterfly_share": float(bfly.sum()) / n, "calendar_share": float(cal.sum()) / n,
              "undefined_share": float(undefined.sum()) / n}
    return SurfaceArbitrage(y=y, T=T, g=g, w_T=w_T, butterfly=bfly, calendar=cal, counts=counts, undefined=undefined)


# ----------------------------------------------------------------------------- quotes

def _lower_hull(x, v):
    """Indices of the lower convex hull of points ``(x, v)`` (``x`` strictly increasing)."""
    hull: list[int] = []
    for i in range(len(x)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b if it lies on or above the chord a-i
            if (v[b] - v[a]) * (x[i] - x[a]) >= (v[i] - v[a]) * (x[b] - x[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    return np.array(hull, dtype=int)


def _envelope(x, v, xq, hull=None):
    """Lower convex envelope of ``(x, v)`` at ``xq``: value and the two bracketing point indices
    ``(lo, hi)`` with weight ``lam`` on ``lo``; NaN outside ``[x0, x_last]``. ``hull``: precomputed
    ``_lower_hull(x, v)``."""
    h = _lower_hull(x, v) if hull is None else hull
    xh, vh = x[h], v[h]
    xq = np.asarray(xq, dtype=float)
    inside = (xq >= xh[0]) & (xq <= xh[-1])
    if len(h) == 1:
        at = inside & (xq == xh[0])
        z = np.zeros(xq.shape, dtype=int)
        return np.where(at, vh[0], np.nan), h[z], h[z], np.ones(xq.shape)
    k = np.clip(np.searchsorted(xh, xq, side="right") - 1, 0, len(h) - 2)
    lam = (xh[k + 1] - xq) / (xh[k + 1] - xh[k])
    val = lam * vh[k] + (1 - lam) * vh[k + 1]
    return np.where(inside, val, np.nan), h[k], h[k + 1], lam


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _leg(qty: float, side: str, K: float, price: float, label: str = "") -> str:
    verb = "buy" if qty > 0 else "sell"
    at = "ask" if qty > 0 else "bid"
    return f"{verb} {_fmt(abs(qty))} {side} {_fmt(K)}{label} @ {at} {_fmt(price)}"


class _Book:
    """One expiry and side: sorted strikes with executable bid / ask and mids (call orientation)."""

    def __init__(self, K, bid, ask, rows):
        self.K, self.bid, self.ask, self.rows = K, bid, ask, rows
        # a mid only means something for a two-sided market (a zero bid is no bid)
        ok = np.isfinite(bid) & np.isfinite(ask) & (ask > 0) & (bid > 0) & (bid <= ask)
        self.mid = np.where(ok, 0.5 * (bid + ask), np.nan)
        self.fa = np.flatnonzero(np.isfinite(ask))             # strikes that can be bought
        self.ask_hull = _lower_hull(K[self.fa], ask[self.fa]) if len(self.fa) else np.zeros(0, dtype=int)


def _vertical(book: _Book, D: float, side: str, reflect: bool, tol: float):
    """Vertical spreads in call orientation (``reflect`` = puts, strikes mirrored). Yields dicts."""
    K, b, a = book.K, book.bid, book.ask
    n = len(K)
    # a put book read from the highest strike down behaves like a call book read upwards
    order = np.arange(n)[::-1] if reflect else np.arange(n)
    Ko, bo, ao, mo = K[order], b[order], a[order], book.mid[order]
    out = []
    # (1) monotone: buy the nearer-the-money-in-call-terms leg i, sell j after it
    # suffix argmax of bids after i
    suf_b = np.full(n, -np.inf)
    suf_bi = np.full(n, -1)
    best, bi = -np.inf, -1
    for i in range(n - 1, -1, -1):
        suf_b[i], suf_bi[i] = best, bi
        if bo[i] > best:
            best, bi = bo[i], i
    cands = {}
    for i in range(n):
        j = suf_bi[i]
        if j >= 0 and np.isfinite(ao[i]) and ao[i] - bo[j] < -tol:
            cands[(i, j)] = True
    for i in range(n - 1):
        if np.isfinite(mo[i]) and np.isfinite(mo[i + 1]) and mo[i] - mo[i + 1] < -tol:
            cands[(i, i + 1)] = True
    for (i, j) in cands:
        cost = ao[i] - bo[j]
        mid_cost = mo[i] - mo[j]
        legs = ", ".join([_leg(1, side, Ko[i], ao[i]), _leg(-1, side, Ko[j], bo[j])])
        out.append(dict(kind="vertical", rule="monotone", strikes=tuple(sorted((Ko[i], Ko[j]))), legs=legs,
                        cost=cost, mid_cost=mid_cost, rows=(book.rows[order[i]], book.rows[order[j]])))
    # (2) slope bound: sell i at bid, buy j at ask, lend D |Kj - Ki|; minimise ask_j + D |Kj - K0|
    x = np.abs(Ko - Ko[0])
    key = ao + D * x
    suf_m = np.full(n, np.inf)
    suf_mi = np.full(n, -1)
    best, bi = np.inf, -1
    for i in range(n - 1, -1, -1):
        suf_m[i], suf_mi[i] = best, bi
        if key[i] < best:
            best, bi = key[i], i
    cands = {}
    for i in range(n):
        j = suf_mi[i]
        if j >= 0 and bo[i] > 0 and key[j] - D * x[i] - bo[i] < -tol:
            cands[(i, j)] = True
    for i in range(n - 1):
        if np.isfinite(mo[i]) and np.isfinite(mo[i + 1]) and mo[i + 1] - mo[i] + D * (x[i + 1] - x[i]) < -tol:
            cands[(i, i + 1)] = True
    for (i, j) in cands:
        width = D * abs(Ko[j] - Ko[i])
        cost = ao[j] - bo[i] + width
        mid_cost = mo[j] - mo[i] + width
        legs = ", ".join([_leg(-1, side, Ko[i], bo[i]), _leg(1, side, Ko[j], ao[j]),
                          f"lend {_fmt(width)} (bond paying {_fmt(abs(Ko[j] - Ko[i]))})"])
        out.append(dict(kind="vertical", rule="slope", strikes=tuple(sorted((Ko[i], Ko[j]))), legs=legs,
                        cost=cost, mid_cost=mid_cost, rows=(book.rows[order[i]], book.rows[order[j]])))
    return out


def _butterfly(book: _Book, side: str, tol: float):
    """Convexity in ``K`` at executable prices (ask envelope vs bid) and at mids (adjacent triples)."""
    K, b, a, m = book.K, book.bid, book.ask, book.mid
    out = []
    finite_a = book.fa
    triples = {}
    if len(finite_a) >= 2:
        env, lo, hi, lam = _envelope(K[finite_a], a[finite_a], K, book.ask_hull)
        lo, hi = finite_a[lo], finite_a[hi]
        viol = np.isfinite(env) & (b > 0) & (env - b < -tol) & (lo != np.arange(len(K))) & (hi != np.arange(len(K)))
        for j in np.flatnonzero(viol):
            triples[(int(lo[j]), int(j), int(hi[j]))] = True
    mk = np.flatnonzero(np.isfinite(m))
    for t in range(1, len(mk) - 1):
        i, j, k = mk[t - 1], mk[t], mk[t + 1]
        lam = (K[k] - K[j]) / (K[k] - K[i])
        if lam * m[i] + (1 - lam) * m[k] - m[j] < -tol:
            triples.setdefault((int(i), int(j), int(k)), True)
    for (i, j, k) in triples:
        lam = (K[k] - K[j]) / (K[k] - K[i])
        scale = 1.0 / min(lam, 1.0 - lam)
        wi, wk = lam * scale, (1.0 - lam) * scale
        cost = scale * (lam * a[i] + (1 - lam) * a[k] - b[j])
        mid_cost = scale * (lam * m[i] + (1 - lam) * m[k] - m[j])
        legs = ", ".join([_leg(wi, side, K[i], a[i]), _leg(-scale, side, K[j], b[j]), _leg(wk, side, K[k], a[k])])
        out.append(dict(kind="butterfly", rule="convexity", strikes=(K[i], K[j], K[k]), legs=legs, cost=cost,
                        mid_cost=mid_cost, rows=(book.rows[i], book.rows[j], book.rows[k])))
    return out


def _calendar(b1: _Book, b2: _Book, F1, D1, F2, D2, side, e1, e2, tol, mids: bool):
    """Calendar spreads between expiries 1 < 2 at equal moneyness ``K/F`` (undiscounted, per forward)."""
    out = []
    K2q = b1.K * F2 / F1                         # the strike at expiry 2 with the same K/F
    lam_c = (D1 * F1) / (D2 * F2)                # units of the long-dated leg per short-dated option
    fa = b2.fa
    found = {}
    if len(fa) >= 1:
        env, lo, hi, w = _envelope(b2.K[fa], b2.ask[fa], K2q, b2.ask_hull)
        lo, hi = fa[lo], fa[hi]
        viol = np.isfinite(env) & (b1.bid > 0) & (lam_c * env - b1.bid < -tol)
        for j in np.flatnonzero(viol):
            found[int(j)] = ("ask", int(lo[j]), int(hi[j]), float(w[j]))
    if mids:
        fm = np.flatnonzero(np.isfinite(b2.mid))
        if len(fm) >= 2:
            mid2 = np.interp(K2q, b2.K[fm], b2.mid[fm], left=np.nan, right=np.nan)
            viol = np.isfinite(mid2) & np.isfinite(b1.mid) & (lam_c * mid2 - b1.mid < -tol)
            for j in np.flatnonzero(viol):
                if int(j) not in found:
                    k = int(np.clip(np.searchsorted(b2.K[fm], K2q[j], side="right") - 1, 0, len(fm) - 2))
                    lo_, hi_ = fm[k], fm[k + 1]
                    wl = (b2.K[hi_] - K2q[j]) / (b2.K[hi_] - b2.K[lo_])
                    found[int(j)] = ("mid", int(lo_), int(hi_), float(wl))
    for j, (_, lo_, hi_, wl) in found.items():
        wl = float(np.clip(wl, 0.0, 1.0))
        ask_env = wl * b2.ask[lo_] + (1 - wl) * b2.ask[hi_]
        mid_env = wl * b2.mid[lo_] + (1 - wl) * b2.mid[hi_]
        cost = lam_c * ask_env - b1.bid[j]
        mid_cost = lam_c * mid_env - b1.mid[j]
        legs = [_leg(-1, side, b1.K[j], b1.bid[j], f" {e1}")]
        rows = [b1.rows[j]]
        for idx, wt in ((lo_, wl), (hi_, 1 - wl)):
            if wt > 1e-12:
                legs.append(_leg(lam_c * wt, side, b2.K[idx], b2.ask[idx], f" {e2}"))
                rows.append(b2.rows[idx])
        out.append(dict(kind="calendar", rule="moneyness", strikes=(b1.K[j], float(K2q[j])), legs=", ".join(legs),
                        cost=cost, mid_cost=mid_cost, rows=tuple(rows)))
    return out


def _label(e) -> str:
    try:
        return pd.Timestamp(e).strftime("%Y-%m-%d")
    except (ValueError, TypeError):
        return str(e)


def quote_arbitrage(quotes: pd.DataFrame, forwards=None, *, tol: float = 1e-9, include_mid: bool = True) -> pd.DataFrame:
    """Model-free static-arbitrage violations in raw option quotes, at executable prices.

    ``quotes``: the quote schema (``expiry, T, strike, cp, bid, ask``; more columns ignored).
    ``forwards``: ``core.forwards.Forwards`` for ``D`` (slope bounds) and ``F`` (calendar
    moneyness); without it ``D = 1`` (a weaker bound when rates are positive) and no calendar check.
    ``tol``: price tolerance; ``include_mid=False`` lists only executable violations (mid-price
    violations are frequent where quotes are rounded to ticks or the spread is asymmetric). Crossed quotes (bid > ask) are reported as kind ``crossed`` and left
    out of the other checks; a missing bid cannot be sold, a missing ask cannot be bought;
    duplicate rows (same expiry, cp, strike) are merged to the best bid and ask.
    Returns a DataFrame (``ARBITRAGE_COLUMNS`` plus ``rule``, ``K1, K2, K3``): ``kind`` vertical /
    butterfly / calendar / crossed, ``side`` C or P, ``expiry`` (and ``expiry2`` for calendars),
    ``strikes``, ``legs`` (text), ``cost`` of the legs at bid/ask (negative: paid to enter a
    position with non-negative payoff), ``mid_cost`` the same at mids, ``survives_spread``
    (``cost < 0``), ``size`` = ``-mid_cost`` (the violation at mids, price units; may be negative for a
    violation that only shows at executable prices, e.g. with a one-sided quote), ``rows`` (quote
    indices of the legs). Sorted: executable first, most negative cost first.
    """
    need = ["expiry", "strike", "cp", "bid", "ask"]
    if not isinstance(quotes, pd.DataFrame):
        raise InputError(f"quotes must be a DataFrame in the quote schema, got {type(quotes).__name__}")
    missing = [c for c in need if c not in quotes.columns]
    if missing:
        raise InputError(f"quotes lacks the columns {missing} (needs {need}, and T when forwards are given)")
    if forwards is not None and "T" not in quotes.columns:
        raise InputError("quotes needs a 'T' column (years) to use forwards")
    q = quotes.copy()
    q["_row"] = q.index
    bid = pd.to_numeric(q["bid"], errors="coerce").to_numpy(float)
    ask = pd.to_numeric(q["ask"], errors="coerce").to_numpy(float)
    crossed = np.isfinite(bid) & np.isfinite(ask) & (bid > ask + tol) & (ask > 0)
    records = []
    for r in np.flatnonzero(crossed):
        row = q.iloc[r]
        side = "C" if int(row["cp"]) > 0 else "P"
        legs = ", ".join([_leg(1, side, float(row["strike"]), ask[r]), _leg(-1, side, float(row["strike"]), bid[r])])
        records.append(dict(kind="crossed", rule="bid>ask", side=side, expiry=row["expiry"], expiry2=pd.NaT,
                            T=float(row["T"]) if "T" in q else np.nan, T2=np.nan, strikes=(float(row["strike"]),),
                            legs=legs, cost=ask[r] - bid[r], mid_cost=0.0, rows=(row["_row"],)))
    # unusable sides: a missing or crossed bid cannot be sold (0), a missing ask cannot be bought (inf)
    bid_e = np.where(np.isfinite(bid) & (bid >= 0) & ~crossed, bid, 0.0)
    ask_e = np.where(np.isfinite(ask) & (ask > 0) & ~crossed, ask, np.inf)
    q["_bid"], q["_ask"] = bid_e, ask_e
    q["_cp"] = np.sign(pd.to_numeric(q["cp"], errors="coerce")).astype(int)
    q = q[np.isfinite(q["strike"].to_numpy(float)) & (q["strike"].to_numpy(float) > 0) & (q["_cp"] != 0)]
    agg = {"_bid": "max", "_ask": "min", "_row": "first"}
    if "T" in q.columns:
        agg["T"] = "first"
    g = q.groupby(["expiry", "_cp", "strike"], sort=True).agg(agg).reset_index()

    books: dict = {}
    meta: dict = {}
    for (e, cp), grp in g.groupby(["expiry", "_cp"], sort=True):
        grp = grp.sort_values("strike")
        books[(e, cp)] = _Book(grp["strike"].to_numpy(float), grp["_bid"].to_numpy(float),
                               grp["_ask"].to_numpy(float), grp["_row"].to_numpy())
        T = float(grp["T"].iloc[0]) if "T" in grp else np.nan
        if forwards is not None:
            meta[e] = (T, float(forwards.F(T)), float(forwards.D(T)))
        else:
            meta[e] = (T, np.nan, 1.0)

    for (e, cp), book in books.items():
        side = "C" if cp > 0 else "P"
        T, F, D = meta[e]
        found = _vertical(book, D, side, reflect=cp < 0, tol=tol) + _butterfly(book, side, tol)
        for f in found:
            records.append(dict(side=side, expiry=e, expiry2=pd.NaT, T=T, T2=np.nan, **f))

    if forwards is not None:
        exps = sorted({e for e, _ in books})
        for cp in (1, -1):
            side = "C" if cp > 0 else "P"
            for i1, e1 in enumerate(exps):
                for i2 in range(i1 + 1, len(exps)):
                    e2 = exps[i2]
                    if (e1, cp) not in books or (e2, cp) not in books:
                        continue
                    T1, F1, D1 = meta[e1]
                    T2, F2, D2 = meta[e2]
                    if not T2 > T1:
                        continue
                    found = _calendar(books[(e1, cp)], books[(e2, cp)], F1, D1, F2, D2, side, _label(e1), _label(e2),
                                      tol, mids=(i2 == i1 + 1))
                    for f in found:
                        records.append(dict(side=side, expiry=e1, expiry2=e2, T=T1, T2=T2, **f))

    cols = list(ARBITRAGE_COLUMNS) + ["rule", "K1", "K2", "K3"]
    if not include_mid:
        records = [r for r in records if r["cost"] < -tol]
    if not records:
        out = pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
        out["survives_spread"] = out["survives_spread"].astype(bool)
        out.attrs["calendar_checked"] = forwards is not None
        return out
    out = pd.DataFrame.from_records(records)
    out["cost"] = out["cost"].astype(float)
    out["mid_cost"] = out["mid_cost"].astype(float)
    out["survives_spread"] = out["cost"] < -tol
    out["size"] = -out["mid_cost"]
    ks = out["strikes"].apply(lambda s: list(s) + [np.nan] * (3 - len(s)))
    out["K1"], out["K2"], out["K3"] = (ks.apply(lambda s, i=i: float(s[i])) for i in range(3))
    out["rows"] = out["rows"].apply(lambda r: tuple(int(x) if isinstance(x, (int, np.integer)) else x for x in r))
    out = out.sort_values(["survives_spread", "cost"], ascending=[False, True], ignore_index=True)
    out["culprit"] = likely_culprits(out["rows"], out["survives_spread"])
    out.attrs["calendar_checked"] = forwards is not None
    return out[cols + ["culprit"]]


def likely_culprits(rows: pd.Series, executable: pd.Series) -> pd.Series:
    """The quote most likely to blame for each executable violation (greedy set cover).

    One bad quote breaks convexity or monotonicity against many partners, so it shows up in many
    violations. Repeatedly take the quote index that appears in the most still-unexplained
    executable violations and assign those to it. ``rows``: tuples of quote indices per violation;
    returns the culprit's quote index per violation (``-1`` for mid-only violations).
    """
    out = np.full(len(rows), -1, dtype=np.int64)
    todo = {i: set(r) for i, (r, ex) in enumerate(zip(rows, executable, strict=True)) if ex}
    while todo:
        count: dict = {}
        for legs in todo.values():
            for leg in legs:
                count[leg] = count.get(leg, 0) + 1
        best = max(count, key=lambda k: (count[k], -k))
        for i in [i for i, legs in todo.items() if best in legs]:
            out[i] = best
            del todo[i]
    return pd.Series(out, index=rows.index, name="culprit")


def risk_neutral_density(surface: VolSurface, forwards, K, T) -> np.ndarray:
    """Risk-neutral density of ``S_T`` at strikes ``K`` (nK,) for each ``T`` (nT,): shape (nT, nK).

    Breeden-Litzenberger ``p(K) = d2C/dK2 / D`` in total variance (Gatheral 2006, eq. 2.6):
    ``p(K) = g(y) / (K sqrt(2 pi w)) exp(-d_-^2 / 2)``, ``d_- = -y/sqrt(w) - sqrt(w)/2``, with the analytic
    ``g`` of ``core.surface.base.butterfly_g``: negative exactly where the surface has butterfly arbitrage.
    """
    K = np.asarray(K, dtype=float)[None, :]
    T = np.asarray(T, dtype=float)[:, None]
    F = np.asarray(forwards.F(T), dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(K / F)
        d = surface.derivatives(y, np.broadcast_to(T, y.shape))
        g = butterfly_g(y, d.w, d.w_y, d.w_yy)
        sw = np.sqrt(d.w)
        dm = -y / sw - sw / 2.0
        return g / (K * np.sqrt(2.0 * np.pi) * sw) * np.exp(-0.5 * dm * dm)


def quote_arbitrage_by_series(quotes: pd.DataFrame, forwards=None, **kw) -> pd.DataFrame:
    """``quote_arbitrage`` within each settlement series: SPX (AM) and SPXW (PM) of one date are two
    expiries, and a violation whose legs mix the two is no arbitrage (they settle on different prints).

    ``quotes`` split by ``settlement`` (all PM where the column is absent), each part checked alone, the
    parts joined and sorted as ``quote_arbitrage`` sorts (executable first, most negative cost first), and
    ``culprit`` recomputed over all of them. ``**kw`` goes to ``quote_arbitrage``.
    """
    if len(quotes) == 0 or "settlement" not in quotes.columns:
        return quote_arbitrage(quotes, forwards, **kw)
    settle = quotes["settlement"].astype(str).str.upper().where(lambda v: v == "AM", "PM")
    parts = [quote_arbitrage(quotes[settle.eq(v).to_numpy()], forwards, **kw) for v in sorted(pd.unique(settle))]
    nonempty = [p for p in parts if len(p)]
    if not nonempty:
        return parts[0]
    out = pd.concat(nonempty, ignore_index=True)
    if "survives_spread" in out.columns:
        out = out.sort_values(["survives_spread", "cost"], ascending=[False, True], kind="stable", ignore_index=True)
        out["culprit"] = likely_culprits(out["rows"], out["survives_spread"].astype(bool))
    return out
