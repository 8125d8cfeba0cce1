"""Vectors stored once, in shard files the database points into (and counted apart from the search
structure by `stats`); migration of older indexes."""

from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pytest
from helpers import TESTS, run, run_json

from vecsearch import open_index


def _blob_vectors(db) -> dict[int, np.ndarray]:
    with sqlite3.connect(db) as c:
        return {i: np.frombuffer(data, "<f4") for i, data in c.execute("SELECT image_id, data FROM vectors")}


def test_an_index_made_by_0_1_0_is_migrated_into_shards(tmp_path):
    old = tmp_path / "old"
    shutil.copytree(TESTS / "data" / "index-0.1.0", old)
    before = _blob_vectors(old / "index.db")
    assert len(before) == 10
    with open_index(old, create=False) as ix:
        ids, mat, norms = ix.store.vectors()
        assert ids.tolist() == sorted(before)
        np.testing.assert_array_equal(mat, np.stack([before[i] for i in sorted(before)]))  # bit for bit
        assert np.isfinite(norms).all() and (norms > 0).all()
        assert ix.store.next_slot() == 10
        assert [i for i, *_ in ix.store.user_labels()] == [min(before)]  # labels kept
        first = min(before)
        assert ix.similar(first, k=3)[0].id != first
        hits = ix.search(before[first], k=1)
        assert hits[0].id == first and hits[0].score == pytest.approx(1.0, abs=1e-6)
        st = ix.stats()
        assert st["failed"] == 1 and st["index_type"] == "flat"  # index_kind became index_type
    with sqlite3.connect(old / "index.db") as c:
        columns = [r[1] for r in c.execute("PRAGMA table_info(vectors)")]
        version = c.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        free_pages = c.execute("PRAGMA freelist_count").fetchone()[0]
    assert "data" not in columns and "slot" in columns and version >= "0005"
    assert (old / "vectors" / "shard-000000.f32").stat().st_size == 10 * 32 * 4
    assert free_pages == 0  # vacuumed: the BLOB pages went back to the file system


def test_vectors_live_once_in_shards_and_scratch_rows_are_overwritten(tiny_index, photos, tmp_path):
    s = tiny_index.add([photos / "a"])
    assert s.indexed == 6
    shard = tiny_index.directory / "vectors" / "shard-000000.f32"
    assert shard.stat().st_size == 6 * 32 * 4
    with sqlite3.connect(tiny_index.directory / "index.db") as c:
        assert [r[1] for r in c.execute("PRAGMA table_info(vectors)")] == ["image_id", "norm", "slot"]
    # A crashed writer leaves rows past the commit point: garbage that nothing points at.
    with open(shard, "ab") as f:
        f.write(np.full((3, 32), np.nan, np.float32).tobytes())
    s = tiny_index.add([photos])
    assert s.indexed == 6
    ids, mat, _ = tiny_index.store.vectors()
    assert np.isfinite(mat).all() and len(ids) == 12
    assert tiny_index.store.next_slot() == 12 and shard.stat().st_size == 12 * 32 * 4  # overwritten, not appended
    # Each id reads back the vector that was embedded for its file.
    for i, v in zip(ids, mat, strict=False):
        rec = tiny_index.store.image(int(i))
        np.testing.assert_allclose(tiny_index.embed([rec.path])[0], v, atol=1e-6)


def test_streaming_reads_return_what_whole_reads_do(tiny_index, photos):
    tiny_index.add([photos])
    ids, mat, norms = tiny_index.store.vectors()
    chunks = list(tiny_index.store.iter_vectors(chunk=5))
    assert [len(c[0]) for c in chunks] == [5, 5, 2]
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), ids)
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), mat)
    some = ids[[7, 2, 9]]
    got = list(tiny_index.store.iter_vectors(some, chunk=2))
    np.testing.assert_array_equal(np.concatenate([c[0] for c in got]), np.sort(some))


