"""Implied-vol surface fits: time to fit a full demo chain per method, next to QuantLib on the same quotes.

Data: the demo chain (``core.demo``, 13 expiries, about 1,400 out-of-the-money two-sided quotes
with their Black vols from the exact forwards). Ours: ``core.surface.fit.fit_surface`` with
``method="ssvi" | "svi" | "smooth"`` (arbitrage checks and residuals included). Peers on the same quotes:
QuantLib's ``SviInterpolatedSmileSection`` (raw SVI fitted per expiry, vega-weighted, no arbitrage
control) against our SVI, and QuantLib's ``AndreasenHugeVolatilityInterpl`` (arbitrage-free by
construction, a non-parametric fit of all expiries at once) against our SSVI and smooth fits.
Accuracy rows: QuantLib's own Andreasen-Huge example data (155 mid vols), max error in vol bp of our
smooth and SVI fits against QuantLib's Andreasen-Huge calibration on the same data.
"""
from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pandas as pd

from bench.common import NO_PEER, best_of, ratio, row
from core.forwards import Forwards
from core.surface.fit import fit_surface

AH_CSV = "andreasen_huge_market.csv"


def demo_quotes(seed: int = 7):
    """``core.demo.demo_fit_quotes``: the demo as a fit-ready frame on its exact forwards."""
    from core.demo import demo_fit_quotes

    q, fwd, ch = demo_fit_quotes(seed)
    return q, fwd


def ah_quotes(path):
    """QuantLib's Andreasen-Huge example vols as a quote frame (bid = ask = mid; spot 2772.7, r = q = 0)."""
    d = pd.read_csv(path)
    S = 2772.7
    T = d["maturity_years_qltest"].to_numpy(float)
    exp = pd.Timestamp("2010-03-01") + pd.to_timedelta(d["maturity_days_qltest"], unit="D")
    q = pd.DataFrame({"expiry": exp, "T": T, "strike": d["strike"].to_numpy(float),
                      "cp": np.where(d["option_type_qltest"] == "call", 1, -1), "y": np.log(d["strike"] / S),
                      "iv_mid": d["implied_vol"], "iv_bid": d["implied_vol"], "iv_ask": d["implied_vol"], "use": True})
    Tu = np.sort(np.unique(T))
    return q, Forwards.from_rates(S, 0.0, 0.0, Tu), d


def _ql_svi_per_slice(q):
    import QuantLib as ql

    today = ql.Date(15, 6, 2026)
    ql.Settings.instance().evaluationDate = today
    sections = []
    for _, g in q.groupby("expiry"):
        g = g.sort_values("strike")
        T = float(g["T"].iloc[0])
        F = float(g["F"].iloc[0])
        atm = float(np.interp(0.0, g["y"], g["iv_mid"]))
        s = ql.SviInterpolatedSmileSection(today + max(1, int(round(T * 365))), F, list(g["strike"].astype(float)),
                                           False, atm, list(g["iv_mid"].astype(float)),
                                           0.5 * atm * atm * T, 0.1, 0.1, -0.5, 0.0,
                                           False, False, False, False, False, True)
        s.volatility(F)  # forces the calibration
        sections.append((g, s))
    return sections


def _ql_svi_quality(sections):
    """Share of quotes inside bid/ask and number of slices with g < 0 (on their quoted range) of QuantLib's
    per-slice SVI fits."""
    from core.surface.base import butterfly_g

    inside, n, arb = 0, 0, 0
    for g, s in sections:
        T, F = float(g["T"].iloc[0]), float(g["F"].iloc[0])
        vols = np.array([s.volatility(float(k)) for k in g["strike"]])
        lo = np.where(np.isfinite(g["iv_bid"]), g["iv_bid"], 0.0)
        inside += int(np.sum((vols >= lo - 1e-12) & (vols <= g["iv_ask"].to_numpy() + 1e-12)))
        n += len(g)
        yy = np.linspace(g["y"].min(), g["y"].max(), 201)
        K = F * np.exp(yy)
        w = np.array([s.volatility(float(k)) for k in K]) ** 2 * T
        h = 1e-4
        wp = np.array([s.volatility(float(k)) for k in K * np.exp(h)]) ** 2 * T
        wm = np.array([s.volatility(float(k)) for k in K * np.exp(-h)]) ** 2 * T
        arb += int(np.min(butterfly_g(yy, w, (wp - wm) / (2 * h), (wp - 2 * w + wm) / h**2)) < 0)
    return inside / max(n, 1), arb


def _ql_andreasen_huge(q, spot, r, qdiv):
    import QuantLib as ql

    today = ql.Date(15, 6, 2026)
    ql.Settings.instance().evaluationDate = today
    dc = ql.Actual365Fixed()
    cal = ql.CalibrationSet()
    spot_h = ql.QuoteHandle(ql.SimpleQuote(spot))
    r_ts = ql.YieldTermStructureHandle(ql.FlatForward(today, r, dc))
    q_ts = ql.YieldTermStructureHandle(ql.FlatForward(today, qdiv, dc))
    for _, x in q.iterrows():
        days = max(1, int(round(float(x["T"]) * 365)))
        ex = ql.EuropeanExercise(today + days)
        pay = ql.PlainVanillaPayoff(ql.Option.Call if x["cp"] > 0 else ql.Option.Put, float(x["strike"]))
        cal.append((ql.VanillaOption(pay, ex), ql.SimpleQuote(float(x["iv_mid"]))))
    ah = ql.AndreasenHugeVolatilityInterpl(cal, spot_h, r_ts, q_ts)
    ah.calibrationError()
    return ah, ql.AndreasenHugeVolatilityAdapter(ah), today


