"""Implied vol: ``core.black.implied_vol`` against QuantLib, vollib (Let's Be Rational) and the seed's bisection.

Inputs (same for everyone): out-of-the-money options on the accuracy domain of issue 3 -- T log-uniform
in [1 day, 30 y], vol log-uniform in [1%, 500%] with total std dev ``s = sigma sqrt(T) <= 6``, moneyness
``y = ln(K/F)`` uniform within +-8 std devs (OTM side: call if K > F, put otherwise), undiscounted price
``>= 1e-12 F``. Prices from ``core.black.black_price`` (the erfcx form, accurate to a few ulps deep OTM).
The error of each method is ``|vol - sigma_true|``. Ours runs on every option in one vectorised call,
on each of its two backends (``[numba]``: the compiled kernels of ``core._black_numba``; ``[numpy]``:
the pure-numpy path, forced by ``DUPIRE_DESK_NO_NUMBA=1``), each against every peer. The scalar peers
(Python loops) run on the first ``n_peer`` of the same options, and their throughput is per option.
Single thread (the harness pins OMP/BLAS threads to 1; no kernel runs in parallel). The numba rows
time calls after the first (compilation, or loading numba's cache, is a separate row measured in
fresh processes).
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import best_of, ratio, row, throughput
from core.black import NO_NUMBA_ENV, black_price, implied_vol, use_backend

BACKENDS = ("numba", "numpy")

DAY = 1.0 / 365.0


def make_inputs(n: int, seed: int = 20151) -> dict[str, np.ndarray]:
    """``n`` OTM options on the issue's accuracy domain (see the module docstring), reproducible."""
    rng = np.random.default_rng(seed)
    out = {k: np.empty(0) for k in ("F", "K", "T", "sigma", "cp", "price")}
    while out["F"].size < n:
        m = 2 * (n - out["F"].size) + 1000
        T = np.exp(rng.uniform(np.log(DAY), np.log(30.0), m))
        sigma = np.exp(rng.uniform(np.log(0.01), np.log(5.0), m))
        s = sigma * np.sqrt(T)
        F = np.exp(rng.uniform(np.log(10.0), np.log(1000.0), m))
        y = rng.uniform(-8.0, 8.0, m) * s
        K = F * np.exp(y)
        cp = np.where(K > F, 1.0, -1.0)
        keep = s <= 6.0
        price = np.zeros(m)
        price[keep] = black_price(F[keep], K[keep], T[keep], sigma[keep], cp[keep])
        keep &= price >= 1e-12 * F
        for k, v in zip(("F", "K", "T", "sigma", "cp", "price"), (F, K, T, sigma, cp, price), strict=True):
            out[k] = np.concatenate([out[k], v[keep]])
    return {k: v[:n] for k, v in out.items()}


# -- peers (scalar, in Python loops, as a user would call them) -----------------------------------

def quantlib_iv(inp: dict[str, np.ndarray]) -> np.ndarray:
    """QuantLib ``blackFormulaImpliedStdDev`` per option (accuracy 1e-12 on the std dev, 100 iterations)."""
    import QuantLib as ql

    call, put = ql.Option.Call, ql.Option.Put
    f = ql.blackFormulaImpliedStdDev
    null = ql.nullDouble()  # QuantLib's Null<Real>: let it choose its own initial guess
    out = np.empty(inp["F"].size)
    for i, (F, K, T, cp, p) in enumerate(zip(inp["F"].tolist(), inp["K"].tolist(), inp["T"].tolist(),
                                             inp["cp"].tolist(), inp["price"].tolist(), strict=True)):
        try:
            out[i] = f(call if cp > 0 else put, K, F, p, 1.0, 0.0, null, 1e-12, 100) / math.sqrt(T)
        except RuntimeError:  # QuantLib throws on failure; count it as no answer
            out[i] = math.nan
    return out