def test_damaged_vector_bytes_are_found_and_embedded_again(tiny_index, photos):
    """Random bytes written into the stored vectors: the next run notices (checksums) and re-embeds them."""
    tiny_index.add([photos])
    ids, clean, _ = tiny_index.store.vectors()
    paths = {tiny_index.store.image(int(i)).path: v for i, v in zip(ids, clean, strict=False)}
    shard = tiny_index.directory / "vectors" / "shard-000000.f32"
    raw = bytearray(shard.read_bytes())
    raw[5 * 128 + 8 : 5 * 128 + 16] = b"\xff" * 8  # inside row 5: a NaN and garbage
    shard.write_bytes(bytes(raw))
    damaged = tiny_index.store.damaged_vectors()
    assert damaged and set(damaged) <= set(ids.tolist())  # the rows written with row 5 (one commit's)
    tiny_index.refresh()
    hits = tiny_index.search(clean[5], k=12)
    assert all(np.isfinite(h.score) for h in hits)  # a damaged vector is never a result
    s = tiny_index.add([photos])
    assert s.repaired == len(damaged) and s.indexed == len(damaged)
    assert tiny_index.store.damaged_vectors() == []
    new_ids, new, _ = tiny_index.store.vectors()
    for i, v in zip(new_ids, new, strict=False):  # every vector is again the one its file embeds to
        np.testing.assert_allclose(v, paths[tiny_index.store.image(int(i)).path], atol=1e-6)
    hit = tiny_index.search(clean[5], k=1)[0]
    assert hit.score == pytest.approx(1.0, abs=1e-5)


def test_flipped_bytes_in_the_search_structure_make_it_rebuild(photos, index_dir, caplog):
    """Bytes changed inside vectors.faiss leave a readable file; its checksum catches it and the
    structure is rebuilt from the stored vectors, with a warning, giving the same results."""
    ix = open_index(index_dir, backbone="tiny", weights=None, seed=7, index_type="hnsw")
    ix.add([photos])
    ids, vecs, _ = ix.store.vectors()
    want = [[h.id for h in ix.search(v, k=5)] for v in vecs]
    ix.close()
    path = index_dir / "vectors.faiss"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 16] = b"\x7f" * 16
    path.write_bytes(bytes(raw))
    with caplog.at_level("WARNING"):
        ix = open_index(index_dir, create=False)
    assert any("checksum" in r.getMessage() for r in caplog.records)
    assert [[h.id for h in ix.search(v, k=5)] for v in vecs] == want
    ix.close()


# -- migrations killed at any point --------------------------------------------------------------
# A helper process imports vecsearch once, then forks one child per open (a fresh process in
# all that matters: no connection, nothing read yet; the fork saves ~1 s of imports a trial).
# A child SIGKILLs itself at its KILL_AT-th step, the start of an SQL statement or a shard
# write (then after writing half of it: a torn write), or the helper kills it after a delay.
# Steps and seconds are counted in an uninterrupted open first, so the kill points cover the
# whole migration whatever the machine's speed.
_OPENER = r"""
import json, os, signal, sys, time
kill_at, steps = 0, 0

def step(torn=None):
    global steps
    steps += 1
    if steps == kill_at:
        if torn is not None:
            torn()
        os.kill(os.getpid(), signal.SIGKILL)

from sqlalchemy import event
from sqlalchemy.engine import Engine

@event.listens_for(Engine, "connect")
def _trace(dbapi_conn, _record):
    dbapi_conn.set_trace_callback(lambda _sql: step())

real_pwrite = os.pwrite
def pwrite(fd, data, offset):
    half = bytes(memoryview(data).cast("B"))[: len(memoryview(data).cast("B")) // 2]
    step(lambda: real_pwrite(fd, half, offset))
    return real_pwrite(fd, data, offset)
os.pwrite = pwrite

import alembic.command, alembic.runtime.migration, alembic.script, numpy
from vecsearch import open_index
print("ready", flush=True)
for line in sys.stdin:
    index, kill_at, kill_after = json.loads(line)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        t0 = time.perf_counter()
        with open_index(index, create=False) as ix:
            ix.stats()
        os.write(w, json.dumps([steps, time.perf_counter() - t0]).encode())
        os._exit(0)
    os.close(w)
    if kill_after is not None:
        time.sleep(kill_after)
        os.kill(pid, signal.SIGKILL)  # a zombie if it finished: still there to kill, to no effect
    status = os.waitpid(pid, 0)[1]
    with os.fdopen(r) as f:
        told = f.read()
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    print(json.dumps([code, json.loads(told) if told else None]), flush=True)
"""


