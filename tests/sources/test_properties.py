"""Property tests (Hypothesis) of ``core.sources``: ``load_file`` and each reader on arbitrary bytes,
text and mutated exports, ``parse_occ``, and ``SnapshotStore`` on junk and round trips."""
from __future__ import annotations

import datetime as _dt
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import FormatError, InputError, SnapshotError
from core.sources import cboe, tidy, yfcsv
from core.sources.cboe import read_cboe
from core.sources.detect import load_file
from core.sources.snapshots import SnapshotStore
from core.sources.tidy import read_tidy_csv
from core.sources.yfcsv import format_occ, parse_occ, read_yfinance_csv
from tests.helpers import check_chain
from tests.hypothesis_budget import counted
from tests.strategies import JUNK_CELLS, exported, mutated_file


def _load_or_error(fn, data, **kw):
    try:
        return fn(data, **kw)
    except (FormatError, InputError) as exc:
        assert str(exc), "the error says what went wrong"
        return None


@given(st.one_of(st.binary(max_size=600), st.text(max_size=600).map(lambda t: t.encode("utf-8")),
                 st.sampled_from([b"", b"\xef\xbb\xbf", b"PK\x03\x04\x00\x00", b"\xff\xfe", b"\x00" * 10,
                                  b"a,b,c\n1,2,3\n", b"expiry,strike,cp,bid,ask\n", b"\n\n\n"])))
@counted
def test_load_file_arbitrary_bytes(data):
    chain = _load_or_error(load_file, data, name="upload.csv")
    if chain is not None:
        check_chain(chain)


@given(st.sampled_from(["cboe", "yfinance-csv", "tidy-csv"]).flatmap(lambda f: st.tuples(st.just(f), mutated_file(f))),
       st.one_of(st.none(), st.sampled_from([5000.0, 1e-6, 1e9])), st.one_of(st.none(), st.just("2026-06-15 10:30")))
@counted
def test_load_file_mutated_exports(fmt_data, spot, asof):
    fmt, data = fmt_data
    chain = _load_or_error(load_file, data, spot=spot, asof=asof)
    if chain is not None:
        check_chain(chain, data_lines=data.count(b"\n") + data.count(b"\r") + 1)
        if spot is not None:
            assert chain.spot == spot


@given(st.sampled_from(["cboe", "yfinance-csv", "tidy-csv"]),
       st.lists(st.lists(st.one_of(st.sampled_from(JUNK_CELLS), st.text(max_size=6), st.floats().map(repr)),
                         min_size=0, max_size=25), min_size=0, max_size=8))
@counted
def test_readers_header_then_junk_rows(fmt, rows):
    """A real header (so the format is detected) followed by junk rows: each reader directly."""
    head = {"cboe": 3, "yfinance-csv": 1, "tidy-csv": 8}[fmt]
    lines = exported(fmt).splitlines()[:head] + [",".join(r) for r in rows]
    data = "\n".join(lines).encode("utf-8")
    reader = {"cboe": read_cboe, "yfinance-csv": read_yfinance_csv, "tidy-csv": read_tidy_csv}[fmt]
    chain = _load_or_error(reader, data)
    if chain is not None:
        check_chain(chain, data_lines=len(rows))


@given(st.text(max_size=300), st.sampled_from(["read_cboe", "read_yfinance_csv", "read_tidy_csv"]))
@counted
def test_readers_arbitrary_text(text, reader):
    fn = {"read_cboe": cboe.read_cboe, "read_yfinance_csv": yfcsv.read_yfinance_csv,
          "read_tidy_csv": tidy.read_tidy_csv}[reader]
    # text with a line break is content, never a path (core.sources._io.read_bytes)
    chain = _load_or_error(fn, text + "\n", asof="2026-06-15 10:30")
    if chain is not None:
        check_chain(chain)


@given(st.one_of(st.text(max_size=25), st.from_regex(r"[A-Z]{1,6}\d{6}[CP]\d{8}", fullmatch=True),
                 st.integers(), st.none()))
@counted
def test_parse_occ(sym):
    try:
        root, expiry, cp, strike = parse_occ(sym)
    except FormatError:
        return
    assert cp in (1, -1) and 0 <= strike < 1e5 and isinstance(expiry, _dt.date)
    assert parse_occ(format_occ(root, expiry, cp, strike)) == (root, expiry, cp, strike)


@given(st.binary(max_size=300), st.sampled_from(["SPY_20261121T153000Z.csv.gz", "X_20260101T000000Z-2.csv.gz"]))
@counted
def test_snapshot_junk_file_is_reported_not_deleted(data, name):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / name
        p.write_bytes(data)
        store = SnapshotStore(d)
        infos = store.list()
        assert len(infos) == 1 and not infos[0].ok and infos[0].error
        with pytest.raises(SnapshotError):
            store.load(p)
        assert p.read_bytes() == data, "a corrupt snapshot stays on disk untouched"


@settings(max_examples=min(settings().max_examples, 100))
@given(st.sampled_from(["cboe", "yfinance-csv", "tidy-csv"]).flatmap(mutated_file))
@counted
def test_snapshot_round_trip_of_loaded_files(data):
    chain = _load_or_error(load_file, data, asof="2026-06-15 10:30")
    if chain is None:
        return
    with tempfile.TemporaryDirectory() as d:
        store = SnapshotStore(d)
        path = store.save(chain)
        back = store.load(path)
    cols = ["expiry", "strike", "cp", "bid", "ask", "T"]
    pd.testing.assert_frame_equal(back.quotes[cols].reset_index(drop=True), chain.quotes[cols].reset_index(drop=True),
                                  check_dtype=False)
    assert back.spot == chain.spot and back.underlying == chain.underlying
