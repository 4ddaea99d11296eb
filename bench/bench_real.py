"""Real chains (``../shared/data/cboe_modern``): each method's calibration time, inside share and round trip.

The peer of each row is the same measurement on main before the real-chain work (commit 7d90ec5, pinned
numbers measured on this machine on 2026-12-06 with the quote time set to Friday's close by hand, since the
loader of that commit measured T from the Sunday download). Rows are skipped when the data is absent.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from bench.common import ratio, row
from core.pipeline import Settings, fit, local_vol, prepare, reprice, reprice_american
from core.sources.detect import load_file

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cboe_modern"
#: main at 7d90ec5 on spx_20240105_close.csv (asof 2024-01-05 16:15): prepare + fit + local vol seconds,
#: fit inside share, round trip inside share and seconds (the round trip was not run for svi and ssvi)
PINNED = {"smooth": (1.27 + 14.46 + 0.045, 0.9745, 0.9680, 3.34), "svi": (0.90 + 9.98, 0.405, None, None),
          "ssvi": (1.56 + 0.86 + 0.022, 0.1756, 0.1768, 0.36)}
PINNED["spline"] = PINNED["smooth"]    # the new default against main's only method that sat inside the spreads
PEER = "main before this work (7d90ec5), pinned"


def _measure(chain, method: str, with_rt: bool):
    s = Settings(method=method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        prep = prepare(chain, s)
        t1 = time.perf_counter()
        fr = fit(prep, s)
        t2 = time.perf_counter()
        lv = local_vol(prep, fr, s)
        t3 = time.perf_counter()
        rp = reprice(prep, fr, s) if with_rt else None
        t4 = time.perf_counter()
    L = lv.local_vol
    nb = np.full(L.shape, np.nan)
    nb[1:-1, 1:-1] = 0.25 * (L[:-2, 1:-1] + L[2:, 1:-1] + L[1:-1, :-2] + L[1:-1, 2:])
    m = ~lv.extrapolated & (lv.T[:, None] >= 7 / 365) & np.isfinite(nb)
    rough = float(np.mean(np.abs(L - nb)[m] / nb[m] > 0.2)) if m.any() else float("nan")
    return {"prepare": t1 - t0, "fit": t2 - t1, "local_vol": t3 - t2, "repricing": t4 - t3,
            "inside": float(fr.residuals["inside"].mean()), "rt": rp.inside_bid_ask if rp is not None else None,
            "n": len(fr.residuals), "expiries": len(fr.inside_share), "rough": rough, "prepared": prep, "fitted": fr}


def _free_slice_inside(y, iv, lo, hi, T: float) -> int:
    """How many of one expiry's quotes a free SSVI slice ``w = theta/2 (1 + rho phi y + sqrt((phi y + rho)^2 + 1 -
    rho^2))`` (written out here) puts inside their band when fitted alone to it: least squares on the distance
    beyond the band plus a little of the distance to the mid, then a Cauchy loss on the distance beyond 80% of
    the half spread (scales 1 and 0.3 half spreads)."""
    half = np.maximum(np.minimum(iv - lo, hi - iv), 1e-4)

    def vol(p):
        th, rho, phi = np.exp(p[0]), np.tanh(p[1]), np.exp(p[2])
        w = 0.5 * th * (1 + rho * phi * y + np.sqrt((phi * y + rho) ** 2 + 1 - rho * rho))
        return np.sqrt(np.maximum(w, 1e-12) / T)

    def near(p):
        e = (vol(p) - iv) / half
        return np.concatenate([3 * np.maximum(np.abs(e) - 1, 0), 0.3 * e])

    def beyond(p):
        return np.maximum(np.abs(vol(p) - iv) / half - 0.8, 0)

    th0 = max(float(np.interp(0.0, y, iv)) ** 2 * T, 1e-8)
    p = least_squares(near, [np.log(th0), np.arctanh(-0.6), np.log(0.5 / np.sqrt(th0))], method="lm",
                      max_nfev=2000).x
    for c in (1.0, 0.3):
        p = least_squares(beyond, p, loss="cauchy", f_scale=c, max_nfev=2000).x
    v = vol(p)
    return int(np.sum((v >= lo) & (v <= hi)))


def _free_slice_ceiling(residuals) -> float:
    """Share of the used quotes inside their bid/ask when every expiry gets its own free SSVI slice fitted alone
    to the band (``_free_slice_inside``: no calendar condition, no smoothness): what a three-parameter slice can
    do on the chain, the ceiling of eSSVI."""
    inside = 0
    for _, g in residuals.sort_values("y").groupby("expiry_key", sort=False):
        if len(g) < 3:
            continue
        lo = np.where(np.isfinite(g["iv_bid"]), g["iv_bid"], 0.0)
        hi = np.where(np.isfinite(g["iv_ask"]), g["iv_ask"], np.inf)
        inside += _free_slice_inside(g["y"].to_numpy(float), g["iv_mid"].to_numpy(float), lo, hi,
                                     float(g["T"].iloc[0]))
    return inside / len(residuals)


def run(quick: bool = False) -> list[dict]:
    """Rows per chain and method: calibration seconds (prepare + fit + local vol) against the pinned numbers
    of main, the round trip's seconds, and the inside shares in the notes."""
    if not DATA.is_dir():
        return [row("real chains", "skipped", float("nan"), notes=f"{DATA} not found")]
    chains = [("SPX 2024-01-05 close", "spx_20240105_close.csv")]
    if not quick:
        chains += [("NDX 2023-05-26 close", "ndx_20230526_close.csv"), ("SPX 2022-06-10 close", "spx_20220610_close.csv")]
    rows = []
    for label, name in chains:
        chain = load_file(DATA / name)
        prepare(chain, Settings())      # warm: compiled kernels load on the first call of a process
        methods = (("spline",) if quick else ("spline", "essvi") if name != "spx_20240105_close.csv"
                   else ("spline", "essvi", "svi", "smooth", "ssvi"))
        for method in methods:
            r = _measure(chain, method, with_rt=True)
            total = r["prepare"] + r["fit"] + r["local_vol"]
            pin = PINNED.get(method) if name == "spx_20240105_close.csv" else None
            notes = (f"{r['n']:,} used quotes, {r['expiries']} expiries; prepare {r['prepare']:.2f} + fit {r['fit']:.2f} + "
                     f"local vol {r['local_vol']:.3f} s; fit inside bid/ask {100 * r['inside']:.1f}%, round trip inside "
                     f"{100 * r['rt']:.1f}%; local-vol cells > 20% off their neighbours {100 * r['rough']:.1f}%")
            if pin is not None:
                notes += f"; main: inside {100 * pin[1]:.1f}%" + (f", round trip {100 * pin[2]:.1f}%" if pin[2] else "")
            if method == "essvi":
                t0 = time.perf_counter()
                ceiling = _free_slice_ceiling(r["fitted"].residuals)
                rows.append(row(f"eSSVI inside bid/ask {label}", "share", r["inside"], "free SSVI slice per expiry",
                                ceiling, r["inside"] / ceiling,
                                f"the peer: one SSVI slice per expiry fitted alone to the band (no calendar "
                                f"condition), the ceiling of a three-parameter slice ({time.perf_counter() - t0:.0f} s)"))
            rows.append(row(f"calibrate {label}, method={method}", "seconds", total, PEER if pin else "—",
                            pin[0] if pin else float("nan"),
                            ratio(total, pin[0], higher_is_better=False) if pin else float("nan"), notes))
            rows.append(row(f"round trip {label}, method={method}", "seconds", r["repricing"],
                            PEER if pin and pin[3] else "—", pin[3] if pin and pin[3] else float("nan"),
                            ratio(r["repricing"], pin[3], higher_is_better=False) if pin and pin[3] else float("nan"),
                            f"forward Dupire PDE over {r['n']:,} quotes; inside {100 * r['rt']:.1f}%"))
    if not quick:
        rows += _american_rows()
    return rows


