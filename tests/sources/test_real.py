"""Real CBOE downloads as users save them (../shared/data/cboe_modern and the 2011 file): each loads
with the right spot, quote time, market time, underlying and expiries, or fails in one sentence that
names the line and the option that fixes it.

The expected values were read off the files by hand (and with the csv module, not the loader): the
'Last:' field, the date line, the distinct 'Expiration Date' values, the OCC roots and the count of
non-empty call and put symbols. Market times are the NYSE close before a weekend or evening
download (core.calendar); the SPY file's date line has no year, its quotes are of Friday 2 June 2023.
"""
from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.__main__ import main
from core.cleaning import clean_quotes, reason_counts
from core.errors import FormatError, InputError
from core.quotes import expiry_keys
from core.sources._io import month_of, read_vendor_time
from core.sources.cboe import read_cboe
from core.sources.detect import files_in, load_file, load_files

NY = "America/New_York"
MODERN = "cboe_modern"
BY_EXPIRY = f"{MODERN}/spx_20251001_by_expiry"


def _ny(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz=NY)


# file, underlying, exercise, spot, quote time (NY), market time (NY), expiry dates, expiries (AM and
# PM apart), quotes, quotes of expired or last-day expiries (reason 'expired'), of which with T <= 0
FILES = [
    ("spx_20220610_close.csv", "SPX", "european", 3900.8601, "2022-06-11 20:47", "2022-06-10 16:00",
     44, 49, 19670, 450, 450),
    ("spx_20240105_close.csv", "SPX", "european", 4697.2402, "2024-01-07 10:52", "2024-01-05 16:00",
     55, 60, 21038, 446, 446),
    ("spx_20220712_intraday.csv", "SPX", "european", 3856.28, "2022-07-12 11:55", "2022-07-12 11:55",
     47, 52, 19378, 244, 0),
    ("spx_20231208_ru_header.csv", "SPX", "european", 4604.3701, "2023-12-09 13:49", "2023-12-08 16:00",
     15, 16, 6230, 432, 432),
    ("ndx_20230526_close.csv", "NDX", "european", 14298.4092, "2023-05-26 17:18", "2023-05-26 16:00",
     45, 45, 21852, 962, 962),
    ("qqq_20230612_close.csv", "QQQ", "american", 358.27, "2023-06-12 16:35", "2023-06-12 16:00",
     29, 29, 7246, 230, 230),
    ("spy_20230602_close.csv", "SPY", "american", 427.92, "2023-06-04 15:15", "2023-06-02 16:00",
     31, 31, 7686, 0, 0),
]


@pytest.fixture(scope="module")
def chains(shared_data):
    return {f[0]: read_cboe(shared_data / MODERN / f[0]) for f in FILES}


@pytest.mark.shared_data
@pytest.mark.parametrize("row", FILES, ids=[f[0] for f in FILES])
def test_real_download_loads_right(chains, row):
    name, under, exercise, spot, asof, made, n_dates, n_keys, n_quotes, n_expired, n_past = row
    c = chains[name]
    assert c.underlying == under and c.exercise == exercise and c.source == "cboe"
    assert c.spot == pytest.approx(spot, abs=1e-9)          # the 'Last:' line, read despite the blank first line
    assert c.asof == _ny(asof)
    assert c.market_time == _ny(made)
    q = c.quotes
    assert len(q) == n_quotes and c.meta["skipped"] == []
    assert q["expiry"].nunique() == n_dates and expiry_keys(q).nunique() == n_keys
    # T runs from the market time, to the second
    want = (q["expiry_time"] - _ny(made)).dt.total_seconds().to_numpy() / (365 * 86400)
    assert np.allclose(q["T"].to_numpy(), want, rtol=0, atol=1e-12)
    cleaned = clean_quotes(c)
    counts = reason_counts(cleaned)
    assert counts["expired"] == n_expired
    assert int((q["T"] <= 0).sum()) == n_past
    assert counts["duplicate"] == 0, "SPX and SPXW of one date are different contracts"
    # the spot agrees with put-call parity at the nearest expiry (the loader's own check passed)
    assert c.meta["parity_check"] is not None
    assert abs(np.log(c.meta["parity_check"]["forward"] / spot)) < 0.01


