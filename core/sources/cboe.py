"""CBOE "delayed quotes" CSV downloads, in the old (2011) layout and today's layout.

Old layout (``shared/data/spx_20110124``): line 1 ``SPX (S&P 500 INDEX),1290.59,+7.24,`` (spot),
line 2 ``Jan 24 2011 @ 14:03 ET,`` (quote time), line 3 ``Calls,Last Sale,Net,Bid,Ask,Vol,Open Int,Puts,...``,
then one row per strike with the call and the put side by side, named like
``11 Jan 1075.00 (SPXW1128A1075-E)``: root ``SPXW``, year ``11``, day ``28``, month letter ``A``-``L``
for calls January-December and ``M``-``X`` for puts, strike ``1075``, exchange suffix. The code
carries the day, so weeklies and quarterlies come out right; old SPX monthly codes name the Saturday
after the third Friday, kept as is (``core.quotes`` settles those AM on the Friday).

Modern layout: line 1 ``<name>,Last: 4500.5298,Change: ...`` (spot after ``Last:``), line 2
``"Date: February 5 2022, 8:09 PM EST",Bid: ...`` (quote time), line 3 the header
``Expiration Date,Calls,Last Sale,Net,Bid,Ask,Volume,IV,Delta,Gamma,Open Interest,Strike,Puts,...``,
then rows with OCC symbols (``SPXW220207C02400000``); SPX and SPXW in one file. ``IV`` is kept as
``vendor_iv``.
"""
from __future__ import annotations

import datetime as _dt
import re
from typing import Any

import numpy as np
import pandas as pd

from core.errors import FormatError
from core.quotes import NEW_YORK, QuoteChain
from core.sources._io import (
    build_chain,
    csv_rows,
    fmt_num,
    guarded,
    iso_or_none,
    number,
    parse_time,
    read_text,
    split_lines,
    underlying_of,
    user_asof,
    user_spot,
    write_out,
)
from core.sources.yfcsv import format_occ, parse_occ

MONTH_CODES = "ABCDEFGHIJKL"   # calls Jan..Dec; puts are the next twelve letters M..X
_OLD_CODE = re.compile(r"\((?P<root>[A-Z]{1,6}?)(?P<yy>\d{2})(?P<dd>\d{2})(?P<m>[A-X])(?P<k>\d+(?:\.\d+)?)(?:-(?P<ex>\w+))?\)")
_OLD_NAME = re.compile(r"^\s*(?P<yy>\d{2})\s+(?P<mon>[A-Za-z]{3})\s+(?P<k>\d+(?:\.\d+)?)\s*\(")
_MONTHS = {m: i + 1 for i, m in enumerate(("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"))}

MODERN_HEADER = ["Expiration Date", "Calls", "Last Sale", "Net", "Bid", "Ask", "Volume", "IV", "Delta",
                 "Gamma", "Open Interest", "Strike", "Puts", "Last Sale", "Net", "Bid", "Ask", "Volume",
                 "IV", "Delta", "Gamma", "Open Interest"]
_SIDE = ["Last Sale", "Net", "Bid", "Ask", "Volume", "IV", "Delta", "Gamma", "Open Interest"]


def parse_old_code(code: str) -> tuple[str, _dt.date, int, float]:
    """Decode an old CBOE contract code ``SPXW1128A1075-E`` (with or without parentheses).

    Returns ``(root, expiry date, cp, strike)``: month letter ``A``-``L`` is a call expiring in
    January-December, ``M``-``X`` a put; the two digits after the year are the day of the month.
    Raises ``FormatError`` when the code does not decode to a real date.
    """
    s = code if code.startswith("(") else f"({code})"
    m = _OLD_CODE.search(s)
    if not m:
        raise FormatError(f"{code!r} is not an old CBOE contract code like SPXW1128A1075-E")
    letter = m.group("m")
    idx = ord(letter) - ord("A")
    cp, month = (1, idx + 1) if idx < 12 else (-1, idx - 11)
    try:
        d = _dt.date(2000 + int(m.group("yy")), month, int(m.group("dd")))
    except ValueError:
        raise FormatError(f"contract code {code!r} names no real date "
                          f"(year {m.group('yy')}, month {month}, day {m.group('dd')})") from None
    return m.group("root"), d, cp, float(m.group("k"))


def _is_modern_header(line: str) -> bool:
    s = line.strip().lstrip('"')
    return s.startswith("Expiration Date,") and "Strike" in s and "Calls" in s and "Puts" in s


