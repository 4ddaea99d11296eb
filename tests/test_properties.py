"""Property tests (Hypothesis) of every public entry point of ``core/``: hostile shapes and values in,
either a result that keeps its invariants or the documented error out (``core.errors``).

Inputs: NaN, +-inf, zeros, negatives, duplicated and unsorted strikes, one expiry or one strike,
enormous and tiny magnitudes, junk text and bytes for the loaders. Allowed errors are the
``DupireDeskError`` family (``InputError``/``FormatError`` naming the input, ``FitError``); anything else
(``KeyError``, ``ZeroDivisionError``, a NaN where a number is documented) fails the test.

Profiles come from ``tests/conftest.py`` (derandomised; ``ci`` = 400 examples per test). Every
property test counts the examples it ran (``counted``); ``test_zz_example_budget`` checks that a full
CI run of this file tried at least ``BUDGET`` examples in total (docs/ROBUSTNESS.md).
"""
from __future__ import annotations

import datetime as _dt
import functools
import importlib
import math
import warnings
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from core.errors import DupireDeskError, FitError, FormatError, InputError

BUDGET = 10_000
_EXAMPLES: Counter = Counter()
_PROPERTY_TESTS: set[str] = set()


def counted(fn):
    """Count the examples a property test runs (body calls, shrinking included; ``assume``-rejected
    calls are not counted, as Hypothesis does not count them either)."""
    from hypothesis.errors import UnsatisfiedAssumption

    _PROPERTY_TESTS.add(fn.__name__)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _EXAMPLES[fn.__name__] += 1
        try:
            return fn(*args, **kwargs)
        except UnsatisfiedAssumption:
            _EXAMPLES[fn.__name__] -= 1
            raise

    return wrapper


