"""Property tests (Hypothesis) of ``core.localvol.local_vol_grid``: nasty axes, clip bands and methods."""
from __future__ import annotations

import warnings

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from core.errors import InputError
from core.localvol import FLAGS, local_vol_grid
from tests.hypothesis_budget import counted
from tests.strategies import T_axis, flat_forwards, ssvi_model, strike_axis


@given(strike_axis, T_axis, st.tuples(st.floats(0.0, 0.5), st.floats(0.0, 5.0)) | st.sampled_from([(0.3, 0.1), (np.nan, 1.0), (0.1,)]),
       st.sampled_from(["gatheral", "price-fd", "price-spline", "other"]),
       st.floats(-0.9, 0.0), st.floats(0.1, 1.5))
@counted
def test_local_vol_grid(K, T, clip, method, rho, eta):
    K_arr, T_arr = np.asarray(K, float), np.asarray(T, float)
    valid_axis = (lambda a: a.size > 0 and np.all(np.isfinite(a)) and np.all(a > 0) and np.all(np.diff(a) > 0))
    clip_ok = len(clip) == 2 and 0 <= clip[0] < clip[1]
    ok = valid_axis(K_arr) and valid_axis(T_arr) and clip_ok and method != "other"
    # the price methods difference the grid itself: they document a minimum of 2 expiries x 3 strikes
    small_for_prices = method.startswith("price") and (T_arr.size < 2 or K_arr.size < 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = local_vol_grid(ssvi_model(rho, eta), flat_forwards(), K, T, clip=clip, method=method)
        except InputError as exc:
            assert not ok or small_for_prices, f"valid arguments refused: {exc}"
            return
    assert ok, "invalid arguments accepted"
    nT, nK = len(T_arr), len(K_arr)
    lo, hi = clip
    for name in ("y", "iv", "local_vol", "local_vol_raw") + FLAGS:
        assert getattr(res, name).shape == (nT, nK), name
    lv, raw = res.local_vol, res.local_vol_raw
    assert np.isfinite(lv).all(), "the clipped local vol is finite everywhere (documented)"
    assert (lv >= lo - 1e-12).all() and (lv <= hi + 1e-12).all()
    fin = np.isfinite(raw)
    assert (raw[fin] >= 0).all()
    np.testing.assert_array_equal(res.clipped_low, fin & (raw < lo))
    np.testing.assert_array_equal(res.clipped_high, fin & (raw > hi))
    inside = fin & (raw >= lo) & (raw <= hi)
    np.testing.assert_allclose(lv[inside], raw[inside])
    assert res.counts["cells"] == nT * nK
    for f in FLAGS:
        assert res.counts[f] == int(getattr(res, f).sum())
    assert res.counts["clipped"] == int((res.clipped_low | res.clipped_high).sum())
    frame = res.to_frame()
    assert len(frame) == nT * nK
    sig = res.interpolator()(np.asarray(K_arr), float(T_arr[0]))
    assert np.isfinite(sig).all()
