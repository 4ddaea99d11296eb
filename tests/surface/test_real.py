"""Surface fits on real data: SPX quotes of 24 Jan 2011 (through the pipeline) and QuantLib's
Andreasen-Huge example vols. Per-expiry RMSE (vol bp) and share inside bid/ask are printed (``-s``)."""
from __future__ import annotations

import warnings

import pandas as pd
import pytest

from core.surface.fit import fit_surface
from tests.helpers import ah_quotes, dense_arbitrage

METHODS = ("ssvi", "svi", "smooth")


@pytest.fixture(scope="module")
def spx(shared_data):
    pipeline = pytest.importorskip("core.pipeline")
    cboe = pytest.importorskip("core.sources.cboe")
    chain = cboe.read_cboe(shared_data / "spx_20110124" / "SPX-Options-24jan2011.csv")
    prep = pipeline.prepare(chain, pipeline.Settings())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits = {m: fit_surface(prep.quotes, prep.forwards, method=m) for m in METHODS}
    table = pd.DataFrame({(m, c): getattr(fits[m], a) for m in METHODS
                          for c, a in (("rmse_bp", "rmse_bp"), ("inside", "inside_share"))}).round(3)
    print("\nSPX 24 Jan 2011, per expiry: RMSE (vol bp) and share inside bid/ask\n" + table.to_string())
    for m in METHODS:
        r = fits[m].residuals
        print(f"{m}: {fits[m].seconds:.2f} s, all quotes inside {r['inside'].mean():.1%}, "
              f"arbitrage {fits[m].arbitrage['butterfly']}+{fits[m].arbitrage['calendar']} grid points")
    return prep, fits


@pytest.mark.slow
def test_spx_svi_keeps_liquid_otm_quotes_inside_bid_ask(spx):
    prep, fits = spx
    used = prep.quotes[prep.quotes["use"].astype(bool)]
    r = fits["svi"].residuals
    assert len(r) == len(used)
    # liquid: the pipeline's out-of-the-money two-sided quotes with a bid of at least 0.50 index points
    # (not the tick-priced far wings)
    liquid = used["bid"].to_numpy() >= 0.5
    assert liquid.sum() > 500
    assert r["inside"].to_numpy()[liquid].mean() >= 0.90     # issue 4
    # with the spline correction (plain SVI: 95%); corrections that would leave calendar arbitrage between
    # expiries are removed, which costs a little (measured 96.6%)
    assert r["inside"].mean() >= 0.96


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ssvi", "svi"])
def test_spx_fits_leave_no_static_arbitrage(spx, method):
    f = spx[1][method]
    assert f.arbitrage["butterfly"] == 0 and f.arbitrage["calendar"] == 0
    g_min, wT_min = dense_arbitrage(f.surface, sorted(v["T"] for v in f.params.values()))
    assert g_min >= 0 and wT_min >= 0


@pytest.mark.slow
def test_spx_smooth_reports_what_arbitrage_it_keeps(spx):
    f = spx[1]["smooth"]
    assert f.residuals["inside"].mean() >= 0.95
    if f.arbitrage["butterfly"]:
        assert any("butterfly arbitrage" in w for w in f.warnings)
    if f.arbitrage["calendar"]:
        assert any("calendar arbitrage" in w for w in f.warnings)


def test_andreasen_huge_smooth_close_to_quantlibs_tolerance(shared_data):
    """The smooth method on Andreasen-Huge: arbitrage-free first (the 4.8y/5.8y pair of slices cannot be
    fitted within 15 bp without butterfly arbitrage by this method: measured 17.4 bp max, 1.0 bp mean).
    The issue's 15 bp / 3.5 bp requirement is for the SVI method (test below)."""
    q, fwd = ah_quotes(shared_data)
    f = fit_surface(q, fwd, method="smooth")
    err = f.residuals["resid_bp"].abs()
    print(f"\nAndreasen-Huge, smooth: max {err.max():.2f} bp, mean {err.mean():.2f} bp")
    assert err.max() <= 20.0 and err.mean() <= 3.5
    assert f.arbitrage["butterfly"] == 0 and f.arbitrage["calendar"] == 0


def test_andreasen_huge_svi_meets_quantlibs_tolerance(shared_data):
    """MUST HOLD (issue 4): the SVI method (SVI backbone + spline correction) at QuantLib's tolerance for this
    data, max 15 bp and mean 3.5 bp, with no static arbitrage in the fitted surface, checked densely."""
    q, fwd = ah_quotes(shared_data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no optimiser trouble on this data
        f = fit_surface(q, fwd, method="svi")
    err = f.residuals["resid_bp"].abs()
    print(f"\nAndreasen-Huge, SVI: max {err.max():.2f} bp, mean {err.mean():.2f} bp, {f.seconds:.2f} s")
    assert err.max() <= 15.0 and err.mean() <= 3.5
    assert f.arbitrage["butterfly"] == 0 and f.arbitrage["calendar"] == 0
    g_min, wT_min = dense_arbitrage(f.surface, sorted(v["T"] for v in f.params.values()))
    assert g_min >= 0 and wT_min >= 0
    # the convex backbone alone cannot (next test): the correction is doing the work
    assert sum("correction_coef" in v for v in f.params.values()) >= 1


def test_andreasen_huge_pure_svi_misses(shared_data):
    """Strongly regularised (smoothing near 1, the correction flattened away) SVI misses by far more: the
    tolerance above is the correction's doing, and the smoothing control reaches it."""
    q, fwd = ah_quotes(shared_data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = fit_surface(q, fwd, method="svi", smoothing=0.9)
    assert f.residuals["resid_bp"].abs().max() > 30.0


def test_no_convex_slice_fits_the_andreasen_huge_short_expiry_within_15bp(shared_data):
    """Three consecutive quotes of the 9-day slice (y = 0.078, 0.095, 0.111) are concave in total variance.
    For convex w the middle value is at most the chord: moving the three vols by at most e each closes the
    gap only if e >= gap / (2 * 2 sigma T) (dw = 2 sigma T dsigma), which is above 15 bp."""
    q, _ = ah_quotes(shared_data)
    s = q[q["T"] == q["T"].min()].sort_values("y")
    y, iv, T = s["y"].to_numpy(), s["iv_mid"].to_numpy(), float(s["T"].iloc[0])
    w = iv * iv * T
    worst = 0.0
    for i in range(1, len(y) - 1):
        lam = (y[i] - y[i - 1]) / (y[i + 1] - y[i - 1])
        gap = w[i] - ((1 - lam) * w[i - 1] + lam * w[i + 1])      # > 0: concave
        # the chord moves by at most e' (both ends up by e'), the middle down by e': 2 e' >= gap
        worst = max(worst, gap / 2 / (2 * iv[i] * T) * 1e4)
    assert worst > 15.0
