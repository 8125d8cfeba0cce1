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
from vecsearch.extras import install_line
from vecsearch.search import exact as search_mod

DIM = 32


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


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "IVF32,SQ8", "PCA16,IVF32,SQ8"])
@pytest.mark.parametrize("subset_exact", [1 << 16, 8])  # 8 (and no cost rule): the approximate path asks for more
def test_filters_match_brute_force_over_the_subset(tmp_path, model_meta, monkeypatch, index_type, subset_exact):
    monkeypatch.setattr(search_mod, "SUBSET_EXACT", subset_exact)
    monkeypatch.setattr(search_mod, "EXACT_COST_RATIO", 1.0 if subset_exact > 8 else 0.0)
    # Flat: with 20, a 10% subset is a masked scan of every row, a 1% one picks its rows.
    monkeypatch.setattr(search_mod, "FULL_SCAN_SHARE", 20 if subset_exact == 8 else 4)
    ix, ids, base, path_of = _filtered_index(tmp_path, model_meta, index_type)
    exact_calls = []
    if index_type in ("hnsw", "IVF32,SQ8") and subset_exact == 8:  # a FAISS selector: every answer from it
        real = search_mod.Searcher._exact_within
        monkeypatch.setattr(search_mod.Searcher, "_exact_within",
                            lambda self, *a: exact_calls.append(1) or real(self, *a))
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
    assert exact_calls == []
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


TINY = ("--backbone", "tiny", "--weights", "none", "--seed", "7")


def _paths(hits) -> set[str]:
    return {h.path if hasattr(h, "path") else h["path"] for h in hits}


def test_a_deleted_folder_is_dropped_from_results_by_index_and_by_remove(photos, tmp_path, index_dir):
    run("index", photos, "--index", index_dir, *TINY, "--quiet")
    query = photos / "b" / "img07.jpg"
    gone = photos / "a"
    assert any(p.startswith(str(gone) + "/") for p in _paths(run_json("query", query, "--index", index_dir, "-k", 11)))
    shutil.rmtree(gone)
    # `index gone` after `rm -rf gone`: the entries are dropped, not "No such file or folder".
    s = run_json("index", gone, "--index", index_dir)
    assert s["removed"] == 6 and s["indexed"] == 0
    hits = run_json("query", query, "--index", index_dir, "-k", 11)
    assert len(hits) == 5 and not any(p.startswith(str(gone)) for p in _paths(hits))
    # A path that is neither there nor indexed is still a mistake.
    r = run("index", tmp_path / "typo", "--index", index_dir, ok=False)
    assert r.exit_code == 1 and "No such file or folder" in r.output
    # A folder emptied (still there) is reconciled too; an empty folder never indexed is an error.
    make_image(photos / "b" / "emptied" / "e.jpg", seed=41)
    run("index", photos / "b" / "emptied", "--index", index_dir, "--quiet")
    (photos / "b" / "emptied" / "e.jpg").unlink()
    assert run_json("index", photos / "b" / "emptied", "--index", index_dir)["removed"] == 1
    r = run("index", photos / "b" / "emptied", "--index", index_dir, ok=False)
    assert r.exit_code == 1 and "No image files found" in r.output

    # The same through `remove`, on a folder deleted from disk, and on a file still there.
    shutil.rmtree(photos / "b" / "sub", ignore_errors=True)
    make_image(photos / "b" / "sub" / "x.png", seed=40)
    run("index", photos, "--index", index_dir, "--quiet")
    shutil.rmtree(photos / "b" / "sub")
    out = run_json("remove", photos / "b" / "sub", photos / "b" / "img06.png", photos / "nothing", "--index", index_dir)
    assert out["removed"] == 2 and out["not_indexed"] == [str(photos / "nothing")]
    assert out["removed_paths"] == sorted([str(photos / "b" / "sub" / "x.png"), str(photos / "b" / "img06.png")])
    with open_index(index_dir) as ix:
        assert len(ix) == 5 and str(photos / "b" / "img06.png") not in _paths(ix.search(query, k=10))
        assert [r.path for r in ix] == sorted(str(p) for p in (photos / "b").iterdir() if p.is_file() and p.name != "img06.png")


