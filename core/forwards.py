"""Forwards and discount factors per expiry, and their interpolation in ``T``.

``Forwards`` holds one row per expiry (``F_T``, ``D_T`` and how they were obtained) and
interpolates ``ln F`` and ``ln D`` linearly in ``T`` (piecewise-constant carry and rate), anchored at
``ln S`` and ``0`` at ``T = 0`` when the spot is known; flat carry beyond the last expiry.
Estimation from put-call parity: ``implied_forwards`` (MATH.md, "Forward and discount").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.errors import InputError

FORWARD_COLUMNS = ("expiry", "T", "F", "D", "n_pairs", "residual", "fallback", "approximate")


@dataclass(frozen=True)
class Forwards:
    """Forward ``F_T`` and discount ``D_T`` per expiry, with diagnostics; ``F(T)``, ``D(T)`` for any ``T``.

    ``table`` columns: ``expiry`` (date), ``T`` (years), ``F``, ``D``, ``n_pairs`` (parity pairs used),
    ``residual`` (robust fit residual, price units), ``fallback`` ('' when from parity, else how it was
    obtained: 'interpolated', 'rates', 'model'), ``approximate`` (True for American chains).
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
