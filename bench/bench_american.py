"""American options: ``core.pricing.american`` against QuantLib's QdFp (ALO) and finite-difference engines.

Inputs: a chain-like batch (``N_CHAIN`` options: 40 expiries log-spaced from 1 week to 3 years x 250 strikes
from 0.7 to 1.3 times spot, calls and puts, a smile ``sigma = 0.22 - 0.1 y + 0.3 y^2`` in ``y = ln(K/S)``,
SPY-like carry ``r = 4.5%``, ``q = 1.3%``, so that every option, call or put, can be exercised early).
Ours prices the whole batch in one vectorised call (best of 3, after a warm-up call that compiles or loads
the numba kernel; the kernel splits large batches over the CPUs with threads); QuantLib prices one option
per Python call (engine set once per option, as a user would) on a seeded subsample, and its throughput is
per option. Ratios are throughputs measured in the same run. The accuracy notes give the max relative
error on the subsample's prices above 0.01 against QuantLib's high-precision QdFp scheme and against the
same engine iterated to convergence (``QdFpTanhSinhIterationScheme(40, 30, 1e-10)``, ~60 ms per option).
"""
from __future__ import annotations

import math
import time

import numpy as np

from bench.common import best_of, ratio, row
from core.pricing.american import (
    american_implied_vol_status,
    american_price,
    backend,
)

N_CHAIN = 20_000
S0, R, Q = 100.0, 0.045, 0.013


def make_chain(n_expiries: int = 40, n_strikes: int = 250) -> dict[str, np.ndarray]:
    """The chain-like batch of the module docstring, as flat arrays (``S, K, T, r, q, sigma, cp``)."""
    T = np.exp(np.linspace(np.log(7 / 365), np.log(3.0), n_expiries))
    K = S0 * np.linspace(0.7, 1.3, n_strikes)
    TT, KK, CP = np.meshgrid(T, K, np.array([-1.0, 1.0]), indexing="ij")
    y = np.log(KK / S0)
    sigma = 0.22 - 0.1 * y + 0.3 * y * y
    n = TT.size
    return {"S": np.full(n, S0), "K": KK.ravel(), "T": TT.ravel(), "r": np.full(n, R), "q": np.full(n, Q),
            "sigma": sigma.ravel(), "cp": CP.ravel()}


def _ql_setup(ql, S, K, T, r, q, sigma, cp):
    today = ql.Date(2, 1, 2025)
    ql.Settings.instance().evaluationDate = today
    dc = ql.Actual365Fixed()
    # an exact T: maturity date whole days away, the remaining fraction in the rates' time
    days = max(1, int(round(T * 365)))
    process = ql.BlackScholesMertonProcess(
        ql.QuoteHandle(ql.SimpleQuote(S)),
        ql.YieldTermStructureHandle(ql.FlatForward(today, q, dc, ql.Continuous)),
        ql.YieldTermStructureHandle(ql.FlatForward(today, r, dc, ql.Continuous)),
        ql.BlackVolTermStructureHandle(ql.BlackConstantVol(today, ql.NullCalendar(), sigma, dc)))
    option = ql.VanillaOption(ql.PlainVanillaPayoff(ql.Option.Call if cp > 0 else ql.Option.Put, K),
                              ql.AmericanExercise(today, today + days))
    return option, process, days / 365.0


def quantlib_prices(inp: dict, engine: str) -> tuple[np.ndarray, np.ndarray, float]:
    """QuantLib prices per option (``engine``: "qdfp", "qdfp_hp", "qdfp_conv", "fd"), the T QuantLib used
    (whole days), and the seconds spent in pricing."""
    import QuantLib as ql

    out = np.empty(inp["S"].size)
    Tq = np.empty_like(out)
    seconds = 0.0
    for i in range(out.size):
        option, process, Tq[i] = _ql_setup(ql, *(float(inp[k][i]) for k in ("S", "K", "T", "r", "q", "sigma", "cp")))
        t0 = time.perf_counter()
        if engine == "qdfp":
            eng = ql.QdFpAmericanEngine(process)
        elif engine == "qdfp_hp":
            eng = ql.QdFpAmericanEngine(process, ql.QdFpAmericanEngine.highPrecisionScheme())
        elif engine == "qdfp_conv":
            eng = ql.QdFpAmericanEngine(process, ql.QdFpTanhSinhIterationScheme(40, 30, 1e-10))
        else:
            eng = ql.FdBlackScholesVanillaEngine(process, 400, 400, 0)
        option.setPricingEngine(eng)
        out[i] = option.NPV()
        seconds += time.perf_counter() - t0
    return out, Tq, seconds


def _max_rel(x: np.ndarray, ref: np.ndarray) -> float:
    big = ref > 0.01
    return float(np.max(np.abs(x[big] - ref[big]) / ref[big])) if big.any() else math.nan


