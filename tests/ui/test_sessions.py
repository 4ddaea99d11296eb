"""Sessions do not see each other's data: the app's caches are shared by every browser session of the
server process, so each cached result must be keyed on everything that defines it (the source's
content and every setting the stage reads), and per-session state must stay per session.

1. ``ui.data.chain_digest`` (the source part of every cache key) changes with any part of a chain.
2. Each cached stage, called directly with two sources or two settings, gives two different results
   (and the same one again on a repeat: a cache hit, not a recomputation).
3. Two ``AppTest`` sessions with different sources and settings each see their own.
"""
from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ROOT

data = pytest.importorskip("ui.data", reason="ui/data.py (the dashboard's cached calls) does not exist yet")


@pytest.fixture(scope="module")
def chains():
    """Two small, different chains: the demo slice and the same quotes of another seed."""
    from core.demo import demo_chain

    def small(seed):
        c = demo_chain(seed=seed)
        return c.select_expiries(c.expiries[2:7])

    return small(7), small(8)


def _key(kind, chain):
    return f"{kind}:{data.chain_digest(chain)}"


def test_chain_digest_covers_the_chain(chains):
    a, b = chains
    assert data.chain_digest(a) == data.chain_digest(dataclasses.replace(a, quotes=a.quotes.copy()))
    assert data.chain_digest(a) != data.chain_digest(b)
    q = a.quotes.copy()
    q.loc[q.index[0], "bid"] += 0.05
    variants = {
        "one bid": dataclasses.replace(a, quotes=q),
        "spot": dataclasses.replace(a, spot=a.spot * 1.001),
        "quote time": dataclasses.replace(a, asof=a.asof + pd.Timedelta(minutes=1)),
        "underlying": dataclasses.replace(a, underlying="OTHER"),
        "exercise": dataclasses.replace(a, exercise="american"),
        "source": dataclasses.replace(a, source="upload"),
        "a row fewer": dataclasses.replace(a, quotes=a.quotes.iloc[1:].reset_index(drop=True)),
        "rows reordered": dataclasses.replace(a, quotes=a.quotes.iloc[::-1].reset_index(drop=True)),
    }
    digests = {name: data.chain_digest(c) for name, c in variants.items()}
    for name, d in digests.items():
        assert d != data.chain_digest(a), f"a change of {name} must change the cache key"
    assert len(set(digests.values())) == len(digests)


def test_cached_stages_hash_source_and_settings():
    """Every cached stage takes the source key and the settings as hashed arguments; the chain itself
    is an underscore (unhashed) argument, which is safe only because the key holds its digest."""
    for name in ("prepared", "fitted", "local_vol", "arbitrage", "repriced", "smile_local_vol"):
        fn = getattr(data, name, None)
        if fn is None:
            continue
        params = list(inspect.signature(fn).parameters)
        assert params[:3] == ["source_key", "_chain", "settings"], (name, params)


def test_two_sources_two_results(chains):
    from core.pipeline import Settings

    a, b = chains
    s = Settings()
    pa = data.prepared(_key("demo", a), a, s)
    pb = data.prepared(_key("upload", b), b, s)
    pd.testing.assert_series_equal(pa.quotes["bid"], a.quotes["bid"], check_names=False)
    pd.testing.assert_series_equal(pb.quotes["bid"], b.quotes["bid"], check_names=False)
    assert not pa.quotes["bid"].equals(pb.quotes["bid"])
    fa = data.fitted(_key("demo", a), a, s)
    fb = data.fitted(_key("upload", b), b, s)
    assert fa.params != fb.params