def _american_rows() -> list[dict]:
    """American chains (SPY, QQQ): the whole calibration with the de-Americanisation, the share of the used quotes
    fitted inside their European-equivalent bid/ask, and the American round trip inside the American bid/ask."""
    rows = []
    for label, name in (("SPY 2023-06-02 close", "spy_20230602_close.csv"), ("QQQ 2023-06-12 close",
                                                                            "qqq_20230612_close.csv")):
        if not (DATA / name).is_file():
            continue
        chain = load_file(DATA / name)
        r = _measure(chain, "spline", with_rt=False)
        prep, fr = r["prepared"], r["fitted"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            arp = reprice_american(prep, fr, Settings())
            t_rt = time.perf_counter() - t0
        deam = prep.american
        notes = (f"{r['n']:,} used quotes, {r['expiries']} expiries; prepare (with the de-Americanisation) "
                 f"{r['prepare']:.2f} + fit {r['fit']:.2f} + local vol {r['local_vol']:.3f} s; fit inside the "
                 f"European-equivalent bid/ask {100 * r['inside']:.1f}%")
        if deam is not None:
            notes += f"; median implied carry {100 * float(deam.carry.table['q'].median()):.2f}%"
        rows.append(row(f"calibrate {label} (American), method=spline", "seconds",
                        r["prepare"] + r["fit"] + r["local_vol"], notes=notes))
        if arp is not None:
            rows.append(row(f"American round trip {label}", "seconds", t_rt,
                            notes=f"backward PDE with early exercise over {len(arp.table):,} American quotes; inside "
                                  f"their American bid/ask {100 * arp.inside_bid_ask:.1f}%"))
    return rows
