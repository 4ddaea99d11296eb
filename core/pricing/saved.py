"""Price under a saved calibration: the folder ``python -m core calibrate --out DIR`` wrote.

Reads ``local_vol.csv`` (the clipped local-vol grid), ``forwards.csv`` and ``summary.json`` and prices
a vanilla or an exotic by Monte Carlo under that grid (bilinear, flat beyond the grid's edges) and
under Black-Scholes with the model's ATM implied vol, side by side.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import InputError
from core.forwards import Forwards
from core.localvol import GridLocalVol
from core.pricing.exotics import price_asian, price_barrier
from core.pricing.mc import mc_european


def load_calibration(folder) -> tuple:
    """``(lv, forwards, summary)`` from a calibration folder; ``InputError`` naming a missing or bad file."""
    d = Path(folder)
    need = ("local_vol.csv", "forwards.csv", "summary.json")
    missing = [n for n in need if not (d / n).is_file()]
    if missing:
        raise InputError(f"{d} is not a calibration folder (missing {missing}); run "
                         f"`python -m core calibrate SOURCE --out {d}` first")
    try:
        grid = pd.read_csv(d / "local_vol.csv")
        fw = pd.read_csv(d / "forwards.csv")
        summary = json.loads((d / "summary.json").read_text())
    except (ValueError, OSError) as exc:
        raise InputError(f"calibration folder {d} has an unreadable file: {exc}") from None
    for col in ("T", "strike", "local_vol"):
        if col not in grid.columns:
            raise InputError(f"{d / 'local_vol.csv'} lacks the column {col!r}")
    table = grid.pivot_table(index="T", columns="strike", values="local_vol")
    if table.isna().any().any():
        raise InputError(f"{d / 'local_vol.csv'} has holes in its grid; re-run calibrate")
    lv = GridLocalVol(table.columns.to_numpy(float), table.index.to_numpy(float), table.to_numpy(float))
    fw = fw.rename(columns={"forward": "F", "discount": "D"})
    forwards = Forwards(table=fw, spot=summary.get("spot"))
    return lv, forwards, summary


def price_from_calibration(folder, *, kind: str, strike: float, expiry: float, cp: str = "call",
                           barrier: float | None = None, barrier_type: str = "up-and-out",
                           monitoring: str = "continuous", fixings: int = 12, n_paths: int = 100_000,
                           n_steps: int = 252, seed: int = 1) -> dict:
    """Price ``kind`` in {call, put, barrier, asian} under the saved local vol; a JSON-able dict with the
    local-vol price, its standard error, the Black-Scholes price (ATM implied vol) and their difference."""
    lv, forwards, summary = load_calibration(folder)
    sign = {"call": 1, "put": -1}.get(cp)
    if sign is None:
        raise InputError(f"cp must be 'call' or 'put', got {cp!r}")
    if kind in ("call", "put"):
        sign = 1 if kind == "call" else -1
        res = mc_european(lv, forwards, [strike], expiry, sign, n_paths=n_paths, n_steps=n_steps, seed=seed)
        out = {"type": kind, "strike": strike, "T": expiry, "price_lv": float(res.price[0]),
               "se_lv": float(res.stderr[0]), "n_paths": res.n_paths, "n_steps": res.n_steps}
    elif kind == "barrier":
        if barrier is None or not np.isfinite(barrier):
            raise InputError("--barrier LEVEL is needed for a barrier option")
        out = price_barrier(lv, forwards, strike=strike, barrier=barrier, T=expiry, kind=barrier_type, cp=sign,
                            monitoring=monitoring, n_paths=n_paths, n_steps=n_steps, seed=seed).to_dict()
    elif kind == "asian":
        out = price_asian(lv, forwards, strike=strike, T=expiry, n_fixings=fixings, cp=sign,
                          n_paths=n_paths, n_steps=n_steps, seed=seed).to_dict()
    else:
        raise InputError(f"type must be call, put, barrier or asian, got {kind!r}")
    out["calibration"] = {k: summary.get(k) for k in ("source", "underlying", "asof", "method", "spot")}
    return out
