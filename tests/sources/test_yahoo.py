"""Yahoo source without a network: fakes shaped like yfinance's objects, and every failure it has.

The fake ``Ticker`` returns what yfinance 1.7 returns (``.options`` a tuple of 'YYYY-MM-DD' strings,
``option_chain(date)`` a namedtuple ``(calls, puts, underlying)`` of frames with yfinance's 14
columns, ``history()`` a frame with ``Close``), built from the demo market so the numbers are
realistic; its behaviour can be switched to hang, raise, rate-limit, return nothing, or return
duplicated and shuffled rows.
"""
from __future__ import annotations

import errno
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

from core.cleaning import clean_quotes, reason_counts
from core.demo import demo_chain
from core.errors import (
    DataSourceError,
    InputError,
    NetworkError,
    NoOptionsError,
    RateLimitError,
    SourceTimeout,
    UnknownTickerError,
)
from core.forwards import implied_forwards
from core.quotes import NEW_YORK
from core.sources import snapshots as snapmod
from core.sources import yahoo
from core.sources.snapshots import SnapshotStore
from core.sources.yahoo import YahooSource, map_error, validate_ticker
from core.sources.yfcsv import YF_COLUMNS, format_occ
from tests.conftest import ROOT

Options = namedtuple("Options", ["calls", "puts", "underlying"])
_RELEASE = threading.Event()   # set at the end of the module so that hung fake threads finish


@pytest.fixture(scope="module", autouse=True)
def _release_hung_threads():
    yield
    _RELEASE.set()


@pytest.fixture(scope="module")
def market():
    """A demo chain quoted now (so that every expiry is in the future), as yfinance frames."""
    asof = pd.Timestamp.now(tz=NEW_YORK).floor("min").tz_localize(None)
    chain = demo_chain(seed=7, asof=asof)
    q = chain.quotes
    frames = {}
    for e, g in q.groupby("expiry"):
        ds = pd.Timestamp(e).strftime("%Y-%m-%d")
        frames[ds] = tuple(_yf_frame(g[g["cp"] == side], e, side, chain.spot) for side in (1, -1))
    return chain, frames


def _yf_frame(g: pd.DataFrame, expiry, side: int, spot: float) -> pd.DataFrame:
    """One side of one expiry in yfinance's exact column set and dtypes."""
    f = pd.DataFrame({
        "contractSymbol": [format_occ("SPXW", expiry, side, k) for k in g["strike"]],
        "lastTradeDate": pd.to_datetime(g["last_trade_time"].to_numpy(), utc=True),
        "strike": g["strike"].to_numpy(float),
        "lastPrice": g["last"].to_numpy(float),
        "bid": g["bid"].to_numpy(float),
        "ask": g["ask"].to_numpy(float),
        "change": 0.0, "percentChange": 0.0,
        "volume": g["volume"].to_numpy(float),
        "openInterest": g["open_interest"].to_numpy(float),
        "impliedVolatility": 0.2,
        "inTheMoney": (side * (spot - g["strike"].to_numpy(float))) > 0,
        "contractSize": "REGULAR", "currency": "USD",
    })
    assert list(f.columns) == YF_COLUMNS
    return f


class FakeTicker:
    """yfinance.Ticker look-alike; ``mode`` picks a failure, ``chain_hook(ds)`` overrides one expiry."""

    def __init__(self, symbol, frames, spot, mode="ok", chain_hook=None):
        self.ticker, self.frames, self.spot, self.mode, self.chain_hook = symbol, frames, spot, mode, chain_hook
        self.calls: list[str] = []

    @property
    def options(self):
        self.calls.append("options")
        if self.mode == "hang":
            _RELEASE.wait()
        if self.mode == "ratelimit":
            from yfinance.exceptions import YFRateLimitError
            raise YFRateLimitError()
        if self.mode == "dns":
            from curl_cffi.requests.exceptions import DNSError
            raise DNSError("Could not resolve host: query2.finance.yahoo.com")
        if self.mode == "http429":
            exc = RuntimeError("HTTP Error")
            exc.response = type("R", (), {"status_code": 429})()
            raise exc
        if self.mode in ("unknown", "no_options"):
            return ()
        return tuple(self.frames)

    def option_chain(self, date=None, tz=None):
        self.calls.append(f"chain {date}")
        if self.chain_hook is not None:
            out = self.chain_hook(date)
            if out is not None:
                return out
        if self.mode == "empty":
            return Options(None, None, None)
        c, p = self.frames[date]
        return Options(c.copy(), p.copy(), {"regularMarketPrice": self.spot, "regularMarketTime": int(time.time())})

    def history(self, period="5d", interval="1d", **kw):
        self.calls.append("history")
        if self.mode == "unknown":
            return pd.DataFrame(columns=["Open", "High", "Low", "Close", "Volume"])
        idx = pd.DatetimeIndex([pd.Timestamp.now(tz=NEW_YORK).normalize()])
        return pd.DataFrame({"Close": [self.spot]}, index=idx)


