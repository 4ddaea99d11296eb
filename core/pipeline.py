"""The whole calibration, stage by stage: quotes -> clean -> forwards -> implied vols -> fit -> local vol.

Each stage is its own function so that a caller (the dashboard) can cache them separately: a
change of the clip band re-runs only ``local_vol``; a change of smoothing re-runs ``fit`` and
``local_vol``. ``calibrate`` runs them all and times each; ``write_outputs`` writes the files the
command line documents (README, "Command line").
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.american import Deamericanised, deamericanise
from core.arbitrage import quote_arbitrage_by_series, surface_arbitrage
from core.black import quote_implied_vols
from core.cleaning import (
    CleaningConfig,
    check_bounds,
    clean_quotes,
    reason_counts,
    select_for_fit,
    use_mask,
    used,
)
from core.demo import demo_chain
from core.errors import FitError, InputError
from core.export import jsonable, safe_csv
from core.forwards import implied_forwards
from core.localvol import DEFAULT_CLIP, LocalVolSpec, local_vol_from_surface, local_vol_grid
from core.localvol import METHODS as LV_METHODS
from core.pricing.american_roundtrip import MODEL_AMERICAN, MODEL_FORWARD, american_reprice
from core.pricing.pde import reprice as pde_reprice
from core.quotes import QuoteChain, expiry_key, parse_expiry
from core.sources.detect import files_in, load_file, load_files
from core.sources.snapshots import SnapshotStore
from core.sources.yahoo import YahooSource
from core.surface.fit import METHODS as SURFACE_METHODS
from core.surface.fit import FitSpec, fit_surface

#: the price-based local-vol methods of the user's source documents differentiate Black prices of this fit
#: numerically (to show what that costs)
PRICE_METHOD_FIT = "svi"
#: the user's choice of method: a surface model (Gatheral's formula on it), or a price-based local-vol method
METHODS = SURFACE_METHODS + tuple(m for m in LV_METHODS if m != "gatheral")
FIT_METHOD = {m: m if m in SURFACE_METHODS else PRICE_METHOD_FIT for m in METHODS}
LV_METHOD = {m: m if m in LV_METHODS else "gatheral" for m in METHODS}


@dataclass(frozen=True)
class PrepareSpec:
    """What ``prepare`` reads, validated by ``Settings``: the quote ``filters`` (``CleaningConfig``), rate and carry
    overrides ``r``, ``q`` (None: from the quotes), the chosen ``expiries`` (None: every expiry with at least
    ``min_quotes_per_expiry`` usable quotes up to ``max_T`` years). Frozen and hashable (a cache key)."""

    filters: CleaningConfig = CleaningConfig()
    r: float | None = None
    q: float | None = None
    expiries: tuple[str, ...] | None = None
    max_T: float = 2.5
    min_quotes_per_expiry: int = 5


@dataclass(frozen=True)
class Settings:
    """Everything that defines a calibration; frozen and hashable so it can key a cache.

    ``method``: one of ``METHODS``. ``smoothing``: 0 (follow the quotes as closely as arbitrage allows)
    to 1 (strongly regularised). ``clip``: local-vol band ``(lo, hi)`` in vol units (0.05 = 5%).
    ``r``, ``q``: continuously-compounded overrides (None: from put-call parity). ``expiries``: ISO
    dates to use (None: every expiry with enough quotes up to ``max_T`` years). Quote filters:
    ``max_spread_frac`` (spread / mid), ``min_volume``, ``min_open_interest``. Grid: ``n_strikes`` x
    ``n_expiries`` cells for the local-vol surface. Each stage reads its own part, a frozen spec built and
    validated here once: ``prepare_spec`` (``PrepareSpec``), ``fit_spec`` (``core.surface.fit.FitSpec``),
    ``local_vol_spec`` (``core.localvol.LocalVolSpec``).
    """

    method: str = FitSpec.method
    smoothing: float = 0.0
    clip: tuple[float, float] = DEFAULT_CLIP
    r: float | None = None
    q: float | None = None
    expiries: tuple[str, ...] | None = None
    max_T: float = PrepareSpec.max_T
    min_quotes_per_expiry: int = PrepareSpec.min_quotes_per_expiry
    max_spread_frac: float | None = None
    min_volume: float = 0.0
    min_open_interest: float = 0.0
    n_strikes: int = LocalVolSpec.n_strikes
    n_expiries: int = LocalVolSpec.n_expiries
    prepare_spec: PrepareSpec = field(init=False, repr=False, compare=False)
    fit_spec: FitSpec = field(init=False, repr=False, compare=False)
    local_vol_spec: LocalVolSpec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        fs = FitSpec(method=FIT_METHOD[self.method], smoothing=self.smoothing)
        lvs = LocalVolSpec(method=LV_METHOD[self.method], clip=self.clip, n_strikes=self.n_strikes,
                           n_expiries=self.n_expiries)
        object.__setattr__(self, "clip", lvs.clip)
        for name in ("r", "q"):
            v = getattr(self, name)
            if v is not None and not (np.isfinite(float(v)) and abs(float(v)) < 1.0):
                raise InputError(f"{name} must be a rate like 0.04 (4%), got {v!r}")
        if self.expiries is not None:
            if isinstance(self.expiries, str):
                raise InputError("expiries must be a list of dates (YYYY-MM-DD), not one string")
            exp = tuple(_expiry_spec(e) for e in self.expiries)
            if not exp:
                raise InputError("expiries is an empty list: leave it out to use every usable expiry")
            object.__setattr__(self, "expiries", exp)
        kw: dict[str, Any] = {"min_volume": self.min_volume, "min_open_interest": self.min_open_interest}
        if self.max_spread_frac is not None:
            kw["max_spread_frac"] = self.max_spread_frac
        ps = PrepareSpec(filters=CleaningConfig(**kw), r=self.r, q=self.q, expiries=self.expiries, max_T=self.max_T,
                         min_quotes_per_expiry=self.min_quotes_per_expiry)
        object.__setattr__(self, "prepare_spec", ps)
        object.__setattr__(self, "fit_spec", fs)
        object.__setattr__(self, "local_vol_spec", lvs)

    def cleaning_config(self) -> CleaningConfig:
        """The quote filters these settings imply (``prepare_spec.filters``)."""
        return self.prepare_spec.filters


def _stage_spec(settings, name: str, kind: type):
    """The spec a stage reads: ``settings`` itself when it is one (a ``kind``), else that ``Settings``' spec."""
    if isinstance(settings, kind):
        return settings
    if isinstance(settings, Settings):
        return getattr(settings, name)
    raise InputError(f"expected Settings or a {kind.__name__}, got {type(settings).__name__}")


