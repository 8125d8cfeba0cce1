"""Tests for the FAISS wrapper (vecsearch.search.structure) and normalize against exact numpy brute force on seeded synthetic data."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vecsearch.errors import IndexCorruptError, VecsearchError
from vecsearch.search.structure import FaissIndex, sidecar_path
from vecsearch.vectors import normalize

DIM = 64
N = 2000


@pytest.fixture(scope="module")
def data():
    """2000 normalised vectors around 20 cluster centres, ids 1000+3i, and 50 queries."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, DIM))
    x = centres[rng.integers(0, 20, size=N)] + 0.3 * rng.normal(size=(N, DIM))
    x = normalize(x)
    ids = (1000 + 3 * np.arange(N)).astype(np.int64)
    q = normalize(centres[rng.integers(0, 20, size=50)] + 0.3 * rng.normal(size=(50, DIM)))
    return ids, x, q


def brute_force(ids, x, q, k, exclude=()):
    """Exact top-k ordered by (-score, id), computed in float64."""
    out_s, out_i = [], []
    keep = ~np.isin(ids, list(exclude))
    ids, x = ids[keep], x[keep]
    for row in np.atleast_2d(q):
        scores = x.astype(np.float64) @ row.astype(np.float64)
        order = np.lexsort((ids, -scores))[:k]
        out_s.append(scores[order])
        out_i.append(ids[order])
    return np.array(out_s), np.array(out_i)


@pytest.fixture(scope="module")
def flat(data):
    ids, x, _ = data
    index = FaissIndex(DIM)
    index.add(ids, x)
    return index


@pytest.fixture(scope="module")
def hnsw(data):
    ids, x, _ = data
    index = FaissIndex(DIM, index_type="hnsw")
    index.add(ids, x)
    return index


def test_import_does_not_load_faiss():
    code = "import sys, vecsearch.vectors, vecsearch.search.structure; assert 'faiss' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


@pytest.mark.parametrize("k", [1, 10, 50])
def test_flat_matches_brute_force(data, flat, k):
    ids, x, q = data
    scores, found = flat.search(q, k)
    exp_s, exp_i = brute_force(ids, x, q, k)
    assert scores.dtype == np.float32 and found.dtype == np.int64
    assert found.shape == (len(q), k)
    np.testing.assert_array_equal(found, exp_i)
    np.testing.assert_allclose(scores, exp_s, atol=1e-5)


def test_single_query_1d(data, flat):
    ids, x, q = data
    scores, found = flat.search(q[0], 5)
    assert found.shape == (1, 5)
    np.testing.assert_array_equal(found[0], brute_force(ids, x, q[0], 5)[1][0])


def test_hnsw_recall(data, hnsw):
    ids, x, q = data
    _, found = hnsw.search(q, 10)
    _, exp = brute_force(ids, x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exp, strict=False)])
    assert recall >= 0.95


def test_len_and_ids(data, flat):
    ids, _, _ = data
    assert len(flat) == N
    out = flat.ids()
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, np.sort(ids))


def test_reconstruct(data, flat):
    ids, x, _ = data
    np.testing.assert_array_equal(flat.reconstruct(int(ids[7])), x[7])
    with pytest.raises(KeyError):
        flat.reconstruct(1)


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_add_existing_id_replaces(data, index_type):
    ids, x, _ = data
    index = FaissIndex(DIM, index_type)
    index.add(ids[:100], x[:100])
    new = x[500]
    index.add(np.array([ids[3]]), new[None, :])
    assert len(index) == 100
    np.testing.assert_array_equal(index.reconstruct(int(ids[3])), new)
    _, found = index.search(new, 100)
    assert list(found[0]).count(ids[3]) == 1
    assert found[0, 0] == ids[3]


def test_add_repeated_id_in_one_batch_keeps_last(data):
    _, x, _ = data
    index = FaissIndex(DIM)
    index.add([5, 6, 5], x[:3])
    assert len(index) == 2
    np.testing.assert_array_equal(index.reconstruct(5), x[2])
    np.testing.assert_array_equal(index.reconstruct(6), x[1])


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_remove(data, index_type):
    ids, x, q = data
    index = FaissIndex(DIM, index_type)
    index.add(ids[:300], x[:300])
    _, before = index.search(q, 5)
    gone = set(int(i) for i in before[:, 0]) | {int(ids[0])}
    assert index.remove(list(gone) + [999_999_999]) == len(gone)
    assert len(index) == 300 - len(gone)
    assert index.remove(list(gone)) == 0
    _, after = index.search(q, 300)
    assert not gone & set(after.ravel().tolist())
    assert not gone & set(index.ids().tolist())
    # Survivors keep their vectors.
    np.testing.assert_array_equal(index.reconstruct(int(ids[1])), x[1])
    if index_type == "flat":
        exp_s, exp_i = brute_force(ids[:300], x[:300], q, 10, exclude=gone)
        s, i = index.search(q, 10)
        np.testing.assert_array_equal(i, exp_i)


