"""Fault injection through the pipeline, the CLI and the app's data layer: live data that hangs, fails
half-way, arrives partial, duplicated or shuffled, or is rate-limited; snapshots corrupt on disk; a
cache folder that is read-only or full; uploads that are too big, not CSV, or a million rows.

The product degrades with a message and keeps what it has: a hung download fails within its bound,
a partial download keeps the expiries that arrived (and says which failed), a corrupt snapshot is
reported and left on disk, a failed snapshot save never loses the downloaded chain.
yfinance is replaced by a fake (``YahooSource``'s module-level ``_yf_ticker`` factory); no network.
"""
from __future__ import annotations

import errno
import gzip
import io
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.errors import (
    DataSourceError,
    FormatError,
    InputError,
    NetworkError,
    NoOptionsError,
    RateLimitError,
    SnapshotError,
    SourceTimeout,
    UnknownTickerError,
)

ROOT = Path(__file__).resolve().parents[1]
Options = namedtuple("Options", ["calls", "puts", "underlying"])
_RELEASE = threading.Event()


@pytest.fixture(scope="module", autouse=True)
def _release_hung_threads():
    """Hung fake calls wait on this event; release them when the module ends."""
    yield
    _RELEASE.set()


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    """Snapshots go to a fresh folder per test (never the user's ~/.dupire_desk)."""
    monkeypatch.setenv("DUPIRE_DESK_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# ----------------------------------------------------------------------------------------- a fake yfinance
@pytest.fixture(scope="module")
def market():
    """The demo chain quoted now (every expiry in the future), as yfinance-shaped frames per expiry."""
    from core.demo import demo_chain
    from core.quotes import NEW_YORK
    from core.sources.yfcsv import format_occ

    asof = pd.Timestamp.now(tz=NEW_YORK).floor("min").tz_localize(None)
    chain = demo_chain(seed=7, asof=asof)
    frames = {}
    for e, g in list(chain.quotes.groupby("expiry"))[:5]:
        ds = pd.Timestamp(e).strftime("%Y-%m-%d")
        sides = []
        for side in (1, -1):
            h = g[g["cp"] == side]
            sides.append(pd.DataFrame({
                "contractSymbol": [format_occ("SPY", e, side, k) for k in h["strike"]],
                "lastTradeDate": pd.to_datetime(h["last_trade_time"].to_numpy(), utc=True),
                "strike": h["strike"].to_numpy(float), "lastPrice": h["last"].to_numpy(float),
                "bid": h["bid"].to_numpy(float), "ask": h["ask"].to_numpy(float), "change": 0.0,
                "percentChange": 0.0, "volume": h["volume"].to_numpy(float),
                "openInterest": h["open_interest"].to_numpy(float), "impliedVolatility": 0.2,
                "inTheMoney": (side * (chain.spot - h["strike"].to_numpy(float))) > 0,
                "contractSize": "REGULAR", "currency": "USD"}))
        frames[ds] = tuple(sides)
    return chain, frames


class FakeTicker:
    """Looks like ``yfinance.Ticker``; ``mode`` picks the fault."""

    def __init__(self, frames, spot, mode):
        self.frames, self.spot, self.mode, self.n_chain = frames, spot, mode, 0

    @property
    def options(self):
        if self.mode == "hang":
            _RELEASE.wait(60)
        if self.mode == "ratelimit":
            from yfinance.exceptions import YFRateLimitError

            raise YFRateLimitError()
        if self.mode == "dns":
            raise OSError(errno.EHOSTUNREACH, "Could not resolve host: query2.finance.yahoo.com")
        if self.mode in ("unknown", "no_options"):
            return ()
        return tuple(self.frames)

    def option_chain(self, date=None, tz=None):
        self.n_chain += 1
        if self.mode == "hang_chain":
            _RELEASE.wait(60)
        if self.mode == "raise_mid" and self.n_chain == 2:
            raise ConnectionError("Connection reset by peer")
        if self.mode == "ratelimit_mid" and self.n_chain == 2:
            from yfinance.exceptions import YFRateLimitError

            raise YFRateLimitError()
        calls, puts = (f.copy() for f in self.frames[date])
        if self.mode == "partial":
            if self.n_chain == 1:
                return Options(calls.iloc[:0], puts.iloc[:0], {})        # an empty expiry
            if self.n_chain == 2:
                return Options(calls, None, {})                         # calls only
            puts = puts.iloc[: len(puts) // 3]                          # a cut-off list
        if self.mode == "dup_shuffle":
            calls = pd.concat([calls, calls.iloc[::4]]).sample(frac=1.0, random_state=1)
            puts = pd.concat([puts, puts.iloc[::5]]).sample(frac=1.0, random_state=2)
        if self.mode == "junk_columns":
            calls = calls.drop(columns=["bid"])
        return Options(calls, puts, {"regularMarketPrice": self.spot, "regularMarketTime": int(time.time())})

    def history(self, period="5d", interval="1d"):
        if self.mode in ("unknown", "hang"):
            return pd.DataFrame()
        return pd.DataFrame({"Close": [self.spot]}, index=pd.DatetimeIndex([pd.Timestamp.now(tz="UTC")]))


@pytest.fixture()
def fake_yahoo(market, monkeypatch):
    """``set_mode(m)`` makes every new yfinance Ticker a FakeTicker in mode ``m``."""
    from core.sources import yahoo

    chain, frames = market
    state = {"mode": "ok"}
    monkeypatch.setattr(yahoo, "_yf_ticker", lambda sym: FakeTicker(frames, chain.spot, state["mode"]))

    def set_mode(m):
        state["mode"] = m
    return set_mode


def _open(spec="yahoo:SPY", timeout=2.0):
    from core.pipeline import open_source

    return open_source(spec, timeout=timeout)


# ----------------------------------------------------------------------------------------- live data faults
def test_hang_fails_within_the_bound(fake_yahoo):
    fake_yahoo("hang")
    t0 = time.perf_counter()
    with pytest.raises(SourceTimeout, match="did not answer within 1"):
        _open(timeout=1.0)
    assert time.perf_counter() - t0 < 3.0


def test_hang_during_chain_download_fails_within_the_bound(fake_yahoo):
    """Every expiry hangs: after two timeouts in a row the rest are skipped, so the whole download is
    bounded by about two timeouts, not one per expiry."""
    fake_yahoo("hang_chain")
    t0 = time.perf_counter()
    with pytest.raises(SourceTimeout):
        _open(timeout=0.5)
    assert time.perf_counter() - t0 < 0.5 * 2 + 2.0


def test_hang_through_the_cli(fake_yahoo, tmp_path, capsys):
    from core.__main__ import main

    fake_yahoo("hang")
    t0 = time.perf_counter()
    rc = main(["quotes", "yahoo:SPY", "--timeout", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "did not answer" in err and "Traceback" not in err
    assert time.perf_counter() - t0 < 3.0
    assert not (tmp_path / "o").exists()


def test_raise_mid_download_keeps_what_arrived(fake_yahoo, market):
    from core.pipeline import Settings, prepare

    fake_yahoo("raise_mid")
    chain = _open()
    failed = chain.meta["failed_expiries"]
    assert len(failed) == 1 and failed[0]["error"] == "NetworkError"
    assert len(chain.expiries) == len(market[1]) - 1
    assert Path(chain.meta["snapshot_path"]).is_file(), "what arrived is saved"
    prep = prepare(chain, Settings())
    assert len(prep.quotes) == len(chain.quotes)


def test_rate_limit_on_listing(fake_yahoo, tmp_path, capsys):
    from core.__main__ import main

    fake_yahoo("ratelimit")
    with pytest.raises(RateLimitError, match="rate"):
        _open()
    rc = main(["quotes", "yahoo:SPY", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "rate limited" in err.lower() and "Traceback" not in err


def test_rate_limit_mid_download_stops_and_keeps(fake_yahoo, market):
    fake_yahoo("ratelimit_mid")
    chain = _open()
    failed = chain.meta["failed_expiries"]
    assert len(chain.expiries) == 1, "the first expiry arrived and is kept"
    assert failed[0]["error"] == "RateLimitError"
    assert all(f["error"] == "Skipped" for f in failed[1:]), "no more requests after a 429"


def test_partial_chains(fake_yahoo):
    """An empty expiry, one with calls only, and cut-off puts: the chain loads, forwards fall back where
    parity has too few pairs, every quote keeps a reason, and the calibration still runs."""
    from core.pipeline import Settings, calibrate

    fake_yahoo("partial")
    chain = _open()
    assert any(f["error"] == "NoOptionsError" for f in chain.meta["failed_expiries"])
    assert set(chain.quotes["cp"].unique()) == {1, -1}
    cal = calibrate(chain, Settings(n_strikes=20, n_expiries=5))
    t = cal.prepared.forwards.table
    assert np.isfinite(t["F"]).all() and (t["F"] > 0).all()
    assert len(cal.prepared.quotes) == len(chain.quotes)
    assert np.isfinite(cal.local_vol.local_vol).all()


def test_duplicated_and_shuffled_rows(fake_yahoo, market):
    """Duplicates are flagged 'duplicate' (counted, not dropped); order does not change the forwards."""
    from core.pipeline import Settings, prepare

    fake_yahoo("ok")
    clean = prepare(_open(), Settings())
    fake_yahoo("dup_shuffle")
    chain = _open()
    prep = prepare(chain, Settings())
    n_extra = len(chain.quotes) - len(clean.quotes)
    assert n_extra > 0
    assert len(prep.quotes) == len(chain.quotes) and sum(prep.counts.values()) == len(chain.quotes)
    assert prep.counts["ok"] == clean.counts["ok"], "a duplicate never adds a usable quote"
    assert prep.counts["duplicate"] > clean.counts["duplicate"]
    # each extra row is a duplicate, or fails an earlier check like its original (zero bid, ...)
    assert all(prep.counts[k] >= clean.counts[k] for k in clean.counts)
    a = clean.forwards.table.set_index("expiry")["F"]
    b = prep.forwards.table.set_index("expiry")["F"]
    np.testing.assert_allclose(b.loc[a.index].to_numpy(), a.to_numpy(), rtol=1e-4)


def test_no_network_unknown_ticker_no_options(fake_yahoo):
    fake_yahoo("dns")
    with pytest.raises(NetworkError, match="network"):
        _open()
    fake_yahoo("unknown")
    with pytest.raises(UnknownTickerError):
        _open()
    fake_yahoo("no_options")
    with pytest.raises(NoOptionsError):
        _open()


def test_wrong_shape_from_vendor(fake_yahoo):
    fake_yahoo("junk_columns")
    with pytest.raises(DataSourceError):
        _open()


# ----------------------------------------------------------------------------------------- cache folder faults
@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "full"), (errno.EACCES, "permission"),
                                         (errno.EROFS, "read-only")])
def test_cache_folder_full_or_read_only(fake_yahoo, monkeypatch, _home, code, words):
    """The download is still returned; the snapshot error is recorded; no partial file is left."""
    from core.sources import snapshots

    def refuse(fh, data):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(snapshots, "_write_all", refuse)
    fake_yahoo("ok")
    chain = _open()
    assert len(chain.quotes) > 0
    assert words in chain.meta["snapshot_error"].lower()
    folder = _home / "snapshots"
    assert not folder.exists() or list(folder.iterdir()) == [], "no partial file left behind"


def test_cache_folder_cannot_be_created(fake_yahoo, monkeypatch, _home):
    _home.parent.mkdir(parents=True, exist_ok=True)
    _home.write_text("a file where the folder should be")
    fake_yahoo("ok")
    chain = _open()
    assert len(chain.quotes) > 0 and "snapshot_error" in chain.meta


def test_snapshot_save_direct_errors(tmp_path, monkeypatch):
    from core.demo import demo_chain
    from core.sources import snapshots
    from core.sources.snapshots import SnapshotStore

    def refuse(fh, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(snapshots, "_write_all", refuse)
    with pytest.raises(SnapshotError, match="full"):
        SnapshotStore(tmp_path / "s").save(demo_chain())
    assert list((tmp_path / "s").iterdir()) == []
    with pytest.raises(InputError):
        SnapshotStore(tmp_path / "s").save("not a chain")


# ----------------------------------------------------------------------------------------- corrupt snapshots on disk
def _corruptions(good: bytes) -> dict[str, bytes]:
    raw = gzip.decompress(good)
    head, _, body = raw.partition(b"\n")
    return {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "not_gzip": b"hello, I am not a snapshot\n",
        "flipped": good[:40] + bytes([good[40] ^ 0xFF]) + good[41:],
        "no_header": gzip.compress(body),
        "bad_json": gzip.compress(head[:-5] + b"\n" + body),
        "altered_body": gzip.compress(head + b"\n" + body.replace(b"DEMO", b"DEMX", 1)),
        "not_utf8": gzip.compress(b"\xff\xfe\xfa" * 10),
        "header_lies_count": gzip.compress(head.replace(b'"n_quotes": ', b'"n_quotes": 1') + b"\n" + body),
    }


@pytest.fixture(scope="module")
def good_snapshot_bytes(tmp_path_factory):
    from core.demo import demo_chain
    from core.sources.snapshots import SnapshotStore

    c = demo_chain()
    c = c.select_expiries(c.expiries[:2])
    p = SnapshotStore(tmp_path_factory.mktemp("good")).save(c)
    return p.read_bytes()


@pytest.mark.parametrize("kind", ["truncated", "empty", "not_gzip", "flipped", "no_header", "bad_json",
                                  "altered_body", "not_utf8", "header_lies_count"])
def test_corrupt_snapshot_reported_not_deleted(tmp_path, good_snapshot_bytes, kind):
    from core.sources.snapshots import SnapshotStore

    data = _corruptions(good_snapshot_bytes)[kind]
    folder = tmp_path / "snaps"
    folder.mkdir()
    good = folder / "DEMO_20260615T143000Z.csv.gz"
    good.write_bytes(good_snapshot_bytes)
    bad = folder / "DEMO_20260615T143000Z-2.csv.gz"
    bad.write_bytes(data)
    store = SnapshotStore(folder)
    infos = {i.path.name: i for i in store.list()}
    assert set(infos) == {good.name, bad.name}, "the listing shows both, it does not crash"
    assert infos[good.name].ok
    if kind != "header_lies_count":      # the listing reads headers only; this one fails on load
        assert not infos[bad.name].ok and infos[bad.name].error
    with pytest.raises(SnapshotError, match="not deleted|no longer exists|kept"):
        store.load(bad)
    assert bad.read_bytes() == data, "never deleted, never rewritten"
    assert len(store.load(good).quotes) > 0, "the good one still opens"


def test_snapshot_listing_survives_odd_folders(tmp_path):
    from core.sources.snapshots import SnapshotStore

    assert SnapshotStore(tmp_path / "missing").list() == []
    f = tmp_path / "a_file"
    f.write_text("x")
    assert SnapshotStore(f).list() == []
    d = tmp_path / "d"
    (d / "SPY_20261121T153000Z.csv.gz").mkdir(parents=True)       # a folder named like a snapshot
    (d / "notes.txt").write_text("unrelated")
    assert SnapshotStore(d).list() == []


def test_snapshot_load_refuses_paths_outside_the_folder(tmp_path, good_snapshot_bytes):
    from core.sources.snapshots import SnapshotStore

    outside = tmp_path / "elsewhere" / "DEMO_20260615T143000Z.csv.gz"
    outside.parent.mkdir()
    outside.write_bytes(good_snapshot_bytes)
    store = SnapshotStore(tmp_path / "snaps")
    for p in (outside, "../elsewhere/DEMO_20260615T143000Z.csv.gz", "/etc/passwd", 42):
        with pytest.raises(InputError):
            store.load(p)


def test_ui_snapshot_list_never_raises(monkeypatch, _home, good_snapshot_bytes):
    """The sidebar's listing (``ui.data.snapshots``) with corrupt files and a broken store."""
    pytest.importorskip("streamlit")
    from ui import data

    folder = _home / "snapshots"
    folder.mkdir(parents=True)
    (folder / "DEMO_20260615T143000Z.csv.gz").write_bytes(b"garbage")
    (folder / "DEMO_20260615T143000Z-2.csv.gz").write_bytes(good_snapshot_bytes)
    infos = data.snapshots()
    assert len(infos) == 2 and sorted(i.ok for i in infos) == [False, True]
    from core.sources import snapshots as snapmod

    def boom(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(snapmod.SnapshotStore, "list", boom)
    assert data.snapshots() == []


def test_app_sidebar_with_corrupt_snapshot(_home, good_snapshot_bytes):
    """AppTest: choosing 'Saved snapshot' when the newest one is corrupt shows a message, no exception."""
    pytest.importorskip("streamlit")
    if not (ROOT / "app.py").is_file():
        pytest.skip("app.py does not exist yet")
    from streamlit.testing.v1 import AppTest

    folder = _home / "snapshots"
    folder.mkdir(parents=True)
    (folder / "DEMO_20990101T000000Z.csv.gz").write_bytes(good_snapshot_bytes[:100])   # newest, corrupt
    (folder / "DEMO_20260615T143000Z.csv.gz").write_bytes(good_snapshot_bytes)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception
    at.sidebar.radio(key="source").set_value("Saved snapshot").run()
    assert not at.exception, [e.value for e in at.exception]
    texts = " ".join(e.value for e in at.error).lower()
    assert "snapshot" in texts
    assert (folder / "DEMO_20990101T000000Z.csv.gz").read_bytes() == good_snapshot_bytes[:100]


# ----------------------------------------------------------------------------------------- uploads
def _ui_upload(content: bytes, name: str = "upload.csv"):
    from ui import data

    return data.upload(data.bytes_digest(content), (content,), (name,))   # the uploader takes several files


def test_upload_size_limit():
    pytest.importorskip("streamlit")
    from ui import data

    big = b"expiry,strike,cp,bid,ask\n" + b"2026-09-18,100,C,1,1.1\n" * ((data.MAX_UPLOAD_MB * 2**20) // 22 + 10)
    t0 = time.perf_counter()
    with pytest.raises(FormatError, match="limit"):
        _ui_upload(big)
    assert time.perf_counter() - t0 < 2.0, "refused before parsing"


@pytest.mark.parametrize("content, words", [
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not a csv"),
    (b"PK\x03\x04\x00\x00", "excel"),
    (b"", "empty"),
    (b"a;b;c\n1;2;3\n", "accepted formats"),
    (b"expiry,strike,cp,bid,ask\n", "no quote time|no option quotes"),
    (b"expiry,strike,cp,bid,ask\n2026-09-18,100,C,1,1.1\n", "quote time"),
    ("Zürich,strike\n1,2\n".encode("utf-16-le"), "not a csv"),
], ids=["png", "xlsx", "empty", "semicolons", "header-only", "no-asof", "utf16-no-bom"])
def test_upload_not_a_chain(content, words):
    import re

    pytest.importorskip("streamlit")
    with pytest.raises((FormatError, InputError)) as ei:
        _ui_upload(content)
    assert re.search(words, str(ei.value).lower()), str(ei.value)


def test_upload_name_is_never_a_path(tmp_path, monkeypatch):
    """An upload named like a path: read from memory only, the name only in messages and meta."""
    pytest.importorskip("streamlit")
    from core.demo import demo_chain
    from core.sources.tidy import tidy_text
    from ui import data

    monkeypatch.chdir(tmp_path)
    c = demo_chain()
    content = tidy_text(c.select_expiries(c.expiries[:2])).encode()
    for name in ("../../etc/passwd", "/etc/shadow", "C:\\Windows\\win.ini", "..", "quotes.csv\x00.exe"):
        shown = data.safe_name(name)
        assert "/" not in shown and "\\" not in shown
        chain = data.upload(data.bytes_digest(content), (content,), (shown,))
        assert len(chain.quotes) > 0
        dl = data.download_name(shown, "quotes", ext="csv")
        assert "/" not in dl and "\\" not in dl and not dl.startswith(".")
    assert list(tmp_path.iterdir()) == [], "nothing written next to the app"


def test_upload_formulas_never_exported_unescaped():
    """Formula cells in an upload survive as text and come back out of ``safe_csv`` neutralised."""
    pytest.importorskip("streamlit")
    import csv

    from core.export import is_formula_like
    from ui import data

    rows = ["expiry,strike,cp,bid,ask,underlying,quote_time",
            "2026-09-18,100,C,1.0,1.1,=cmd|' /C calc'!A0,2026-06-15T14:30:00Z",
            "2026-09-18,100,P,1.0,1.1,@SUM(1+1),2026-06-15T14:30:00Z",
            "2026-09-18,105,C,0.5,0.6,+HYPERLINK(\"x\"),2026-06-15T14:30:00Z"]
    chain = _ui_upload(("\n".join(rows) + "\n").encode())
    out = data.safe_csv(chain.quotes)
    cells = [c for r in csv.reader(io.StringIO(out.decode(), newline="")) for c in r]
    assert [c for c in cells if is_formula_like(c)] == []
    assert "'=cmd|' /C calc'!A0" in cells


def _million_rows(n: int = 1_000_000) -> bytes:
    """A tidy CSV of ``n`` short rows (about 20 MB: under the 25 MB upload limit)."""
    head = "# asof: 2026-06-15T14:30:00+00:00\nexpiry,strike,cp,bid,ask\n"
    k = np.arange(n) % 5000 + 1
    body = "\n".join(f"2026-09-18,{int(x)},C,1,1.1" for x in k)
    return (head + body + "\n").encode()


def test_million_row_upload_is_under_the_size_limit():
    pytest.importorskip("streamlit")
    from ui import data

    assert len(_million_rows()) < data.MAX_UPLOAD_MB * 2**20, "so only a row guard can refuse it quickly"


@pytest.mark.slow
def test_million_row_upload_refused_within_seconds(tmp_path):
    f = tmp_path / "million.csv"
    f.write_bytes(_million_rows())
    code = textwrap.dedent(f"""
        import time, sys
        sys.path.insert(0, {str(ROOT)!r})
        from ui import data
        content = open({str(f)!r}, 'rb').read()
        t0 = time.perf_counter()
        try:
            data.upload(data.bytes_digest(content), (content,), ('million.csv',))
            print('accepted', time.perf_counter() - t0)
        except Exception as exc:
            print('refused', type(exc).__name__, time.perf_counter() - t0)
    """)
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("a million-row upload was still being parsed after 15 s")
    assert p.stdout.startswith(("refused", "accepted")), p.stderr[-500:]


# ----------------------------------------------------------------------------------------- server settings
def test_streamlit_server_settings():
    """The shipped .streamlit/config.toml: XSRF on, localhost only, the upload limit the app checks,
    no usage statistics, no tracebacks in the browser (docs/ROBUSTNESS.md, "Server settings")."""
    import tomllib

    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    server = cfg["server"]
    assert server["enableXsrfProtection"] is True
    assert server["address"] in ("localhost", "127.0.0.1")
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["client"]["showErrorDetails"] in ("none", False)
    limit = server["maxUploadSize"]
    assert 1 <= limit <= 50
    try:
        from ui import data
    except ImportError:
        return
    assert data.MAX_UPLOAD_MB == limit, "the app's own check and the server's limit agree"


def test_app_yahoo_offline_shows_a_message(monkeypatch):
    """AppTest: Yahoo chosen with the network gone (``DUPIRE_DESK_SIMULATE_OFFLINE``): a message and the
    fallbacks, no exception; a malformed ticker is refused before any request."""
    pytest.importorskip("streamlit")
    if not (ROOT / "app.py").is_file():
        pytest.skip("app.py does not exist yet")
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DUPIRE_DESK_SIMULATE_OFFLINE", "1")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.sidebar.radio(key="source").set_value("Yahoo Finance").run()
    assert not at.exception
    at.sidebar.text_input(key="ticker").set_value("SPY").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "network" in " ".join(e.value for e in at.error).lower()
    assert any(b.label == "Use the demo market" for b in at.button)
    at.sidebar.text_input(key="ticker").set_value("../../etc/passwd").run()
    assert not at.exception
    assert "not a ticker" in " ".join(e.value for e in at.error).lower()
