"""Snapshots: every chain downloaded from a live source, kept on local disk and reopened offline.

Folder: ``$DUPIRE_DESK_HOME/snapshots`` when the environment variable ``DUPIRE_DESK_HOME`` is set,
else ``~/.dupire_desk/snapshots`` (``default_folder()``); created on the first save.

One file per underlying and quote time: ``<UNDERLYING>_<YYYYmmddTHHMMSSZ>.csv.gz`` (e.g.
``SPY_20261121T153000Z.csv.gz``; ``^SPX`` is written ``_SPX``; a second snapshot in the same second
gets ``-2``, ``-3``... so nothing is ever overwritten). The file is gzip-compressed UTF-8 text:

    line 1   # dupire-desk snapshot 1 {"underlying": ..., "asof": ..., "n_quotes": ..., "sha256": ..., ...}
    line 2+  the quote table as CSV: the columns of ``core.quotes.QUOTE_COLUMNS`` (times ISO 8601
             UTC), then any extra columns the source kept

The JSON header carries the chain's metadata (source, spot, spot time, exercise, the JSON-able
entries of ``meta`` such as ``failed_expiries``) and the SHA-256 of the CSV body, so a truncated or
altered file is detected without parsing it. ``gunzip`` gives a file any spreadsheet opens (skip
line 1). Files are written atomically (temporary file in the same folder, fsync, rename): a crash
or a full disk leaves either the old state or the complete new file, never half a snapshot.

Corrupt files are listed with their error and never deleted. File names are built only from the
sanitised underlying and the quote time, never from user text as given.
"""
from __future__ import annotations

import datetime as _dt
import errno
import gzip
import hashlib
import io
import json
import os
import re
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import InputError, SnapshotError
from core.quotes import QUOTE_COLUMNS, QuoteChain, make_quotes

MAGIC = "# dupire-desk snapshot 1 "
SUFFIX = ".csv.gz"
_NAME_RE = re.compile(r"^(?P<u>[A-Za-z0-9_.=\-]{1,24})_(?P<t>\d{8}T\d{6}Z)(?:-(?P<n>\d{1,4}))?\.csv\.gz$")
_TIME_FMT = "%Y%m%dT%H%M%SZ"
_TIME_COLS = ("quote_time", "expiry_time", "last_trade_time")
MAX_SNAPSHOT_BYTES = 512 * 1024 * 1024   # decompressed; a larger "snapshot" is not one of ours