def test_remove_missing_and_python_api(photos, tmp_path, index_dir, model_meta):
    with open_index(index_dir, backbone="tiny", weights=None, seed=7) as ix:
        ix.add([photos])
        q = photos / "a" / "img00.png"
        (photos / "a" / "img01.jpg").unlink()
        (photos / "b" / "img08.jpg").unlink()
        with pytest.raises(VecsearchError, match="Nothing to remove"):
            ix.remove([])
        s = ix.remove(missing=True)
        assert s.removed == 2 and s.removed_paths == [str(photos / "a" / "img01.jpg"), str(photos / "b" / "img08.jpg")]
        assert len(ix) == 10 and not {str(photos / "a" / "img01.jpg")} & _paths(ix.search(q, k=20))
        assert ix.remove(missing=True).removed == 0
        # Iteration streams every record (ok and failed) by id, in pages.
        (photos / "a" / "bad.jpg").write_bytes(b"not an image")
        ix.add([photos])
        recs = list(ix)
        assert [r.id for r in recs] == sorted(r.id for r in recs) and len(recs) == 11
        assert [r.path for r in ix.iter_images(status="failed")] == [str(photos / "a" / "bad.jpg")]
        assert {r.path for r in ix.iter_images(under=photos / "b")} == {str(p) for p in (photos / "b").iterdir()}
        assert "10 vectors" in repr(ix) and "tiny" in repr(ix)


def test_remove_keeps_an_approximate_structure_in_step(tmp_path, model_meta):
    ix, ids, base, path_of = _filtered_index(tmp_path, model_meta, "hnsw", n=2000)
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


def test_list_cli(photos, index_dir):
    run("index", photos, "--index", index_dir, *TINY, "--quiet")
    (photos / "a" / "bad[x].jpg").write_bytes(b"\x1b[31mnot an image")
    run("index", photos, "--index", index_dir, "--quiet")
    lines = run("list", "--index", index_dir).stdout.splitlines()
    assert len(lines) == 12 and str(photos / "a" / "img00.png") in lines  # failed files: --failed or --all
    failed = run("list", "--failed", "--index", index_dir).stdout.splitlines()
    assert len(failed) == 1 and failed[0].startswith(str(photos / "a" / "bad[x].jpg") + ": ")
    rows = run_json("list", "--under", photos / "b", "--index", index_dir)
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in (photos / "b").iterdir())
    jl = run("list", "--jsonl", "--under", photos / "b", "--index", index_dir).stdout.splitlines()
    assert [json.loads(x) for x in jl] == rows
    r = run("list", "--label", "cat", "--index", index_dir)
    assert r.stdout == "" and "No indexed image matches" in r.stderr


# -- image formats ----------------------------------------------------------------------------
def _write(path, seed, fmt):
    """A photo-like image written by Pillow (or pillow-heif) in `fmt`."""
    from vecsearch import images

    images.heif_available()  # registers pillow-heif's opener and saver when installed
    return make_image(path, seed=seed, size=(64, 48), fmt=fmt)


@pytest.mark.skipif(not __import__("PIL.features").features.check("avif"), reason="this Pillow has no AVIF")
def test_an_avif_folder_indexes_and_queries(tmp_path, index_dir):
    for i in range(3):
        _write(tmp_path / "avif" / f"p{i}.avif", i, "AVIF")
    _write(tmp_path / "avif" / "noext", 5, "AVIF")  # found by its content too
    s = run_json("index", tmp_path / "avif", "--index", index_dir, *TINY)
    assert s["indexed"] == 4 and s["failed"] == []
    hits = run_json("query", tmp_path / "avif" / "p0.avif", "--index", index_dir)
    assert len(hits) == 3
    with open_index(index_dir) as ix:  # a stored vector equals embedding the same file as a query
        (rec,) = [r for r in ix if r.path.endswith("p1.avif")]
        np.testing.assert_allclose(ix.vector(rec.id), ix.embed([tmp_path / "avif" / "p1.avif"])[0], atol=1e-5)


def test_heic_indexes_with_the_extra(tmp_path, index_dir):
    pytest.importorskip("pillow_heif")
    for i in range(2):
        _write(tmp_path / "phone" / f"IMG_{i}.HEIC", i, "HEIF")
    make_image(tmp_path / "phone" / "x.jpg", seed=9)
    s = run_json("index", tmp_path / "phone", "--index", index_dir, *TINY)
    assert s["indexed"] == 3 and s["failed"] == []
    hits = run_json("query", tmp_path / "phone" / "IMG_0.HEIC", "--index", index_dir, "--k", 5)
    assert {h["path"] for h in hits} == {str(tmp_path / "phone" / n) for n in ("IMG_1.HEIC", "x.jpg")}


