"""Property tests (Hypothesis) of ``core.surface.fit.fit_surface``: SSVI quotes with noise, bad vols,
duplicated strikes, one expiry or one strike; bad arguments."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import FitError, InputError
from core.export import to_json_bytes
from core.surface.fit import SurfaceFit, fit_surface
from tests.hypothesis_budget import counted
from tests.strategies import flat_forwards, iv_quotes, nasty_float


def _check_fit(fr, q):
    assert isinstance(fr, SurfaceFit)
    used = q[q["use"] & np.isfinite(q["iv_mid"]) & (q["iv_mid"] > 0)]
    res = fr.residuals
    assert len(res) <= len(used), "residuals only for used quotes"
    assert np.isfinite(res["iv_fit"]).all() and (res["iv_fit"] > 0).all()
    assert np.isfinite(res["resid_bp"]).all()
    assert res["inside"].dtype == bool
    for k, v in fr.rmse_bp.items():
        assert math.isfinite(v) and v >= 0, (k, v)
    for v in fr.inside_share.values():
        assert 0.0 <= v <= 1.0
    assert set(fr.rmse_bp) <= set(fr.params)
    assert all(isinstance(f, str) for f in fr.failed_expiries)
    T = used["T"].to_numpy(float)
    iv = np.asarray(fr.surface.implied_vol(used["y"].to_numpy(float), T))
    lo, hi = getattr(fr.surface, "T_quoted", (0, np.inf))
    inside_T = (T >= lo * (1 - 1e-9)) & (T <= hi * (1 + 1e-9))
    assert np.isfinite(iv[inside_T]).all() and (iv[inside_T] > 0).all(), "no silent NaN at the quotes"

    to_json_bytes(fr.params)   # JSON-able, as documented


@pytest.mark.slow
@settings(max_examples=min(settings().max_examples, 60))
@given(iv_quotes(), st.sampled_from(["ssvi", "svi", "smooth"]), st.sampled_from([0.0, 0.3, 1.0]))
@counted
def test_fit_surface(qf, method, smoothing):
    q, fwd = qf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fr = fit_surface(q, fwd, method=method, smoothing=smoothing)
        except FitError as exc:
            assert str(exc)
            return
    _check_fit(fr, q)


def _slice_quotes(T, ys, ivs):
    fwd = flat_forwards(100.0, 0.02, 0.0, [T])
    F = float(fwd.F(T))
    ys, ivs = np.asarray(ys, float), np.asarray(ivs, float)
    q = pd.DataFrame({"expiry": pd.Timestamp("2026-06-15"), "T": T, "strike": F * np.exp(ys), "y": ys,
                      "iv_mid": ivs, "iv_bid": ivs - 0.001, "iv_ask": ivs + 0.001})
    return q, fwd


@pytest.mark.parametrize("smoothing", [0.3, 1.0])
def test_fit_surface_ssvi_one_expiry_smoothing(smoothing):
    ys = [-0.6, -0.5, -0.48, 0.0, 0.78]
    q, fwd = _slice_quotes(1.0, ys, [0.2 + 0.02 * y * y for y in ys])
    fr = fit_surface(q, fwd, method="ssvi", smoothing=smoothing)   # five quotes: a fit, not an error
    _check_fit(fr, q.assign(use=True))


@pytest.mark.parametrize("smoothing, outlier", [(0.0, 20.0), (0.3, 20.0), (1.0, 1e-8)])
def test_fit_surface_smooth_outlier_vol(smoothing, outlier):
    ys = [-0.25, -0.17, 0.0, 0.42, 0.48, 0.58]
    ivs = [0.22 - 0.05 * y for y in ys[:-1]] + [outlier]
    q, fwd = _slice_quotes(5.0, ys, ivs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fr = fit_surface(q, fwd, method="smooth", smoothing=smoothing)
    assert (fr.residuals["iv_fit"] > 0.05).all()


@given(st.sampled_from(["ssvi", "SSVI", "", None, 3]), st.one_of(nasty_float, st.text(max_size=3)),
       st.sampled_from(["vega-spread", "nope"]))
@counted
def test_fit_surface_bad_arguments(method, smoothing, weights):
    q = pd.DataFrame({"expiry": [pd.Timestamp("2026-09-18")] * 5, "T": 0.25, "strike": [90.0, 95, 100, 105, 110],
                      "y": np.log(np.array([90.0, 95, 100, 105, 110]) / 100), "iv_mid": 0.2})
    ok_args = method == "ssvi" and isinstance(smoothing, float) and 0 <= smoothing <= 1 and weights == "vega-spread"
    if ok_args:
        return
    with pytest.raises(InputError):
        fit_surface(q, flat_forwards(), method=method, smoothing=smoothing, weights=weights)
    with pytest.raises(InputError):
        fit_surface(q.drop(columns=["iv_mid"]), flat_forwards())
