"""Property tests (Hypothesis) of ``core.cleaning``: ``clean_quotes``, ``check_bounds``,
``select_for_fit``, ``CleaningConfig`` on hostile quote tables and settings."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.cleaning import REASONS, CleaningConfig, check_bounds, clean_quotes, reason_counts, select_for_fit
from core.errors import InputError
from tests.hypothesis_budget import counted
from tests.strategies import flat_forwards, nasty_float, quote_rows, quotes_of


@given(quote_rows(), st.floats(0.05, 3.0), st.floats(0.0, 0.05), st.sampled_from([0.0, 5.0]))
@counted
def test_clean_quotes(df, max_spread, min_T, min_volume):
    q = quotes_of(df)
    cfg = CleaningConfig(max_spread_frac=max_spread, min_T=min_T, min_volume=min_volume)
    out = clean_quotes(q, cfg)
    assert len(out) == len(q), "nothing is dropped"
    assert set(out["reason"]) <= set(REASONS)
    ok = out[out["reason"] == "ok"]
    assert (ok["strike"] > 0).all() and np.isfinite(ok["strike"]).all()
    assert (ok["bid"] > 0).all() and (ok["ask"] > ok["bid"]).all()
    assert (ok["T"] >= min_T).all()
    assert (ok["spread"] / ok["mid"] <= max_spread * (1 + 1e-9)).all()
    assert np.isfinite(ok["mid"]).all()
    two = np.isfinite(out["bid"]) & np.isfinite(out["ask"])
    np.testing.assert_allclose(out.loc[two, "mid"], 0.5 * (out.loc[two, "bid"] + out.loc[two, "ask"]))
    assert out.loc[~two, "mid"].isna().all()
    if min_volume > 0:
        assert (ok["volume"].fillna(0) >= min_volume).all()
    assert not ok.duplicated(["expiry", "strike", "cp"]).any()
    counts = reason_counts(out)
    assert sum(counts.values()) == len(out)
    assert set(counts) == set(REASONS)


@given(quote_rows(), st.floats(1.0, 1e4), st.floats(-0.2, 0.2), st.floats(-0.2, 0.2),
       st.sampled_from(["european", "american"]))
@counted
def test_check_bounds_and_select(df, spot, r, q_, exercise):
    q = clean_quotes(quotes_of(df))
    fwd = flat_forwards(spot, r, q_)
    b = check_bounds(q, fwd)
    assert len(b) == len(q)
    changed = b["reason"] != q["reason"]
    assert (q.loc[changed, "reason"] == "ok").all(), "only usable rows are re-judged"
    assert set(b.loc[changed, "reason"]) <= {"below_intrinsic", "above_upper_bound"}
    assert set(b["reason"]) <= set(REASONS)
    ok = b[b["reason"] == "ok"]
    T = ok["T"].to_numpy(float)
    F, D = fwd.F(T), fwd.D(T)
    K, cp, mid = ok["strike"].to_numpy(float), ok["cp"].to_numpy(float), ok["mid"].to_numpy(float)
    assert (mid >= D * np.maximum(cp * (F - K), 0) * (1 - 1e-9)).all()
    assert (mid <= np.where(cp > 0, D * F, D * K) * (1 + 1e-9)).all()
    s = select_for_fit(b, fwd, exercise)
    assert len(s) == len(b)
    assert s["use"].dtype == bool
    assert (s.loc[s["use"], "reason"] == "ok").all(), "only usable quotes feed the fit"
    assert s["use_rule"].map(lambda t: isinstance(t, str) and len(t) > 0).all()
    if exercise == "american":
        u = s[s["use"]]
        Fu = fwd.F(u["T"].to_numpy(float))
        otm = np.where(u["cp"] > 0, u["strike"] >= Fu, u["strike"] < Fu)
        assert otm.all(), "American chains use out-of-the-money quotes only"


@given(st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=3),
                 st.builds(lambda: pd.DataFrame({"strike": [1.0]}))))
@counted
def test_cleaning_rejects_non_tables(obj):
    with pytest.raises(InputError):
        clean_quotes(obj)
    with pytest.raises(InputError):
        reason_counts(obj)


@given(st.fixed_dictionaries({}, optional={
    "max_spread_frac": nasty_float, "min_T": nasty_float, "min_volume": nasty_float,
    "min_open_interest": nasty_float, "near_money": nasty_float, "parity_width": nasty_float,
    "parity_min_pairs": st.one_of(st.integers(-5, 10), st.floats()), "max_abs_rate": nasty_float,
    "stale_after": st.one_of(st.none(), st.sampled_from([pd.Timedelta(0), pd.Timedelta(days=-1), "junk", 3, "2 days"]))}))
@counted
def test_cleaning_config(kw):
    try:
        cfg = CleaningConfig(**kw)
    except InputError as exc:
        assert any(k in str(exc) for k in kw)
        return
    assert cfg.max_spread_frac > 0 and cfg.min_T >= 0 and math.isfinite(cfg.min_T)
    assert cfg.stale_after is None or cfg.stale_after > pd.Timedelta(0)
    hash(cfg)
