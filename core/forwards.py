"""Forwards and discount factors per expiry, and their interpolation in ``T``.

``Forwards`` holds one row per expiry (``F_T``, ``D_T`` and how they were obtained) and
interpolates ``ln F`` and ``ln D`` linearly in ``T`` (piecewise-constant carry and rate), anchored at
``ln S`` and ``0`` at ``T = 0`` when the spot is known; flat carry beyond the last expiry.
Estimation from put-call parity: ``implied_forwards`` (MATH.md, "Forward and discount").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from core.errors import InputError

FORWARD_COLUMNS = ("expiry", "T", "F", "D", "n_pairs", "residual", "fallback", "approximate")

#: values of the ``fallback`` column: how an expiry's ``F`` and ``D`` were obtained.
FALLBACKS: dict[str, str] = {
    "": "F and D from the robust put-call parity regression of this expiry",
    "interpolated discount": "too few call/put pairs (or a nonsensical slope) for a regression: D interpolated "
                             "from the other expiries' discount factors, F from parity with that D",
    "interpolated": "no usable call/put pair: F and D interpolated in T from the other expiries "
                    "(log-linear, i.e. piecewise-constant carry, anchored at the spot when known)",
    "discount from r": "D = exp(-r T) from the user's rate r, F from put-call parity with that D",
    "forward from q": "F = S exp(-q T) / D from the spot and the user's dividend yield q, D from parity",
    "rates": "F = S exp((r - q) T), D = exp(-r T) from the spot and the user's r and q",
    "rates, q = 0": "no usable pair anywhere: F = S exp(r T), D = exp(-r T) from the user's r (q = 0 assumed)",
    "discount assumed 1": "no expiry gave a discount factor and no r was given: D = 1 assumed, F from parity",
    "spot, zero carry": "nothing to estimate from: F = spot, D = 1 (r = q = 0 assumed)",
    "model": "F and D from a known model (the demo market's true forwards)",
}


@dataclass(frozen=True)
class Forwards:
    """Forward ``F_T`` and discount ``D_T`` per expiry, with diagnostics; ``F(T)``, ``D(T)`` for any ``T``.

    ``table`` columns: ``expiry`` (date), ``T`` (years), ``F``, ``D``, ``n_pairs`` (parity pairs used),
    ``residual`` (robust fit residual, price units), ``fallback`` ('' when from parity, else how it was
    obtained: a key of ``FALLBACKS``), ``approximate`` (True for American chains); ``implied_forwards`` adds
    ``expiry_time`` (settlement time, UTC).
    ``spot``: the underlying price when known.
    """

    table: pd.DataFrame
    spot: float | None = None

    def __post_init__(self) -> None:
        missing = [c for c in ("T", "F", "D") if c not in self.table.columns]
        if missing:
            raise InputError(f"Forwards table lacks columns {missing}")
        t = self.table
        if len(t) == 0 and self.spot is None:
            raise InputError("Forwards need at least one expiry or a spot")
        bad = ~(np.isfinite(t["F"]) & (t["F"] > 0) & np.isfinite(t["D"]) & (t["D"] > 0) & (t["T"] > 0))
        if bad.any():
            raise InputError(f"Forwards table has non-positive or non-finite F, D or T in rows {list(t.index[bad])[:5]}")

    @classmethod
    def from_rates(cls, spot: float, r: float, q: float, T, expiries=None) -> "Forwards":
        """Forwards from constant continuously-compounded ``r`` and ``q``: ``F = S e^{(r-q)T}``, ``D = e^{-rT}``."""
        T = np.atleast_1d(np.asarray(T, dtype=float))
        if not (np.isfinite(spot) and spot > 0):
            raise InputError(f"spot must be positive, got {spot!r}")
        table = pd.DataFrame({
            "expiry": list(expiries) if expiries is not None else [pd.NaT] * len(T),
            "T": T, "F": spot * np.exp((r - q) * T), "D": np.exp(-r * T),
            "n_pairs": 0, "residual": np.nan, "fallback": "rates", "approximate": False,
        })
        return cls(table=table, spot=float(spot))

    def _nodes(self, col: str):
        t = self.table.sort_values("T")
        T = t["T"].to_numpy(float)
        v = np.log(t[col].to_numpy(float))
        if col == "F" and self.spot is not None:
            T, v = np.r_[0.0, T], np.r_[np.log(self.spot), v]
        elif col == "D":
            T, v = np.r_[0.0, T], np.r_[0.0, v]
        return T, v

    def _interp(self, col: str, T):
        Tn, v = self._nodes(col)
        T = np.asarray(T, dtype=float)
        if len(Tn) == 1:
            return np.exp(np.full(T.shape, v[0]))
        out = np.interp(T, Tn, v)
        # flat carry (constant log-slope) beyond the ends
        lo_slope = (v[1] - v[0]) / (Tn[1] - Tn[0])
        hi_slope = (v[-1] - v[-2]) / (Tn[-1] - Tn[-2])
        out = np.where(T < Tn[0], v[0] + lo_slope * (T - Tn[0]), out)
        out = np.where(T > Tn[-1], v[-1] + hi_slope * (T - Tn[-1]), out)
        return np.exp(out)

    def F(self, T):
        """Forward at ``T`` (years), interpolated linearly in ``ln F``; broadcasts."""
        return self._interp("F", T)

    def D(self, T):
        """Discount factor at ``T`` (years), interpolated linearly in ``ln D``; broadcasts."""
        return self._interp("D", T)

    def rates(self, T):
        """Average continuously-compounded ``(r, q)`` to ``T`` implied by ``D`` and ``F`` (needs a spot)."""
        T = np.asarray(T, dtype=float)
        r = -np.log(self.D(T)) / T
        S = self.spot if self.spot is not None else float(self.table.sort_values("T")["F"].iloc[0])
        q = r - np.log(self.F(T) / S) / T
        return r, q


# --------------------------------------------------------------------------------------------
# Put-call parity: C(K) - P(K) = D (F - K)  (MATH.md, "Forward and discount from put-call parity")
# --------------------------------------------------------------------------------------------

_HUBER_C = 1.345  # 95% efficiency at the normal (Huber 1964)


def _wmedian(x: np.ndarray, w: np.ndarray) -> float:
    """Weighted median (the smallest x whose cumulative weight reaches half)."""
    o = np.argsort(x)
    cw = np.cumsum(w[o])
    return float(x[o][np.searchsorted(cw, 0.5 * cw[-1])])


def _theil_sen(x: np.ndarray, z: np.ndarray) -> tuple[float, float]:
    """Theil-Sen line ``z = a + b x``: median of pairwise slopes, median intercept (Sen 1968)."""
    if len(x) > 300:  # O(n^2) pairs: an even subsample is as good a start and keeps memory small
        keep = np.linspace(0, len(x) - 1, 300).round().astype(int)
        x, z = x[keep], z[keep]
    i, j = np.triu_indices(len(x), k=1)
    dx = x[j] - x[i]
    keep = dx != 0
    b = float(np.median((z[j] - z[i])[keep] / dx[keep])) if keep.any() else 0.0
    return float(np.median(z - b * x)), b


def _huber_line(x: np.ndarray, z: np.ndarray, s: np.ndarray, iters: int = 50) -> tuple[float, float, np.ndarray]:
    """Robust weighted line ``z = a + b x`` by Huber IRLS started at Theil-Sen.

    ``s`` is each point's price uncertainty (half the summed bid/ask spreads); weights are
    ``1/s^2`` times Huber's ``min(1, c/|u|)`` on residuals ``u`` scaled by their MAD, so a stale
    or mistyped pair cannot pull the line the way it pulls OLS. Returns ``(a, b, residuals)``.
    """
    a, b = _theil_sen(x, z)
    w0 = 1.0 / s**2
    for _ in range(iters):
        r = (z - a - b * x) / s
        scale = 1.4826 * float(np.median(np.abs(r)))
        if not np.isfinite(scale) or scale <= 1e-12:
            hw = np.ones_like(r)
        else:
            u = np.abs(r) / scale
            hw = np.where(u <= _HUBER_C, 1.0, _HUBER_C / np.maximum(u, 1e-300))
        W = w0 * hw
        sw, swx, swxx = W.sum(), (W * x).sum(), (W * x * x).sum()
        swz, swxz = (W * z).sum(), (W * x * z).sum()
        det = sw * swxx - swx * swx
        if not np.isfinite(det) or det <= 1e-300 * max(sw * swxx, 1e-300):
            break
        a_new = (swxx * swz - swx * swxz) / det
        b_new = (sw * swxz - swx * swz) / det
        done = abs(a_new - a) <= 1e-12 * (1 + abs(a)) and abs(b_new - b) <= 1e-12 * (1 + abs(b))
        a, b = float(a_new), float(b_new)
        if done:
            break
    return a, b, z - a - b * x


def _first_guess(K: np.ndarray, z: np.ndarray, D: float = 1.0) -> float:
    """Forward guess from the pairs nearest the money (smallest |C - P|): median of ``K + (C-P)/D``."""
    o = np.argsort(np.abs(z))[:3]
    return float(np.median(K[o] + z[o] / D))


def _near(K: np.ndarray, F0: float, T: float, cfg: Any, at_least: int) -> np.ndarray:
    """Indices of the pairs within ``max(0.02, parity_width sqrt(T))`` in ``|ln(K/F0)|``, or the
    ``at_least`` nearest when the band holds fewer."""
    dist = np.abs(np.log(K / F0))
    band = max(0.02, cfg.parity_width * np.sqrt(max(T, 0.0)))
    idx = np.flatnonzero(dist <= band)
    if len(idx) < at_least:
        idx = np.argsort(dist)[:at_least]
    return np.sort(idx)


def _parity_regression(K, z, s, T, cfg):
    """Full parity fit of one expiry: ``(F, D, n_pairs, residual)`` or None when too few pairs or nonsense.

    Slope of ``C - P`` on ``K`` is ``-D``, intercept ``D F``; strikes centred on the first guess
    ``F0`` so that the intercept is ``D (F - F0)`` (well conditioned). Sanity: ``0 < D <= 1.5``,
    ``|ln D| <= max_abs_rate T + 0.001``, ``F`` finite, positive and within the strikes used x [1/2, 2].
    """
    if len(K) < cfg.parity_min_pairs:
        return None
    F0 = _first_guess(K, z)
    if not (np.isfinite(F0) and F0 > 0):
        F0 = float(np.median(K))
    F = F0
    for _ in range(2):  # select around the guess, fit, reselect around the fitted forward, refit
        idx = _near(K, F, T, cfg, cfg.parity_min_pairs)
        x = K[idx] - F
        a, b, res = _huber_line(x, z[idx], s[idx])
        D = -b
        if not (np.isfinite(D) and D > 0):
            return None
        F_new = F + a / D
        if not (np.isfinite(F_new) and F_new > 0):
            return None
        F = F_new
    used = K[idx]
    if not (0.0 < D <= 1.5 and abs(np.log(D)) <= cfg.max_abs_rate * T + 1e-3
            and 0.5 * used.min() <= F <= 2.0 * used.max()):
        return None
    return F, D, len(idx), 1.4826 * float(np.median(np.abs(res)))


def _parity_forward(K, z, s, T, D, cfg):
    """Forward with the discount fixed: weighted median of ``K + (C - P)/D`` over the near pairs.

    Returns ``(F, n_pairs, residual)`` or None when nothing sensible comes out.
    """
    if len(K) == 0:
        return None
    F0 = _first_guess(K, z, D)
    if not (np.isfinite(F0) and F0 > 0):
        return None
    idx = _near(K, F0, T, cfg, min(len(K), cfg.parity_min_pairs))
    est = K[idx] + z[idx] / D
    F = _wmedian(est, 1.0 / s[idx])
    if not (np.isfinite(F) and F > 0 and 0.5 * K[idx].min() <= F <= 2.0 * K[idx].max()):
        return None
    return F, len(idx), 1.4826 * float(np.median(np.abs(D * (est - F))))


def _pairs_by_expiry(q: pd.DataFrame):
    """Per expiry group: ``(key, expiry, T, K, C - P, s)`` over strikes with both sides usable."""
    keys = ["expiry", "expiry_time"] if "expiry_time" in q.columns else ["expiry"]
    T_all = pd.to_numeric(q["T"], errors="coerce")
    ok = q["reason"].astype(str).eq("ok").to_numpy()
    mid = pd.to_numeric(q["mid"], errors="coerce")
    spread = pd.to_numeric(q["spread"], errors="coerce")
    out = []
    for key, g in q.groupby(keys, sort=True, dropna=True):
        T = float(np.nanmedian(T_all.loc[g.index])) if T_all.loc[g.index].notna().any() else np.nan
        if not (np.isfinite(T) and T > 0):
            continue
        gi = g.index[ok[g.index]]
        cp = pd.to_numeric(g.loc[gi, "cp"], errors="coerce")
        K = pd.to_numeric(g.loc[gi, "strike"], errors="coerce")
        calls = pd.DataFrame({"K": K[cp == 1], "m": mid.loc[gi][cp == 1], "s": spread.loc[gi][cp == 1]})
        puts = pd.DataFrame({"K": K[cp == -1], "m": mid.loc[gi][cp == -1], "s": spread.loc[gi][cp == -1]})
        calls = calls.drop_duplicates("K")
        puts = puts.drop_duplicates("K")
        pr = calls.merge(puts, on="K", suffixes=("_c", "_p")).sort_values("K")
        Kv = pr["K"].to_numpy(float)
        zv = (pr["m_c"] - pr["m_p"]).to_numpy(float)
        sv = 0.5 * (pr["s_c"] + pr["s_p"]).to_numpy(float)
        good = np.isfinite(Kv) & (Kv > 0) & np.isfinite(zv) & np.isfinite(sv)
        Kv, zv, sv = Kv[good], zv[good], sv[good]
        if len(sv):
            # a locked or sub-tick pair must not get an infinite weight
            sv = np.maximum(sv, max(1e-3 * float(np.median(sv)), 1e-8 * float(np.median(Kv))))
        expiry = key[0] if isinstance(key, tuple) else key
        out.append({"key": key, "expiry": expiry, "T": T, "K": Kv, "z": zv, "s": sv,
                    "expiry_time": key[1] if isinstance(key, tuple) and len(key) > 1 else pd.NaT})
    return out


def _as_float(name: str, v: Any, positive: bool = False) -> float | None:
    if v is None:
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {v!r}") from None
    if not np.isfinite(x) or (positive and x <= 0):
        raise InputError(f"{name} must be a finite{' positive' if positive else ''} number, got {v!r}")
    return x


def implied_forwards(quotes: Any, *, spot: float | None = None, r: float | None = None,
                     q: float | None = None, exercise: str | None = None, config: Any = None) -> Forwards:
    """Forward ``F_T`` and discount ``D_T`` per expiry from put-call parity, with explicit fallbacks.

    Parameters
    ----------
    quotes : DataFrame or QuoteChain
        Quote table (``core.quotes`` schema). If it has no ``reason`` column it is cleaned first
        with ``config``; only rows with ``reason == "ok"`` make pairs. A ``QuoteChain`` also
        supplies the default ``spot`` and ``exercise``.
    spot : float, optional
        Underlying price; anchors the interpolation at ``T = 0`` and is needed for ``q``.
    r, q : float, optional
        User overrides, continuously compounded per year. ``r`` fixes ``D = exp(-r T)`` (``F`` still
        from parity); ``r`` and ``q`` with a spot give ``F = S exp((r - q) T)``; ``q`` alone with a
        spot gives ``F = S exp(-q T) / D`` with ``D`` from parity.
    exercise : 'european' or 'american'
        American chains: ``C - P`` carries the early-exercise premium, so every row is flagged
        ``approximate``.
    config : CleaningConfig, optional
        ``parity_width``, ``parity_min_pairs``, ``max_abs_rate`` (and the cleaning settings).

    Method (MATH.md): per expiry, ``C_mid - P_mid = D F - D K`` over strikes with both sides usable
    and near the money (``|ln(K/F0)| <= max(0.02, parity_width sqrt(T))``, ``F0`` from the pairs
    with the smallest ``|C - P|``); Huber IRLS started at Theil-Sen, weights ``1/spread^2``; the
    band is re-centred on the first fit and refitted once. ``residual`` is ``1.4826 MAD`` of the
    fit residuals (price units). Expiries with fewer than ``parity_min_pairs`` pairs, or whose fit is
    nonsense, fall back as recorded in ``fallback`` (see ``FALLBACKS``).

    Returns a ``Forwards`` with one row per expiry (expiry, expiry time) with ``T > 0``.
    Raises ``InputError`` for bad arguments, or when no expiry gives a forward and there is no spot.
    """
    from core.cleaning import CleaningConfig, clean_quotes  # cleaning imports this module's users

    cfg = config if config is not None else CleaningConfig()
    if not isinstance(cfg, CleaningConfig):
        raise InputError(f"config must be a CleaningConfig, got {type(cfg).__name__}")
    if spot is None and getattr(quotes, "spot", None) is not None and hasattr(quotes, "quotes"):
        spot = quotes.spot
    if exercise is None:
        exercise = getattr(quotes, "exercise", "european") if hasattr(quotes, "quotes") else "european"
    if exercise not in ("european", "american"):
        raise InputError(f"exercise must be 'european' or 'american', got {exercise!r}")
    S = _as_float("spot", spot, positive=True)
    r_ = _as_float("r", r)
    q_ = _as_float("q", q)
    if q_ is not None and S is None:
        raise InputError("a dividend yield q needs the spot: pass spot= (or leave q out and let parity give the forward)")

    table = getattr(quotes, "quotes", quotes)
    if not isinstance(table, pd.DataFrame):
        raise InputError(f"quotes must be a quote DataFrame or a QuoteChain, got {type(quotes).__name__}")
    if not {"reason", "mid", "spread"} <= set(table.columns):
        table = clean_quotes(table, cfg)
    else:
        for c in ("expiry", "strike", "cp", "T"):
            if c not in table.columns:
                raise InputError(f"quotes lack the column {c!r}; build them with core.quotes.make_quotes")
        table = table.reset_index(drop=True)

    groups = _pairs_by_expiry(table)
    if not groups:
        raise InputError("no expiry with a positive time to expiry in the quotes: nothing to compute forwards for")
    rows = []
    for g in groups:
        row = {"expiry": g["expiry"], "expiry_time": g["expiry_time"], "T": g["T"], "F": np.nan, "D": np.nan,
               "n_pairs": 0, "residual": np.nan, "fallback": None}
        if r_ is None:
            fit = _parity_regression(g["K"], g["z"], g["s"], g["T"], cfg)
            if fit is not None:
                row.update(F=fit[0], D=fit[1], n_pairs=fit[2], residual=fit[3], fallback="")
        rows.append(row)

    def _interp(col: str, T: float, have: list[dict], anchor: float | None) -> float | None:
        pts = [(h["T"], h[col]) for h in have if np.isfinite(h[col])]
        if not pts:
            return None
        t = pd.DataFrame({"T": [p[0] for p in pts], "F": [p[1] if col == "F" else 1.0 for p in pts],
                          "D": [p[1] if col == "D" else 1.0 for p in pts]}).drop_duplicates("T")
        fw = Forwards(table=t, spot=anchor)
        return float(fw.F(T)) if col == "F" else float(fw.D(T))

    fitted = [w for w in rows if w["fallback"] == ""]
    # discount factors for expiries without a full fit
    for w, g in zip(rows, groups, strict=True):
        if w["fallback"] == "":
            continue
        if r_ is not None:
            w["D"], how = float(np.exp(-r_ * g["T"])), "discount from r"
        else:
            D_i = _interp("D", g["T"], fitted, None)
            w["D"], how = (D_i, "interpolated discount") if D_i is not None else (1.0, "discount assumed 1")
        pf = _parity_forward(g["K"], g["z"], g["s"], g["T"], w["D"], cfg)
        if pf is not None:
            w.update(F=pf[0], n_pairs=pf[1], residual=pf[2], fallback=how)
    # user's dividend yield with the spot: F from carry, D as estimated
    if q_ is not None:
        for w, g in zip(rows, groups, strict=True):
            if not np.isfinite(w["D"]):
                D_i = _interp("D", g["T"], [v for v in rows if np.isfinite(v["D"])], None)
                w["D"] = float(np.exp(-r_ * g["T"])) if r_ is not None else (D_i if D_i is not None else 1.0)
            if r_ is not None:
                w.update(F=S * np.exp((r_ - q_) * g["T"]), D=float(np.exp(-r_ * g["T"])), fallback="rates")
            else:
                w.update(F=S * np.exp(-q_ * g["T"]) / w["D"], fallback="forward from q")
    # expiries with no usable pair: interpolate in T over those that have a forward
    have = [w for w in rows if w["fallback"] is not None]
    for w, g in zip(rows, groups, strict=True):
        if w["fallback"] is not None:
            continue
        F_i = _interp("F", g["T"], have, S)
        if F_i is not None:
            if not np.isfinite(w["D"]):
                D_i = _interp("D", g["T"], have, None)
                w["D"] = D_i if D_i is not None else 1.0
            w.update(F=F_i, fallback="interpolated")
        elif S is not None:
            D = float(np.exp(-r_ * g["T"])) if r_ is not None else 1.0
            w.update(F=S / D, D=D, fallback="rates, q = 0" if r_ is not None else "spot, zero carry")
        else:
            raise InputError("no expiry has a usable call/put pair at the same strike and no spot was given: "
                             "pass spot= (and r=, q=) or quotes with two-sided calls and puts")
    # user-fixed forwards: report how far market parity is from them (same pair selection)
    for w, g in zip(rows, groups, strict=True):
        if w["fallback"] in ("rates", "forward from q", "rates, q = 0"):
            if len(g["K"]):
                idx = _near(g["K"], w["F"], g["T"], cfg, min(len(g["K"]), cfg.parity_min_pairs))
                res = g["z"][idx] - w["D"] * (w["F"] - g["K"][idx])
                w.update(n_pairs=len(idx), residual=1.4826 * float(np.median(np.abs(res))))
            else:
                w.update(n_pairs=0, residual=np.nan)
    out = pd.DataFrame(rows)
    out["approximate"] = exercise == "american"
    out["n_pairs"] = out["n_pairs"].astype(int)
    out["fallback"] = out["fallback"].astype(str)
    bad = ~(np.isfinite(out["F"]) & (out["F"] > 0) & np.isfinite(out["D"]) & (out["D"] > 0))
    if bad.any():  # should not happen: every branch above yields positive numbers
        raise InputError(f"forwards could not be determined for expiries {list(out.loc[bad, 'expiry'])[:5]}")
    out = out.sort_values("T", ignore_index=True)
    cols = list(FORWARD_COLUMNS) + [c for c in out.columns if c not in FORWARD_COLUMNS]
    return Forwards(table=out[cols], spot=S)
