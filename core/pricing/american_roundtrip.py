"""The American round trip: price every used American quote under the calibrated local vol, early exercise
included, and count how many come back inside their own American bid/ask.

The surface of an American chain is fitted to European-equivalent vols (``core.american``). Whether that
surface explains the quotes actually traded is checked on the American prices themselves: each expiry's
strikes are priced in one backward PDE solve under ``lv(S, t)`` with the carry of the forwards (``r`` from
``D``, ``r - q`` from ``F``) and early exercise by projection (``core.pricing.backward.price_pde_strikes``).

Control variate (default): the early-exercise premium is taken from the backward grid, the European part
from the forward Dupire sweep (``core.pricing.pde.forward_dupire``, Richardson-extrapolated):
``V_am = V_eu^forward + (V_am^backward - V_eu^backward)``, both backward solves on the same grid so that
their discretisation errors cancel in the difference. On SPY's penny spreads the plain backward price
needs a 1601 x 800 grid to come back inside as often as the controlled one does on 401 x 200.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.cleaning import use_mask
from core.errors import InputError
from core.pricing.backward import price_pde_strikes
from core.pricing.pde import forward_dupire

#: the value of the ``model`` column of a repricing table for each round trip
MODEL_FORWARD = "forward-dupire"
MODEL_AMERICAN = "american-backward-pde"


@dataclass(frozen=True)
class AmericanRepricingResult:
    """American round trip per quote and in summary.

    ``table``: the quotes with ``price_model`` (American price under local vol), ``premium_model`` (its
    early-exercise premium; NaN without the control variate), ``error`` (model minus
    American mid, price units), ``error_half_spreads`` (that over half the American spread), ``inside``
    (model within ``[bid_american, ask_american]``), ``model`` = ``MODEL_AMERICAN``. ``by_expiry``: per
    expiry ``n, inside_bid_ask, mean_abs_half_spreads``. ``inside_bid_ask`` (fraction over the priced rows),
    ``n`` priced, ``n_failed`` without a price, ``seconds``.
    """

    table: pd.DataFrame
    by_expiry: pd.DataFrame
    inside_bid_ask: float
    n: int
    n_failed: int
    seconds: float

    def summary(self) -> dict:
        """JSON-able summary (``model``, ``inside_bid_ask``, ``n``, ``n_failed``, ``seconds``)."""
        return {"model": MODEL_AMERICAN, "inside_bid_ask": self.inside_bid_ask, "n": self.n,
                "n_failed": self.n_failed, "seconds": self.seconds}


def local_vol_premium(quotes: pd.DataFrame, lv, forwards, *, n_x: int = 401, n_t: int = 200) -> np.ndarray:
    """Early-exercise premium of each quote under local vol: backward American minus backward European price,
    both on the same grid (one pair of solves per expiry), shape (n,), NaN where a row has no valid contract.

    ``quotes`` with ``T``, ``strike``, ``cp``; ``lv(K, T)``; ``forwards`` with a spot (carry: ``r`` from
    ``D``, ``r - q`` from ``F``).
    """
    if getattr(forwards, "spot", None) is None:
        raise InputError("the American premium needs forwards with a spot (the American chain's underlying price)")
    T = quotes["T"].to_numpy(float)
    K = quotes["strike"].to_numpy(float)
    cp = np.sign(quotes["cp"].to_numpy(float))
    valid = np.isfinite(T) & (T > 0) & np.isfinite(K) & (K > 0) & (np.abs(cp) == 1)
    premium = np.full(len(quotes), np.nan)
    for Tj in np.unique(T[valid]):
        m = valid & (T == Tj)
        kw = {"n_x": n_x, "n_t": n_t, "spot": forwards.spot}
        am = price_pde_strikes(lv, forwards, K[m], float(Tj), cp[m], american=True, **kw)[0]
        eu = price_pde_strikes(lv, forwards, K[m], float(Tj), cp[m], american=False, **kw)[0]
        premium[m] = am - eu
    return premium


def american_reprice(quotes: pd.DataFrame, lv, forwards, *, n_x: int = 401, n_t: int = 200,
                     control_variate: bool = True, european=None) -> AmericanRepricingResult:
    """Reprice American quotes under local vol by the backward PDE with early exercise, one solve per expiry.

    Parameters: ``quotes`` with ``T`` (years), ``strike``, ``cp`` (+1/-1), ``bid_american``,
    ``ask_american`` (the American quotes, ``core.american.deamericanise``), optional ``expiry``, ``use``
    (rows without ``use`` are priced but not counted); ``lv(K, T)`` the local vol; ``forwards`` a
    ``core.forwards.Forwards`` with a spot; ``n_x``, ``n_t`` the backward PDE grid; ``control_variate``:
    the European part from the forward sweep (module docstring), else the plain backward American price;
    ``european``: the forward sweep's European prices of these rows when already computed (the forward round
    trip's ``price_model``: the same sweep is then not run twice).
    """
    t0 = time.perf_counter()
    need = [c for c in ("T", "strike", "cp", "bid_american", "ask_american") if c not in quotes.columns]
    if need:
        raise InputError(f"american_reprice: quotes lack columns {need} (run core.american.deamericanise first)")
    if getattr(forwards, "spot", None) is None:
        raise InputError("american_reprice needs forwards with a spot (the American chain's underlying price)")
    q = quotes.copy()
    T = q["T"].to_numpy(float)
    K = q["strike"].to_numpy(float)
    cp = np.sign(q["cp"].to_numpy(float))
    bid = q["bid_american"].to_numpy(float)
    ask = q["ask_american"].to_numpy(float)
    valid = np.isfinite(T) & (T > 0) & np.isfinite(K) & (K > 0) & (np.abs(cp) == 1)
    price = np.full(len(q), np.nan)
    premium = np.full(len(q), np.nan)
    if control_variate:
        premium = local_vol_premium(q, lv, forwards, n_x=n_x, n_t=n_t)
        if european is not None:
            price[valid] = np.asarray(european, float)[valid] + premium[valid]
        elif valid.any():
            sweep = forward_dupire(lv, forwards, T[valid], K[valid])
            price[valid] = sweep.price(K[valid], T[valid], cp[valid]) + premium[valid]
    else:
        for Tj in np.unique(T[valid]):
            m = valid & (T == Tj)
            price[m] = price_pde_strikes(lv, forwards, K[m], float(Tj), cp[m], american=True, n_x=n_x, n_t=n_t,
                                         spot=forwards.spot)[0]
    q["premium_model"] = premium
    mid = 0.5 * (bid + ask)
    with np.errstate(invalid="ignore", divide="ignore"):
        q["price_model"] = price
        q["error"] = price - mid
        q["error_half_spreads"] = (price - mid) / (0.5 * (ask - bid))
        q["inside"] = np.isfinite(price) & (price >= bid - 1e-9) & (price <= ask + 1e-9)
    q["model"] = MODEL_AMERICAN
    use = use_mask(q)
    ok = use & np.isfinite(price)
    key = "expiry" if "expiry" in q.columns else "T"
    rows = []
    for e, g in q[ok].groupby(key, sort=True):
        rows.append({key: e, "T": float(g["T"].iloc[0]), "n": len(g), "inside_bid_ask": float(g["inside"].mean()),
                     "mean_abs_half_spreads": float(np.nanmean(np.abs(g["error_half_spreads"].to_numpy(float))))})
    cols = ([key] if key != "T" else []) + ["T", "n", "inside_bid_ask", "mean_abs_half_spreads"]
    return AmericanRepricingResult(
        table=q, by_expiry=pd.DataFrame(rows, columns=cols),
        inside_bid_ask=float(q["inside"].to_numpy(bool)[ok].mean()) if ok.any() else float("nan"),
        n=int(ok.sum()), n_failed=int(np.count_nonzero(use & ~ok)), seconds=time.perf_counter() - t0)
