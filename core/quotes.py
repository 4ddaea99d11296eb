"""The quote schema: one tidy table of option quotes that every source produces.

A quote table is a ``pandas.DataFrame`` with the columns of ``QUOTE_COLUMNS`` (in that order,
extra columns allowed after them). ``make_quotes`` coerces and validates a frame into that
schema; ``QuoteChain`` carries the table with its metadata (spot, quote time, source, exercise
style). Conventions (``shared/MATH.md``): ``T`` is ACT/365 from the market time to the expiry
time, 16:00 America/New_York for PM-settled options, 09:30 for AM-settled SPX monthlies. The market
time (``core.calendar.market_time``) is the time the prices were made: the quote time when it falls
inside an NYSE session, else the last close before it (a Saturday download holds Friday's close).
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

from core.calendar import is_session, market_times, session_on_or_before
from core.errors import InputError

NEW_YORK = "America/New_York"
SECONDS_PER_YEAR = 365.0 * 86400.0

#: column -> (kind, meaning). Kinds: str, time (tz-aware UTC), date, float, int.
QUOTE_COLUMNS: dict[str, tuple[str, str]] = {
    "underlying": ("str", "underlying symbol, e.g. SPX"),
    "root": ("str", "option root (SPX, SPXW, AAPL); '' where unknown"),
    "quote_time": ("time", "time of the quote, tz-aware UTC"),
    "expiry": ("date", "expiry date (calendar date, naive, midnight)"),
    "settlement": ("str", "'PM' (16:00 New York) or 'AM' (09:30 New York, SPX monthlies)"),
    "expiry_time": ("time", "settlement time of the expiry, tz-aware UTC"),
    "T": ("float", "years ACT/365 from quote_time to expiry_time"),
    "strike": ("float", "strike K, in the underlying's units"),
    "cp": ("int", "+1 call, -1 put"),
    "bid": ("float", "best bid (NaN where none)"),
    "ask": ("float", "best ask (NaN where none)"),
    "last": ("float", "last trade price (NaN where none)"),
    "last_trade_time": ("time", "time of the last trade, tz-aware UTC (NaT where unknown)"),
    "volume": ("float", "traded volume of the day (NaN where unknown)"),
    "open_interest": ("float", "open interest (NaN where unknown)"),
    "vendor_iv": ("float", "the vendor's implied vol, kept for comparison only (NaN where none)"),
    "source": ("str", "which loader produced the row: demo, yahoo, cboe, yfinance-csv, tidy-csv"),
}
REQUIRED = ("expiry", "strike", "cp", "bid", "ask")

EUROPEAN_ROOTS = frozenset({"SPX", "SPXW", "SPXPM", "XSP", "NDX", "NDXP", "RUT", "RUTW", "VIX", "VIXW",
                            "DJX", "OEX", "XEO", "MXEF", "MXEA",
                            "DEMO"})  # DEMO: the bundled synthetic index (cash-settled, European)
AM_SETTLED_ROOTS = frozenset({"SPX", "NDX", "RUT", "DJX", "VIX"})


def exercise_style(underlying: str, root: str | None = None) -> str:
    """'european' for cash-settled index options (SPX, SPXW, XSP, NDX, RUT, ...), else 'american'."""
    names = {str(underlying or "").upper().lstrip("^"), str(root or "").upper()}
    return "european" if names & EUROPEAN_ROOTS else "american"


def is_third_friday(d: _dt.date) -> bool:
    """True if ``d`` is the third Friday of its month (the standard monthly expiry)."""
    return d.weekday() == 4 and 15 <= d.day <= 21


def settlement_for(root: str, expiry: _dt.date) -> str:
    """'AM' for AM-settled index monthlies, else 'PM'.

    AM: root SPX (NDX, RUT, DJX, VIX) expiring on a third Friday; on the Saturday after it (pre-2015
    contract codes name the Saturday); or on the session before a third Friday that is an exchange
    holiday (the April monthly moves to Thursday when the third Friday is Good Friday, and stays
    AM-settled, while SPXW of that Thursday settles PM). Sessions: ``core.calendar`` (NYSE).
    """
    root = str(root or "").upper()
    if root not in AM_SETTLED_ROOTS:
        return "PM"
    if is_third_friday(expiry) or (expiry.weekday() == 5 and is_third_friday(expiry - _dt.timedelta(days=1))):
        return "AM"
    first = _dt.date(expiry.year, expiry.month, 1)
    third_friday = first + _dt.timedelta(days=(4 - first.weekday()) % 7 + 14)
    if expiry.weekday() < 5 and 1 <= (third_friday - expiry).days <= 4 and not is_session(third_friday):
        return "AM" if session_on_or_before(third_friday) == expiry else "PM"
    return "PM"


def expiry_time(expiry: Any, settlement: str = "PM") -> pd.Timestamp:
    """Settlement time of an expiry date as a tz-aware UTC timestamp.

    PM: 16:00 New York on the expiry date. AM: 09:30 New York on the expiry date, or on the
    Friday before when the date is a Saturday (old SPX codes name the Saturday; the session before
    that Friday when it is an exchange holiday).
    """
    d = pd.Timestamp(expiry).date()
    if settlement == "AM":
        if d.weekday() == 5:
            d = session_on_or_before(d - _dt.timedelta(days=1))
        hh, mm = 9, 30
    else:
        hh, mm = 16, 0
    return pd.Timestamp(_dt.datetime(d.year, d.month, d.day, hh, mm)).tz_localize(NEW_YORK).tz_convert("UTC")


def expiry_key(expiry: Any, settlement: str = "PM") -> str:
    """The one identifier of an expiry series: ``'YYYY-MM-DD'`` for PM settlement, ``'YYYY-MM-DD AM'`` for AM.

    SPX (AM, 09:30) and SPXW (PM, 16:00) expiring on the same date are two expiries with two ``T``;
    every table, picker, fit and export keys them by this string so they are never merged.
    """
    d = pd.Timestamp(expiry).strftime("%Y-%m-%d")
    return f"{d} AM" if str(settlement).upper() == "AM" else d


def expiry_keys(quotes: pd.DataFrame) -> pd.Series:
    """``expiry_key`` of every row of a quote table (``expiry`` and, where present, ``settlement``)."""
    d = pd.to_datetime(quotes["expiry"]).dt.strftime("%Y-%m-%d")
    if "settlement" not in quotes.columns:
        return d
    am = quotes["settlement"].astype(str).str.upper().eq("AM").to_numpy()
    return d.where(~am, d + " AM")


def parse_expiry_key(value: Any, name: str = "expiries") -> str:
    """A user's expiry (``'2024-01-19'``, ``'2024-01-19 AM'``, ``'2024-01-19 PM'`` or a date) as an ``expiry_key``."""
    s = str(value).strip()
    settle = "PM"
    parts = s.rsplit(" ", 1)
    if len(parts) == 2 and parts[1].upper() in ("AM", "PM"):
        s, settle = parts[0], parts[1].upper()
    return expiry_key(parse_expiry(s if isinstance(value, str) else value, name), settle)