def test_heic_without_the_extra_names_the_install_line(tmp_path, index_dir):
    """In a fresh process where pillow_heif cannot be imported: a failed row and a query error with the line."""
    import subprocess
    import sys

    pytest.importorskip("pillow_heif")
    _write(tmp_path / "phone" / "IMG_0.heic", 0, "HEIF")
    make_image(tmp_path / "phone" / "x.jpg", seed=9)
    script = (
        "import sys, json; sys.modules['pillow_heif'] = None; sys.path.insert(0, sys.argv[1]);"
        "import tiny_backbone; from typer.testing import CliRunner; from vecsearch.cli import app;"
        "r = CliRunner().invoke(app, ['index', sys.argv[2], '--index', sys.argv[3], '--backbone', 'tiny',"
        " '--weights', 'none', '--seed', '7', '--json']); print(r.stdout);"
        "q = CliRunner().invoke(app, ['query', sys.argv[2] + '/IMG_0.heic', '--index', sys.argv[3]]);"
        "print('EXIT', q.exit_code); print(q.output)"
    )
    tests = str(__import__("pathlib").Path(__file__).parent)
    out = subprocess.run([sys.executable, "-c", script, tests, str(tmp_path / "phone"), str(index_dir)],
                         capture_output=True, text=True, timeout=300)
    summary = json.loads(out.stdout[: out.stdout.index("EXIT")])
    assert summary["indexed"] == 1
    (failed,) = summary["failed"]
    assert failed["path"].endswith("IMG_0.heic") and install_line("heif") in failed["reason"]
    tail = out.stdout[out.stdout.index("EXIT"):]
    assert tail.startswith("EXIT 1") and install_line("heif") in tail, tail


# -- exclude ----------------------------------------------------------------------------------
def test_exclude_is_remembered_and_drops_what_it_matches(photos, index_dir):
    make_image(photos / "a" / "thumbs" / "t1.jpg", seed=30)
    make_image(photos / "b" / "deep" / "thumbs" / "t2.png", seed=31)
    make_image(photos / "b" / "scan.tmp.png", seed=32)
    run("index", photos, "--index", index_dir, *TINY, "--quiet")
    with open_index(index_dir) as ix:
        assert len(ix) == 15
    s = run_json("index", photos, "--index", index_dir, "--exclude", "thumbs", "--exclude", "*.tmp.*")
    assert s["exclude"] == ["thumbs", "*.tmp.*"] and s["removed"] == 3
    assert s["removed_paths"] == sorted(str(p) for p in (photos / "a" / "thumbs" / "t1.jpg",
                                                          photos / "b" / "deep" / "thumbs" / "t2.png",
                                                          photos / "b" / "scan.tmp.png"))
    # Remembered: a later run without --exclude keeps them out, and stats shows them.
    make_image(photos / "a" / "thumbs" / "t3.jpg", seed=33)
    s = run_json("index", photos, "--index", index_dir)
    assert s["indexed"] == 0 and s["total"] == 12 and s["exclude"] == ["thumbs", "*.tmp.*"]
    assert run_json("stats", "--index", index_dir)["exclude"] == ["thumbs", "*.tmp.*"]
    # Relative-path and absolute globs; a new glob joins the remembered ones.
    s = run_json("index", photos, "--index", index_dir, "--exclude", "a/img0[0-2]*")
    assert sorted(map(lambda p: p.rsplit("/", 1)[1], s["removed_paths"])) == ["img00.png", "img01.jpg", "img02.jpg"]
    # --clear-exclude forgets them: everything comes back, the 6 excluded files with the vectors
    # they had (kept by content hash); only t3, never indexed, is embedded.
    s = run_json("index", photos, "--index", index_dir, "--clear-exclude")
    assert s["exclude"] == [] and (s["indexed"], s["reused"]) == (1, 6) and s["total"] == 16
    r = run("index", photos, "--index", index_dir, "--exclude", "", ok=False)
    assert r.exit_code == 1 and "non-empty glob" in r.output


def test_exclude_globs_unit(tmp_path):
    from vecsearch.images import is_excluded

    root = tmp_path / "p"
    f = root / "x" / "thumbs" / "a.jpg"
    assert is_excluded(f, [root], ["thumbs"]) and is_excluded(f, [root], ["*.jpg"])
    assert is_excluded(f, [root], ["x/*"]) and is_excluded(f, [root], [str(root / "x") + "/*"])
    assert is_excluded(f, [root], ["*/thumbs/*"])
    assert not is_excluded(f, [root], ["thumb"]) and not is_excluded(f, [root], ["*.JPG"])  # whole names, case-sensitive
    assert not is_excluded(f, [root], ["y/*"]) and not is_excluded(f, [root], [])


