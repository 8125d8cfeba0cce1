"""A damaged index.db never changes answers silently: `vecsearch check`, and checks on open and on `index`."""

from __future__ import annotations

import random
import shutil
import sqlite3

import numpy as np
import pytest
from helpers import run, run_json

from vecsearch import DatabaseDamagedError, check_index, open_index

TINY = ["--backbone", "tiny", "--weights", "none", "--seed", "7"]


@pytest.fixture
def sealed(photos, index_dir):
    """An index of the 12 photos with a few labels, its WAL folded into index.db (no -wal file):
    every byte of the database is in the one file the flips below change."""
    run("index", photos, "--index", index_dir, *TINY, "--quiet")
    with open_index(index_dir, create=False) as ix:
        ids = ix.store.vector_ids()
        ix.store.set_user_labels([(int(i), "even" if i % 2 == 0 else "odd", None, "csv") for i in ids[:6]])
    with sqlite3.connect(index_dir / "index.db") as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for extra in ("index.db-wal", "index.db-shm"):
        (index_dir / extra).unlink(missing_ok=True)
    return photos, index_dir


def _answers(index_dir) -> tuple:
    """What `list`, `query` and the labels answer (in Python: any exception means "not silent")."""
    with open_index(index_dir, create=False) as ix:
        listed = [r.path for r in ix.iter_images()]
        queries = np.random.default_rng(0).standard_normal((4, ix.info.dim)).astype(np.float32)
        found = [[(h.id, h.path) for h in ix.search(q, k=5)] for q in queries]
        return listed, found, ix.store.user_labels()


def _flipped(sealed, tmp_path, offset: int, n: int, mask: int | None = None):
    """A copy of the sealed index with one byte of index.db changed (`mask`, else all bits or one)."""
    _, index_dir = sealed
    copy = tmp_path / f"flip-{n}"
    shutil.copytree(index_dir, copy)
    data = bytearray((copy / "index.db").read_bytes())
    data[offset] ^= mask or (0xFF if n % 2 else 1 << (n % 8))
    (copy / "index.db").write_bytes(bytes(data))
    return copy


def test_a_sound_index_passes_check(sealed):
    _, index_dir = sealed
    out = run("check", "--index", index_dir)
    assert "index.db sound, 12 stored vectors match their checksums" in out.stdout
    report = run_json("check", "--index", index_dir)
    assert report["ok"] and report["vectors"] == {"ok": True, "checked": 12, "damaged_ids": []}
    assert report["database"]["problems"] == [] and report["problems"] == []


