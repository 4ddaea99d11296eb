"""Property tests (Hypothesis) of ``core.forwards``: ``Forwards.from_rates``, the table's validation,
``implied_forwards`` on hostile quote tables."""
from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from core.cleaning import clean_quotes
from core.errors import FitError, InputError
from core.forwards import Forwards, implied_forwards
from tests.helpers import ALLOWED
from tests.hypothesis_budget import counted
from tests.strategies import NASTY, nasty_float, quote_rows, quotes_of


@given(st.floats(1e-6, 1e9), st.floats(-0.5, 0.5), st.floats(-0.5, 0.5),
       st.lists(st.floats(1e-4, 30.0), min_size=1, max_size=8, unique=True),
       hnp.arrays(np.float64, st.integers(0, 6), elements=st.floats(1e-6, 50.0)))
@counted
def test_forwards_from_rates(spot, r, q, Ts, T_query):
    f = Forwards.from_rates(spot, r, q, Ts)
    F, D = f.F(T_query), f.D(T_query)
    assert F.shape == T_query.shape and D.shape == T_query.shape
    assert np.all(np.isfinite(F) & (F > 0)) and np.all(np.isfinite(D) & (D > 0))
    np.testing.assert_allclose(f.F(np.array(Ts)), spot * np.exp((r - q) * np.array(Ts)), rtol=1e-9)
    np.testing.assert_allclose(f.D(np.array(Ts)), np.exp(-r * np.array(Ts)), rtol=1e-9)


@given(st.lists(st.tuples(st.one_of(st.floats(), st.sampled_from(NASTY)), st.one_of(st.floats(), st.sampled_from(NASTY)),
                          st.one_of(st.floats(), st.sampled_from(NASTY))), min_size=0, max_size=5),
       st.one_of(st.none(), nasty_float))
@counted
def test_forwards_table_validation(rows, spot):
    table = pd.DataFrame(rows, columns=["T", "F", "D"]) if rows else pd.DataFrame({"T": [], "F": [], "D": []})
    try:
        f = Forwards(table=table, spot=spot)
    except InputError:
        return
    assert np.isfinite(f.table["F"]).all() and (f.table["F"] > 0).all()
    assert np.isfinite(f.table["D"]).all() and (f.table["D"] > 0).all()
    assert (f.table["T"] > 0).all()


@given(quote_rows(min_rows=0, max_rows=30), st.one_of(st.none(), st.floats(50, 200), st.sampled_from([np.nan, -1.0, 0.0])),
       st.sampled_from(["european", "american"]), st.one_of(st.none(), st.tuples(st.floats(-0.1, 0.1), st.floats(-0.1, 0.1))))
@counted
def test_implied_forwards(df, spot, exercise, rq):
    q = clean_quotes(quotes_of(df))
    r, qq = rq if rq is not None else (None, None)
    try:
        f = implied_forwards(q, spot=spot, r=r, q=qq, exercise=exercise)
    except ALLOWED as exc:
        assert isinstance(exc, (InputError, FitError)) or "forward" in str(exc).lower() or str(exc)
        return
    t = f.table
    assert np.isfinite(t["F"]).all() and (t["F"] > 0).all()
    assert np.isfinite(t["D"]).all() and (t["D"] > 0).all()
    assert (t["T"] > 0).all()
    if exercise == "american" and "approximate" in t:
        assert t["approximate"].astype(bool).all() or (t["fallback"] != "").all()
    Tq = q["T"].to_numpy(float)
    Tq = Tq[np.isfinite(Tq) & (Tq > 0)]
    assert np.all(np.isfinite(f.F(Tq))) and np.all(np.isfinite(f.D(Tq)))
