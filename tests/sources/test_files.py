"""File loaders: the real 2011 CBOE file, the modern CBOE layout, yfinance-style and tidy CSV,
format detection, round trips of the demo chain through every export, and junk input."""
from __future__ import annotations

import datetime as dt
import io

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.demo import demo_chain
from core.errors import FormatError, InputError
from core.quotes import NEW_YORK, QUOTE_COLUMNS
from core.sources.cboe import parse_old_code, read_cboe, write_cboe
from core.sources.detect import FORMATS, detect_format, export_chain, load_file
from core.sources.tidy import read_tidy_csv, write_tidy_csv
from core.sources.yfcsv import chain_from_yfinance_frames, format_occ, parse_occ, read_yfinance_csv, write_yfinance_csv

SPX2011 = "spx_20110124/SPX-Options-24jan2011.csv"

# Verified by hand against a calendar: weekly SPXW Friday 28 Jan; SPX monthlies' codes name the
# Saturday after the third Friday; SPXPM quarterlies on the last business day of the quarter
# (31 Mar 2011 and 30 Jun 2011 are Thursdays, 30 Sep and 30 Dec 2011 Fridays).
EXPIRIES_2011 = {
    "2011-01-28": "SPXW", "2011-02-19": "SPX", "2011-03-19": "SPX", "2011-03-31": "SPXPM",
    "2011-04-16": "SPX", "2011-05-21": "SPX", "2011-06-18": "SPX", "2011-06-30": "SPXPM",
    "2011-09-17": "SPX", "2011-09-30": "SPXPM", "2011-10-22": "SPX", "2011-12-17": "SPX",
    "2011-12-30": "SPXPM", "2012-06-16": "SPX", "2012-12-22": "SPX", "2013-12-21": "SPX",
}

MODERN = """Standard & Poors 500 Index,Last: 4500.5298,Change:  23.0898
"Date: February 5 2022, 8:09 PM EST",Bid: 4420.5,Ask: 4615.4302,Size: 1*1,Volume: 0
Expiration Date,Calls,Last Sale,Net,Bid,Ask,Volume,IV,Delta,Gamma,Open Interest,Strike,Puts,Last Sale,Net,Bid,Ask,Volume,IV,Delta,Gamma,Open Interest
Mon Feb 07 2022,SPXW220207C02400000,0,0,2087.8,2102.6,0,4.285,0.9999,0,0,2400.00,SPXW220207P02400000,0.07,0,0,0.05,0,1.9229,-0.0001,0,106
Fri Feb 18 2022,SPX220218C04500000,95.1,-3.2,94.5,96.0,1200,0.2101,0.52,0.002,15000,4500.00,SPX220218P04500000,101.3,2.1,100.2,101.8,1500,0.2312,-0.48,0.002,21000
Fri Feb 18 2022,SPXW220218C04500000,95.3,-3.2,94.9,96.4,800,0.2105,0.52,0.002,9000,4500.00,SPXW220218P04500000,101.0,2.1,100.5,102.1,700,0.2316,-0.48,0.002,7000
"""

YF = """contractSymbol,lastTradeDate,strike,lastPrice,bid,ask,change,percentChange,volume,openInterest,impliedVolatility,inTheMoney,contractSize,currency,myNote
AAPL240621C00190000,2024-06-14 19:59:58+00:00,190.0,23.1,22.9,23.3,0.5,2.2,120,3400,0.2812,True,REGULAR,USD,x
AAPL240621C00215000,2024-06-14 19:58:01+00:00,215.0,2.05,2.0,2.1,-0.1,-4.6,9000,25000,0.2204,False,REGULAR,USD,y
AAPL240621P00215000,2024-06-14 19:57:00+00:00,215.0,4.1,4.0,4.2,0.1,2.5,5000,18000,0.2301,True,REGULAR,USD,
AAPL240719P00190000,2024-06-13 15:00:00+00:00,190.0,0.6,0.55,0.65,0.0,0.0,,800,0.2655,False,REGULAR,USD,
"""


def _ny(s):
    return pd.Timestamp(s, tz=NEW_YORK)


