"""Tidy CSV in our own quote schema (what the app exports), read back exactly.

Layout: leading comment lines ``# key: value`` with the chain's metadata (``format``, ``underlying``,
``source``, ``exercise``, ``spot``, ``spot_time``, ``asof``), then a CSV with the columns of
``core.quotes.QUOTE_COLUMNS``. Times are ISO 8601 with their UTC offset, floats in shortest exact
form, so ``read_tidy_csv(write_tidy_csv(chain))`` gives the same table. Other people's tidy tables
load too: columns are matched case-insensitively, a few common aliases are known, and ``columns``
maps any other names to ours (including the pseudo-columns ``spot``).
"""
from __future__ import annotations

import io
from typing import Any, Mapping

import numpy as np
import pandas as pd

from core.errors import FormatError, InputError
from core.quotes import QUOTE_COLUMNS, REQUIRED, QuoteChain
from core.sources._io import (
    build_chain,
    chain_exercise,
    fmt_num,
    guarded,
    iso_or_none,
    numbers,
    parse_time,
    read_text,
    underlying_of,
    user_asof,
    user_spot,
    write_out,
)

FORMAT_TAG = "dupire-desk tidy quotes v1"
META_KEYS = ("format", "underlying", "source", "exercise", "spot", "spot_time", "asof")

#: common other names of our columns (lower case) -> ours
ALIASES = {
    "type": "cp", "option_type": "cp", "optiontype": "cp", "call_put": "cp", "callput": "cp", "putcall": "cp",
    "right": "cp", "side": "cp",
    "k": "strike", "strike_price": "strike",
    "expiration": "expiry", "expiration_date": "expiry", "expiry_date": "expiry", "maturity": "expiry",
    "expdate": "expiry",
    "bid_price": "bid", "ask_price": "ask", "offer": "ask",
    "last_price": "last", "lastprice": "last", "open_int": "open_interest", "openinterest": "open_interest",
    "oi": "open_interest", "iv": "vendor_iv", "implied_vol": "vendor_iv", "impliedvolatility": "vendor_iv",
    "quotetime": "quote_time", "asof": "quote_time", "lasttradedate": "last_trade_time",
    "spot_price": "spot", "underlying_price": "spot", "underlyingprice": "spot",
    "symbol": "underlying", "ticker": "underlying",
}
_TIME_COLUMNS = ("quote_time", "expiry_time", "last_trade_time")


def split_comments(text: str) -> tuple[dict[str, str], str]:
    """Leading ``# key: value`` lines as a dict (keys lower-case) and the remaining CSV text."""
    meta: dict[str, str] = {}
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines) and (lines[i].lstrip().startswith("#") or not lines[i].strip()):
        body = lines[i].lstrip()[1:].strip() if lines[i].strip() else ""
        if ":" in body:
            k, v = body.split(":", 1)
            meta[k.strip().lower()] = v.strip()
        i += 1
    return meta, "".join(lines[i:])


def map_columns(names, columns: Mapping[str, str] | None = None) -> dict[str, str]:
    """Original column name -> our name: ``columns`` first (exact names), then our own names and
    ``ALIASES`` case-insensitively. Unknown columns keep their names (they ride along as extras)."""
    columns = dict(columns or {})
    known = set(QUOTE_COLUMNS) | {"spot"}
    for theirs, ours in columns.items():
        if ours not in known:
            raise InputError(f"columns maps {theirs!r} to {ours!r}, which is not one of ours: {sorted(known)}")
    out: dict[str, str] = {}
    taken: set[str] = set()
    for c in names:
        if c in columns:
            out[c] = columns[c]
            taken.add(columns[c])
    for c in names:
        if c in out:
            continue
        low = str(c).strip().lower()
        ours = low if low in known else ALIASES.get(low)
        if ours is not None and ours not in taken:
            out[c] = ours
            taken.add(ours)
        else:
            out[c] = str(c)
    return out


def sniff(text: str, columns: Mapping[str, str] | None = None) -> bool:
    """True if the text, after its comment lines, has a header naming expiry, strike, cp, bid, ask."""
    meta, body = split_comments(text[:20000])
    if meta.get("format", "").startswith("dupire-desk"):
        return True
    first = body.splitlines()[0] if body.strip() else ""
    try:
        names = pd.read_csv(io.StringIO(first), nrows=0).columns.tolist()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError):
        return False
    try:
        mapped = set(map_columns(names, columns).values())
    except InputError:
        return False
    return all(c in mapped for c in REQUIRED)


