"""Market sessions of the New York Stock Exchange: when prices are made, and so where ``T`` starts.

An option price is made while the market is open. A chain downloaded on Saturday holds Friday's
closing prices, a chain downloaded at 17:18 holds the prices of 16:00 that day; measuring ``T`` from
the download time would make every ``T`` too short by the hours the market was shut, which matters
for daily and weekly expiries. ``market_time(quote_time)`` is the quote time when it falls inside a
regular session (09:30-16:00 New York, 13:00 on early-close days), else the close of the last session
before it. ``core.quotes.make_quotes`` measures ``T`` from it (MATH.md, "Time to expiry").

Sessions, holidays (Good Friday included), early closes and the ad hoc closures (days of mourning,
hurricane Sandy) come from the maintained ``exchange_calendars`` package, calendar ``XNYS``; nothing
here is a hand-written holiday list. All the US listed options of this project (SPX, NDX, SPY, QQQ,
equities) trade on the NYSE's session days.
"""
from __future__ import annotations

import datetime as _dt
import functools
import warnings
from typing import Any

import numpy as np
import pandas as pd

from core.errors import InputError

EXCHANGE = "XNYS"
NEW_YORK = "America/New_York"
#: the years the calendar can answer for (exchange_calendars' XNYS rules start in 1885)
FIRST_YEAR, LAST_YEAR = 1886, 2199
#: the span built by default: one build (about 0.15 s) serves every date of this range
_DEFAULT_SPAN = (1990, 2060)


@functools.lru_cache(maxsize=4)
def _schedule(first_year: int, last_year: int) -> tuple[pd.DatetimeIndex, np.ndarray, np.ndarray]:
    """Session dates (naive midnight) and their opens and closes (int64 ns UTC), ``first_year..last_year``."""
    # imported on first use: exchange_calendars takes about 0.4 s to import, and only building the
    # schedule needs it (``import core.quotes`` stays fast for the CLI's ``price`` and the app's start)
    import exchange_calendars

    with warnings.catch_warnings():
        # exchange_calendars 4.13 reads Series.values of tz-aware columns, deprecated in pandas 3.1
        # (a Pandas4Warning); its results are right (checked by tests/test_calendar.py)
        warnings.simplefilter("ignore")
        cal = exchange_calendars.get_calendar(EXCHANGE, start=f"{first_year}-01-01", end=f"{last_year}-12-31")
        sched = cal.schedule
    sessions = pd.DatetimeIndex(sched.index).tz_localize(None).astype("datetime64[ns]")
    opens = sched["open"].dt.tz_convert(None).astype("datetime64[ns]").to_numpy().astype(np.int64)
    closes = sched["close"].dt.tz_convert(None).astype("datetime64[ns]").to_numpy().astype(np.int64)
    return sessions, opens, closes


def _span_for(years: np.ndarray) -> tuple[int, int]:
    lo, hi = int(years.min()), int(years.max())
    if lo < FIRST_YEAR or hi > LAST_YEAR:
        raise InputError(f"the date {lo if lo < FIRST_YEAR else hi} is outside the exchange calendar "
                         f"({FIRST_YEAR}-{LAST_YEAR}); check the quote time (asof)")
    first = _DEFAULT_SPAN[0] if lo > _DEFAULT_SPAN[0] else max(FIRST_YEAR, lo - 1)
    last = _DEFAULT_SPAN[1] if hi < _DEFAULT_SPAN[1] else min(LAST_YEAR, hi + 1)
    return first, last


def _as_utc_index(times: Any) -> pd.DatetimeIndex:
    """Times as a tz-aware UTC DatetimeIndex in ns (naive input = New York)."""
    idx = pd.DatetimeIndex(pd.to_datetime(pd.Series(times) if np.ndim(times) else pd.Series([times])))
    if idx.tz is None:
        idx = idx.tz_localize(NEW_YORK, ambiguous="NaT", nonexistent="shift_forward")
    return idx.tz_convert("UTC").as_unit("ns")