def vollib_iv(inp: dict[str, np.ndarray]) -> np.ndarray:
    """vollib's Let's Be Rational (pure Python port of Jaeckel's code) per option."""
    from vollib.black.implied_volatility import implied_volatility

    out = np.empty(inp["F"].size)
    for i, (F, K, T, cp, p) in enumerate(zip(inp["F"].tolist(), inp["K"].tolist(), inp["T"].tolist(),
                                             inp["cp"].tolist(), inp["price"].tolist(), strict=True)):
        try:
            out[i] = implied_volatility(p, F, K, 0.0, T, "c" if cp > 0 else "p")
        except Exception:  # vollib raises PriceIsBelowIntrinsic etc.
            out[i] = math.nan
    return out


def _seed_price(F: float, K: float, T: float, sigma: float, cp: float) -> float:
    # the seed's Black-Scholes formula with r = q = 0 (so S = F), N(x) from math.erfc
    s = sigma * math.sqrt(T)
    d1 = (math.log(F / K) + 0.5 * s * s) / s
    d2 = d1 - s
    if cp > 0:
        return F * 0.5 * math.erfc(-d1 / math.sqrt(2.0)) - K * 0.5 * math.erfc(-d2 / math.sqrt(2.0))
    return K * 0.5 * math.erfc(d2 / math.sqrt(2.0)) - F * 0.5 * math.erfc(d1 / math.sqrt(2.0))


def seed_bisection_iv(inp: dict[str, np.ndarray]) -> np.ndarray:
    """The seed's naive method (seed 000 ``implied_vol_binary``): bisect on [1e-6, 5], stop when the
    price is within 1e-6 or after 100 halvings. Puts are bisected on the put formula (the seed only
    had calls)."""
    out = np.empty(inp["F"].size)
    for i, (F, K, T, cp, target) in enumerate(zip(inp["F"].tolist(), inp["K"].tolist(), inp["T"].tolist(),
                                                  inp["cp"].tolist(), inp["price"].tolist(), strict=True)):
        lo, hi = 1e-6, 5.0
        mid = 0.5 * (lo + hi)
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            p = _seed_price(F, K, T, mid, cp)
            if abs(p - target) < 1e-6:
                break
            if p > target:
                hi = mid
            else:
                lo = mid
        out[i] = mid
    return out


def _cpu_seconds(fn) -> float:
    # CPU time of this process: what the throughput would be without other processes on the CPUs
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def _errors(vol: np.ndarray, true: np.ndarray) -> tuple[float, float, int]:
    err = np.abs(vol - true)
    bad = int(np.count_nonzero(~np.isfinite(err)))
    err = err[np.isfinite(err)]
    if err.size == 0:
        return math.nan, math.nan, bad
    return float(err.max()), float(np.median(err)), bad


def _backend(name: str):
    """``core.black.use_backend``: yields False if that backend is unavailable."""
    return use_backend(name)


