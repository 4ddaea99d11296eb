"""Automatic format detection of quote files, and export of a chain to each format.

``load_file`` reads the bytes once, sniffs the content (never the file name) and hands it to the
loader that understands it: CBOE delayed quotes (old or modern layout), yfinance-style CSV, or our
tidy CSV. A file no loader understands raises ``FormatError`` naming the accepted formats.
"""
from __future__ import annotations

from typing import Any, Mapping

from core.errors import FormatError, InputError
from core.quotes import QuoteChain
from core.sources import cboe, tidy, yfcsv
from core.sources._io import decode, read_bytes

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
                      chain.exercise, meta)


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
