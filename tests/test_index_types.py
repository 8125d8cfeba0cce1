"""Choosing and building a search structure is a transaction: what cannot be trained is refused
before any work, a failed build leaves the structure the index had, and an index whose recorded
structure cannot be built still opens and searches exactly.

The bricking cases come from a 2048-d model (a `wide` test backbone, registered here, of
ResNet-50's width) on 86 vectors: `ivf-pq`'s PCA to 256 dimensions cannot train there. Most
vectors are synthetic and come in through `import`, with the model's metadata.
"""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from helpers import brute_force, clustered_vectors, make_image, run, run_json, write_vector_file

from vecsearch import StructureError, open_index
from vecsearch.backbones import REGISTRY, BackboneSpec, import_keras
from vecsearch.errors import fault_message
from vecsearch.search import index_types
from vecsearch.search.live import structure_for
from vecsearch.search.structure import training_minimum

WIDE = 2048
N = 86


def _build_wide(weights, include_top):
    keras = import_keras()
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(WIDE, 3, strides=4, activation="relu", name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="avg_pool")(x), name="wide")
    if weights not in (None, "imagenet"):
        model.load_weights(weights)
    return model


@pytest.fixture
def wide(tmp_path, monkeypatch):
    """(index folder, photo folder, the 2048-d model's meta): 6 photos indexed, then 80 synthetic
    vectors imported, 86 in all, on the flat structure."""
    monkeypatch.setitem(
        REGISTRY,
        "wide",
        BackboneSpec("wide", (32, 32), WIDE, _build_wide, lambda x: x / 127.5 - 1.0, has_imagenet=False, last_conv_layer="conv"),
    )
    photos = tmp_path / "photos"
    for i in range(6):
        make_image(photos / f"p{i}.png", seed=i)
    index = tmp_path / "index"
    with open_index(index, backbone="wide", weights=None, seed=3) as ix:
        ix.add([photos])
        ix.export(tmp_path / "seed.npz")
    with np.load(tmp_path / "seed.npz") as z:
        meta = json.loads(str(z["meta"]))
    more = write_vector_file(tmp_path / "more.npz", clustered_vectors(N - 6, WIDE), meta)
    run("import", more, "--index", index, "--quiet")
    return index, photos, meta


def _exact_top(ix, query, k=5):
    ids, base, _ = ix.store.vectors()
    want, _ = brute_force(ids, base, query[None], k)
    return [int(i) for i in want[0]]


def _answers(index, photos, index_type):
    """stats and query still work, on the structure expected."""
    s = run_json("stats", "--index", index)
    assert s["index_type"] == index_type and s["vectors"] == N
    hits = run_json("query", photos / "p0.png", "--index", index, "-k", "3")
    assert len(hits) == 3
    with open_index(index) as ix:
        q = ix.vector(hits[0]["id"])
        assert [h.id for h in ix.search(q, k=5)] == _exact_top(ix, q)


@pytest.mark.parametrize("bad, needs", [("ivf-pq", "256"), ("IVF1024,PQ32x8", "1024"), ("IVF1024,PQ33x8", "multiple")])
def test_a_structure_that_cannot_be_built_is_refused_and_the_previous_one_kept(wide, bad, needs):
    index, photos, _ = wide
    run("reindex", "--index", index, "--index-type", "hnsw", "--quiet")
    before = (index / "vectors.faiss").read_bytes()
    r = run("reindex", "--index", index, "--index-type", bad, "--quiet", ok=False)
    assert r.exit_code == 1
    assert needs in r.output and "disk" not in r.output and "Move vectors.faiss" not in r.output
    assert (index / "vectors.faiss").read_bytes() == before  # not touched
    _answers(index, photos, "hnsw")
    run("reindex", "--index", index, "--index-type", "flat", "--quiet")
    _answers(index, photos, "flat")