@guarded("tidy quotes CSV")
def read_tidy_csv(src: Any, *, columns: Mapping[str, str] | None = None, spot: float | None = None,
                  asof: Any = None) -> QuoteChain:
    """Read a tidy quotes CSV (our export, or another table given a column mapping) into a ``QuoteChain``.

    Parameters: ``src`` path, bytes or file-like; ``columns``: their name -> ours (ours are
    ``QUOTE_COLUMNS`` and ``spot``); ``spot`` and ``asof`` (naive = New York) override the file's.
    ``cp`` accepts C/P, call/put, +1/-1. Without a quote time (no ``quote_time`` column, no
    ``# asof:`` line, no ``asof``) raises ``FormatError`` asking for ``asof``.
    """
    text = read_text(src, what="tidy quotes CSV")
    meta_lines, body = split_comments(text)
    if not body.strip():
        raise FormatError("the tidy quotes CSV has no table after its comment lines")
    try:
        frame = pd.read_csv(io.StringIO(body), dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise FormatError(f"the tidy quotes CSV could not be parsed: {exc}") from None
    mapping = map_columns(list(frame.columns), columns)
    frame = frame.rename(columns=mapping)
    frame = frame.loc[:, ~frame.columns.duplicated()]
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise FormatError(f"the quotes table lacks the columns {missing} (it has {list(mapping)[:20]}); "
                          "name them, or pass columns={'their name': 'ours'}")
    frame, skipped = _usable_rows(frame)
    ts = user_asof(asof)
    file_time = None
    if meta_lines.get("asof"):
        file_time = parse_time(meta_lines["asof"], what="'# asof:' line")
    S = user_spot(spot)
    file_spot = None
    if meta_lines.get("spot"):
        v = numbers([meta_lines["spot"]])[0]
        file_spot = float(v) if np.isfinite(v) and v > 0 else None
    if "spot" in frame.columns:
        v = numbers(frame.pop("spot"))
        v = v[np.isfinite(v) & (v > 0)]
        if file_spot is None and len(v):
            file_spot = float(v[0])
    for c in ("strike", "bid", "ask", "last", "volume", "open_interest", "vendor_iv", "T"):
        if c in frame.columns:
            frame[c] = numbers(frame[c])
    for c in _TIME_COLUMNS:
        if c in frame.columns:
            frame[c] = _times(frame[c], c)
    if ts is not None:
        frame["quote_time"] = ts
        frame = frame.drop(columns=[c for c in ("T",) if c in frame.columns])
    if "quote_time" in frame.columns and frame["quote_time"].isna().all():
        frame = frame.drop(columns=["quote_time"])
    if "quote_time" in frame.columns and frame["quote_time"].isna().any():
        fill = ts or file_time
        if fill is None:
            raise FormatError("some rows of the tidy CSV have no quote_time: fill them, or pass asof=")
        frame["quote_time"] = frame["quote_time"].fillna(fill)
    quote_time = ts or file_time
    if quote_time is None:
        if "quote_time" not in frame.columns:
            raise FormatError("the tidy quotes CSV has no quote time (no quote_time column, no '# asof:' line): "
                              "pass asof= (when the quotes were taken, e.g. '2026-06-15 10:30' New York)")
        quote_time = frame["quote_time"].max()
    if "T" in frame.columns:
        frame = frame.drop(columns=["T"])   # recomputed from quote_time and expiry_time
    for c in ("settlement", "expiry_time"):
        if c in frame.columns and frame[c].isna().any():
            frame = frame.drop(columns=[c])
    underlying = meta_lines.get("underlying") or ""
    if not underlying and "underlying" in frame.columns and frame["underlying"].notna().any():
        underlying = str(frame["underlying"].dropna().iloc[0])
    if not underlying and "root" in frame.columns and frame["root"].notna().any():
        underlying = underlying_of(str(frame["root"].dropna().iloc[0]))
    for c in ("underlying", "root", "source"):
        if c in frame.columns:
            frame[c] = frame[c].fillna("")
    if "underlying" in frame.columns:
        frame["underlying"] = frame["underlying"].where(frame["underlying"] != "", underlying)
    source = meta_lines.get("source") or "tidy-csv"
    exercise = meta_lines.get("exercise")
    if exercise not in ("european", "american"):
        roots = frame["root"].dropna().unique() if "root" in frame.columns else ()
        exercise = chain_exercise(underlying, roots)
    spot_time = None
    if meta_lines.get("spot_time"):
        try:
            spot_time = parse_time(meta_lines["spot_time"], what="'# spot_time:' line")
        except FormatError:
            spot_time = None
    final_spot = S if S is not None else file_spot
    meta = {"file_format": "tidy-csv", "file_meta": dict(meta_lines), "skipped": [list(x) for x in skipped], "file_spot": file_spot, "file_time": iso_or_none(file_time),
            "overrides": {k: v for k, v in (("spot", S), ("asof", iso_or_none(ts))) if v is not None}}
    if meta_lines.get("label"):
        meta["label"] = meta_lines["label"]
    if "source" not in frame.columns:
        frame["source"] = source
    chain = build_chain(frame, underlying=underlying, asof=quote_time, source=source, spot=final_spot,
                        spot_time=(ts or spot_time or quote_time) if final_spot is not None else None,
                        meta=meta, exercise=exercise)
    return chain


_CP = {"c": 1, "call": 1, "calls": 1, "1": 1, "+1": 1, "1.0": 1,
       "p": -1, "put": -1, "puts": -1, "-1": -1, "-1.0": -1}


def _usable_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[int, str]]]:
    """Parse ``expiry`` and ``cp``; rows where either is unreadable cannot be placed on the surface at
    all, so they are skipped and listed as (data row number, reason) rather than failing the file."""
    frame = frame.reset_index(drop=True)
    exp = pd.to_datetime(frame["expiry"], errors="coerce", format="mixed")
    if getattr(exp.dt, "tz", None) is not None:
        exp = exp.dt.tz_localize(None)
    cp = frame["cp"].astype(str).str.strip().str.lower().map(_CP)
    bad_exp = exp.isna().to_numpy()
    bad_cp = cp.isna().to_numpy()
    skipped = [(int(i) + 1, f"expiry {frame.at[i, 'expiry']!r} is not a date" if bad_exp[i]
                else f"cp {frame.at[i, 'cp']!r} is neither call nor put") for i in np.flatnonzero(bad_exp | bad_cp)[:1000]]
    frame["expiry"] = exp.dt.normalize().astype("datetime64[ns]")
    frame["cp"] = cp
    keep = ~(bad_exp | bad_cp)
    if len(frame) and not keep.any():
        raise FormatError(f"no row of the quotes table has a readable expiry and call/put; first problem: "
                          f"row {skipped[0][0]}: {skipped[0][1]}")
    out = frame[keep].reset_index(drop=True)
    out["cp"] = out["cp"].astype(int)
    return out, skipped