@dataclass(frozen=True)
class Prepared:
    """Quotes ready to fit. ``quotes``: every input quote with ``mid, spread, reason, F, D, y,
    iv_bid, iv_ask, iv_mid, iv_reason, use, use_rule``; ``forwards``: per-expiry forwards;
    ``expiries``: the expiries selected for the fit; ``counts``: reason -> number of quotes.
    ``american``: for an American chain with a spot, the de-Americanisation (``core.american.Deamericanised``:
    carry per expiry, conversion counts); its quotes' ``bid, ask, mid`` are then European equivalents (the
    American originals in ``bid_american, ask_american, mid_american``). None for European chains."""

    chain: QuoteChain
    quotes: pd.DataFrame
    forwards: Any
    expiries: tuple[str, ...]
    counts: dict
    seconds: dict
    american: Deamericanised | None = None


def _expiry_spec(value) -> str:
    """A user's expiry choice as ``'YYYY-MM-DD'`` (every series of that date), ``'YYYY-MM-DD AM'`` or
    ``'YYYY-MM-DD PM'`` (one series); ``InputError`` naming the value when it is not a date."""
    text = str(value).strip()
    parts = text.rsplit(" ", 1)
    if len(parts) == 2 and parts[1].upper() in ("AM", "PM"):
        return f"{parse_expiry(parts[0]).date()} {parts[1].upper()}"
    return str(parse_expiry(value if not isinstance(value, str) else text).date())


def _spec_matches(spec: str, key: str) -> bool:
    """Whether an ``_expiry_spec`` names the series ``key`` (``core.quotes.expiry_key``)."""
    date, _, settle = spec.partition(" ")
    kd, _, ks = key.partition(" ")
    return date == kd and (not settle or settle == (ks or "PM"))