def to_utc(t: Any, default_tz: str = NEW_YORK) -> pd.Timestamp:
    """A timestamp as tz-aware UTC; naive input is taken as ``default_tz`` (New York)."""
    ts = pd.Timestamp(t)
    if ts.tzinfo is None:
        ts = ts.tz_localize(default_tz)
    return ts.tz_convert("UTC")


def year_fraction(start: Any, end: Any) -> np.ndarray | float:
    """ACT/365 year fraction ``(end - start) / 365 days``, to the second; arrays broadcast."""
    s = pd.to_datetime(start, utc=True)
    e = pd.to_datetime(end, utc=True)
    delta = e - s
    if isinstance(delta, pd.Timedelta):
        return delta.total_seconds() / SECONDS_PER_YEAR
    td = pd.to_timedelta(pd.Series(np.asarray(delta).ravel()) if not isinstance(delta, pd.Series) else delta)
    return td.dt.total_seconds().to_numpy(dtype=float) / SECONDS_PER_YEAR


def parse_expiry(value: Any, name: str = "expiries") -> pd.Timestamp:
    """An expiry date as a midnight ``Timestamp``; ``InputError`` naming ``name`` when unreadable."""
    try:
        ts = pd.Timestamp(str(value).strip()) if isinstance(value, str) else pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError):
        ts = pd.NaT
    if ts is pd.NaT or pd.isna(ts):
        raise InputError(f"{name}: {str(value)[:40]!r} is not a date; write expiries as YYYY-MM-DD, e.g. 2026-12-18")
    if ts.tzinfo is not None:
        ts = ts.tz_localize(None)
    return ts.normalize()


