"""Command line: ``python -m core quotes|calibrate|price|risk ...`` (README, "Command line").

Errors go to stderr as one plain sentence with a non-zero exit code (2: bad input or data,
3: unexpected); no traceback unless ``--debug``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from core.errors import DupireDeskError, InputError
from core.export import jsonable, safe_csv
from core.localvol import DEFAULT_CLIP
from core.pipeline import (
    METHODS,
    Settings,
    calibrate,
    forwards_frame,
    open_source,
    prepare,
    quotes_frame,
    summary_dict,
    write_outputs,
)
from core.pricing.products import BARRIER_KINDS, Asian, Barrier, Vanilla
from core.pricing.risk import N_EXPIRY, load_for_risk, risk_report
from core.pricing.saved import price_from_calibration


def _clip(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--clip takes LO,HI in vol units, e.g. 0.05,1.5; got {text!r}") from None
    return lo, hi


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="+",
                   help="demo | demo:SEED | yahoo:TICKER | a file (CBOE, yfinance-style or tidy CSV, snapshot) | "
                        "several files or a folder of one underlying and quote day (e.g. one CBOE download per expiry)")
    p.add_argument("--expiries", nargs="+", metavar="YYYY-MM-DD", help="expiries to use (default: all usable)")
    p.add_argument("--asof", help="quote time for files that lack one, e.g. '2026-11-20 15:30' (New York)")
    p.add_argument("--spot", type=float, help="spot for files that lack one (else put-call parity)")
    p.add_argument("--timeout", type=float, default=8.0, help="seconds before a live download gives up")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): the CLI promises one sentence per error."""

    def error(self, message):  # noqa: D102 - argparse's hook
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m core``."""
    ap = _Parser(prog="python -m core", description="Dupire Desk: quotes to local vol.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    q = sub.add_parser("quotes", help="load, clean and write quotes, forwards and a summary")
    _common(q)
    c = sub.add_parser("calibrate", help="the whole pipeline: surface fit, local vol, arbitrage, round trip")
    _common(c)
    c.add_argument("--method", default=Settings().method, choices=list(METHODS))
    c.add_argument("--smoothing", type=float, default=0.0, help="0 (follow quotes) .. 1 (strongly regularised)")
    c.add_argument("--clip", type=_clip, default=DEFAULT_CLIP,
                   help=f"local-vol band LO,HI (vol units, default {DEFAULT_CLIP[0]:g},{DEFAULT_CLIP[1]:g})")
    c.add_argument("--r", type=float, help="override the rate (continuous, e.g. 0.04)")
    c.add_argument("--q", type=float, help="override the dividend yield (continuous)")
    c.add_argument("--grid", default="100x50", help="local-vol grid STRIKESxEXPIRIES (default 100x50)")
    c.add_argument("--reprice", action="store_true", help="round trip by the forward Dupire PDE (repricing.csv); for an American chain also the "
                        "American round trip by the backward PDE with early exercise")
    p = sub.add_parser("price", help="price an exotic under a saved calibration (an output folder of calibrate)")
    p.add_argument("calibration", help="folder written by `calibrate`")
    p.add_argument("--type", required=True, choices=["call", "put", "barrier", "asian"])
    p.add_argument("--strike", type=float, required=True)
    p.add_argument("--expiry", type=float, required=True, help="years")
    p.add_argument("--cp", default="call", choices=["call", "put"])
    p.add_argument("--barrier", type=float, help="barrier level (for --type barrier)")
    p.add_argument("--barrier-type", default="up-and-out", choices=list(BARRIER_KINDS))
    p.add_argument("--monitoring", default="continuous", choices=["continuous", "discrete"])
    p.add_argument("--fixings", type=int, default=12, help="Asian fixings (equally spaced)")
    p.add_argument("--paths", type=int, default=100_000)
    p.add_argument("--steps", type=int, default=252)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", help="write the result as JSON here (else stdout only)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    r = sub.add_parser("risk", help="Greeks, parallel and bucketed vega under a saved calibration (risk.json, "
                                    "vega_buckets.csv)")
    r.add_argument("calibration", help="folder written by `calibrate` (its quotes.csv is refitted for the vegas)")
    r.add_argument("--type", required=True, choices=["call", "put", "barrier", "asian"])
    r.add_argument("--strike", type=float, required=True)
    r.add_argument("--expiry", type=float, required=True, help="years")
    r.add_argument("--cp", default="call", choices=["call", "put"], help="call or put (barrier, asian)")
    r.add_argument("--american", action="store_true", help="American exercise (call / put)")
    r.add_argument("--barrier", type=float, help="barrier level (for --type barrier)")
    r.add_argument("--kind", default="up-and-out", choices=list(BARRIER_KINDS), help="barrier kind")
    r.add_argument("--rebate", type=float, default=0.0, help="barrier rebate (cash)")
    r.add_argument("--fixings", type=int, default=12, help="Asian fixings (equally spaced)")
    r.add_argument("--paths", type=int, default=40_000, help="Monte Carlo paths (Asian)")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--expiry-buckets", type=int, default=N_EXPIRY, help="expiry buckets of the vega grid")
    r.add_argument("--n-x", type=int, default=301, help="PDE space nodes")
    r.add_argument("--n-t", type=int, default=200, help="PDE time steps")
    r.add_argument("--out", required=True, help="output folder (created if missing)")
    r.add_argument("--debug", action="store_true", help="show tracebacks")
    return ap


def _cmd_quotes(a) -> dict:
    chain = open_source(a.source, spot=a.spot, asof=a.asof, expiries=a.expiries, timeout=a.timeout)
    settings = Settings()
    prep = prepare(chain, settings)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quotes.csv").write_bytes(safe_csv(quotes_frame(prep)))
    (out / "forwards.csv").write_bytes(safe_csv(forwards_frame(prep)))
    summ = summary_dict(chain, prep, seconds=prep.seconds)
    (out / "summary.json").write_text(json.dumps(summ, indent=2))
    return {"quotes": summ["n_quotes"], "used": summ["n_used"], "excluded": summ["excluded"], "out": str(out)}


def _cmd_calibrate(a) -> dict:
    try:
        nk, nt = (int(v) for v in a.grid.lower().split("x"))
    except ValueError:
        raise InputError(f"--grid takes STRIKESxEXPIRIES like 100x50, got {a.grid!r}") from None
    chain = open_source(a.source, spot=a.spot, asof=a.asof, expiries=a.expiries, timeout=a.timeout)
    settings = Settings(method=a.method, smoothing=a.smoothing, clip=a.clip, r=a.r, q=a.q,
                        n_strikes=nk, n_expiries=nt)
    cal = calibrate(chain, settings, with_repricing=a.reprice)
    paths = write_outputs(cal, a.out)
    res = {"method": a.method, "files": sorted(paths), "seconds": {k: round(v, 4) for k, v in cal.seconds.items()}}
    if cal.repricing is not None:
        res["repricing"] = {"max_bp": cal.repricing.max_bp, "mean_bp": cal.repricing.mean_bp,
                            "inside_bid_ask": cal.repricing.inside_bid_ask}
    if cal.american_repricing is not None:
        res["american_repricing"] = cal.american_repricing.summary()
    return res


def _cmd_price(a) -> dict:
    res = price_from_calibration(a.calibration, kind=a.type, strike=a.strike, expiry=a.expiry, cp=a.cp,
                                 barrier=a.barrier, barrier_type=a.barrier_type, monitoring=a.monitoring,
                                 fixings=a.fixings, n_paths=a.paths, n_steps=a.steps, seed=a.seed)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2))
    return res


def _product(a):
    """The product of ``python -m core risk`` from its arguments."""
    cp = 1 if a.cp == "call" else -1
    if a.type in ("call", "put"):
        return Vanilla(strike=a.strike, T=a.expiry, cp=1 if a.type == "call" else -1, american=a.american)
    if a.american:
        raise InputError("--american applies to --type call or put only")
    if a.type == "barrier":
        if a.barrier is None:
            raise InputError("--barrier LEVEL is needed for --type barrier")
        return Barrier(strike=a.strike, T=a.expiry, barrier=a.barrier, kind=a.kind, cp=cp, rebate=a.rebate)
    return Asian(strike=a.strike, T=a.expiry, n_fixings=a.fixings, cp=cp)


def _cmd_risk(a) -> dict:
    product = _product(a)
    fit, forwards, clip, summary = load_for_risk(a.calibration)
    rep = risk_report(fit, forwards, product, clip=clip, grid={"n_x": a.n_x, "n_t": a.n_t},
                      mc={"n_paths": a.paths, "seed": a.seed}, n_expiry=a.expiry_buckets)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res = rep.to_dict()
    res["calibration"] = {k: summary.get(k) for k in ("source", "underlying", "asof", "method", "spot")}
    (out / "risk.json").write_text(json.dumps(jsonable(res), indent=2))
    (out / "vega_buckets.csv").write_bytes(safe_csv(rep.vega.frame()))
    return {"price": res["price"], "delta": res["delta"], "gamma": res["gamma"], "vega": res["vega"],
            "seconds": round(rep.seconds, 3), "files": ["risk.json", "vega_buckets.csv"], "out": str(out)}


def main(argv=None) -> int:
    """Entry point; returns the exit code."""
    a = build_parser().parse_args(argv)
    # yfinance logs its own retries to stderr; the CLI promises one line per error
    for name in ("yfinance", "peewee", "curl_cffi", "urllib3"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    cmd = {"quotes": _cmd_quotes, "calibrate": _cmd_calibrate, "price": _cmd_price, "risk": _cmd_risk}[a.command]
    try:
        res = cmd(a)
    except (DupireDeskError, ValueError, OSError) as exc:
        if a.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the CLI promises no traceback
        if a.debug:
            raise
        print(f"unexpected error ({type(exc).__name__}): {exc}. Re-run with --debug for details.", file=sys.stderr)
        return 3
    print(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