def test_import_into_a_new_index_with_a_structure_it_cannot_train_is_refused_before_any_work(wide, tmp_path):
    index, photos, meta = wide
    run("export", tmp_path / "all.npz", "--index", index, "--quiet")
    new = tmp_path / "new"
    r = run("import", tmp_path / "all.npz", "--index", new, "--index-type", "ivf-pq", "--quiet", ok=False)
    assert r.exit_code == 1 and "256" in r.output and "disk" not in r.output
    with open_index(new) as ix:
        assert ix.info is None  # nothing imported
    run("import", tmp_path / "all.npz", "--index", new, "--quiet")  # not bricked: flat takes it
    assert run_json("stats", "--index", new)["index_type"] == "flat"
    # ...and into an existing index: refused before the rows come in, the index as it was.
    r = run(
        "import",
        write_vector_file(tmp_path / "x.npz", clustered_vectors(5, WIDE, seed=4), meta),
        "--index",
        index,
        "--index-type",
        "IVF1024,PQ32x8",
        "--quiet",
        ok=False,
    )
    assert r.exit_code == 1 and "1024" in r.output
    _answers(index, photos, "flat")


def test_indexing_a_new_folder_with_a_structure_it_cannot_train_is_refused_before_embedding(wide, tmp_path):
    _, photos, _ = wide
    new = tmp_path / "new"
    r = run(
        "index", photos, "--index", new, "--backbone", "wide", "--weights", "none", "--index-type", "ivf-pq", "--quiet", ok=False
    )
    assert r.exit_code == 1 and "256" in r.output
    with open_index(new) as ix:
        assert ix.info is None  # nothing embedded or recorded
    run("index", photos, "--index", new, "--backbone", "wide", "--weights", "none", "--index-type", "hnsw", "--quiet")
    assert run_json("stats", "--index", new)["index_type"] == "hnsw"


def test_an_index_whose_recorded_structure_cannot_be_built_opens_and_searches_exactly(wide, caplog):
    """An index bricked by an older vecsearch: ivf-pq recorded, no structure, 86 vectors."""
    index, photos, _ = wide
    con = sqlite3.connect(index / "index.db")
    con.execute("UPDATE index_info SET index_type = 'ivf-pq', index_spec = NULL")
    con.commit()
    con.close()
    with open_index(index) as ix:  # no raw faiss RuntimeError
        assert "reindex --index-type flat" in ix.stats()["index_warning"]
        q = clustered_vectors(1, WIDE, seed=9)[0]
        assert [h.id for h in ix.search(q, k=5)] == _exact_top(ix, q)
    assert "256" in caplog.text
    _answers(index, photos, "ivf-pq")
    r = run("reindex", "--index", index, "--quiet", ok=False)  # the same type again: said why, nothing changed
    assert r.exit_code == 1 and "256" in r.output
    run("reindex", "--index", index, "--index-type", "flat", "--quiet")
    s = run_json("stats", "--index", index)
    assert s["index_type"] == "flat" and "index_warning" not in s


def test_a_conversion_with_too_few_vectors_waits_for_the_write_that_brings_them(wide, tmp_path):
    index, _, meta = wide
    with open_index(index, index_type="ivf-pq") as ix:  # 86 vectors: not yet
        assert ix.info.index_type == "flat"
        ix.import_vectors(write_vector_file(tmp_path / "big.npz", clustered_vectors(300, WIDE, seed=5), meta))
        assert ix.info.index_type == "ivf-pq" and ix.faiss is not None
        q = clustered_vectors(1, WIDE, seed=6)[0]
        assert [h.id for h in ix.search(q, k=5)] == _exact_top(ix, q)
    assert run_json("stats", "--index", index)["index_type"] == "ivf-pq"


@pytest.mark.parametrize(
    "factory, dim",
    [
        ("PCA256,IVF2,PQ64x1", 2048),
        ("PCA24,Flat", 32),
        ("PCA16,IVF32,PQ8x6", 32),
        ("IVF32,SQ8", 32),
        ("HNSW32,PQ8x4", 32),
        ("IVF16,PQ4x4,Refine(SQ8)", 32),
        ("OPQ4_16,IVF8,PQ4x4", 32),
        ("IVF8_HNSW32,Flat", 32),
        ("ITQ16,LSH", 32),
        ("RQ1x3", 32),
        ("SQ8", 32),
        ("HNSW32", 32),
    ],
)
def test_training_minimum_is_what_faiss_enforces(factory, dim):
    """One vector fewer than `training_minimum` and FAISS refuses to train; that many and it trains."""
    import faiss

    need, what = training_minimum(factory, dim)
    x = clustered_vectors(max(need, 1), dim, seed=1)
    if need > 1:
        with pytest.raises(RuntimeError):
            faiss.index_factory(dim, factory).train(x[: need - 1])
        assert what
    index = faiss.index_factory(dim, factory)
    index.train(x[:need] if need else x[:0])
    assert index.is_trained


