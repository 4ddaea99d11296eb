"""Property tests (Hypothesis) of ``core.quotes.make_quotes``: random and hostile rows, a required
column dropped, junk ``cp``/``expiry`` values (strategies in tests/strategies.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.cleaning import clean_quotes
from core.errors import InputError
from core.quotes import QUOTE_COLUMNS, make_quotes
from tests.hypothesis_budget import counted
from tests.strategies import ASOF, cp_value, quote_rows


@given(quote_rows(cp=cp_value), st.sampled_from(["expiry", "strike", "cp", "bid", "ask", None]))
@counted
def test_make_quotes(df, drop):
    if drop is not None:
        df = df.drop(columns=[drop])
    try:
        q = make_quotes(df, quote_time=ASOF, underlying="TEST")
    except InputError as exc:
        assert drop is not None and drop in str(exc)
        return
    assert drop is None
    assert len(q) == len(df)
    assert list(q.columns[: len(QUOTE_COLUMNS)]) == list(QUOTE_COLUMNS)
    assert set(q["cp"].unique()) <= {1, -1}
    assert np.isfinite(q["T"]).all()
    assert (q["quote_time"] == ASOF).all()


@given(st.lists(st.one_of(st.text(max_size=6), st.integers(-3, 3), st.floats(), st.none()), min_size=1, max_size=6))
@counted
def test_make_quotes_junk_cp_and_expiry(values):
    n = len(values)
    for col in ("cp", "expiry"):
        df = pd.DataFrame({"expiry": ["2026-09-18"] * n, "strike": [100.0] * n, "cp": [1] * n,
                           "bid": [1.0] * n, "ask": [1.1] * n})
        df[col] = pd.Series(values, dtype=object)
        try:
            q = make_quotes(df, quote_time=ASOF)
        except InputError as exc:
            assert col in str(exc)
            continue
        assert len(q) == n and set(q["cp"]) <= {1, -1}
        # a missing expiry is a row with NaT and NaN T (cleaning marks it bad_contract), never a crash
        assert (q["expiry"].isna() == q["T"].isna()).all()


@pytest.mark.parametrize("missing", [None, np.nan, ""])
def test_make_quotes_missing_expiry(missing):
    """Regression (was a TypeError from expiry_time(NaT)): the row stays, cleaning gives it a reason."""
    df = pd.DataFrame({"expiry": ["2026-09-18", missing], "strike": [100.0, 100.0], "cp": [1, -1],
                       "bid": [1.0, 1.0], "ask": [1.1, 1.1]})
    try:
        q = make_quotes(df, quote_time=ASOF)
    except InputError as exc:
        assert "expiry" in str(exc)
        return
    assert len(q) == 2
    assert clean_quotes(q)["reason"].tolist() == ["ok", "bad_contract"]