@pytest.mark.shared_data
def test_expired_expiry_listed_in_a_weekend_download(chains):
    q = clean_quotes(chains["spx_20220610_close.csv"])
    jun10 = q[q["expiry"] == "2022-06-10"]
    assert len(jun10) == 450 and (jun10["T"] == 0).all() and (jun10["reason"] == "expired").all()
    assert (q.loc[q["expiry"] != "2022-06-10", "reason"] != "expired").all()
    # the intraday file's same-day expiry has hours left: below the one-day minimum, also 'expired'
    q = clean_quotes(chains["spx_20220712_intraday.csv"])
    today = q[q["expiry"] == "2022-07-12"]
    assert len(today) == 244 and (today["T"] > 0).all() and (today["reason"] == "expired").all()
    assert today["T"].iloc[0] == pytest.approx((4 * 3600 + 5 * 60) / (365 * 86400), abs=1e-12)


@pytest.mark.shared_data
def test_spx_and_spxw_of_one_date_are_two_expiries(chains):
    q = chains["spx_20220610_close.csv"].quotes
    both = q[q["expiry"] == "2022-06-17"]
    assert set(both["root"]) == {"SPX", "SPXW"}
    am, pm = both[both["root"] == "SPX"], both[both["root"] == "SPXW"]
    assert (am["settlement"] == "AM").all() and (am["expiry_time"] == _ny("2022-06-17 09:30")).all()
    assert (pm["settlement"] == "PM").all() and (pm["expiry_time"] == _ny("2022-06-17 16:00")).all()
    assert set(expiry_keys(both)) == {"2022-06-17 AM", "2022-06-17"}


@pytest.mark.shared_data
def test_year_less_date_line_is_inferred_and_said(chains):
    c = chains["spy_20230602_close.csv"]
    assert c.meta["time_from"] == "file, year inferred"
    (w,) = [w for w in c.meta["warnings"] if "no year" in w]
    assert "line 3" in w and "4 June 2023" in w and "2023-06-05" in w and "asof=" in w


@pytest.mark.shared_data
def test_year_less_date_line_refused_when_the_expiries_do_not_tell(shared_data):
    text = (shared_data / MODERN / "spy_20230602_close.csv").read_text(encoding="utf-8")
    lines = text.splitlines()
    # keep only the 2024 and 2025 expiries: no year puts 4 June within a week before the first of them
    far = [ln for ln in lines[4:] if ln.split(",")[0][-4:] in ("2024", "2025")]
    assert len(far) > 100
    with pytest.raises(FormatError) as err:
        read_cboe("\n".join(lines[:4] + far) + "\n")
    msg = str(err.value)
    assert "line 3" in msg and "no year" in msg and "asof=" in msg and "--asof" in msg
    # the user's asof settles it
    c = read_cboe("\n".join(lines[:4] + far) + "\n", asof="2023-06-02 16:00")
    assert c.market_time == _ny("2023-06-02 16:00")


@pytest.mark.shared_data
@pytest.mark.parametrize("date_line, words", [
    ('"Date: June 11, 2004, 8:47 PM EDT"', ("years after",)),            # a misread year: decades away
    ('"Date: June 11, 2027, 8:47 PM EDT"', ("ended before",)),           # every expiry in the past
    ('"Date: June 30, 2022, 8:47 PM EDT"', ("lists the expiry 2022-06-10",)),  # after the first listed expiry
    ('"Date: sometime on Saturday"', ("does not read as a date",)),
    ('"Date: June 11, 2022"', ("no time of day",)),
])
def test_misread_date_refused_in_one_sentence(shared_data, date_line, words):
    lines = (shared_data / MODERN / "spx_20220610_close.csv").read_text(encoding="utf-8").splitlines()
    assert lines[2].startswith('"Date: June 11, 2022')
    lines[2] = date_line + ",Bid: 3878.48,Ask: 3927.9299,Size: 1*1,Volume: 0"
    with pytest.raises(FormatError) as err:
        read_cboe("\n".join(lines) + "\n")
    msg = str(err.value)
    assert msg.startswith("line 3 of the CBOE file") and "asof=" in msg and "--asof" in msg
    for w in words:
        assert w in msg
    assert msg.count(". ") == 0, "one sentence"


@pytest.mark.shared_data
def test_misread_spot_flagged_not_used(shared_data):
    text = (shared_data / MODERN / "spx_20220610_close.csv").read_text(encoding="utf-8")
    bad = text.replace("Last: 3900.8601", "Last: 390.08601", 1)
    c = read_cboe(bad)
    assert c.spot is None and c.meta["file_spot"] == pytest.approx(390.08601)
    (w,) = [w for w in c.meta["warnings"] if "parity" in w]
    assert "line 2" in w and "spot=" in w and "--spot" in w
    # a spot set by hand is kept, with the same warning
    c = read_cboe(bad, spot=390.0)
    assert c.spot == 390.0 and any("set by hand" in w for w in c.meta["warnings"])