# ---------------------------------------------------------------- the real 2011 CBOE file

@pytest.fixture(scope="module")
def spx2011(shared_data):
    return read_cboe(shared_data / SPX2011)


def test_cboe_2011_header_and_size(spx2011):
    c = spx2011
    assert c.underlying == "SPX" and c.source == "cboe" and c.exercise == "european"
    assert c.spot == pytest.approx(1290.59)
    assert c.asof == _ny("2011-01-24 14:03")
    assert len(c.quotes) == 2 * 960 and c.meta["skipped"] == []
    assert set(c.quotes["root"]) == {"SPX", "SPXW", "SPXPM"}


def test_cboe_2011_expiry_dates(spx2011):
    q = spx2011.quotes
    got = {str(e.date()): set(g["root"]) for e, g in q.groupby("expiry")}
    assert got == {k: {v} for k, v in EXPIRIES_2011.items()}
    for e, root in EXPIRIES_2011.items():
        d = dt.date.fromisoformat(e)
        if root == "SPXW":
            assert d.weekday() == 4
        elif root == "SPX":      # Saturday after the third Friday
            assert d.weekday() == 5 and 15 <= (d - dt.timedelta(days=1)).day <= 21
        else:                    # quarter end, a business day
            assert d.weekday() < 5 and d.month in (3, 6, 9, 12) and (d + dt.timedelta(days=3)).month != d.month


def test_cboe_2011_settlement_and_T(spx2011):
    q = spx2011.quotes
    wk = q[q["expiry"] == "2011-01-28"].iloc[0]
    assert wk["settlement"] == "PM" and wk["expiry_time"] == _ny("2011-01-28 16:00")
    assert wk["T"] == pytest.approx((4 * 86400 + 117 * 60) / (365 * 86400), abs=1e-12)
    feb = q[q["expiry"] == "2011-02-19"].iloc[0]
    assert feb["settlement"] == "AM" and feb["expiry_time"] == _ny("2011-02-18 09:30")
    pm = q[q["expiry"] == "2011-03-31"].iloc[0]
    assert pm["settlement"] == "PM" and pm["expiry_time"] == _ny("2011-03-31 16:00")


def test_cboe_2011_a_row(spx2011):
    q = spx2011.quotes
    # 11 Jan 1250.00 (SPXW1128A1250-E),40.75,+0.25,41.30,42.90,8,2, ... (SPXW1128M1250-E),1.20,-1.35,1.10,1.25,577,4472
    row = q[(q["expiry"] == "2011-01-28") & (q["strike"] == 1250)].set_index("cp")
    assert row.loc[1, ["bid", "ask", "last", "volume", "open_interest"]].tolist() == [41.30, 42.90, 40.75, 8, 2]
    assert row.loc[-1, ["bid", "ask", "last", "volume", "open_interest"]].tolist() == [1.10, 1.25, 1.20, 577, 4472]
    # "0.0" last sale means no trade
    assert np.isnan(q[(q["expiry"] == "2011-01-28") & (q["strike"] == 1075) & (q["cp"] == 1)]["last"].iloc[0])


def test_cboe_2011_detected_and_overrides(shared_data):
    raw = (shared_data / SPX2011).read_bytes()
    c = load_file(raw, name="SPX-Options-24jan2011.csv")
    assert c.meta["file_format_key"] == "cboe" and c.spot == pytest.approx(1290.59)
    c2 = load_file(io.BytesIO(raw), spot=1300.0, asof="2011-01-24 15:00")
    assert c2.spot == 1300.0 and c2.asof == _ny("2011-01-24 15:00")


def test_tidy_with_column_mapping_reads_the_pyql_table(shared_data):
    cols = {"PBid": "bid", "PAsk": "ask", "Type": "cp", "Strike": "strike", "dtExpiry": "expiry", "Spot": "spot"}
    c = read_tidy_csv(shared_data / "spx_20110124/df_SPX_24jan2011.csv", columns=cols, asof="2011-01-24 14:03")
    assert len(c.quotes) == 1472 and c.spot == pytest.approx(1290.59)
    assert set(c.quotes["cp"]) == {1, -1}