def _as_cp(values: pd.Series) -> pd.Series:
    mapping = {"C": 1, "CALL": 1, "CALLS": 1, "1": 1, "+1": 1, "1.0": 1,
               "P": -1, "PUT": -1, "PUTS": -1, "-1": -1, "-1.0": -1}
    out = values.astype(str).str.strip().str.upper().map(mapping)
    if out.isna().any():
        bad = values[out.isna()].astype(str).unique()[:5]
        raise InputError(f"column 'cp' has values {list(bad)} that are neither call (C, call, +1) nor put (P, put, -1)")
    return out.astype("int8")


def make_quotes(df: pd.DataFrame, *, quote_time: Any = None, underlying: str | None = None,
                source: str | None = None) -> pd.DataFrame:
    """Coerce a frame into the quote schema and validate it.

    Parameters: ``df`` needs at least ``expiry, strike, cp, bid, ask``; missing optional columns are
    filled (NaN, NaT, ''). ``quote_time``/``underlying``/``source`` fill those columns where absent.
    ``settlement`` defaults from ``root`` and ``expiry`` (``settlement_for``), ``expiry_time`` from
    those, and ``T`` from the market time of each row's ``quote_time`` (``core.calendar.market_time``:
    the quote time inside a session, else the last close before it) to ``expiry_time`` (ACT/365).
    Returns a new frame, columns in schema order followed by any extras.
    Raises ``InputError`` naming missing columns or unparseable values.
    """
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"quotes must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise InputError(f"quote table lacks the columns {missing}; it needs {list(REQUIRED)} at least")
    q = df.copy()
    q = q.reset_index(drop=True)
    n = len(q)
    if "underlying" not in q or q["underlying"].isna().all():
        q["underlying"] = underlying or ""
    if "root" not in q:
        q["root"] = q["underlying"]
    if "source" not in q:
        q["source"] = source or ""
    if "quote_time" not in q or q["quote_time"].isna().all():
        if quote_time is None:
            raise InputError("quote table has no 'quote_time' column: pass quote_time= (the time the quotes were taken)")
        q["quote_time"] = to_utc(quote_time)
    try:
        q["quote_time"] = pd.to_datetime(q["quote_time"], utc=True)
    except (ValueError, TypeError) as exc:
        raise InputError(f"column 'quote_time' could not be read as times: {exc}") from None
    try:
        exp = pd.to_datetime(q["expiry"], errors="coerce", format="mixed")
        if exp.dt.tz is not None:
            exp = exp.dt.tz_localize(None)
        q["expiry"] = exp.dt.normalize().astype("datetime64[ns]")
    except (ValueError, TypeError) as exc:
        raise InputError(f"column 'expiry' could not be read as dates: {exc}") from None
    for c in ("strike", "bid", "ask", "last", "volume", "open_interest", "vendor_iv"):
        if c not in q:
            q[c] = np.nan
        q[c] = pd.to_numeric(q[c], errors="coerce").astype(float)
    q["cp"] = _as_cp(q["cp"]) if n else pd.Series([], dtype="int8")
    if "last_trade_time" not in q:
        q["last_trade_time"] = pd.NaT
    q["last_trade_time"] = pd.to_datetime(q["last_trade_time"], utc=True, errors="coerce")
    q["underlying"] = q["underlying"].fillna("").astype(str)
    q["root"] = q["root"].fillna("").astype(str)
    q["source"] = q["source"].fillna("").astype(str)
    if "settlement" not in q or q["settlement"].isna().any():
        # one rule call per distinct (root, expiry): a real chain has ~20,000 rows but ~60 such pairs
        codes, pairs = pd.MultiIndex.from_arrays([q["root"], q["expiry"]]).factorize()
        rule = np.array([settlement_for(r, e.date()) if pd.notna(e) else "PM" for r, e in pairs], dtype=object)
        q["settlement"] = rule[codes] if n else pd.Series([], dtype=object)
    q["settlement"] = q["settlement"].astype(str)
    if "expiry_time" not in q or q["expiry_time"].isna().any():
        codes, pairs = pd.MultiIndex.from_arrays([q["expiry"], q["settlement"]]).factorize()
        times = pd.DatetimeIndex([expiry_time(e, st) if pd.notna(e) else pd.NaT for e, st in pairs],
                                 dtype="datetime64[ns, UTC]")
        q["expiry_time"] = pd.Series(times[codes] if n else times[:0], index=q.index)
    q["expiry_time"] = pd.to_datetime(q["expiry_time"], utc=True)
    q["T"] = year_fraction(market_times(q["quote_time"]), q["expiry_time"]) if n else np.zeros(0)
    cols = list(QUOTE_COLUMNS) + [c for c in q.columns if c not in QUOTE_COLUMNS]
    return q[cols]


