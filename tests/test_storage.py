"""Vectors stored once, in shard files the database points into; migration of older indexes."""

from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pytest

from helpers import TESTS
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
    for i, v in zip(ids, mat):
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
    paths = {tiny_index.store.image(int(i)).path: v for i, v in zip(ids, clean)}
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
    for i, v in zip(new_ids, new):  # every vector is again the one its file embeds to
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