def sniff_layout(text: str) -> str | None:
    """'old', 'modern' or None, from the first lines of a CBOE download."""
    head = split_lines(text[:20000])[:12]
    if any(_is_modern_header(line) for line in head):
        return "modern"
    for line in head:
        if line.startswith("Calls,") and ",Puts," in line:
            return "old"
    if any(_OLD_CODE.search(line) for line in head[2:]):
        return "old"
    return None


@guarded("CBOE delayed-quotes")
def read_cboe(src: Any, *, spot: float | None = None, asof: Any = None) -> QuoteChain:
    """Read a CBOE delayed-quotes CSV (old or modern layout, detected) into a ``QuoteChain``.

    Parameters: ``src`` path, bytes or file-like; ``spot`` (index points) and ``asof`` (quote time,
    naive = New York) override what the header lines say, and are needed when the header lacks them.
    Rows whose contract cannot be decoded are skipped and listed in ``meta["skipped"]`` (line, reason).
    Raises ``FormatError`` when the text is not a CBOE download.
    """
    text = read_text(src, what="CBOE file")
    layout = sniff_layout(text)
    if layout is None:
        raise FormatError("this is not a CBOE delayed-quotes download: no 'Calls,...,Puts' header "
                          "(old layout) and no 'Expiration Date,Calls,...,Strike,Puts' header (modern layout)")
    lines = split_lines(text)
    return (_read_old if layout == "old" else _read_modern)(lines, spot=user_spot(spot), asof=user_asof(asof))


def _header_spot_time(lines: list[str], header_idx: int, *, modern: bool):
    spot = spot_time = None
    name = ""
    rows = csv_rows(lines[:header_idx])
    if rows and rows[0]:
        name = rows[0][0]
        if modern:
            for f in rows[0][1:]:
                if f.lower().startswith("last:"):
                    spot = number(f.split(":", 1)[1])
        elif len(rows[0]) > 1:
            spot = number(rows[0][1])
    for r in rows[1:]:
        if r and r[0]:
            cand = r[0]
            if modern and not cand.lower().startswith("date"):
                continue
            try:
                spot_time = parse_time(cand, what="CBOE quote time")
            except FormatError:
                spot_time = None
            break
    if spot is not None and not (np.isfinite(spot) and spot > 0):
        spot = None
    return name, spot, spot_time


def _finish(rows: list[dict], *, name: str, file_spot, file_time, spot, asof, layout: str, skipped: list) -> QuoteChain:
    if not rows:
        raise FormatError(f"the CBOE file ({layout} layout) has a header but no readable option rows"
                          + (f"; first problem: line {skipped[0][0]}: {skipped[0][1]}" if skipped else ""))
    quote_time = asof if asof is not None else file_time
    if quote_time is None:
        raise FormatError("the CBOE file's second line gives no readable quote time: pass asof= "
                          "(the time the quotes were taken, New York)")
    S = spot if spot is not None else file_spot
    df = pd.DataFrame(rows)
    roots = df["root"].value_counts()
    underlying = underlying_of(roots.index[0])
    m = re.search(r"\(([A-Z^.]{1,8})\)", name)
    if m and not re.search(r"\s", m.group(1)):
        underlying = m.group(1).lstrip("^")
    meta = {"file_format": f"cboe-{layout}", "header_name": name, "file_spot": file_spot,
            "file_time": iso_or_none(file_time), "skipped": [list(x) for x in skipped],
            "overrides": {k: v for k, v in (("spot", spot), ("asof", iso_or_none(asof))) if v is not None}}
    return build_chain(df, underlying=underlying, asof=quote_time, source="cboe", spot=S,
                       spot_time=quote_time if spot is not None else (file_time or quote_time), meta=meta)


