"""fit_surface on the demo market (generated from SSVI): recovery, bid/ask, no arbitrage, the result contract,
the T-interpolation, and degenerate inputs (Hypothesis)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import FitError, InputError
from core.forwards import Forwards
from core.surface.fit import SurfaceFit, fit_surface
from core.surface.interp import MonotoneThetaCurve, monotone_hermite
from core.surface.ssvi import ThetaParametric
from tests.helpers import dense_arbitrage

METHODS = ("ssvi", "svi", "smooth")


def demo_quotes(seed: int = 7):
    """``core.demo.demo_fit_quotes``: the demo as a fit-ready frame on its exact forwards."""
    from core.demo import demo_fit_quotes

    q, fwd, ch = demo_fit_quotes(seed)
    return q, fwd, ch


@pytest.fixture(scope="module")
def demo():
    q, fwd, ch = demo_quotes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # a clean market must not make the optimisers complain
        fits = {m: fit_surface(q, fwd, method=m) for m in METHODS}
    return q, fwd, ch, fits


def test_ssvi_recovers_the_generating_parameters(demo):
    q, fwd, ch, fits = demo
    f = fits["ssvi"]
    true = ch.meta["model"]["surface"]
    gp = f.global_params
    # tolerances: the mids are off the true vols by up to the (random, asymmetric) half-spread
    assert gp["rho"] == pytest.approx(true.rho, abs=0.01)
    assert gp["eta"] == pytest.approx(true.eta, abs=0.02)
    assert gp["gamma"] == pytest.approx(true.gamma, abs=0.01)
    T = np.array(gp["T"])
    assert np.allclose(gp["theta"], true.theta_curve.theta(T), rtol=0.01)
    assert gp["eta"] * (1 + abs(gp["rho"])) <= 2 and 0 < gp["gamma"] <= 0.5


@pytest.mark.parametrize("method", METHODS)
def test_every_fitted_vol_inside_bid_ask_on_the_demo(demo, method):
    f = demo[3][method]
    assert f.residuals["inside"].all(), f.residuals.loc[~f.residuals["inside"]].head()
    assert set(f.rmse_bp) == set(f.inside_share) == set(f.params)
    assert max(f.rmse_bp.values()) < 20.0 and not f.failed_expiries


@pytest.mark.parametrize("method", METHODS)
def test_no_static_arbitrage_on_the_demo(demo, method):
    f = demo[3][method]
    assert f.arbitrage["butterfly"] == 0 and f.arbitrage["calendar"] == 0
    g_min, wT_min = dense_arbitrage(f.surface, sorted(v["T"] for v in f.params.values()))
    assert g_min >= 0 and wT_min >= 0


@pytest.mark.parametrize("method", METHODS)
def test_derivatives_are_analytic_and_right(demo, method):
    S = demo[3][method].surface
    y = np.array([-0.9, -0.3, -0.05, 0.0, 0.1, 0.4, 0.9])
    T = np.array([0.005, 0.03, 0.045, 0.3, 1.0, 2.0, 3.0])        # before, between and after the expiries
    d = S.derivatives(y, T)
    h = 1e-5
    assert np.allclose(d.w_y, (S.w(y + h, T) - S.w(y - h, T)) / (2 * h), atol=1e-8)
    assert np.allclose(d.w_yy, (S.w(y + h, T) - 2 * S.w(y, T) + S.w(y - h, T)) / h**2, rtol=1e-4, atol=1e-4)
    assert np.allclose(d.w_T, (S.w(y, T + h) - S.w(y, T - h)) / (2 * h), rtol=1e-5, atol=1e-8)
    assert np.all(d.w_T >= 0)


def test_result_contract(demo):
    q, fwd, _, fits = demo
    f = fits["svi"]
    assert isinstance(f, SurfaceFit)
    cols = ["expiry", "T", "strike", "cp", "y", "iv_mid", "iv_bid", "iv_ask", "iv_fit", "resid_bp", "inside"]
    assert all(c in f.residuals.columns for c in cols)
    r = f.residuals
    assert len(r) == int(q["use"].sum())
    assert np.allclose(r["resid_bp"], (r["iv_fit"] - r["iv_mid"]) * 1e4)
    lo = np.where(np.isfinite(r["iv_bid"]), r["iv_bid"], 0.0)
    assert ((r["inside"]) == ((r["iv_fit"] >= lo - 1e-12) & (r["iv_fit"] <= r["iv_ask"] + 1e-12))).all()
    json.dumps(f.params)
    json.dumps(fits["ssvi"].params)
    json.dumps(fits["smooth"].params)
    assert f.seconds > 0 and f.method == "svi" and f.smoothing == 0.0
    lo, hi = f.surface.y_quoted(np.array(f.surface.T_nodes))
    assert np.allclose(lo, [r.loc[r["T"] == v["T"], "y"].min() for v in f.params.values()])
    K = r["strike"].to_numpy()[:5]
    T = r["T"].to_numpy()[:5]
    assert np.allclose(f.implied_vol_at(K, T), r["iv_fit"].to_numpy()[:5], atol=1e-12)


def test_smoothing_maps_to_each_method(demo):
    q, fwd, _, fits = demo
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ssvi1 = fit_surface(q, fwd, method="ssvi", smoothing=1.0)
        svi1 = fit_surface(q, fwd, method="svi", smoothing=1.0)
        smooth1 = fit_surface(q, fwd, method="smooth", smoothing=1.0)
    assert isinstance(ssvi1.surface.theta_curve, ThetaParametric)     # the parametric term structure itself
    y = np.linspace(-0.3, 0.2, 11)
    for k, v in svi1.params.items():                                   # the SSVI pre-fit slices
        assert v["a"] == pytest.approx(ssvi1.params[k]["svi"]["a"], rel=1e-9)
    assert np.mean(list(smooth1.rmse_bp.values())) > np.mean(list(fits["smooth"].rmse_bp.values()))
    assert np.all(np.isfinite(smooth1.surface.w(y, 0.5)))


def test_weights_options(demo):
    q, fwd, _, _ = demo
    for wts in ("vega", "uniform"):
        f = fit_surface(q, fwd, method="ssvi", weights=wts)
        assert f.residuals["inside"].mean() > 0.95


def test_bad_arguments_and_too_few_quotes():
    q, fwd, _ = demo_quotes()
    with pytest.raises(InputError):
        fit_surface(q, fwd, method="heston")
    with pytest.raises(InputError):
        fit_surface(q, fwd, smoothing=1.5)
    with pytest.raises(InputError):
        fit_surface(q.drop(columns=["iv_mid"]), fwd)
    with pytest.raises(InputError):
        fit_surface("quotes", fwd)
    tiny = q[q["use"]].head(4)
    with pytest.raises(FitError, match="usable quotes"):
        fit_surface(tiny, fwd)


def test_a_thin_expiry_is_reported_and_skipped():
    q, fwd, _ = demo_quotes()
    exps = sorted(q["expiry"].unique())
    thin = exps[4]
    keep = q["use"] & ((q["expiry"] != thin) | (q.groupby("expiry").cumcount() < 6))
    q = q.assign(use=keep)
    q.loc[(q["expiry"] == thin) & q["use"], "use"] = [True, True] + [False] * (int(((q["expiry"] == thin) & q["use"]).sum()) - 2)
    f = fit_surface(q, fwd, method="svi")
    key = pd.Timestamp(thin).strftime("%Y-%m-%d")
    assert any(s.startswith(key) for s in f.failed_expiries)
    assert key not in f.params and len(f.params) == len(exps) - 1
    assert f.residuals["iv_fit"].notna().all()                       # its quotes get interpolated vols


def test_monotone_hermite_is_monotone_c1_and_exact_at_nodes():
    rng = np.random.default_rng(3)
    Tn = np.sort(rng.uniform(0.02, 3.0, 6))
    V = np.cumsum(rng.exponential(0.01, (6, 40)) * (rng.uniform(size=(6, 40)) > 0.3), axis=0) + 1e-4
    z = np.zeros_like(V)
    T = np.linspace(0.0, 4.0, 2001)
    w, _, _, wT = monotone_hermite(Tn, V[:, :1] * np.ones((1, T.size)), z[:, :1] * np.ones((1, T.size)),
                                   z[:, :1] * np.ones((1, T.size)), T)
    assert np.all(np.diff(w) >= -1e-15) and np.all(wT >= 0) and w[0] == 0.0
    for k, Tk in enumerate(Tn):
        col = np.ones((1, 3))
        wk, _, _, d = monotone_hermite(Tn, V[:, :1] * col, z[:, :1] * col, z[:, :1] * col, np.array([Tk - 1e-9, Tk, Tk + 1e-9]))
        assert wk[1] == pytest.approx(V[k, 0], rel=1e-12)
        assert d[0] == pytest.approx(d[2], rel=1e-5, abs=1e-9)           # C1 across the node
    # proportional node values (constant vol at fixed y) interpolate exactly linearly
    th = MonotoneThetaCurve(tuple(Tn), tuple(0.04 * Tn))
    assert np.allclose(th.theta(T), 0.04 * T) and np.allclose(th.dtheta(T), 0.04)


@settings(max_examples=25)
@given(
    method=st.sampled_from(METHODS),
    n_exp=st.integers(1, 3),
    n_k=st.integers(3, 9),
    level=st.floats(0.03, 4.0),
    skew=st.floats(-0.5, 0.5),
    side=st.sampled_from(["both", "puts", "calls"]),
    nan_every=st.integers(0, 4),
)
def test_degenerate_inputs_fit_or_fail_clearly(method, n_exp, n_k, level, skew, side, nan_every):
    """One expiry, three strikes, one side only, flat or huge vols, NaNs: a fit or a clear error."""
    rows = []
    Ts = [0.05, 0.3, 1.0][:n_exp]
    for T in Ts:
        lo, hi = {"both": (-0.3, 0.2), "puts": (-0.4, -0.01), "calls": (0.01, 0.3)}[side]
        y = np.linspace(lo, hi, n_k) * np.sqrt(max(T, 0.05) / 0.3) * max(level, 0.2) / 0.2
        iv = level * (1 + skew * y)
        iv = np.where(iv > 0.01, iv, 0.01)
        for i, (yy, v) in enumerate(zip(y, iv, strict=False)):
            rows.append({"expiry": pd.Timestamp("2030-01-01") + pd.Timedelta(days=int(T * 365)), "T": T,
                         "strike": 100 * np.exp(yy), "cp": 1 if yy >= 0 else -1, "y": yy,
                         "iv_mid": np.nan if (nan_every and i % nan_every == 1) else v,
                         "iv_bid": v * 0.98, "iv_ask": v * 1.02, "use": True})
    q = pd.DataFrame(rows)
    fwd = Forwards.from_rates(100.0, 0.0, 0.0, Ts)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f = fit_surface(q, fwd, method=method)
    except (FitError, InputError) as exc:
        assert str(exc)
        return
    assert np.all(np.isfinite(f.residuals["iv_fit"]))
    d = f.surface.derivatives(np.linspace(-0.5, 0.5, 11), 0.5)
    assert np.all(np.isfinite(d.w)) and np.all(d.w > 0)