@pytest.mark.parametrize("code, want", [
    ("SPXW1128A1075-E", ("SPXW", dt.date(2011, 1, 28), 1, 1075.0)),
    ("(SPX1119N350-E)", ("SPX", dt.date(2011, 2, 19), -1, 350.0)),
    ("SPXPM1130F1300-E", ("SPXPM", dt.date(2011, 6, 30), 1, 1300.0)),
    ("SPXPM1130R1300-E", ("SPXPM", dt.date(2011, 6, 30), -1, 1300.0)),
    ("SPX1321X3000-E", ("SPX", dt.date(2013, 12, 21), -1, 3000.0)),
])
def test_parse_old_code(code, want):
    assert parse_old_code(code) == want


@pytest.mark.parametrize("bad", ["SPX1131B1000-E", "hello", "SPX11", "SPX1100A1000-E"])
def test_parse_old_code_rejects(bad):
    with pytest.raises(FormatError):
        parse_old_code(bad)


# ---------------------------------------------------------------- modern CBOE layout

def test_cboe_modern_sample():
    c = read_cboe(MODERN.encode())
    assert c.underlying == "SPX" and c.spot == pytest.approx(4500.5298) and c.exercise == "european"
    assert c.asof == _ny("2022-02-05 20:09")
    q = c.quotes.set_index(["root", "expiry", "cp"])
    assert len(q) == 6
    spx = q.loc[("SPX", pd.Timestamp("2022-02-18"), 1)]
    assert spx["settlement"] == "AM" and spx["expiry_time"] == _ny("2022-02-18 09:30")
    assert spx["vendor_iv"] == pytest.approx(0.2101) and spx["open_interest"] == 15000
    spxw = q.loc[("SPXW", pd.Timestamp("2022-02-18"), -1)]
    assert spxw["settlement"] == "PM" and spxw["expiry_time"] == _ny("2022-02-18 16:00")
    assert (spxw["bid"], spxw["ask"], spxw["last"]) == (100.5, 102.1, 101.0)
    wk = q.loc[("SPXW", pd.Timestamp("2022-02-07"), 1)]
    # a Saturday download holds Friday's closing prices: T runs from Friday 4 Feb 16:00 (core.calendar)
    assert c.market_time == _ny("2022-02-04 16:00")
    assert wk["T"] == pytest.approx((_ny("2022-02-07 16:00") - _ny("2022-02-04 16:00")).total_seconds() / (365 * 86400))
    assert np.isnan(wk["last"]) and wk["vendor_iv"] == pytest.approx(4.285)


def test_cboe_modern_missing_time_needs_asof():
    text = MODERN.replace('"Date: February 5 2022, 8:09 PM EST"', '"Date: sometime"')
    with pytest.raises(FormatError, match="asof"):
        read_cboe(text.encode())
    c = read_cboe(text.encode(), asof="2022-02-05 16:15")
    assert c.asof == _ny("2022-02-05 16:15")


def test_cboe_modern_inconsistent_row_is_skipped_and_counted():
    text = MODERN.replace("Fri Feb 18 2022,SPX220218C", "Fri Feb 25 2022,SPX220218C")
    c = read_cboe(text.encode())
    assert len(c.quotes) == 4 and len(c.meta["skipped"]) == 2


# ---------------------------------------------------------------- OCC symbols and yfinance CSV

@pytest.mark.parametrize("sym, want", [
    ("SPXW220207C02400000", ("SPXW", dt.date(2022, 2, 7), 1, 2400.0)),
    ("AAPL240621P00187500", ("AAPL", dt.date(2024, 6, 21), -1, 187.5)),
    ("F240621C00012500", ("F", dt.date(2024, 6, 21), 1, 12.5)),
    ("AAPL1 240621C00190000", ("AAPL1", dt.date(2024, 6, 21), 1, 190.0)),
    ("SPY   240621P00500000", ("SPY", dt.date(2024, 6, 21), -1, 500.0)),
])
def test_parse_occ(sym, want):
    assert parse_occ(sym) == want


