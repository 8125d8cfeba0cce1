"""Entries that are not regular image files: FIFOs, sockets, folders named like images, broken and
looping links, names that are not UTF-8, folders that cannot be listed; and files replaced in
place by one of them. Each is listed with its reason, never waited on, never a crash.

The server's share (a thumbnail of a FIFO) is in test_server.py.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY, make_image, one_line_error, run

from vecsearch import files, images, indexer
from vecsearch.errors import BadImageError


def _unblock(path: Path) -> None:
    """Release readers stuck opening a FIFO (today's code): a writer that opens and closes."""
    for _ in range(64):
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # ENXIO: no reader waiting (or no FIFO any more)
            return
        time.sleep(0.01)


def _within(seconds: float, fn, *args, unblock=(), **kwargs):
    """(fn's result, seconds taken), insisting it returns within `seconds` instead of hanging."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    started = time.monotonic()
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    hung = t.is_alive()
    for p in unblock:
        _unblock(p)
    t.join(10)
    assert not hung, f"{getattr(fn, '__name__', fn)} still running after {seconds}s"
    if "error" in box:
        raise box["error"]
    return box["value"], time.monotonic() - started


# -- FIFOs and everything else that is not a regular file -------------------------------------
def test_a_folder_lists_every_thing_that_is_no_image_file_with_its_reason(tmp_path, tiny_index):
    root = tmp_path / "p"
    make_image(root / "ok.png", 1)
    os.mkfifo(root / "pipe.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock.png"))
    make_image(root / "folder.jpg" / "inside.png", 2)  # a folder named like an image: listed, and walked
    (root / "broken.jpg").symlink_to(tmp_path / "missing.jpg")
    (root / "loop.jpg").symlink_to(root / "loop.jpg")
    (root / "up").symlink_to(root, target_is_directory=True)
    try:
        summary, _ = _within(60, tiny_index.add, [root], unblock=[root / "pipe.jpg"])
    finally:
        sock.close()
    reasons = {Path(f.path).relative_to(root).as_posix(): f.reason for f in summary.failed}
    assert set(reasons) == {"pipe.jpg", "sock.png", "folder.jpg", "broken.jpg", "loop.jpg", "up"}, reasons
    assert "FIFO" in reasons["pipe.jpg"] and "socket" in reasons["sock.png"] and "folder" in reasons["folder.jpg"]
    assert "broken symbolic link" in reasons["broken.jpg"]
    assert "loop" in reasons["loop.jpg"] and "loop" in reasons["up"]
    assert summary.indexed == 2 and summary.total == 8  # ok.png and folder.jpg/inside.png
    stored = {r.path: r for r in tiny_index.failed()}
    assert {Path(p).relative_to(root).as_posix() for p in stored} == set(reasons)
    again = tiny_index.add([root])  # the same, unchanged, nothing rewritten
    assert (again.indexed, again.unchanged, again.removed) == (0, 2, 0)
    assert {f.path: f.reason for f in again.failed} == {f.path: f.reason for f in summary.failed}


def test_a_file_swapped_for_a_fifo_mid_run_is_listed_and_the_run_ends(tmp_path, tiny_index, monkeypatch):
    root = tmp_path / "p"
    for i in range(4):
        make_image(root / f"img{i}.png", i)
    victim = root / "img2.png"
    real_plan = indexer.plan

    def plan_then_swap(*args, **kwargs):
        out = real_plan(*args, **kwargs)
        victim.unlink()
        os.mkfifo(victim)
        return out

    monkeypatch.setattr(indexer, "plan", plan_then_swap)
    summary, seconds = _within(60, tiny_index.add, [root], unblock=[victim])
    assert seconds < 30
    assert [(Path(f.path).name, "FIFO" in f.reason) for f in summary.failed] == [("img2.png", True)]
    assert summary.indexed == 3
    monkeypatch.setattr(indexer, "plan", real_plan)
    again, _ = _within(60, tiny_index.add, [root], unblock=[victim])  # the lock was released; hashing never waits
    assert again.unchanged == 3 and [Path(f.path).name for f in again.failed] == ["img2.png"]


def test_the_guarded_reader_never_waits_on_a_fifo(tmp_path):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    for fn, args in [
        (files.read_file, (pipe,)),
        (files.file_sha256, (pipe,)),
        (images.read_image_file, (pipe, (8, 8))),
        (images.thumbnail_jpeg, (pipe, 64)),
    ]:
        with pytest.raises(BadImageError, match="FIFO"):
            _within(10, fn, *args, unblock=[pipe])
    assert _within(10, images.is_image_file, pipe, unblock=[pipe])[0] is False


def test_a_fifo_as_query_is_a_one_line_error(tmp_path, photos, index_dir):
    run("index", photos, "--index", index_dir, *TINY, "--quiet")
    pipe = tmp_path / "q.jpg"
    os.mkfifo(pipe)
    result, seconds = _within(60, run, "query", pipe, "--index", index_dir, ok=False, unblock=[pipe])
    one_line_error(result, "FIFO")


def test_a_file_name_that_is_not_utf8_is_listed_not_a_crash(tmp_path, index_dir):
    root = tmp_path / "p"
    make_image(root / "ok.png", 1)
    with open(os.fsencode(root) + b"/bad\xff.png", "wb") as f:
        f.write((root / "ok.png").read_bytes())
    out = run("index", root, "--index", index_dir, *TINY)
    assert "Traceback" not in out.output and "failed 1 of 2" in out.output
    assert "bad\\xff.png: unreadable: the name is not valid UTF-8" in out.output
    again = run("index", root, "--index", index_dir).output  # stored under its escaped spelling: unchanged
    assert "unchanged 1" in again and "failed 1 of 2" in again
    query = run("query", os.fsdecode(os.fsencode(root) + b"/bad\xff.png"), "--index", index_dir).output
    assert str(root / "ok.png") in query


# -- files replaced in place, links, folders that cannot be listed ----------------------------
def test_entries_replaced_in_place_or_linked_in_are_reconciled(tmp_path, tiny_index):
    root, outside = tmp_path / "p", tmp_path / "outside"
    for i in range(4):
        make_image(root / f"img{i}.png", i)
    make_image(root / "noext", 9, fmt="PNG")  # found by content
    make_image(outside / "other.png", 42)
    make_image(outside / "linked.png", 43)
    (root / "link.png").symlink_to(outside / "linked.png")
    first = tiny_index.add([root])
    assert first.indexed == 6
    recs = tiny_index.store.records()
    assert str(root / "link.png") in recs and str(outside / "linked.png") not in recs  # stored as given

    (root / "img0.png").unlink()
    (root / "img0.png").symlink_to(outside / "other.png")  # a link to other content
    (root / "img1.png").unlink()
    (root / "img1.png").mkdir()  # a folder
    (root / "noext").write_text("only text now\n")  # no longer an image
    (root / "link.png").unlink()  # the link goes
    second = tiny_index.add([root])
    recs = tiny_index.store.records()
    assert sorted(second.removed_paths) == [str(root / "link.png"), str(root / "noext")]
    assert str(root / "noext") not in recs and str(root / "link.png") not in recs
    assert recs[str(root / "img1.png")].status == "failed" and "folder" in recs[str(root / "img1.png")].reason
    rec0 = recs[str(root / "img0.png")]
    assert rec0.status == "ok" and rec0.sha256 == hashlib.sha256((outside / "other.png").read_bytes()).hexdigest()
    np.testing.assert_allclose(tiny_index.vector(rec0.id), tiny_index.embed([outside / "other.png"])[0], atol=1e-5)
    assert len(tiny_index) == 3  # img0 (new content), img2, img3
    hits = tiny_index.search(outside / "linked.png", k=10)
    assert {h.path for h in hits} == {str(root / "img0.png"), str(root / "img2.png"), str(root / "img3.png")}


def test_entries_under_a_folder_that_cannot_be_listed_are_kept(tmp_path, tiny_index, monkeypatch):
    root = tmp_path / "p"
    for i in range(2):
        make_image(root / "a" / f"img{i}.png", i)
        make_image(root / "b" / f"img{i}.png", 10 + i)
    tiny_index.add([root])
    real_scandir = os.scandir

    def scandir(path):
        if Path(path) == root / "b":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(images.os, "scandir", scandir)
    summary = tiny_index.add([root])
    assert summary.removed == 0 and len(tiny_index) == 4
    assert [(f.path, f.reason) for f in summary.failed] == [
        (str(root / "b"), "unreadable: cannot list this folder: Permission denied")
    ]