def _cpu_best(fn, repeat: int) -> float:
    """Best CPU time (``time.process_time``, this process, all threads) of ``fn`` over ``repeat`` rounds."""
    best = math.inf
    for _ in range(max(1, repeat)):
        c0 = time.process_time()
        fn()
        best = min(best, time.process_time() - c0)
    return best


def _spx_rows(rep: int) -> list[dict]:
    """Fit time of each method on the real SPX chain of 24 Jan 2011 (through ``core.pipeline.prepare``)."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "spx_20110124" / "SPX-Options-24jan2011.csv"
    if not path.exists():
        return []
    from core import pipeline
    from core.sources.cboe import read_cboe

    prep = pipeline.prepare(read_cboe(path), pipeline.Settings())
    used = prep.quotes[prep.quotes["use"].astype(bool)]
    label = f"SPX 24 Jan 2011, {used['expiry'].nunique()} expiries, {len(used)} OTM quotes"
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in ("ssvi", "svi", "smooth"):
            fit = lambda m=m: fit_surface(prep.quotes, prep.forwards, method=m)  # noqa: E731
            t, f = best_of(fit, repeat=rep)
            cpu = _cpu_best(fit, rep)
            rows.append(row(f"fit {m}: {label}", "seconds", t, NO_PEER, math.nan, math.nan,
                            f"CPU {cpu:.3f} s; inside bid/ask {f.residuals['inside'].mean():.1%}, arbitrage points "
                            f"{f.arbitrage['butterfly'] + f.arbitrage['calendar']}"))
    return rows


def run(quick: bool = False) -> list[dict]:
    """Benchmark rows (see the module docstring); ``quick`` times one round instead of three and skips
    QuantLib's Andreasen-Huge calibrations."""
    rep = 1 if quick else 3
    q, fwd = demo_quotes()
    used = q[q["use"]]
    n_exp, n_q = used["expiry"].nunique(), len(used)
    label = f"demo chain {n_exp} expiries x {n_q // n_exp} OTM quotes"
    rows = []
    times, fits = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cpus = {}
        for m in ("ssvi", "svi", "smooth"):
            times[m], fits[m] = best_of(lambda m=m: fit_surface(q, fwd, method=m), repeat=rep)
            cpus[m] = _cpu_best(lambda m=m: fit_surface(q, fwd, method=m), rep)
    try:
        import QuantLib  # noqa: F401

        have_ql = True
    except ImportError:
        have_ql = False
    t_svi_ql = t_ah_ql = math.nan
    ql_svi_note = ""
    if have_ql:
        t_svi_ql, secs = best_of(lambda: _ql_svi_per_slice(used), repeat=rep)
        share, n_arb = _ql_svi_quality(secs)
        ql_svi_note = f"; QuantLib: inside {share:.1%}, {n_arb} slices with g < 0 (no arbitrage control)"
        if not quick:    # QuantLib's Andreasen-Huge calibration takes seconds: skipped in quick runs
            t_ah_ql, _ = best_of(lambda: _ql_andreasen_huge(used, 5000.0, 0.04, 0.015), repeat=1)
    ah_note = " (quick: QuantLib Andreasen-Huge skipped)" if quick and have_ql else ""
    peer = "QuantLib" if have_ql else NO_PEER
    for m, peer_name, t_peer in (("ssvi", "QuantLib AndreasenHugeVolatilityInterpl", t_ah_ql),
                                 ("svi", "QuantLib SviInterpolatedSmileSection x slices", t_svi_ql),
                                 ("smooth", "QuantLib AndreasenHugeVolatilityInterpl", t_ah_ql)):
        f = fits[m]
        rows.append(row(f"fit {m}: {label}", "seconds", times[m], peer_name if have_ql else peer, t_peer,
                        ratio(times[m], t_peer, higher_is_better=False),
                        f"CPU {cpus[m]:.3f} s; inside bid/ask {np.mean(list(f.inside_share.values())):.1%}, arbitrage points "
                        f"{f.arbitrage['butterfly'] + f.arbitrage['calendar']}"
                        f"{ah_note if 'Andreasen' in peer_name else ql_svi_note}"))
    rows += _spx_rows(rep)
    # accuracy on QuantLib's own Andreasen-Huge data
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "quantlib_tests" / AH_CSV
    if path.exists():
        qa, fa, raw = ah_quotes(path)
        peer_max = math.nan
        if have_ql and not quick:
            _, adapter, today = _ql_andreasen_huge(qa, 2772.7, 0.0, 0.0)
            ql_vols = np.array([adapter.blackVol(float(T), float(K), True)
                                for T, K in zip(qa["T"], qa["strike"], strict=False)])
            peer_max = float(np.max(np.abs(ql_vols - qa["iv_mid"].to_numpy())) * 1e4)
        for m in ("smooth", "svi"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                f = fit_surface(qa, fa, method=m)
            err = f.residuals["resid_bp"].abs()
            rows.append(row(f"Andreasen-Huge data (155 vols): {m} fit", "max error (vol bp)", float(err.max()),
                            "QuantLib AndreasenHugeVolatilityInterpl" if have_ql else NO_PEER, peer_max,
                            ratio(float(err.max()), peer_max, higher_is_better=False),
                            f"mean {err.mean():.2f} bp; QuantLib's test accepts max 15, mean 3.5"))
    return rows
