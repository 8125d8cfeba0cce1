"""Index types against exact search, training and growth, import/export: the scale layer.

Synthetic clustered vectors come in through `import` (as vectors computed elsewhere would),
in an index whose model is the tiny test backbone (32-d), so no image is decoded.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import brute_force, clustered_vectors, run, run_json, write_vector_file

from vecsearch import IndexMismatchError, VecsearchError, open_index
from vecsearch.search import index_types

DIM = 32


def _imported(tmp_path, model_meta, n, index_type, *, seed=0, max_memory=None, name="ix"):
    vecs = clustered_vectors(n, DIM, seed=seed)
    f = write_vector_file(
        tmp_path / f"{name}-{seed}.npz", vecs, model_meta, paths=[f"/elsewhere/{seed}/{i:06d}.jpg" for i in range(n)]
    )
    ix = open_index(tmp_path / name, index_type=index_type, max_memory=max_memory)
    summary = ix.import_vectors(f)
    assert summary.imported == n
    return ix, vecs


# The product-quantised types (PQ codebooks to train) were among the slowest tests measured on main.
@pytest.mark.parametrize(
    "index_type",
    [
        "flat",
        "hnsw",
        pytest.param("ivf-pq", marks=pytest.mark.slow),
        "IVF32,SQ8",
        pytest.param("PCA16,IVF32,PQ8x6", marks=pytest.mark.slow),
        pytest.param("PCA16,IVF32,PQ4x6,Refine(SQ8)", marks=pytest.mark.slow),
    ],
)
def test_every_index_type_matches_exact_search(tmp_path, model_meta, index_type):
    ix, _ = _imported(tmp_path, model_meta, 3000, index_type)
    ids, base, _ = ix.store.vectors()
    queries = clustered_vectors(60, DIM, seed=99)
    want_ids, want_scores = brute_force(ids, base, queries, 10)
    got = [ix.search(q, k=10) for q in queries]
    found = np.array([[h.id for h in hits] for hits in got])
    recall = np.mean([len(set(f) & set(w)) / 10 for f, w in zip(found, want_ids, strict=False)])
    assert recall >= 0.95, (index_type, recall)
    # Re-ranking makes every score the exact cosine of the stored vectors, in exact order.
    for hits, q in zip(got, queries, strict=False):
        exact = base[np.searchsorted(ids, [h.id for h in hits])].astype(np.float64) @ q.astype(np.float64)
        np.testing.assert_allclose([h.score for h in hits], exact, atol=1e-5)
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))
    spec = ix.searcher.spec
    assert spec.index_type == index_type and spec.built_for == 3000
    if index_type == "flat":
        assert ix.faiss is None and spec.recall == 1.0
    else:
        assert ix.faiss is not None and spec.recall is not None and spec.recall >= 0.9
    ix.close()


def test_auto_chooses_by_size_and_budget():
    assert index_types.choose("auto", 10_000, 2048).factory == ""  # flat: small and fast enough
    assert index_types.choose("auto", 300_000, 2048).factory == "HNSW32"  # fits 4 GB with full vectors
    spec = index_types.choose("auto", 1_000_000, 2048, 4 * 2**30)
    assert spec.factory == "PCA256,IVF4096,PQ64x8,Refine(SQ8)" and spec.memory_bytes <= 4 * 2**30  # compressed to fit
    assert index_types.choose("auto", 1_000_000, 2048, 1 * 2**30).factory == "PCA256,IVF4096,PQ64x8"  # no room to refine
    assert index_types.choose("auto", 300_000, 2048, 1 * 2**30).factory.startswith("PCA256,IVF")  # tight budget
    with pytest.raises(VecsearchError, match="Raise the memory budget"):
        index_types.choose("auto", 100_000_000, 2048, 2**30)
    assert index_types.parse_memory("4GB") == 4 * 2**30 and index_types.parse_memory("512M") == 512 * 2**20
    with pytest.raises(VecsearchError, match="memory size"):
        index_types.parse_memory("lots")
    with pytest.raises(VecsearchError, match="Unknown index type"):
        index_types.check_index_type("fast")


@pytest.mark.slow
def test_auto_with_a_small_budget_compresses_and_still_finds_the_neighbours(tmp_path, model_meta):
    ix, _ = _imported(tmp_path, model_meta, 3000, "auto", max_memory="200KB")  # flat would take 384 KiB
    assert "PQ" in ix.searcher.spec.factory and ix.searcher.spec.memory_bytes <= 200 * 2**10
    st = ix.stats()
    assert st["index_type"] == "auto" and st["max_memory"] == 200 * 2**10 and st["recall_at_10"] >= 0.9
    assert "nprobe" in st["index_params"] and st["index_built_for"] == 3000
    ix.close()


@pytest.mark.slow
def test_adding_after_training_keeps_the_trained_structure_and_exact_results(tmp_path, model_meta):
    ix, _ = _imported(tmp_path, model_meta, 3000, "ivf-pq")
    structure, built = ix.faiss, ix.searcher.spec.build_id
    more = clustered_vectors(500, DIM, seed=5)
    ix.import_vectors(write_vector_file(tmp_path / "more.npz", more, model_meta, paths=[f"/more/{i}.jpg" for i in range(500)]))
    assert ix.searcher.spec.build_id == built and ix.faiss is structure  # added, not retrained
    assert len(ix.faiss) == 3500 and len(ix) == 3500
    new = ix.store.image_by_path("/more/7.jpg")
    hit = ix.search(more[7], k=1)[0]
    assert hit.id == new.id and hit.score == pytest.approx(1.0, abs=1e-5)
    # Removed images leave the results at once, while the structure keeps its training.
    gone = [ix.store.image_by_path(f"/more/{i}.jpg").id for i in range(5, 10)]
    ix.store.apply(deletes=gone)
    ix.refresh()
    assert ix.search(more[7], k=1)[0].id not in gone and len(ix) == 3495
    ids, base, _ = ix.store.vectors()
    want, _ = brute_force(ids, base, more[5:10], 5)
    got = np.array([[h.id for h in ix.search(q, k=5)] for q in more[5:10]])
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(got, want, strict=False)]) >= 0.95
    ix.close()


@pytest.mark.slow
def test_a_collection_four_times_larger_retrains(tmp_path, model_meta):
    ix, _ = _imported(tmp_path, model_meta, 1000, "ivf-pq")
    first = ix.searcher.spec
    assert first.built_for == 1000
    ix.import_vectors(
        write_vector_file(
            tmp_path / "big.npz", clustered_vectors(3200, DIM, seed=3), model_meta, paths=[f"/big/{i}.jpg" for i in range(3200)]
        )
    )
    spec = ix.searcher.spec
    assert spec.built_for == 4200 and spec.build_id != first.build_id and spec.factory != first.factory
    ix.close()
    # The database records the structure the saved file is: a fresh open loads it, no rebuild.
    with open_index(tmp_path / "ix", create=False) as again:
        assert again.searcher.spec.build_id == spec.build_id


def test_reindex_converts_and_the_other_process_picks_it_up(tmp_path, model_meta):
    ix, vecs = _imported(tmp_path, model_meta, 2000, "flat")
    r = run_json("reindex", "--index", tmp_path / "ix", "--index-type", "hnsw")
    assert r["index_type"] == "hnsw" and r["factory"] == "HNSW32" and r["recall"] >= 0.95
    assert ix.refresh() and ix.searcher.spec.index_type == "hnsw"
    assert ix.search(vecs[3], k=1)[0].path == "/elsewhere/0/000003.jpg"
    out = run("reindex", "--index", tmp_path / "ix", "--index-type", "bogus", ok=False)
    assert out.exit_code == 1 and "Unknown index type" in out.output
    ix.close()


def test_export_and_import_round_trip_in_both_formats(tmp_path, model_meta):
    ix, _ = _imported(tmp_path, model_meta, 300, "flat")
    ids, vecs, norms = ix.store.vectors()
    for suffix in (".npz", ".parquet"):
        out = tmp_path / f"all{suffix}"
        assert run_json("export", out, "--index", tmp_path / "ix")["exported"] == 300
        r = run_json("import", out, "--index", tmp_path / f"copy{suffix}")
        assert r["imported"] == 300 and r["replaced"] == 0
        with open_index(tmp_path / f"copy{suffix}", create=False) as copy:
            cids, cvecs, cnorms = copy.store.vectors()
            paths = [copy.store.image(int(i)).path for i in cids]
            assert paths == [ix.store.image(int(i)).path for i in ids]
            np.testing.assert_array_equal(cvecs, vecs)
            np.testing.assert_array_equal(np.isnan(cnorms), np.isnan(norms))
            assert copy.info.weights_fingerprint == ix.info.weights_fingerprint
        again = run_json("import", out, "--index", tmp_path / f"copy{suffix}")
        assert again["replaced"] == 300  # same paths: replaced, not duplicated
    bad = run("export", tmp_path / "all.csv", "--index", tmp_path / "ix", ok=False)
    assert bad.exit_code == 1 and ".npz or .parquet" in bad.output and not (tmp_path / "all.csv").exists()
    ix.close()


def test_import_refuses_another_model_or_dimension(tmp_path, model_meta):
    ix, _ = _imported(tmp_path, model_meta, 100, "flat")
    other = dict(model_meta, weights_fingerprint="0" * 64, backbone="resnet50")
    f = write_vector_file(tmp_path / "other.npz", clustered_vectors(10, DIM, seed=4), other)
    with pytest.raises(IndexMismatchError, match="another model"):
        ix.import_vectors(f)
    wide = write_vector_file(tmp_path / "wide.npz", clustered_vectors(10, 64, seed=4), model_meta)
    with pytest.raises(IndexMismatchError, match="64-d"):
        ix.import_vectors(wide)
    anonymous = tmp_path / "anon.npz"
    np.savez(anonymous, paths=np.array(["/x/a.jpg", "/x/b.jpg"]), vectors=clustered_vectors(2, DIM, seed=8) * 3.0)
    with pytest.raises(IndexMismatchError, match="unchecked"):
        ix.import_vectors(anonymous)
    assert len(ix) == 100  # nothing was written by the refused files
    assert ix.import_vectors(anonymous, unchecked=True).imported == 2
    _, _, norms = ix.store.vectors(ix.store.image_by_path(p).id for p in ("/x/a.jpg", "/x/b.jpg"))
    np.testing.assert_allclose(norms, 3.0, rtol=1e-5)  # raw features: normalised, their length kept
    ix.close()


def test_imported_paths_are_reconciled_by_the_next_index_run(tmp_path, model_meta, photos):
    """Vectors computed elsewhere for files that are here: a later `index` over the folder keeps
    those whose content hash matches and re-embeds the others."""
    with open_index(tmp_path / "src", backbone="tiny", weights=None, seed=7) as src:
        src.add([photos])
        src.export(tmp_path / "src.parquet")
        want = dict(zip(*[[src.store.image(int(i)).path for i in src.store.vector_ids()], src.store.vectors()[1]], strict=False))
    run("import", tmp_path / "src.parquet", "--index", tmp_path / "dst")
    s = run_json("index", photos, "--index", tmp_path / "dst")
    assert (s["indexed"], s["unchanged"], s["removed"]) == (0, 12, 0)  # same content hash: kept
    with open_index(tmp_path / "dst", create=False) as dst:
        ids, vecs, _ = dst.store.vectors()
        for i, v in zip(ids, vecs, strict=False):
            np.testing.assert_array_equal(v, want[dst.store.image(int(i)).path])


def test_a_reader_picks_up_a_writers_additions_without_rebuilding(tmp_path, model_meta):
    reader, _ = _imported(tmp_path, model_meta, 2000, "hnsw")
    structure = reader.faiss
    with open_index(tmp_path / "ix", create=False) as writer:
        writer.import_vectors(
            write_vector_file(
                tmp_path / "w.npz", clustered_vectors(100, DIM, seed=11), model_meta, paths=[f"/w/{i}.jpg" for i in range(100)]
            )
        )
    assert reader.refresh()
    assert reader.faiss is structure and len(structure) == 2100  # the same structure, 100 added
    reader.close()