def test_remove_everything_hnsw(data):
    ids, x, q = data
    index = FaissIndex(DIM, "hnsw")
    index.add(ids[:10], x[:10])
    assert index.remove(set(ids[:10].tolist())) == 10
    assert len(index) == 0
    s, i = index.search(q, 3)
    assert s.shape == i.shape == (50, 0)


def test_exclude_drops_query_id(data, flat):
    ids, x, _ = data
    qid = int(ids[42])
    scores, found = flat.search(x[42], 10, exclude={qid})
    assert qid not in found[0]
    assert found.shape == (1, 10)
    exp_s, exp_i = brute_force(ids, x, x[42], 10, exclude={qid})
    np.testing.assert_array_equal(found, exp_i)
    # Without exclude the image finds itself first.
    assert flat.search(x[42], 1)[1][0, 0] == qid


def test_k_larger_than_index_returns_all(data):
    ids, x, q = data
    index = FaissIndex(DIM)
    index.add(ids[:7], x[:7])
    scores, found = index.search(q[:3], 50)
    assert found.shape == (3, 7)
    assert all(sorted(row) == sorted(ids[:7]) for row in found.tolist())
    assert (np.diff(scores, axis=1) <= 0).all()
    # Excluding leaves fewer than k: width shrinks to what exists.
    scores, found = index.search(q[:3], 50, exclude={int(ids[0]), int(ids[1])})
    assert found.shape == (3, 5)
    assert (found >= 0).all()


def test_exclude_narrows_width():
    index = FaissIndex(2)
    index.add([1, 2, 3], normalize(np.array([[1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32)))
    # Excluding two of three ids leaves one result per row, whatever k asked for.
    scores, found = index.search(np.array([[1, 0], [0, 1]], dtype=np.float32), 3, exclude={1, 2})
    assert found.tolist() == [[3], [3]]
    scores, found = index.search(np.array([[1, 0]], dtype=np.float32), 2, exclude={1})
    assert found.tolist() == [[2, 3]]


def test_ties_are_sorted_by_id():
    index = FaissIndex(2)
    v = np.array([[1, 0]] * 4, dtype=np.float32)
    index.add([40, 10, 30, 20], v)
    scores, found = index.search(np.array([1, 0], dtype=np.float32), 4)
    assert found.tolist() == [[10, 20, 30, 40]]


def test_empty_index():
    index = FaissIndex(DIM)
    assert len(index) == 0
    assert index.ids().shape == (0,)
    assert index.remove([1, 2]) == 0
    scores, found = index.search(np.ones((3, DIM), dtype=np.float32), 5)
    assert scores.shape == found.shape == (3, 0)
    assert scores.dtype == np.float32 and found.dtype == np.int64


def test_validation(data):
    ids, x, _ = data
    index = FaissIndex(DIM)
    with pytest.raises(VecsearchError):
        FaissIndex(DIM, index_type="ivf")
    with pytest.raises(VecsearchError):
        FaissIndex(0)
    with pytest.raises(VecsearchError):
        index.add(ids[:3], x[:3, :10])
    with pytest.raises(VecsearchError):
        index.add(ids[:2], x[:3])
    with pytest.raises(VecsearchError):
        index.add(np.array([1.5, 2.5, 3.5]), x[:3])
    with pytest.raises(VecsearchError):
        index.add([-1], x[:1])
    bad = x[:1].copy()
    bad[0, 0] = np.nan
    with pytest.raises(VecsearchError):
        index.add([1], bad)
    # float64, non-contiguous input is accepted and cast.
    index.add(ids[:5], np.asfortranarray(x[:5].astype(np.float64)))
    assert len(index) == 5
    with pytest.raises(VecsearchError):
        index.search(x[:2], 0)
    with pytest.raises(VecsearchError):
        index.search(x[:2, :10], 3)


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_save_load_round_trip(tmp_path, data, index_type, flat, hnsw):
    ids, x, q = data
    index = flat if index_type == "flat" else hnsw
    path = tmp_path / "vectors.faiss"
    index.save(path, {"backbone": "resnet50", "generation": 3})
    assert sidecar_path(path) == tmp_path / "vectors.faiss.json"

    loaded, meta = FaissIndex.load(path)
    assert (loaded.dim, loaded.index_type, len(loaded)) == (DIM, index_type, N)
    assert meta["backbone"] == "resnet50" and meta["generation"] == 3
    assert (meta["dim"], meta["index_type"], meta["count"]) == (DIM, index_type, N)
    assert meta["faiss_version"] and meta["saved_at"]
    assert FaissIndex.read_meta(path) == meta

    s1, i1 = index.search(q, 10, exclude={int(ids[0])})
    s2, i2 = loaded.search(q, 10, exclude={int(ids[0])})
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(loaded.ids(), index.ids())
    # The loaded index is fully usable.
    loaded.remove([int(ids[0])])
    assert len(loaded) == N - 1
    assert sorted(os.listdir(tmp_path)) == ["vectors.faiss", "vectors.faiss.json"]


def test_load_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        FaissIndex.load(tmp_path / "nope.faiss")
    assert FaissIndex.read_meta(tmp_path / "nope.faiss") is None


def _saved(tmp_path, data, n=100):
    ids, x, _ = data
    index = FaissIndex(DIM)
    index.add(ids[:n], x[:n])
    path = tmp_path / "vectors.faiss"
    index.save(path, {"generation": 1})
    return index, path


def test_truncated_index_is_corrupt(tmp_path, data):
    _, path = _saved(tmp_path, data)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(IndexCorruptError, match="checksum"):
        FaissIndex.load(path)
    meta = json.loads(sidecar_path(path).read_text())
    del meta["crc32"]  # a sidecar without a checksum (older files): FAISS itself refuses the torn file
    sidecar_path(path).write_text(json.dumps(meta))
    with pytest.raises(IndexCorruptError, match="unreadable"):
        FaissIndex.load(path)


def test_flipped_bytes_in_the_vector_data_are_detected(tmp_path, data):
    """Random bytes inside the vector data leave a readable file: only the checksum notices."""
    index, path = _saved(tmp_path, data)
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 8] = b"\xff" * 8
    path.write_bytes(bytes(raw))
    with pytest.raises(IndexCorruptError, match="checksum"):
        FaissIndex.load(path)


def test_garbage_index_is_corrupt(tmp_path, data):
    _, path = _saved(tmp_path, data)
    path.write_bytes(b"this is not a faiss index at all" * 10)
    with pytest.raises(IndexCorruptError):
        FaissIndex.load(path)
    path.write_bytes(b"")
    with pytest.raises(IndexCorruptError):
        FaissIndex.load(path)


def test_sidecar_mismatch_is_corrupt(tmp_path, data):
    _, path = _saved(tmp_path, data)
    side = sidecar_path(path)
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "count": 99}))
    with pytest.raises(IndexCorruptError, match="count"):
        FaissIndex.load(path)
    side.write_text(json.dumps({**meta, "dim": 32}))
    with pytest.raises(IndexCorruptError, match="dim"):
        FaissIndex.load(path)
    side.write_text("{not json")
    with pytest.raises(IndexCorruptError):
        FaissIndex.load(path)
    side.unlink()
    with pytest.raises(IndexCorruptError, match="sidecar"):
        FaissIndex.load(path)