def test_flipped_bytes_in_index_db_never_change_answers_silently(sealed, tmp_path, monkeypatch):
    """Single-byte flips where the red team's changed `list` and `query` (stored paths, page
    headers, the schema) and at random. Each flip that changes what `list`, `query` or the
    labels answer when nothing checks is reported: every open refuses it (a small index.db is
    checked in full), `check` names it in one line, exit 1, and `index` refuses, writing nothing."""
    from vecsearch.store import database

    photos, index_dir = sealed
    want = _answers(index_dir)
    data = (index_dir / "index.db").read_bytes()
    page = 4096
    # Inside stored paths, in the table's rows and in the unique index on them: one bit, so the
    # path stays text and names another file (the silent kind: "img01" becomes "img00").
    in_paths = {f(p.encode()) + len(p) - 6 for p in want[0][::3] for f in (data.find, data.rfind)}
    targets = set(in_paths)
    targets |= {1 * page + 3, 2 * page + 5, (len(data) // page - 1) * page + 1}  # b-tree page headers
    targets |= {0x200, 0x400}  # the schema, on page 1
    targets |= set(random.Random(10).sample(range(100, len(data)), 16))
    changed = 0
    for n, offset in enumerate(sorted(targets)):
        flipped = _flipped(sealed, tmp_path, offset, n, 0x01 if offset in in_paths else None)
        with monkeypatch.context() as unchecked:  # what answered before: no check on open
            unchecked.setattr(database, "FULL_CHECK_ON_OPEN_BYTES", -1)
            unchecked.setattr(database, "QUICK_CHECK_ON_OPEN_BYTES", -1)
            try:
                silent = _answers(flipped) != want
            except Exception:  # noqa: BLE001 - an error is not a silent change
                silent = False
        result = run("check", "--index", flipped, ok=False)
        if result.exit_code == 0:
            assert not silent, f"a flip at byte {offset} changed answers and `check` found nothing"
            assert _answers(flipped) == want
            continue
        changed += silent
        lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(lines) == 1 and "index.db is damaged: " in lines[0] and "Restore the index folder" in lines[0], result.output
        with pytest.raises(DatabaseDamagedError):
            _answers(flipped)
        before = (flipped / "index.db").read_bytes()
        refused = run("index", photos, "--index", flipped, "--quiet", ok=False)
        assert refused.exit_code == 1 and "Traceback" not in refused.output
        assert [ln for ln in refused.output.splitlines() if ln.startswith("Error:")] == [lines[0]]
        assert (flipped / "index.db").read_bytes() == before  # nothing written into a damaged file
    assert changed >= 4  # flips that changed answers, unchecked, were among them (and were caught)


def test_check_json_reports_database_damage_and_exits_1(sealed, tmp_path):
    _, index_dir = sealed
    data = (index_dir / "index.db").read_bytes()
    path = _answers(index_dir)[0][4]
    flipped = _flipped(sealed, tmp_path, data.find(path.encode()) + len(path) - 5, 1)
    result = run("check", "--index", flipped, "--json", ok=False)
    assert result.exit_code == 1
    import json

    report = json.loads(result.stdout)
    assert report["ok"] is False and report["database"]["ok"] is False and report["database"]["problems"]
    assert "Restore the index folder" in report["database"]["advice"]
    assert report["vectors"]["checked"] == 0  # not read from a database that cannot be trusted
    with pytest.raises(DatabaseDamagedError, match="index.db is damaged"):
        open_index(flipped, create=False)


def test_check_reports_damaged_vectors_and_a_damaged_structure_file(photos, index_dir):
    run("index", photos, "--index", index_dir, *TINY, "--index-type", "hnsw", "--quiet")
    shard = index_dir / "vectors" / "shard-000000.f32"
    raw = bytearray(shard.read_bytes())
    raw[3 * 128 + 4] ^= 0xFF
    shard.write_bytes(bytes(raw))
    structure = index_dir / "vectors.faiss"
    raw = bytearray(structure.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    structure.write_bytes(bytes(raw))
    report = check_index(index_dir)
    assert not report.ok and report.database == [] and report.damaged_vectors and "checksum" in report.structure
    result = run("check", "--index", index_dir, ok=False)
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(lines) == 2
    assert "changed on disk" in lines[0] and "vecsearch index" in lines[0]
    assert "vectors.faiss does not match the checksum" in lines[1] and "rebuilds it" in lines[1]


def test_a_larger_index_db_is_checked_by_index_runs_not_on_every_open(sealed, tmp_path, monkeypatch):
    """Above the open-time sizes (here: any size) a query answers without reading the whole
    database; `index` still checks it in full first, and refuses."""
    from vecsearch.store import database

    photos, index_dir = sealed
    data = (index_dir / "index.db").read_bytes()
    path = _answers(index_dir)[0][2]
    flipped = _flipped(sealed, tmp_path, data.find(path.encode()) + len(path) - 5, 1)
    with pytest.raises(DatabaseDamagedError):
        open_index(flipped, create=False)  # small: checked in full on open
    monkeypatch.setattr(database, "FULL_CHECK_ON_OPEN_BYTES", 0)
    monkeypatch.setattr(database, "QUICK_CHECK_ON_OPEN_BYTES", 0)
    open_index(flipped, create=False).close()  # large: no check on open (a quick_check would pass too)
    refused = run("index", photos, "--index", flipped, "--quiet", ok=False)
    assert refused.exit_code == 1 and "index.db is damaged: " in refused.output