def _first_call_seconds(cache_dir: str) -> float:
    """Wall time of the first ``implied_vol`` call in a fresh process: numba import plus compilation
    (empty ``cache_dir``) or loading numba's cache (second run on the same ``cache_dir``)."""
    code = ("import time, core.black as b; t = time.perf_counter(); b.implied_vol(8.0, 100.0, 100.0, 1.0, 1.0); "
            "print(time.perf_counter() - t, b.backend())")
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    env.pop(NO_NUMBA_ENV, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    if out[1] != "numba":
        raise RuntimeError("numba backend unavailable in a fresh process")
    return float(out[0])


def _compile_rows() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        cold = _first_call_seconds(tmp)
        warm = min(_first_call_seconds(tmp) for _ in range(2))
    return [row("numba first call (cold: compile)", "s", cold, notes=(
                "fresh process, empty numba cache: import numba + compile both kernels; once per machine "
                "and per change of core/_black_numba.py (cache=True)")),
            row("numba first call (warm: cached)", "s", warm, notes=(
                "fresh process, numba's on-disk cache filled: import numba + load the kernels; "
                "`import core` itself never imports numba"))]


def run(quick: bool = False) -> list[dict]:
    """Throughput (M options/s) and max/median absolute vol error of ours (both backends) and each peer."""
    n = 20_000 if quick else 1_000_000
    n_peer = {"QuantLib blackFormulaImpliedStdDev (loop)": 500 if quick else 100_000,
              "vollib LBR (loop)": 300 if quick else 20_000,
              "seed bisection (loop)": 300 if quick else 20_000}
    inp = make_inputs(n)
    args = (inp["price"], inp["F"], inp["K"], inp["T"], inp["cp"])
    domain = ("OTM, T in [1d, 30y], vol in [1%, 500%], s <= 6, |y| <= 8 s, price >= 1e-12 F")
    ours = {}
    rows = []
    for name in BACKENDS:
        with _backend(name) as available:
            if not available:
                rows.append(row(f"implied vol [{name}]", "M options/s", math.nan, notes="backend unavailable"))
                continue
            implied_vol(*(a[:1000] for a in args))  # first call (numba: compile or cache load) not timed
            secs, vol = best_of(lambda: implied_vol(*args), repeat=2 if quick else 3)
            cpu = min(_cpu_seconds(lambda: implied_vol(*args)) for _ in range(2))
        ours[name] = (throughput(n, secs), throughput(n, cpu), vol)
        o_max, o_med, o_bad = _errors(vol, inp["sigma"])
        rows.append(row(f"implied vol accuracy, all inputs [{name}]", "max |vol err|", o_max, notes=(
            f"{n:,} options ({domain}); median {o_med:.1e}; {o_bad} NaN")))
    if "numba" in ours and "numpy" in ours:
        nb_mps, np_mps = ours["numba"][0], ours["numpy"][0]
        rows.append(row("implied vol throughput [numba]", "M options/s", nb_mps, "ours [numpy]", np_mps,
                        ratio(nb_mps, np_mps), f"same {n:,} options; CPU time: {ours['numba'][1]:.2f} vs "
                        f"{ours['numpy'][1]:.2f} M/s"))
    peers = {"QuantLib blackFormulaImpliedStdDev (loop)": quantlib_iv, "vollib LBR (loop)": vollib_iv,
             "seed bisection (loop)": seed_bisection_iv}
    for pname, fn in peers.items():
        m = min(n_peer[pname], n)
        sub = {k: v[:m] for k, v in inp.items()}
        try:
            fn({k: v[:10] for k, v in sub.items()})  # warm-up: imports and first calls are not timed
            p_secs, p_vol = best_of(lambda fn=fn, sub=sub: fn(sub), repeat=1)
        except ImportError as exc:
            rows.append(row("implied vol throughput", "M options/s", math.nan, pname, math.nan, math.nan,
                            f"peer not installed: {exc}"))
            continue
        p_mps = throughput(m, p_secs)
        p_max, p_med, p_bad = _errors(p_vol, sub["sigma"])
        for name, (mps, cpu_mps, vol) in ours.items():
            o_max, o_med, _ = _errors(vol[:m], sub["sigma"])
            rows.append(row(f"implied vol throughput [{name}]", "M options/s", mps, pname, p_mps, ratio(mps, p_mps),
                            f"ours: {n:,} options in one call ({cpu_mps:.2f} M/s in CPU time: the machine "
                            f"is shared); peer: first {m:,} of them, per option"))
            rows.append(row(f"implied vol max error [{name}]", "max |vol err|", o_max, pname, p_max,
                            ratio(o_max, p_max, higher_is_better=False),
                            f"same {m:,} options; peer gave {p_bad} NaN/failures"))
            rows.append(row(f"implied vol median error [{name}]", "median |vol err|", o_med, pname, p_med,
                            ratio(o_med, p_med, higher_is_better=False), f"same {m:,} options"))
    if not quick and "numba" in ours:
        try:
            rows += _compile_rows()
        except (subprocess.CalledProcessError, RuntimeError, IndexError, ValueError) as exc:
            rows.append(row("numba first call", "s", math.nan, notes=f"not measured: {exc}"))
    rows += _price_rows(inp, quick)
    return rows


def _naive_price(F, K, T, sigma, cp):
    # the textbook vectorised formula cp (F N(cp d1) - K N(cp d2)) with scipy's ndtr
    from scipy.special import ndtr

    s = sigma * np.sqrt(T)
    d1 = np.log(F / K) / s + 0.5 * s
    return cp * (F * ndtr(cp * d1) - K * ndtr(cp * (d1 - s)))


def _quad_price(F, K, T, sigma, cp):
    # reference for the accuracy row: adaptive quadrature of the payoff against the lognormal density,
    # written with expm1 so that nothing cancels (independent of any erfc)
    from scipy import integrate

    if cp < 0:  # an OTM put is the OTM call with F and K swapped (both are sqrt(FK) b(-|x|, s))
        F, K = K, F
    s = sigma * math.sqrt(T)
    z = (math.log1p((K - F) / F) + 0.5 * s * s) / s
    val = integrate.quad(lambda u: -math.expm1(-s * u) * math.exp((s - z) * u - 0.5 * u * u), 0, math.inf,
                         epsabs=0, epsrel=2e-14, limit=200)[0]
    return K * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) * val


