"""The command line under bad input and faults: one plain error on stderr, a non-zero exit, no
traceback; and a good run on the demo market writing the documented files and summary keys.

Most cases run ``core.__main__.main(argv)`` in-process (fast); the ones that must prove what a user
sees from a shell (no traceback, the exit code, the network bound) run ``python -m core`` in a
subprocess. No test touches the network: the live-data cases route yfinance through a proxy on a
closed local port, so "no network" is simulated deterministically.
"""
from __future__ import annotations

import csv
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
OFFLINE_ENV = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
               "ALL_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
               "http_proxy": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}
SUMMARY_KEYS = {"source", "spot", "asof", "method", "n_quotes", "n_used", "excluded", "expiries", "local_vol", "seconds"}
EXPIRY_KEYS = {"expiry", "T", "forward", "discount", "n_used", "rmse_bp", "inside_bid_ask"}
LOCAL_VOL_KEYS = {"cells", "clipped", "butterfly", "calendar", "extrapolated"}
CALIBRATE_FILES = {"quotes.csv", "forwards.csv", "surface.json", "local_vol.csv", "arbitrage.json", "summary.json"}


def run_cli(args: list[str], *, env: dict | None = None, timeout: float = 120.0, cwd=None):
    """``python -m core ARGS`` in a subprocess; returns (exit code, stdout, stderr, seconds)."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("CI_DEBUG", None)
    if env:
        e.update(env)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "core", *args], capture_output=True, text=True, env=e,
                       timeout=timeout, cwd=cwd or ROOT)
    return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0


def main_cli(argv: list[str], capsys):
    """``core.__main__.main(argv)`` in-process; argparse's own errors (SystemExit) become exit codes."""
    from core.__main__ import main

    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return rc, out, err


def assert_plain_error(rc, err: str, *words: str, one_line: bool = True):
    """Non-zero exit, no traceback, and the error names what went wrong (case-insensitive words)."""
    assert rc not in (0, None), f"expected a failure, got exit code {rc}"
    assert "Traceback" not in err and 'File "' not in err, f"traceback on stderr:\n{err}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, "an error message on stderr"
    if one_line:
        assert len(lines) == 1, f"one plain line expected, got:\n{err}"
    low = err.lower()
    for w in words:
        assert w.lower() in low, f"{w!r} not in the message: {err!r}"


