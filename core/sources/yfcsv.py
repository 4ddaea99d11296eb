"""yfinance-style option CSV: the frames of ``Ticker.option_chain()`` (calls and puts) concatenated.

Columns as yfinance has them: ``contractSymbol, lastTradeDate, strike, lastPrice, bid, ask, change,
percentChange, volume, openInterest, impliedVolatility, inTheMoney, contractSize, currency``, possibly
with extra columns. Expiry and call/put come from an explicit column where there is one
(``expiration``/``expiry``/``expirationDate``, ``optionType``/``type``/``cp``/``side``), else from the
OCC symbol (``parse_occ``). yfinance's ``lastTradeDate`` is UTC; ``impliedVolatility`` is kept as
``vendor_iv`` (never trusted). The quote time and spot are not part of yfinance's frames: they come
from the optional columns ``quoteTime`` and ``underlyingPrice`` (which ``write_yfinance_csv`` adds)
or from the ``asof`` and ``spot`` arguments.
"""
from __future__ import annotations

import datetime as _dt
import io
import re
from typing import Any

import numpy as np
import pandas as pd

from core.errors import FormatError, InputError
from core.quotes import QuoteChain
from core.sources._io import (
    build_chain,
    fmt_num,
    guarded,
    iso_or_none,
    numbers,
    read_text,
    underlying_of,
    user_asof,
    user_spot,
    write_out,
)

YF_COLUMNS = ["contractSymbol", "lastTradeDate", "strike", "lastPrice", "bid", "ask", "change",
              "percentChange", "volume", "openInterest", "impliedVolatility", "inTheMoney", "contractSize",
              "currency"]
#: extra columns written by ``write_yfinance_csv`` so that a file carries its own metadata
EXTRA_COLUMNS = ["expiration", "optionType", "underlyingSymbol", "underlyingPrice", "quoteTime"]

_OCC = re.compile(r"^\s*(?P<root>[A-Z][A-Z0-9.]{0,5}?)\s*(?P<date>\d{6})(?P<cp>[CP])(?P<k>\d{8})\s*$")
_EXPIRY_ALIASES = ("expiration", "expiry", "expirationdate", "expiration_date", "expiry_date", "expdate", "exp")
_CP_ALIASES = ("optiontype", "option_type", "type", "cp", "side", "callput", "call_put", "putcall", "right")
_SPOT_ALIASES = ("underlyingprice", "underlying_price", "spot", "regularmarketprice")
_TIME_ALIASES = ("quotetime", "quote_time", "asof", "fetchtime", "fetched", "timestamp")
_UNDERLYING_ALIASES = ("underlyingsymbol", "underlying_symbol", "underlying", "ticker", "symbol")


def parse_occ(symbol: str) -> tuple[str, _dt.date, int, float]:
    """Decode an OCC option symbol ``ROOT YYMMDD C|P SSSSSSSS`` (e.g. ``SPXW220207C02400000``).

    Returns ``(root, expiry date, cp, strike)``; the strike is the last 8 digits / 1000. The root is
    1-6 characters (letters, then digits or dots allowed, as in adjusted roots ``AAPL1``), optionally
    space-padded as in the OCC's 21-character form. Raises ``FormatError`` otherwise (including an
    impossible date).
    """
    if not isinstance(symbol, str):
        raise FormatError(f"OCC symbol must be text, got {type(symbol).__name__}")
    m = _OCC.match(symbol.upper())
    if not m:
        raise FormatError(f"{symbol!r} is not an OCC option symbol like SPXW220207C02400000 "
                          "(root, YYMMDD, C or P, strike x 1000 in 8 digits)")
    d = m.group("date")
    try:
        expiry = _dt.date(2000 + int(d[:2]), int(d[2:4]), int(d[4:6]))
    except ValueError:
        raise FormatError(f"OCC symbol {symbol!r} has no real date in {d!r} (YYMMDD)") from None
    return m.group("root"), expiry, (1 if m.group("cp") == "C" else -1), int(m.group("k")) / 1000.0