def _price_rows(inp: dict[str, np.ndarray], quick: bool) -> list[dict]:
    """black_price: throughput against the naive vectorised formula and QuantLib's blackFormula (loop);
    relative accuracy of both formulas against quadrature on the same OTM options."""
    n = inp["F"].size
    args = (inp["F"], inp["K"], inp["T"], inp["sigma"], inp["cp"])
    n_secs, _ = best_of(lambda: _naive_price(*args), repeat=2 if quick else 3)
    ql_mps = math.nan
    try:
        import QuantLib as ql

        m = 2_000 if quick else 100_000
        sub = [a[:m].tolist() for a in (inp["F"], inp["K"], inp["T"], inp["sigma"], inp["cp"])]
        call, put, f = ql.Option.Call, ql.Option.Put, ql.blackFormula

        def loop():
            return [f(call if c > 0 else put, k, F, sg * math.sqrt(t), 1.0)
                    for F, k, t, sg, c in zip(*sub, strict=True)]

        q_secs, _ = best_of(loop, repeat=1)
        ql_mps = throughput(m, q_secs)
    except ImportError:
        pass
    rows = []
    for name in BACKENDS:
        with _backend(name) as available:
            if not available:
                continue
            black_price(*(a[:1000] for a in args))
            secs, _ = best_of(lambda: black_price(*args), repeat=2 if quick else 3)
        ours = throughput(n, secs)
        rows.append(row(f"black_price throughput [{name}]", "M options/s", ours,
                        "naive N(d1)F - N(d2)K (numpy, vectorised)", throughput(n, n_secs),
                        ratio(ours, throughput(n, n_secs)), f"same {n:,} options"))
        if math.isfinite(ql_mps):
            rows.append(row(f"black_price throughput [{name}]", "M options/s", ours, "QuantLib blackFormula (loop)",
                            ql_mps, ratio(ours, ql_mps), f"first {m:,} options, per option"))
    k = 50 if quick else 400
    idx = np.linspace(0, n - 1, k).astype(int)
    ref = np.array([_quad_price(*(a[i] for a in args)) for i in idx])
    naive_rel = np.abs(_naive_price(*(a[idx] for a in args)) / ref - 1)
    for name in BACKENDS:
        with _backend(name) as available:
            if not available:
                continue
            ours_rel = np.abs(black_price(*(a[idx] for a in args)) / ref - 1)
        rows.append(row(f"black_price accuracy (OTM, vs quadrature) [{name}]", "max rel err", float(ours_rel.max()),
                        "naive N(d1)F - N(d2)K", float(naive_rel.max()),
                        ratio(float(ours_rel.max()), float(naive_rel.max()), higher_is_better=False),
                        f"{k} of the options above, prices down to 1e-12 F; scipy quad (expm1 form, epsrel 2e-14)"))
    return rows
