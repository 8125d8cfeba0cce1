"""Query filters (--under, --label, --predicted, --min-score), in the library and on the command line.

Filters are checked against brute force over the filtered subset (helpers.brute_force), on
every index type and on both the exact and the approximate path; on the command line
against the stored labels and predictions of a real k-NN classifier.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import DIM, TINY, brute_force, clustered_vectors, filtered_index, run, run_json

from vecsearch import VecsearchError, open_index
from vecsearch.search import exact as search_mod


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "IVF32,SQ8", "PCA16,IVF32,SQ8"])
@pytest.mark.parametrize("subset_exact", [1 << 16, 8])  # 8 (and no cost rule): the approximate path asks for more
def test_filters_match_brute_force_over_the_subset(tmp_path, model_meta, monkeypatch, index_type, subset_exact):
    monkeypatch.setattr(search_mod, "SUBSET_EXACT", subset_exact)
    monkeypatch.setattr(search_mod, "EXACT_COST_RATIO", 1.0 if subset_exact > 8 else 0.0)
    # Flat: with 20, a 10% subset is a masked scan of every row, a 1% one picks its rows.
    monkeypatch.setattr(search_mod, "FULL_SCAN_SHARE", 20 if subset_exact == 8 else 4)
    ix, ids, base, path_of = filtered_index(tmp_path, model_meta, index_type)
    exact_calls = []
    if index_type in ("hnsw", "IVF32,SQ8") and subset_exact == 8:  # a FAISS selector: every answer from it
        real = search_mod.Searcher._exact_within
        monkeypatch.setattr(search_mod.Searcher, "_exact_within", lambda self, *a: exact_calls.append(1) or real(self, *a))
    queries = clustered_vectors(15, DIM, seed=99)
    cats = set(ids[::10].tolist())
    dogs_new = set(ids[3::10].tolist())
    cases = [
        (dict(under="/data/f1"), lambda i: path_of[i].startswith("/data/f1/")),  # not /data/f1_x
        (dict(label="cat"), lambda i: i in cats),
        (dict(predicted="dog"), lambda i: i in dogs_new),  # the newest classifier's, not "old"'s
        (dict(under="/data/f0", label="cat"), lambda i: i in cats and path_of[i].startswith("/data/f0/")),
        (dict(under="/data"), lambda i: True),
    ]
    for kw, keep in cases:
        mask = np.array([keep(int(i)) for i in ids])
        assert mask.sum() >= 20, kw
        want_ids, want_scores = brute_force(ids[mask], base[mask], queries, 20)
        for q, w_ids, w_scores in zip(queries, want_ids, want_scores, strict=False):
            hits = ix.search(q, k=20, **kw)
            assert len(hits) == 20, (kw, len(hits))
            got = [h.id for h in hits]
            assert all(keep(i) for i in got), kw
            if index_type == "flat" or subset_exact > 8:
                assert got == w_ids.tolist(), kw
            else:
                assert len(set(got) & set(w_ids.tolist())) >= 18, kw
            np.testing.assert_allclose([h.score for h in hits][:5], w_scores[:5], atol=1e-5)
    assert exact_calls == []
    ix.close()


def test_min_score_and_filter_errors(tmp_path, model_meta):
    ix, ids, base, _ = filtered_index(tmp_path, model_meta, "flat", n=300)
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
    assert [h.id for h in ix.search(q, k=50, predicted="dog", classifier="old")] == [
        h.id for h in all_hits if h.id in set(ids[1::7].tolist())
    ][:50]
    ix.close()


def test_query_filters_on_the_command_line_with_a_real_classifier(tmp_path, index_dir):
    """teach -> classify --knn -> query --label / --predicted / --under / --min-score, against the stored records."""
    from digits import write_digits

    taught = write_digits(tmp_path / "taught", per_class=6, classes=range(3))
    write_digits(tmp_path / "new", per_class=5, classes=range(3))  # unlabelled: the classifier predicts these
    run("index", tmp_path / "new", "--index", index_dir, *TINY, "--quiet")
    run("teach", tmp_path / "taught", "--index", index_dir)
    run("classify", "--knn", "--index", index_dir)
    q = next(p for p in taught if p.parent.name == "1")
    with open_index(index_dir) as ix:
        ann = ix.annotations([r.id for r in ix])
        path_of = {r.id: r.path for r in ix}
    predicted_1 = {path_of[i] for i, a in ann.items() if any(p["label"] == "1" for p in a["predictions"])}
    taught_2 = {path_of[i] for i, a in ann.items() if (a["user_label"] or {}).get("label") == "2"}
    assert predicted_1 and len(taught_2) == 6

    hits = run_json("query", q, "--index", index_dir, "--predicted", "1", "--k", 50)
    assert {h["path"] for h in hits} == predicted_1
    hits = run_json("query", q, "--index", index_dir, "--label", "2", "--k", 3)
    assert len(hits) == 3 and {h["path"] for h in hits} <= taught_2
    hits = run_json("query", q, "--index", index_dir, "--under", tmp_path / "new" / "0", "--k", 50)
    assert {h["path"] for h in hits} == {str(p) for p in (tmp_path / "new" / "0").iterdir()}
    all_hits = run_json("query", q, "--index", index_dir, "--k", 50)
    cut = all_hits[4]["score"]
    assert run_json("query", q, "--index", index_dir, "--k", 50, "--min-score", cut) == [h for h in all_hits if h["score"] >= cut]
    r = run("query", q, "--index", index_dir, "--label", "7", ok=False)
    assert r.exit_code == 1 and "'0', '1', '2'" in r.output
    # The ImageNet listing is --imagenet; --label without an IMAGE is its old spelling, with a note.
    r = run("query", "--imagenet", "tench", "--index", index_dir, ok=False)
    assert r.exit_code == 1 and "no ImageNet labels" in r.stderr
    r = run("query", "--label", "tench", "--index", index_dir, ok=False)
    assert r.exit_code == 1 and "no ImageNet labels" in r.stderr and "old spelling of `query --imagenet" in r.stderr
    r = run("query", "--imagenet", "tench", "--under", tmp_path, "--index", index_dir, ok=False)
    assert r.exit_code == 1 and "--under goes with a search by IMAGE" in r.output
