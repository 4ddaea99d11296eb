"""Property tests (Hypothesis) of the seeds' API (``core.seeds``): spoiled market grids, point
arguments, ``local_vol_mc``."""
from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import FitError, InputError
from core.seeds import (
    DEFAULT_CLIP,
    DupireLocalVol,
    ImpliedVolSurface,
    dupire_local_vol,
    generate_market_surface,
    local_vol_mc,
)
from tests.hypothesis_budget import counted
from tests.strategies import nasty_float, seed_grid


@pytest.mark.slow
@settings(max_examples=min(settings().max_examples, 30))
@given(seed_grid())
@counted
def test_seeds_implied_and_local_vol(g):
    K, T, iv, S, r, q, spoil = g
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ivs = ImpliedVolSurface(K, T, iv, S, r, q)
        except (InputError, FitError) as exc:
            assert str(exc)
            return
        assert spoil != "transpose" or iv.shape[0] == iv.shape[1], "a transposed grid is refused"
        Kq = np.linspace(K.min(), K.max(), 7)
        for Tq in (T.min(), T.max()):
            s = np.asarray(ivs.implied_vol(Kq, Tq))
            assert np.isfinite(s).all() and (s > 0).all(), "no silent NaN inside the grid"
        lv = DupireLocalVol(ivs)
        grid = lv.local_vol_surface(np.sort(K), T)
        assert grid.shape == (len(T), len(K))
        lo, hi = DEFAULT_CLIP
        assert np.isfinite(grid).all() and (grid >= lo).all() and (grid <= hi).all()
        if np.all(np.diff(K) > 0):
            out = dupire_local_vol(K, T, iv.T, S, r, q)
            assert out.shape == (len(K), len(T))
            assert np.isfinite(out).all() and (out >= lo).all() and (out <= hi).all()


@given(st.one_of(nasty_float, st.floats(-10, 10)), st.one_of(nasty_float, st.floats(-10, 10)))
@counted
def test_seeds_local_vol_point_arguments(K, T):
    ivs = _seed_surface()
    lv = DupireLocalVol(ivs)
    try:
        v = lv.local_vol(K, T)
    except InputError as exc:
        assert not (np.isfinite(K) and K > 0 and np.isfinite(T) and T > 0), str(exc)
        return
    lo, hi = DEFAULT_CLIP     # the one default band (it was 1%-300% when this test was written)
    assert isinstance(v, float) and np.isfinite(v) and lo <= v <= hi


@functools.lru_cache(maxsize=1)
def _seed_surface():
    m = generate_market_surface(0)
    return ImpliedVolSurface(m.strikes, m.maturities, m.implied_vols, m.spot, m.r, m.q)


@settings(max_examples=min(settings().max_examples, 40))
@given(st.floats(50.0, 150.0), st.floats(0.05, 2.0), st.sampled_from(["call", "put", "Call", "straddle"]),
       st.integers(64, 512), st.integers(2, 12), st.integers(0, 3))
@counted
def test_seeds_local_vol_mc(K, T, kind, n_paths, n_steps, seed):
    m = generate_market_surface(0)
    lv_grid = np.full((len(m.strikes), len(m.maturities)), 0.2)
    try:
        p = local_vol_mc(m.spot, K, T, m.r, m.strikes, m.maturities, lv_grid, option_type=kind, q=m.q,
                         n_paths=n_paths, n_steps=n_steps, seed=seed)
    except InputError as exc:
        assert kind.lower() not in ("call", "put"), str(exc)
        return
    assert kind.lower() in ("call", "put")
    assert isinstance(p, float) and np.isfinite(p)
    disc_S, disc_K = m.spot * math.exp(-m.q * T), K * math.exp(-m.r * T)
    upper = disc_S if kind.lower() == "call" else disc_K
    # no-arbitrage bounds hold path by path for the discounted payoff except for the control variate:
    # allow a generous Monte Carlo margin (0.2 S: thousands of standard errors at sigma = 20%)
    assert -0.2 * m.spot <= p <= upper + 0.2 * m.spot