@pytest.mark.parametrize("bad", ["", "SPXW220230C02400000", "SPXW220207X02400000", "SPXW220207C2400",
                                 "TOOLONGROOT220207C02400000", "220207C02400000"])
def test_parse_occ_rejects(bad):
    with pytest.raises(FormatError):
        parse_occ(bad)


@given(root=st.from_regex(r"[A-Z][A-Z0-9]{0,5}", fullmatch=True),
       day=st.dates(dt.date(2000, 1, 1), dt.date(2099, 12, 31)), cp=st.sampled_from([1, -1]),
       k=st.integers(0, 99_999_999))
def test_occ_round_trip(root, day, cp, k):
    sym = format_occ(root, day, cp, k / 1000)
    assert len(sym) == len(root) + 15
    assert parse_occ(sym) == (root, day, cp, k / 1000)


@given(st.text(max_size=30))
def test_parse_occ_junk_only_format_error(s):
    try:
        parse_occ(s)
    except FormatError:
        pass


def test_yfinance_csv_from_symbols():
    with pytest.raises(FormatError, match="asof"):
        read_yfinance_csv(YF.encode())
    c = read_yfinance_csv(YF.encode(), asof="2024-06-14 16:00", spot=212.49)
    q = c.quotes
    assert c.underlying == "AAPL" and c.exercise == "american" and c.source == "yfinance-csv"
    assert len(q) == 4 and q["cp"].tolist() == [1, 1, -1, -1]
    assert [str(e.date()) for e in q["expiry"]] == ["2024-06-21"] * 3 + ["2024-07-19"]
    assert q["vendor_iv"].tolist() == [0.2812, 0.2204, 0.2301, 0.2655]
    assert q["last_trade_time"].iloc[0] == pd.Timestamp("2024-06-14 19:59:58", tz="UTC")
    assert np.isnan(q["volume"].iloc[3])
    assert c.spot == 212.49 and c.asof == _ny("2024-06-14 16:00")


def test_yfinance_csv_explicit_columns_win():
    text = ("contractSymbol,strike,bid,ask,expiration,optionType\n"
            "whatever-1,100,1.0,1.2,2024-06-21,call\n"
            "AAPL240719C00100000,100,2.0,2.2,2024-06-21,put\n")
    c = read_yfinance_csv(text.encode(), asof="2024-06-14 16:00", underlying="AAPL")
    q = c.quotes
    assert q["expiry"].dt.strftime("%Y-%m-%d").tolist() == ["2024-06-21", "2024-06-21"]
    assert q["cp"].tolist() == [1, -1]


def test_chain_from_yfinance_frames():
    t = pd.Timestamp("2024-06-14 19:59", tz="UTC")
    calls = pd.DataFrame({"contractSymbol": ["SPXW240621C05400000"], "lastTradeDate": [t], "strike": [5400.0],
                          "lastPrice": [40.0], "bid": [39.5], "ask": [40.5], "volume": [10.0],
                          "openInterest": [100.0], "impliedVolatility": [0.12], "inTheMoney": [True],
                          "contractSize": ["REGULAR"], "currency": ["USD"]})
    puts = calls.assign(contractSymbol=["SPXW240621P05400000"], bid=[20.0], ask=[21.0])
    c = chain_from_yfinance_frames(calls, puts, "2024-06-21", underlying="^SPX", spot=5431.6,
                                   asof=pd.Timestamp("2024-06-14 20:00", tz="UTC"))
    assert c.underlying == "SPX" and c.exercise == "european" and c.source == "yahoo"
    assert c.quotes["cp"].tolist() == [1, -1] and c.quotes["root"].tolist() == ["SPXW", "SPXW"]
    assert (c.quotes["settlement"] == "PM").all()
    aapl = calls.assign(contractSymbol=["AAPL240621C00190000"], strike=[190.0])
    c2 = chain_from_yfinance_frames([aapl], [aapl.iloc[:0]], ["2024-06-21"], underlying="AAPL", spot=None,
                                    asof="2024-06-14 16:00")
    assert len(c2.quotes) == 1 and c2.exercise == "american" and c2.spot is None