class _Opener:
    """The helper process: `open(index, kill_at=N | kill_after=S)` -> (exit code, [steps, seconds] or None)."""

    def __init__(self, tmp_path):
        import subprocess
        import sys

        self.log = open(tmp_path / "opener.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _OPENER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True
        )
        assert self.proc.stdout.readline().strip() == "ready", (tmp_path / "opener.log").read_text()

    def open(self, index, *, kill_at: int = 0, kill_after: float | None = None):
        import json

        self.proc.stdin.write(json.dumps([str(index), kill_at, kill_after]) + "\n")
        self.proc.stdin.flush()
        code, told = json.loads(self.proc.stdout.readline())
        assert code in (0, -9), self.log.name  # finished, or killed: never an error of its own
        return code, told

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.log.close()


def _on_disk(index) -> dict:
    """What the files hold, read without vecsearch: schema, version, tables, shard bytes."""
    with sqlite3.connect(index / "index.db") as c:
        tables = sorted(r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
        version = c.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        schema = sorted(r[0] for r in c.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL"))
    shards = {p.name: p.read_bytes() for p in sorted((index / "vectors").glob("*"))} if (index / "vectors").exists() else {}
    return {"tables": tables, "version": version, "schema": schema, "shards": shards}


def _everything(index, tmp_path) -> dict:
    """Everything a user can see of an index, after opening it (which finishes any migration)."""
    with open_index(index, create=False) as ix:
        stats = ix.stats()
        del stats["db_bytes"], stats["index"]  # the WAL's size and the folder's name are not the index
        ids, mat, norms = ix.store.vectors()
        seen = {
            "stats": stats,
            "images": sorted(ix.store.records().values(), key=lambda r: r.id),
            "vectors": (ids.tolist(), mat.tobytes(), norms.tobytes()),
            "user_labels": ix.store.user_labels(),
            "imagenet_labels": ix.store.imagenet_labels(),
            "predictions": ix.store.predictions(),
            "classifiers": [(c.name, c.kind, c.params, c.metrics) for c in ix.store.classifier_rows()],
            "search": [[(h.id, round(h.score, 6)) for h in ix.search(v, k=4)] for v in mat],
            "damaged_vectors": ix.store.damaged_vectors(),
        }
        out = tmp_path / f"export-{index.name}.npz"
        ix.export(out)
    with np.load(out) as z:
        seen["export"] = {k: z[k].tobytes() for k in z.files}
    with sqlite3.connect(index / "index.db") as c:
        seen["integrity"] = c.execute("PRAGMA integrity_check").fetchall()
        seen["free_pages"] = c.execute("PRAGMA freelist_count").fetchone()[0]  # the VACUUM ran
    return seen | _on_disk(index)


@pytest.mark.slow
def test_a_migration_killed_at_any_point_ends_as_an_uninterrupted_one(tmp_path):
    """24+ SIGKILLs spread over the first open (the migration) of a 0.1.0 index: after one more
    open, each index is the one an uninterrupted migration makes, to the byte and the search hit."""
    import random

    def copy(name):
        shutil.copytree(TESTS / "data" / "index-0.1.0", tmp_path / name)
        return tmp_path / name

    want = _everything(copy("reference"), tmp_path)
    assert want["version"] >= "0007" and not any(t.startswith("_alembic_tmp") for t in want["tables"])
    opener = _Opener(tmp_path)
    try:
        rc, (steps, seconds) = opener.open(copy("measured"))
        assert rc == 0 and steps > 50
        rng = random.Random(16)
        trials = [dict(kill_at=int(k)) for k in np.unique(np.linspace(1, steps, 16).round())]
        trials += [dict(kill_after=rng.uniform(0, seconds)) for _ in range(12)]
        killed, states = 0, set()
        for n, trial in enumerate(trials):
            index = copy(f"trial-{n}")
            rc, _ = opener.open(index, **trial)
            killed += rc == -9
            if rc == -9:
                disk = _on_disk(index)
                states.add((disk["version"], bool(disk["shards"])))
                if n % 4 == 1:  # killed again while the next open repairs it
                    again, _ = opener.open(index, kill_at=max(1, trial.get("kill_at", steps) // 2))
                    killed += again == -9
            got = _everything(index, tmp_path)
            for key in want:
                assert got[key] == want[key], (trial, key)
    finally:
        opener.close()
    assert killed >= 20
    # The kills hit before the migration, in the middle of moving the vectors (shard rows written,
    # nothing committed) and after it committed.
    assert {("0003", False), ("0003", True), (want["version"], True)} <= states, states


def test_an_index_bricked_by_an_interrupted_batch_migration_opens_again(tmp_path):
    """What older versions left when killed mid-migration (`_alembic_tmp_index_info` committed on
    its own, version 0003): the next open drops it and migrates, as if never interrupted."""
    from helpers import run

    want = _everything(shutil.copytree(TESTS / "data" / "index-0.1.0", tmp_path / "reference"), tmp_path)
    bricked = shutil.copytree(TESTS / "data" / "index-0.1.0", tmp_path / "bricked")
    with sqlite3.connect(bricked / "index.db") as c:
        sql = c.execute("SELECT sql FROM sqlite_master WHERE name = 'index_info'").fetchone()[0]
        c.execute(sql.replace("index_info", "_alembic_tmp_index_info").replace("index_kind", "index_type"))
    assert run("stats", "--index", bricked).exit_code == 0
    assert _everything(bricked, tmp_path) == want


def test_shard_rows_an_interrupted_migration_left_are_reconciled(tmp_path):
    """Shard files from a killed 0.1.0 migration: a wrong row, rows and a file past the end. The
    re-run keeps what is right, rewrites what is not, drops the rest; every CRC then matches."""
    want = _everything(shutil.copytree(TESTS / "data" / "index-0.1.0", tmp_path / "reference"), tmp_path)
    index = shutil.copytree(TESTS / "data" / "index-0.1.0", tmp_path / "left")
    blobs = _blob_vectors(index / "index.db")
    rows = np.stack([blobs[i] for i in sorted(blobs)])
    rows[3, 5] = np.nan  # a row written wrong (or torn)
    (index / "vectors").mkdir()
    (index / "vectors" / "shard-000000.f32").write_bytes(rows.tobytes() + np.ones((5, 32), "<f4").tobytes())
    (index / "vectors" / "shard-000001.f32").write_bytes(b"\0" * 128)
    got = _everything(index, tmp_path)
    assert got == want and got["damaged_vectors"] == [] and list(got["shards"]) == ["shard-000000.f32"]


def test_stats_shows_the_stored_vectors_and_the_search_structure_apart(indexed_photos):
    photos, index_dir = indexed_photos
    shards = sum(p.stat().st_size for p in (index_dir / "vectors").glob("shard-*.f32"))
    s = run_json("stats", "--index", index_dir)
    assert s["index_type"] == "flat" and s["vectors_bytes"] == shards >= 12 * 32 * 4 and s["structure_bytes"] == 0
    run("reindex", "--index-type", "hnsw", "--index", index_dir, "-q")
    s = run_json("stats", "--index", index_dir)
    structure = sum((index_dir / name).stat().st_size for name in ("vectors.faiss", "vectors.faiss.json"))
    assert s["vectors_bytes"] == shards and s["structure_bytes"] == structure > 0


def test_an_index_made_by_0_2_0_opens_and_answers_as_it_did(tmp_path):
    """tests/data/index-0.2.0 was built by 0.2.0 (tiny backbone, 10 images, a failed file, a label); its
    expected.json holds what that version answered. A later vecsearch must give the same answers."""
    import json

    old = shutil.copytree(TESTS / "data" / "index-0.2.0", tmp_path / "old")
    expected = json.loads((old / "expected.json").read_text())
    with sqlite3.connect(old / "index.db") as c:
        version = c.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    with open_index(old, create=False) as ix:
        assert len(ix) == expected["images"]
        assert {k: ix.stats()[k] for k in expected["stats"]} == expected["stats"]
        q = np.random.default_rng(expected["query_seed"]).normal(size=ix.info.dim).astype(np.float32)
        got = [[h.id, h.score] for h in ix.search(q, k=5)]
        assert [g[0] for g in got] == [e[0] for e in expected["search"]]
        np.testing.assert_allclose([g[1] for g in got], [e[1] for e in expected["search"]], atol=1e-5)
        sim = ix.similar(expected["similar_to"], k=3)
        assert [h.id for h in sim] == [e[0] for e in expected["similar"]]
        np.testing.assert_allclose([h.score for h in sim], [e[1] for e in expected["similar"]], atol=1e-5)
        assert [i for i, *_ in ix.store.user_labels()] == [expected["similar_to"]]
    with sqlite3.connect(old / "index.db") as c:
        assert c.execute("SELECT version_num FROM alembic_version").fetchone()[0] >= version