def test_unserialisable_meta_writes_nothing(tmp_path, data):
    index, path = _saved(tmp_path, data)
    before = path.read_bytes()
    index.add([1], data[1][:1])
    with pytest.raises(VecsearchError):
        index.save(path, {"bad": object()})
    assert path.read_bytes() == before


def test_save_is_atomic(tmp_path, data, monkeypatch):
    index, path = _saved(tmp_path, data)
    old_index, old_side = path.read_bytes(), sidecar_path(path).read_bytes()
    index.add(data[0][200:300], data[1][200:300])

    def boom(src, dst):
        assert os.path.getsize(src) > 0  # the temp file was fully written first
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        index.save(path, {"generation": 2})
    monkeypatch.undo()

    assert path.read_bytes() == old_index
    assert sidecar_path(path).read_bytes() == old_side
    assert sorted(os.listdir(tmp_path)) == ["vectors.faiss", "vectors.faiss.json"]
    loaded, meta = FaissIndex.load(path)
    assert len(loaded) == 100 and meta["generation"] == 1


def test_sidecar_written_after_index(tmp_path, data, monkeypatch):
    """A crash between the two renames leaves a new index with the old sidecar: detected."""
    index, path = _saved(tmp_path, data)
    index.add(data[0][200:300], data[1][200:300])
    real_replace = os.replace

    def fail_on_sidecar(src, dst):
        if str(dst).endswith(".json"):
            raise OSError("crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_on_sidecar)
    with pytest.raises(OSError):
        index.save(path, {"generation": 2})
    monkeypatch.undo()
    assert FaissIndex.read_meta(path)["generation"] == 1
    with pytest.raises(IndexCorruptError, match="checksum"):
        FaissIndex.load(path)


def test_normalize():
    x = np.array([[3, 4], [0, 0], [1e30, 0]], dtype=np.float32)
    out = normalize(x)
    assert out.dtype == np.float32
    assert not np.isnan(out).any()
    np.testing.assert_allclose(out, [[0.6, 0.8], [0, 0], [1, 0]], atol=1e-7)
    np.testing.assert_allclose(normalize(np.array([0.0, 2.0])), [0, 1])
    rng = np.random.default_rng(0)
    y = normalize(rng.normal(size=(10, 5)))
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1, atol=1e-6)