def source(market, tmp_path, mode="ok", timeout=2.0, chain_hook=None, store=True):
    chain, frames = market
    fakes = []

    def factory(sym):
        fakes.append(FakeTicker(sym, frames, chain.spot, mode, chain_hook))
        return fakes[-1]

    st = SnapshotStore(tmp_path / "snaps") if store else False
    src = YahooSource(timeout=timeout, snapshot_store=st, ticker_factory=factory)
    src.fakes = fakes
    return src


# -- happy path -------------------------------------------------------------------------------

def test_chain_from_recorded_shape_frames(market, tmp_path):
    chain0, frames = market
    calls = []
    src = source(market, tmp_path)
    ch = src.chain("^SPX", progress=lambda d, t, m: calls.append((d, t, m)))
    assert ch.source == "yahoo" and ch.underlying == "SPX" and ch.exercise == "european"
    assert len(ch.quotes) == sum(len(c) + len(p) for c, p in frames.values())
    assert ch.spot == pytest.approx(chain0.spot)
    assert ch.meta["failed_expiries"] == []
    assert [pd.Timestamp(e).date() for e in ch.expiries] == src.expiries("^SPX")
    # progress: monotone, ends at total
    assert calls[-1][0] == calls[-1][1] and all(a[0] <= b[0] for a, b in zip(calls, calls[1:], strict=False))
    # the parity forwards of what came through Yahoo's shape agree with the true ones (T differs by the
    # seconds between the demo's quote time and the fetch, so compare carry, not exact forwards)
    fw = implied_forwards(ch)
    true = chain0.meta["forwards"]
    T = fw.table["T"].to_numpy()
    assert np.allclose(fw.table["F"], true.F(T), rtol=2e-4)
    # saved as a snapshot that reopens to the same quotes
    path = Path(ch.meta["snapshot_path"])
    assert path.exists() and path.parent == tmp_path / "snaps"
    back = SnapshotStore(tmp_path / "snaps").load(path)
    pd.testing.assert_frame_equal(back.quotes, ch.quotes, check_dtype=False)
    assert back.meta["failed_expiries"] == []


def test_selected_expiries_and_unlisted_expiry(market, tmp_path):
    _, frames = market
    src = source(market, tmp_path)
    two = sorted(frames)[:2]
    ch = src.chain("^SPX", expiries=two)
    assert [pd.Timestamp(e).strftime("%Y-%m-%d") for e in ch.expiries] == two
    with pytest.raises(InputError, match="not a listed expiry"):
        src.chain("^SPX", expiries=["2001-01-19"])
    with pytest.raises(InputError, match="not a date"):
        src.chain("^SPX", expiries=["soon"])


@pytest.mark.parametrize("bad", ["", "   ", "SPY; rm -rf /", "../etc/passwd", "A" * 13, "SP Y", "$SPY", None, 42])
def test_ticker_text_is_validated_before_any_call(market, tmp_path, bad):
    src = source(market, tmp_path)
    with pytest.raises(InputError):
        src.chain(bad)
    assert src.fakes == []


def test_valid_tickers():
    assert validate_ticker(" spy ") == "SPY"
    for t in ("^SPX", "BRK.B", "BRK-B", "EURUSD=X", "A1"):
        assert validate_ticker(t) == t.upper()


# -- failures -----------------------------------------------------------------------------------