def need(module: str):
    """Import a module of ``core`` or skip the test while its owner has not written it yet."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            pytest.skip(f"{module} does not exist yet")
        raise


ALLOWED = (DupireDeskError,)
ASOF = pd.Timestamp("2026-06-15 14:30", tz="UTC")

# ---------------------------------------------------------------------------------------- strategies
NASTY = [0.0, -0.0, -1.0, 1e-300, 5e-324, 1e300, -1e300, 1.7976931348623157e308, np.nan, np.inf, -np.inf]
nasty_float = st.one_of(st.sampled_from(NASTY), st.floats(allow_nan=True, allow_infinity=True))
price_float = st.one_of(st.floats(0.0, 60.0), st.sampled_from([0.0, 0.01, 0.05]), nasty_float)
strike_float = st.one_of(st.sampled_from([80.0, 90.0, 95.0, 100.0, 105.0, 110.0, 120.0]), st.floats(1.0, 500.0), nasty_float)
EXPIRY_POOL = [pd.Timestamp(d) for d in ("2026-06-12", "2026-06-15", "2026-06-16", "2026-06-19", "2026-07-17",
                                          "2026-09-18", "2026-12-18", "2027-06-18", "2028-12-15", "2076-01-01")]
cp_value = st.one_of(st.sampled_from([1, -1]), st.sampled_from([1, -1, "C", "P", "call", "put", 1.0]))


PLAIN_CP = st.sampled_from([1, -1])


@st.composite
def quote_rows(draw, min_rows: int = 0, max_rows: int = 24, cp=PLAIN_CP):
    """A raw quote table for ``make_quotes``: realistic rows mixed with hostile ones."""
    n = draw(st.integers(min_rows, max_rows))
    expiries = draw(st.lists(st.sampled_from(EXPIRY_POOL), min_size=1, max_size=3))
    rows = []
    for _ in range(n):
        if draw(st.booleans()):   # a plausible quote: positive prices, ask above bid
            bid = draw(st.floats(0.0, 40.0))
            ask = bid + draw(st.floats(0.0, 5.0))
            K = draw(st.sampled_from([80.0, 90.0, 95.0, 100.0, 105.0, 110.0, 120.0]))
        else:
            bid, ask, K = draw(price_float), draw(price_float), draw(strike_float)
        rows.append({"expiry": draw(st.sampled_from(expiries)), "strike": K, "cp": draw(cp),
                     "bid": bid, "ask": ask, "last": draw(price_float),
                     "volume": draw(st.one_of(st.none(), st.floats(0, 1e4), nasty_float)),
                     "open_interest": draw(st.one_of(st.none(), st.floats(0, 1e5))),
                     "last_trade_time": draw(st.sampled_from([pd.NaT, ASOF - pd.Timedelta(hours=1),
                                                              ASOF - pd.Timedelta(days=30)]))})
    df = pd.DataFrame(rows, columns=["expiry", "strike", "cp", "bid", "ask", "last", "volume",
                                     "open_interest", "last_trade_time"])
    if draw(st.booleans()) and n > 1:   # unsorted / shuffled
        df = df.sample(frac=1.0, random_state=draw(st.integers(0, 99))).reset_index(drop=True)
    return df


def make(df):
    from core.quotes import make_quotes

    return make_quotes(df, quote_time=ASOF, underlying="TEST", source="hypothesis")


def flat_forwards(spot=100.0, r=0.03, q=0.01, Ts=(0.05, 0.25, 0.5, 1.0, 2.0)):
    from core.forwards import Forwards

    return Forwards.from_rates(spot, r, q, list(Ts))


# ---------------------------------------------------------------------------------------- quotes
@given(quote_rows(cp=cp_value), st.sampled_from(["expiry", "strike", "cp", "bid", "ask", None]))
@counted
def test_make_quotes(df, drop):
    from core.quotes import QUOTE_COLUMNS, make_quotes

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
    from core.quotes import make_quotes

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
    from core.cleaning import clean_quotes
    from core.quotes import make_quotes

    df = pd.DataFrame({"expiry": ["2026-09-18", missing], "strike": [100.0, 100.0], "cp": [1, -1],
                       "bid": [1.0, 1.0], "ask": [1.1, 1.1]})
    try:
        q = make_quotes(df, quote_time=ASOF)
    except InputError as exc:
        assert "expiry" in str(exc)
        return
    assert len(q) == 2
    assert clean_quotes(q)["reason"].tolist() == ["ok", "bad_contract"]


# ---------------------------------------------------------------------------------------- cleaning
@given(quote_rows(), st.floats(0.05, 3.0), st.floats(0.0, 0.05), st.sampled_from([0.0, 5.0]))
@counted
def test_clean_quotes(df, max_spread, min_T, min_volume):
    from core.cleaning import REASONS, CleaningConfig, clean_quotes, reason_counts

    q = make(df)
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
    from core.cleaning import REASONS, check_bounds, clean_quotes, select_for_fit

    q = clean_quotes(make(df))
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
    from core.cleaning import clean_quotes, reason_counts

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
    from core.cleaning import CleaningConfig

    try:
        cfg = CleaningConfig(**kw)
    except InputError as exc:
        assert any(k in str(exc) for k in kw)
        return
    assert cfg.max_spread_frac > 0 and cfg.min_T >= 0 and math.isfinite(cfg.min_T)
    assert cfg.stale_after is None or cfg.stale_after > pd.Timedelta(0)
    hash(cfg)


# ---------------------------------------------------------------------------------------- Black-76
arr = hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=2, max_side=4), elements=nasty_float)


@given(arr, arr, arr, arr, st.sampled_from([1, -1, 0, np.nan]), st.one_of(st.just(1.0), arr))
@counted
def test_black_price_any_input(F, K, T, sigma, cp, D):
    from core.black import black_price, black_vega

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
    from core.black import black_price, black_vega, implied_vol

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


@given(arr, arr, arr, arr, st.sampled_from([1, -1, 0, 2, np.nan]))
@counted
def test_implied_vol_reasons_consistent(price, F, K, T, cp):
    from core.black import IV_REASONS, implied_vol

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


# ---------------------------------------------------------------------------------------- forwards
@given(st.floats(1e-6, 1e9), st.floats(-0.5, 0.5), st.floats(-0.5, 0.5),
       st.lists(st.floats(1e-4, 30.0), min_size=1, max_size=8, unique=True),
       hnp.arrays(np.float64, st.integers(0, 6), elements=st.floats(1e-6, 50.0)))
@counted
def test_forwards_from_rates(spot, r, q, Ts, T_query):
    from core.forwards import Forwards

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
    from core.forwards import Forwards

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
    fw = need("core.forwards")
    if not hasattr(fw, "implied_forwards"):
        pytest.skip("core.forwards.implied_forwards does not exist yet")
    from core.cleaning import clean_quotes

    q = clean_quotes(make(df))
    r, qq = rq if rq is not None else (None, None)
    try:
        f = fw.implied_forwards(q, spot=spot, r=r, q=qq, exercise=exercise)
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


# ---------------------------------------------------------------------------------------- loaders
@functools.lru_cache(maxsize=1)
def _small_demo():
    """A 40-quote slice of the demo chain (two expiries, every 20th strike), for mutation tests."""
    from core.quotes import QuoteChain
    from core.sources.demo import demo_chain

    c = demo_chain()
    q = c.quotes[c.quotes["expiry"].isin(c.expiries[:2])]
    q = q[q["strike"].isin(sorted(q["strike"].unique())[::20])].reset_index(drop=True)
    return QuoteChain(q, c.underlying, c.asof, c.source, c.spot, c.spot_time, c.exercise, {})


@functools.lru_cache(maxsize=4)
def _exported(fmt: str) -> str:
    from core.sources.detect import export_chain

    return export_chain(_small_demo(), fmt).decode("utf-8")


JUNK_CELLS = ["", "nan", "N/A", "-", "-1", "0", "1e308", "-1e308", "inf", "abc", "=cmd|' /C calc'!A0", "9" * 40,
              "2026-02-30", "1/1/1", '"', '""', "\t", " ", "C", "P", "call", "XYZ991399C99999999", "0.0001", "1e-300"]


@st.composite
def mutated_file(draw, fmt: str):
    """A valid export of the small demo chain in ``fmt``, then cut, shuffled and spoiled."""
    lines = _exported(fmt).splitlines()
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["drop", "dup", "swap", "cell", "insert", "truncate", "shuffle_body"]))
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "cell":
            cells = lines[i].split(",")
            k = draw(st.integers(0, len(cells) - 1))
            cells[k] = draw(st.one_of(st.sampled_from(JUNK_CELLS), st.text(max_size=8)))
            lines[i] = ",".join(cells)
        elif op == "insert":
            lines.insert(i, draw(st.one_of(st.text(max_size=40), st.sampled_from(JUNK_CELLS))))
        elif op == "truncate":
            text = "\n".join(lines)
            lines = text[: draw(st.integers(0, len(text)))].splitlines()
        elif op == "shuffle_body":
            head, body = lines[:3], lines[3:]
            body = draw(st.permutations(body)) if len(body) < 60 else body
            lines = head + list(body)
    text = draw(st.sampled_from(["\n", "\r\n", "\r"])).join(lines)
    enc = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]))
    return text.encode(enc, errors="replace")


def _check_chain(chain, data_lines: int | None = None):
    """Invariants of any loaded chain: the schema, finite T, cp +-1, a tz-aware quote time, a
    positive spot or none, and it can be cleaned with every quote kept and counted."""
    from core.cleaning import clean_quotes, reason_counts
    from core.quotes import QUOTE_COLUMNS, QuoteChain

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


def _load_or_error(fn, data, **kw):
    try:
        return fn(data, **kw)
    except (FormatError, InputError) as exc:
        assert str(exc), "the error says what went wrong"
        return None


@given(st.one_of(st.binary(max_size=600), st.text(max_size=600).map(lambda t: t.encode("utf-8")),
                 st.sampled_from([b"", b"\xef\xbb\xbf", b"PK\x03\x04\x00\x00", b"\xff\xfe", b"\x00" * 10,
                                  b"a,b,c\n1,2,3\n", b"expiry,strike,cp,bid,ask\n", b"\n\n\n"])))
@counted
def test_load_file_arbitrary_bytes(data):
    from core.sources.detect import load_file

    chain = _load_or_error(load_file, data, name="upload.csv")
    if chain is not None:
        _check_chain(chain)


@given(st.sampled_from(["cboe", "yfinance-csv", "tidy-csv"]).flatmap(lambda f: st.tuples(st.just(f), mutated_file(f))),
       st.one_of(st.none(), st.sampled_from([5000.0, 1e-6, 1e9])), st.one_of(st.none(), st.just("2026-06-15 10:30")))
@counted
def test_load_file_mutated_exports(fmt_data, spot, asof):
    from core.sources.detect import load_file

    fmt, data = fmt_data
    chain = _load_or_error(load_file, data, spot=spot, asof=asof)
    if chain is not None:
        _check_chain(chain, data_lines=data.count(b"\n") + data.count(b"\r") + 1)
        if spot is not None:
            assert chain.spot == spot


@given(st.sampled_from(["cboe", "yfinance-csv", "tidy-csv"]),
       st.lists(st.lists(st.one_of(st.sampled_from(JUNK_CELLS), st.text(max_size=6), st.floats().map(repr)),
                         min_size=0, max_size=25), min_size=0, max_size=8))
@counted
def test_readers_header_then_junk_rows(fmt, rows):
    """A real header (so the format is detected) followed by junk rows: each reader directly."""
    from core.sources.cboe import read_cboe
    from core.sources.tidy import read_tidy_csv
    from core.sources.yfcsv import read_yfinance_csv

    head = {"cboe": 3, "yfinance-csv": 1, "tidy-csv": 8}[fmt]
    lines = _exported(fmt).splitlines()[:head] + [",".join(r) for r in rows]
    data = "\n".join(lines).encode("utf-8")
    reader = {"cboe": read_cboe, "yfinance-csv": read_yfinance_csv, "tidy-csv": read_tidy_csv}[fmt]
    chain = _load_or_error(reader, data)
    if chain is not None:
        _check_chain(chain, data_lines=len(rows))


@given(st.text(max_size=300), st.sampled_from(["read_cboe", "read_yfinance_csv", "read_tidy_csv"]))
@counted
def test_readers_arbitrary_text(text, reader):
    from core.sources import cboe, tidy, yfcsv

    fn = {"read_cboe": cboe.read_cboe, "read_yfinance_csv": yfcsv.read_yfinance_csv,
          "read_tidy_csv": tidy.read_tidy_csv}[reader]
    # text with a line break is content, never a path (core.sources._io.read_bytes)
    chain = _load_or_error(fn, text + "\n", asof="2026-06-15 10:30")
    if chain is not None:
        _check_chain(chain)


@given(st.one_of(st.text(max_size=25), st.from_regex(r"[A-Z]{1,6}\d{6}[CP]\d{8}", fullmatch=True),
                 st.integers(), st.none()))
@counted
def test_parse_occ(sym):
    from core.sources.yfcsv import format_occ, parse_occ

    try:
        root, expiry, cp, strike = parse_occ(sym)
    except FormatError:
        return
    assert cp in (1, -1) and 0 <= strike < 1e5 and isinstance(expiry, _dt.date)
    assert parse_occ(format_occ(root, expiry, cp, strike)) == (root, expiry, cp, strike)


# ---------------------------------------------------------------------------------------- surface fits
def _model(rho=-0.6, eta=1.0, gamma=0.4):
    from core.surface.ssvi import SSVISurface, ThetaParametric

    return SSVISurface(rho=rho, eta=eta, gamma=gamma, theta_curve=ThetaParametric(v0=0.03, v_inf=0.05, kappa=1.5))


T_POOL = [1 / 365, 0.02, 0.08, 0.25, 0.25, 0.5, 1.0, 2.0, 5.0]


@st.composite
def iv_quotes(draw, max_expiries: int = 4, max_strikes: int = 12):
    """Quotes with implied vols from an SSVI model, then perturbed: noise, NaN/inf/zero/negative vols,
    duplicated and unsorted strikes, one expiry or one strike, expiries with the same T."""
    model = _model(draw(st.floats(-0.9, 0.0)), draw(st.floats(0.2, 1.5)), draw(st.floats(0.1, 0.5)))
    Ts = draw(st.lists(st.sampled_from(T_POOL), min_size=1, max_size=max_expiries))
    fwd = flat_forwards(100.0, 0.02, 0.0, sorted(set(Ts)))
    rows = []
    for j, T in enumerate(Ts):
        n = draw(st.integers(1, max_strikes))
        ys = draw(st.lists(st.floats(-1.5, 0.8), min_size=n, max_size=n))
        if draw(st.booleans()):
            ys = ys + ys[: draw(st.integers(0, n))]          # duplicated strikes
        noise = draw(st.sampled_from([0.0, 0.0005, 0.01, 0.05]))
        for y in ys:
            iv = float(model.implied_vol(y, T)) + draw(st.floats(-1, 1)) * noise
            if draw(st.integers(0, 9)) == 0:
                iv = draw(st.sampled_from([np.nan, np.inf, 0.0, -0.2, 1e-8, 20.0]))
            half = draw(st.sampled_from([0.001, 0.01, np.nan]))
            K = float(fwd.F(T)) * math.exp(y)
            rows.append({"expiry": pd.Timestamp("2026-06-15") + pd.Timedelta(days=int(j)), "T": T, "strike": K,
                         "cp": 1 if y >= 0 else -1, "y": y, "iv_mid": iv, "iv_bid": iv - half, "iv_ask": iv + half,
                         "use": draw(st.integers(0, 7)) > 0})
    df = pd.DataFrame(rows)
    if draw(st.booleans()):
        df = df.sample(frac=1.0, random_state=draw(st.integers(0, 9))).reset_index(drop=True)
    return df, fwd


def _check_fit(fr, q):
    from core.surface.fit import SurfaceFit

    assert isinstance(fr, SurfaceFit)
    used = q[q["use"] & np.isfinite(q["iv_mid"]) & (q["iv_mid"] > 0)]
    res = fr.residuals
    assert len(res) <= len(used), "residuals only for used quotes"
    assert np.isfinite(res["iv_fit"]).all() and (res["iv_fit"] > 0).all()
    assert np.isfinite(res["resid_bp"]).all()
    assert res["inside"].dtype == bool
    for k, v in fr.rmse_bp.items():
        assert math.isfinite(v) and v >= 0, (k, v)
    for v in fr.inside_share.values():
        assert 0.0 <= v <= 1.0
    assert set(fr.rmse_bp) <= set(fr.params)
    assert all(isinstance(f, str) for f in fr.failed_expiries)
    T = used["T"].to_numpy(float)
    iv = np.asarray(fr.surface.implied_vol(used["y"].to_numpy(float), T))
    lo, hi = getattr(fr.surface, "T_quoted", (0, np.inf))
    inside_T = (T >= lo * (1 - 1e-9)) & (T <= hi * (1 + 1e-9))
    assert np.isfinite(iv[inside_T]).all() and (iv[inside_T] > 0).all(), "no silent NaN at the quotes"
    from core.export import to_json_bytes

    to_json_bytes(fr.params)   # JSON-able, as documented


@pytest.mark.slow
@settings(max_examples=min(settings().max_examples, 60))
@given(iv_quotes(), st.sampled_from(["ssvi", "svi", "smooth"]), st.sampled_from([0.0, 0.3, 1.0]))
@counted
def test_fit_surface(qf, method, smoothing):
    from core.surface.fit import fit_surface

    q, fwd = qf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fr = fit_surface(q, fwd, method=method, smoothing=smoothing)
        except FitError as exc:
            assert str(exc)
            return
    _check_fit(fr, q)


def _slice_quotes(T, ys, ivs):
    fwd = flat_forwards(100.0, 0.02, 0.0, [T])
    F = float(fwd.F(T))
    ys, ivs = np.asarray(ys, float), np.asarray(ivs, float)
    q = pd.DataFrame({"expiry": pd.Timestamp("2026-06-15"), "T": T, "strike": F * np.exp(ys), "y": ys,
                      "iv_mid": ivs, "iv_bid": ivs - 0.001, "iv_ask": ivs + 0.001})
    return q, fwd


@pytest.mark.parametrize("smoothing", [0.3, 1.0])
def test_fit_surface_ssvi_one_expiry_smoothing(smoothing):
    from core.surface.fit import fit_surface

    ys = [-0.6, -0.5, -0.48, 0.0, 0.78]
    q, fwd = _slice_quotes(1.0, ys, [0.2 + 0.02 * y * y for y in ys])
    fr = fit_surface(q, fwd, method="ssvi", smoothing=smoothing)   # five quotes: a fit, not an error
    _check_fit(fr, q.assign(use=True))


@pytest.mark.parametrize("smoothing, outlier", [(0.0, 20.0), (0.3, 20.0), (1.0, 1e-8)])
def test_fit_surface_smooth_outlier_vol(smoothing, outlier):
    from core.surface.fit import fit_surface

    ys = [-0.25, -0.17, 0.0, 0.42, 0.48, 0.58]
    ivs = [0.22 - 0.05 * y for y in ys[:-1]] + [outlier]
    q, fwd = _slice_quotes(5.0, ys, ivs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fr = fit_surface(q, fwd, method="smooth", smoothing=smoothing)
    assert (fr.residuals["iv_fit"] > 0.05).all()


@given(st.sampled_from(["ssvi", "SSVI", "", None, 3]), st.one_of(nasty_float, st.text(max_size=3)),
       st.sampled_from(["vega-spread", "nope"]))
@counted
def test_fit_surface_bad_arguments(method, smoothing, weights):
    from core.surface.fit import fit_surface

    q = pd.DataFrame({"expiry": [pd.Timestamp("2026-09-18")] * 5, "T": 0.25, "strike": [90.0, 95, 100, 105, 110],
                      "y": np.log(np.array([90.0, 95, 100, 105, 110]) / 100), "iv_mid": 0.2})
    ok_args = method == "ssvi" and isinstance(smoothing, float) and 0 <= smoothing <= 1 and weights == "vega-spread"
    if ok_args:
        return
    with pytest.raises(InputError):
        fit_surface(q, flat_forwards(), method=method, smoothing=smoothing, weights=weights)
    with pytest.raises(InputError):
        fit_surface(q.drop(columns=["iv_mid"]), flat_forwards())


# ---------------------------------------------------------------------------------------- local vol
axis = st.one_of(
    st.lists(st.floats(1.0, 400.0), min_size=1, max_size=12).map(sorted),
    st.lists(nasty_float, min_size=0, max_size=5),
    st.lists(st.floats(1.0, 400.0), min_size=2, max_size=6),      # unsorted, maybe duplicated
)
t_axis = st.one_of(st.lists(st.floats(1e-4, 10.0), min_size=1, max_size=8).map(sorted),
                   st.lists(nasty_float, min_size=0, max_size=4), st.lists(st.floats(1e-3, 5.0), min_size=2, max_size=5))


@given(axis, t_axis, st.tuples(st.floats(0.0, 0.5), st.floats(0.0, 5.0)) | st.sampled_from([(0.3, 0.1), (np.nan, 1.0), (0.1,)]),
       st.sampled_from(["gatheral", "price-fd", "price-spline", "other"]),
       st.floats(-0.9, 0.0), st.floats(0.1, 1.5))
@counted
def test_local_vol_grid(K, T, clip, method, rho, eta):
    from core.localvol import FLAGS, local_vol_grid

    K_arr, T_arr = np.asarray(K, float), np.asarray(T, float)
    valid_axis = (lambda a: a.size > 0 and np.all(np.isfinite(a)) and np.all(a > 0) and np.all(np.diff(a) > 0))
    clip_ok = len(clip) == 2 and 0 <= clip[0] < clip[1]
    ok = valid_axis(K_arr) and valid_axis(T_arr) and clip_ok and method != "other"
    # the price methods difference the grid itself: they document a minimum of 2 expiries x 3 strikes
    small_for_prices = method.startswith("price") and (T_arr.size < 2 or K_arr.size < 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = local_vol_grid(_model(rho, eta), flat_forwards(), K, T, clip=clip, method=method)
        except InputError as exc:
            assert not ok or small_for_prices, f"valid arguments refused: {exc}"
            return
    assert ok, "invalid arguments accepted"
    nT, nK = len(T_arr), len(K_arr)
    lo, hi = clip
    for name in ("y", "iv", "local_vol", "local_vol_raw") + FLAGS:
        assert getattr(res, name).shape == (nT, nK), name
    lv, raw = res.local_vol, res.local_vol_raw
    assert np.isfinite(lv).all(), "the clipped local vol is finite everywhere (documented)"
    assert (lv >= lo - 1e-12).all() and (lv <= hi + 1e-12).all()
    fin = np.isfinite(raw)
    assert (raw[fin] >= 0).all()
    np.testing.assert_array_equal(res.clipped_low, fin & (raw < lo))
    np.testing.assert_array_equal(res.clipped_high, fin & (raw > hi))
    inside = fin & (raw >= lo) & (raw <= hi)
    np.testing.assert_allclose(lv[inside], raw[inside])
    assert res.counts["cells"] == nT * nK
    for f in FLAGS:
        assert res.counts[f] == int(getattr(res, f).sum())
    assert res.counts["clipped"] == int((res.clipped_low | res.clipped_high).sum())
    frame = res.to_frame()
    assert len(frame) == nT * nK
    sig = res.interpolator()(np.asarray(K_arr), float(T_arr[0]))
    assert np.isfinite(sig).all()


# ---------------------------------------------------------------------------------------- the seeds' API
@st.composite
def seed_grid(draw):
    from core.seeds import generate_market_surface

    m = generate_market_surface(draw(st.integers(0, 50)), noise_bp=draw(st.sampled_from([0.0, 20.0, 300.0])),
                                missing=draw(st.sampled_from([0.0, 0.2, 0.6])))
    K, T, iv = m.strikes, m.maturities, m.implied_vols.copy()
    kk = draw(st.sampled_from(["all", "few", "one"]))
    if kk == "few":
        K, iv = K[::8], iv[:, ::8]
    elif kk == "one":
        K, iv = K[20:21], iv[:, 20:21]
    tt = draw(st.sampled_from(["all", "one", "two"]))
    if tt == "one":
        T, iv = T[3:4], iv[3:4]
    elif tt == "two":
        T, iv = T[[0, -1]], iv[[0, -1]]
    spoil = draw(st.sampled_from(["none", "nan_cell", "zero_cell", "negative", "inf", "huge", "transpose", "unsorted_K"]))
    iv = iv.copy()
    if spoil == "nan_cell":
        iv[0, 0] = np.nan
    elif spoil == "zero_cell":
        iv[-1, -1] = 0.0
    elif spoil == "negative":
        iv[0, -1] = -0.1
    elif spoil == "inf":
        iv[0, 0] = np.inf
    elif spoil == "huge":
        iv = iv * 50
    elif spoil == "transpose":
        iv = iv.T
    elif spoil == "unsorted_K" and len(K) > 1:
        K = K[::-1].copy()
    return K, T, iv, m.spot, m.r, m.q, spoil


@pytest.mark.slow
@settings(max_examples=min(settings().max_examples, 30))
@given(seed_grid())
@counted
def test_seeds_implied_and_local_vol(g):
    from core.seeds import DEFAULT_CLIP, DupireLocalVol, ImpliedVolSurface, dupire_local_vol

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
    from core.seeds import DEFAULT_CLIP, DupireLocalVol

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
    from core.seeds import ImpliedVolSurface, generate_market_surface

    m = generate_market_surface(0)
    return ImpliedVolSurface(m.strikes, m.maturities, m.implied_vols, m.spot, m.r, m.q)


@settings(max_examples=min(settings().max_examples, 40))
@given(st.floats(50.0, 150.0), st.floats(0.05, 2.0), st.sampled_from(["call", "put", "Call", "straddle"]),
       st.integers(64, 512), st.integers(2, 12), st.integers(0, 3))
@counted
def test_seeds_local_vol_mc(K, T, kind, n_paths, n_steps, seed):
    from core.seeds import generate_market_surface, local_vol_mc

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


# ---------------------------------------------------------------------------------------- pricing
@settings(max_examples=min(settings().max_examples, 40))
@given(st.lists(st.one_of(st.floats(0.01, 3.0), st.sampled_from([0.0, -1.0, np.nan, np.inf, -np.inf])), min_size=0, max_size=4),
       st.floats(0.05, 0.8), st.sampled_from([(41, 8), (61, 12)]))
@counted
def test_forward_dupire_pde(expiries, sigma, grid):
    from core.black import black_price
    from core.localvol import constant_local_vol
    from core.pricing.pde import forward_dupire

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
    from core.localvol import constant_local_vol
    from core.pricing.pde import forward_dupire

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
    from core.black import black_price
    from core.localvol import constant_local_vol
    from core.pricing.mc import mc_european

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
    from core.localvol import constant_local_vol
    from core.pricing.exotics import price_barrier

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
    from core.export import to_json_bytes

    to_json_bytes(res.to_dict())


@settings(max_examples=min(settings().max_examples, 40))
@given(st.one_of(st.floats(50, 150), st.sampled_from([0.0, np.inf])), st.one_of(st.floats(0.05, 2.0), st.just(-1.0)),
       st.integers(-1, 24), st.sampled_from([1, -1]), st.integers(64, 400), st.integers(2, 16))
@counted
def test_price_asian(strike, T, n_fixings, cp, n_paths, n_steps):
    from core.localvol import constant_local_vol
    from core.pricing.exotics import price_asian

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


# ---------------------------------------------------------------------------------------- implied vols of quotes
@given(quote_rows(max_rows=20), st.floats(1.0, 1e4))
@counted
def test_quote_implied_vols(df, spot):
    from core.black import IV_REASONS, quote_implied_vols
    from core.cleaning import clean_quotes

    q = clean_quotes(make(df))
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


# ---------------------------------------------------------------------------------------- arbitrage
@given(quote_rows(max_rows=20), st.booleans(), st.booleans())
@counted
def test_quote_arbitrage(df, with_forwards, include_mid):
    from core.arbitrage import ARBITRAGE_COLUMNS, quote_arbitrage

    q = make(df)
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
    from core.arbitrage import surface_arbitrage

    ya, Ta = np.asarray(y, float), np.asarray(T, float)
    ok = ya.size and Ta.size and np.isfinite(ya).all() and np.isfinite(Ta).all() and (Ta > 0).all()
    try:
        res = surface_arbitrage(_model(rho), y, T)
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


# ---------------------------------------------------------------------------------------- pipeline
@functools.lru_cache(maxsize=1)
def _demo_slice():
    """Four expiries of the demo chain, every third strike (about 300 quotes): a quick but real chain."""
    from core.quotes import QuoteChain
    from core.sources.demo import demo_chain

    c = demo_chain()
    exp = c.expiries
    q = c.quotes[c.quotes["expiry"].isin([exp[1], exp[4], exp[7], exp[10]])]
    strikes = sorted(q["strike"].unique())[::3]
    q = q[q["strike"].isin(strikes)].reset_index(drop=True)
    return QuoteChain(q, c.underlying, c.asof, c.source, c.spot, c.spot_time, c.exercise, {})


@st.composite
def perturbed_chain(draw):
    """The demo slice after one or more of: drop rows, duplicate rows, shuffle, NaN-out cells, keep a
    single expiry or a single strike, scale every price by 1e-6 or 1e6 (alone, or with strikes and spot)."""
    from core.quotes import QuoteChain

    c = _demo_slice()
    q = c.quotes.copy()
    spot = c.spot
    ops = draw(st.lists(st.sampled_from(["drop", "dup", "shuffle", "nan", "one_expiry", "one_strike",
                                         "scale_prices", "scale_all", "no_spot", "american"]), max_size=3, unique=True))
    exercise = c.exercise
    rnd = np.random.default_rng(draw(st.integers(0, 2**16)))
    if "one_expiry" in ops:
        q = q[q["expiry"] == draw(st.sampled_from(sorted(q["expiry"].unique())))]
    if "one_strike" in ops:
        q = q[q["strike"] == draw(st.sampled_from(sorted(q["strike"].unique())))]
    if "drop" in ops and len(q):
        q = q.sample(frac=draw(st.sampled_from([0.1, 0.5, 0.9])), random_state=int(rnd.integers(1 << 30)))
    if "dup" in ops and len(q):
        q = pd.concat([q, q.sample(frac=0.3, random_state=int(rnd.integers(1 << 30)))])
    if "shuffle" in ops:
        q = q.sample(frac=1.0, random_state=int(rnd.integers(1 << 30)))
    q = q.reset_index(drop=True)
    if "nan" in ops and len(q):
        for col in draw(st.lists(st.sampled_from(["bid", "ask", "strike", "T", "last", "volume"]), min_size=1, max_size=3)):
            q.loc[rnd.random(len(q)) < 0.2, col] = np.nan
    factor = draw(st.sampled_from([1e-6, 1e6]))
    if "scale_prices" in ops:
        q[["bid", "ask", "last"]] *= factor
    if "scale_all" in ops:
        q[["bid", "ask", "last", "strike"]] *= factor
        spot = spot * factor
    if "no_spot" in ops:
        spot = None
    if "american" in ops:
        exercise = "american"
    return QuoteChain(q, c.underlying, c.asof, c.source, spot, c.spot_time if spot else None, exercise, {}), ops


def _check_prepared(prep, chain):
    from core.cleaning import REASONS

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
    from core.pipeline import Settings, prepare

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
        ref = prepare(_demo_slice(), Settings()).quotes
        a, b = ref["iv_mid"].to_numpy(float), prep.quotes["iv_mid"].to_numpy(float)
        np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
        np.testing.assert_allclose(a[np.isfinite(a)], b[np.isfinite(b)], rtol=1e-6, atol=1e-8)


@pytest.mark.slow
@settings(max_examples=min(settings().max_examples, 12))
@given(perturbed_chain(), st.sampled_from(["ssvi", "svi", "smooth", "price-fd"]),
       st.sampled_from([(0.02, 2.0), (0.15, 0.25), (0.0, 10.0)]))
@counted
def test_calibrate_perturbed_demo(chain_ops, method, clip):
    from core.pipeline import Settings, calibrate, summary_dict

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


# ---------------------------------------------------------------------------------------- settings, snapshots
@given(st.fixed_dictionaries({}, optional={
    "method": st.sampled_from(["ssvi", "svi", "smooth", "price-fd", "price-spline", "SSVI", "", "heston"]),
    "smoothing": st.one_of(nasty_float, st.floats(-1, 2)), "clip": st.tuples(nasty_float, nasty_float),
    "r": st.one_of(st.none(), nasty_float), "q": st.one_of(st.none(), nasty_float),
    "expiries": st.one_of(st.none(), st.lists(st.sampled_from(["2026-06-26", "2026-09-18"]), max_size=2)),
    "n_strikes": st.integers(-3, 300), "n_expiries": st.integers(-3, 100)}))
@counted
def test_settings_validation(kw):
    from core.pipeline import METHODS, Settings

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
    from core.pipeline import Settings

    with pytest.raises(InputError, match="expir"):
        Settings(expiries=[bad])


@given(st.binary(max_size=300), st.sampled_from(["SPY_20261121T153000Z.csv.gz", "X_20260101T000000Z-2.csv.gz"]))
@counted
def test_snapshot_junk_file_is_reported_not_deleted(data, name):
    import tempfile
    from pathlib import Path

    from core.errors import SnapshotError
    from core.sources.snapshots import SnapshotStore

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / name
        p.write_bytes(data)
        store = SnapshotStore(d)
        infos = store.list()
        assert len(infos) == 1 and not infos[0].ok and infos[0].error
        with pytest.raises(SnapshotError):
            store.load(p)
        assert p.read_bytes() == data, "a corrupt snapshot stays on disk untouched"


@settings(max_examples=min(settings().max_examples, 100))
@given(st.sampled_from(["cboe", "yfinance-csv", "tidy-csv"]).flatmap(mutated_file))
@counted
def test_snapshot_round_trip_of_loaded_files(data):
    import tempfile

    from core.sources.detect import load_file
    from core.sources.snapshots import SnapshotStore

    chain = _load_or_error(load_file, data, asof="2026-06-15 10:30")
    if chain is None:
        return
    with tempfile.TemporaryDirectory() as d:
        store = SnapshotStore(d)
        path = store.save(chain)
        back = store.load(path)
    cols = ["expiry", "strike", "cp", "bid", "ask", "T"]
    pd.testing.assert_frame_equal(back.quotes[cols].reset_index(drop=True), chain.quotes[cols].reset_index(drop=True),
                                  check_dtype=False)
    assert back.spot == chain.spot and back.underlying == chain.underlying


# ---------------------------------------------------------------------------------------- sources by name
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
    from core.errors import DataSourceError
    from core.pipeline import open_source
    from core.sources.yahoo import validate_ticker

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
    _check_chain(chain)


@pytest.mark.parametrize("spec", ["demo:abc", "demo:", "demo:-1"])
def test_open_source_bad_demo_seed(spec):
    from core.pipeline import open_source

    with pytest.raises(InputError, match="seed|demo"):
        open_source(spec)


# ---------------------------------------------------------------------------------------- example budget
def test_zz_example_budget():
    """A full CI run of this file tries at least ``BUDGET`` examples (derandomised profile ``ci``)."""
    total = sum(_EXAMPLES.values())
    ran = set(_EXAMPLES)
    print(f"\nHypothesis examples in tests/test_properties.py: {total} over {len(ran)} property tests "
          f"(max_examples={settings().max_examples})")
    for name, n in sorted(_EXAMPLES.items()):
        print(f"  {name}: {n}")
    if settings().max_examples < 400 or ran != _PROPERTY_TESTS:
        pytest.skip(f"budget checked only on a full run with the ci profile: {total} examples here "
                    f"(max_examples={settings().max_examples}, {len(ran)}/{len(_PROPERTY_TESTS)} property tests ran)")
    assert total >= BUDGET
