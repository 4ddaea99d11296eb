"""core.export: CSV that no spreadsheet executes (OWASP "CSV Injection"), strict JSON, safe file names."""
from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import InputError
from core.export import (
    FORMULA_TRIGGERS,
    MAX_FILENAME_STEM,
    is_formula_like,
    safe_csv,
    safe_filename,
    to_json_bytes,
)

PAYLOADS = [
    "=cmd|' /C calc'!A0",
    "=HYPERLINK(\"http://evil.example\",\"click\")",
    "+1+1",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
    "\n=1+1",
    "  =1+1",
    "\uff1d1+1",
    "-inf",
    "-",
    "=",
]


def _cells(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def _executable(cell: str) -> bool:
    """What a spreadsheet would evaluate: the first (or first non-blank) character is a trigger,
    and the cell is not a plain number. Written independently of core.export on purpose."""
    if not cell:
        return False
    try:
        float(cell.strip())
        if cell.strip().lower().lstrip("+-") not in ("inf", "infinity", "nan"):
            return False
    except ValueError:
        pass
    s = cell.lstrip()
    return cell[0] in "=+-@\t\r\n\uff1d\uff0b\uff0d\uff20" or (bool(s) and s[0] in "=+-@\uff1d\uff0b\uff0d\uff20")


@pytest.mark.parametrize("payload", PAYLOADS)
def test_formula_payloads_are_quoted(payload):
    df = pd.DataFrame({"symbol": [payload, "SPX"], "strike": [4000.0, -0.5]})
    rows = _cells(safe_csv(df))
    assert rows[0] == ["symbol", "strike"]
    assert rows[1][0] == "'" + payload
    assert rows[2] == ["SPX", "-0.5"]


def test_numbers_stay_numbers_in_text_and_numeric_columns():
    df = pd.DataFrame({"txt": ["-0.5", "+3", "-1.2e-05", "1e10", "-12"], "x": [-0.5, 3.0, -1.2e-5, 1e10, -12.0]})
    rows = _cells(safe_csv(df))[1:]
    assert [r[0] for r in rows] == ["-0.5", "+3", "-1.2e-05", "1e10", "-12"]
    back = pd.read_csv(io.BytesIO(safe_csv(df)))
    np.testing.assert_array_equal(back["x"].to_numpy(), df["x"].to_numpy())


def test_column_names_and_index_are_neutralised():
    df = pd.DataFrame({"=evil()": [1.0]}, index=pd.Index(["@x"], name="+name"))
    rows = _cells(safe_csv(df, index=True))
    assert rows[0] == ["'+name", "'=evil()"]
    assert rows[1] == ["'@x", "1.0"]


def test_negative_infinity_and_nan():
    df = pd.DataFrame({"x": [-np.inf, np.inf, np.nan, 1.5]})
    rows = _cells(safe_csv(df))
    assert [r[0] for r in rows[1:]] == ["'-inf", "inf", "", "1.5"]


def test_mixed_object_bytes_and_timestamps():
    df = pd.DataFrame({"o": [b"=x", pd.Timestamp("2026-01-02", tz="UTC"), None, 3, -4.0, ["-a"]]})
    rows = [r[0] for r in _cells(safe_csv(df))[1:]]
    assert rows == ["'=x", "2026-01-02T00:00:00+00:00", "", "3", "-4.0", "['-a']"]


def test_lone_surrogate_does_not_crash():
    data = safe_csv(pd.DataFrame({"s": pd.Series(["a\ud800b"], dtype=object)}))
    assert data.decode("utf-8") == "s\r\na\ufffdb\r\n"


def test_not_a_frame():
    with pytest.raises(InputError, match="DataFrame"):
        safe_csv([["=1"]])


def test_empty_frames():
    assert safe_csv(pd.DataFrame()).decode() in ("\r\n", '""\r\n', "")
    assert _cells(safe_csv(pd.DataFrame({"a": []}))) == [["a"]]


# ----------------------------------------------------------------------------- Hypothesis
_texts = st.one_of(
    st.text(max_size=20),
    st.sampled_from(PAYLOADS),
    st.builds(lambda c, t: c + t, st.sampled_from(sorted(FORMULA_TRIGGERS) + [" ", "'", '"']), st.text(max_size=10)),
    st.from_regex(r"[+-]?\d{1,4}(\.\d{0,3})?([eE][+-]?\d{1,2})?", fullmatch=True),
)


@given(st.lists(st.lists(st.one_of(_texts, st.none()), min_size=2, max_size=2), min_size=0, max_size=8),
       st.lists(_texts, min_size=2, max_size=2, unique=True))
def test_property_no_executable_cell(rows, names):
    df = pd.DataFrame(rows, columns=names) if rows else pd.DataFrame({n: [] for n in names})
    parsed = _cells(safe_csv(df))
    assert len(parsed) == len(rows) + 1, "every row (and the header) comes back, line breaks included"
    for r_in, r_out in zip([names] + rows, parsed, strict=True):
        assert len(r_out) == 2
        for v_in, v_out in zip(r_in, r_out, strict=True):
            assert not _executable(v_out), (v_in, v_out)
            if v_in is None:
                assert v_out == ""
            else:
                # nothing is lost: the cell is the original, or the original behind one quote
                expect = v_in.replace("\ud800", "\ufffd")
                assert v_out in (expect, "'" + expect)
                assert (v_out != expect) == is_formula_like(v_in)


@given(st.lists(st.one_of(st.floats(allow_infinity=False, allow_nan=True, width=64),
                          st.integers(-10**12, 10**12).map(float)), min_size=1, max_size=30))
def test_property_numeric_round_trip(values):
    df = pd.DataFrame({"x": values, "sym": ["-SPX" if v and v < 0 else "SPX" for v in values]})
    back = pd.read_csv(io.BytesIO(safe_csv(df)))
    np.testing.assert_array_equal(back["x"].to_numpy(dtype=float), np.asarray(values, dtype=float))


@given(st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**18, 10**18), st.floats(), st.text(max_size=8),
              st.sampled_from([np.float64("nan"), np.float32(1.5), np.int64(3), np.bool_(True),
                               pd.Timestamp("2026-01-02", tz="UTC"), pd.NaT, np.datetime64("NaT")])),
    lambda ch: st.one_of(st.lists(ch, max_size=4), st.dictionaries(st.one_of(st.text(max_size=5), st.integers()), ch, max_size=4),
                         st.lists(st.floats(), max_size=5).map(np.asarray)),
    max_leaves=20))
