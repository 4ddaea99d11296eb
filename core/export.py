"""Bytes for downloads: CSV that a spreadsheet cannot execute, strict JSON, and safe file names.

Everything the app or the command line hands to a user goes through here, so that data taken
from a vendor or an upload (a ticker, a contract symbol, a column name) is never exported back in a
form that a spreadsheet runs as a formula, and a name typed by a user never becomes a path.

CSV injection (OWASP, "CSV Injection", https://owasp.org/www-community/attacks/CSV_Injection):
Excel, LibreOffice and Google Sheets evaluate a cell that starts with ``=``, ``+``, ``-`` or ``@``
(and, via field splitting, a leading tab or carriage return) as a formula, e.g. ``=cmd|' /C calc'!A0``
(DDE) or ``=HYPERLINK(...)``. OWASP's remedy is to prefix such cells with a single quote, which
spreadsheets show as text. ``safe_csv`` applies it, with one exception so that numbers stay
numbers: a cell that is exactly a finite decimal number (``-0.5``, ``+3``, ``-1.2e-05``) is left as it
is, since a spreadsheet reads it as that number and cannot run it. Pure: no Streamlit here.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import re
import unicodedata
from pathlib import PurePath
from typing import Any

import numpy as np
import pandas as pd

from core.errors import InputError

#: first characters that make a spreadsheet cell a formula (OWASP), plus the full-width forms some
#: East-Asian spreadsheet locales fold to them, and a line feed (some importers split on it)
FORMULA_TRIGGERS = frozenset("=+-@\t\r\n\uff1d\uff0b\uff0d\uff20")
#: a cell that is just a finite decimal number: left alone so numeric columns stay numeric
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_FILENAME_OK = re.compile(r"[^A-Za-z0-9._-]+")
_WINDOWS_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                               *(f"LPT{i}" for i in range(1, 10))})
MAX_FILENAME_STEM = 80


def is_formula_like(cell: str) -> bool:
    """True if a text cell would be evaluated by a spreadsheet: its first character, or its first
    character after leading white space, is one of ``FORMULA_TRIGGERS``, and it is not just a finite
    decimal number."""
    if not cell:
        return False
    if _NUMBER.fullmatch(cell.strip()):
        return False
    stripped = cell.lstrip()
    return cell[0] in FORMULA_TRIGGERS or (bool(stripped) and stripped[0] in FORMULA_TRIGGERS)


def neutralise_cell(cell: str) -> str:
    """``cell`` with a leading single quote when ``is_formula_like(cell)`` (OWASP), else unchanged."""
    return "'" + cell if is_formula_like(cell) else cell


def _text_cell(v: Any) -> Any:
    """One cell of a non-numeric column as the text a CSV will hold (None for missing), neutralised."""
    if v is None or v is pd.NaT or v is pd.NA:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, (bytes, bytearray)):
        v = bytes(v).decode("utf-8", errors="replace")
    elif isinstance(v, (pd.Timestamp, _dt.datetime, _dt.date)):
        v = v.isoformat()
    elif not isinstance(v, str):
        v = str(v)
    return neutralise_cell(_SURROGATE.sub("\ufffd", v))


def sanitise_frame(df: pd.DataFrame, *, index: bool = False) -> pd.DataFrame:
    """A copy of ``df`` whose every text cell and column name is neutralised (``neutralise_cell``).

    Numeric and boolean columns stay numeric (finite numbers and NaN cannot be formulas); a
    float column holding ``-inf`` is written as text with ``'-inf``. Datetime columns stay datetimes.
    ``index=True`` turns the index into leading column(s) first.
    """
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"safe_csv needs a pandas DataFrame, got {type(df).__name__}")
    out = df.reset_index() if index else df.copy()
    cols = []
    for i in range(out.shape[1]):
        s = out.iloc[:, i]
        if pd.api.types.is_bool_dtype(s.dtype) or pd.api.types.is_integer_dtype(s.dtype):
            cols.append(s)
        elif pd.api.types.is_float_dtype(s.dtype):
            v = s.to_numpy(dtype=float, na_value=np.nan)
            if np.isneginf(v).any():
                cols.append(pd.Series([_text_cell(repr(float(x))) if np.isinf(x) else (None if np.isnan(x) else x)
                                       for x in v], index=s.index, dtype=object))
            else:
                cols.append(s)
        elif pd.api.types.is_datetime64_any_dtype(s.dtype):
            cols.append(s)
        else:
            cols.append(pd.Series([_text_cell(v) for v in s.tolist()], index=s.index, dtype=object))
    names = [_text_cell(c) if not isinstance(c, tuple) else _text_cell("|".join(map(str, c))) for c in out.columns]
    names = ["" if n is None else n for n in names]
    res = pd.concat(cols, axis=1, ignore_index=True) if cols else pd.DataFrame(index=out.index)
    res.columns = names
    return res


def safe_csv(df: pd.DataFrame, *, index: bool = False, float_format: str | None = None) -> bytes:
    """UTF-8 CSV bytes of ``df`` that no spreadsheet executes (OWASP "CSV Injection").

    Rule: every text cell (and column name) whose first character, or first character after white
    space, is ``= + - @``, tab, CR or LF (or their full-width forms) gets a leading ``'``, unless the
    cell is exactly a finite decimal number such as ``-0.5`` or ``+1e-3``, which spreadsheets read as a
    number. Numeric columns are written as numbers (NaN as an empty cell; ``-inf`` as ``'-inf``).
    Lines end in CRLF and every field holding the separator, a quote, CR or LF is quoted (RFC 4180):
    a bare CR inside a cell would otherwise start a new row in some readers, and with it a formula.
    Characters that UTF-8 cannot encode (lone surrogates) become U+FFFD.
    """
    text = sanitise_frame(df, index=index).to_csv(index=False, lineterminator="\r\n", float_format=float_format)
    return text.encode("utf-8", errors="replace")


def jsonable(obj: Any, _depth: int = 0) -> Any:
    """``obj`` as plain JSON values (the project's one JSON conversion; ``to_json_bytes`` documents it).

    NaN and +-inf become ``None``; numpy scalars and arrays, pandas objects, dates and times,
    timedeltas (seconds), sets (sorted lists), dataclasses (dicts) and paths are converted; dict keys
    become strings; anything else becomes ``str(obj)``. ``ValueError`` beyond 200 levels of nesting.
    """
    if _depth > 200:
        raise ValueError("jsonable: object nested more than 200 levels deep (a cycle?)")
    d = _depth + 1
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (complex, np.complexfloating)):
        return [jsonable(obj.real), jsonable(obj.imag)]
    if obj is pd.NaT or obj is pd.NA:
        return None
    if isinstance(obj, (pd.Timestamp, _dt.datetime, _dt.date, _dt.time)):
        return obj.isoformat()
    if isinstance(obj, (pd.Timedelta, _dt.timedelta)):
        return pd.Timedelta(obj).total_seconds()
    if isinstance(obj, np.datetime64):
        return None if np.isnat(obj) else pd.Timestamp(obj).isoformat()
    if isinstance(obj, np.timedelta64):
        return None if np.isnat(obj) else pd.Timedelta(obj).total_seconds()
    if isinstance(obj, dict):
        return {_key(k): jsonable(v, d) for k, v in obj.items()}
    if isinstance(obj, pd.DataFrame):
        return [jsonable(r, d) for r in obj.to_dict(orient="records")]
    if isinstance(obj, pd.Series):
        return jsonable(obj.tolist(), d)
    if isinstance(obj, pd.Index):
        return jsonable(obj.tolist(), d)
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), d)
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, d) for v in obj]
    if isinstance(obj, (set, frozenset)):
        items = [jsonable(v, d) for v in obj]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=repr)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name), d) for f in dataclasses.fields(obj)}
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj).decode("utf-8", errors="replace")
    if isinstance(obj, np.generic):
        return jsonable(obj.item(), d)
    return str(obj)


def _key(k: Any) -> str:
    v = jsonable(k)
    return v if isinstance(v, str) else json.dumps(v)


def to_json_bytes(obj: Any, *, indent: int | None = 2) -> bytes:
    """Strict JSON (RFC 8259) as UTF-8 bytes, for fit parameters, summaries and settings.

    NaN and +-inf become ``null`` (plain ``json.dumps`` writes ``NaN``, which is not JSON); numpy
    scalars and arrays, pandas Series (lists), DataFrames (lists of records), timestamps (ISO 8601),
    timedeltas (seconds), sets (sorted lists), dataclasses (dicts) and paths are converted; dict keys
    become strings; anything else is written as ``str(obj)``.
    """
    return json.dumps(jsonable(obj), indent=indent, allow_nan=False, ensure_ascii=False).encode(
        "utf-8", errors="replace")


def safe_filename(text: Any, default: str = "download", ext: str | None = None) -> str:
    """A file name made from untrusted ``text`` (a ticker, an upload's name) that is never a path.

    Directories are stripped (both ``/`` and ``\\``), accents folded to ASCII, every run of characters
    outside ``[A-Za-z0-9._-]`` becomes ``_``, leading dots, dashes and underscores are removed (no
    hidden files, no option-like names), the stem is cut to ``MAX_FILENAME_STEM`` characters, and
    Windows device names (CON, NUL, COM1 ...) get a leading ``_``. An empty result falls back to
    ``default`` (itself made safe). ``ext`` (letters and digits only, e.g. ``"csv"``) replaces a
    trailing ``.ext`` already present and is appended.
    """
    ext_clean = re.sub(r"[^A-Za-z0-9]", "", str(ext or ""))[:10]
    stem = _clean_stem(text, ext_clean)
    if not stem:
        stem = _clean_stem(default, ext_clean) or "download"
    return f"{stem}.{ext_clean}" if ext_clean else stem


def _clean_stem(text: Any, ext: str) -> str:
    if text is None:
        return ""
    s = str(text)
    s = re.split(r"[\\/]", s)[-1]
    s = unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode("ascii")
    s = _FILENAME_OK.sub("_", s)
    if ext and s.lower().endswith("." + ext.lower()):
        s = s[: -(len(ext) + 1)]
    s = s.lstrip("._-")[:MAX_FILENAME_STEM].rstrip("._-")
    if s.split(".")[0].upper() in _WINDOWS_RESERVED:
        s = "_" + s
    return s