@pytest.mark.shared_data
def test_asof_that_leaves_every_expiry_in_the_past_is_refused(shared_data):
    with pytest.raises(InputError, match="asof"):
        read_cboe(shared_data / MODERN / "qqq_20230612_close.csv", asof="2026-01-05 12:00")


@pytest.mark.shared_data
def test_2011_file(shared_data):
    c = read_cboe(shared_data / "spx_20110124/SPX-Options-24jan2011.csv")
    assert c.underlying == "SPX" and c.spot == pytest.approx(1290.59)
    assert c.asof == _ny("2011-01-24 14:03") and c.market_time == _ny("2011-01-24 14:03")   # inside the session
    assert c.quotes["expiry"].nunique() == 16 and len(c.quotes) == 1920
    assert reason_counts(clean_quotes(c))["expired"] == 0


# ------------------------------------------------------------------ several files, one chain

BY_EXPIRY_KEYS = ["2026-04-17 AM", "2026-05-15 AM", "2026-06-18 AM", "2026-06-30", "2026-07-17 AM",
                  "2026-08-21 AM", "2026-09-18 AM", "2026-09-30", "2026-10-16 AM", "2026-12-18 AM",
                  "2027-01-15 AM", "2027-06-17 AM", "2027-12-17 AM"]


@pytest.mark.shared_data
def test_by_expiry_folder_loads_as_one_chain(shared_data):
    files = files_in(shared_data / BY_EXPIRY)
    assert len(files) == 11 and all(f.suffix == ".csv" for f in files)      # LICENSE skipped
    c = load_files(shared_data / BY_EXPIRY)
    assert c.underlying == "SPX" and c.exercise == "european" and c.spot == pytest.approx(6711.2002)
    assert c.asof == _ny("2025-10-01 19:01")                 # the latest download
    assert c.market_time == _ny("2025-10-01 16:00")
    q = c.quotes
    assert len(q) == 1976 and sorted(set(expiry_keys(q))) == BY_EXPIRY_KEYS
    assert c.meta["duplicates_across_files"] == 0 and len(c.meta["files"]) == 11
    assert set(q["file"]) == {f.name for f in files}
    want = (q["expiry_time"] - _ny("2025-10-01 16:00")).dt.total_seconds().to_numpy() / (365 * 86400)
    assert np.allclose(q["T"].to_numpy(), want, rtol=0, atol=1e-12)
    # Juneteenth moves the June monthlies to Thursday, still AM-settled
    jun = q[q["expiry"] == "2026-06-18"]
    assert (jun["root"] == "SPX").all() and (jun["expiry_time"] == _ny("2026-06-18 09:30")).all()
    counts = reason_counts(clean_quotes(c))
    assert counts["expired"] == 0 and counts["duplicate"] == 0


@pytest.mark.shared_data
def test_load_files_counts_duplicates_and_refuses_mixes(shared_data):
    one = shared_data / BY_EXPIRY / "spx_quotedata.csv"
    two = shared_data / BY_EXPIRY / "spx_quotedata-2.csv"
    c = load_files([one, one, two])
    assert len(c.quotes) == 282 * 2 + 194 and c.meta["duplicates_across_files"] == 282
    assert reason_counts(clean_quotes(c))["duplicate"] == 282
    # uploads: bytes with names, as the app passes them
    c = load_files([one.read_bytes(), io.BytesIO(two.read_bytes())], names=["a.csv", "b.csv"])
    assert set(c.quotes["file"]) == {"a.csv", "b.csv"}
    with pytest.raises(FormatError, match="different underlyings.*NDX"):
        load_files([one, shared_data / MODERN / "ndx_20230526_close.csv"])
    with pytest.raises(FormatError, match="different quote days.*2024-01-05"):
        load_files([one, shared_data / MODERN / "spx_20240105_close.csv"])
    # a Saturday and a Friday-evening download of one Friday's close are one quote day
    sat = (shared_data / MODERN / "spx_20231208_ru_header.csv").read_text(encoding="utf-8")
    fri = sat.replace("Date: 9 декабря 2023 г. в 13:49 GMT-5", "Date: December 8, 2023, 6:30 PM EST", 1)
    c = load_files([fri.encode(), sat.encode()], names=["fri.csv", "sat.csv"])
    assert c.market_time == _ny("2023-12-08 16:00") and c.meta["duplicates_across_files"] == 6230
    # one file is load_file
    assert len(load_files([one]).quotes) == len(load_file(one).quotes) == 282


