"""Searching: results equal brute force, the query forms a search takes (and those it refuses by
name), and an approximate structure kept in step with removals.

Filters are in test_filters.py; every index type against exact search in test_scale.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import DIM, clustered_vectors, filtered_index
from PIL import Image

from vecsearch import VecsearchError, open_index


def test_search_equals_numpy_brute_force(tiny_index, photos):
    tiny_index.add([photos])
    ids, mat, _ = tiny_index.store.vectors()
    paths = tiny_index.store.images(ids)
    for qi in range(len(ids)):
        scores = mat @ mat[qi]
        order = sorted((j for j in range(len(ids)) if j != qi), key=lambda j: (-scores[j], ids[j]))[:5]
        hits = tiny_index.search(paths[int(ids[qi])].path, k=5)
        assert [h.id for h in hits] == [int(ids[j]) for j in order]
        np.testing.assert_allclose([h.score for h in hits], [scores[j] for j in order], atol=1e-5)
    # A raw vector query includes everything.
    hits = tiny_index.search(mat[0], k=3)
    assert hits[0].id == ids[0] and hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_search_takes_a_pil_image_and_refuses_other_things_by_name(photos, index_dir):
    with open_index(index_dir, backbone="tiny", weights=None, seed=7) as ix:
        ix.add([photos])
        path = photos / "a" / "img03.png"  # PNG: the PIL image holds exactly the file's pixels
        by_path = ix.search(path, k=5)
        with Image.open(path) as im:
            by_image = ix.search(im, k=6)
        assert by_image[0].path == str(path) and by_image[0].score == pytest.approx(1.0, abs=1e-5)
        assert [h.id for h in by_image[1:]] == [h.id for h in by_path]
        vec = ix.vector(by_path[0].id)
        assert [h.id for h in ix.search(vec.tolist(), k=3)] == [h.id for h in ix.search(vec, k=3)]
        for bad, named in ((42, "similar"), ({"a": 1}, "dict"), (np.array(["x"]), "array"), (None, "NoneType")):
            with pytest.raises(VecsearchError, match=named) as info:
                ix.search(bad)
            assert "image path" in str(info.value) or "array of numbers" in str(info.value)
        assert repr(ix) == f"<VecIndex {str(index_dir)!r}: tiny, flat, 12 vectors>" and len(ix) == 12


def test_remove_keeps_an_approximate_structure_in_step(tmp_path, model_meta):
    ix, ids, base, path_of = filtered_index(tmp_path, model_meta, "hnsw", n=2000)
    q = clustered_vectors(1, DIM, seed=3)[0]
    before = ix.search(q, k=10)
    s = ix.remove([path_of[h.id] for h in before[:5]] + ["/data/f2"])
    assert s.removed == 5 + 200
    after = ix.search(q, k=10)
    assert not {h.id for h in before[:5]} & {h.id for h in after}
    assert not any(h.path.startswith("/data/f2/") for h in after)
    ix.close()
    with open_index(tmp_path / "ix-hnsw") as again:  # a new process: the saved structure is current
        assert [h.id for h in again.search(q, k=10)] == [h.id for h in after]
        assert len(again) == 2000 - 205 and len(again.faiss) in (2000, 2000 - 205)


def test_a_misspelt_keyword_is_refused_not_ignored(tiny_index, photos, index_dir):
    """The filters and the model options travel as `**options`: a typo is a TypeError naming it,
    as Python says for a declared keyword, never a filter silently left out."""
    tiny_index.add([photos])
    q = tiny_index.vector(1)
    for call in (
        lambda: tiny_index.search(q, k=2, labl="cat"),
        lambda: tiny_index.search_vector(q, k=2, undr=str(photos)),
        lambda: tiny_index.similar(1, k=2, min_scor=0.5),
        lambda: tiny_index.explain(1, imagenet_clas="tabby"),
        lambda: tiny_index.unfreeze("head", 2, epoch=1),
        lambda: open_index(index_dir, batchsize=4),
    ):
        with pytest.raises(TypeError, match=r"unexpected keyword argument '(labl|undr|min_scor|imagenet_clas|epoch|batchsize)'"):
            call()
    # Spelt right, the same filters work (and still say what is wrong with a value).
    assert len(tiny_index.search(q, k=2, under=str(photos), min_score=-1.0)) == 2
    with pytest.raises(VecsearchError, match="min_score"):
        tiny_index.similar(1, k=2, min_score=2)
