"""Snapshots: exact round trip, atomic writes, and bad files reported (never deleted, never crashing)."""
from __future__ import annotations

import dataclasses
import errno
import gzip
import os
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.demo import demo_chain
from core.errors import InputError, SnapshotError
from core.sources import snapshots as snapmod
from core.sources.snapshots import SnapshotInfo, SnapshotStore, default_folder, safe_name


@pytest.fixture(scope="module")
def chain():
    return demo_chain()


@pytest.fixture(scope="module")
def small(chain):
    """Two expiries of the demo, for tests where size does not matter."""
    return chain.select_expiries(chain.expiries[:2])


@pytest.fixture(scope="module")
def later():
    return demo_chain(asof="2026-06-16 11:00")


@pytest.fixture(scope="module")
def good_bytes(chain, tmp_path_factory):
    """The bytes of one good snapshot file (to corrupt in copies)."""
    p = SnapshotStore(tmp_path_factory.mktemp("good")).save(chain)
    return p.read_bytes(), p.name


def test_round_trip_is_exact(chain, tmp_path):
    store = SnapshotStore(tmp_path)
    path = store.save(chain)
    assert path.parent == tmp_path and path.name == "DEMO_20260615T143000Z.csv.gz"
    back = store.load(path)
    pd.testing.assert_frame_equal(back.quotes, chain.quotes)
    assert (back.underlying, back.asof, back.source, back.spot, back.exercise) == \
        (chain.underlying, chain.asof, chain.source, chain.spot, chain.exercise)
    assert back.spot_time == chain.spot_time
    # JSON-able metadata survives; the model objects are not JSON and are named in the header instead
    assert back.meta["bad_quotes"] == chain.meta["bad_quotes"]
    assert back.meta["snapshot_path"] == str(path)
    with gzip.open(path, "rt") as fh:
        first = fh.readline()
    assert first.startswith(snapmod.MAGIC) and '"meta_not_saved"' in first and "forwards" in first


def test_load_by_info_and_by_name(chain, tmp_path):
    store = SnapshotStore(tmp_path)
    path = store.save(chain)
    (info,) = store.list()
    assert info.ok and info.n_quotes == len(chain.quotes) and info.underlying == "DEMO"
    assert info.asof == chain.asof and info.source == "demo" and info.size == path.stat().st_size
    assert "DEMO 2026-06-15 14:30 UTC" in info.label and "3,639 quotes" in info.label
    assert len(store.load(info).quotes) == len(chain.quotes)
    assert len(store.load(path.name).quotes) == len(chain.quotes)


def test_never_overwrites_and_lists_newest_first(small, later, tmp_path):
    store = SnapshotStore(tmp_path)
    p1, p2 = store.save(small), store.save(small)
    p3 = store.save(later)
    assert len({p1, p2, p3}) == 3 and p2.name.endswith("-2.csv.gz")
    names = [i.path.name for i in store.list()]
    assert names == [p3.name, p2.name, p1.name]


def test_names_are_sanitised(small, tmp_path):
    for u, expect in (("^SPX", "_SPX"), ("../../etc/passwd", "_.._etc_passwd"), ("", "UNKNOWN"),
                      ("BRK.B", "BRK.B"), ("..hidden", "hidden")):
        assert safe_name(u) == expect
        p = SnapshotStore(tmp_path).save(dataclasses.replace(small, underlying=u))
        assert p.parent == tmp_path and p.name.startswith(expect + "_")
        assert SnapshotStore(tmp_path).load(p).underlying == u


def test_load_refuses_paths_outside_the_folder(chain, tmp_path):
    store = SnapshotStore(tmp_path / "a")
    p = SnapshotStore(tmp_path / "b").save(chain)
    with pytest.raises(InputError, match="not in the snapshot folder"):
        store.load(p)
    with pytest.raises(InputError, match="not a snapshot file name"):
        store.load(tmp_path / "a" / "notes.txt")
    with pytest.raises(InputError):
        store.load(42)