@pytest.mark.slow
@pytest.mark.shared_data
def test_cli_takes_a_folder_and_several_files(shared_data, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["quotes", str(shared_data / BY_EXPIRY), "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["asof"] == "2025-10-01T19:01:00-04:00" and s["market_time"] == "2025-10-01T16:00:00-04:00"
    assert s["n_quotes"] == 1976 and s["underlying"] == "SPX"
    files = [str(shared_data / BY_EXPIRY / n) for n in ("spx_quotedata.csv", "spx_quotedata-2.csv")]
    assert main(["quotes", *files, "--out", str(tmp_path / "o2")]) == 0
    s = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert s["n_quotes"] == 282 + 194
    capsys.readouterr()
    rc = main(["quotes", files[0], str(shared_data / MODERN / "ndx_20230526_close.csv"), "--out", str(tmp_path / "o3")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "different underlyings" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.shared_data
def test_cli_weekend_download_summary(shared_data, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["quotes", str(shared_data / MODERN / "spx_20240105_close.csv"), "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["asof"] == "2024-01-07T10:52:00-05:00" and s["market_time"] == "2024-01-05T16:00:00-05:00"
    assert s["spot"] == pytest.approx(4697.2402) and s["excluded"]["expired"] == 446


# ------------------------------------------------------------------ date lines (no data needed)

@pytest.mark.parametrize("text, want", [
    ("Date: June 11, 2022, 8:47 PM EDT", "2022-06-11 20:47"),
    ("Date: January 7, 2024 at 10:52 AM EST", "2024-01-07 10:52"),
    ("Date: 26 May 2023, 5:18 PM EDT", "2023-05-26 17:18"),
    ("Date: 9 декабря 2023 г. в 13:49 GMT-5", "2023-12-09 13:49"),
    ("Date: 12 June 2023, 4:35 PM EDT", "2023-06-12 16:35"),
    ("Jan 24 2011 @ 14:03 ET", "2011-01-24 14:03"),
    ("Datum: 2. Juni 2023 um 22:35 GMT+2", "2023-06-02 16:35"),
    ("Date : 2 juin 2023 à 16:35 UTC-4", "2023-06-02 16:35"),
    ("2 de junio de 2023, 15:35 CDT", "2023-06-02 16:35"),
    ("2 giugno 2023 alle 16:35", "2023-06-02 16:35"),
    ("2 de junho de 2023 às 17:35 GMT-3", "2023-06-02 16:35"),
    ("Fri, 02 Jun 2023 20:35:00 GMT", "2023-06-02 16:35"),
    ("Sept. 5, 2023 4:00 p.m. ET", "2023-09-05 16:00"),
    ("December 1 2026, 3:59:59.250000 PM EST", "2026-12-01 15:59:59.25"),
])
def test_date_lines_in_several_languages(text, want):
    v = read_vendor_time(text)
    assert v is not None and v.at() == _ny(want)


def test_date_line_without_year():
    v = read_vendor_time("Date: 4 June 4, 3:15 PM EDT")
    assert (v.year, v.month, v.day, v.hour, v.minute, v.year_text) == (None, 6, 4, 15, 15, "4")
    assert v.at(2023) == _ny("2023-06-04 15:15")
    with pytest.raises(FormatError, match="no year"):
        v.at()


@pytest.mark.parametrize("word, month", [("janv.", 1), ("févr", 2), ("März", 3), ("avr", 4), ("мая", 5), ("giu", 6),
                                         ("julho", 7), ("août", 8), ("set", 9), ("Okt", 10), ("ноя", 11),
                                         ("dic", 12), ("jui", None), ("ma", None), ("fri", None)])
def test_month_names(word, month):
    assert month_of(word) == month


@given(st.one_of(st.text(max_size=60),
                 st.builds(lambda d, m, y, t: f"Date: {d} {m} {y}, {t}",
                           st.integers(-1, 40), st.sampled_from(["June", "декабря", "févr.", "Mai", "jui", "x"]),
                           st.text("0123456789", max_size=5), st.text("0123456789: APMEDTGMT+-", max_size=12))))
@settings(max_examples=300)
def test_date_lines_never_crash(text):
    from core.sources._io import parse_time

    try:
        v = read_vendor_time(text)
    except FormatError as exc:
        assert str(exc)
        return
    if v is not None:
        assert 1 <= v.month <= 12 and 1 <= v.day <= 31
        try:
            t = v.at(2024)
        except FormatError:
            return
        assert str(t.tz) == "UTC"
    try:
        parse_time(text, what="quote time")
    except FormatError:
        pass