def test_property_json_strict(obj):
    data = to_json_bytes(obj)

    def strict(c):
        raise ValueError(f"non-standard JSON constant {c}")

    json.loads(data.decode("utf-8"), parse_constant=strict)


def test_json_types():
    obj = {"a": np.array([1.0, np.nan, np.inf]), "b": pd.Series([1, 2]), 3: {np.int64(1): pd.NaT},
           "df": pd.DataFrame({"x": [1.0, np.nan]}), "t": pd.Timedelta(seconds=90), "s": {3, 1}}
    out = json.loads(to_json_bytes(obj))
    assert out == {"a": [1.0, None, None], "b": [1, 2], "3": {"1": None}, "df": [{"x": 1.0}, {"x": None}],
                   "t": 90.0, "s": [1, 3]}


def test_json_nan_plain_float():
    assert json.loads(to_json_bytes(float("nan"))) is None
    assert not math.isnan(json.loads(to_json_bytes([1.0]))[0])


# ----------------------------------------------------------------------------- file names
@pytest.mark.parametrize("text, expected", [
    ("../../etc/passwd", "passwd.csv"),
    ("..\\..\\Windows\\system32\\evil.csv", "evil.csv"),
    ("/abs/path/SPX options 2026.csv", "SPX_options_2026.csv"),
    ("...", "download.csv"),
    ("", "download.csv"),
    (None, "download.csv"),
    ("CON", "_CON.csv"),
    ("-rf", "rf.csv"),
    ("Zürich é", "Zurich_e.csv"),
    ("a" * 500, "a" * MAX_FILENAME_STEM + ".csv"),
    ("quotes.CSV", "quotes.csv"),
])
def test_safe_filename_examples(text, expected):
    assert safe_filename(text, "download", "csv") == expected


def test_safe_filename_bad_default_and_ext():
    assert safe_filename("", "../x", "c/s.v") == "x.csv"
    assert safe_filename("", "", None) == "download"


@given(st.one_of(st.text(), st.binary().map(lambda b: b.decode("latin-1"))), st.text(max_size=20),
       st.one_of(st.none(), st.text(max_size=6)))
def test_property_safe_filename_is_never_a_path(text, default, ext):
    name = safe_filename(text, default, ext)
    assert name and "/" not in name and "\\" not in name and "\x00" not in name
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
    assert not name.startswith((".", "-"))
    assert len(name) <= MAX_FILENAME_STEM + 11
    assert name not in (".", "..")