# ---------------------------------------------------------------- round trips of the demo

@pytest.fixture(scope="module")
def demo():
    return demo_chain()


@pytest.mark.parametrize("fmt", [k for k, _ in FORMATS])
def test_demo_round_trips_every_format(demo, fmt):
    data = export_chain(demo, fmt)
    assert isinstance(data, bytes)
    assert detect_format(data.decode()) == fmt
    back = load_file(data, name=f"demo.{fmt}.csv")
    assert back.meta["file_format_key"] == fmt
    assert back.underlying == "DEMO" and back.exercise == "european"
    assert back.asof == demo.asof and back.spot == demo.spot
    key = ["expiry", "strike", "cp", "bid", "ask"]
    a = demo.quotes.sort_values(key, kind="stable").reset_index(drop=True)
    b = back.quotes.sort_values(key, kind="stable").reset_index(drop=True)
    assert len(a) == len(b)
    for col in key + ["settlement", "root"]:
        assert (a[col].to_numpy() == b[col].to_numpy()).all(), col
    assert np.max(np.abs(a["T"].to_numpy() - b["T"].to_numpy())) < 1e-9
    for col in ("volume", "open_interest", "last"):
        assert np.allclose(a[col], b[col], equal_nan=True), col


def test_tidy_round_trip_is_exact(demo, tmp_path):
    path = tmp_path / "demo.csv"
    write_tidy_csv(demo, path)
    back = read_tidy_csv(path)
    pd.testing.assert_frame_equal(back.quotes[list(QUOTE_COLUMNS)], demo.quotes[list(QUOTE_COLUMNS)],
                                  check_dtype=False)
    assert back.source == "demo" and back.spot_time == demo.spot_time


def test_writers_accept_paths_and_file_objects(demo, tmp_path):
    small = demo.select_expiries(demo.expiries[:1])
    for writer, reader in ((write_cboe, read_cboe), (write_yfinance_csv, read_yfinance_csv),
                           (write_tidy_csv, read_tidy_csv)):
        buf = io.BytesIO()
        writer(small, buf)
        sbuf = io.StringIO()
        writer(small, sbuf)
        assert buf.getvalue().decode() == sbuf.getvalue()
        assert len(reader(io.BytesIO(buf.getvalue())).quotes) == len(small.quotes)
        assert len(reader(io.StringIO(sbuf.getvalue())).quotes) == len(small.quotes)
        assert len(reader(sbuf.getvalue()).quotes) == len(small.quotes)   # text with line breaks
        p = tmp_path / f"{writer.__name__}.csv"
        writer(small, p)
        assert len(reader(str(p)).quotes) == len(small.quotes)


def test_encodings_bom_latin1_utf16_crlf():
    base = MODERN.replace("Standard & Poors", "Standard & Poor’s")
    for data in (base.encode("utf-8-sig"), base.replace("’", "é").encode("latin-1"),
                 base.encode("utf-16"), base.replace("\n", "\r\n").encode()):
        c = load_file(data)
        assert len(c.quotes) == 6 and c.spot == pytest.approx(4500.5298)


# ---------------------------------------------------------------- junk

@pytest.mark.parametrize("junk", [b"", b"   \n\n", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"PK\x03\x04\x14\x00\x00\x00",
                                  b"a,b,c\n1,2,3\n", b"strike,bid\n100,1\n", "just some words\n".encode()])
def test_junk_raises_format_error_naming_formats(junk):
    with pytest.raises(FormatError) as info:
        load_file(junk, name="upload.csv")
    msg = str(info.value)
    if junk.strip() and b"\x00" not in junk:
        assert all(k in msg for k, _ in FORMATS)


def test_missing_path_is_format_error(tmp_path):
    with pytest.raises(FormatError, match="cannot open"):
        load_file(str(tmp_path / "nope.csv"))
    with pytest.raises(InputError):
        load_file(12345)


def test_name_is_never_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = load_file(MODERN.encode(), name="../../etc/evil.csv")
    assert c.meta["file_name"] == "../../etc/evil.csv"
    assert list(tmp_path.iterdir()) == []


