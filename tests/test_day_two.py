"""Issue 12, the data side: remove and list, iteration, query filters, --exclude, image formats, API niceties.

Filters are checked against brute force over the filtered subset (helpers.brute_force),
removal through `search` (what a user sees), formats by writing real files with Pillow.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from helpers import brute_force, clustered_vectors, make_image, run, run_json, write_vector_file
from vecsearch import VecsearchError, open_index
from vecsearch import search as search_mod

DIM = 32


@pytest.fixture
def model_meta(tmp_path):
    """The tiny model's metadata, as an export of a real (one-image) index records it."""
    make_image(tmp_path / "one" / "a.png", seed=1)
    with open_index(tmp_path / "seed-index", backbone="tiny", weights=None, seed=7) as ix:
        ix.add([tmp_path / "one"])
        ix.export(tmp_path / "seed.npz")
    with np.load(tmp_path / "seed.npz") as z:
        return json.loads(str(z["meta"]))


def _filtered_index(tmp_path, model_meta, index_type, n=3000):
    """n synthetic vectors in folders /data/f0../data/f9 (f1_x is a sibling whose name starts like f1),
    a tenth taught "cat", a tenth predicted "dog" by the newest classifier."""
    vecs = clustered_vectors(n, DIM, seed=0)
    folders = [f"/data/f{i % 10}" if i % 10 != 9 else "/data/f1_x" for i in range(n)]
    paths = [f"{d}/{i:06d}.jpg" for i, d in enumerate(folders)]
    f = write_vector_file(tmp_path / "v.npz", vecs, model_meta, paths=paths)
    ix = open_index(tmp_path / f"ix-{index_type}", index_type=index_type)
    ix.import_vectors(f)
    ids, base, _ = ix.store.vectors()
    path_of = {r.id: r.path for r in ix.store.iter_images()}
    ix.store.set_user_labels((int(i), "cat", None, "test") for i in ids[::10])
    ix.store.save_classifier_row("old", "knn", None, "{}", "{}")
    ix.store.set_predictions("old", ((int(i), "dog", 0.9) for i in ids[1::7]))
    ix.store.save_classifier_row("new", "knn", None, "{}", "{}")
    ix.store.set_predictions("new", ((int(i), "dog", 0.9) for i in ids[3::10]))
    return ix, ids, base, path_of


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "IVF32,SQ8"])
@pytest.mark.parametrize("subset_exact", [1 << 16, 8])  # 8: the approximate path asks for more candidates
def test_filters_match_brute_force_over_the_subset(tmp_path, model_meta, monkeypatch, index_type, subset_exact):
    monkeypatch.setattr(search_mod, "SUBSET_EXACT", subset_exact)
    ix, ids, base, path_of = _filtered_index(tmp_path, model_meta, index_type)
    queries = clustered_vectors(15, DIM, seed=99)
    cats = set(ids[::10].tolist())
    dogs_new = set(ids[3::10].tolist())
    cases = [
        (dict(under="/data/f1"), lambda i: path_of[i].startswith("/data/f1/")),  # not /data/f1_x
        (dict(label="cat"), lambda i: i in cats),
        (dict(predicted="dog"), lambda i: i in dogs_new),  # the newest classifier's, not "old"'s
        (dict(under="/data/f0", label="cat"), lambda i: i in cats and path_of[i].startswith("/data/f0/")),
    ]
    for kw, keep in cases:
        mask = np.array([keep(int(i)) for i in ids])
        assert mask.sum() >= 20, kw
        want_ids, want_scores = brute_force(ids[mask], base[mask], queries, 20)
        for q, w_ids, w_scores in zip(queries, want_ids, want_scores):
            hits = ix.search(q, k=20, **kw)
            assert len(hits) == 20, (kw, len(hits))
            got = [h.id for h in hits]
            assert all(keep(i) for i in got), kw
            if index_type == "flat" or subset_exact > 8:
                assert got == w_ids.tolist(), kw
            else:
                assert len(set(got) & set(w_ids.tolist())) >= 18, kw
            np.testing.assert_allclose([h.score for h in hits][:5], w_scores[:5], atol=1e-5)
    ix.close()


def test_min_score_and_filter_errors(tmp_path, model_meta):
    ix, ids, base, _ = _filtered_index(tmp_path, model_meta, "flat", n=300)
    q = clustered_vectors(1, DIM, seed=5)[0]
    all_hits = ix.search(q, k=300)
    cut = all_hits[40].score
    hits = ix.search(q, k=300, min_score=cut)
    assert [h.id for h in hits] == [h.id for h in all_hits if h.score >= cut]
    assert len(hits) >= 41
    assert ix.search(q, k=5, under="/nowhere") == []
    with pytest.raises(VecsearchError, match="taught.*'cat'"):
        ix.search(q, label="kat")
    with pytest.raises(VecsearchError, match="min_score"):
        ix.search(q, min_score=2)
    assert [h.id for h in ix.search(q, k=50, predicted="dog", classifier="old")] == \
        [h.id for h in all_hits if h.id in set(ids[1::7].tolist())][:50]
    ix.close()