def test_same_source_different_settings(chains):
    from core.pipeline import Settings

    a, _ = chains
    k = _key("demo", a)
    wide, narrow = Settings(clip=(0.02, 2.0)), Settings(clip=(0.17, 0.19))
    lv_w, lv_n = data.local_vol(k, a, wide), data.local_vol(k, a, narrow)
    assert lv_n.local_vol.min() >= 0.17 - 1e-12 and lv_n.local_vol.max() <= 0.19 + 1e-12
    assert not np.allclose(lv_w.local_vol, lv_n.local_vol), "the clip band is part of the local-vol key"
    f0 = data.fitted(k, a, Settings(smoothing=0.0))
    f1 = data.fitted(k, a, Settings(smoothing=1.0))
    assert f0.params != f1.params or f0.smoothing != f1.smoothing, "smoothing is part of the fit key"
    from core.pipeline import FIT_METHOD

    other = "svi" if Settings().method != "svi" else "ssvi"
    fm = data.fitted(k, a, Settings(method=other))
    assert fm.method == FIT_METHOD[other] != f0.method == FIT_METHOD[Settings().method], "the method is part of the fit key"
    p_loose = data.prepared(k, a, Settings(max_spread_frac=1.5))
    p_tight = data.prepared(k, a, Settings(max_spread_frac=0.02))
    assert p_tight.counts["wide_spread"] > p_loose.counts["wide_spread"], "quote filters are part of the key"
    p_vol = data.prepared(k, a, Settings(min_volume=1e9))
    assert p_vol.counts["low_volume"] > 0
    some = tuple(sorted(p_loose.expiries)[:2])
    p_exp = data.prepared(k, a, Settings(expiries=some))
    assert tuple(p_exp.expiries) == some != tuple(p_loose.expiries), "the expiry choice is part of the key"
    p_rq = data.prepared(k, a, Settings(r=0.10, q=0.0))
    assert not np.allclose(p_rq.forwards.table["D"], p_loose.forwards.table["D"]), "r/q overrides are in the key"
    again = data.local_vol(k, a, narrow)
    np.testing.assert_array_equal(again.local_vol, lv_n.local_vol)


def test_stage_settings_reduction_keeps_what_the_stage_reads():
    """Each cached stage of ``ui.data`` keys on the specs its stage reads (so a clip change never re-fits);
    check that those specs never drop a setting the stage does read."""
    from core.pipeline import FIT_METHOD, Settings

    s = Settings(method="svi", smoothing=0.4, clip=(0.1, 0.9), r=0.01, q=0.02, expiries=("2026-09-18",),
                 max_spread_frac=0.7, min_volume=3, min_open_interest=4, n_strikes=30, n_expiries=7)
    prep_s = s.prepare_spec
    for f in ("r", "q", "expiries", "max_T", "min_quotes_per_expiry"):
        assert getattr(prep_s, f) == getattr(s, f), f"prepare reads {f}"
    for f in ("max_spread_frac", "min_volume", "min_open_interest"):
        assert getattr(prep_s.filters, f) == getattr(s, f), f"prepare reads {f}"
    fit_s = s.fit_spec
    assert fit_s.method == FIT_METHOD[s.method], "fit reads method"
    assert fit_s.smoothing == s.smoothing, "fit reads smoothing"
    assert s.local_vol_spec.clip == s.clip and (s.local_vol_spec.n_strikes, s.local_vol_spec.n_expiries) == (30, 7)
    for name, specs in (("_prepared", 1), ("_fitted", 2), ("_local_vol", 3)):
        params = list(inspect.signature(getattr(data, name)).parameters)
        assert params[:2] == ["source_key", "_chain"] and len(params) >= 2 + specs, (name, params)


@pytest.fixture()
def snapshot_home(tmp_path, monkeypatch):
    """A snapshot folder holding one chain of another underlying ('SNAPX'), for the second session."""
    from core.demo import demo_chain
    from core.sources.snapshots import SnapshotStore

    monkeypatch.setenv("DUPIRE_DESK_HOME", str(tmp_path))
    c = demo_chain(seed=11)
    c = dataclasses.replace(c.select_expiries(c.expiries[1:8]), underlying="SNAPX")
    SnapshotStore(tmp_path / "snapshots").save(c)
    return tmp_path


def _sidebar_text(at) -> str:
    parts = [m.value for m in at.sidebar.markdown] + [c.value for c in at.sidebar.caption]
    return " ".join(str(p) for p in parts)


def test_two_app_sessions_do_not_mix(snapshot_home):
    """Session A: demo, narrow clip band. Session B: a saved snapshot of another underlying, default
    band. Each sees its own source and settings, before and after the other one ran."""
    pytest.importorskip("streamlit")
    if not (ROOT / "app.py").is_file():
        pytest.skip("app.py does not exist yet")
    from streamlit.testing.v1 import AppTest

    a = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not a.exception, [e.value for e in a.exception]
    a.sidebar.slider(key="clip").set_value((15, 25)).run()
    assert not a.exception
    b = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    b.sidebar.radio(key="source").set_value("Saved snapshot").run()
    assert not b.exception, [e.value for e in b.exception]
    a.run()
    ta, tb = _sidebar_text(a), _sidebar_text(b)
    assert "DEMO" in ta and "SNAPX" not in ta
    assert "SNAPX" in tb and "Demo market" not in tb
    assert a.session_state["clip"] == (15, 25)
    assert b.session_state["clip"] != (15, 25), "a setting of one session never leaks into another"
    assert a.session_state["source"] == "Demo market" and b.session_state["source"] == "Saved snapshot"