# ----------------------------------------------------------------------------------------- bad files
def test_missing_file_subprocess(tmp_path):
    rc, out, err, _ = run_cli(["quotes", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert_plain_error(rc, err, "nope.csv")
    assert not (tmp_path / "o").exists(), "nothing written on failure"


@pytest.mark.parametrize("content, words", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ("not a csv",)),
    (b"PK\x03\x04\x14\x00\x00\x00", ("excel",)),
    (b"", ("empty",)),
    (b"   \n\n  \n", ("empty",)),
    (b"hello world\nthis is not a chain\n", ("accepted formats",)),
    (b"a,b,c\n1,2,3\n", ("accepted formats",)),
    (b"expiry,strike,cp,bid\n2026-09-18,100,C,1.0\n", ("format",)),
    ("expiry,strike,cp,bid,ask\n2026-09-18,100,C,1.0,1.1\n".encode("utf-16"), ("quote time", "asof")),
    (b"\xff\xfe\x00\xd8garbage", ()),
], ids=["png", "xlsx", "empty", "blank", "text", "wrong-columns", "missing-ask", "utf16-no-asof", "bad-utf16"])
def test_junk_files(tmp_path, capsys, content, words):
    f = tmp_path / "upload.csv"
    f.write_bytes(content)
    rc, out, err = main_cli(["quotes", str(f), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert_plain_error(rc, err, *words)


def test_junk_file_subprocess_has_no_traceback(tmp_path):
    f = tmp_path / "junk.bin"
    f.write_bytes(os.urandom(2048) + b"\x00")
    rc, out, err, _ = run_cli(["calibrate", str(f), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert_plain_error(rc, err, "csv")


def test_wrong_encoding_latin1_is_read(tmp_path, capsys):
    """A latin-1 file (accents in a comment line) is decoded, not refused."""
    from core.demo import demo_chain
    from core.sources.tidy import tidy_text

    c = demo_chain()
    text = "# note: Zürich café\n" + tidy_text(c.select_expiries(c.expiries[:2]))
    f = tmp_path / "latin1.csv"
    f.write_bytes(text.encode("latin-1"))
    rc, out, err = main_cli(["quotes", str(f), "--out", str(tmp_path / "o")], capsys)
    assert rc == 0, err
    assert json.loads(out)["quotes"] > 0


# ----------------------------------------------------------------------------------------- live data, offline
def test_unknown_ticker_without_network_fails_fast(tmp_path):
    rc, out, err, secs = run_cli(["quotes", "yahoo:ZZZZNOTREAL", "--timeout", "3", "--out", str(tmp_path / "o")],
                                 env=OFFLINE_ENV, timeout=60)
    assert rc == 2
    assert_plain_error(rc, err, "network", one_line=False)
    assert secs < 30, f"gave up after {secs:.1f} s"
    assert not (tmp_path / "o").exists()


def test_no_network_error_is_one_line(tmp_path):
    rc, out, err, _ = run_cli(["quotes", "yahoo:SPY", "--timeout", "3", "--out", str(tmp_path / "o")],
                              env=OFFLINE_ENV, timeout=60)
    assert_plain_error(rc, err, "network", one_line=True)


@pytest.mark.parametrize("ticker", ["../../etc/passwd", "SPY;rm -rf /", "A" * 40, "", "$(id)"])
def test_bad_ticker_text(tmp_path, capsys, ticker):
    rc, out, err = main_cli(["quotes", f"yahoo:{ticker}", "--out", str(tmp_path / "o")], capsys)
    assert_plain_error(rc, err, "ticker")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "1e9"])
def test_bad_timeout(tmp_path, capsys, timeout):
    rc, out, err = main_cli(["quotes", "yahoo:SPY", "--timeout", timeout, "--out", str(tmp_path / "o")], capsys)
    assert_plain_error(rc, err, "timeout")


# ----------------------------------------------------------------------------------------- bad options
@pytest.mark.parametrize("clip", ["0.5", "a,b", "1,2,3", ""])
def test_bad_clip_syntax(tmp_path, capsys, clip):
    """argparse refuses it with one error line naming --clip (no usage block), exit 2."""
    rc, out, err = main_cli(["calibrate", "demo", f"--clip={clip}", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert_plain_error(rc, err, "--clip")
    assert err.strip().startswith("error: argument --clip")


@pytest.mark.parametrize("clip", ["2,1", "-1,1", "0,inf", "nan,1", "0.5,0.5"])
def test_bad_clip_values(tmp_path, capsys, clip):
    rc, out, err = main_cli(["calibrate", "demo", f"--clip={clip}", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert_plain_error(rc, err, "clip")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("grid", ["3x1", "axb", "100", "0x0"])
def test_bad_grid(tmp_path, capsys, grid):
    rc, out, err = main_cli(["calibrate", "demo", "--grid", grid, "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert_plain_error(rc, err)


@pytest.mark.parametrize("method", ["heston", "SSVI", ""])
def test_bad_method(tmp_path, capsys, method):
    rc, out, err = main_cli(["calibrate", "demo", "--method", method, "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert_plain_error(rc, err, "--method", one_line=False)


def test_bad_expiries_text(tmp_path, capsys):
    rc, out, err = main_cli(["quotes", "demo", "--expiries", "junk", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert_plain_error(rc, err, "expir")


def test_unknown_expiry(tmp_path, capsys):
    rc, out, err = main_cli(["quotes", "demo", "--expiries", "2030-01-01", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert_plain_error(rc, err, "2030-01-01", "available")


def test_bad_asof_and_spot_for_files(tmp_path, capsys):
    from core.demo import demo_chain
    from core.sources.yfcsv import write_yfinance_csv

    c = demo_chain()
    f = tmp_path / "yf.csv"
    write_yfinance_csv(c.select_expiries(c.expiries[:2]), f)
    rc, out, err = main_cli(["quotes", str(f), "--asof", "garbage", "--out", str(tmp_path / "o")], capsys)
    assert_plain_error(rc, err, "asof")
    rc, out, err = main_cli(["quotes", str(f), "--spot", "-5", "--out", str(tmp_path / "o")], capsys)
    assert_plain_error(rc, err, "spot")


def test_bad_spot_for_demo_is_refused(tmp_path, capsys):
    rc, out, err = main_cli(["quotes", "demo", "--spot", "-5", "--out", str(tmp_path / "o")], capsys)
    assert_plain_error(rc, err, "spot")


# ----------------------------------------------------------------------------------------- unwritable output
def test_out_is_unwritable_subprocess(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc, out, err, _ = run_cli(["quotes", "demo", "--out", str(blocker / "sub")])
    assert rc == 2
    assert_plain_error(rc, err, "a_file")
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("code, words", [(errno.EACCES, ("permission",)), (errno.ENOSPC, ("space",)),
                                         (errno.EROFS, ("read-only",))])
def test_out_write_fails(tmp_path, capsys, monkeypatch, code, words):
    """A read-only or full output folder (simulated: the CSV writer raises OSError)."""
    def refuse(self, *a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(pd.DataFrame, "to_csv", refuse)
    rc, out, err = main_cli(["quotes", "demo", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert_plain_error(rc, err, *words)


# ----------------------------------------------------------------------------------------- snapshots as a source
def test_corrupt_snapshot_as_source(tmp_path, capsys):
    from core.demo import demo_chain
    from core.sources.snapshots import SnapshotStore

    p = SnapshotStore(tmp_path).save(demo_chain())
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    rc, out, err = main_cli(["quotes", str(p), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert_plain_error(rc, err)
    assert p.read_bytes() == data[: len(data) // 2], "never deleted or rewritten"


def test_snapshot_as_source(tmp_path, capsys):
    from core.demo import demo_chain
    from core.sources.snapshots import SnapshotStore

    p = SnapshotStore(tmp_path).save(demo_chain())
    rc, out, err = main_cli(["quotes", str(p), "--out", str(tmp_path / "o")], capsys)
    assert rc == 0, err


# ----------------------------------------------------------------------------------------- formulas in files
@pytest.fixture()
def evil_tidy_file(tmp_path):
    """A tidy CSV whose underlying and root cells are spreadsheet formulas (OWASP CSV injection)."""
    import dataclasses

    from core.demo import demo_chain
    from core.sources.tidy import write_tidy_csv

    c = demo_chain()
    c = c.select_expiries(c.expiries[:3])
    q = c.quotes.copy()
    q["underlying"] = "=cmd|' /C calc'!A0"
    q["root"] = "@SUM(1+1)*cmd|' /C calc'!A0"
    c = dataclasses.replace(c, quotes=q, underlying="=cmd|' /C calc'!A0")
    f = tmp_path / "evil.csv"
    write_tidy_csv(c, f)
    return f


def _executable_cells(path: Path) -> list[str]:
    from core.export import is_formula_like

    with open(path, newline="", encoding="utf-8") as fh:
        return [cell for row in csv.reader(fh) for cell in row if is_formula_like(cell)]


def test_formula_cells_are_data_not_code(evil_tidy_file, tmp_path, capsys):
    """The file loads (formulas are just text to us); nothing is evaluated; the pipeline runs."""
    rc, out, err = main_cli(["quotes", str(evil_tidy_file), "--out", str(tmp_path / "o")], capsys)
    assert rc == 0, err
    summ = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summ["n_quotes"] > 0


def test_cli_exports_are_escaped(evil_tidy_file, tmp_path, capsys):
    rc, out, err = main_cli(["quotes", str(evil_tidy_file), "--out", str(tmp_path / "o")], capsys)
    assert rc == 0, err
    assert _executable_cells(tmp_path / "o" / "quotes.csv") == []


# ----------------------------------------------------------------------------------------- good runs
def test_quotes_demo(tmp_path, capsys):
    rc, out, err = main_cli(["quotes", "demo", "--out", str(tmp_path / "o")], capsys)
    assert rc == 0, err
    res = json.loads(out)
    o = tmp_path / "o"
    assert {p.name for p in o.iterdir()} >= {"quotes.csv", "forwards.csv", "summary.json"}
    summ = json.loads((o / "summary.json").read_text())
    assert SUMMARY_KEYS - {"method", "local_vol"} <= set(summ)
    q = pd.read_csv(o / "quotes.csv")
    assert len(q) == summ["n_quotes"] == res["quotes"], "every quote is written, with its reason"
    assert q["reason"].notna().all()
    assert summ["n_used"] + sum(summ["excluded"].values()) <= summ["n_quotes"]
    assert sum(summ["excluded"].values()) == (q["reason"] != "ok").sum()


def test_calibrate_demo_subprocess(tmp_path):
    """The documented files and summary.json keys (README, "Command line"), from a real shell run."""
    rc, out, err, secs = run_cli(["calibrate", "demo", "--grid", "20x6", "--out", str(tmp_path / "o")])
    assert rc == 0, err
    assert "Traceback" not in err
    res = json.loads(out)
    o = tmp_path / "o"
    assert CALIBRATE_FILES <= {p.name for p in o.iterdir()}
    assert set(res["files"]) >= CALIBRATE_FILES
    summ = json.loads((o / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summ), SUMMARY_KEYS - set(summ)
    assert summ["source"] == "demo" and summ["method"] == "spline" and summ["spot"] == pytest.approx(5000.0)
    pd.Timestamp(summ["asof"])
    assert LOCAL_VOL_KEYS <= set(summ["local_vol"]) and summ["local_vol"]["cells"] == 120
    assert summ["expiries"] and all(EXPIRY_KEYS <= set(e) for e in summ["expiries"])
    fitted = [e for e in summ["expiries"] if e["rmse_bp"] is not None]
    assert fitted and all(e["rmse_bp"] >= 0 and 0 <= e["inside_bid_ask"] <= 1 for e in fitted)
    assert summ["seconds"]["total"] > 0
    lv = pd.read_csv(o / "local_vol.csv")
    assert len(lv) == 120 and lv["local_vol"].between(0.02, 2.0).all()
    json.loads((o / "surface.json").read_text())
    json.loads((o / "arbitrage.json").read_text())
