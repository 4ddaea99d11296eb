"""Expiry series in the dashboard: display labels, and model-free arbitrage checked within one series.

An expiry is identified by ``core.quotes.expiry_key`` ('YYYY-MM-DD' PM-settled, 'YYYY-MM-DD AM'
AM-settled): SPX (AM, settled on the opening print) and SPXW (PM, on the close) of one date are two
expiries with two ``T`` and two forwards. ``expiry_labels`` turns keys into what a trader reads
('2024-01-19 AM' / '2024-01-19 PM' where both exist on a date, the date alone where there is one).

``quote_arbitrage_by_series`` runs ``core.arbitrage.quote_arbitrage`` once per settlement series, so
that no violation has legs in two series (the core check groups by date and would put an SPX and an
SPXW put of one date in one book), and says for every leg which series and expiry it is in, with
sizes as whole contracts and strikes as quoted.
"""
from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Iterable

import numpy as np
import pandas as pd

from core.arbitrage import quote_arbitrage
from core.arbitrage import quote_arbitrage_by_series as core_by_series
from core.quotes import expiry_keys

# ------------------------------------------------------------------------------------------ labels


def key_date(key: str) -> str:
    """The date part of an expiry key."""
    return str(key).split(" ")[0]


def is_am(key: str) -> bool:
    return str(key).upper().endswith(" AM")


def sort_keys(keys: Iterable[str]) -> list[str]:
    """Expiry keys in time order: by date, the AM series before the PM series of the same date."""
    return sorted(set(map(str, keys)), key=lambda k: (key_date(k), 0 if is_am(k) else 1))


def expiry_labels(keys: Iterable[str]) -> dict[str, str]:
    """``{key: label}``: a PM key gets ' PM' appended when the same date also has an AM series."""
    keys = list(map(str, keys))
    am_dates = {key_date(k) for k in keys if is_am(k)}
    return {k: (f"{k} PM" if (not is_am(k) and key_date(k) in am_dates) else k) for k in keys}


def label_of(key: str, labels: dict[str, str] | None = None) -> str:
    """One key's label (``labels`` from ``expiry_labels``; the key itself when unknown)."""
    return (labels or {}).get(str(key), str(key))


def quote_keys(quotes: pd.DataFrame) -> pd.Series:
    """``core.quotes.expiry_keys`` of every row (rows without an expiry give '')."""
    if len(quotes) == 0:
        return pd.Series([], dtype=object, index=quotes.index)
    ok = quotes["expiry"].notna()
    out = pd.Series("", index=quotes.index, dtype=object)
    if ok.any():
        out[ok] = expiry_keys(quotes.loc[ok]).to_numpy()
    return out


def quote_labels(quotes: pd.DataFrame) -> pd.Series:
    """The display label of every row's expiry series (``expiry_labels`` over the table's keys)."""
    keys = quote_keys(quotes)
    labels = expiry_labels(k for k in pd.unique(keys) if k)
    return keys.map(lambda k: labels.get(k, k))


def settlement_of(quotes: pd.DataFrame) -> pd.Series:
    """'AM' or 'PM' per row (PM where the table has no settlement column)."""
    if "settlement" not in quotes.columns:
        return pd.Series("PM", index=quotes.index, dtype=object)
    s = quotes["settlement"].astype(str).str.upper()
    return s.where(s.eq("AM"), "PM")


def series_name(quotes: pd.DataFrame) -> pd.Series:
    """Per row, the option series a trader names: root and settlement ('SPXW PM', 'SPX AM'); the
    settlement alone when the table has no root."""
    settle = settlement_of(quotes)
    if "root" in quotes.columns:
        root = quotes["root"].astype(str).where(quotes["root"].notna(), "")
        return (root + " " + settle).str.strip()
    return settle


# ------------------------------------------------------------------------------------------ arbitrage
_LEG = re.compile(r"^(buy|sell) (\S+) ([CP]) (\S+)(?: \S+)? @ (ask|bid) (\S+)$")
_BOND = re.compile(r"^lend (\S+) \(bond paying (\S+)\)$")
MAX_RATIO = 50        # the largest whole-contract multiplier tried for an exact ratio
ROUNDED_SIZE = 10     # contracts of the shortest-dated leg when no exact ratio exists (calendars)