@dataclass(frozen=True)
class QuoteChain:
    """An option chain as loaded from one source: the quote table and its metadata.

    ``quotes``: frame in the schema of ``make_quotes``. ``spot``: underlying price at ``spot_time``
    (None when the source has none: put-call parity then gives the forward). ``asof``: quote time as
    read (tz-aware UTC). ``market_time``: the time the prices were made and ``T`` runs from
    (``core.calendar.market_time(asof)`` when not given; last so that the positional signature of
    older code still works). ``exercise``: 'european' or 'american' (American chains use OTM quotes
    only and flag the parity forward as approximate). ``meta``: anything the source wants to keep
    (for the demo, the true model parameters; for files, the file name, warnings).
    """

    quotes: pd.DataFrame
    underlying: str
    asof: pd.Timestamp
    source: str
    spot: float | None = None
    spot_time: pd.Timestamp | None = None
    exercise: str = "european"
    meta: Mapping[str, Any] = field(default_factory=dict)
    market_time: pd.Timestamp | None = None

    def __post_init__(self) -> None:
        if self.market_time is None and self.asof is not None and not pd.isna(self.asof):
            object.__setattr__(self, "market_time", market_times([self.asof]).iloc[0])
        if self.exercise not in ("european", "american"):
            raise InputError(f"exercise must be 'european' or 'american', got {self.exercise!r}")
        if self.spot is not None and not (np.isfinite(self.spot) and self.spot > 0):
            raise InputError(f"spot must be a positive number, got {self.spot!r}")

    @property
    def expiries(self) -> list[pd.Timestamp]:
        """Sorted distinct expiry dates in the chain (rows with an unreadable expiry left out)."""
        return sorted(pd.Timestamp(e) for e in pd.unique(self.quotes["expiry"].dropna()))

    def select_expiries(self, expiries: Any) -> "QuoteChain":
        """A copy with only the given expiry dates (strings or dates); unknown dates raise InputError."""
        wanted = {parse_expiry(e) for e in expiries}
        have = set(self.expiries)
        unknown = sorted(wanted - have)
        if unknown:
            raise InputError(f"expiries {[str(u.date()) for u in unknown]} are not in the chain; "
                             f"available: {[str(h.date()) for h in sorted(have)]}")
        q = self.quotes[self.quotes["expiry"].isin(wanted)].reset_index(drop=True)
        return QuoteChain(q, self.underlying, self.asof, self.source, self.spot, self.spot_time,
                          self.exercise, dict(self.meta), self.market_time)
