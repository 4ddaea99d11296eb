"""Quote cleaning: mid, spread and one reason code per quote; bounds on the forward; fit selection.

Nothing is dropped. Every input row stays in the output with a ``reason``: ``"ok"`` when usable,
else the code of the *first* check it fails, in the order of ``CHECK_ORDER`` (``REASONS`` explains
each code in words a trader understands). Three steps, each adding columns to a copy:

1. ``clean_quotes(quotes, config)``: quote-level checks that need no forward (``mid``, ``spread``,
   ``reason``).
2. ``check_bounds(quotes, forwards)``: no-arbitrage bounds on the forward for rows still ``"ok"``:
   ``D max(cp (F - K), 0) < mid < D F`` (call) or ``< D K`` (put) (MATH.md, Black-76 bounds).
3. ``select_for_fit(quotes, forwards, exercise)``: which usable quotes feed the surface (``use``,
   ``use_rule``): out-of-the-money side, both sides within ``near_money`` of the forward; American
   chains out of the money only (early exercise premium sits in the in-the-money side).

An American chain with a spot is de-Americanised between steps 1 and 2 (``core.american``): its quotes become
European equivalents (conversions that cannot be trusted get the codes of ``AMERICAN_REASONS``) and step 3
then runs with ``exercise='european'`` on them, both sides near the money as for an index.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from core.errors import InputError

#: reason code -> plain-English explanation (shown in the UI and the CLI summary).
REASONS: dict[str, str] = {
    "ok": "usable quote: passed every check",
    "bad_contract": "the contract itself is malformed: strike missing, zero or negative, call/put flag "
                    "unknown, or no time to expiry",
    "expired": "expired: the expiry time is at or before the time the prices were made (the market time), or "
               "so close to it (T below the minimum, one day by default) that the price is mostly noise",
    "missing_quote": "bid or ask missing (or negative): no two-sided market",
    "zero_bid": "zero bid: nobody is willing to buy, so the mid overstates the value",
    "crossed": "crossed market: bid above ask, one side is stale or wrong",
    "locked": "locked market: bid equals ask, a sign of a stale or synthetic quote",
    "wide_spread": "spread too wide relative to the mid: the mid price is unreliable",
    "stale": "last trade too long before the quote time: the quote may be stale",
    "low_volume": "traded volume below the minimum set in the cleaning settings",
    "low_open_interest": "open interest below the minimum set in the cleaning settings",
    "duplicate": "duplicate of an earlier quote of the same contract (root, expiry and settlement, strike, "
                 "call/put), e.g. the same expiry in two files (first kept)",
    # American chains (core.american, the de-Americanisation step): conversions that cannot be trusted
    "american_no_vol": "American chain: no American implied vol for the mid (at or below the exercise value, "
                       "or above the bound), so no European equivalent",
    "american_deep_itm": "American chain: deep in the money, the time value over the exercise value is below "
                         "the bid/ask spread or the bid/ask spans more than 5 vol points, so the quote does "
                         "not pin a vol",
    "american_premium": "American chain: early-exercise premium larger than the bid/ask spread, so the "
                        "European equivalent rests more on the premium's model (flat vol) than on the quote",
    "below_intrinsic": "mid at or below the discounted intrinsic value on the forward: "
                       "no time value, no implied vol (an arbitrage if it were executable)",
    "above_upper_bound": "mid above the no-arbitrage upper bound (call above D*F, put above D*K)",
}

#: reasons set by the de-Americanisation of an American chain (``core.american.deamericanise``), after cleaning
AMERICAN_REASONS: tuple[str, ...] = ("american_no_vol", "american_deep_itm", "american_premium")

#: order in which the checks run; the first failing check names the row's reason (the American codes only for
#: American chains, between cleaning and the bounds on the forward: ``core.pipeline.prepare``).
CHECK_ORDER: tuple[str, ...] = (
    "bad_contract", "expired", "missing_quote", "zero_bid", "crossed", "locked", "wide_spread",
    "stale", "low_volume", "low_open_interest", "duplicate", *AMERICAN_REASONS, "below_intrinsic", "above_upper_bound",
)

_NEEDED = ("expiry", "strike", "cp", "bid", "ask", "T")


@dataclass(frozen=True)
class CleaningConfig:
    """Cleaning and selection settings (frozen and hashable, so the UI can cache on it).

    Parameters
    ----------
    max_spread_frac : float
        Largest usable ``(ask - bid) / mid`` (at most 2 when the bid is positive). Default 1.5:
        ordinary far-wing quotes such as 0.05 / 0.25 (1.33) pass, 0.05 / 0.50 (1.64) does not.
        ``inf`` switches the check off.
    min_T : float
        Smallest usable time to expiry in years (ACT/365). Default one day (1/365): in its last
        day an option's price is dominated by the tick and the settlement mechanics.
    stale_after : pandas.Timedelta or None
        A quote whose last trade is older than this, measured to its quote time, is ``stale``;
        only where the source has trade times. Default 5 days (a trading week); ``None`` = off.
    min_volume, min_open_interest : float
        Minimum day volume / open interest (unknown counts as 0 when the minimum is positive).
    near_money : float
        ``|y| = |ln(K/F)|`` band in which both calls and puts are used for the fit (European
        chains). Default 0.05.
    otm_only : bool
        Use only out-of-the-money quotes even for European chains.
    parity_width : float
        Put-call parity pairs are taken within ``|ln(K/F0)| <= max(0.02, parity_width sqrt(T))``
        of a first forward guess ``F0`` (``core.forwards.implied_forwards``). Default 0.5 (about
        2.5 standard deviations at 20% vol): on the demo chain 0.3 doubles the forward error at 2 years.
    parity_min_pairs : int
        Fewest pairs for a full parity regression (slope and intercept); with fewer, the discount
        factor is interpolated from other expiries and only the forward comes from parity.
    surface_min_days : float
        Expiries closer than this many calendar days to the market time do not feed the surface (default
        3.5: the 0-3 day expiries). Their smiles are made by the next session's events, overnight gaps and the
        settlement print, not by diffusion: a local-vol surface cannot hold them without bending the weeks
        after them, and their wings would need local vols of several hundred percent. They stay in the table,
        with their implied vols, marked ``not used: expires within 3.5 days``; the surface starts after them.
    max_abs_rate : float
        A parity regression implying ``|r| = |ln D| / T`` above this is treated as nonsense and falls
        back (default 0.5, i.e. 50% a year).
    """

    max_spread_frac: float = 1.5
    min_T: float = 1.0 / 365.0
    stale_after: pd.Timedelta | None = pd.Timedelta(days=5)
    min_volume: float = 0.0
    min_open_interest: float = 0.0
    near_money: float = 0.05
    otm_only: bool = False
    parity_width: float = 0.5
    parity_min_pairs: int = 3
    max_abs_rate: float = 0.5
    surface_min_days: float = 3.5

    def __post_init__(self) -> None:
        def _check(name: str, ok: bool, what: str) -> None:
            if not ok:
                raise InputError(f"CleaningConfig.{name} must be {what}, got {getattr(self, name)!r}")

        def _num(v: Any) -> float:
            try:
                return float(v)
            except (TypeError, ValueError):
                return float("nan")

        _check("max_spread_frac", _num(self.max_spread_frac) > 0, "a positive number (or inf)")
        _check("min_T", np.isfinite(_num(self.min_T)) and _num(self.min_T) >= 0, "a number of years >= 0")
        if self.stale_after is not None:
            try:
                td = pd.Timedelta(self.stale_after)
            except (TypeError, ValueError):
                td = pd.NaT
            _check("stale_after", td is not pd.NaT and td > pd.Timedelta(0), "a positive pandas.Timedelta or None")
            object.__setattr__(self, "stale_after", td)
        _check("min_volume", np.isfinite(_num(self.min_volume)) and _num(self.min_volume) >= 0, "a number >= 0")
        _check("min_open_interest", np.isfinite(_num(self.min_open_interest)) and _num(self.min_open_interest) >= 0,
               "a number >= 0")
        _check("near_money", np.isfinite(_num(self.near_money)) and _num(self.near_money) >= 0, "a number >= 0")
        _check("parity_width", np.isfinite(_num(self.parity_width)) and _num(self.parity_width) > 0, "a positive number")
        _check("parity_min_pairs", isinstance(self.parity_min_pairs, (int, np.integer)) and self.parity_min_pairs >= 3,
               "an integer >= 3")
        _check("max_abs_rate", _num(self.max_abs_rate) > 0, "a positive number")
        _check("surface_min_days", np.isfinite(_num(self.surface_min_days)) and _num(self.surface_min_days) >= 0,
               "a number of days >= 0")


def _frame(quotes: Any, name: str = "quotes") -> pd.DataFrame:
    """The quote table of a DataFrame or a QuoteChain, as a fresh copy with a 0..n-1 index."""
    q = getattr(quotes, "quotes", quotes)
    if not isinstance(q, pd.DataFrame):
        raise InputError(f"{name} must be a quote DataFrame or a QuoteChain, got {type(quotes).__name__}")
    missing = [c for c in _NEEDED if c not in q.columns]
    if missing:
        raise InputError(f"{name} lacks the columns {missing}; build it with core.quotes.make_quotes")
    return q.reset_index(drop=True).copy()


def _num_col(q: pd.DataFrame, col: str) -> np.ndarray:
    if col not in q.columns:
        return np.full(len(q), np.nan)
    return pd.to_numeric(q[col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _time_col(q: pd.DataFrame, col: str) -> pd.Series:
    if col not in q.columns:
        return pd.Series(pd.NaT, index=q.index, dtype="datetime64[ns, UTC]")
    try:
        return pd.to_datetime(q[col], utc=True, errors="coerce")
    except (TypeError, ValueError):
        return pd.Series(pd.NaT, index=q.index, dtype="datetime64[ns, UTC]")


def clean_quotes(quotes: Any, config: CleaningConfig | None = None) -> pd.DataFrame:
    """Add ``mid``, ``spread`` and ``reason`` to every quote (nothing dropped).

    Parameters: ``quotes`` a quote table (``core.quotes`` schema) or a ``QuoteChain``; ``config``
    a ``CleaningConfig`` (default settings when None). ``mid = (bid + ask) / 2`` and
    ``spread = ask - bid`` where both are finite, else NaN.
    Checks, first failing wins (``CHECK_ORDER``): bad_contract, expired (``T < min_T``),
    missing_quote, zero_bid, crossed (bid > ask), locked (bid == ask), wide_spread
    (``spread / mid > max_spread_frac``), stale (``quote_time - last_trade_time > stale_after``,
    where both are known), low_volume, low_open_interest, duplicate (same root, expiry, settlement,
    expiry time, strike and cp as an earlier row that passed every other check: the first is kept).
    ``expired`` takes every ``T < min_T``: a negative ``T`` (an expiry before the market time, as
    listed in a weekend download) is expired, never a bad contract.
    Returns a copy of the table with the three columns added (index reset to 0..n-1).
    Raises ``InputError`` for a non-table or missing columns.
    """
    cfg = config if config is not None else CleaningConfig()
    if not isinstance(cfg, CleaningConfig):
        raise InputError(f"config must be a CleaningConfig, got {type(cfg).__name__}")
    q = _frame(quotes)
    n = len(q)
    K = _num_col(q, "strike")
    cp = _num_col(q, "cp")
    T = _num_col(q, "T")
    bid = _num_col(q, "bid")
    ask = _num_col(q, "ask")
    with np.errstate(invalid="ignore", over="ignore"):
        two = np.isfinite(bid) & np.isfinite(ask)
        mid = np.where(two, 0.5 * (bid + ask), np.nan)
        spread = np.where(two, ask - bid, np.nan)

    reason = np.full(n, "ok", dtype=object)

    def mark(code: str, mask: np.ndarray) -> None:
        reason[(reason == "ok") & mask] = code

    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        mark("bad_contract", ~(np.isfinite(K) & (K > 0)) | ~np.isin(cp, (1.0, -1.0)) | ~np.isfinite(T))
        mark("expired", T < cfg.min_T)
        mark("missing_quote", ~two | (bid < 0) | (ask < 0))
        mark("zero_bid", bid == 0)
        mark("crossed", bid > ask)
        mark("locked", bid == ask)
        frac = spread / mid
        # the hair of tolerance keeps a quote exactly at the limit (0.05 / 0.15 at 1.0) on the right side
        mark("wide_spread", ~np.isfinite(frac) | (frac > cfg.max_spread_frac * (1.0 + 1e-9)))
        if cfg.stale_after is not None and "last_trade_time" in q.columns:
            qt = _time_col(q, "quote_time")
            lt = _time_col(q, "last_trade_time")
            age = (qt - lt)
            stale = (age > cfg.stale_after).fillna(False).to_numpy(dtype=bool)
            mark("stale", stale)
        if cfg.min_volume > 0:
            vol = np.nan_to_num(_num_col(q, "volume"), nan=0.0)
            mark("low_volume", vol < cfg.min_volume)
        if cfg.min_open_interest > 0:
            oi = np.nan_to_num(_num_col(q, "open_interest"), nan=0.0)
            mark("low_open_interest", oi < cfg.min_open_interest)

    ok = reason == "ok"
    if ok.any():
        # SPX (AM) and SPXW (PM) of one date are different contracts: root, settlement and expiry time
        # are part of the key, so only a true repeat (two files, a vendor's double row) is a duplicate
        keys = [c for c in ("root", "expiry", "settlement", "expiry_time", "strike", "cp") if c in q.columns]
        dup = q.loc[ok, keys].duplicated(keep="first").to_numpy(dtype=bool)
        idx = np.flatnonzero(ok)[dup]
        reason[idx] = "duplicate"

    q["mid"] = mid
    q["spread"] = spread
    q["reason"] = pd.Series(reason, index=q.index, dtype=object).astype(str)
    return q


def _row_forwards(q: pd.DataFrame, forwards: Any) -> tuple[np.ndarray, np.ndarray]:
    """Forward and discount for each row, from ``forwards.F(T)``, ``forwards.D(T)``."""
    if not (hasattr(forwards, "F") and hasattr(forwards, "D")):
        raise InputError(f"forwards must be a core.forwards.Forwards, got {type(forwards).__name__}")
    T = _num_col(q, "T")
    F = np.full(len(q), np.nan)
    D = np.full(len(q), np.nan)
    good = np.isfinite(T) & (T > 0)
    if good.any():
        with np.errstate(all="ignore"):
            F[good] = np.asarray(forwards.F(T[good]), dtype=float)
            D[good] = np.asarray(forwards.D(T[good]), dtype=float)
    return F, D


def check_bounds(quotes: pd.DataFrame, forwards: Any) -> pd.DataFrame:
    """Mark rows still ``"ok"`` whose mid breaks a no-arbitrage bound on the forward.

    Parameters: ``quotes`` the output of ``clean_quotes``; ``forwards`` a ``Forwards``.
    ``below_intrinsic``: ``mid <= D max(cp (F - K), 0)`` (no time value left; implied vol undefined).
    ``above_upper_bound``: call ``mid >= D F``, put ``mid >= D K`` (Black-76 bounds, MATH.md).
    Returns a copy with ``reason`` updated (other rows untouched).
    """
    q = _frame(quotes)
    if "reason" not in q.columns or "mid" not in q.columns:
        raise InputError("check_bounds needs the output of clean_quotes (columns 'mid' and 'reason')")
    F, D = _row_forwards(q, forwards)
    K = _num_col(q, "strike")
    cp = _num_col(q, "cp")
    mid = _num_col(q, "mid")
    reason = q["reason"].astype(str).to_numpy(dtype=object)
    ok = (reason == "ok") & np.isfinite(F) & np.isfinite(D)
    with np.errstate(invalid="ignore", over="ignore"):
        intrinsic = D * np.maximum(cp * (F - K), 0.0)
        upper = np.where(cp > 0, D * F, D * K)
        # a relative hair of tolerance so a quote exactly at a bound is judged, not rounding
        tol = 1e-12 * D * np.maximum(F, K)
        below = ok & (mid <= intrinsic + tol)
        above = ok & ~below & (mid >= upper - tol)
    reason[below] = "below_intrinsic"
    reason[above] = "above_upper_bound"
    q["reason"] = pd.Series(reason, index=q.index, dtype=object).astype(str)
    return q


def select_for_fit(quotes: pd.DataFrame, forwards: Any, exercise: str = "european",
                   config: CleaningConfig | None = None) -> pd.DataFrame:
    """Choose the quotes that feed the surface fit: adds ``use`` (bool) and ``use_rule`` (text).

    Parameters: ``quotes`` after ``clean_quotes`` (and usually ``check_bounds``); ``forwards`` a
    ``Forwards``; ``exercise`` 'european' or 'american'; ``config`` for ``near_money`` and
    ``otm_only`` (``core.pipeline.prepare`` passes 'european' for an American chain's European equivalents).
    Rule: a usable (``reason == "ok"``) quote is used when out of the money (call
    with ``K >= F``, put with ``K < F``); European chains also use the in-the-money side within
    ``|ln(K/F)| <= near_money`` (both sides near the money) unless ``otm_only``; expiries within
    ``surface_min_days`` of the market time are not used. American chains:
    out of the money only (the early-exercise premium lives in the in-the-money side).
    Returns a copy with the two columns added.
    """
    cfg = config if config is not None else CleaningConfig()
    if exercise not in ("european", "american"):
        raise InputError(f"exercise must be 'european' or 'american', got {exercise!r}")
    q = _frame(quotes)
    if "reason" not in q.columns:
        q = clean_quotes(q, cfg)
    F, _ = _row_forwards(q, forwards)
    K = _num_col(q, "strike")
    cp = _num_col(q, "cp")
    reason = q["reason"].astype(str).to_numpy(dtype=object)
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.log(K / F)
    finite = np.isfinite(y)
    otm = finite & (((cp > 0) & (K >= F)) | ((cp < 0) & (K < F)))
    both_sides = exercise == "european" and not cfg.otm_only
    near = finite & (np.abs(y) <= cfg.near_money) & both_sides
    ok = reason == "ok"
    short = _num_col(q, "T") < cfg.surface_min_days / 365.0
    use = ok & (otm | near) & ~short
    side = np.where(cp > 0, "call", "put")
    itm = ("not used: in-the-money side of an American chain (early exercise premium)" if exercise == "american"
           else "not used: in-the-money side (the out-of-the-money quote carries the information)")
    rule = np.select(
        [~ok, ~finite, short, otm, near],
        [np.char.add("not used: ", reason.astype(str)), "not used: no forward for this expiry",
         f"not used: expires within {cfg.surface_min_days:g} days (the surface starts after the 0-3 day expiries)",
         np.char.add("out-of-the-money ", side),
         np.char.add(np.char.add("in-the-money ", side),
                     f" near the money (|y| <= {cfg.near_money:g}, both sides used)")],
        default=itm).astype(object)
    q["use"] = use
    q["use_rule"] = pd.Series(rule, index=q.index, dtype=object).astype(str)
    return q


def use_mask(quotes: pd.DataFrame) -> np.ndarray:
    """The quotes that feed the fit, as a bool array ``(n,)``: the ``use`` column of ``select_for_fit``;
    every row when the table has no ``use`` column (a hand-built table of quotes to reprice)."""
    if "use" not in quotes.columns:
        return np.ones(len(quotes), dtype=bool)
    return quotes["use"].fillna(False).to_numpy(dtype=bool)


def used(quotes: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``quotes`` that feed the fit (``use_mask``)."""
    return quotes[use_mask(quotes)]


def reason_counts(quotes: pd.DataFrame) -> dict[str, int]:
    """Number of quotes per reason code: every code of ``REASONS`` (zeros included), in that order,
    then any unknown codes found. The counts add up to the number of rows."""
    q = getattr(quotes, "quotes", quotes)
    if not isinstance(q, pd.DataFrame) or "reason" not in q.columns:
        raise InputError("reason_counts needs a cleaned quote table (a 'reason' column from clean_quotes)")
    vc = q["reason"].astype(str).value_counts()
    out = {code: int(vc.get(code, 0)) for code in REASONS}
    for code, c in vc.items():
        if code not in out:
            out[str(code)] = int(c)
    return out