def fmt_strike(K: float) -> str:
    """A strike as quoted: 4300, 4302.5, 156.5 (no float noise, no trailing zeros)."""
    return f"{float(K):.10g}"


def whole_ratio(qty: list[float]) -> tuple[list[int], int, bool]:
    """Whole contract numbers for leg sizes ``qty`` (> 0): ``(sizes, multiplier N, exact)``.

    Exact when some ``N <= MAX_RATIO`` makes every ``N * qty`` a whole number (verticals,
    butterflies: ratios of strike gaps). Otherwise (calendars, sized by a ratio of forwards)
    ``ROUNDED_SIZE`` units with bought legs rounded up and sold legs rounded down: the package still
    dominates the model-free one (more long options, fewer short), so a violation is never overstated.
    """
    q = [abs(float(x)) for x in qty]
    for n in range(1, MAX_RATIO + 1):
        scaled = [n * x for x in q]
        if all(abs(s - round(s)) <= 1e-4 * max(1.0, s) for s in scaled):
            return [int(round(s)) for s in scaled], n, True
    # a common simple fraction may still exist for a ratio printed to 6 digits
    fr = [Fraction(x).limit_denominator(MAX_RATIO) for x in q]
    if all(abs(float(f) - x) <= 1e-5 * max(1.0, x) for f, x in zip(fr, q, strict=True)):
        n = math.lcm(*(f.denominator for f in fr))
        if n <= MAX_RATIO:
            return [int(f * n) for f in fr], n, True
    return [ROUNDED_SIZE * x for x in q], ROUNDED_SIZE, False


def _package(legs_text: str, rows: tuple, strike: dict, label: dict, series: dict) -> dict:
    """Rebuild one violation's legs as a whole-contract package, from core's leg text and quote rows."""
    parts = [p.strip() for p in str(legs_text).split(", ") if p.strip()]
    legs, bonds = [], []
    for p in parts:
        m = _LEG.match(p)
        if m:
            legs.append((m.group(1), float(m.group(2)), m.group(3), float(m.group(4)), m.group(5), float(m.group(6))))
            continue
        b = _BOND.match(p)
        if b:
            bonds.append((float(b.group(1)), float(b.group(2))))
    if not legs:
        return {"legs": str(legs_text), "package_cost": np.nan, "ratio": "", "leg_series": "", "leg_expiries": ""}
    rows = list(rows) if rows is not None else []
    if len(rows) < len(legs):          # a crossed quote: buy and sell the same row
        rows = rows + [rows[-1] if rows else None] * (len(legs) - len(rows))
    sizes, n, exact = whole_ratio([lg[1] for lg in legs])
    if not exact:
        sizes = [math.ceil(s - 1e-9) if lg[0] == "buy" else math.floor(s + 1e-9) for s, lg in zip(sizes, legs, strict=True)]
    text, cost, leg_series, leg_exp = [], 0.0, [], []
    for (verb, _q, side, K, at, price), size, row in zip(legs, sizes, rows, strict=True):
        if row is not None and row in strike:
            K, exp, ser = strike[row], label[row], series[row]
        else:
            exp, ser = "", ""
        text.append(f"{verb} {int(size)} {side} {fmt_strike(K)} {exp} @ {at} {price:.2f}".replace("  ", " "))
        cost += (size if verb == "buy" else -size) * price
        leg_series.append(ser)
        leg_exp.append(exp)
    for width, pays in bonds:
        text.append(f"lend {n * width:.2f} (bond paying {fmt_strike(n * pays)})")
        cost += n * width
    return {"legs": "; ".join(text), "package_cost": cost, "ratio": "exact" if exact else "rounded (calendar)",
            "leg_series": " / ".join(dict.fromkeys(s for s in leg_series if s)),
            "leg_expiries": " / ".join(dict.fromkeys(e for e in leg_exp if e))}


