"""Automatic format detection of quote files, and export of a chain to each format.

``load_file`` reads the bytes once, sniffs the content (never the file name) and hands it to the
loader that understands it: CBOE delayed quotes (old or modern layout), yfinance-style CSV, or our
tidy CSV. A file no loader understands raises ``FormatError`` naming the accepted formats.
``load_files`` loads several files of one underlying and quote day (CBOE downloads one expiry at a
time) into one chain; ``files_in`` lists the quote files of a folder.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from core.errors import FormatError, InputError
from core.quotes import NEW_YORK, QuoteChain, expiry_keys
from core.sources import cboe, tidy, yfcsv
from core.sources._io import decode, iso_or_none, read_bytes

#: (key, description) of every accepted file format, in detection order
FORMATS: list[tuple[str, str]] = [
    ("cboe", "CBOE delayed-quotes CSV, old (2011) or today's layout: spot and quote time in the header "
             "lines, calls | strike | puts rows"),
    ("yfinance-csv", "yfinance option_chain()-style CSV: contractSymbol, lastTradeDate, strike, lastPrice, "
                     "bid, ask, volume, openInterest, impliedVolatility, ... (calls and puts concatenated)"),
    ("tidy-csv", "tidy quotes CSV (Dupire Desk's export, or any table with expiry, strike, cp, bid, ask "
                 "columns; other names via a column mapping)"),
]
FORMAT_KEYS = [k for k, _ in FORMATS]


def accepted_formats() -> str:
    """The accepted formats as one readable sentence (for error messages and the UI)."""
    return "; ".join(f"{k}: {d}" for k, d in FORMATS)


def detect_format(text: str, *, columns: Mapping[str, str] | None = None) -> str | None:
    """The key in ``FORMATS`` of a file's text, or None when no loader understands it."""
    if cboe.sniff_layout(text) is not None:
        return "cboe"
    if yfcsv.sniff(text):
        return "yfinance-csv"
    if tidy.sniff(text, columns):
        return "tidy-csv"
    return None


#: a full SPX chain is about 20,000 rows; a file with many more lines is not an option chain
MAX_ROWS = 200_000


def load_file(src: Any, *, spot: float | None = None, asof: Any = None, name: str | None = None,
              columns: Mapping[str, str] | None = None, fmt: str | None = None,
              max_rows: int | None = MAX_ROWS) -> QuoteChain:
    """Load a quote file of any accepted format (detected from its content) into a ``QuoteChain``.

    Parameters: ``src`` path, bytes (an upload) or file-like; ``spot`` and ``asof`` (naive = New
    York) override or supply what the file lacks; ``name`` the file's name, used only in messages and
    kept in ``meta["file_name"]`` (never as a path); ``columns`` a column mapping for tidy tables;
    ``fmt`` forces a format key; ``max_rows``: refuse, before parsing, a file with more lines than this
    (None: no limit). Raises ``FormatError`` naming the accepted formats when nothing fits.
    """
    label = f"file {name!r}" if name else "file"
    raw = read_bytes(src, what=label)
    if max_rows is not None:
        lines = raw.count(b"\n") + raw.count(b"\r") - raw.count(b"\r\n")
        if lines > max_rows + 10:  # header lines
            raise FormatError(f"the {label} has {lines:,} lines; an option chain has at most {max_rows:,} "
                              "quotes. Export only the expiries you need.")
    text = decode(raw, what=label)
    key = fmt or detect_format(text, columns=columns)
    if key is None:
        first = text.lstrip().splitlines()[0][:80] if text.strip() else ""
        raise FormatError(f"the {label} is in no format Dupire Desk reads (it starts {first!r}). "
                          f"Accepted formats: {accepted_formats()}")
    data = text.encode("utf-8")
    if key == "cboe":
        chain = cboe.read_cboe(data, spot=spot, asof=asof)
    elif key == "yfinance-csv":
        chain = yfcsv.read_yfinance_csv(data, spot=spot, asof=asof)
    elif key == "tidy-csv":
        chain = tidy.read_tidy_csv(data, columns=columns, spot=spot, asof=asof)
    else:
        raise InputError(f"fmt {fmt!r} is not one of {FORMAT_KEYS}")
    meta = dict(chain.meta)
    meta["file_format_key"] = key
    if name:
        meta["file_name"] = str(name)
    return QuoteChain(chain.quotes, chain.underlying, chain.asof, chain.source, chain.spot, chain.spot_time,
                      chain.exercise, meta, chain.market_time)