_READERS = [load_file, read_cboe, read_yfinance_csv, read_tidy_csv]
_PREFIXES = ["", MODERN.split("\n", 3)[0] + "\n" + MODERN.split("\n", 3)[1] + "\n" + MODERN.split("\n", 3)[2] + "\n",
             "SPX (S&P 500 INDEX),1290.59,+7.24,\nJan 24 2011 @ 14:03 ET,\n"
             "Calls,Last Sale,Net,Bid,Ask,Vol,Open Int,Puts,Last Sale,Net,Bid,Ask,Vol,Open Int,\n",
             YF.split("\n", 1)[0] + "\n", "# asof: 2024-01-02T15:00:00+00:00\nexpiry,strike,cp,bid,ask\n"]
_cell = st.one_of(st.text(max_size=12), st.sampled_from(["", "0", "-1", "nan", "1e308", "SPXW220207C02400000",
                                                         "(SPXW1128A1075-E)", "11 Jan 1075.00 (SPXW1128A1075-E)",
                                                         "2022-02-30", "C", "P", "call", "Fri Feb 18 2022"]))
_junk_rows = st.lists(st.lists(_cell, max_size=24).map(lambda r: ",".join(x.replace("\n", " ") for x in r)),
                      max_size=6).map("\n".join)


@settings(max_examples=40)
@given(prefix=st.sampled_from(_PREFIXES), body=_junk_rows, reader=st.sampled_from(_READERS))
def test_readers_on_junk_raise_only_documented_errors(prefix, body, reader):
    kwargs = {} if reader is read_cboe else {"asof": "2024-01-02 10:00"}
    try:
        c = reader((prefix + body).encode("utf-8"), **kwargs)
    except InputError:       # FormatError is an InputError
        return
    assert len(c.quotes) > 0


@settings(max_examples=30)
@given(data=st.binary(max_size=300), reader=st.sampled_from(_READERS))
def test_readers_on_random_bytes_raise_only_documented_errors(data, reader):
    try:
        reader(data)
    except InputError:
        pass


@pytest.mark.parametrize("fmt", [k for k, _ in FORMATS])
def test_cboe_2011_round_trips_every_format(spx2011, fmt):
    back = load_file(export_chain(spx2011, fmt))
    key = ["expiry", "root", "strike", "cp"]
    a = spx2011.quotes.sort_values(key).reset_index(drop=True)
    b = back.quotes.sort_values(key).reset_index(drop=True)
    for col in key + ["bid", "ask", "settlement", "expiry_time"]:
        assert (a[col].to_numpy() == b[col].to_numpy()).all(), col
    assert np.max(np.abs(a["T"].to_numpy() - b["T"].to_numpy())) < 1e-9
    assert back.spot == spx2011.spot and back.asof == spx2011.asof and back.exercise == "european"


@pytest.mark.parametrize("text, want", [
    ("Date: November 27, 2023 at 4:15 PM EST", "2023-11-27 16:15"),
    ('"Date: February 5 2022, 8:09 PM EST"', "2022-02-05 20:09"),
    ("Jan 24 2011 @ 14:03 ET", "2011-01-24 14:03"),
    ("Date: June 15 2026, 10:30:15 AM EDT", "2026-06-15 10:30:15"),
    ("2026-06-15T14:30:00+00:00", "2026-06-15 10:30"),
])
def test_vendor_quote_times(text, want):
    from core.sources._io import parse_time

    assert parse_time(text, what="quote time") == _ny(want)


@pytest.mark.parametrize("asof", ["2026-06-15 10:30:17", "2026-12-01 15:59:59.250000"])
def test_cboe_export_keeps_seconds(asof):
    c = demo_chain(asof=asof)
    c = c.select_expiries(c.expiries[:1])
    back = read_cboe(write_cboe(c))
    assert back.asof == c.asof
    assert np.allclose(back.quotes["T"].sort_values().to_numpy(), c.quotes["T"].sort_values().to_numpy(), atol=1e-12)
