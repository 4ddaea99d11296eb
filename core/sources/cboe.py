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

Real downloads, as users save them (``shared/data/cboe_modern``): blank lines before the header lines
are skipped; the date line comes in many shapes (``June 11, 2022, 8:47 PM EDT``, ``January 7, 2024 at
10:52 AM EST``, ``26 May 2023, 5:18 PM EDT`` unquoted so that its comma splits the field, month names
in several languages, ``GMT-5``: ``core.sources._io.read_vendor_time``). What the header says is
checked against what the rows imply, never taken on trust:

- the quote time against the expiries (``_io.clock_problem``): every expiry in the past, the nearest
  one decades away, or a quote date after the first listed expiry (beyond the one that ended in the
  last session) is refused in one sentence naming the line and ``asof``;
- a date line without a year (``4 June 4, 3:15 PM EDT``) takes its year from the expiries only when
  exactly one year puts it within a week before the first listed expiry (``_io.infer_year``), and
  says so in ``meta["warnings"]``; otherwise it is refused;
- the spot on the ``Last:`` line against the put-call-parity forward of the nearest expiry
  (``_io.parity_forward``): a spot that disagrees is not used (``spot`` None, forwards from parity)
  and ``meta["warnings"]`` names the line and ``spot``; a spot passed by hand is kept, with the warning.

``T`` runs from the market time (``core.calendar``): a Saturday download holds Friday's close.
"""
from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from core.errors import FormatError, InputError
from core.quotes import NEW_YORK, QuoteChain, expiry_time, settlement_for
from core.sources._io import (
    YEAR_INFERENCE_DAYS,
    build_chain,
    clock_problem,
    csv_rows,
    fmt_num,
    guarded,
    infer_year,
    iso_or_none,
    number,
    parity_forward,
    parse_time,
    read_text,
    read_vendor_time,
    split_lines,
    spot_problem,
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
    ``meta`` also holds ``warnings`` (a year inferred, a spot not used), ``parity_check`` (the forward
    the spot was checked against), ``time_from`` ('file', 'file, year inferred' or 'asof').
    Raises ``FormatError`` when the text is not a CBOE download or its date line is unreadable or
    contradicted by its expiries (one sentence naming the line and ``asof``); ``InputError`` when an
    ``asof`` leaves every expiry in the past.
    """
    text = read_text(src, what="CBOE file")
    layout = sniff_layout(text)
    if layout is None:
        raise FormatError("this is not a CBOE delayed-quotes download: no 'Calls,...,Puts' header "
                          "(old layout) and no 'Expiration Date,Calls,...,Strike,Puts' header (modern layout)")
    lines = split_lines(text)
    return (_read_old if layout == "old" else _read_modern)(lines, spot=user_spot(spot), asof=user_asof(asof))


#: the one-sentence remedies named by every refusal (the app's inputs and the CLI's options)
ASOF_FIX = ("pass asof= (--asof on the command line) with the time the quotes were taken, "
            "such as '2023-06-02 16:00' (New York)")
SPOT_FIX = "pass spot= (--spot on the command line) with the underlying's price"
_KEYED = re.compile(r"^\s*(bid|ask|size|volume|last|change|high|low|open)\s*:", re.I)


@dataclass
class _Head:
    """What the lines above the column header say: the name line (with the spot) and the date line."""

    name: str = ""
    name_line: int | None = None       # 1-based line numbers, as a text editor shows them
    spot_text: str = ""
    file_spot: float | None = None
    date_line: int | None = None
    date_text: str | None = None
    header_line: int = 0

    def where(self) -> str:
        if self.date_line is None:
            return f"the CBOE file has no date line above its column header (line {self.header_line})"
        return f"line {self.date_line} of the CBOE file ({self.date_text!r})"


def _read_head(lines: list[str], header_idx: int, *, modern: bool) -> _Head:
    """The name, spot and date lines above the header; blank lines (real downloads start with one) skipped.

    The date is the first field of its line and the fields after it up to the first ``Bid:``-like field
    (``Date: 26 May 2023, 5:18 PM EDT,Bid: 0`` has a comma inside the date and no quotes around it).
    """
    head = _Head(header_line=header_idx + 1)
    rows = [(i + 1, (csv_rows([line]) or [[]])[0]) for i, line in enumerate(lines[:header_idx])]   # one line each:
    filled = [(n, row) for n, row in rows if any(f for f in row)]                            # exact line numbers
    if not filled:
        return head
    head.name_line, first = filled[0]
    head.name = first[0]
    if modern:
        for f in first[1:]:
            if f.lower().startswith("last:"):
                head.spot_text, head.file_spot = f, number(f.split(":", 1)[1])
    elif len(first) > 1:
        head.spot_text, head.file_spot = first[1], number(first[1])
    if head.file_spot is not None and not (np.isfinite(head.file_spot) and head.file_spot > 0):
        head.file_spot = None
    for lineno, row in filled[1:]:
        if not row[0]:
            continue
        if modern and not row[0].lower().startswith("date"):
            continue
        parts = [row[0]]
        for f in row[1:]:
            if not f or _KEYED.match(f):
                break
            parts.append(f)
        head.date_line, head.date_text = lineno, ", ".join(parts)
        break
    return head