def format_occ(root: str, expiry: Any, cp: int, strike: float) -> str:
    """The OCC symbol of an option (inverse of ``parse_occ``); ``FormatError`` if it does not fit."""
    root = str(root).upper()
    if not re.fullmatch(r"[A-Z][A-Z0-9.]{0,5}", root):
        raise FormatError(f"root {root!r} does not fit an OCC symbol (1-6 letters/digits, starting with a letter)")
    k = float(strike) * 1000.0
    if not (np.isfinite(k) and 0 <= k < 1e8 and abs(k - round(k)) < 1e-6):
        raise FormatError(f"strike {strike!r} does not fit an OCC symbol (0 to 99999.999 in steps of 0.001)")
    d = pd.Timestamp(expiry)
    return f"{root}{d.strftime('%y%m%d')}{'C' if cp > 0 else 'P'}{int(round(k)):08d}"


def _find(columns: dict[str, str], aliases) -> str | None:
    for a in aliases:
        if a in columns:
            return columns[a]
    return None


def _cp_values(values: pd.Series) -> np.ndarray:
    s = values.astype(str).str.strip().str.lower()
    out = np.zeros(len(s), dtype=int)
    out[s.isin(["c", "call", "calls", "1", "+1", "1.0"]).to_numpy()] = 1
    out[s.isin(["p", "put", "puts", "-1", "-1.0"]).to_numpy()] = -1
    return out


def yfinance_rows(frame: pd.DataFrame, *, cp: int | None = None, expiry: Any = None,
                  underlying: str | None = None) -> tuple[pd.DataFrame, list[tuple[int, str]]]:
    """Rows of a yfinance-style frame in our column names (before ``make_quotes``).

    ``cp`` / ``expiry`` apply to every row when given (as for yfinance's separate calls and puts
    frames of one expiry); otherwise they come from a column, else from the OCC ``contractSymbol``.
    Returns ``(rows, skipped)``: rows whose expiry or call/put cannot be found are skipped and
    listed as (row number, reason). Raises ``FormatError`` without ``strike``, ``bid`` or ``ask``.
    """
    cols = {str(c).strip().lower(): c for c in frame.columns}
    for need in ("strike", "bid", "ask"):
        if need not in cols:
            raise FormatError(f"the yfinance-style table lacks the column {need!r} "
                              f"(it has {[str(c) for c in frame.columns][:20]})")
    n = len(frame)
    sym_col = cols.get("contractsymbol")
    symbols = frame[sym_col].astype(str).to_numpy() if sym_col is not None else np.array([""] * n)
    parsed: list = []
    for s in symbols:
        try:
            parsed.append(parse_occ(s))
        except FormatError:
            parsed.append(None)
    skipped: list[tuple[int, str]] = []

    if expiry is not None:
        exp = pd.Series([pd.Timestamp(expiry).normalize()] * n, dtype="datetime64[ns]")
    else:
        e_col = _find(cols, _EXPIRY_ALIASES)
        exp = pd.Series([pd.NaT] * n, dtype="datetime64[ns]")
        if e_col is not None:
            exp = pd.to_datetime(frame[e_col], errors="coerce", utc=False, format="mixed")
            if getattr(exp.dt, "tz", None) is not None:
                exp = exp.dt.tz_localize(None)
            exp = exp.dt.normalize().astype("datetime64[ns]").reset_index(drop=True)
        occ_exp = pd.Series([pd.Timestamp(p[1]) if p else pd.NaT for p in parsed], dtype="datetime64[ns]")
        exp = exp.fillna(occ_exp)
    if cp is not None:
        cps = np.full(n, 1 if cp > 0 else -1, dtype=int)
    else:
        c_col = _find(cols, _CP_ALIASES)
        cps = _cp_values(frame[c_col]) if c_col is not None else np.zeros(n, dtype=int)
        occ_cp = np.array([p[2] if p else 0 for p in parsed], dtype=int)
        cps = np.where(cps == 0, occ_cp, cps)
    roots = [p[0] if p else "" for p in parsed]
    if underlying is None:
        u_col = _find(cols, _UNDERLYING_ALIASES[:3])
        if u_col is not None and frame[u_col].notna().any():
            underlying = str(frame[u_col].dropna().astype(str).iloc[0])
    if not any(roots):
        roots = [underlying or ""] * n

    def col(name):
        c = cols.get(name.lower())
        return numbers(frame[c].reset_index(drop=True)) if c is not None else np.full(n, np.nan)

    lt_col = cols.get("lasttradedate")
    if lt_col is not None:
        lt = pd.to_datetime(frame[lt_col].reset_index(drop=True), errors="coerce", utc=True, format="mixed")
    else:
        lt = pd.Series([pd.NaT] * n, dtype="datetime64[ns, UTC]")
    iv = col("impliedVolatility")
    iv = np.where(iv > 1e-4, iv, np.nan)  # yfinance reports 1e-5 or 0 where it has no vol
    rows = pd.DataFrame({
        "root": roots, "expiry": exp.reset_index(drop=True), "strike": col("strike"), "cp": cps,
        "bid": col("bid"), "ask": col("ask"), "last": col("lastPrice"), "last_trade_time": lt,
        "volume": col("volume"), "open_interest": col("openInterest"), "vendor_iv": iv, "symbol": symbols,
    })
    bad = rows["expiry"].isna().to_numpy() | (rows["cp"].to_numpy() == 0) | ~np.isfinite(rows["strike"].to_numpy())
    for i in np.flatnonzero(bad)[:1000]:
        why = ("no expiry" if pd.isna(rows.at[i, "expiry"]) else "no call/put" if rows.at[i, "cp"] == 0
               else "no strike")
        skipped.append((int(i), f"{why} (symbol {symbols[i]!r})"))
    rows = rows[~bad].reset_index(drop=True)
    rows["underlying"] = underlying or (underlying_of(rows["root"].mode().iloc[0]) if len(rows) else "")
    return rows, skipped