def test_factory_strings_faiss_rejects_are_refused_with_its_reason():
    for factory, words in [
        ("IVF1024,PQ33x8", "multiple"),
        ("Foo12", "parse"),
        ("PCA4096,Flat", "reduce"),
        ("IVF0,Flat", "at least one"),
    ]:
        with pytest.raises(StructureError, match=words) as e:
            training_minimum(factory, WIDE)
        assert "Error in" not in str(e.value) and ".cpp" not in str(e.value)


@pytest.mark.parametrize("dim", [16, 32, 64, 256, 512, 2048])
def test_ivf_pq_minimum_agrees_with_faiss(dim):
    for n in (0, 1, 2, 38, 39, 86, 255, 256, 1000, 5000, 100_000):
        assert index_types.ivf_pq_minimum(n, dim) == training_minimum(index_types.ivf_pq_factory(n, dim), dim)[0]


def test_auto_never_picks_what_cannot_train():
    for dim in (32, 2048):
        for n in (0, 1, 2, 50, 86, 255, 256, 300, 3000, 60_000):
            for budget in (2**16, 2**20, None):
                try:
                    assert structure_for("auto", n, dim, budget).index_type == "auto"  # raises if it cannot train
                except StructureError as e:
                    assert e.needed is None and "budget" in str(e)  # it does not fit: more vectors would not help
    assert structure_for("auto", N, WIDE, 2**16).exact  # flat would not fit 64 KB, ivf-pq cannot train yet


def test_auto_on_few_wide_vectors_under_a_small_budget_builds_and_searches(wide):
    index, photos, _ = wide
    run("reindex", "--index", index, "--index-type", "auto", "--max-memory", "64KB", "--quiet")
    _answers(index, photos, "auto")


def test_a_faiss_error_that_is_not_the_disk_does_not_blame_the_disk():
    e = RuntimeError(
        "Error in void faiss::PCAMatrix::prepare_Ab() at /project/faiss/VectorTransform.cpp:846: Error: "
        "'static_cast<size_t>(d_out) * d_in <= PCAMat.size()' failed: PCA matrix cannot output 256 "
        "dimensions from 2048"
    )
    message = fault_message(e)
    assert "disk" not in message and "Move vectors.faiss" not in message and "reindex --index-type flat" in message
    io = RuntimeError(
        "Error in faiss::FileIOReader::FileIOReader(const char*) at /project/faiss/impl/io.cpp:68: Error: "
        "'f' failed: could not open vectors.faiss for reading: Permission denied"
    )
    assert "vector file could not be read" in fault_message(io)


def test_a_rebuild_for_growth_that_fails_keeps_the_structure_it_had(tmp_path, model_meta, monkeypatch):
    from vecsearch.search import live

    dim = model_meta["dim"]
    ix = open_index(tmp_path / "ix", index_type="ivf-pq")
    ix.import_vectors(write_vector_file(tmp_path / "a.npz", clustered_vectors(1000, dim), model_meta))
    assert ix.searcher.spec.built_for == 1000

    def fails(*args, **kwargs):
        raise StructureError("no room today")

    monkeypatch.setattr(live, "build", fails)
    more = clustered_vectors(3000, dim, seed=2)
    ix.import_vectors(
        write_vector_file(tmp_path / "b.npz", more, model_meta, paths=[f"/b/{i}.jpg" for i in range(3000)])
    )  # 4x: a rebuild is due
    assert ix.info.index_type == "ivf-pq" and ix.searcher.spec.built_for == 1000 and len(ix.faiss) == 4000
    assert [h.id for h in ix.search(more[7], k=5)] == _exact_top(ix, more[7])
    ix.close()