def run(quick: bool = False) -> list[dict]:
    chain = make_chain(10, 100) if quick else make_chain()
    n = chain["S"].size
    n_peer = 40 if quick else 300
    n_fd = 10 if quick else 60
    args = [chain[k] for k in ("S", "K", "T", "r", "q", "sigma", "cp")]
    american_price(*[a[:10] for a in args])  # compile or load the kernel
    sec, prices = best_of(lambda: american_price(*args), repeat=3)
    ours = n / sec
    rows = []
    be = backend()

    sub = np.random.default_rng(2016).choice(n, size=n_peer, replace=False)
    peer_inp = {k: v[sub] for k, v in chain.items()}
    try:
        import QuantLib  # noqa: F401  (a benchmark peer, optional)
    except ImportError:
        return [row("american_price", "options/s", ours, notes=f"{n} options, backend {be}; QuantLib absent")]

    ql_def, Tq, s_def = quantlib_prices(peer_inp, "qdfp")
    ql_hp, _, s_hp = quantlib_prices(peer_inp, "qdfp_hp")
    # our prices at QuantLib's T (whole days), for the accuracy columns
    mine = american_price(peer_inp["S"], peer_inp["K"], Tq, peer_inp["r"], peer_inp["q"], peer_inp["sigma"],
                          peer_inp["cp"])
    n_conv = min(n_peer, 12 if quick else 100)
    ql_conv, _, _ = quantlib_prices({k: v[:n_conv] for k, v in peer_inp.items()}, "qdfp_conv")
    err_hp = _max_rel(mine, ql_hp)
    err_conv = _max_rel(mine[:n_conv], ql_conv)
    note_acc = (f"max rel err (prices > 0.01) vs QdFp high-precision {err_hp:.1e}, vs QdFp iterated to "
                f"convergence {err_conv:.1e} ({n_conv} options)")
    rows.append(row("american_price vs QdFp default", "options/s", ours, "QuantLib QdFpAmericanEngine (default)",
                    n_peer / s_def, ratio(ours, n_peer / s_def),
                    f"{n} chain options in one call, backend {be}; peer per option on {n_peer}; "
                    f"peer max rel err vs high-precision {_max_rel(ql_def, ql_hp):.1e}"))
    rows.append(row("american_price vs QdFp high precision", "options/s", ours,
                    "QuantLib QdFpAmericanEngine (highPrecisionScheme)", n_peer / s_hp, ratio(ours, n_peer / s_hp),
                    note_acc))

    fd_inp = {k: v[:n_fd] for k, v in peer_inp.items()}
    ql_fd, _, s_fd = quantlib_prices(fd_inp, "fd")
    rows.append(row("american_price vs FD", "options/s", ours, "QuantLib FdBlackScholesVanillaEngine (400x400)",
                    n_fd / s_fd, ratio(ours, n_fd / s_fd),
                    f"peer on {n_fd} options; peer max rel err vs high-precision QdFp {_max_rel(ql_fd, ql_hp[:n_fd]):.1e}"))
    rows.append(row("american_price accuracy", "max rel err", max(err_hp, err_conv), "QuantLib QdFp high precision",
                    err_hp, ratio(max(err_hp, err_conv), 1e-6, higher_is_better=False),
                    note_acc + "; ratio: against the 1e-6 target"))

    # implied vol: the chain's prices back to vols
    sec_iv, res = best_of(lambda: american_implied_vol_status(prices, *[a for a in args[:5]], args[6]), repeat=1)
    ok = res.status == "ok"
    # the vol is identifiable where the price moves with it: vega > 1e-6 (as in the tests)
    vega = (american_price(*args[:5], chain["sigma"] + 1e-4, args[6]) - prices) / 1e-4
    informative = ok & (vega > 1e-6)
    err_iv = float(np.max(np.abs(res.vol - chain["sigma"])[informative])) if informative.any() else math.nan
    back = american_price(*args[:5], res.vol, args[6])
    err_rt = float(np.max(np.abs(back[ok] - prices[ok]) / prices[ok])) if ok.any() else math.nan
    n_iv = 10 if quick else 40
    import QuantLib as ql

    t_ql = 0.0
    for i in range(n_iv):
        option, process, _ = _ql_setup(ql, *(float(peer_inp[k][i]) for k in ("S", "K", "T", "r", "q", "sigma", "cp")))
        option.setPricingEngine(ql.QdFpAmericanEngine(process))
        target = option.NPV()
        t0 = time.perf_counter()
        try:
            option.impliedVolatility(target, process, 1e-8, 200, 1e-4, 4.0)
        except RuntimeError:
            pass
        t_ql += time.perf_counter() - t0
    rows.append(row("american_implied_vol", "options/s", n / sec_iv, "QuantLib VanillaOption.impliedVolatility",
                    n_iv / t_ql, ratio(n / sec_iv, n_iv / t_ql),
                    f"{n} chain prices -> vols in one call ({res.iterations} pricing passes), {ok.mean():.1%} ok (the "
                    f"rest: prices on the zero-vol lower bound), max |vol error| {err_iv:.1e} where vega > 1e-6, "
                    f"price round trip max rel err {err_rt:.1e}; peer per option on {n_iv} (its own American engine)"))
    return rows
