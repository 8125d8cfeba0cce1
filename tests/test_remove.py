"""Removing images: a deleted folder dropped by `index` and by `remove`, `remove --missing`, and
iteration over what is left. A structure kept in step with removals is in test_search.py.

Removal is checked through `search` and `list`, what a user sees.
"""

from __future__ import annotations

import shutil

import pytest
from helpers import TINY, make_image, run, run_json

from vecsearch import VecsearchError, open_index


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