def _plant(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("kind", ["truncated", "flipped", "altered_body", "not_gzip", "empty", "bad_header",
                                  "no_header"])
def test_bad_files_are_listed_with_error_and_kept(good_bytes, later, tmp_path, kind):
    data, _ = good_bytes
    text = gzip.decompress(data).decode()
    first, _, body = text.partition("\n")
    bad = {
        "truncated": data[: len(data) // 2],
        "flipped": data[:200] + bytes(b ^ 0x5A for b in data[200:260]) + data[260:],
        "altered_body": gzip.compress((first + "\n" + body.replace(",", ";", 5)).encode()),
        "not_gzip": b"underlying,strike\nSPY,100\n",
        "empty": b"",
        "bad_header": gzip.compress((snapmod.MAGIC + "{not json\n" + body).encode()),
        "no_header": gzip.compress(body.encode()),
    }[kind]
    store = SnapshotStore(tmp_path)
    good = store.save(later)
    p = _plant(tmp_path, "SPY_20261121T153000Z.csv.gz", bad)
    infos = store.list()
    assert [i.path for i in infos] == [p, good]          # newest first; the bad one listed by its name's time
    info = infos[0]
    assert not info.ok and info.error and info.underlying == "SPY" and info.n_quotes is None
    assert info.asof == pd.Timestamp("2026-11-21 15:30", tz="UTC")
    assert "unreadable" in info.label
    with pytest.raises(SnapshotError, match="SPY_20261121T153000Z.csv.gz"):
        store.load(info)
    assert p.exists() and p.read_bytes() == bad           # never deleted, never touched
    assert store.list()[1].ok


def test_truncation_and_corruption_say_so(good_bytes, tmp_path):
    data, _ = good_bytes
    store = SnapshotStore(tmp_path)
    p = _plant(tmp_path, "X_20260101T000000Z.csv.gz", data[:-7])
    with pytest.raises(SnapshotError, match="truncated"):
        store.load(p)
    text = gzip.decompress(data).decode()
    p2 = _plant(tmp_path, "X_20260101T000001Z.csv.gz", gzip.compress(text[:-300].encode()))
    with pytest.raises(SnapshotError, match="truncated or altered"):
        store.load(p2)


@settings(max_examples=25)
@given(pos=st.integers(min_value=0, max_value=10**9), junk=st.binary(min_size=1, max_size=40),
       cut=st.booleans())
def test_random_damage_never_crashes(good_bytes, tmp_path_factory, pos, junk, cut):
    data, _ = good_bytes
    i = pos % len(data)
    bad = data[:i] + (b"" if cut else junk + data[i + len(junk):])
    folder = tmp_path_factory.mktemp("fuzz")
    p = _plant(folder, "Z_20260101T000000Z.csv.gz", bad)
    store = SnapshotStore(folder)
    (info,) = store.list()
    try:
        back = store.load(p)
    except SnapshotError:
        assert not info.ok
    else:
        assert info.ok and len(back.quotes) == info.n_quotes


def test_full_disk(chain, tmp_path, monkeypatch):
    def full(fh, data):
        fh.write(data[:100])        # a partial write, then the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(snapmod, "_write_all", full)
    store = SnapshotStore(tmp_path)
    with pytest.raises(SnapshotError, match="disk is full"):
        store.save(chain)
    assert list(tmp_path.iterdir()) == []              # no half file, no temp file
    assert store.list() == []


def test_read_only_folder(chain, tmp_path, monkeypatch):
    # chmod does not stop root (CI runs as root), so the refusal is simulated where the file is created
    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(snapmod.tempfile, "mkstemp", refuse)
    with pytest.raises(SnapshotError, match="no permission"):
        SnapshotStore(tmp_path).save(chain)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes through chmod")
def test_read_only_folder_for_real(chain, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(SnapshotError):
            SnapshotStore(ro).save(chain)
    finally:
        ro.chmod(0o700)


def test_folder_cannot_be_created(chain, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SnapshotError):
        SnapshotStore(blocker / "snapshots").save(chain)
    assert SnapshotStore(blocker / "snapshots").list() == []


def test_rename_failure_leaves_no_temp_file(chain, tmp_path, monkeypatch):
    def boom(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(snapmod.os, "replace", boom)
    with pytest.raises(SnapshotError, match="I/O error"):
        SnapshotStore(tmp_path).save(chain)
    assert list(tmp_path.iterdir()) == []


def test_default_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("DUPIRE_DESK_HOME", str(tmp_path))
    assert default_folder() == tmp_path / "snapshots"
    assert SnapshotStore().folder == tmp_path / "snapshots"
    monkeypatch.delenv("DUPIRE_DESK_HOME")
    assert default_folder() == Path.home() / ".dupire_desk" / "snapshots"
    assert not SnapshotStore(tmp_path / "never").folder.exists()     # nothing created before a save


def test_missing_folder_lists_empty_and_ignores_strangers(chain, tmp_path):
    assert SnapshotStore(tmp_path / "nope").list() == []
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".tmp-abc.part").write_bytes(b"partial")
    (tmp_path / "DEMO_20260615T143000Z.csv.gz").mkdir()           # a folder with a snapshot's name
    assert SnapshotStore(tmp_path).list() == []


def test_save_rejects_non_chain(tmp_path):
    with pytest.raises(InputError):
        SnapshotStore(tmp_path).save("not a chain")


def test_snapshot_info_is_frozen(tmp_path):
    info = SnapshotInfo(path=tmp_path / "a", underlying="A", asof=None, n_quotes=None, ok=False, error="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.ok = True
    assert "unknown time" in info.label
