"""Helpers shared by several test modules (not tests themselves): the errors a hostile input may raise,
the invariants of any loaded chain, a dense no-arbitrage check of a fitted surface, and QuantLib's
Andreasen-Huge example vols as fit-ready quotes."""
from __future__ import annotations

import numpy as np
import pandas as pd

from core.cleaning import clean_quotes, reason_counts
from core.errors import DupireDeskError
from core.forwards import Forwards
from core.quotes import QUOTE_COLUMNS, QuoteChain
from core.surface.base import butterfly_g

ALLOWED = (DupireDeskError,)   # the documented errors: anything else out of hostile input fails a test


def check_chain(chain, data_lines: int | None = None):
    """Invariants of any loaded chain: the schema, finite T, cp +-1, a tz-aware quote time, a
    positive spot or none, and it can be cleaned with every quote kept and counted."""
    assert isinstance(chain, QuoteChain)
    q = chain.quotes
    assert list(q.columns[: len(QUOTE_COLUMNS)]) == list(QUOTE_COLUMNS)
    assert len(q) > 0
    assert set(q["cp"].unique()) <= {1, -1}
    assert np.isfinite(q["T"]).all()
    assert pd.Timestamp(chain.asof).tzinfo is not None
    assert chain.spot is None or (np.isfinite(chain.spot) and chain.spot > 0)
    if data_lines is not None:
        assert len(q) <= 2 * max(data_lines, 1)
    c = clean_quotes(chain)
    assert len(c) == len(q) and sum(reason_counts(c).values()) == len(q)


def dense_arbitrage(surface, T_nodes, n_y=201):
    """Independent check: g and w_T on a dense grid inside the quoted range, at and between expiries."""
    Tn = np.asarray(T_nodes)
    Tg = np.unique(np.r_[Tn, (Tn[1:] + Tn[:-1]) / 2, Tn[:-1] + (Tn[1:] - Tn[:-1]) / 7, 0.5 * Tn[0]])
    lo, hi = surface.y_quoted(Tg)
    Y = lo[:, None] + (hi - lo)[:, None] * np.linspace(0, 1, n_y)[None, :]
    TT = np.broadcast_to(Tg[:, None], Y.shape)
    d = surface.derivatives(Y, TT)
    return butterfly_g(Y, d.w, d.w_y, d.w_yy).min(), d.w_T.min()


def ah_quotes(shared_data):
    """QuantLib's Andreasen-Huge market (``shared_data/quantlib_tests``) as a fit-ready quote frame and its
    forwards (spot 2772.7, zero rates)."""
    d = pd.read_csv(shared_data / "quantlib_tests" / "andreasen_huge_market.csv")
    S = 2772.7
    T = d["maturity_years_qltest"].to_numpy(float)
    exp = pd.Timestamp("2010-03-01") + pd.to_timedelta(d["maturity_days_qltest"], unit="D")
    iv = d["implied_vol"].to_numpy(float)
    q = pd.DataFrame({"expiry": exp, "T": T, "strike": d["strike"].to_numpy(float),
                      "cp": np.where(d["option_type_qltest"] == "call", 1, -1), "y": np.log(d["strike"] / S),
                      "iv_mid": iv, "iv_bid": iv, "iv_ask": iv, "use": True})
    return q, Forwards.from_rates(S, 0.0, 0.0, np.unique(T))
