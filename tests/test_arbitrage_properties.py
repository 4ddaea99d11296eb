"""Property tests (Hypothesis) of ``core.arbitrage``: ``quote_arbitrage`` on random quote tables,
``surface_arbitrage`` on nasty grids."""
from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from core.arbitrage import ARBITRAGE_COLUMNS, quote_arbitrage, surface_arbitrage
from core.errors import InputError
from tests.hypothesis_budget import counted
from tests.strategies import flat_forwards, nasty_float, quote_rows, quotes_of, ssvi_model


@given(quote_rows(max_rows=20), st.booleans(), st.booleans())
@counted
def test_quote_arbitrage(df, with_forwards, include_mid):
    q = quotes_of(df)
    out = quote_arbitrage(q, flat_forwards() if with_forwards else None, include_mid=include_mid)
    assert isinstance(out, pd.DataFrame)
    assert set(ARBITRAGE_COLUMNS) <= set(out.columns)
    if len(out):
        assert set(out["kind"]) <= {"vertical", "butterfly", "calendar", "crossed"}
        assert (out["survives_spread"].astype(bool) == (out["cost"] < 0)).all() or (out["kind"] == "crossed").any()
        assert all(all(0 <= r < len(q) for r in rows) for rows in out["rows"]), "legs point at input rows"
        if not include_mid:
            nc = out[out["kind"] != "crossed"]
            assert nc["survives_spread"].astype(bool).all()


@given(st.lists(st.one_of(st.floats(-3, 3), nasty_float), min_size=0, max_size=6),
       st.lists(st.one_of(st.floats(1e-3, 10), nasty_float), min_size=0, max_size=4), st.floats(-0.9, 0.0))
@counted
def test_surface_arbitrage(y, T, rho):
    ya, Ta = np.asarray(y, float), np.asarray(T, float)
    ok = ya.size and Ta.size and np.isfinite(ya).all() and np.isfinite(Ta).all() and (Ta > 0).all()
    try:
        res = surface_arbitrage(ssvi_model(rho), y, T)
    except InputError:
        assert not ok
        return
    assert ok
    assert res.g.shape == (len(T), len(y)) and res.counts["cells"] == len(T) * len(y)
    assert res.counts["butterfly"] == int(res.butterfly.sum()) and res.counts["calendar"] == int(res.calendar.sum())
    # the SSVI model is arbitrage-free: no violation where w and its derivatives are representable
    # (NaN counts as a violation by design, e.g. at T = 1e-300)
    Ta = np.asarray(T, float)
    sane = (Ta > 1e-6) & (Ta < 1e3)
    assert not res.butterfly[sane].any() and not res.calendar[sane].any()