def default_folder() -> Path:
    """``$DUPIRE_DESK_HOME/snapshots`` if ``DUPIRE_DESK_HOME`` is set, else ``~/.dupire_desk/snapshots``."""
    home = os.environ.get("DUPIRE_DESK_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".dupire_desk"
    return base / "snapshots"


def safe_name(underlying: str) -> str:
    """File-name part for an underlying: letters, digits, ``. = -`` kept, anything else ``_``;
    at most 24 characters, never empty, never starting with a dot."""
    s = re.sub(r"[^A-Za-z0-9.=\-]", "_", str(underlying or ""))[:24]
    s = s.lstrip(".")
    return s or "UNKNOWN"


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot file as listed: ``ok`` False (with ``error`` text) for a corrupt or unreadable file.

    ``underlying``/``asof`` come from the file's header, or from its name when the header is
    unreadable (``asof`` None if neither says). ``n_quotes`` is None when unknown.
    """

    path: Path
    underlying: str
    asof: pd.Timestamp | None
    n_quotes: int | None
    ok: bool
    error: str = ""
    source: str = ""
    size: int = 0

    @property
    def label(self) -> str:
        """Short text for a picker: 'SPY 2026-11-21 15:30 UTC (2,412 quotes)' or '... (corrupt: ...)'."""
        when = self.asof.strftime("%Y-%m-%d %H:%M UTC") if self.asof is not None else "unknown time"
        tail = f"{self.n_quotes:,} quotes" if self.ok and self.n_quotes is not None else f"unreadable: {self.error}"
        return f"{self.underlying} {when} ({tail})"


def _split_meta(meta: Any) -> tuple[dict, list[str]]:
    """The entries of ``meta`` that survive JSON (others are named in the second value)."""
    out, dropped = {}, []
    for k, v in dict(meta or {}).items():
        try:
            json.dumps(v, allow_nan=True)
        except (TypeError, ValueError):
            dropped.append(str(k))
            continue
        out[str(k)] = v
    return out, dropped


def _iso(ts: Any) -> str | None:
    if ts is None or (not isinstance(ts, str) and pd.isna(ts)):
        return None
    return pd.Timestamp(ts).tz_convert("UTC").isoformat() if pd.Timestamp(ts).tzinfo else pd.Timestamp(ts).isoformat()


def _body(chain: QuoteChain) -> str:
    q = chain.quotes
    # schema columns first, then any extras the source kept (e.g. yfinance's contract symbol)
    cols = [c for c in QUOTE_COLUMNS if c in q.columns] + [c for c in q.columns if c not in QUOTE_COLUMNS]
    out = q[cols].copy()
    for c in _TIME_COLS:   # pandas writes tz-aware times as '2026-06-15 14:30:00+00:00', full precision
        if c in out:
            out[c] = pd.to_datetime(out[c], utc=True, errors="coerce")
    if "expiry" in out:
        out["expiry"] = pd.to_datetime(out["expiry"]).dt.strftime("%Y-%m-%d")
    buf = io.StringIO()
    out.to_csv(buf, index=False, lineterminator="\n")   # floats in repr precision: exact round trip
    return buf.getvalue()


class SnapshotStore:
    """A folder of snapshots: ``save(chain) -> Path``, ``list() -> [SnapshotInfo]``, ``load(x) -> QuoteChain``.

    ``folder``: where the files live (default ``default_folder()``); nothing is created until the
    first save. Errors: ``SnapshotError`` (never deletes a file; the message names it).
    """

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        self.folder = Path(folder).expanduser() if folder is not None else default_folder()

    def __repr__(self) -> str:
        return f"SnapshotStore({str(self.folder)!r})"

    # -- writing ------------------------------------------------------------------------------
    def _target(self, underlying: str, asof: pd.Timestamp) -> Path:
        stem = f"{safe_name(underlying)}_{asof.strftime(_TIME_FMT)}"
        path = self.folder / f"{stem}{SUFFIX}"
        n = 2
        while path.exists():
            path = self.folder / f"{stem}-{n}{SUFFIX}"
            n += 1
        return path

    def save(self, chain: QuoteChain) -> Path:
        """Write ``chain`` as a new snapshot file atomically; returns its path.

        Raises ``SnapshotError`` when the folder cannot be created or written (read-only, full disk,
        permissions); nothing partial is left behind. ``InputError`` if ``chain`` is not a QuoteChain.
        """
        if not isinstance(chain, QuoteChain):
            raise InputError(f"only a QuoteChain can be saved as a snapshot, got {type(chain).__name__}")
        asof = pd.Timestamp(chain.asof)
        asof = asof.tz_localize("UTC") if asof.tzinfo is None else asof.tz_convert("UTC")
        body = _body(chain)
        meta, dropped = _split_meta(chain.meta)
        header = {
            "underlying": str(chain.underlying), "asof": asof.isoformat(), "source": str(chain.source),
            "spot": None if chain.spot is None else float(chain.spot), "spot_time": _iso(chain.spot_time),
            "exercise": chain.exercise, "n_quotes": int(len(chain.quotes)),
            "time_dtypes": {c: str(chain.quotes[c].dtype) for c in _TIME_COLS if c in chain.quotes},
            "sha256": hashlib.sha256(body.encode("utf-8")).hexdigest(),
            "saved_at": pd.Timestamp.now(tz="UTC").isoformat(), "meta": meta, "meta_not_saved": dropped,
        }
        text = MAGIC + json.dumps(header, allow_nan=True, default=str) + "\n" + body
        data = gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)
        tmp = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self._target(chain.underlying, asof)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=self.folder)
            with os.fdopen(fd, "wb") as fh:
                _write_all(fh, data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            tmp = None
        except OSError as exc:
            why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                   errno.EROFS: "the folder is on a read-only file system",
                   errno.EACCES: "no permission to write there", errno.EPERM: "no permission to write there"}
            reason = why.get(exc.errno, f"{exc.__class__.__name__}: {exc.strerror or exc}")
            raise SnapshotError(f"could not save the snapshot in {self.folder} ({reason}); the data is still "
                                "shown but not kept on disk: free space or set DUPIRE_DESK_HOME to a writable "
                                "folder") from None
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        return path

    # -- reading ------------------------------------------------------------------------------
    def _resolve(self, path_or_info: Any) -> Path:
        """A snapshot path inside this store's folder (an ``InputError`` for anything else)."""
        p = path_or_info.path if isinstance(path_or_info, SnapshotInfo) else path_or_info
        if not isinstance(p, (str, os.PathLike)):
            raise InputError(f"a snapshot is a SnapshotInfo or a path, got {type(path_or_info).__name__}")
        p = Path(p)
        if not _NAME_RE.match(p.name):
            raise InputError(f"{p.name[:80]!r} is not a snapshot file name (like SPY_20261121T153000Z.csv.gz)")
        if p.parent == Path("") or str(p.parent) == ".":
            p = self.folder / p.name
        try:
            inside = p.resolve().parent == self.folder.resolve()
        except OSError:
            inside = False
        if not inside:
            raise InputError(f"{p.name!r} is not in the snapshot folder {self.folder}; only snapshots there are opened")
        return p

    def _read(self, path: Path) -> tuple[dict, str]:
        """Header and verified CSV body of a snapshot, or ``SnapshotError``."""
        name = path.name
        try:
            with gzip.open(path, "rb") as fh:
                raw = fh.read(MAX_SNAPSHOT_BYTES + 1)
        except FileNotFoundError:
            raise SnapshotError(f"snapshot {name} no longer exists") from None
        except (OSError, EOFError, zlib.error) as exc:
            kind = "truncated" if isinstance(exc, EOFError) else "corrupt or unreadable"
            raise SnapshotError(f"snapshot {name} is {kind} ({exc.__class__.__name__}: {exc}); "
                                "it is kept on disk, not deleted") from None
        if len(raw) > MAX_SNAPSHOT_BYTES:
            raise SnapshotError(f"snapshot {name} is larger than {MAX_SNAPSHOT_BYTES >> 20} MB uncompressed; not opened")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SnapshotError(f"snapshot {name} is corrupt (not UTF-8 text); kept on disk, not deleted") from None
        first, _, body = text.partition("\n")
        if not first.startswith(MAGIC):
            raise SnapshotError(f"snapshot {name} has no Dupire Desk header; it is corrupt or not a snapshot "
                                "(kept on disk, not deleted)")
        try:
            header = json.loads(first[len(MAGIC):])
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
        except ValueError as exc:
            raise SnapshotError(f"snapshot {name} has a damaged header ({exc}); kept on disk, not deleted") from None
        digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
        if header.get("sha256") != digest:
            raise SnapshotError(f"snapshot {name} is truncated or altered (checksum mismatch); "
                                "kept on disk, not deleted")
        return header, body

    def list(self) -> list[SnapshotInfo]:
        """Every snapshot in the folder, newest first; corrupt ones included with ``ok=False`` and
        the error text. Never raises for a bad file; an unreadable folder gives an empty list."""
        try:
            entries = [p for p in self.folder.iterdir() if _NAME_RE.match(p.name) and p.is_file()]
        except OSError:
            return []
        out = []
        for p in entries:
            m = _NAME_RE.match(p.name)
            try:
                asof_name = pd.Timestamp(_dt.datetime.strptime(m.group("t"), _TIME_FMT)).tz_localize("UTC")
            except ValueError:
                asof_name = None
            try:
                size = p.stat().st_size
            except OSError:
                size = 0
            try:
                header, _ = self._read(p)
                asof = pd.Timestamp(header.get("asof"))
                asof = asof.tz_localize("UTC") if asof.tzinfo is None else asof.tz_convert("UTC")
                n = header.get("n_quotes")
                out.append(SnapshotInfo(path=p, underlying=str(header.get("underlying", m.group("u"))), asof=asof,
                                        n_quotes=int(n) if isinstance(n, (int, float)) and np.isfinite(n) else None,
                                        ok=True, source=str(header.get("source", "")), size=size))
            except (SnapshotError, ValueError, TypeError) as exc:
                out.append(SnapshotInfo(path=p, underlying=m.group("u"), asof=asof_name, n_quotes=None,
                                        ok=False, error=str(exc), size=size))
        far_past = pd.Timestamp("1900-01-01", tz="UTC")

        def order(i: SnapshotInfo):
            m = _NAME_RE.match(i.path.name)
            return (i.asof if i.asof is not None else far_past, int(m.group("n") or 1) if m else 0, i.path.name)

        out.sort(key=order, reverse=True)
        return out

    def load(self, path_or_info: Any) -> QuoteChain:
        """The chain saved in a snapshot (a ``SnapshotInfo``, or a path / file name in this folder).

        Raises ``SnapshotError`` for a missing, truncated or corrupt file (which stays on disk) and
        ``InputError`` for a path outside the folder or not named like a snapshot.
        """
        path = self._resolve(path_or_info)
        header, body = self._read(path)
        name = path.name
        try:
            df = pd.read_csv(io.StringIO(body), keep_default_na=True, dtype={"underlying": str, "root": str,
                                                                            "source": str, "settlement": str})
            for c in ("underlying", "root", "source"):
                if c in df:
                    df[c] = df[c].fillna("")
            asof = pd.Timestamp(header["asof"])
            quotes = make_quotes(df, quote_time=asof)
            units = header.get("time_dtypes") or {}
            for c in _TIME_COLS:   # back to the resolution the source had (pandas reads ISO text at us)
                if c in quotes and isinstance(units.get(c), str) and re.fullmatch(r"datetime64\[(s|ms|us|ns), UTC\]", units[c]):
                    quotes[c] = quotes[c].astype(units[c])
            if int(header.get("n_quotes", len(quotes))) != len(quotes):
                raise ValueError(f"header says {header.get('n_quotes')} quotes, the file has {len(quotes)}")
            spot = header.get("spot")
            spot_time = header.get("spot_time")
            meta = dict(header.get("meta") or {})
            meta.update(snapshot_path=str(path), snapshot_saved_at=header.get("saved_at"))
            return QuoteChain(quotes=quotes, underlying=str(header.get("underlying", "")),
                              asof=asof.tz_convert("UTC") if asof.tzinfo else asof.tz_localize("UTC"),
                              source=str(header.get("source", "snapshot")),
                              spot=None if spot is None else float(spot),
                              spot_time=None if spot_time is None else pd.Timestamp(spot_time),
                              exercise=str(header.get("exercise", "european")), meta=meta)
        except SnapshotError:
            raise
        except (ValueError, TypeError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise SnapshotError(f"snapshot {name} could not be read back ({exc.__class__.__name__}: {exc}); "
                                "kept on disk, not deleted") from None


def _write_all(fh, data: bytes) -> None:
    """``fh.write`` in one place, so tests can simulate a full disk or a read-only folder."""
    fh.write(data)