def _expiry_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct (root, expiry): the expiry date and its settlement time (``core.quotes``)."""
    pairs = df[["root", "expiry"]].dropna().drop_duplicates()
    settle = [settlement_for(r, pd.Timestamp(e).date()) for r, e in zip(pairs["root"], pairs["expiry"], strict=True)]
    times = [expiry_time(e, st) for e, st in zip(pairs["expiry"], settle, strict=True)]
    return pd.DataFrame({"expiry": pd.to_datetime(pairs["expiry"]).to_numpy(),
                         "expiry_time": pd.to_datetime(pd.Series(times, dtype="datetime64[ns, UTC]"), utc=True)})


def _quote_time(head: _Head, expiries: pd.DataFrame, asof, warnings: list[str]) -> tuple[pd.Timestamp, str]:
    """The quote time of the file, checked against its expiries: ``(time, how)``, how in 'asof', 'file',
    'file, year inferred'. Raises ``FormatError`` (``InputError`` for a bad ``asof``) in one sentence
    naming the line and the option that fixes it."""
    if asof is not None:
        problem = clock_problem(expiries, asof, listed_expired=False)
        if problem:
            raise InputError(f"asof {pd.Timestamp(asof).tz_convert('America/New_York'):%Y-%m-%d %H:%M} (New York) "
                             f"does not fit the file: {problem}; pass the time the quotes were taken")
        return asof, "asof"
    if head.date_text is None:
        raise FormatError(f"{head.where()}: {ASOF_FIX}")
    try:
        parts = read_vendor_time(head.date_text)
        file_time = parts.at() if parts is not None and parts.year is not None else None
    except FormatError as exc:
        raise FormatError(f"{head.where()} does not read as a date and time ({exc}); {ASOF_FIX}") from None
    if parts is None:   # no month name: an ISO or numeric time, read by pandas
        try:
            file_time = parse_time(head.date_text, what="date")
        except FormatError:
            raise FormatError(f"{head.where()} does not read as a date and time (no month name and no ISO date); "
                              f"{ASOF_FIX}") from None
    how = "file"
    if file_time is None:   # a date line without a year: only the expiries can tell it, and only when unambiguous
        year, hits = infer_year(parts, expiries)
        if year is None:
            why = ("no year puts it within a week before the first listed expiry" if not hits else
                   f"the years {hits} all fit")
            raise FormatError(f"{head.where()} has no year ({parts.year_text or 'nothing'!r} stands where it should) "
                              f"and the expiries do not settle it ({why}); {ASOF_FIX}")
        file_time = parts.at(year)
        first = pd.Timestamp(expiries["expiry"].min()).date()
        day = _dt.date(year, parts.month, parts.day)
        warnings.append(f"{head.where()} has no year ({parts.year_text or 'nothing'!r} stands where it should): "
                        f"read as {day.day} {day:%B %Y}, the only year that puts it within {YEAR_INFERENCE_DAYS} days "
                        f"before the first listed expiry ({first}); if that is wrong, {ASOF_FIX}")
        how = "file, year inferred"
    problem = clock_problem(expiries, file_time)
    if problem:
        raise FormatError(f"{head.where()} dates the quotes "
                          f"{file_time.tz_convert('America/New_York'):%Y-%m-%d %H:%M} New York, but {problem}; {ASOF_FIX}")
    return file_time, how


def _finish(rows: list[dict], *, head: _Head, spot, asof, layout: str, skipped: list) -> QuoteChain:
    if not rows:
        raise FormatError(f"the CBOE file ({layout} layout) has a header but no readable option rows"
                          + (f"; first problem: line {skipped[0][0]}: {skipped[0][1]}" if skipped else ""))
    df = pd.DataFrame(rows)
    roots = df["root"].value_counts()
    underlying = underlying_of(roots.index[0])
    m = re.search(r"\(([A-Z^.]{1,8})\)", head.name)
    if m and m.group(1).lstrip("^") in {underlying_of(r) for r in roots.index}:
        underlying = m.group(1).lstrip("^")     # "S&P 500 Index (SPX)"; not "(ETF)" of "QQQ Trust, Series 1 (ETF)"
    warnings: list[str] = []
    quote_time, how = _quote_time(head, _expiry_table(df), asof, warnings)
    S = spot if spot is not None else head.file_spot
    meta = {"file_format": f"cboe-{layout}", "header_name": head.name, "file_spot": head.file_spot,
            "file_time": iso_or_none(quote_time) if how != "asof" else None, "time_from": how,
            "skipped": [list(x) for x in skipped], "warnings": warnings,
            "overrides": {k: v for k, v in (("spot", spot), ("asof", iso_or_none(asof))) if v is not None}}
    chain = build_chain(df, underlying=underlying, asof=quote_time, source="cboe", spot=S,
                        spot_time=quote_time, meta=meta)
    check = parity_forward(chain.quotes, quote_time)
    meta["parity_check"] = check
    problem = spot_problem(S, check)
    if problem and spot is not None:
        warnings.append(f"spot={spot:g}: {problem}; kept because it was set by hand")
    elif problem:
        where = f"line {head.name_line} of the CBOE file ({head.spot_text!r})"
        warnings.append(f"{where}: {problem}; the spot is not used (forwards from put-call parity); "
                        f"{SPOT_FIX} if it is right")
        chain = replace(chain, spot=None, spot_time=None)
    elif S is None:
        warnings.append("the CBOE file gives no spot (no 'Last:' on its first line): forwards come from put-call parity")
    return chain


def _leg(parse, code: str, side: int, lineno: int, skipped: list) -> tuple | None:
    """``parse(code)`` -> ``(root, expiry, cp, strike)`` for one side of a CBOE row, or None (an empty cell, or a
    code that does not parse or sits in the wrong column: recorded in ``skipped`` with the line number)."""
    if not code:
        return None
    try:
        root, expiry, cp, strike = parse(code)
    except FormatError as exc:
        skipped.append((lineno, str(exc)))
        return None
    if cp != side:
        skipped.append((lineno, f"{code!r} is a {'call' if cp > 0 else 'put'} in the "
                                f"{'calls' if side > 0 else 'puts'} column"))
        return None
    return root, expiry, cp, strike


def _read_old(lines: list[str], *, spot, asof) -> QuoteChain:
    header_idx = next((i for i, line in enumerate(lines[:12]) if line.startswith("Calls,") or _OLD_CODE.search(line)), None)
    if header_idx is None:
        raise FormatError("the CBOE file has no 'Calls,Last Sale,...,Puts,...' header in its first lines")
    if not lines[header_idx].startswith("Calls,"):
        header_idx -= 1
    head = _read_head(lines, max(header_idx, 0), modern=False)
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
            parsed = _leg(parse_old_code, label, side, lineno, skipped)
            if parsed is None:
                continue
            root, expiry, cp, k_code = parsed
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
    return _finish(rows, head=head, spot=spot, asof=asof, layout="old", skipped=skipped)


def _read_modern(lines: list[str], *, spot, asof) -> QuoteChain:
    header_idx = next((i for i, line in enumerate(lines[:12]) if _is_modern_header(line)), None)
    if header_idx is None:
        raise FormatError("the CBOE file has no 'Expiration Date,Calls,...,Strike,Puts,...' header in its first lines")
    head = _read_head(lines, header_idx, modern=True)
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
    want = ("Last Sale", "Bid", "Ask", "Volume", "Open Interest", "IV")
    sides = ((1, c_col, [c_fields.get(h) for h in want]), (-1, p_col, [p_fields.get(h) for h in want]))
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
        n_f = len(fields)
        for side, sym_col, idx in sides:
            sym = fields[sym_col]
            parsed = _leg(parse_occ, sym, side, lineno, skipped)
            if parsed is None:
                continue
            root, expiry, cp, strike = parsed
            exp = col_exp if col_exp is not None else pd.Timestamp(expiry)
            if col_exp is not None and col_exp.date() != expiry:
                skipped.append((lineno, f"{sym!r}: expiry {expiry} differs from the row's {etext!r}"))
                continue
            if np.isfinite(strike_col) and abs(strike_col - strike) > 1e-6:
                skipped.append((lineno, f"{sym!r}: strike {strike} differs from the row's {strike_col}"))
                continue
            last, bid, ask, vol, oi, iv = (number(fields[i]) if i is not None and i < n_f else np.nan for i in idx)
            rows.append({"root": root, "expiry": exp, "strike": strike, "cp": cp,
                         "bid": bid, "ask": ask, "last": last if last > 0 else np.nan,
                         "volume": vol, "open_interest": oi, "vendor_iv": iv, "symbol": sym})
    return _finish(rows, head=head, spot=spot, asof=asof, layout="modern", skipped=skipped)


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
