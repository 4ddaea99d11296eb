"""Property tests (Hypothesis) of ``core.black``: prices and vegas of arrays of any shape of nasty
floats, the price/implied-vol round trip, implied-vol reasons, ``quote_implied_vols``."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.black import IV_REASONS, black_price, black_vega, implied_vol, quote_implied_vols
from core.cleaning import clean_quotes
from core.errors import InputError
from tests.hypothesis_budget import counted
from tests.strategies import flat_forwards, nasty_array, quote_rows, quotes_of


@given(nasty_array, nasty_array, nasty_array, nasty_array, st.sampled_from([1, -1, 0, np.nan]), st.one_of(st.just(1.0), nasty_array))
@counted
def test_black_price_any_input(F, K, T, sigma, cp, D):
    try:
        shape = np.broadcast_shapes(F.shape, K.shape, T.shape, sigma.shape, np.shape(D))
    except ValueError:
        with pytest.raises((ValueError, InputError)):
            black_price(F, K, T, sigma, cp, D)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # overflow in the extremes is allowed, a crash is not
        p = np.asarray(black_price(F, K, T, sigma, cp, D))
        v = np.asarray(black_vega(F, K, T, sigma, D))
    assert np.shape(p) == shape and np.shape(v) == shape
    Fb, Kb, Tb, sb, Db = np.broadcast_arrays(F, K, T, sigma, D)
    sane = ((Fb > 1e-100) & (Fb < 1e100) & (Kb > 1e-100) & (Kb < 1e100) & (Tb >= 0) & (Tb < 1e3)
            & (sb >= 0) & (sb < 1e3) & (Db > 0) & (Db <= 1) & np.isfinite(np.float64(cp)) & (np.float64(cp) != 0))
    assert np.isfinite(p[sane]).all(), "finite, positive inputs give a finite price"
    assert (p[sane] >= -1e-12 * np.maximum(Fb, Kb)[sane]).all()


@given(st.floats(1e-4, 1e6), st.floats(-3.0, 3.0), st.floats(1e-4, 30.0), st.floats(0.01, 4.0),
       st.sampled_from([1, -1]), st.floats(0.05, 1.0))
@counted
def test_black_bounds_and_iv_round_trip(F, y, T, sigma, cp, D):
    K = F * math.exp(y)
    p = float(black_price(F, K, T, sigma, cp, D))
    intrinsic = D * max(cp * (F - K), 0.0)
    upper = D * (F if cp > 0 else K)
    assert np.isfinite(p)
    assert intrinsic - 1e-12 * upper <= p <= upper * (1 + 1e-12)
    iv, reason = implied_vol(p, F, K, T, cp, D, return_reason=True)
    iv, reason = float(iv), str(reason)
    assert (reason == "ok") == np.isfinite(iv)
    if reason == "ok":
        assert iv > 0
        # the price round trip always holds; the vol one where vega makes the vol identifiable
        assert abs(float(black_price(F, K, T, iv, cp, D)) - p) <= 1e-9 * upper + 1e-9 * p
        if float(black_vega(F, K, T, sigma, D)) > 1e-6 * upper and p > intrinsic + 1e-8 * upper:
            assert abs(iv - sigma) < 1e-5
    else:
        # NaN only where the price really sits on a bound (time value lost in float rounding)
        assert reason in ("below_intrinsic", "above_upper_bound", "non_positive")
        assert p - intrinsic <= 1e-7 * upper or upper - p <= 1e-7 * upper or p <= 0


@given(nasty_array, nasty_array, nasty_array, nasty_array, st.sampled_from([1, -1, 0, 2, np.nan]))
@counted
def test_implied_vol_reasons_consistent(price, F, K, T, cp):
    try:
        np.broadcast_shapes(price.shape, F.shape, K.shape, T.shape)
    except ValueError:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        iv, reason = implied_vol(price, F, K, T, cp, return_reason=True)
    iv = np.asarray(iv, float)
    reason = np.asarray(reason)
    assert iv.shape == reason.shape
    assert set(reason.ravel().tolist()) <= set(IV_REASONS)
    ok = reason == "ok"
    assert np.isfinite(iv[ok]).all() and (iv[ok] > 0).all()
    assert np.isnan(iv[~ok]).all(), "NaN exactly where the reason is not ok"


@given(quote_rows(max_rows=20), st.floats(1.0, 1e4))
@counted
def test_quote_implied_vols(df, spot):
    q = clean_quotes(quotes_of(df))
    out = quote_implied_vols(q, flat_forwards(spot))
    assert len(out) == len(q)
    ivm = out["iv_mid"].to_numpy(float)
    reason = out["iv_reason"].astype(str).to_numpy()
    assert set(reason) <= set(IV_REASONS) | {"no_quote"}
    ok = reason == "ok"
    assert np.isfinite(ivm[ok]).all() and (ivm[ok] > 0).all()
    assert np.isnan(ivm[~ok]).all(), "a vol exactly where the reason is ok"
    for side in ("iv_bid", "iv_ask"):
        v = out[side].to_numpy(float)
        assert np.isnan(v[np.isfinite(v)]).sum() == 0 and (v[np.isfinite(v)] > 0).all()
    both = np.isfinite(out["iv_bid"]) & np.isfinite(out["iv_ask"]) & (out["bid"] <= out["ask"])
    assert (out.loc[both, "iv_bid"] <= out.loc[both, "iv_ask"] + 1e-9).all(), "vol is increasing in price"