def _times(values: pd.Series, name: str) -> pd.Series:
    out = pd.to_datetime(values, errors="coerce", utc=False, format="mixed")
    if getattr(out.dt, "tz", None) is None:
        # naive times are New York wall clock (MATH.md conventions)
        out = out.dt.tz_localize("America/New_York", ambiguous="NaT", nonexistent="NaT")
    out = out.dt.tz_convert("UTC")
    bad = out.isna() & values.notna()
    if bad.any():
        raise FormatError(f"column {name!r} has values that are not times, e.g. {values[bad].iloc[0]!r}")
    return out


def _iso(t) -> str:
    return "" if pd.isna(t) else pd.Timestamp(t).tz_convert("UTC").isoformat()


def tidy_text(chain: QuoteChain) -> str:
    """The chain as tidy CSV text (see ``write_tidy_csv``)."""
    q = chain.quotes
    head = [f"# format: {FORMAT_TAG}", f"# underlying: {chain.underlying}", f"# source: {chain.source}",
            f"# exercise: {chain.exercise}", f"# spot: {fmt_num(chain.spot) if chain.spot is not None else ''}",
            f"# spot_time: {_iso(chain.spot_time) if chain.spot_time is not None else ''}",
            f"# asof: {_iso(chain.asof)}"]
    label = chain.meta.get("label") if isinstance(chain.meta, Mapping) else None
    if label:
        head.append(f"# label: {str(label).splitlines()[0]}")
    out = pd.DataFrame(index=q.index)
    for c, (kind, _) in QUOTE_COLUMNS.items():
        v = q[c]
        if kind == "time":
            out[c] = v.map(_iso)
        elif kind == "date":
            out[c] = pd.to_datetime(v).dt.strftime("%Y-%m-%d")
        elif kind in ("float",):
            out[c] = v.map(fmt_num)
        elif kind == "int":
            out[c] = v.astype(int).astype(str)
        else:
            out[c] = v.astype(str)
    return "\n".join(head) + "\n" + out.to_csv(index=False, lineterminator="\n")


def write_tidy_csv(chain: QuoteChain, dst: Any = None) -> Any:
    """Write ``chain`` as tidy CSV: ``# key: value`` metadata lines then the ``QUOTE_COLUMNS`` table
    (ISO times with offset, exact floats). ``dst``: path, file-like, or None to get the bytes."""
    return write_out(tidy_text(chain), dst)
