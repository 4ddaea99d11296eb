"""The market clock (core.calendar): T runs from the time the prices were made.

The expected times are written out by hand from the NYSE's published calendars (holidays, early
closes at 13:00, the ad hoc closures), never computed with the code under test.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from core.calendar import (
    in_session,
    is_session,
    market_time,
    market_times,
    previous_session,
    session_bounds,
    session_date,
    session_on_or_before,
)
from core.demo import demo_chain, demo_expiries
from core.errors import InputError
from core.quotes import expiry_time, make_quotes, settlement_for

NY = "America/New_York"


def _ny(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz=NY)


@pytest.mark.parametrize("quote, made", [
    # inside the session: the quote time itself (open and close included)
    ("2022-07-12 11:55", "2022-07-12 11:55"),
    ("2022-06-10 09:30", "2022-06-10 09:30"),
    ("2022-06-10 16:00", "2022-06-10 16:00"),
    # after hours: the close of that day
    ("2023-05-26 17:18", "2023-05-26 16:00"),
    ("2025-10-01 19:01", "2025-10-01 16:00"),
    ("2022-06-10 23:59:59", "2022-06-10 16:00"),
    # before the open: the close of the session before
    ("2022-06-10 09:29:59", "2022-06-09 16:00"),
    ("2022-06-13 08:00", "2022-06-10 16:00"),
    ("2022-06-13 00:00", "2022-06-10 16:00"),
    # weekends: Friday's close
    ("2022-06-11 20:47", "2022-06-10 16:00"),
    ("2024-01-07 10:52", "2024-01-05 16:00"),
    ("2023-12-09 13:49", "2023-12-08 16:00"),
])
def test_market_time_weekend_and_after_hours(quote, made):
    assert market_time(_ny(quote)) == _ny(made)
    assert market_time(quote) == _ny(made)          # naive input is New York time


@pytest.mark.parametrize("quote, made", [
    ("2023-04-07 12:00", "2023-04-06 16:00"),   # Good Friday 2023
    ("2026-04-03 12:00", "2026-04-02 16:00"),   # Good Friday 2026
    ("2023-06-19 11:00", "2023-06-16 16:00"),   # Juneteenth (Monday) after a weekend
    ("2023-12-25 10:00", "2023-12-22 16:00"),   # Christmas (Monday)
    ("2023-11-23 15:00", "2023-11-22 16:00"),   # Thanksgiving
    ("2025-01-09 12:00", "2025-01-08 16:00"),   # national day of mourning (President Carter)
    ("2012-10-30 12:00", "2012-10-26 16:00"),   # hurricane Sandy: closed Monday and Tuesday
    ("2022-06-20 10:00", "2022-06-17 16:00"),   # first Juneteenth, observed on Monday 20 June 2022
])
def test_market_time_holidays(quote, made):
    assert market_time(quote) == _ny(made)


@pytest.mark.parametrize("quote, made", [
    ("2023-11-24 14:00", "2023-11-24 13:00"),   # day after Thanksgiving: close at 13:00
    ("2023-11-24 12:59", "2023-11-24 12:59"),
    ("2023-11-24 13:00", "2023-11-24 13:00"),
    ("2023-07-03 15:00", "2023-07-03 13:00"),   # eve of Independence Day
    ("2024-12-24 16:30", "2024-12-24 13:00"),   # Christmas Eve
    ("2024-12-25 12:00", "2024-12-24 13:00"),   # Christmas: the early close the day before
])
def test_market_time_early_close(quote, made):
    assert market_time(quote) == _ny(made)


def test_market_time_across_daylight_saving():
    # 10 March 2024: clocks go forward; Friday's close is 21:00 UTC, Monday's open 13:30 UTC
    assert market_time("2024-03-10 12:00") == pd.Timestamp("2024-03-08 21:00", tz="UTC")
    assert market_time("2024-03-11 09:00") == pd.Timestamp("2024-03-08 21:00", tz="UTC")
    assert market_time(pd.Timestamp("2024-03-11 13:30", tz="UTC")) == pd.Timestamp("2024-03-11 13:30", tz="UTC")
    assert market_time(pd.Timestamp("2024-03-11 13:29", tz="UTC")) == pd.Timestamp("2024-03-08 21:00", tz="UTC")
    # 5 November 2023: clocks go back; Friday's close is 20:00 UTC, Monday's 21:00 UTC
    assert market_time("2023-11-04 10:00") == pd.Timestamp("2023-11-03 20:00", tz="UTC")
    assert market_time("2023-11-06 17:00") == pd.Timestamp("2023-11-06 21:00", tz="UTC")
    # a Saturday time given in another zone (Tokyo) lands on Friday's New York close
    assert market_time(pd.Timestamp("2024-03-09 10:00", tz="Asia/Tokyo")) == pd.Timestamp("2024-03-08 21:00", tz="UTC")
    # T from the weekend close to Monday's 16:00 across the change: 2 days 23 hours
    t = make_quotes(pd.DataFrame({"expiry": ["2024-03-11"], "strike": [100.0], "cp": [1], "bid": [1.0], "ask": [1.1]}),
                    quote_time=_ny("2024-03-09 12:00"))
    assert t["T"].iloc[0] == pytest.approx((2 * 24 + 23) * 3600 / (365 * 86400), abs=1e-12)


def test_market_times_vectorised_and_nat():
    times = pd.Series([pd.Timestamp("2022-06-11 00:47", tz="UTC"), pd.NaT,
                       pd.Timestamp("2022-07-12 15:55", tz="UTC")], index=[5, 6, 7])
    out = market_times(times)
    assert list(out.index) == [5, 6, 7]
    assert out[5] == pd.Timestamp("2022-06-10 20:00", tz="UTC")
    assert pd.isna(out[6])
    assert out[7] == pd.Timestamp("2022-07-12 15:55", tz="UTC")
    assert str(out.dt.tz) == "UTC"


def test_sessions_and_bounds():
    assert not is_session("2023-04-07") and is_session("2023-04-06") and not is_session("2023-04-08")
    assert session_on_or_before("2026-04-03") == dt.date(2026, 4, 2)
    assert session_on_or_before("2026-04-02") == dt.date(2026, 4, 2)
    assert session_on_or_before("2022-06-12") == dt.date(2022, 6, 10)
    assert previous_session("2022-06-13") == dt.date(2022, 6, 10)
    assert previous_session("2022-06-10") == dt.date(2022, 6, 9)
    o, c = session_bounds("2023-11-24")
    assert (o, c) == (_ny("2023-11-24 09:30"), _ny("2023-11-24 13:00"))
    with pytest.raises(InputError, match="not an NYSE session"):
        session_bounds("2023-11-23")
    assert session_date("2024-01-07 10:52") == dt.date(2024, 1, 5)
    assert in_session("2022-07-12 11:55") and not in_session("2022-07-12 16:01") and not in_session("2022-06-11 12:00")


def test_outside_the_calendar_is_refused():
    with pytest.raises(InputError, match="outside the exchange calendar"):
        market_time("1850-01-03 12:00")
    # the far future still has rule-based sessions (Good Friday 2100 is 26 March)
    assert market_time("2100-03-26 12:00") == _ny("2100-03-25 16:00")


@pytest.mark.parametrize("root, day, settle, hhmm", [
    ("SPX", "2025-04-17", "AM", "09:30"),    # Good Friday 18 April 2025 is the third Friday: Thursday, AM
    ("SPXW", "2025-04-17", "PM", "16:00"),   # the weekly of the same Thursday stays PM
    ("SPX", "2022-04-14", "AM", "09:30"),    # Good Friday 15 April 2022
    ("SPX", "2026-06-18", "AM", "09:30"),    # Juneteenth 19 June 2026 is the third Friday
    ("SPX", "2027-06-17", "AM", "09:30"),    # Juneteenth 2027 observed Friday 18 June, the third Friday
    ("NDX", "2025-04-17", "AM", "09:30"),
    ("SPX", "2026-04-16", "PM", "16:00"),    # an ordinary Thursday before an ordinary third Friday
    ("SPX", "2026-04-02", "PM", "16:00"),    # Thursday before Good Friday 2026, which is no third Friday
    ("SPX", "2026-04-17", "AM", "09:30"),
])
def test_settlement_of_holiday_shifted_monthlies(root, day, settle, hhmm):
    d = dt.date.fromisoformat(day)
    assert settlement_for(root, d) == settle
    assert expiry_time(d, settle) == _ny(f"{day} {hhmm}")


def test_demo_uses_the_exchange_calendar():
    # weeklies on Good Friday 2026 (3 April) move to Thursday 2 April
    exp = demo_expiries(dt.date(2026, 3, 27))
    assert dt.date(2026, 4, 3) not in exp and dt.date(2026, 4, 2) in exp
    assert all(is_session(e) for e in exp)


def test_demo_T_runs_from_the_close_on_a_weekend():
    c = demo_chain(asof="2026-06-13 11:00")              # a Saturday
    assert c.asof == _ny("2026-06-13 11:00")
    assert c.market_time == _ny("2026-06-12 16:00")
    q = c.quotes
    want = (q["expiry_time"] - _ny("2026-06-12 16:00")).dt.total_seconds().to_numpy() / (365 * 86400)
    assert np.allclose(q["T"].to_numpy(), want, atol=1e-12)
    # the true model's forwards use the same T: parity of the exact prices holds at the quoted T
    fw = c.meta["forwards"]
    first = q[q["expiry"] == q["expiry"].min()]
    assert fw.table["T"].iloc[0] == pytest.approx(first["T"].iloc[0], abs=1e-12)