def _read_old(lines: list[str], *, spot, asof) -> QuoteChain:
    header_idx = next((i for i, line in enumerate(lines[:12]) if line.startswith("Calls,") or _OLD_CODE.search(line)), None)
    if header_idx is None:
        raise FormatError("the CBOE file has no 'Calls,Last Sale,...,Puts,...' header in its first lines")
    if not lines[header_idx].startswith("Calls,"):
        header_idx -= 1
    name, file_spot, file_time = _header_spot_time(lines, max(header_idx, 0), modern=False)
    rows: list[dict] = []
    skipped: list[tuple[int, str]] = []
    for lineno, fields in enumerate(csv_rows(lines[header_idx + 1:]), start=header_idx + 2):
        if not any(fields):
            continue
        if len(fields) < 14:
            skipped.append((lineno, f"{len(fields)} fields, expected 14"))
            continue
        for side, off in ((1, 0), (-1, 7)):
            label = fields[off]
            if not label:
                continue
            try:
                root, expiry, cp, k_code = parse_old_code(label)
            except FormatError as exc:
                skipped.append((lineno, str(exc)))
                continue
            if cp != side:
                skipped.append((lineno, f"{label!r} is a {'call' if cp > 0 else 'put'} in the "
                                        f"{'calls' if side > 0 else 'puts'} column"))
                continue
            nm = _OLD_NAME.match(label)
            strike = k_code
            if nm:
                strike = float(nm.group("k"))
                if int(nm.group("yy")) != expiry.year % 100 or _MONTHS.get(nm.group("mon").upper()) != expiry.month:
                    skipped.append((lineno, f"{label!r}: the name's year/month disagree with the code"))
                    continue
            last, _net, bid, ask, vol, oi = (number(f) for f in fields[off + 1: off + 7])
            rows.append({"root": root, "expiry": pd.Timestamp(expiry), "strike": strike, "cp": cp,
                         "bid": bid, "ask": ask, "last": last if last > 0 else np.nan,
                         "volume": vol, "open_interest": oi, "symbol": label[label.find("(") + 1: label.rfind(")")]})
    return _finish(rows, name=name, file_spot=file_spot, file_time=file_time, spot=spot, asof=asof,
                   layout="old", skipped=skipped)


def _read_modern(lines: list[str], *, spot, asof) -> QuoteChain:
    header_idx = next((i for i, line in enumerate(lines[:12]) if _is_modern_header(line)), None)
    if header_idx is None:
        raise FormatError("the CBOE file has no 'Expiration Date,Calls,...,Strike,Puts,...' header in its first lines")
    name, file_spot, file_time = _header_spot_time(lines, header_idx, modern=True)
    header = [h.strip('"') for h in csv_rows([lines[header_idx].strip()])[0]]
    try:
        k_col = header.index("Strike")
        c_col = header.index("Calls")
        p_col = header.index("Puts")
    except ValueError:
        raise FormatError("the CBOE header lacks one of the columns Calls, Strike, Puts") from None
    c_fields = {h: c_col + 1 + i for i, h in enumerate(header[c_col + 1: k_col])}
    p_fields = {h: p_col + 1 + i for i, h in enumerate(header[p_col + 1:])}
    for need in ("Bid", "Ask"):
        if need not in c_fields or need not in p_fields:
            raise FormatError(f"the CBOE header lacks the column {need!r} for calls or puts")
    e_col = header.index("Expiration Date")
    rows: list[dict] = []
    skipped: list[tuple[int, str]] = []
    exp_cache: dict[str, pd.Timestamp | None] = {}
    for lineno, fields in enumerate(csv_rows(lines[header_idx + 1:]), start=header_idx + 2):
        if not any(fields):
            continue
        if len(fields) <= p_col:
            skipped.append((lineno, f"{len(fields)} fields, expected {len(header)}"))
            continue
        etext = fields[e_col]
        if etext not in exp_cache:
            try:
                exp_cache[etext] = pd.Timestamp(etext).normalize() if etext else None
            except (ValueError, TypeError, OverflowError):
                exp_cache[etext] = None
        col_exp = exp_cache[etext]
        strike_col = number(fields[k_col])
        for side, sym_col, cols in ((1, c_col, c_fields), (-1, p_col, p_fields)):
            sym = fields[sym_col]
            if not sym:
                continue
            try:
                root, expiry, cp, strike = parse_occ(sym)
            except FormatError as exc:
                skipped.append((lineno, str(exc)))
                continue
            if cp != side:
                skipped.append((lineno, f"{sym!r} is in the {'calls' if side > 0 else 'puts'} column"))
                continue
            exp = col_exp if col_exp is not None else pd.Timestamp(expiry)
            if col_exp is not None and col_exp.date() != expiry:
                skipped.append((lineno, f"{sym!r}: expiry {expiry} differs from the row's {etext!r}"))
                continue
            if np.isfinite(strike_col) and abs(strike_col - strike) > 1e-6:
                skipped.append((lineno, f"{sym!r}: strike {strike} differs from the row's {strike_col}"))
                continue

            def get(h, _f=fields, _c=cols):
                i = _c.get(h)
                return number(_f[i]) if i is not None and i < len(_f) else np.nan

            last = get("Last Sale")
            rows.append({"root": root, "expiry": exp, "strike": strike, "cp": cp,
                         "bid": get("Bid"), "ask": get("Ask"), "last": last if last > 0 else np.nan,
                         "volume": get("Volume"), "open_interest": get("Open Interest"),
                         "vendor_iv": get("IV"), "symbol": sym})
    return _finish(rows, name=name, file_spot=file_spot, file_time=file_time, spot=spot, asof=asof,
                   layout="modern", skipped=skipped)