def _expiry_dates(q: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each row's expiry series as an index into the sorted keys of ``core.quotes.expiry_key`` (``'YYYY-MM-DD'``
    PM, ``'YYYY-MM-DD AM'``; -1 where the expiry is missing), and those keys: one ``strftime`` per distinct
    series rather than one per quote."""
    settle = q["settlement"].astype(str).str.upper() if "settlement" in q.columns else pd.Series("PM", index=q.index)
    frame = pd.DataFrame({"e": pd.to_datetime(q["expiry"]).to_numpy(), "s": settle.to_numpy()})
    codes, uniq = pd.factorize(pd.MultiIndex.from_frame(frame), sort=True)
    ok = pd.notna(frame["e"]).to_numpy()
    if len(uniq) == 0:
        return np.full(len(q), -1, dtype=np.int64), np.array([], dtype=object)
    keys = np.array([expiry_key(e, st) if pd.notna(e) else "" for e, st in uniq], dtype=object)
    names, inv = np.unique(keys, return_inverse=True)
    code = np.where((codes >= 0) & ok, inv[np.maximum(codes, 0)], -1)
    return code, names


def _default_expiries(q: pd.DataFrame, settings: PrepareSpec, expiry_dates=None) -> list[str]:
    """The expiry dates to fit by default: at least ``min_quotes_per_expiry`` usable quotes with a finite
    implied vol, and ``T`` (of the first such quote) at most ``max_T``. ``expiry_dates``: ``_expiry_dates(q)``."""
    code, dates = _expiry_dates(q) if expiry_dates is None else expiry_dates
    sel = (q["reason"] == "ok").to_numpy(dtype=bool) & np.isfinite(q["iv_mid"].to_numpy(dtype=float)) & (code >= 0)
    n = np.bincount(code[sel], minlength=len(dates))
    T = q["T"].to_numpy(dtype=float)
    with_T = sel & np.isfinite(T)
    first_T = np.full(len(dates), np.nan)
    which, first = np.unique(code[with_T], return_index=True)  # the first quote of each date, in row order
    first_T[which] = T[with_T][first]
    with np.errstate(invalid="ignore"):
        keep = (n >= settings.min_quotes_per_expiry) & (first_T <= settings.max_T)
    return [str(d) for d in dates[keep]]


def prepare(chain: QuoteChain, settings: Settings | PrepareSpec = Settings()) -> Prepared:
    """Clean the chain, estimate forwards by put-call parity, compute implied vols, select fit quotes.
    ``settings``: a ``Settings`` or its ``prepare_spec``.

    Quotes of expiries that are not selected stay in the table with ``use = False`` and
    ``use_rule = 'expiry not selected'``: nothing is dropped.
    """
    if not isinstance(chain, QuoteChain):
        raise InputError(f"prepare needs a QuoteChain, got {type(chain).__name__}")
    if len(chain.quotes) == 0:
        raise InputError("the chain has no quotes: load another file, ticker or expiry")
    settings = _stage_spec(settings, "prepare_spec", PrepareSpec)
    t0 = time.perf_counter()
    q = clean_quotes(chain.quotes, settings.filters)
    t1 = time.perf_counter()
    deam = None
    if chain.exercise == "american" and chain.spot is not None:
        # carry from the quotes, European-equivalent quotes: fitted both sides near the money as for an index
        deam = deamericanise(q, chain.spot, r=settings.r, q=settings.q, dividends=chain.meta.get("dividends"),
                             asof=chain.market_time)
        q, fwd, style = deam.quotes, deam.forwards, "european"
    else:  # European chains (and American ones without a spot: parity forwards flagged approximate, OTM only)
        fwd = implied_forwards(q, spot=chain.spot, r=settings.r, q=settings.q, exercise=chain.exercise)
        style = chain.exercise
    q = check_bounds(q, fwd)
    t2 = time.perf_counter()
    q = quote_implied_vols(q, fwd)
    q = select_for_fit(q, fwd, style, settings.filters)
    t3 = time.perf_counter()
    code, dates = _expiry_dates(q)
    all_exp = [str(d) for d in dates if d]
    if settings.expiries is not None:
        unknown = [e for e in settings.expiries if not any(_spec_matches(e, k) for k in all_exp)]
        if unknown:
            raise InputError(f"expiries {unknown} are not in the chain; available: {all_exp}")
        chosen = [k for k in all_exp if any(_spec_matches(e, k) for e in settings.expiries)]
    else:
        chosen = _default_expiries(q, settings, (code, dates))
    in_chosen = np.r_[np.isin(dates, chosen), False]  # the last entry: rows without an expiry (code -1)
    off = ~in_chosen[code] & use_mask(q)
    q.loc[off, "use"] = False
    q.loc[off, "use_rule"] = "expiry not selected"
    return Prepared(chain=chain, quotes=q, forwards=fwd, expiries=tuple(chosen), counts=reason_counts(q),
                    seconds={"clean": t1 - t0, "forwards": t2 - t1, "implied_vols": t3 - t2}, american=deam)


def fit(prepared: Prepared, settings: Settings | FitSpec = Settings()):
    """Fit the implied-vol surface (``core.surface.fit.fit_surface``) to the selected quotes (``settings``: a
    ``Settings`` or its ``fit_spec``)."""
    if used(prepared.quotes).empty:
        raise FitError("no usable quotes to fit: widen the quote filters or choose other expiries")
    return fit_surface(prepared.quotes, prepared.forwards, spec=_stage_spec(settings, "fit_spec", FitSpec))


def grid_axes(prepared: Prepared, fit_result, settings: Settings | LocalVolSpec = Settings()
              ) -> tuple[np.ndarray, np.ndarray]:
    """Strike and expiry axes of the local-vol grid: ``n_strikes`` strikes over the quoted strikes of the
    used quotes (1st to 99th percentile) and ``n_expiries`` times over the quoted expiries."""
    settings = _stage_spec(settings, "local_vol_spec", LocalVolSpec)
    fit_quotes = used(prepared.quotes)
    T_lo, T_hi = float(fit_quotes["T"].min()), float(fit_quotes["T"].max())
    if not T_hi > T_lo:
        T_hi = T_lo * 1.5 + 1e-3
    K_lo, K_hi = np.quantile(fit_quotes["strike"], [0.01, 0.99])
    if not K_hi > K_lo:
        K_lo, K_hi = 0.8 * K_lo, 1.2 * K_hi
    return np.linspace(K_lo, K_hi, settings.n_strikes), np.linspace(T_lo, T_hi, settings.n_expiries)


def local_vol(prepared: Prepared, fit_result, settings: Settings | LocalVolSpec = Settings(), strikes=None, T=None):
    """Dupire local vol on the grid (``core.localvol.local_vol_grid``) with the settings' method and clip band
    (``settings``: a ``Settings`` or its ``local_vol_spec``)."""
    spec = _stage_spec(settings, "local_vol_spec", LocalVolSpec)
    if strikes is None or T is None:
        strikes, T = grid_axes(prepared, fit_result, spec)
    return local_vol_grid(fit_result.surface, prepared.forwards, strikes, T, clip=spec.clip, method=spec.method)


def arbitrage(prepared: Prepared, fit_result, settings: Settings | LocalVolSpec = Settings()):
    """Static-arbitrage diagnostics: ``(SurfaceArbitrage on a (y, T) grid of the local-vol grid's size, model-free
    quote violations)``."""
    settings = _stage_spec(settings, "local_vol_spec", LocalVolSpec)
    fit_quotes = used(prepared.quotes)
    y_lo, y_hi = float(fit_quotes["y"].min()), float(fit_quotes["y"].max())
    T_lo, T_hi = float(fit_quotes["T"].min()), float(fit_quotes["T"].max())
    y_grid = np.linspace(y_lo, y_hi, settings.n_strikes)
    T_grid = np.linspace(T_lo, max(T_hi, T_lo * 1.01), settings.n_expiries)
    qa = quote_arbitrage_by_series(prepared.quotes, prepared.forwards)
    if len(qa) and "survives_spread" in qa.columns:
        # executable violations first, the largest first; mid-only ones after them
        qa = qa.sort_values(["survives_spread", "cost"], ascending=[False, True], kind="stable").reset_index(drop=True)
    return surface_arbitrage(fit_result.surface, y_grid, T_grid), qa


def local_vol_function(prepared: Prepared, fit_result, settings: Settings | LocalVolSpec = Settings()):
    """The clipped local vol as a vectorised ``lv(K, T)`` for pricing: Gatheral's formula on the fitted
    surface at any point (not only the display grid); where undefined it falls back to implied vol.
    The round trip, the exotics and the scenarios all price under this one function."""
    return local_vol_from_surface(fit_result.surface, prepared.forwards,
                                  clip=_stage_spec(settings, "local_vol_spec", LocalVolSpec).clip)


def reprice(prepared: Prepared, fit_result, settings: Settings | LocalVolSpec = Settings(), **grid):
    """Round trip: reprice the fitted quotes by the forward Dupire PDE under the clipped local vol (for an
    American chain: their European equivalents; ``reprice_american`` prices the American quotes)."""
    lv = local_vol_function(prepared, fit_result, settings)
    return pde_reprice(used(prepared.quotes), lv, prepared.forwards, **grid)


def reprice_american(prepared: Prepared, fit_result, settings: Settings | LocalVolSpec = Settings(), repricing=None,
                     **grid):
    """American round trip (``core.pricing.american_roundtrip``): every used American quote priced under the
    clipped local vol by the backward PDE with early exercise, against its own American bid/ask; None for a
    chain that was not de-Americanised. ``repricing``: the forward round trip of the same quotes (``reprice``),
    whose European prices are then reused."""
    if prepared.american is None:
        return None
    lv = local_vol_function(prepared, fit_result, settings)
    european = None if repricing is None else repricing.table["price_model"].to_numpy(float)
    return american_reprice(used(prepared.quotes), lv, prepared.forwards, european=european, **grid)


def repricing_frame(repricing, american=None) -> pd.DataFrame:
    """The rows of ``repricing.csv``: the forward Dupire round trip and, for an American chain, the American
    one, with a ``model`` column saying which priced each row (``MODEL_FORWARD``, ``MODEL_AMERICAN``)."""
    parts = []
    if repricing is not None:
        parts.append(repricing.table.assign(model=MODEL_FORWARD))
    if american is not None:
        parts.append(american.table.assign(model=MODEL_AMERICAN))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


@dataclass(frozen=True)
class Calibration:
    """The result of ``calibrate``: every stage's result and the seconds each took."""

    settings: Settings
    prepared: Prepared
    fit: Any
    local_vol: Any
    arbitrage: Any
    repricing: Any = None
    seconds: dict = field(default_factory=dict)
    american_repricing: Any = None


