"""`vecsearch list`: the indexed images, failed files only when asked, filters, JSON and JSON lines."""

from __future__ import annotations

import json

from helpers import TINY, run, run_json


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


def test_list_shows_indexed_images_and_failed_files_only_when_asked(photos, index_dir):
    run("index", photos, "--index", index_dir, *TINY, "--quiet")
    bad = photos / "a" / "bad.jpg"
    bad.write_bytes(b"not an image")
    run("index", photos, "--index", index_dir, "--quiet")
    good = sorted(str(p) for p in photos.rglob("*.*") if p != bad)
    assert sorted(run("list", "--index", index_dir).stdout.splitlines()) == good
    assert [r["status"] for r in run_json("list", "--index", index_dir)] == ["ok"] * 12
    assert run("list", "--failed", "--index", index_dir).stdout.splitlines() == [f"{bad}: not an image (unrecognised format)"]
    every = run("list", "--all", "--index", index_dir).stdout.splitlines()
    assert len(every) == 13 and f"{bad}: not an image (unrecognised format)" in every
    assert len(run_json("list", "--all", "--index", index_dir)) == 13
    r = run("list", "--all", "--failed", "--index", index_dir, ok=False)
    assert r.exit_code == 1 and "not both" in r.output
