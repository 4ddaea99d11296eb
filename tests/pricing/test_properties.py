"""Property tests (Hypothesis) of ``core.pricing``: the forward Dupire PDE, Monte Carlo under flat
vol, barrier and Asian options on hostile arguments."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.black import black_price
from core.errors import InputError
from core.export import to_json_bytes
from core.localvol import constant_local_vol
from core.pricing.exotics import price_asian, price_barrier
from core.pricing.mc import mc_european
from core.pricing.pde import forward_dupire
from tests.hypothesis_budget import counted
from tests.strategies import flat_forwards


@settings(max_examples=min(settings().max_examples, 40))
@given(st.lists(st.one_of(st.floats(0.01, 3.0), st.sampled_from([0.0, -1.0, np.nan, np.inf, -np.inf])), min_size=0, max_size=4),
       st.floats(0.05, 0.8), st.sampled_from([(41, 8), (61, 12)]))
@counted
def test_forward_dupire_pde(expiries, sigma, grid):
    fwd = flat_forwards()
    n_x, n_t = grid
    e = np.asarray(expiries, float)
    valid = e.size > 0 and np.all(np.isfinite(e)) and np.all(e > 0) and e.max() < 1e3
    try:
        res = forward_dupire(constant_local_vol(sigma), fwd, expiries, n_x=n_x, n_t=n_t)
    except InputError as exc:
        assert not (e.size > 0 and np.all(np.isfinite(e)) and np.all(e > 0)), str(exc)
        return
    assert valid
    K = np.linspace(70.0, 140.0, 15)
    for T in np.unique(e):
        c = np.asarray(res.price(K, T, 1))
        F, D = float(fwd.F(T)), float(fwd.D(T))
        assert np.isfinite(c).all()
        assert (c >= D * np.maximum(F - K, 0) - 1e-6 * F).all() and (c <= D * F * (1 + 1e-9)).all()
        assert (np.diff(c) <= 1e-6 * F).all(), "call prices decrease with the strike (to interpolation error)"
        exact = black_price(F, K, T, sigma, 1, D)
        assert np.max(np.abs(c - exact)) < 0.02 * F, "a coarse grid is still close to Black under flat vol"


@pytest.mark.parametrize("T", [1e300, 1.7976931348623157e308])
def test_forward_dupire_absurd_expiry(T):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            res = forward_dupire(constant_local_vol(0.2), flat_forwards(), [T], n_x=41, n_t=8)
        except InputError as exc:
            assert "expir" in str(exc)
            return
    assert np.isfinite(res.price(np.array([100.0]), T, 1)).all()


@settings(max_examples=min(settings().max_examples, 40))
@given(st.floats(0.05, 0.8), st.floats(0.05, 2.0), st.lists(st.floats(60, 160), min_size=1, max_size=5),
       st.sampled_from([1, -1]), st.integers(100, 2000), st.integers(1, 20), st.integers(0, 2**31))
@counted
def test_mc_european_flat_vol(sigma, T, strikes, cp, n_paths, n_steps, seed):
    fwd = flat_forwards()
    res = mc_european(constant_local_vol(sigma), fwd, strikes, T, cp, n_paths=n_paths, n_steps=n_steps, seed=seed)
    price = np.asarray(res.price, float)
    se = np.asarray(getattr(res, "stderr", getattr(res, "std_error", np.full_like(price, np.nan))), float)
    assert price.shape == (len(strikes),) and np.isfinite(price).all()
    exact = black_price(float(fwd.F(T)), np.asarray(strikes), T, sigma, cp, float(fwd.D(T)))
    if np.isfinite(se).all():
        assert (se >= 0).all()
        # log-Euler under flat vol is exact in law: the estimate sits within 6 standard errors
        # (plus a hair for the discreteness of tiny samples)
        assert np.all(np.abs(price - exact) <= 6 * se + 1e-3 * float(fwd.F(T)))


@settings(max_examples=min(settings().max_examples, 40))
@given(st.sampled_from(["up-and-out", "up-and-in", "down-and-out", "down-and-in", "sideways"]),
       st.one_of(st.floats(50, 150), st.sampled_from([0.0, -1.0, np.nan])), st.floats(50, 200),
       st.one_of(st.floats(0.05, 2.0), st.just(0.0)), st.sampled_from([1, -1]),
       st.sampled_from(["continuous", "discrete", "weekly"]), st.integers(64, 400), st.integers(2, 16))
@counted
def test_price_barrier(kind, strike, barrier, T, cp, monitoring, n_paths, n_steps):
    ok = kind != "sideways" and np.isfinite(strike) and strike > 0 and T > 0 and monitoring != "weekly"
    try:
        res = price_barrier(constant_local_vol(0.25), flat_forwards(), strike=strike, barrier=barrier, T=T,
                            kind=kind, cp=cp, monitoring=monitoring, n_paths=n_paths, n_steps=n_steps, seed=1, nz=101)
    except InputError as exc:
        assert not ok, str(exc)
        return
    assert ok
    vals = [res.price_lv, res.price_bs, res.vanilla_lv, res.vanilla_bs, res.se_lv, res.se_bs]
    assert all(np.isfinite(v) for v in vals)
    assert res.price_lv >= -1e-12 and res.price_bs >= -1e-12, "a barrier option is worth at least 0"
    assert res.price_lv <= res.vanilla_lv + 1e-9 and res.price_bs <= res.vanilla_bs + 1e-9, "never more than the vanilla"

    to_json_bytes(res.to_dict())


@settings(max_examples=min(settings().max_examples, 40))
@given(st.one_of(st.floats(50, 150), st.sampled_from([0.0, np.inf])), st.one_of(st.floats(0.05, 2.0), st.just(-1.0)),
       st.integers(-1, 24), st.sampled_from([1, -1]), st.integers(64, 400), st.integers(2, 16))
@counted
def test_price_asian(strike, T, n_fixings, cp, n_paths, n_steps):
    ok = np.isfinite(strike) and strike > 0 and T > 0 and n_fixings >= 1
    try:
        res = price_asian(constant_local_vol(0.25), flat_forwards(), strike=strike, T=T, n_fixings=n_fixings, cp=cp,
                          n_paths=n_paths, n_steps=n_steps, seed=2, nz=101)
    except InputError as exc:
        assert not ok, str(exc)
        return
    assert ok
    assert all(np.isfinite(v) for v in (res.price_lv, res.price_bs, res.se_lv, res.se_bs))
    assert res.price_lv >= -1e-12 and res.price_bs >= -1e-12