def chain_from_yfinance_frames(calls: Any, puts: Any, expiry: Any = None, *, underlying: str, spot: float | None,
                               asof: Any, source: str = "yahoo", meta: dict | None = None) -> QuoteChain:
    """A ``QuoteChain`` from the frames yfinance's ``option_chain(expiry)`` returns.

    ``calls``, ``puts``: DataFrames (or equal-length lists of them, one per expiry); ``expiry``: the
    expiry date string/date (or a list matching the frames; None = from the OCC symbols);
    ``underlying``: the ticker as asked (e.g. '^SPX', 'AAPL'); ``spot``: price or None;
    ``asof``: the quote time (tz-aware, or naive New York). Raises ``NoOptionsError``-free
    ``FormatError`` when the frames hold no usable rows.
    """
    as_list = isinstance(calls, (list, tuple))
    calls_l = list(calls) if as_list else [calls]
    puts_l = list(puts) if isinstance(puts, (list, tuple)) else [puts]
    exps = list(expiry) if isinstance(expiry, (list, tuple)) else [expiry] * len(calls_l)
    if not (len(calls_l) == len(puts_l) == len(exps)):
        raise InputError("calls, puts and expiry must be lists of the same length (one per expiry)")
    ts = user_asof(asof)
    if ts is None:
        raise InputError("asof (the time the quotes were fetched) is required")
    name = str(underlying).upper().lstrip("^")
    parts, skipped = [], []
    for c, p, e in zip(calls_l, puts_l, exps, strict=False):
        for frame, side in ((c, 1), (p, -1)):
            if frame is None or len(frame) == 0:
                continue
            rows, sk = yfinance_rows(frame, cp=side, expiry=e, underlying=name)
            parts.append(rows)
            skipped += sk
    if not parts:
        raise FormatError(f"the option frames of {underlying} hold no quotes")
    df = pd.concat(parts, ignore_index=True)
    df["underlying"] = name
    S = user_spot(spot)
    m = {"ticker": str(underlying), "skipped": [list(x) for x in skipped]}
    m.update(meta or {})
    return build_chain(df, underlying=name, asof=ts, source=source, spot=S, spot_time=ts if S else None, meta=m)


def sniff(text: str) -> bool:
    """True if the first line looks like a yfinance-style header (contractSymbol or strike+bid+ask+lastPrice)."""
    for line in text[:5000].splitlines()[:3]:
        low = line.lower()
        if "contractsymbol" in low and "strike" in low:
            return True
        if all(k in low for k in ("strike", "bid", "ask", "lastprice")):
            return True
    return False


