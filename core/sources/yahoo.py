"""Live option chains from Yahoo Finance (through yfinance), every call bounded in time.

yfinance blocks 90-130 s when the network silently drops packets, and its own timeouts do not
cover the cookie/crumb requests (shared/NOTES.md). So every yfinance call here runs in its own
*daemon* thread and the caller waits at most ``timeout`` seconds on a queue: a hung call is
abandoned (the thread dies with the process, never blocking the caller or interpreter exit) and
``SourceTimeout`` is raised. Failures map to ``core.errors``:

=====================================================  =========================
yfinance / network symptom                             raised
=====================================================  =========================
no answer within ``timeout``; curl/socket timeouts      ``SourceTimeout``
DNS failure, refused connection (``OSError`` family)    ``NetworkError``
``YFRateLimitError``, HTTP 429, "Too Many Requests"     ``RateLimitError``
``YFTickerMissingError`` / no price history             ``UnknownTickerError``
empty ``.options`` for a ticker that has prices         ``NoOptionsError``
empty frames / ``None`` for every expiry                ``NoOptionsError``
malformed ticker text                                   ``InputError``
anything else unexpected                                ``DataSourceError``
=====================================================  =========================

A chain download keeps whatever arrived: expiries that fail are listed in
``meta["failed_expiries"]`` (expiry, error kind, message); it raises only when no expiry arrived.
For an American chain the cash dividends of the last ``DIVIDEND_HISTORY_DAYS`` days come with it, bounded
the same way, in ``meta["dividends"]`` (ex-date, amount; kept in the snapshot) for the trailing yield that
``core.american`` shows beside the implied carry; a failure there never fails the chain
(``meta["dividends_error"]`` says why).
Each successful download is saved as a snapshot (``core.sources.snapshots``); if saving fails the
chain is still returned, with ``meta["snapshot_error"]`` saying why.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import queue
import re
import threading
from typing import Any, Callable

import numpy as np
import pandas as pd

from core.errors import (
    DataSourceError,
    DupireDeskError,
    InputError,
    NetworkError,
    NoOptionsError,
    RateLimitError,
    SnapshotError,
    SourceTimeout,
    UnknownTickerError,
)
from core.quotes import QuoteChain
from core.sources.snapshots import SnapshotStore
from core.sources.yfcsv import chain_from_yfinance_frames

_TICKER_RE = re.compile(r"^[A-Za-z0-9^.\-=]{1,12}$")
#: at most this many abandoned (hung) yfinance threads at once; beyond it calls fail fast
MAX_HUNG_THREADS = 16
#: a chain download stops after this many consecutive timeouts (the network is gone)
MAX_CONSECUTIVE_TIMEOUTS = 2
#: an American chain keeps the cash dividends whose ex-date is at most this many days before the download
DIVIDEND_HISTORY_DAYS = 400

_hung_lock = threading.Lock()
_hung: set[threading.Thread] = set()


def validate_ticker(ticker: Any) -> str:
    """The ticker in upper case, or ``InputError``: letters, digits and ``^ . - =``, 1-12 characters."""
    if not isinstance(ticker, str):
        raise InputError(f"ticker must be text such as 'SPY' or '^SPX', got {type(ticker).__name__}")
    t = ticker.strip()
    if not _TICKER_RE.match(t):
        shown = t[:20] + ("..." if len(t) > 20 else "")
        raise InputError(f"ticker {shown!r} is not a valid symbol: use 1-12 letters, digits or ^ . - = "
                         "(e.g. SPY, AAPL, ^SPX)")
    return t.upper()


def _yf_ticker(symbol: str):
    """A ``yfinance.Ticker`` (imported lazily: yfinance is slow to import and optional offline)."""
    import yfinance

    return yfinance.Ticker(symbol)


def _status_code(exc: BaseException) -> int | None:
    resp = getattr(exc, "response", None)
    code = getattr(resp, "status_code", None)
    try:
        return int(code) if code is not None else None
    except (TypeError, ValueError):
        return None


def map_error(exc: BaseException, what: str) -> DupireDeskError:
    """The ``core.errors`` exception for a failure of a yfinance call doing ``what``."""
    if isinstance(exc, DupireDeskError):
        return exc
    name = type(exc).__name__
    names = {c.__name__ for c in type(exc).__mro__}
    text = str(exc)
    if "YFRateLimitError" in names or _status_code(exc) == 429 or "Too Many Requests" in text or " 429" in text:
        return RateLimitError(f"Yahoo Finance refused {what}: too many requests (rate limited, HTTP 429). "
                              "Wait a minute or two and try again; saved snapshots still work meanwhile.")
    if "YFTickerMissingError" in names:
        return UnknownTickerError(f"Yahoo Finance does not know the ticker ({text}). Check the symbol "
                                  "(indices need a caret: ^SPX, ^NDX).")
    if isinstance(exc, TimeoutError) or "Timeout" in names:
        return SourceTimeout(f"Yahoo Finance timed out while {what} ({name}). Try again, or open a saved "
                             "snapshot or a file.")
    if isinstance(exc, (OSError, ConnectionError)):
        return NetworkError(f"no connection to Yahoo Finance while {what} ({name}: {text[:200]}). Check the "
                            "network; saved snapshots and files work offline.")
    return DataSourceError(f"Yahoo Finance failed while {what}: {name}: {text[:300]}")


class YahooSource:
    """Yahoo Finance option chains with bounded waits, error mapping and snapshots.

    Parameters
    ----------
    timeout : float
        Seconds to wait for each yfinance call (listing expiries, one expiry's chain, the spot).
    snapshot_store : SnapshotStore, None or False
        Where successful downloads are saved; None = ``SnapshotStore()`` (the default folder),
        False = do not save.
    cache_dir : path, optional
        Shorthand for ``snapshot_store=SnapshotStore(cache_dir)``.
    ticker_factory : callable, optional
        ``symbol -> yfinance.Ticker``-like object (tests pass fakes); default ``yfinance.Ticker``.
    """

    def __init__(self, timeout: float = 8.0, snapshot_store: Any = None, *, cache_dir: Any = None,
                 ticker_factory: Callable[[str], Any] | None = None) -> None:
        try:
            t = float(timeout)
        except (TypeError, ValueError):
            t = float("nan")
        if not (np.isfinite(t) and 0 < t <= 600):
            raise InputError(f"timeout must be a number of seconds in (0, 600], got {timeout!r}")
        self.timeout = t
        if snapshot_store is None and cache_dir is not None:
            snapshot_store = SnapshotStore(cache_dir)
        elif snapshot_store is None:
            snapshot_store = SnapshotStore()
        self.snapshot_store = snapshot_store or None
        self._factory = ticker_factory or _yf_ticker
        self._tickers: dict[str, Any] = {}

    # -- the bounded call ---------------------------------------------------------------------
    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        """Run ``fn()`` in a daemon thread; its result, or the mapped error, within ``timeout`` s."""
        with _hung_lock:
            for th in [th for th in _hung if not th.is_alive()]:
                _hung.discard(th)
            if len(_hung) >= MAX_HUNG_THREADS:
                raise SourceTimeout(f"Yahoo Finance is not answering ({len(_hung)} earlier requests are still "
                                    f"stuck); not {what}. Try again later, or open a snapshot or a file.")
        box: queue.Queue = queue.Queue(maxsize=1)

        def run() -> None:
            try:
                box.put((True, fn()))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread as is
                box.put((False, exc))

        th = threading.Thread(target=run, name=f"yfinance: {what}"[:60], daemon=True)
        th.start()
        try:
            ok, value = box.get(timeout=self.timeout)
        except queue.Empty:
            with _hung_lock:
                _hung.add(th)
            raise SourceTimeout(f"Yahoo Finance did not answer within {self.timeout:g} s while {what}; the "
                                "network may be down or dropping packets. Try again, or open a saved "
                                "snapshot or a file.") from None
        if ok:
            return value
        raise map_error(value, what) from None

    def _ticker(self, symbol: str) -> Any:
        if symbol not in self._tickers:
            self._tickers[symbol] = self._call(lambda: self._factory(symbol), f"opening {symbol}")
        return self._tickers[symbol]

    # -- public API ---------------------------------------------------------------------------
    def spot(self, ticker: str) -> float:
        """Last price of the underlying (last close of a 5-day daily history), bounded in time.

        Raises ``UnknownTickerError`` when Yahoo has no prices for it, else the mapped errors.
        """
        return self._spot_and_time(validate_ticker(ticker))[0]

    def _spot_and_time(self, sym: str) -> tuple[float, pd.Timestamp | None]:
        t = self._ticker(sym)
        hist = self._call(lambda: t.history(period="5d", interval="1d"), f"fetching the price of {sym}")
        if not isinstance(hist, pd.DataFrame) or hist.empty or "Close" not in hist.columns:
            raise UnknownTickerError(f"Yahoo Finance has no recent prices for {sym!r}: is the symbol right "
                                     "(indices need a caret: ^SPX)?")
        close = pd.to_numeric(hist["Close"], errors="coerce").dropna()
        close = close[np.isfinite(close) & (close > 0)]
        if close.empty:
            raise UnknownTickerError(f"Yahoo Finance returned no usable price for {sym!r}")
        when = close.index[-1]
        try:
            when = pd.Timestamp(when)
            when = when.tz_convert("UTC") if when.tzinfo else when.tz_localize("UTC")
        except (TypeError, ValueError):
            when = None
        return float(close.iloc[-1]), when

    def expiries(self, ticker: str) -> list[_dt.date]:
        """Listed expiry dates of ``ticker``, sorted.

        Raises ``NoOptionsError`` when the ticker has prices but no listed options,
        ``UnknownTickerError`` when it has neither, and the other mapped errors.
        """
        sym = validate_ticker(ticker)
        return self._expiries(sym)

    def _expiries(self, sym: str) -> list[_dt.date]:
        t = self._ticker(sym)
        opts = self._call(lambda: t.options, f"listing the expiries of {sym}")
        dates = set()
        for s in list(opts or ()):
            try:
                dates.add(pd.Timestamp(str(s)).date())
            except (ValueError, TypeError):
                continue
        if not dates:
            try:
                self._spot_and_time(sym)
            except UnknownTickerError:
                raise UnknownTickerError(f"Yahoo Finance knows no ticker {sym!r} (no options, no prices). "
                                         "Check the symbol; indices need a caret (^SPX).") from None
            except DataSourceError:
                pass
            raise NoOptionsError(f"{sym} has no listed options on Yahoo Finance; pick an optionable ticker "
                                 "(e.g. SPY, AAPL, ^SPX) or load a file.")
        return sorted(dates)

    def chain(self, ticker: str, expiries: Any = None, progress: Callable[[int, int, str], Any] | None = None
              ) -> QuoteChain:
        """Download the option chain of ``ticker`` for ``expiries`` (dates; None = all listed).

        ``progress(done, total, message)`` is called before each expiry and at the end (errors in it
        are ignored). Expiries that fail are skipped and recorded in ``meta["failed_expiries"]``;
        after a rate limit or repeated timeouts the rest are skipped too. The quote time is the
        download time. Returns a ``QuoteChain`` (source 'yahoo'), saved as a snapshot
        (``meta["snapshot_path"]``, or ``meta["snapshot_error"]`` when saving failed).
        Raises the mapped error when nothing at all could be downloaded; ``InputError`` for a bad
        ticker or an expiry that is not listed.
        """
        sym = validate_ticker(ticker)

        def tell(done: int, total: int, msg: str) -> None:
            if progress is not None:
                try:
                    progress(done, total, msg)
                except Exception:  # noqa: BLE001 - a UI callback must not break the download
                    pass

        tell(0, 1, f"listing the expiries of {sym}")
        listed = self._expiries(sym)
        if expiries is None:
            wanted = listed
        else:
            if isinstance(expiries, (str, _dt.date, pd.Timestamp)):
                expiries = [expiries]
            wanted = []
            for e in expiries:
                try:
                    d = pd.Timestamp(e).date()
                except (ValueError, TypeError):
                    raise InputError(f"expiry {str(e)[:30]!r} is not a date (YYYY-MM-DD)") from None
                if d not in listed:
                    raise InputError(f"{d} is not a listed expiry of {sym}; listed: "
                                     f"{', '.join(str(x) for x in listed[:12])}{' ...' if len(listed) > 12 else ''}")
                wanted.append(d)
            wanted = sorted(set(wanted))
            if not wanted:
                raise InputError("expiries is empty: pick at least one expiry, or None for all")
        t = self._ticker(sym)
        total = len(wanted)
        calls, puts, exps, failed = [], [], [], []
        underlying_info: dict = {}
        errors: list[DupireDeskError] = []
        timeouts = 0
        stop_reason = None
        for i, d in enumerate(wanted):
            ds = d.isoformat()
            if stop_reason is not None:
                failed.append({"expiry": ds, "error": "Skipped", "message": stop_reason})
                continue
            tell(i, total, f"downloading {sym} {ds} ({i + 1}/{total})")
            try:
                oc = self._call(lambda ds=ds: t.option_chain(ds), f"downloading the {ds} chain of {sym}")
                c = getattr(oc, "calls", None)
                p = getattr(oc, "puts", None)
                c = c if isinstance(c, pd.DataFrame) and len(c) else None
                p = p if isinstance(p, pd.DataFrame) and len(p) else None
                if c is None and p is None:
                    raise NoOptionsError(f"Yahoo Finance returned an empty chain for {sym} {ds}")
                for frame in (c, p):
                    if frame is not None:
                        have = {str(col).strip().lower() for col in frame.columns}
                        if not {"strike", "bid", "ask"} <= have:
                            raise DataSourceError(f"Yahoo Finance's {ds} chain of {sym} lacks strike/bid/ask "
                                                  f"columns (it has {sorted(have)[:12]})")
                info = getattr(oc, "underlying", None)
                if isinstance(info, dict) and info:
                    underlying_info = info
                calls.append(c)
                puts.append(p)
                exps.append(ds)
                timeouts = 0
            except DupireDeskError as exc:
                errors.append(exc)
                failed.append({"expiry": ds, "error": type(exc).__name__, "message": str(exc)})
                if isinstance(exc, RateLimitError):
                    stop_reason = "not downloaded: Yahoo Finance rate-limited an earlier request"
                elif isinstance(exc, SourceTimeout):
                    timeouts += 1
                    if timeouts >= MAX_CONSECUTIVE_TIMEOUTS:
                        stop_reason = f"not downloaded: {timeouts} requests in a row timed out"
        if not exps:
            tell(total, total, f"no chain of {sym} could be downloaded")
            raise _worst(errors, sym)
        fetched = pd.Timestamp.now(tz="UTC").floor("s")
        spot, spot_time, spot_error = _spot_from_info(underlying_info)
        if spot is None:
            try:
                spot, spot_time = self._spot_and_time(sym)
            except DupireDeskError as exc:
                spot, spot_time, spot_error = None, None, str(exc)
        meta = {
            "ticker": sym, "fetched_at": fetched.isoformat(), "requested_expiries": [d.isoformat() for d in wanted],
            "failed_expiries": failed, "vendor": "Yahoo Finance via yfinance",
        }
        if spot_error:
            meta["spot_error"] = spot_error
        try:
            chain = chain_from_yfinance_frames(calls, puts, exps, underlying=sym, spot=spot, asof=fetched,
                                               source="yahoo", meta=meta)
        except InputError as exc:  # FormatError included: frames without usable rows
            raise NoOptionsError(f"Yahoo Finance's chains of {sym} hold no usable quotes ({exc})") from None
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            raise DataSourceError(f"Yahoo Finance's chains of {sym} came in an unexpected shape "
                                  f"({type(exc).__name__}: {exc})") from None
        q = chain.quotes.sort_values(["expiry", "strike", "cp"], ascending=[True, True, False], kind="stable")
        chain = dataclasses.replace(chain, quotes=q.reset_index(drop=True),
                                    spot_time=spot_time if spot is not None else None)
        if chain.exercise == "american":
            extra: dict[str, Any] = {}
            if stop_reason is not None:
                extra["dividends_error"] = stop_reason
            else:
                tell(total, total, f"downloading the dividends of {sym}")
                try:
                    div = self._dividends(t, sym)
                    div = div[div.index >= fetched - pd.Timedelta(days=DIVIDEND_HISTORY_DAYS)]
                    extra["dividends"] = [{"ex_date": i.date().isoformat(), "amount": float(v)} for i, v in div.items()]
                except DupireDeskError as exc:
                    extra["dividends_error"] = str(exc)
            chain = dataclasses.replace(chain, meta={**chain.meta, **extra})
        chain = self._save(chain)
        tell(total, total, f"{sym}: {len(chain.quotes):,} quotes in {len(exps)} expiries"
             + (f", {len(failed)} failed" if failed else ""))
        return chain

    def dividends(self, ticker: str) -> pd.Series:
        """Cash dividends of ``ticker`` per ex-date (UTC timestamps, sorted; amounts per share), bounded in time.

        Empty when the underlying pays none. Raises the mapped errors (``SourceTimeout``, ...) or
        ``DataSourceError`` when Yahoo answers with something else than a series.
        """
        sym = validate_ticker(ticker)
        return self._dividends(self._ticker(sym), sym)

    def _dividends(self, t: Any, sym: str) -> pd.Series:
        raw = self._call(lambda: t.dividends, f"downloading the dividends of {sym}")
        if raw is None:
            return pd.Series(dtype=float, index=pd.DatetimeIndex([], tz="UTC"))
        if not isinstance(raw, pd.Series):
            raise DataSourceError(f"Yahoo Finance's dividends of {sym} came as {type(raw).__name__}, not a series")
        try:
            idx = pd.to_datetime(raw.index, utc=True)
        except (TypeError, ValueError) as exc:
            raise DataSourceError(f"Yahoo Finance's dividends of {sym} have unreadable dates ({exc})") from None
        amount = pd.to_numeric(pd.Series(raw.to_numpy(), index=idx), errors="coerce")
        amount = amount[np.isfinite(amount) & (amount > 0)]
        return amount.sort_index()

    def _save(self, chain: QuoteChain) -> QuoteChain:
        meta = dict(chain.meta)
        if self.snapshot_store is None:
            meta["snapshot_error"] = "snapshots are switched off"
        else:
            try:
                meta["snapshot_path"] = str(self.snapshot_store.save(chain))
            except SnapshotError as exc:
                meta["snapshot_error"] = str(exc)
            except OSError as exc:
                meta["snapshot_error"] = f"could not save the snapshot: {exc}"
        return dataclasses.replace(chain, meta=meta)


def _spot_from_info(info: dict) -> tuple[float | None, pd.Timestamp | None, str | None]:
    """Spot and its time from the ``underlying`` dict of ``option_chain`` (regularMarketPrice/Time)."""
    try:
        price = float(info.get("regularMarketPrice"))
    except (TypeError, ValueError, AttributeError):
        return None, None, None
    if not (np.isfinite(price) and price > 0):
        return None, None, None
    when = None
    try:
        raw = info.get("regularMarketTime")
        if raw is not None:
            when = pd.Timestamp(int(raw), unit="s", tz="UTC")
    except (TypeError, ValueError, OverflowError):
        when = None
    return price, when, None


def _worst(errors: list[DupireDeskError], sym: str) -> DupireDeskError:
    """The error to raise when no expiry came: the most actionable kind seen."""
    for kind in (RateLimitError, NetworkError, SourceTimeout, UnknownTickerError):
        for e in errors:
            if isinstance(e, kind):
                return e
    if errors and all(isinstance(e, NoOptionsError) for e in errors):
        return NoOptionsError(f"Yahoo Finance returned empty chains for every expiry of {sym} (outside market "
                              "hours Yahoo sometimes sends no quotes); try later or open a snapshot.")
    return errors[0] if errors else NoOptionsError(f"no option chain of {sym} could be downloaded")