def _as_dates(dates: Any) -> pd.DatetimeIndex:
    """Calendar dates as naive midnight ns timestamps (tz-aware input is taken in New York)."""
    idx = pd.DatetimeIndex(pd.to_datetime(pd.Series(dates) if np.ndim(dates) else pd.Series([dates])))
    if idx.tz is not None:
        idx = idx.tz_convert(NEW_YORK).tz_localize(None)
    return idx.normalize().as_unit("ns")


def market_times(quote_times: Any) -> pd.Series:
    """``market_time`` of many quote times at once (a Series, array or list; NaT stays NaT).

    Returns a Series of tz-aware UTC timestamps (index of the input when it is a Series).
    """
    index = quote_times.index if isinstance(quote_times, pd.Series) else None
    t = _as_utc_index(quote_times)
    out = np.full(len(t), np.iinfo(np.int64).min, dtype=np.int64)   # NaT
    ok = ~t.isna()
    if ok.any():
        tn = t[ok].asi8
        years = t[ok].year.to_numpy()
        _, opens, closes = _schedule(*_span_for(years))
        i = np.searchsorted(opens, tn, side="right") - 1      # the last session opened at or before t
        if (i < 0).any():
            raise InputError("a quote time lies before the first session of the exchange calendar")
        close = closes[i]
        out[np.flatnonzero(ok)] = np.where(tn <= close, tn, close)
    res = pd.Series(pd.to_datetime(out, utc=True), index=index)
    return res


def market_time(quote_time: Any) -> pd.Timestamp:
    """The time the prices of a quote were made: ``quote_time`` itself when it falls inside a
    regular NYSE session (open to close, both included; early closes at 13:00), else the close of
    the last session before it (a Saturday download of Friday's quotes: Friday 16:00 New York; a
    17:18 download: 16:00 that day; 08:00 on a Monday: the Friday close before).

    ``quote_time``: anything ``pandas.Timestamp`` reads; naive means New York. Returns a tz-aware
    UTC ``Timestamp`` (NaT for NaT). Raises ``InputError`` outside the calendar's years.
    """
    return market_times([quote_time]).iloc[0]


def in_session(t: Any) -> bool:
    """True when ``t`` (naive = New York) falls inside a regular session, open and close included."""
    ts = _as_utc_index(t)
    return bool(len(ts) == 1 and not ts.isna()[0] and market_times(ts).iloc[0] == ts[0])


def is_session(date: Any) -> bool:
    """True when the calendar date ``date`` is an NYSE session (a weekday that is no exchange holiday)."""
    d = _as_dates(date)
    sessions, _, _ = _schedule(*_span_for(d.year.to_numpy()))
    return bool(d[0] in sessions)


def session_on_or_before(date: Any) -> _dt.date:
    """``date`` itself when it is a session, else the last session before it (an expiry that falls
    on an exchange holiday moves to the session before: Thursday for a Good Friday)."""
    d = _as_dates(date)
    sessions, _, _ = _schedule(*_span_for(np.array([d.year[0] - 1, d.year[0]])))
    i = sessions.searchsorted(d[0], side="right") - 1
    return sessions[i].date()


def previous_session(date: Any) -> _dt.date:
    """The last session strictly before the calendar date ``date``."""
    d = _as_dates(date)
    sessions, _, _ = _schedule(*_span_for(np.array([d.year[0] - 1, d.year[0]])))
    i = sessions.searchsorted(d[0], side="left") - 1
    return sessions[i].date()


def session_bounds(date: Any) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Open and close (tz-aware UTC) of the session on ``date``; ``InputError`` when it is no session."""
    d = _as_dates(date)
    sessions, opens, closes = _schedule(*_span_for(d.year.to_numpy()))
    i = sessions.searchsorted(d[0])
    if i >= len(sessions) or sessions[i] != d[0]:
        raise InputError(f"{d[0].date()} is not an NYSE session (weekend or exchange holiday)")
    return pd.Timestamp(opens[i], tz="UTC"), pd.Timestamp(closes[i], tz="UTC")


def session_date(t: Any) -> _dt.date:
    """The session whose prices a quote taken at ``t`` holds: the New York date of ``market_time(t)``."""
    return market_time(t).tz_convert(NEW_YORK).date()