def quote_arbitrage_by_series(quotes: pd.DataFrame, forwards=None, **kw) -> pd.DataFrame:
    """Model-free violations (``core.arbitrage.quote_arbitrage``) checked within each settlement series.

    ``quotes``: the prepared quote table (its index is what ``rows`` and ``culprit`` refer to);
    ``forwards``: ``core.forwards.Forwards``. The quotes are split by settlement (AM / PM) before the
    check, so vertical and butterfly books hold one expiry series each and calendars pair expiries of
    one series. Returns core's columns plus ``series`` (root and settlement, e.g. 'SPXW PM'),
    ``expiry`` and ``expiry2`` as display labels, ``legs`` rebuilt as whole contracts with strikes as
    quoted and every leg's expiry, ``size_ratio`` ('exact' or 'rounded (calendar)'),
    ``package_cost`` (cost of those whole contracts at bid/ask), ``legs_unit`` (core's text, per unit).
    Sorted as core sorts: executable first, most negative cost first; ``culprit`` recomputed over all.
    """
    out = core_by_series(quotes, forwards, **kw)
    if len(out) == 0:
        out = quote_arbitrage(quotes.iloc[:0], forwards, **kw) if len(quotes) else out
    return decorate_violations(out, quotes)


def decorate_violations(out: pd.DataFrame, quotes: pd.DataFrame) -> pd.DataFrame:
    """Violations of ``core.arbitrage.quote_arbitrage_by_series`` for display: add the series and expiry labels of every violation and its whole-contract legs."""
    out = out.copy()
    if len(out) == 0:
        for c in ("series", "legs_unit", "size_ratio", "package_cost", "leg_expiries"):
            out[c] = pd.Series(dtype=float if c == "package_cost" else object)
        return out
    # plain dicts of the rows the violations name (pandas scalar lookups are ~50x slower)
    need = list(dict.fromkeys(r for rows in out["rows"] for r in rows))
    sub = quotes.loc[[r for r in need if r in quotes.index]]
    keys = quote_keys(quotes)
    labels = expiry_labels(k for k in pd.unique(keys) if k)
    strike = dict(zip(sub.index, sub["strike"].astype(float), strict=True))
    label = dict(zip(sub.index, keys.loc[sub.index].map(lambda k: labels.get(k, k)), strict=True))
    series = dict(zip(sub.index, series_name(sub), strict=True))
    first = [r[0] if len(r) else None for r in out["rows"]]
    last = [r[-1] if len(r) else None for r in out["rows"]]
    cal = out["kind"].astype(str).eq("calendar").to_numpy()
    out["expiry"] = [label.get(r, "") for r in first]
    out["expiry2"] = [label.get(r, "") if c else "" for r, c in zip(last, cal, strict=True)]
    pk = [_package(t, r, strike, label, series) for t, r in zip(out["legs"], out["rows"], strict=True)]
    out["legs_unit"] = out["legs"]
    out["legs"] = [p["legs"] for p in pk]
    out["size_ratio"] = [p["ratio"] for p in pk]
    out["package_cost"] = [p["package_cost"] for p in pk]
    out["leg_expiries"] = [p["leg_expiries"] for p in pk]
    out["series"] = [p["leg_series"] or series.get(r, "") for p, r in zip(pk, first, strict=True)]
    out["strikes"] = [" / ".join(fmt_strike(strike[r]) for r in dict.fromkeys(rows) if r in strike)
                      for rows in out["rows"]]
    return out


def key_times(quotes: pd.DataFrame) -> pd.Series:
    """``T`` of every expiry series in a quote table (the median over its rows), indexed by key, in time order."""
    keys = quote_keys(quotes)
    T = pd.to_numeric(quotes["T"], errors="coerce")
    ok = keys.ne("") & T.notna()
    out = T[ok].groupby(keys[ok]).median()
    return out.loc[sort_keys(out.index)] if len(out) else out


def keys_for_T(quotes: pd.DataFrame, T) -> np.ndarray:
    """The expiry key of each time ``T`` (years): the series of ``quotes`` whose ``T`` is nearest (for
    tables that carry ``T`` but no settlement, e.g. fit residuals and per-expiry summaries)."""
    kt = key_times(quotes)
    T = np.atleast_1d(np.asarray(T, float))
    if len(kt) == 0:
        return np.full(T.shape, "", dtype=object)
    order = np.argsort(kt.to_numpy(float))
    tk = kt.to_numpy(float)[order]
    names = np.asarray(kt.index, dtype=object)[order]
    i = np.clip(np.searchsorted(tk, T), 1, len(tk) - 1) if len(tk) > 1 else np.zeros(T.shape, int)
    if len(tk) > 1:
        left = np.abs(T - tk[i - 1]) <= np.abs(T - tk[i])
        i = np.where(left, i - 1, i)
    out = names[i]
    return np.where(np.isfinite(T), out, "").astype(object)