def calibrate(chain: QuoteChain, settings: Settings = Settings(), *, with_repricing: bool = False) -> Calibration:
    """Run the whole pipeline on a chain; ``with_repricing`` adds the PDE round trip (and, for an American
    chain, the American round trip)."""
    t = {}
    t0 = time.perf_counter()
    prep = prepare(chain, settings)
    t["prepare"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fr = fit(prep, settings)
    t["fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    lv = local_vol(prep, fr, settings)
    t["local_vol"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    arb = arbitrage(prep, fr, settings)
    t["arbitrage"] = time.perf_counter() - t0
    rp = arp = None
    if with_repricing:
        t0 = time.perf_counter()
        rp = reprice(prep, fr, settings)
        t["repricing"] = time.perf_counter() - t0
        if prep.american is not None:
            t0 = time.perf_counter()
            arp = reprice_american(prep, fr, settings, repricing=rp)
            t["american_repricing"] = time.perf_counter() - t0
    t["total"] = sum(t.values())
    return Calibration(settings=settings, prepared=prep, fit=fr, local_vol=lv, arbitrage=arb, repricing=rp, seconds=t,
                       american_repricing=arp)


# ----------------------------------------------------------------------------------------- outputs
def quotes_frame(prepared: Prepared, fit_result=None) -> pd.DataFrame:
    """Every quote with its reason code, implied vols and (where fitted) the fitted vol."""
    q = prepared.quotes.copy()
    if fit_result is not None:
        T = q["T"].to_numpy(float)
        y = q["y"].to_numpy(float)
        ok = np.isfinite(T) & np.isfinite(y) & (T > 0)
        iv_fit = np.full(len(q), np.nan)
        if ok.any():
            iv_fit[ok] = fit_result.surface.implied_vol(y[ok], T[ok])
        q["iv_fit"] = iv_fit
        q["resid_bp"] = (q["iv_fit"] - q["iv_mid"]) * 1e4
    return q


def forwards_frame(prepared: Prepared) -> pd.DataFrame:
    """One row per expiry: expiry, T, forward, discount, pairs used, fit residual, fallback flag (American
    chains: also ``r``, ``q``, ``carry_residual_bp``, ``carry_flag`` of ``core.american.implied_carry``)."""
    t = prepared.forwards.table.copy()
    return t.rename(columns={"F": "forward", "D": "discount"})


def summary_dict(chain: QuoteChain, prepared: Prepared, fit_result=None, lv=None, repricing=None,
                 seconds=None, settings: Settings | None = None, american_repricing=None) -> dict:
    """The keys scripts rely on (README, "summary.json"). American chains add ``american`` (exercise,
    dividend model, rate and its source, conversion counts and share, carry smoothness and flags;
    ``Deamericanised.summary``), ``q``/``carry_flag`` per expiry and ``american_repricing``."""
    q = prepared.quotes
    code, names = _expiry_dates(q)
    n_used = np.bincount(code[use_mask(q) & (code >= 0)], minlength=len(names))
    # each forwards row is one series: its key from the quotes of that expiry time
    firsts = pd.DataFrame({"e": q["expiry"].to_numpy(), "et": q["expiry_time"].to_numpy(), "k": code})
    firsts = firsts[firsts["k"] >= 0].drop_duplicates(["e", "et"])
    key_of = {(pd.Timestamp(e), pd.Timestamp(et)): int(k) for e, et, k in firsts.itertuples(index=False)}
    fit_quotes = used(q)
    expiries = []
    fwd = prepared.forwards.table
    for _, row in fwd.iterrows():
        k = key_of.get((pd.Timestamp(row["expiry"]), pd.Timestamp(row["expiry_time"]))) if pd.notna(row["expiry"]) else None
        e = str(names[k]) if k is not None else None
        item = {"expiry": e, "settlement": ("AM" if e and e.endswith(" AM") else "PM") if e else None,
                "T": row["T"], "forward": row["F"], "discount": row["D"],
                "n_used": int(n_used[k]) if k is not None else 0}
        if "q" in fwd.columns:
            item["r"], item["q"] = row["r"], row["q"]
            item["carry_residual_bp"], item["carry_flag"] = row["carry_residual_bp"], row["carry_flag"]
        if fit_result is not None and e is not None:
            item["rmse_bp"] = fit_result.rmse_bp.get(e)
            item["inside_bid_ask"] = fit_result.inside_share.get(e)
        expiries.append(item)
    out = {
        "source": chain.source, "underlying": chain.underlying, "spot": chain.spot,
        # the quote time as read, and the time T runs from (core.calendar.market_time): New York, with offset
        "asof": pd.Timestamp(chain.asof).tz_convert("America/New_York").isoformat(),
        "market_time": pd.Timestamp(chain.market_time).tz_convert("America/New_York").isoformat(),
        "exercise": chain.exercise,
        "method": settings.method if settings else None,
        "n_quotes": int(len(q)), "n_used": int(len(fit_quotes)),
        "excluded": {k: int(v) for k, v in prepared.counts.items() if k != "ok"},
        "expiries": expiries,
    }
    if prepared.american is not None:
        out["american"] = prepared.american.summary()
    if lv is not None:
        c = lv.counts
        out["local_vol"] = {k: int(c.get(k, 0)) for k in ("cells", "clipped", "butterfly", "calendar", "extrapolated")}
        out["clip"] = list(lv.clip)
    if repricing is not None:
        out["repricing"] = {"max_bp": repricing.max_bp, "mean_bp": repricing.mean_bp,
                            "inside_bid_ask": repricing.inside_bid_ask}
    if american_repricing is not None:
        out["american_repricing"] = american_repricing.summary()
        out["american_repricing"]["by_expiry"] = american_repricing.by_expiry.to_dict(orient="records")
    if seconds is not None:
        out["seconds"] = dict(seconds)
    return jsonable(out)


def write_outputs(cal: Calibration, out_dir) -> dict[str, Path]:
    """Write ``quotes.csv, forwards.csv, surface.json, local_vol.csv, arbitrage.json, summary.json``
    (and ``repricing.csv`` when repriced) into ``out_dir``; returns name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    prep, fr = cal.prepared, cal.fit

    def put(name, writer):
        p = out / name
        writer(p)
        paths[name] = p

    put("quotes.csv", lambda p: p.write_bytes(safe_csv(quotes_frame(prep, fr))))
    put("forwards.csv", lambda p: p.write_bytes(safe_csv(forwards_frame(prep))))
    surface = {"method": fr.method, "settings_method": cal.settings.method, "smoothing": cal.settings.smoothing,
               "params": fr.params, "rmse_bp": fr.rmse_bp, "inside_bid_ask": fr.inside_share,
               "warnings": list(fr.warnings), "failed_expiries": list(fr.failed_expiries), "seconds": fr.seconds}
    put("surface.json", lambda p: p.write_text(json.dumps(jsonable(surface), indent=2)))
    put("local_vol.csv", lambda p: p.write_bytes(safe_csv(cal.local_vol.to_frame())))
    sarb, qarb = cal.arbitrage
    arb = {"surface": sarb.counts, "quotes": qarb.to_dict(orient="records")}
    put("arbitrage.json", lambda p: p.write_text(json.dumps(jsonable(arb), indent=2)))
    if cal.repricing is not None or cal.american_repricing is not None:
        put("repricing.csv", lambda p: p.write_bytes(safe_csv(repricing_frame(cal.repricing, cal.american_repricing))))
    summ = summary_dict(prep.chain, prep, fr, cal.local_vol, cal.repricing, cal.seconds, cal.settings,
                        american_repricing=cal.american_repricing)
    put("summary.json", lambda p: p.write_text(json.dumps(summ, indent=2)))
    return paths


# ----------------------------------------------------------------------------------------- sources
def open_source(spec: Any, *, spot: float | None = None, asof=None, expiries=None, timeout: float = 8.0,
                progress=None) -> QuoteChain:
    """A chain from a source spec: ``demo``, ``demo:SEED``, ``yahoo:TICKER`` or a file path (any format
    ``core.sources.detect.load_file`` reads, snapshots included); a list of several file paths, or a
    folder, loads files of one underlying and quote day into one chain (``core.sources.detect.load_files``)."""
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    if not specs:
        raise InputError("no source given: name 'demo', 'yahoo:TICKER', a file, several files or a folder")
    spec = str(specs[0]).strip()
    if len(specs) > 1 or Path(spec).is_dir():   # one expiry per file, as CBOE downloads can be
        chain = load_files(files_in([str(s).strip() for s in specs]), spot=spot, asof=asof)
    elif spec == "demo" or spec.startswith("demo:"):
        text = spec.split(":", 1)[1] if ":" in spec else "7"
        if not re.fullmatch(r"[0-9]+", text.strip()):
            raise InputError(f"source {spec!r}: the demo seed must be a whole number >= 0, e.g. demo:7")
        seed = int(text)
        chain = demo_chain(seed=seed) if asof is None else demo_chain(seed=seed, asof=asof)
    elif spec.lower().startswith("yahoo:"):
        chain = YahooSource(timeout=timeout).chain(spec.split(":", 1)[1], expiries=expiries, progress=progress)
        expiries = None
    else:
        path = Path(spec)
        if not path.is_file():
            raise InputError(f"source {spec!r} is neither 'demo', 'yahoo:TICKER' nor an existing file")
        with open(path, "rb") as fh:
            gz = fh.read(2) == b"\x1f\x8b"
        if gz:  # a saved snapshot (gzip): opened through its store, which checks its checksum
            chain = SnapshotStore(path.parent).load(path)
        else:
            chain = load_file(path, spot=spot, asof=asof)
    if spot is not None:
        chain = replace(chain, spot=float(spot))  # QuoteChain validates it (positive, finite)
    if expiries:
        chain = chain.select_expiries(expiries)
    return chain
