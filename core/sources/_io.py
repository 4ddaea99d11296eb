"""Shared reading helpers of the file loaders: bytes in, text out, numbers and times parsed leniently.

Every loader accepts a path (``str`` or ``os.PathLike``), ``bytes``, or a text/binary file-like
(uploads arrive as bytes). A ``str`` containing a line break is taken as the file's content, never
as a path. Nothing here writes to disk, and a user's file name is only ever used in messages.
"""
from __future__ import annotations

import csv
import datetime as _dt
import functools
import io
import math
import os
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd

from core.calendar import market_time, previous_session
from core.errors import FormatError, InputError, optional_number
from core.quotes import NEW_YORK, QuoteChain, exercise_style, make_quotes, to_utc

MAX_BYTES = 256 * 1024 * 1024
ENCODINGS = ("utf-8-sig", "latin-1")   # utf-8-sig reads plain utf-8 too; latin-1 never fails

#: option root -> underlying index (weekly / PM / mini roots of one index)
ROOT_UNDERLYING = {"SPXW": "SPX", "SPXPM": "SPX", "SPXQ": "SPX", "NDXP": "NDX", "RUTW": "RUT",
                   "VIXW": "VIX", "XSP": "XSP", "DJX": "DJX"}



def read_bytes(src: Any, *, what: str = "file") -> bytes:
    """The raw bytes of ``src`` (path, bytes, or text/binary file-like); ``FormatError`` if unreadable."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    elif isinstance(src, str) and ("\n" in src or "\r" in src):
        data = src.encode("utf-8")
    elif isinstance(src, (str, os.PathLike)):
        try:
            size = os.path.getsize(src)
            if size > MAX_BYTES:
                raise FormatError(f"the {what} is {size / 1e6:.0f} MB, more than the {MAX_BYTES / 1e6:.0f} MB "
                                  "a quote file can be; pass a smaller file")
            with open(src, "rb") as fh:
                data = fh.read()
        except FormatError:
            raise
        except (OSError, ValueError) as exc:
            raise FormatError(f"cannot open the {what} {os.fspath(src)!r}: {exc.__class__.__name__}: {exc}") from None
    elif hasattr(src, "read"):
        try:
            data = src.read()
        except (OSError, ValueError, UnicodeError) as exc:
            raise FormatError(f"cannot read the {what}: {exc}") from None
        if isinstance(data, str):
            data = data.encode("utf-8")
        elif not isinstance(data, (bytes, bytearray)):
            raise FormatError(f"reading the {what} gave {type(data).__name__}, not text or bytes")
        data = bytes(data)
    else:
        raise InputError(f"a quote file must be a path, bytes or a file object, got {type(src).__name__}")
    if len(data) > MAX_BYTES:
        raise FormatError(f"the {what} is larger than {MAX_BYTES / 1e6:.0f} MB; pass a smaller file")
    return data


def decode(data: bytes, *, what: str = "file") -> str:
    """Bytes to text: UTF-16 with a byte-order mark, else utf-8 (with or without BOM), else latin-1.

    Raises ``FormatError`` for empty or binary content (NUL bytes, as in zip, xlsx or images).
    """
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            text = data.decode("utf-16")
        except UnicodeError:
            raise FormatError(f"the {what} looks like UTF-16 text but does not decode; save it as UTF-8 CSV") from None
    else:
        if b"\x00" in data[:65536]:
            kind = "a zip or Excel workbook" if data[:2] == b"PK" else "binary data"
            raise FormatError(f"the {what} is {kind}, not a CSV text file; export it as CSV and try again")
        text = None
        for enc in ENCODINGS:
            try:
                text = data.decode(enc)
                break
            except UnicodeDecodeError:
                continue
        assert text is not None  # latin-1 decodes anything
    if not text.strip():
        raise FormatError(f"the {what} is empty")
    return text


def read_text(src: Any, *, what: str = "file") -> str:
    """``decode(read_bytes(src))``: the text of a path, bytes or file-like."""
    return decode(read_bytes(src, what=what), what=what)


def split_lines(text: str) -> list[str]:
    """Lines without their endings (CRLF, LF or CR)."""
    return text.splitlines()


def csv_rows(lines: list[str]) -> list[list[str]]:
    """CSV fields of each line (quotes honoured), whitespace-stripped, trailing empty fields kept."""
    try:
        return [[f.strip() for f in row] for row in csv.reader(lines)]
    except csv.Error as exc:
        raise FormatError(f"the CSV could not be split into fields: {exc}") from None


_NUM_JUNK = re.compile(r"[,$%\s]")


def number(s: Any) -> float:
    """A lenient float: '', 'N/A', '-', '--' give NaN; thousands separators and '$' are ignored."""
    if isinstance(s, str):
        try:                       # the common case, a plain number: no clean-up needed
            v = float(s)
        except ValueError:
            pass
        else:
            return v if math.isfinite(v) else np.nan
    elif s is None:
        return np.nan
    elif isinstance(s, (int, float, np.integer, np.floating)):
        return float(s)
    t = _NUM_JUNK.sub("", str(s))
    if t in ("", "-", "--", "N/A", "NA", "n/a", "nan", "NaN", "null", "None"):
        return np.nan
    try:
        v = float(t)
    except ValueError:
        return np.nan
    return v if np.isfinite(v) else np.nan


def numbers(values: Any) -> np.ndarray:
    """``number`` over a sequence or Series, as a float array."""
    if isinstance(values, pd.Series) and pd.api.types.is_numeric_dtype(values):
        out = values.to_numpy(dtype=float, na_value=np.nan)
        return np.where(np.isfinite(out), out, np.nan)
    return np.array([number(v) for v in values], dtype=float)


# ------------------------------------------------------------------------------ vendor date lines
#: month names (full, and genitive where a language declines them) in English, German, French,
#: Spanish, Italian, Portuguese and Russian; abbreviations are their unique prefixes of 3+ letters
MONTH_NAMES: dict[int, tuple[str, ...]] = {
    1: ("january", "januar", "jänner", "janvier", "enero", "gennaio", "janeiro", "январь", "января"),
    2: ("february", "februar", "février", "febrero", "febbraio", "fevereiro", "февраль", "февраля"),
    3: ("march", "märz", "maerz", "mars", "marzo", "março", "март", "марта"),
    4: ("april", "avril", "abril", "aprile", "апрель", "апреля"),
    5: ("may", "mai", "mayo", "maggio", "maio", "май", "мая"),
    6: ("june", "juni", "juin", "junio", "giugno", "junho", "июнь", "июня"),
    7: ("july", "juli", "juillet", "julio", "luglio", "julho", "июль", "июля"),
    8: ("august", "août", "agosto", "август", "августа"),
    9: ("september", "septembre", "septiembre", "setiembre", "settembre", "setembro", "сентябрь", "сентября"),
    10: ("october", "oktober", "octobre", "octubre", "ottobre", "outubro", "октябрь", "октября"),
    11: ("november", "novembre", "noviembre", "novembro", "ноябрь", "ноября"),
    12: ("december", "dezember", "décembre", "diciembre", "dicembre", "dezembro", "декабрь", "декабря"),
}
#: words a date line may carry that say nothing about the date: "at", "um", "à", "de", "г." (year), "в" (at)
_NOISE = frozenset({"at", "on", "of", "the", "um", "den", "der", "a", "à", "as", "às", "las", "la", "le", "el",
                    "alle", "de", "del", "du", "y", "г", "года", "год", "в", "o", "om", "uhr"})
_WEEKDAYS = frozenset("""monday tuesday wednesday thursday friday saturday sunday mon tue tues wed thu thur thurs
    fri sat sun montag dienstag mittwoch donnerstag freitag samstag sonntag lundi mardi mercredi jeudi vendredi
    samedi dimanche lunes martes miércoles jueves viernes sábado domingo lunedì martedì mercoledì giovedì
    venerdì sabato domenica segunda terça quarta quinta sexta feira понедельник вторник среда четверг пятница
    суббота воскресенье пн вт ср чт пт сб вс""".split())
#: zone abbreviations: ET/CT (no season) follow the place's rules; EST, EDT, ... are fixed offsets
_TZ_ABBREV: dict[str, Any] = {"et": NEW_YORK, "ct": "America/Chicago", "mt": "America/Denver",
                              "pt": "America/Los_Angeles", "utc": "UTC", "gmt": "UTC", "z": "UTC",
                              "est": -5, "edt": -4, "cst": -6, "cdt": -5, "mst": -7, "mdt": -6, "pst": -8,
                              "pdt": -7, "bst": 1, "cet": 1, "cest": 2, "msk": 3}
_TIME_RE = re.compile(r"(?<![\d:])(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
                      r"(?:\s*([ap])\.?\s?m\.?(?![^\W\d_]))?")
_OFFSET_RE = re.compile(r"(?<![^\W\d_])(?:gmt|utc)\s*([+\-\u2212])\s*(\d{1,2})(?::?(\d{2}))?(?!\d)")


def _fold(word: str) -> str:
    """Lower case without accents (é -> e, ä -> a; Cyrillic й -> и, consistently on both sides)."""
    return "".join(c for c in unicodedata.normalize("NFD", word.casefold()) if not unicodedata.combining(c))


_MONTH_FOLDED = {_fold(n): m for m, names in MONTH_NAMES.items() for n in names}
_NOISE_FOLDED = frozenset(_fold(w) for w in _NOISE)
_WEEKDAYS_FOLDED = frozenset(_fold(w) for w in _WEEKDAYS)


def month_of(word: str) -> int | None:
    """The month (1-12) a month name or abbreviation names in one of ``MONTH_NAMES``' languages, else None.

    An abbreviation (3+ letters, trailing dot allowed: ``Sept.``, ``janv.``, ``дек``) must be the prefix
    of names of one month only (``jui`` is juin or juillet: None).
    """
    w = _fold(word).rstrip(".")
    if w in _MONTH_FOLDED:
        return _MONTH_FOLDED[w]
    if len(w) < 3 or not w.isalpha():
        return None
    hits = {m for name, m in _MONTH_FOLDED.items() if name.startswith(w)}
    return hits.pop() if len(hits) == 1 else None


@dataclass(frozen=True)
class VendorTime:
    """A vendor's date line taken apart (``read_vendor_time``).

    ``year`` is None when the line has no readable four-digit year (``year_text`` then holds what
    stood there, '' if nothing); ``hour`` is None when the line has no time of day; ``tz`` a zone
    name or a ``datetime.timezone`` (New York when the line names none).
    """

    text: str
    year: int | None
    month: int
    day: int
    hour: int | None
    minute: int
    second: float
    tz: Any
    year_text: str = ""

    def at(self, year: int | None = None) -> pd.Timestamp:
        """The time as tz-aware UTC, in ``year`` (default: the line's own); ``FormatError`` when the
        line lacks a year or a time of day, or names no real date."""
        y = self.year if year is None else year
        if y is None:
            raise FormatError("it has no year")
        if self.hour is None:
            raise FormatError("it has a date but no time of day")
        try:
            naive = _dt.datetime(y, self.month, self.day, self.hour, self.minute, int(self.second),
                                 int(round((self.second % 1) * 1e6)))
        except ValueError as exc:
            raise FormatError(f"it names no real date ({exc})") from None
        ts = pd.Timestamp(naive)
        if isinstance(self.tz, str):
            ts = ts.tz_localize(self.tz, ambiguous=True, nonexistent="shift_forward")
        else:
            ts = ts.tz_localize(self.tz)
        return ts.tz_convert("UTC")


def read_vendor_time(text: str) -> VendorTime | None:
    """Take apart a date line with a month name, as vendors and browsers write them in several languages:
    ``June 11, 2022, 8:47 PM EDT``, ``January 7, 2024 at 10:52 AM EST``, ``26 May 2023, 5:18 PM EDT``,
    ``9 декабря 2023 г. в 13:49 GMT-5``, ``Jan 24 2011 @ 14:03 ET``, ``4 June 4, 3:15 PM EDT`` (no
    year: ``year`` None, ``year_text`` '4').

    Order: day before or after the month; a leading ``Date:`` is ignored; times ``H:MM[:SS[.f]]`` with
    an optional AM/PM; zones ``GMT+-H[:MM]``/``UTC+-H`` or an abbreviation (``_TZ_ABBREV``; none = New
    York). Returns None when the text has no month name (numeric and ISO dates are pandas' job).
    Raises ``FormatError`` (the reason alone, without the text) when it has one but the rest does not
    read as one date and time.
    """
    raw = str(text).strip().strip('"').strip()
    if not any(month_of(w) is not None for w in re.findall(r"[^\W\d_]+\.?", raw)):
        return None
    s = re.sub(r"^\s*(date|as of|asof|quote time|дата|datum|fecha|data)\s*:\s*", "", raw, flags=re.I)
    s = s.casefold().replace("\u2212", "-")
    hour = None
    minute, second = 0, 0.0
    m = _TIME_RE.search(s)
    if m:
        hour, minute = int(m.group(1)), int(m.group(2))
        second = float(f"{m.group(3) or 0}.{m.group(4) or 0}")
        if m.group(5):
            if not 1 <= hour <= 12:
                raise FormatError(f"{m.group(0).strip()!r} is not a time of day")
            hour = hour % 12 + (12 if m.group(5) == "p" else 0)
        if hour > 23 or minute > 59 or second >= 61:
            raise FormatError(f"{m.group(0).strip()!r} is not a time of day")
        s = s[: m.start()] + " " + s[m.end():]
    tz: Any = None
    m = _OFFSET_RE.search(s)
    if m:
        sign = -1 if m.group(1) in "-\u2212" else 1
        hours, mins = int(m.group(2)), int(m.group(3) or 0)
        if hours > 14 or mins > 59:
            raise FormatError(f"{m.group(0)!r} is not a time-zone offset")
        tz = _dt.timezone(sign * _dt.timedelta(hours=hours, minutes=mins))
        s = s[: m.start()] + " " + s[m.end():]
    words = [w for w in re.split(r"[\s,;@()]+", s) if w]
    month = None
    before: list[str] = []
    after: list[str] = []
    for w in words:
        bare = w.rstrip(".")
        fw = _fold(bare)
        if tz is None and fw in _TZ_ABBREV:
            v = _TZ_ABBREV[fw]
            tz = v if isinstance(v, str) else _dt.timezone(_dt.timedelta(hours=v))
            continue
        num = re.fullmatch(r"(\d{1,4})(?:st|nd|rd|th|er|e|º|°|г)?", bare)
        if num:
            (before if month is None else after).append(num.group(1))
            continue
        if fw in _NOISE_FOLDED or fw in _WEEKDAYS_FOLDED or fw.endswith("-feira"):
            continue
        mo = month_of(bare)
        if mo is not None and month is None:
            month = mo
            continue
        raise FormatError(f"the word {w!r} is neither a month, a weekday nor a time zone")
    if month is None:
        return None
    nums = before + after
    if len(nums) > 2 or not nums:
        raise FormatError(f"it does not read as day, month and year ({len(nums)} numbers besides the time)")
    years = [x for x in nums if len(x) == 4]
    if len(years) > 1:
        raise FormatError("it has two years")
    if years:
        year: int | None = int(years[0])
        rest = [x for x in nums if x != years[0]] if nums.count(years[0]) == 1 else [years[0]]
        if len(rest) != 1:
            raise FormatError("it has a year but no day of the month")
        day, year_text = int(rest[0]), years[0]
    else:
        # no four-digit year: the day is the number next to the month on the side the day stands
        # ("4 June 4": before; "June 4 23": after); what is left is not a year we read
        year = None
        if before:
            day, year_text = int(before[0]), (after[0] if after else "")
        else:
            day, year_text = int(after[0]), (after[1] if len(after) > 1 else "")
    if not 1 <= day <= 31:
        raise FormatError(f"{day} is not a day of the month")
    return VendorTime(text=raw, year=year, month=month, day=day, hour=hour, minute=minute, second=second,
                      tz=tz if tz is not None else NEW_YORK, year_text=year_text)


def parse_time(text: str, *, what: str) -> pd.Timestamp:
    """A quote time written by a vendor as tz-aware UTC.

    Month-name dates in several languages go through ``read_vendor_time`` ('Jan 24 2011 @ 14:03 ET',
    'February 5 2022, 8:09 PM EST', '26 May 2023, 5:18 PM EDT', '9 декабря 2023 г. в 13:49 GMT-5'):
    a year and a time of day are required. Anything else (ISO with an offset, '2026-06-15 10:30') is
    read by pandas; a trailing zone abbreviation is honoured, no zone means New York.
    Raises ``FormatError`` naming ``what``.
    """
    try:
        parts = read_vendor_time(text)
        if parts is not None:
            return parts.at()
    except FormatError as exc:
        raise FormatError(f"cannot read the {what} {str(text).strip()!r}: {exc}") from None
    s = str(text).strip().strip('"').strip()
    s = re.sub(r"^(date|as of|asof|quote time)\s*:?\s*", "", s, flags=re.I)
    tz = None
    m = re.search(r"\s+([A-Za-z]{1,4})$", s)
    if m and m.group(1).lower() in _TZ_ABBREV:
        v = _TZ_ABBREV[m.group(1).lower()]
        tz = v if isinstance(v, str) else _dt.timezone(_dt.timedelta(hours=v))
        s = s[: m.start()]
    try:
        ts = pd.Timestamp(s)
    except (ValueError, TypeError, OverflowError) as exc:
        raise FormatError(f"cannot read the {what} {text!r} as a date and time ({exc})") from None
    if ts is pd.NaT or pd.isna(ts):
        raise FormatError(f"cannot read the {what} {text!r} as a date and time")
    if ts.tzinfo is None:
        try:
            ts = ts.tz_localize(tz or NEW_YORK, ambiguous=True, nonexistent="shift_forward")
        except (ValueError, TypeError) as exc:
            raise FormatError(f"cannot place the {what} {text!r} in a time zone ({exc})") from None
    return ts.tz_convert("UTC")


# --------------------------------------------------------------- what a file says vs what it implies
#: the nearest expiry of a real chain is never this far after its quote time (LEAPS reach about 6 years):
#: a quote time further off than this is misread (a year read as 2004 for 2023)
MAX_NEAREST_EXPIRY_YEARS = 10.0
#: a whole chain lists an expiry within a week of its quote date (weeklies, dailies); used only to
#: infer a missing year, never to change a year the file states
YEAR_INFERENCE_DAYS = 7
#: a spot is believed when ``|ln(F / S)| <= SPOT_TOL_BASE + SPOT_TOL_CARRY * T`` for the parity
#: forward ``F`` of the nearest expiry: 2% for quote noise and an index's last print, plus a carry
#: ``|r - q|`` of up to 10% a year
SPOT_TOL_BASE, SPOT_TOL_CARRY = 0.02, 0.10


def _expiry_summary(quotes: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    ok = quotes["expiry"].notna() & quotes["expiry_time"].notna()
    return quotes.loc[ok, "expiry"], quotes.loc[ok, "expiry_time"]


def clock_problem(quotes: pd.DataFrame, quote_time: pd.Timestamp, *, listed_expired: bool = True) -> str | None:
    """Why a quote time contradicts the expiries of its own quote table, or None when it does not.

    Refused: every expiry at or before the market time (``core.calendar.market_time``); the nearest
    expiry more than ``MAX_NEAREST_EXPIRY_YEARS`` after it. With ``listed_expired`` (a vendor's
    download, which lists at most the expiry that ended in the last session): the first listed expiry
    before the session before the quotes' session (the quote date must be on or before the first
    listed expiry, or one session after it).
    """
    exp, etime = _expiry_summary(quotes)
    if exp.empty:
        return None
    mt = market_time(quote_time)
    session = mt.tz_convert(NEW_YORK).date()
    first, last = exp.min().date(), exp.max().date()
    if (etime <= mt).all():
        span = f"{first}" if first == last else f"{first} to {last}"
        return f"every expiry in the file ({span}) ended before the quotes' session of {session}"
    years = (first - session).days / 365.25
    if years > MAX_NEAREST_EXPIRY_YEARS:
        return f"the nearest expiry, {first}, is {years:.0f} years after it"
    if listed_expired and first < previous_session(session):
        return (f"the file lists the expiry {first}, which ended before the session before {session}, "
                f"so the quotes cannot be of {session}")
    return None


def infer_year(parts: VendorTime, quotes: pd.DataFrame) -> tuple[int | None, list[int]]:
    """The year of a date line that lacks one, from the expiries of its file.

    A year is a candidate when, with it, the quote date is at most ``YEAR_INFERENCE_DAYS`` before the
    first listed expiry and ``clock_problem`` finds nothing (the quote date not after the first listed
    expiry, apart from the one that ended in the last session). Returns ``(year, candidates)``: the year
    only when exactly one candidate exists (then it is unambiguous), else ``(None, candidates)``.
    """
    exp, _ = _expiry_summary(quotes)
    if exp.empty:
        return None, []
    first = exp.min().date()
    hits = []
    for y in (first.year - 1, first.year, first.year + 1):
        try:
            t = parts.at(y)
            d = _dt.date(y, parts.month, parts.day)
        except (FormatError, ValueError):
            continue
        if (first - d).days <= YEAR_INFERENCE_DAYS and clock_problem(quotes, t) is None:
            hits.append(y)
    return (hits[0] if len(hits) == 1 else None), hits


def parity_forward(quotes: pd.DataFrame, quote_time: pd.Timestamp, *, min_T: float = 1.0 / 365.0,
                   n_strikes: int = 3) -> dict | None:
    """A rough put-call-parity forward of the nearest expiry at least ``min_T`` years after the market
    time, to check a spot read from a file: ``F = K + (C - P)`` (discount taken as 1, an error of
    ``r T`` times ``C - P``, small where calls and puts cost the same) at the ``n_strikes`` strikes
    with the smallest ``|C - P|``, median over them; mids of two-sided quotes (``0 <= bid <= ask``,
    ``ask > 0``). Returns ``{"expiry", "T", "forward", "n_pairs"}`` or None when no expiry has two
    such pairs (the three nearest are tried).
    """
    q = quotes
    mt = market_time(quote_time)
    bid, ask = q["bid"].to_numpy(dtype=float), q["ask"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        good = np.isfinite(bid) & np.isfinite(ask) & (bid >= 0) & (ask > 0) & (ask >= bid) & q["expiry_time"].notna().to_numpy()
    if not good.any():
        return None
    g = q.loc[good, ["expiry", "expiry_time", "strike", "cp"]].copy()
    g["mid"] = 0.5 * (bid[good] + ask[good])
    g["T"] = year_fraction_from(mt, g["expiry_time"])
    g = g[g["T"] >= min_T]
    for et in sorted(g["expiry_time"].unique())[:3]:
        e = g[g["expiry_time"] == et]
        calls = e[e["cp"] > 0].drop_duplicates("strike").set_index("strike")["mid"]
        puts = e[e["cp"] < 0].drop_duplicates("strike").set_index("strike")["mid"]
        both = calls.index.intersection(puts.index)
        if len(both) < 2:
            continue
        diff = (calls[both] - puts[both])
        near = diff.abs().sort_values().index[:n_strikes]
        F = float(np.median(near.to_numpy(dtype=float) + diff[near].to_numpy(dtype=float)))
        if not (np.isfinite(F) and F > 0):
            continue
        return {"expiry": str(pd.Timestamp(e["expiry"].iloc[0]).date()), "T": float(e["T"].iloc[0]),
                "forward": F, "n_pairs": int(len(both))}
    return None


def year_fraction_from(start: pd.Timestamp, end: pd.Series) -> np.ndarray:
    """ACT/365 years from one time to each of a Series of tz-aware times."""
    return ((pd.to_datetime(end, utc=True) - start).dt.total_seconds() / (365.0 * 86400.0)).to_numpy(dtype=float)


def spot_problem(spot: float, check: dict | None) -> str | None:
    """Why ``spot`` disagrees with the parity forward ``check`` (``parity_forward``), or None."""
    if check is None or spot is None:
        return None
    gap = float(np.log(check["forward"] / spot))
    tol = SPOT_TOL_BASE + SPOT_TOL_CARRY * check["T"]
    if abs(gap) <= tol:
        return None
    return (f"the spot {spot:g} is {100 * (np.exp(gap) - 1):+.1f}% away from the put-call-parity forward "
            f"{check['forward']:.6g} of the nearest expiry {check['expiry']} (at most {100 * tol:.1f}% expected)")


def user_asof(asof: Any) -> pd.Timestamp | None:
    """The ``asof`` argument as tz-aware UTC (naive = New York), or None; ``InputError`` if unreadable."""
    if asof is None:
        return None
    try:
        ts = to_utc(asof)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"asof {asof!r} is not a date and time ({exc}); give e.g. '2026-06-15 10:30' (New York)") from None
    if pd.isna(ts):
        raise InputError(f"asof {asof!r} is not a date and time; give e.g. '2026-06-15 10:30' (New York)")
    return ts


def user_spot(spot: Any) -> float | None:
    """The ``spot`` argument as a positive float, or None; ``InputError`` otherwise."""
    return optional_number("spot", spot, positive=True,
                           hint="give the underlying's price, or leave it out to use put-call parity")


def underlying_of(root: str) -> str:
    """The underlying of an option root: SPXW -> SPX, NDXP -> NDX; equities' roots as they are."""
    r = str(root or "").upper()
    return ROOT_UNDERLYING.get(r, r)


def chain_exercise(underlying: str, roots: Any = ()) -> str:
    """'european' or 'american' for a chain: European if any of its roots is (``core.quotes.exercise_style``)."""
    return "european" if any(exercise_style(underlying, r) == "european" for r in (list(roots) or [None])) else "american"


def build_chain(rows: pd.DataFrame, *, underlying: str, asof: pd.Timestamp, source: str,
                spot: float | None, spot_time: pd.Timestamp | None = None, meta: dict | None = None,
                exercise: str | None = None) -> QuoteChain:
    """``make_quotes`` + ``QuoteChain`` for a loader; empty tables raise ``FormatError``."""
    if len(rows) == 0:
        raise FormatError(f"the {source} file holds no option quotes")
    q = make_quotes(rows, quote_time=asof, underlying=underlying, source=source)
    roots = sorted(set(q["root"]))
    return QuoteChain(quotes=q, underlying=underlying, asof=asof, source=source, spot=spot,
                      spot_time=spot_time if spot is not None else None,
                      exercise=exercise or chain_exercise(underlying, roots), meta=meta or {})


_EXPECTED = (StopIteration, ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError,
             csv.Error, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeError)


def guarded(fmt: str) -> Callable:
    """Decorator: any unexpected parsing error inside a reader becomes a ``FormatError`` naming ``fmt``
    (``InputError`` and its subclasses pass through unchanged)."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except InputError:
                raise
            except _EXPECTED as exc:
                raise FormatError(f"this does not read as a {fmt} file: {exc.__class__.__name__}: {exc}") from None
        return wrapper
    return deco


def write_out(text: str, dst: Any) -> Any:
    """Write ``text`` to ``dst``: a path (written as UTF-8), a text or binary file-like, or None to
    return the UTF-8 bytes. Returns ``dst`` (or the bytes)."""
    data = text.encode("utf-8")
    if dst is None:
        return data
    if isinstance(dst, (str, os.PathLike)):
        with open(dst, "wb") as fh:
            fh.write(data)
        return dst
    if isinstance(dst, io.TextIOBase):
        dst.write(text)
        return dst
    try:
        dst.write(data)
    except TypeError:
        dst.write(text)
    return dst


def fmt_num(x: Any) -> str:
    """A float for a CSV field: shortest exact repr, '' for NaN, integers without '.0'."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return ""
    if not np.isfinite(v):
        return ""
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def iso_or_none(t: Any) -> str | None:
    """A timestamp as ISO 8601 text (so that ``meta`` stays JSON-able), or None."""
    return None if t is None or pd.isna(t) else pd.Timestamp(t).isoformat()