_INDEX_NAMES = {"SPX": "S&P 500 Index", "NDX": "Nasdaq 100 Index", "RUT": "Russell 2000 Index",
                "XSP": "Mini-SPX Index", "VIX": "CBOE Volatility Index", "DJX": "Dow Jones Index"}


def cboe_text(chain: QuoteChain) -> str:
    """The chain as text in the modern CBOE layout (see ``write_cboe``)."""
    q = chain.quotes
    asof_ny = pd.Timestamp(chain.asof).tz_convert(NEW_YORK)
    clock = asof_ny.strftime("%I:%M").lstrip("0")
    if asof_ny.second or asof_ny.microsecond:
        clock += asof_ny.strftime(":%S")
        if asof_ny.microsecond:
            clock += f".{asof_ny.microsecond:06d}"
    tzname = asof_ny.tzname() or "ET"
    date = f"{asof_ny.strftime('%B')} {asof_ny.day} {asof_ny.year}, {clock} {asof_ny.strftime('%p')} {tzname}"
    name = _INDEX_NAMES.get(chain.underlying.upper(), chain.underlying)
    name = f"{name} ({chain.underlying})".replace(",", " ")
    spot = fmt_num(chain.spot) if chain.spot is not None else ""
    out = [f"{name},Last: {spot},Change: 0", f'"Date: {date}",Bid: ,Ask: ,Size: ,Volume: ',
           ",".join(MODERN_HEADER)]
    roots = q["root"].where(q["root"] != "", chain.underlying).str.upper()
    work = pd.DataFrame({"expiry": q["expiry"], "root": roots, "strike": q["strike"].astype(float),
                         "cp": q["cp"], "last": q["last"], "bid": q["bid"], "ask": q["ask"],
                         "volume": q["volume"], "iv": q["vendor_iv"], "oi": q["open_interest"]})
    key = ["expiry", "root", "strike"]
    # calls and puts of one expiry, root and strike share a row; repeated quotes pair up in order
    work["n"] = work.groupby(key + ["cp"], sort=False).cumcount()
    calls = work[work["cp"] > 0].drop(columns="cp")
    puts = work[work["cp"] < 0].drop(columns="cp")
    rows = calls.merge(puts, on=key + ["n"], how="outer", suffixes=("_c", "_p"), sort=True)
    exp_text = rows["expiry"].dt.strftime("%a %b %d %Y")
    cols = [exp_text]
    for sfx, side in (("_c", 1), ("_p", -1)):
        side_rows = work[work["cp"] == side].set_index(key + ["n"]).index
        present = pd.Series(pd.MultiIndex.from_frame(rows[key + ["n"]]).isin(side_rows), index=rows.index)
        sym = pd.Series([format_occ(r, e, side, k) for r, e, k in zip(rows["root"], rows["expiry"], rows["strike"], strict=False)],
                        index=rows.index)
        block = [sym, rows["last" + sfx].map(fmt_num), pd.Series("0", index=rows.index),
                 rows["bid" + sfx].map(fmt_num), rows["ask" + sfx].map(fmt_num), rows["volume" + sfx].map(fmt_num),
                 rows["iv" + sfx].map(fmt_num), pd.Series("", index=rows.index), pd.Series("", index=rows.index),
                 rows["oi" + sfx].map(fmt_num)]
        cols += [b.where(present, "") for b in block]
        if side == 1:
            k = rows["strike"]
            cols.append(pd.Series([f"{v:.2f}" if round(v, 2) == v else fmt_num(v) for v in k], index=rows.index))
    body = cols[0].str.cat(cols[1:], sep=",")
    out += body.tolist()
    return "\r\n".join(out) + "\r\n"


def write_cboe(chain: QuoteChain, dst: Any = None) -> Any:
    """Write ``chain`` in the modern CBOE delayed-quotes layout (``read_cboe`` reads it back).

    ``dst``: a path, a file-like, or None to get the bytes back. Calls and puts of one expiry, root and
    strike share a row (a side without a quote is left empty); quote time to the second in New York
    time; Delta and Gamma are left empty; the index name carries the ticker in parentheses.
    Raises ``FormatError`` when a strike or root does not fit an OCC symbol.
    """
    return write_out(cboe_text(chain), dst)