# -- the Python API in a notebook -------------------------------------------------------------
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


def test_library_errors_speak_python_and_the_cli_adds_its_flags(tmp_path, index_dir):
    import re
    from pathlib import Path

    import vecsearch

    # No library message names a command-line flag: scan the raise statements' text.
    pkg = Path(vecsearch.__file__).parent
    offenders = []
    for f in pkg.rglob("*.py"):
        if "cli" in f.relative_to(pkg).parts:
            continue
        for m in re.finditer(r"raise \w+\((?:[^()]|\([^()]*\))*\)", f.read_text()):
            if re.search(r"(?<!ray start )--[a-z]", m.group()):  # Ray's own command may be named
                offenders.append(f"{f.name}: {m.group()[:80]}")
    assert offenders == []
    with pytest.raises(vecsearch.WeightsUnavailableError) as info:
        open_index(index_dir, backbone="tiny", weights=str(tmp_path / "no.h5"))
    assert "--" not in str(info.value) and info.value.option == "weights"
    r = run("index", tmp_path, "--index", index_dir, "--backbone", "tiny", "--weights", tmp_path / "no.h5", ok=False)
    assert r.exit_code == 1 and "--weights FILE" in r.output and "Traceback" not in r.output
    r = run("stats", "--index", tmp_path / "none", ok=False)
    assert "No index at" in r.output and "--index DIR" in r.output


def test_an_excluded_folder_is_not_walked(tmp_path):
    import os

    from vecsearch import images

    make_image(tmp_path / "p" / "keep.jpg", seed=1)
    (tmp_path / "p" / "thumbs").mkdir()
    os.mkfifo(tmp_path / "p" / "thumbs" / "pipe.jpg")  # walked, it would be a failed row
    found = list(images.scan([tmp_path / "p"]))
    assert {f.path.name for f in found} == {"keep.jpg", "pipe.jpg"}
    found = list(images.scan([tmp_path / "p"], exclude=["thumbs"]))
    assert [f.path.name for f in found] == ["keep.jpg"]
    # A file given by name is excluded too; a folder given by name is walked whatever its name.
    assert [f.path.name for f in images.scan([tmp_path / "p" / "keep.jpg"], exclude=["*.jpg"])] == []
    found = list(images.scan([tmp_path / "p" / "thumbs"], exclude=["thumbs"]))
    assert [(f.path.name, f.reason is not None) for f in found] == [("pipe.jpg", True)]


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
    assert run_json("query", q, "--index", index_dir, "--k", 50, "--min-score", cut) == \
        [h for h in all_hits if h["score"] >= cut]
    r = run("query", q, "--index", index_dir, "--label", "7", ok=False)
    assert r.exit_code == 1 and "'0', '1', '2'" in r.output
    # The ImageNet listing is --imagenet; --label without an IMAGE is its old spelling, with a note.
    r = run("query", "--imagenet", "tench", "--index", index_dir, ok=False)
    assert r.exit_code == 1 and "no ImageNet labels" in r.stderr
    r = run("query", "--label", "tench", "--index", index_dir, ok=False)
    assert r.exit_code == 1 and "no ImageNet labels" in r.stderr and "old spelling of `query --imagenet" in r.stderr
    r = run("query", "--imagenet", "tench", "--under", tmp_path, "--index", index_dir, ok=False)
    assert r.exit_code == 1 and "--under goes with a search by IMAGE" in r.output


@pytest.mark.parametrize("fmt, ext", [("AVIF", ".avif"), ("HEIF", ".heic")])
def test_new_formats_keep_the_pixel_cap_before_decoding(tmp_path, fmt, ext):
    from vecsearch import images

    if fmt == "AVIF" and not __import__("PIL.features").features.check("avif"):
        pytest.skip("this Pillow has no AVIF")
    if fmt == "HEIF":
        pytest.importorskip("pillow_heif")
    data = _write(tmp_path / f"x{ext}", 3, fmt).read_bytes()
    pixels, w, h = images.decode_image(data, (32, 32))
    assert pixels.shape == (32, 32, 3) and (w, h) == (64, 48)
    with pytest.raises(VecsearchError, match="too large: 64x48 pixels exceeds the cap of 3000"):
        images.decode_image(data, (32, 32), max_pixels=3000)
    assert images.is_image_file(tmp_path / f"x{ext}")
    (tmp_path / "noext").write_bytes(data)
    assert images.is_image_file(tmp_path / "noext")  # by its ftyp signature
