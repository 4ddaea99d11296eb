"""Property tests (Hypothesis) of ``core.pipeline``: ``prepare`` and ``calibrate`` on a perturbed demo
chain, ``Settings`` validation, ``open_source`` on any SOURCE text."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from core.cleaning import REASONS
from core.errors import DataSourceError, FormatError, InputError
from core.pipeline import METHODS, Settings, calibrate, open_source, prepare, summary_dict
from core.sources.yahoo import validate_ticker
from tests.helpers import ALLOWED, check_chain
from tests.hypothesis_budget import counted
from tests.strategies import demo_slice, nasty_float, perturbed_chain


def _check_prepared(prep, chain):
    q = prep.quotes
    assert len(q) == len(chain.quotes), "every input quote is present"
    assert q["reason"].isin(list(REASONS)).all(), "every quote has a reason"
    assert sum(prep.counts.values()) == len(q), "counts add up"
    used = q[q["use"].astype(bool)]
    assert (used["reason"] == "ok").all()
    assert np.isfinite(used["iv_mid"]).all() and (used["iv_mid"] > 0).all(), "no NaN vol in the fit set"
    assert q["use_rule"].map(lambda t: isinstance(t, str) and bool(t)).all()
    t = prep.forwards.table
    assert np.isfinite(t["F"]).all() and (t["F"] > 0).all() and np.isfinite(t["D"]).all() and (t["D"] > 0).all()
    exp = set(q["expiry"].dt.strftime("%Y-%m-%d"))
    assert set(prep.expiries) <= exp


@pytest.mark.slow
@settings(max_examples=min(settings().max_examples, 200))
@given(perturbed_chain())
@counted
def test_prepare_perturbed_demo(chain_ops):
    chain, ops = chain_ops
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            prep = prepare(chain, Settings())
        except ALLOWED as exc:
            assert str(exc)
            return
    _check_prepared(prep, chain)
    if ops == ["scale_all"] or ops == []:
        # a change of units (strikes, prices and spot scaled together) leaves every implied vol unchanged
        ref = prepare(demo_slice(), Settings()).quotes
        a, b = ref["iv_mid"].to_numpy(float), prep.quotes["iv_mid"].to_numpy(float)
        np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
        np.testing.assert_allclose(a[np.isfinite(a)], b[np.isfinite(b)], rtol=1e-6, atol=1e-8)


@pytest.mark.slow
@settings(max_examples=min(settings().max_examples, 12))
@given(perturbed_chain(), st.sampled_from(["ssvi", "svi", "smooth", "price-fd"]),
       st.sampled_from([(0.02, 2.0), (0.15, 0.25), (0.0, 10.0)]))
@counted
def test_calibrate_perturbed_demo(chain_ops, method, clip):
    chain, ops = chain_ops
    settings_ = Settings(method=method, clip=clip, n_strikes=20, n_expiries=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            cal = calibrate(chain, settings_)
        except ALLOWED as exc:
            assert str(exc)
            return
    _check_prepared(cal.prepared, chain)
    lv = cal.local_vol
    assert lv.local_vol.shape == (6, 20)
    assert np.isfinite(lv.local_vol).all()
    assert (lv.local_vol >= clip[0] - 1e-12).all() and (lv.local_vol <= clip[1] + 1e-12).all()
    summ = summary_dict(chain, cal.prepared, cal.fit, lv, None, cal.seconds, settings_)
    assert summ["n_quotes"] == len(chain.quotes)
    excluded = sum(summ["excluded"].values())
    assert excluded + cal.prepared.counts["ok"] == summ["n_quotes"], "excluded + usable = every quote"
    assert summ["n_used"] <= cal.prepared.counts["ok"]


@given(st.fixed_dictionaries({}, optional={
    "method": st.sampled_from(["ssvi", "svi", "smooth", "price-fd", "price-spline", "SSVI", "", "heston"]),
    "smoothing": st.one_of(nasty_float, st.floats(-1, 2)), "clip": st.tuples(nasty_float, nasty_float),
    "r": st.one_of(st.none(), nasty_float), "q": st.one_of(st.none(), nasty_float),
    "expiries": st.one_of(st.none(), st.lists(st.sampled_from(["2026-06-26", "2026-09-18"]), max_size=2)),
    "n_strikes": st.integers(-3, 300), "n_expiries": st.integers(-3, 100)}))
@counted
def test_settings_validation(kw):
    try:
        s = Settings(**kw)
    except InputError as exc:
        assert str(exc)
        return
    assert s.method in METHODS and 0 <= s.smoothing <= 1
    lo, hi = s.clip
    assert 0 <= lo < hi and math.isfinite(hi)
    hash(s)


@pytest.mark.parametrize("bad", ["junk", "2026-13-01", ""])
def test_settings_bad_expiry_names_the_input(bad):
    with pytest.raises(InputError, match="expir"):
        Settings(expiries=[bad])


def _valid_demo_seed(spec: str) -> bool:
    tail = spec.split(":", 1)[1].strip() if ":" in spec else "7"
    return tail.isdigit() and tail.isascii()


@given(st.one_of(st.text(max_size=30), st.builds(lambda t: "demo:" + t, st.text(max_size=8)),
                 st.builds(lambda t: "yahoo:" + t, st.text(max_size=20)),
                 st.sampled_from(["", ".", "/", "..", "/etc/passwd", "/dev/null", "README.md", "core", "DEMO",
                                  "demo:", "demo:-1", "yahoo:", "yahoo:../../etc", "file:///etc/passwd"])))
@counted
def test_open_source_specs(spec):
    """Any SOURCE text: a chain, or InputError / FormatError naming it; never the network here."""
    if spec.strip() == "demo" or (spec.strip().startswith("demo:") and _valid_demo_seed(spec.strip())):
        assume(False)   # the demo itself is tested elsewhere (and costs 0.4 s a call)
    if spec.strip().lower().startswith("yahoo:"):
        try:
            validate_ticker(spec.strip().split(":", 1)[1])
            assume(False)   # a valid ticker would go to the network
        except InputError:
            pass
    try:
        chain = open_source(spec, timeout=0.5)
    except (InputError, FormatError) as exc:
        assert str(exc)
        return
    except DataSourceError:
        pytest.fail(f"{spec!r} reached a live data source")
    check_chain(chain)


@pytest.mark.parametrize("spec", ["demo:abc", "demo:", "demo:-1"])
def test_open_source_bad_demo_seed(spec):
    with pytest.raises(InputError, match="seed|demo"):
        open_source(spec)
