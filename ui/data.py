"""Cached calls into ``core``: loaders and the pipeline, one cache per stage.

Every cached function is keyed on what defines its result: the source's identity and content hash
(``source_key``) and the specs the stage reads (``Settings.prepare_spec``, ``fit_spec``, ``local_vol_spec``). The chain itself is passed as an
underscore argument (``_chain``: not hashed, its content hash is already in ``source_key``). So a
change of the clip band re-runs only the local-vol stage; a change of smoothing re-runs fit and local
vol; going back to an earlier setting is a cache hit. Two sessions share an entry only when their
inputs are identical byte for byte, so no session sees another's data. Exceptions are never cached;
``forget_source`` drops the cached load of a source whose chain then failed.

Pure helpers (``rules_of_thumb``, ``density``, ``safe_csv``, ``ql_layout``) are plain functions of core
results, testable without Streamlit.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from typing import Any, Callable

import numpy as np
import pandas as pd
import streamlit as st

from core import pipeline
from core.arbitrage import risk_neutral_density as _density
from core.cleaning import used
from core.demo import demo_chain
from core.errors import FormatError, InputError, NetworkError
from core.export import safe_csv as _safe_csv
from core.export import safe_filename
from core.export import to_json_bytes as _to_json_bytes
from core.localvol import LocalVolSpec
from core.localvol import rules_of_thumb as _rules_of_thumb
from core.pricing import exotics
from core.pricing.scenarios import Instruments, run_scenarios
from core.quotes import QuoteChain
from core.sources import yahoo
from core.sources.detect import load_files
from core.sources.snapshots import SnapshotStore
from core.surface.fit import FitSpec
from ui import series

MAX_UPLOAD_MB = 25                     # same as .streamlit/config.toml server.maxUploadSize
MAX_UPLOAD_ROWS = 200_000              # a full SPX chain is ~20k rows; beyond this is not a chain
TICKER_RE = re.compile(r"^\^?[A-Za-z0-9][A-Za-z0-9.\-=]{0,11}$")
_TTL = 3600
_ENTRIES = 48


def yahoo_timeout() -> float:
    """Seconds to wait for Yahoo (env ``DUPIRE_DESK_YAHOO_TIMEOUT``, default 8)."""
    try:
        return max(0.1, float(os.environ.get("DUPIRE_DESK_YAHOO_TIMEOUT", "8")))
    except ValueError:
        return 8.0


def simulated_offline() -> bool:
    """``DUPIRE_DESK_SIMULATE_OFFLINE=1`` makes every Yahoo call fail at once (browser tests)."""
    return os.environ.get("DUPIRE_DESK_SIMULATE_OFFLINE", "") not in ("", "0", "false")


# ------------------------------------------------------------------------------------------ identity
def chain_digest(chain: QuoteChain) -> str:
    """A content hash of a chain: quotes, underlying, quote time, spot, exercise (16 hex digits)."""
    h = hashlib.sha256()
    q = chain.quotes
    h.update(pd.util.hash_pandas_object(q, index=False).to_numpy().tobytes())
    h.update("|".join(map(str, q.columns)).encode())
    h.update(f"{chain.underlying}|{chain.asof}|{chain.spot}|{chain.exercise}|{chain.source}".encode())
    return h.hexdigest()[:16]


def bytes_digest(data: bytes) -> str:
    """sha256 of uploaded bytes (16 hex digits)."""
    return hashlib.sha256(data).hexdigest()[:16]


def valid_ticker(text: str) -> str | None:
    """The ticker upper-cased if it looks like one (letters, digits, . - = ^, up to 12), else None."""
    t = (text or "").strip().upper()
    return t if TICKER_RE.match(t) else None


def safe_name(name: str | None) -> str:
    """A file name for display only: base name, printable, at most 80 characters (never used as a path)."""
    base = re.split(r"[\\/]", str(name or "upload"))[-1]
    base = "".join(ch for ch in base if ch.isprintable() and ch not in "<>\"'`")
    return (base or "upload")[:80]


# ------------------------------------------------------------------------------------------ loaders
@st.cache_data(ttl=_TTL, max_entries=8, show_spinner="Building the demo market...")
def demo(seed: int = 7) -> QuoteChain:
    """The bundled synthetic demo chain (works offline)."""
    return demo_chain(seed=seed)


@st.cache_data(ttl=_TTL, max_entries=8, show_spinner="Reading the uploaded files...")
def upload(digest: str, _contents: tuple[bytes, ...], names: tuple[str, ...], spot: float | None = None,
           asof: str | None = None) -> QuoteChain:
    """A chain from uploaded files of one underlying and day (``core.sources.detect.load_files``: any
    format it reads, several files merged), keyed on the files' hash and names and the user's quote
    time (``asof``, naive = New York) and spot overrides (None: what the files say)."""
    total = sum(len(c) for c in _contents)
    if total > MAX_UPLOAD_MB * 1024 * 1024:
        raise FormatError(f"the files hold {total / 2**20:.1f} MB; the limit is {MAX_UPLOAD_MB} MB. "
                          "Export only the expiries you need.")
    for c, n in zip(_contents, names, strict=True):
        if not c.strip():
            raise FormatError(f"the file {n!r} is empty" if len(names) > 1 else "the file is empty")
    chain = load_files([io.BytesIO(c) for c in _contents], names=list(names), spot=spot, asof=asof,
                       max_rows=MAX_UPLOAD_ROWS)
    n = len(chain.quotes)
    if n == 0:
        raise FormatError("the file was read but holds no option quotes")
    if n > MAX_UPLOAD_ROWS:
        raise FormatError(f"the files hold {n:,} quotes; the limit is {MAX_UPLOAD_ROWS:,}. "
                          "Export only the expiries you need.")
    return chain


@st.cache_data(ttl=_TTL, max_entries=8, show_spinner="Opening the snapshot...")
def snapshot(path: str, mtime: float, size: int) -> QuoteChain:
    """A saved snapshot (keyed on path, modification time and size, so a rewritten file reloads)."""
    return SnapshotStore().load(path)


def snapshots() -> list:
    """The saved snapshots (newest first where the store sorts so); a broken folder gives []."""
    try:
        return list(SnapshotStore().list())
    except Exception:  # noqa: BLE001 - a broken snapshot folder must never break the sidebar
        return []


def _yahoo():
    if simulated_offline():
        raise NetworkError("no network (simulated: DUPIRE_DESK_SIMULATE_OFFLINE is set)")
    return yahoo.YahooSource(timeout=yahoo_timeout())


@st.cache_data(ttl=300, max_entries=32, show_spinner="Asking Yahoo Finance for the expiries...")
def yahoo_expiries(ticker: str) -> list[str]:
    """Listed expiry dates of a ticker as ISO strings (cached 5 minutes)."""
    out = _yahoo().expiries(ticker)
    return [str(pd.Timestamp(e).date()) for e in out]


def yahoo_chain(ticker: str, expiries: list[str], progress: Callable[[int, int, str], None] | None = None) -> QuoteChain:
    """Download a chain (not cached here: the caller keeps it in the session so nothing is lost)."""
    return _yahoo().chain(ticker, expiries=expiries, progress=progress)


def forget_source(kind: str, ident: tuple) -> None:
    """Drop the cached load of a source whose chain then failed in the pipeline, so that the next
    attempt reads it afresh (``ident``: the hashed arguments of the loader)."""
    try:
        if kind == "upload":
            upload.clear(*ident)
        elif kind == "snapshot":
            snapshot.clear(*ident)
    except Exception:  # noqa: BLE001 - clearing is best effort
        pass


# ------------------------------------------------------------------------------------------ stages
# Each public stage takes ``(source_key, _chain, settings)`` and hands its cached worker the specs it reads
# (``Settings.prepare_spec``, ``fit_spec``, ``local_vol_spec``): each cache keys on exactly those.
@st.cache_data(ttl=_TTL, max_entries=_ENTRIES, show_spinner="Cleaning quotes, forwards, implied vols...")
def _prepared(source_key: str, _chain: QuoteChain, prep: pipeline.PrepareSpec):
    return pipeline.prepare(_chain, prep)


@st.cache_data(ttl=_TTL, max_entries=_ENTRIES, show_spinner="Fitting the implied-vol surface...")
def _fitted(source_key: str, _chain: QuoteChain, prep: pipeline.PrepareSpec, fit: FitSpec):
    return pipeline.fit(_prepared(source_key, _chain, prep), fit)


def prepared(source_key: str, _chain: QuoteChain, settings: pipeline.Settings):
    """``pipeline.prepare`` of the chain (keyed on the source and ``settings.prepare_spec``)."""
    return _prepared(source_key, _chain, settings.prepare_spec)


def fitted(source_key: str, _chain: QuoteChain, settings: pipeline.Settings):
    """``pipeline.fit`` (keyed on the source, ``prepare_spec`` and ``fit_spec``: not on the clip band)."""
    return _fitted(source_key, _chain, settings.prepare_spec, settings.fit_spec)


def _specs(settings: pipeline.Settings) -> tuple:
    return settings.prepare_spec, settings.fit_spec, settings.local_vol_spec


def _stage_inputs(source_key: str, _chain: QuoteChain, prep, fit):
    return _prepared(source_key, _chain, prep), _fitted(source_key, _chain, prep, fit)


@st.cache_data(ttl=_TTL, max_entries=_ENTRIES, show_spinner="Computing the Dupire local vol...")
def _local_vol(source_key: str, _chain: QuoteChain, prep, fit, lvs: LocalVolSpec):
    return pipeline.local_vol(*_stage_inputs(source_key, _chain, prep, fit), lvs)


def local_vol(source_key: str, _chain: QuoteChain, settings: pipeline.Settings):
    """``pipeline.local_vol`` on the default grid (keyed on the three specs: a clip change re-runs only this)."""
    return _local_vol(source_key, _chain, *_specs(settings))


@st.cache_data(ttl=_TTL, max_entries=_ENTRIES, show_spinner="Local vol at the quoted expiries...")
def _smile_local_vol(source_key: str, _chain: QuoteChain, prep, fit, lvs: LocalVolSpec, n_strikes: int):
    p, fr = _stage_inputs(source_key, _chain, prep, fit)
    uq = used(p.quotes)
    T = np.sort(uq.groupby(series.quote_keys(uq))["T"].first().to_numpy(float))
    lo, hi = np.quantile(uq["strike"], [0.0, 1.0])
    return pipeline.local_vol(p, fr, lvs, strikes=np.linspace(lo, hi, n_strikes), T=T)


def smile_local_vol(source_key: str, _chain: QuoteChain, settings: pipeline.Settings, n_strikes: int = 121):
    """Local vol on (quoted expiries x strikes over each smile's quoted range): for the Smiles page."""
    return _smile_local_vol(source_key, _chain, *_specs(settings), n_strikes)


@st.cache_data(ttl=_TTL, max_entries=_ENTRIES, show_spinner="Checking static arbitrage...")
def _arbitrage(source_key: str, _chain: QuoteChain, prep, fit, lvs: LocalVolSpec):
    p, fr = _stage_inputs(source_key, _chain, prep, fit)
    surface, violations = pipeline.arbitrage(p, fr, lvs)   # checked per series
    return surface, series.decorate_violations(violations, p.quotes)


def arbitrage(source_key: str, _chain: QuoteChain, settings: pipeline.Settings):
    """(surface diagnostics of ``pipeline.arbitrage``, model-free quote violations checked within each
    expiry series by ``core.arbitrage.quote_arbitrage_by_series``: no violation mixes SPX and SPXW legs,
    labelled by ``ui.series.decorate_violations``)."""
    return _arbitrage(source_key, _chain, *_specs(settings))


@st.cache_data(ttl=_TTL, max_entries=_ENTRIES, show_spinner="Repricing every quote under local vol (PDE)...")
def _repriced(source_key: str, _chain: QuoteChain, prep, fit, lvs: LocalVolSpec):
    return pipeline.reprice(*_stage_inputs(source_key, _chain, prep, fit), lvs)


def repriced(source_key: str, _chain: QuoteChain, settings: pipeline.Settings):
    """``pipeline.reprice``: the round trip through the forward Dupire PDE."""
    return _repriced(source_key, _chain, *_specs(settings))


@st.cache_data(ttl=_TTL, max_entries=_ENTRIES,
               show_spinner="Repricing the American quotes (backward PDE, early exercise)...")
def _repriced_american(source_key: str, _chain: QuoteChain, prep, fit, lvs: LocalVolSpec):
    # the forward round trip of the same quotes (cached: the Validation page shows it too) gives the European part
    return pipeline.reprice_american(*_stage_inputs(source_key, _chain, prep, fit), lvs,
                                     repricing=_repriced(source_key, _chain, prep, fit, lvs))


def repriced_american(source_key: str, _chain: QuoteChain, settings: pipeline.Settings):
    """``pipeline.reprice_american``: the American round trip (None for a chain that was not de-Americanised)."""
    return _repriced_american(source_key, _chain, *_specs(settings))


@st.cache_data(ttl=_TTL, max_entries=_ENTRIES, show_spinner="Pricing under local vol and Black-Scholes (Monte Carlo)...")
def _exotic(source_key: str, _chain: QuoteChain, prep, fit, lvs: LocalVolSpec, product, n_paths: int, seed: int):
    p, fr = _stage_inputs(source_key, _chain, prep, fit)
    fn = pipeline.local_vol_function(p, fr, lvs)
    return exotics.price_mc(fn, p.forwards, product, n_paths=n_paths, n_steps=100, seed=seed)


def exotic(source_key: str, _chain: QuoteChain, settings: pipeline.Settings, product, n_paths: int, seed: int = 1):
    """An exotic (a ``core.pricing.products`` ``Barrier`` or ``Asian``; frozen, so it keys the cache) by Monte Carlo
    (``core.pricing.exotics.price_mc``, 100 steps) under the local vol and under Black-Scholes."""
    return _exotic(source_key, _chain, *_specs(settings), product, n_paths, seed)


@st.cache_data(ttl=_TTL, max_entries=_ENTRIES, show_spinner="Re-running local vol and prices under the shock...")
def _scenario(source_key: str, _chain: QuoteChain, prep, fit, lvs: LocalVolSpec, shock, product, strikes: tuple,
              expiries: tuple):
    p, fr = _stage_inputs(source_key, _chain, prep, fit)
    mc = {"n_paths": 10_000, "n_steps": 100, "seed": 7}
    inst = Instruments(strikes=np.asarray(strikes, float), expiries=np.asarray(expiries, float),
                       exotics=() if product is None else (product,), mc=mc)
    return run_scenarios(fr.surface, p.forwards, [shock], inst, clip=lvs.clip)


def scenario(source_key: str, _chain: QuoteChain, settings: pipeline.Settings, shock, product, strikes: tuple,
             expiries: tuple):
    """``core.pricing.scenarios.run_scenarios`` for one ``Scenario`` ``shock`` on vanillas at ``strikes`` x
    ``expiries`` and, when given, the exotic ``product`` (as ``exotic``); returns a ``ScenarioResult``."""
    return _scenario(source_key, _chain, *_specs(settings), shock, product, strikes, expiries)


# ------------------------------------------------------------------------------------------ derived
def rules_of_thumb(surface, T, h: float = 0.01) -> pd.DataFrame:
    """``core.localvol.rules_of_thumb``: ATM local vs implied and the skew ratio per ``T``."""
    return _rules_of_thumb(surface, T, h)


def density(surface, forwards, K, T) -> np.ndarray:
    """``core.arbitrage.risk_neutral_density``: Breeden-Litzenberger density, shape (nT, nK)."""
    return _density(surface, forwards, K, T)


# ------------------------------------------------------------------------------------------ exports
def safe_csv(df: pd.DataFrame) -> bytes:
    """CSV bytes no spreadsheet executes (``core.export.safe_csv``: formula-like text cells escaped)."""
    return _safe_csv(df)


def to_json_bytes(obj: Any) -> bytes:
    """Strict JSON bytes (``core.export.to_json_bytes``: NaN/inf -> null)."""
    return _to_json_bytes(obj)


def download_name(*parts: Any, ext: str) -> str:
    """A download file name built from untrusted parts (ticker, upload name): never a path."""
    return safe_filename("_".join(str(p) for p in parts if p), default="dupire_desk", ext=ext)


def lv_grid_frame(lv) -> pd.DataFrame:
    """The local-vol grid in the seeds' export columns (``T, strike, iv_imp, call_price, dC_dT, d2C_dK2,
    sigma_loc``) plus the flags, from ``LocalVolResult.to_frame()``."""
    return lv.to_frame()


def ql_layout(lv) -> tuple[pd.DataFrame, dict]:
    """QuantLib ``FixedLocalVolSurface`` layout of the clipped grid: a frame with one row per strike and
    one column per time (QuantLib's matrix orientation) and the dict ``{times, strikes, matrix}`` of
    ``LocalVolResult.fixed_local_vol_layout()``."""
    lay = lv.fixed_local_vol_layout()
    m = np.asarray(lay["matrix"], float)
    frame = pd.DataFrame(m, index=pd.Index(np.asarray(lay["strikes"], float), name="strike"),
                         columns=[f"{t:.6f}" for t in lay["times"]])
    return frame.reset_index(), {"times": list(lay["times"]), "strikes": list(lay["strikes"]), "matrix": m.tolist()}


def expiry_choice(keys) -> tuple[str, ...]:
    """The ``Settings.expiries`` value for chosen expiry keys (``core.quotes.expiry_key``), in expiry order."""
    return tuple(series.sort_keys(keys))


def ensure(cond: bool, message: str) -> None:
    """Raise ``InputError(message)`` unless ``cond`` (for page-level preconditions)."""
    if not cond:
        raise InputError(message)
