"""Shared reading helpers of the file loaders: bytes in, text out, numbers and times parsed leniently.

Every loader accepts a path (``str`` or ``os.PathLike``), ``bytes``, or a text/binary file-like
(uploads arrive as bytes). A ``str`` containing a line break is taken as the file's content, never
as a path. Nothing here writes to disk, and a user's file name is only ever used in messages.
"""
from __future__ import annotations

import csv
import functools
import io
import os
import re
from typing import Any, Callable

import numpy as np
import pandas as pd

from core.errors import FormatError, InputError
from core.quotes import NEW_YORK, QuoteChain, exercise_style, make_quotes, to_utc

MAX_BYTES = 256 * 1024 * 1024
ENCODINGS = ("utf-8-sig", "latin-1")   # utf-8-sig reads plain utf-8 too; latin-1 never fails

#: option root -> underlying index (weekly / PM / mini roots of one index)
ROOT_UNDERLYING = {"SPXW": "SPX", "SPXPM": "SPX", "SPXQ": "SPX", "NDXP": "NDX", "RUTW": "RUT",
                   "VIXW": "VIX", "XSP": "XSP", "DJX": "DJX"}

_TZ_ABBREV = {"ET": NEW_YORK, "EST": NEW_YORK, "EDT": NEW_YORK, "CT": "America/Chicago",
              "CST": "America/Chicago", "CDT": "America/Chicago", "UTC": "UTC", "GMT": "UTC", "Z": "UTC"}


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
    if s is None:
        return np.nan
    if isinstance(s, (int, float, np.integer, np.floating)):
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


def parse_time(text: str, *, what: str) -> pd.Timestamp:
    """A quote time written by a vendor ('Jan 24 2011 @ 14:03 ET', 'February 5 2022, 8:09 PM EST',
    ISO with an offset) as tz-aware UTC; a trailing zone abbreviation (ET, EST, EDT, CT, UTC) is
    honoured, no zone means New York. Raises ``FormatError`` naming ``what``.
    """
    s = str(text).strip().strip('"').strip()
    s = re.sub(r"^(date|as of|asof|quote time)\s*:?\s*", "", s, flags=re.I)
    tz = None
    m = re.search(r"\s+([A-Z]{1,4})$", s)
    if m and m.group(1) in _TZ_ABBREV:
        tz = _TZ_ABBREV[m.group(1)]
        s = s[: m.start()]
    s = s.replace(" @ ", " ").replace(" at ", " ")
    s = re.sub(r"(\d{4}),", r"\1", s)     # "February 5 2022, 8:09 PM"
    s = re.sub(r"(\d),\s*(\d{4})", r"\1 \2", s)  # "February 5, 2022"
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
    if spot is None:
        return None
    try:
        v = float(spot)
    except (TypeError, ValueError):
        raise InputError(f"spot {spot!r} is not a number; give the underlying's price, or leave it to parity") from None
    if not (np.isfinite(v) and v > 0):
        raise InputError(f"spot must be a positive number, got {spot!r}")
    return v


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
