"""`--exclude` globs: what they match, that the index remembers them, and that an excluded folder is never walked."""

from __future__ import annotations

from helpers import TINY, make_image, run, run_json

from vecsearch import open_index


def test_exclude_is_remembered_and_drops_what_it_matches(photos, index_dir):
    make_image(photos / "a" / "thumbs" / "t1.jpg", seed=30)
    make_image(photos / "b" / "deep" / "thumbs" / "t2.png", seed=31)
    make_image(photos / "b" / "scan.tmp.png", seed=32)
    run("index", photos, "--index", index_dir, *TINY, "--quiet")
    with open_index(index_dir) as ix:
        assert len(ix) == 15
    s = run_json("index", photos, "--index", index_dir, "--exclude", "thumbs", "--exclude", "*.tmp.*")
    assert s["exclude"] == ["thumbs", "*.tmp.*"] and s["removed"] == 3
    assert s["removed_paths"] == sorted(
        str(p)
        for p in (photos / "a" / "thumbs" / "t1.jpg", photos / "b" / "deep" / "thumbs" / "t2.png", photos / "b" / "scan.tmp.png")
    )
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