def test_hang_fails_within_the_bound(market, tmp_path):
    src = source(market, tmp_path, mode="hang", timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(SourceTimeout, match="did not answer within 0.5 s"):
        src.expiries("SPY")
    assert time.monotonic() - t0 < 2.0


def test_hung_thread_does_not_block_interpreter_exit(tmp_path):
    """A yfinance call stuck forever must not keep the process alive (daemon thread)."""
    code = textwrap.dedent("""
        import threading, time
        from core.sources.yahoo import YahooSource
        from core.errors import SourceTimeout
        class Hang:
            @property
            def options(self):
                threading.Event().wait()
        src = YahooSource(timeout=0.3, snapshot_store=False, ticker_factory=lambda s: Hang())
        try:
            src.expiries("SPY")
        except SourceTimeout:
            print("timeout")
    """)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "timeout"
    assert time.monotonic() - t0 < 30


def test_hang_on_one_expiry_keeps_the_others(market, tmp_path):
    _, frames = market
    stuck = sorted(frames)[3]
    src = source(market, tmp_path, timeout=0.5,
                 chain_hook=lambda d: _RELEASE.wait() if d == stuck else None)
    t0 = time.monotonic()
    ch = src.chain("^SPX")
    assert time.monotonic() - t0 < 5.0
    failed = ch.meta["failed_expiries"]
    assert [f["expiry"] for f in failed] == [stuck] and failed[0]["error"] == "SourceTimeout"
    assert len(ch.expiries) == len(frames) - 1


def test_repeated_timeouts_stop_the_download(market, tmp_path):
    _, frames = market
    first = sorted(frames)[0]
    src = source(market, tmp_path, timeout=0.3, chain_hook=lambda d: None if d == first else _RELEASE.wait())
    t0 = time.monotonic()
    ch = src.chain("^SPX")
    assert time.monotonic() - t0 < 3.0        # two timeouts, then the rest are skipped, not waited for
    kinds = [f["error"] for f in ch.meta["failed_expiries"]]
    assert kinds[:2] == ["SourceTimeout", "SourceTimeout"] and set(kinds[2:]) == {"Skipped"}
    assert len(ch.expiries) == 1


@pytest.mark.parametrize("mode, exc", [("ratelimit", RateLimitError), ("http429", RateLimitError),
                                       ("dns", NetworkError), ("unknown", UnknownTickerError),
                                       ("no_options", NoOptionsError)])
def test_failures_map_to_domain_errors(market, tmp_path, mode, exc):
    src = source(market, tmp_path, mode=mode)
    with pytest.raises(exc) as info:
        src.chain("SPY")
    assert len(str(info.value)) > 20          # a message a trader can act on
    assert not (tmp_path / "snaps").exists() or not list((tmp_path / "snaps").iterdir())


def test_empty_chains_everywhere(market, tmp_path):
    src = source(market, tmp_path, mode="empty")
    with pytest.raises(NoOptionsError, match="empty"):
        src.chain("^SPX")


def test_empty_frames_and_none_count_as_failures(market, tmp_path):
    _, frames = market
    ds = sorted(frames)
    empty_cols = pd.DataFrame(columns=YF_COLUMNS)

    def hook(d):
        if d == ds[0]:
            return Options(empty_cols, empty_cols, {})     # frames with the columns and no rows
        if d == ds[2]:
            return Options(None, None, None)               # what yfinance returns for an empty answer
        return None

    class NoneChain(FakeTicker):                           # and None instead of the namedtuple
        def option_chain(self, date=None, tz=None):
            if date == ds[1]:
                return None
            return super().option_chain(date, tz)

    chain0, fr = market
    st = SnapshotStore(tmp_path / "s")
    src = YahooSource(timeout=2, snapshot_store=st,
                      ticker_factory=lambda s: NoneChain(s, fr, chain0.spot, "ok", hook))
    ch = src.chain("^SPX")
    assert sorted(f["expiry"] for f in ch.meta["failed_expiries"]) == ds[:3]
    assert len(ch.expiries) == len(ds) - 3


def test_raise_mid_download_keeps_partial_chain(market, tmp_path):
    _, frames = market
    ds = sorted(frames)

    def hook(d):
        if d == ds[5]:
            raise ConnectionResetError("connection reset by peer")
        if d == ds[6]:
            raise KeyError("optionChain")      # Yahoo's JSON changed shape
        return None

    src = source(market, tmp_path, chain_hook=hook)
    ch = src.chain("^SPX")
    failed = {f["expiry"]: f["error"] for f in ch.meta["failed_expiries"]}
    assert failed == {ds[5]: "NetworkError", ds[6]: "DataSourceError"}
    assert len(ch.expiries) == len(ds) - 2
    assert Path(ch.meta["snapshot_path"]).exists()      # the partial chain is kept too


def test_rate_limit_mid_download_stops_and_keeps_what_came(market, tmp_path):
    from yfinance.exceptions import YFRateLimitError
    _, frames = market
    ds = sorted(frames)

    def hook(d):
        if d >= ds[2]:
            raise YFRateLimitError()
        return None

    src = source(market, tmp_path, chain_hook=hook)
    ch = src.chain("^SPX")
    kinds = [f["error"] for f in ch.meta["failed_expiries"]]
    assert kinds[0] == "RateLimitError" and set(kinds[1:]) == {"Skipped"}
    assert len(ch.expiries) == 2
    # only one request after the refusal... none: the rest were not even tried
    assert sum(c.startswith("chain") for c in src.fakes[0].calls) == 3


def test_duplicated_and_shuffled_rows(market, tmp_path):
    chain0, frames = market
    rng = np.random.default_rng(0)
    ds = sorted(frames)

    def hook(d):
        c, p = frames[d]
        c2 = pd.concat([c, c.iloc[: len(c) // 3]]).sample(frac=1.0, random_state=int(rng.integers(1e9)))
        p2 = pd.concat([p, p.iloc[::4]]).sample(frac=1.0, random_state=int(rng.integers(1e9)))
        return Options(c2, p2, {"regularMarketPrice": chain0.spot})

    clean = source(market, tmp_path / "a").chain("^SPX")
    messy = source(market, tmp_path / "b", chain_hook=hook).chain("^SPX")
    n_dup = sum(len(c) // 3 + len(p.iloc[::4]) for c, p in frames.values())
    assert len(messy.quotes) == len(clean.quotes) + n_dup
    cq = clean_quotes(messy)
    counts = reason_counts(cq)
    assert counts["duplicate"] >= n_dup and sum(counts.values()) == len(messy.quotes)
    fa, fb = implied_forwards(clean), implied_forwards(messy)
    assert np.allclose(fa.table["F"], fb.table["F"], rtol=1e-9)
    assert np.allclose(fa.table["D"], fb.table["D"], rtol=1e-9)
    assert len(ds) == len(fa.table)


def test_frames_without_price_columns_fail_that_expiry(market, tmp_path):
    _, frames = market
    ds = sorted(frames)

    def hook(d):
        if d == ds[0]:
            c, p = frames[d]
            return Options(c.drop(columns=["bid"]), p, {})
        return None

    ch = source(market, tmp_path, chain_hook=hook).chain("^SPX")
    assert [f["expiry"] for f in ch.meta["failed_expiries"]] == [ds[0]]


# -- snapshots on the way -----------------------------------------------------------------------

def test_snapshot_failure_still_returns_chain(market, tmp_path, monkeypatch):
    def full(fh, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(snapmod, "_write_all", full)
    ch = source(market, tmp_path).chain("^SPX")
    assert "disk is full" in ch.meta["snapshot_error"]
    assert "snapshot_path" not in ch.meta
    assert len(ch.quotes) > 0
    assert [p.name for p in (tmp_path / "snaps").iterdir()] == []    # no temp file left behind


def test_snapshot_in_read_only_folder_still_returns_chain(market, tmp_path, monkeypatch):
    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(snapmod.tempfile, "mkstemp", read_only)
    ch = source(market, tmp_path).chain("^SPX")
    assert "read-only" in ch.meta["snapshot_error"]


def test_snapshots_can_be_switched_off(market, tmp_path):
    ch = source(market, tmp_path, store=False).chain("^SPX")
    assert "switched off" in ch.meta["snapshot_error"]


def test_default_store_follows_dupire_desk_home(monkeypatch, tmp_path):
    monkeypatch.setenv("DUPIRE_DESK_HOME", str(tmp_path / "home"))
    assert YahooSource().snapshot_store.folder == tmp_path / "home" / "snapshots"
    assert YahooSource(cache_dir=tmp_path / "x").snapshot_store.folder == tmp_path / "x"


def test_default_factory_uses_yfinance_ticker(market, tmp_path, monkeypatch):
    yfinance = pytest.importorskip("yfinance")
    chain0, frames = market
    made = []

    def fake_ticker(sym, *a, **k):
        made.append(sym)
        return FakeTicker(sym, frames, chain0.spot)

    monkeypatch.setattr(yfinance, "Ticker", fake_ticker)
    src = YahooSource(timeout=2, snapshot_store=SnapshotStore(tmp_path))
    assert src.expiries("spy") == sorted(pd.Timestamp(d).date() for d in frames)
    assert made == ["SPY"]


def test_map_error_kinds():
    assert isinstance(map_error(TimeoutError("x"), "w"), SourceTimeout)
    assert isinstance(map_error(OSError("x"), "w"), NetworkError)
    assert isinstance(map_error(ValueError("odd"), "w"), DataSourceError)
    from yfinance.exceptions import YFPricesMissingError
    assert isinstance(map_error(YFPricesMissingError("ZZZZ", ""), "w"), UnknownTickerError)


def test_bad_timeout():
    for bad in (0, -1, float("nan"), "soon", 1e6):
        with pytest.raises(InputError):
            YahooSource(timeout=bad, snapshot_store=False)


def test_too_many_hung_threads_fail_fast(monkeypatch):
    monkeypatch.setattr(yahoo, "MAX_HUNG_THREADS", 0)
    src = YahooSource(timeout=1, snapshot_store=False, ticker_factory=lambda s: None)
    t0 = time.monotonic()
    with pytest.raises(SourceTimeout, match="still stuck"):
        src.expiries("SPY")
    assert time.monotonic() - t0 < 0.5