#: the contract a quote is of: two rows with the same key in two files are one quote downloaded twice
CONTRACT_KEY = ("root", "expiry", "settlement", "strike", "cp")
#: file name endings a folder is searched for (``files_in``)
FOLDER_SUFFIXES = (".csv", ".txt")


def _name_of(src: Any, i: int) -> str:
    """A file's name for messages: the path's last part, an upload's ``.name``, else 'file N'."""
    if isinstance(src, (str, os.PathLike)) and not (isinstance(src, str) and ("\n" in src or "\r" in src)):
        return Path(src).name
    name = getattr(src, "name", None)
    return Path(str(name)).name if isinstance(name, str) and name else f"file {i + 1}"


def files_in(paths: Any) -> list[Path]:
    """The quote files named by ``paths`` (a path or a list of paths): files as given, a folder as the
    files in it ending in ``FOLDER_SUFFIXES`` (sorted by name, not recursive; a LICENSE or README is
    skipped). Raises ``InputError`` for a path that does not exist or a folder without such files."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in FOLDER_SUFFIXES)
            if not found:
                raise InputError(f"the folder {str(item)!r} holds no {' or '.join(FOLDER_SUFFIXES)} files")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise InputError(f"{str(item)!r} is neither a file nor a folder")
    return out


def load_files(sources: Any, *, spot: float | None = None, asof: Any = None, names: Any = None,
               columns: Mapping[str, str] | None = None, fmt: str | None = None,
               max_rows: int | None = MAX_ROWS) -> QuoteChain:
    """Load several files of one underlying and one quote day (e.g. CBOE downloads of one expiry each)
    into one ``QuoteChain``; one file is ``load_file``.

    Parameters: ``sources`` a list of paths, bytes or file-likes (a Streamlit upload's ``.name`` names
    it), or one path to a folder (``files_in``); ``names`` their names for messages (default: the file
    names); ``spot``, ``asof``, ``columns``, ``fmt``, ``max_rows`` as for ``load_file``, applied to each.
    Every file is loaded and checked on its own (its spot, quote time and expiries); then the files must
    name one underlying and one quote day (the session ``core.calendar.market_time`` falls in), else
    ``FormatError`` naming the files. Rows keep their own quote time and ``T`` (from their own market
    time), and gain a ``file`` column. ``asof`` is the latest quote time, ``market_time`` its market time,
    the spot the one of the latest file that gives one. A contract (``CONTRACT_KEY``) quoted in more than
    one file is kept in each and counted in ``meta["duplicates_across_files"]`` (cleaning marks the repeats
    ``duplicate``). ``meta["files"]`` describes each file, ``meta["warnings"]`` gathers theirs.
    """
    if isinstance(sources, (str, os.PathLike)) and Path(sources).is_dir():
        sources = files_in(sources)
    srcs = [sources] if isinstance(sources, (str, os.PathLike, bytes, bytearray)) else list(sources)
    if not srcs:
        raise InputError("no quote files given: pass one file, several files or a folder")
    labels = [str(n) for n in names] if names is not None else [_name_of(s, i) for i, s in enumerate(srcs)]
    if len(labels) != len(srcs):
        raise InputError(f"names has {len(labels)} entries for {len(srcs)} files")
    if len(srcs) == 1:
        return load_file(srcs[0], spot=spot, asof=asof, name=labels[0], columns=columns, fmt=fmt, max_rows=max_rows)
    chains = []
    for src, label in zip(srcs, labels, strict=True):
        try:
            chains.append(load_file(src, spot=spot, asof=asof, name=label, columns=columns, fmt=fmt,
                                    max_rows=max_rows))
        except InputError as exc:
            raise type(exc)(f"{label}: {exc}") from None
    under = {c.underlying.upper() for c in chains}
    if len(under) > 1:
        listing = ", ".join(f"{lb}: {c.underlying}" for lb, c in zip(labels, chains, strict=True))
        raise FormatError(f"the files are of different underlyings ({listing}); load the files of one underlying together")
    days = [pd.Timestamp(c.market_time).tz_convert(NEW_YORK).date() for c in chains]
    if len(set(days)) > 1:
        listing = ", ".join(f"{lb}: {d}" for lb, d in zip(labels, days, strict=True))
        raise FormatError(f"the files are of different quote days (session of the prices: {listing}); "
                          "load the files of one day together")
    frames = [c.quotes.assign(file=lb) for c, lb in zip(chains, labels, strict=True)]
    quotes = pd.concat(frames, ignore_index=True)
    nth = np.repeat(np.arange(len(frames)), [len(f) for f in frames])   # the file of each row (names may repeat)
    keyed = quotes[list(CONTRACT_KEY)].assign(_nth=nth)
    repeats = int(keyed.duplicated().sum())                              # within one file
    across = int(keyed.drop(columns="_nth").duplicated().sum()) - repeats
    latest = max(range(len(chains)), key=lambda i: pd.Timestamp(chains[i].asof))
    with_spot = [i for i in range(len(chains)) if chains[i].spot is not None]
    chosen = max(with_spot, key=lambda i: pd.Timestamp(chains[i].asof)) if with_spot else None
    warnings = [f"{lb}: {w}" for lb, c in zip(labels, chains, strict=True) for w in c.meta.get("warnings", [])]
    spots = sorted({round(chains[i].spot, 6) for i in with_spot})
    if len(spots) > 1:
        warnings.append(f"the files give different spots ({spots[0]:g} to {spots[-1]:g}); the latest file's, "
                        f"{chains[chosen].spot:g} of {labels[chosen]}, is used")
    if across:
        warnings.append(f"{across} quotes are of contracts already quoted in an earlier file: kept and counted, "
                        "cleaning marks them 'duplicate' (the first file's quote is used)")
    sources_ = {c.source for c in chains}
    keys = {c.meta.get("file_format_key") for c in chains}
    meta = {
        "file_format_key": keys.pop() if len(keys) == 1 else "mixed",
        "file_name": f"{labels[0]} and {len(labels) - 1} more",
        "file_names": labels,
        "files": [{"name": lb, "format": c.meta.get("file_format_key"), "asof": iso_or_none(c.asof),
                   "market_time": iso_or_none(c.market_time), "spot": c.spot, "n_quotes": int(len(c.quotes)),
                   "expiries": sorted(set(expiry_keys(c.quotes).dropna()))}
                  for lb, c in zip(labels, chains, strict=True)],
        "duplicates_across_files": across,
        "warnings": warnings,
    }
    exercise = "european" if any(c.exercise == "european" for c in chains) else "american"
    return QuoteChain(quotes=quotes, underlying=chains[latest].underlying, asof=chains[latest].asof,
                      source=sources_.pop() if len(sources_) == 1 else "files",
                      spot=chains[chosen].spot if chosen is not None else None,
                      spot_time=chains[chosen].spot_time if chosen is not None else None,
                      exercise=exercise, meta=meta, market_time=chains[latest].market_time)


def export_chain(chain: QuoteChain, fmt: str) -> bytes:
    """The chain as the bytes of a file in format ``fmt`` (a key of ``FORMATS``), UTF-8.

    ``load_file`` reads every export back (the round trip is tested on the demo chain).
    """
    if fmt == "cboe":
        return cboe.write_cboe(chain, None)
    if fmt == "yfinance-csv":
        return yfcsv.write_yfinance_csv(chain, None)
    if fmt == "tidy-csv":
        return tidy.write_tidy_csv(chain, None)
    raise InputError(f"export format {fmt!r} is not one of {FORMAT_KEYS}")


#: file extension a UI should offer for each export
EXTENSIONS = {"cboe": "csv", "yfinance-csv": "csv", "tidy-csv": "csv"}
