"""The benchmark harness (`python -m bench`): discovery, one table, errors as rows, RESULTS.md merge."""
from __future__ import annotations

import math
import sys
import types

import pytest

import bench.__main__ as harness
from bench.common import ROW_KEYS, best_of, format_table, ratio, row


def _fake_module(name: str, rows=None, exc: Exception | None = None) -> types.ModuleType:
    mod = types.ModuleType(f"bench.bench_{name}")

    def run(quick: bool = False):
        if exc is not None:
            raise exc
        return [dict(r, notes=f"quick={quick}") for r in rows]

    mod.run = run
    return mod


@pytest.fixture
def fakes(monkeypatch):
    good = _fake_module("zz_good", rows=[row("speed", "M/s", 10.0, "peer", 2.0, ratio(10.0, 2.0))])
    bad = _fake_module("zz_bad", exc=RuntimeError("boom"))
    monkeypatch.setitem(sys.modules, "bench.bench_zz_good", good)
    monkeypatch.setitem(sys.modules, "bench.bench_zz_bad", bad)
    monkeypatch.setattr(harness, "discover", lambda: ["zz_bad", "zz_good"])


def test_discovers_the_iv_module():
    assert "iv" in harness.discover()


def test_ratio_and_table():
    assert ratio(10.0, 2.0) == 5.0
    assert ratio(1e-14, 1e-11, higher_is_better=False) == pytest.approx(1000.0)
    assert math.isinf(ratio(0.0, 1e-9, higher_is_better=False))
    assert math.isnan(ratio(math.nan, 1.0))
    table = format_table([row("a|b", "ms", 1.5, "p", 3.0, 2.0, "n")])
    lines = table.splitlines()
    assert len(lines) == 3 and lines[0].count("|") == len(ROW_KEYS) + 1
    assert "a\\|b" in lines[2] and "2x" in lines[2]
    secs, res = best_of(lambda: 42, repeat=2)
    assert res == 42 and secs >= 0


def test_quick_run_prints_one_table_with_error_row_and_writes(fakes, tmp_path, capsys):
    out = tmp_path / "RESULTS.md"
    assert harness.main(["--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("| benchmark |") == 1
    assert "RuntimeError: boom" in printed          # the broken module shows as a row
    assert "quick=True" in printed and "5x" in printed  # the good one still ran, quick
    text = out.read_text()
    assert "nproc" in text and "numpy" in text and "RuntimeError: boom" in text
    # a later run of one module keeps the other module's saved rows
    assert harness.main(["zz_good", "--out", str(out)]) == 0
    again = out.read_text()
    assert "RuntimeError: boom" in again and "quick=False" in again
    assert "quick=True" not in again


def test_quick_mode_writes_nothing_by_default(fakes, monkeypatch, tmp_path):
    target = tmp_path / "R.md"
    monkeypatch.setattr(harness, "RESULTS", target)
    assert harness.main(["--quick"]) == 0
    assert not target.exists()


def test_unknown_module_is_a_usage_error(fakes):
    with pytest.raises(SystemExit):
        harness.main(["nope"])


def test_bench_iv_quick_rows_are_complete():
    from bench import bench_iv

    rows, _ = harness.run_module("iv", quick=True)
    assert rows and all(set(ROW_KEYS) <= set(r) for r in rows), rows
    assert all(r["metric"] != "ERROR" for r in rows), rows
    peers = {r["peer"] for r in rows}
    assert {"vollib LBR (loop)", "seed bisection (loop)"} <= peers
    assert bench_iv.make_inputs(50)["price"].shape == (50,)