@guarded("yfinance-style CSV")
def read_yfinance_csv(src: Any, *, spot: float | None = None, asof: Any = None,
                      underlying: str | None = None) -> QuoteChain:
    """Read a yfinance ``option_chain()``-style CSV (calls and puts concatenated) into a ``QuoteChain``.

    ``spot``, ``asof`` (naive = New York) and ``underlying`` override the file's optional
    ``underlyingPrice``, ``quoteTime`` and ``underlyingSymbol`` columns. Without a quote time in the file
    or ``asof``, raises ``FormatError`` asking for ``asof``. Spot may stay None (parity gives the forward).
    """
    text = read_text(src, what="yfinance-style CSV")
    try:
        frame = pd.read_csv(io.StringIO(text), comment=None, skip_blank_lines=True, dtype=str,
                            keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise FormatError(f"the yfinance-style CSV could not be parsed: {exc}") from None
    cols = {str(c).strip().lower(): c for c in frame.columns}
    rows, skipped = yfinance_rows(frame, underlying=underlying.upper().lstrip("^") if underlying else None)
    if len(rows) == 0:
        raise FormatError("the yfinance-style CSV holds no option rows with a readable expiry, call/put and strike"
                          + (f"; first problem: row {skipped[0][0]}: {skipped[0][1]}" if skipped else ""))
    ts = user_asof(asof)
    file_time = None
    t_col = _find(cols, _TIME_ALIASES)
    if t_col is not None:
        vals = pd.to_datetime(frame[t_col], errors="coerce", utc=True, format="mixed").dropna()
        if len(vals):
            file_time = vals.iloc[0]
    quote_time = ts if ts is not None else file_time
    if quote_time is None:
        raise FormatError("the yfinance-style CSV has no quote time (no quoteTime column): pass asof= "
                          "(when the quotes were taken, e.g. '2026-06-15 10:30' New York)")
    S = user_spot(spot)
    file_spot = None
    s_col = _find(cols, _SPOT_ALIASES)
    if s_col is not None:
        v = numbers(frame[s_col])
        v = v[np.isfinite(v) & (v > 0)]
        file_spot = float(v[0]) if len(v) else None
    name = rows["underlying"].iloc[0]
    meta = {"file_format": "yfinance-csv", "skipped": [list(x) for x in skipped], "file_spot": file_spot, "file_time": iso_or_none(file_time),
            "overrides": {k: v for k, v in (("spot", S), ("asof", iso_or_none(ts)), ("underlying", underlying)) if v is not None}}
    S = S if S is not None else file_spot
    return build_chain(rows, underlying=name, asof=quote_time, source="yfinance-csv", spot=S,
                       spot_time=quote_time if S is not None else None, meta=meta)


def yfinance_text(chain: QuoteChain) -> str:
    """The chain as yfinance-style CSV text (see ``write_yfinance_csv``)."""
    q = chain.quotes
    roots = q["root"].where(q["root"] != "", chain.underlying)
    symbols = [format_occ(r, e, c, k) for r, e, c, k in zip(roots, q["expiry"], q["cp"], q["strike"], strict=False)]
    F_proxy = chain.spot
    itm = (q["cp"] * (F_proxy - q["strike"]) > 0) if F_proxy is not None else pd.Series(False, index=q.index)
    lt = q["last_trade_time"].map(lambda t: "" if pd.isna(t) else pd.Timestamp(t).tz_convert("UTC").isoformat())
    quote_time = pd.Timestamp(chain.asof).tz_convert("UTC").isoformat()
    out = pd.DataFrame({
        "contractSymbol": symbols, "lastTradeDate": lt, "strike": q["strike"].map(fmt_num),
        "lastPrice": q["last"].map(fmt_num), "bid": q["bid"].map(fmt_num), "ask": q["ask"].map(fmt_num),
        "change": "", "percentChange": "", "volume": q["volume"].map(fmt_num),
        "openInterest": q["open_interest"].map(fmt_num), "impliedVolatility": q["vendor_iv"].map(fmt_num),
        "inTheMoney": itm.map(lambda b: "True" if b else "False"), "contractSize": "REGULAR", "currency": "USD",
        "expiration": q["expiry"].dt.strftime("%Y-%m-%d"), "optionType": np.where(q["cp"] > 0, "call", "put"),
        "underlyingSymbol": chain.underlying, "underlyingPrice": fmt_num(chain.spot) if chain.spot else "",
        "quoteTime": quote_time,
    })
    return out.to_csv(index=False, lineterminator="\n")


def write_yfinance_csv(chain: QuoteChain, dst: Any = None) -> Any:
    """Write ``chain`` as a yfinance-style CSV: yfinance's 14 columns (``contractSymbol`` in OCC form,
    ``lastTradeDate`` UTC ISO) plus ``expiration, optionType, underlyingSymbol, underlyingPrice,
    quoteTime`` so the file carries its own metadata. ``dst``: path, file-like, or None for bytes."""
    return write_out(yfinance_text(chain), dst)
