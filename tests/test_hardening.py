"""What an attacker broke (issue 11), one test per failure: FIFOs, memory, the pixel cap,
stale entries, a race, tracebacks, terminal injection. The server's share (a thumbnail of a
FIFO, thumbnail memory, the Host check, documented statuses) is in test_server.py; the
fuzzing run in test_openapi_fuzz.py.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from digits import write_digits
from helpers import TESTS, big_png, make_image, png_header_only, run

from vecsearch import files, images, indexer, open_index
from vecsearch.errors import BadImageError

TINY = ["--backbone", "tiny", "--weights", "none", "--seed", "7"]
GiB = 1024**3


# -- helpers -------------------------------------------------------------------------------
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


def _one_line_error(result, *words: str) -> str:
    """The CLI failed with exit 1 and one `Error:` line (holding `words`), no traceback."""
    assert result.exit_code == 1, (result.output, result.exception)
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]
    return lines[0]


# -- 1. FIFOs and everything else that is not a regular file ------------------------------------
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
    for fn, args in [(files.read_file, (pipe,)), (files.file_sha256, (pipe,)), (images.read_image_file, (pipe, (8, 8))),
                     (images.thumbnail_jpeg, (pipe, 64))]:
        with pytest.raises(BadImageError, match="FIFO"):
            _within(10, fn, *args, unblock=[pipe])
    assert _within(10, images.is_image_file, pipe, unblock=[pipe])[0] is False


def test_a_fifo_as_query_is_a_one_line_error(tmp_path, photos, index_dir):
    run("index", photos, "--index", index_dir, *TINY, "--quiet")
    pipe = tmp_path / "q.jpg"
    os.mkfifo(pipe)
    result, seconds = _within(60, run, "query", pipe, "--index", index_dir, ok=False, unblock=[pipe])
    _one_line_error(result, "FIFO")


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


# -- 2. memory: tiny files that decode to huge images ------------------------------------------------
_PEAK = """
import resource, sys
sys.path.insert(0, {tests!r})
import tiny_backbone
from vecsearch import open_index
with open_index({index!r}, backbone="tiny", weights=None, seed=7, workers=4) as ix:
    s = ix.add([{folder!r}])
print(s.indexed, len(s.failed), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def _indexing_peak(folder: Path, index: Path) -> tuple[int, int, int]:
    """(indexed, failed, peak RSS in bytes) of indexing `folder` in a fresh process."""
    out = subprocess.run([sys.executable, "-c", _PEAK.format(tests=str(TESTS), index=str(index), folder=str(folder))],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    indexed, failed, peak = map(int, out.stdout.split()[-3:])
    return indexed, failed, peak


def test_indexing_four_huge_rgba_pngs_stays_within_the_memory_budget(tmp_path):
    make_image(tmp_path / "small" / "a.png", 0)
    for i in range(4):  # 110 MP RGBA each, ~430 KB on disk
        big_png(tmp_path / "big" / f"b{i}.png", 11000, 10000)
    _, _, base = _indexing_peak(tmp_path / "small", tmp_path / "ix1")
    indexed, failed, peak = _indexing_peak(tmp_path / "big", tmp_path / "ix2")
    assert (indexed, failed) == (4, 0)
    print(f"peak RSS: one small image {base / 2**20:.0f} MiB, four 110 MP RGBA PNGs {peak / 2**20:.0f} MiB "
          f"(+{(peak - base) / 2**20:.0f} MiB)")
    assert peak - base < 1.5 * GiB


def _mode_image(mode: str):
    from PIL import Image

    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (30, 40, 4), dtype=np.uint8), "RGBA").resize((800, 600), Image.BILINEAR)
    if mode == "I;16":
        return Image.fromarray(np.asarray(rgba)[..., 0].astype(np.uint16) * 200)
    if mode == "F":
        return Image.fromarray(np.asarray(rgba)[..., 0].astype(np.float32) * 3.0, "F")
    if mode == "P":
        p = rgba.convert("RGB").convert("P")
        p.info["transparency"] = 3
        return p
    return rgba.convert(mode)


@pytest.mark.parametrize("mode,fmt", [("RGBA", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("I;16", "PNG"), ("F", "TIFF"),
                                      ("CMYK", "TIFF"), ("L", "PNG")])
def test_a_large_decode_in_strips_gives_the_same_pixels(monkeypatch, mode, fmt):
    import io

    buf = io.BytesIO()
    _mode_image(mode).save(buf, fmt)
    data = buf.getvalue()
    sizes = [((224, 224), False), (None, False), ((100, 100), True)]
    whole = [images.decode_image(data, size, keep_aspect=keep)[0] for size, keep in sizes]
    monkeypatch.setattr(images, "STRIP_MIN_PIXELS", 1000)
    monkeypatch.setattr(images, "_STRIP_BYTES", 800 * 4 * 37)  # many strips of 37 rows
    strips = [images.decode_image(data, size, keep_aspect=keep)[0] for size, keep in sizes]
    np.testing.assert_array_equal(whole[0], strips[0])  # the model's input: exactly the same
    np.testing.assert_array_equal(whole[1], strips[1])
    assert whole[2].shape == strips[2].shape  # thumbnails: whole images use Pillow's reducing shortcut
    assert np.abs(whole[2].astype(int) - strips[2]).mean() < 2


def test_large_decodes_share_one_memory_budget(monkeypatch):
    budget = images._MemoryBudget(100)
    order: list[str] = []
    inside = threading.Event()

    def big(name, n):
        with budget.reserve(n):
            order.append(f"{name} in")
            inside.set()
            time.sleep(0.2)
            order.append(f"{name} out")

    a = threading.Thread(target=big, args=("a", 80))
    a.start()
    inside.wait(5)
    b = threading.Thread(target=big, args=("b", 80))  # must wait for a
    c = threading.Thread(target=big, args=("c", 10))  # fits beside a
    b.start()
    c.start()
    for t in (a, b, c):
        t.join(10)
    assert order.index("b in") > order.index("a out")
    assert order.index("c in") < order.index("a out")
    huge = images._MemoryBudget(100)
    with huge.reserve(10**9):  # larger than the budget: runs, alone
        assert huge.used == 100


# -- 3. the pixel cap, the same in every thread and every run -----------------------------------------
def test_the_pixel_cap_gives_the_same_answer_in_every_thread_and_run(tmp_path):
    """Pillow's own check (a process-wide limit, a warning through process-wide filters) once
    decided images between 89.5 and 120 MP at random when threads decoded side by side."""
    root = tmp_path / "p"
    root.mkdir()
    for i in range(16):  # by name, each 100 MP header (slow to open) is opened while the other thread decodes a small image
        (root / f"{i:02d}a-under.png").write_bytes(png_header_only(10000, 10000, colour_type=0, padding=2000))
        make_image(root / f"{i:02d}b-ok.png", i)
    for i in range(2):
        (root / f"{i}c-over.png").write_bytes(png_header_only(11000, 11000, colour_type=0))
    outcomes = set()
    for n in range(10):
        with open_index(tmp_path / f"ix{n}", backbone="tiny", weights=None, seed=7, workers=2) as ix:
            s = ix.add([root])
        outcomes.add(tuple(sorted((Path(f.path).name, f.reason) for f in s.failed)))
    assert len(outcomes) == 1, [sorted(set(o) - set.intersection(*map(set, outcomes))) for o in outcomes]
    failed = dict(outcomes.pop())
    assert len(failed) == 18 and not any("89478485" in r for r in failed.values())
    for name, reason in failed.items():
        if "over" in name:
            assert reason == "too large: 11000x11000 pixels exceeds the cap of 120000000"
        else:  # decoded, then found to be missing its data: never refused by size
            assert reason.startswith("truncated or corrupt image"), reason


# -- 5. files replaced in place, and links -----------------------------------------------------------
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
        (str(root / "b"), "unreadable: cannot list this folder: Permission denied")]


# -- 6. writes racing a concurrent indexer ---------------------------------------------------------
def test_predictions_and_labels_skip_images_an_indexer_removed_meanwhile(tmp_path, tiny_index, monkeypatch):
    from vecsearch import classifiers

    write_digits(tmp_path / "digits", per_class=4, classes=[0, 1])
    tiny_index.teach(tmp_path / "digits")
    for i in range(3):
        make_image(tmp_path / "new" / f"n{i}.png", 100 + i)
    tiny_index.add([tmp_path / "new"])
    gone = tiny_index.store.image_by_path(str(tmp_path / "new" / "n1.png")).id
    real_predict = classifiers.predict

    def predict_while_an_indexer_deletes(clf, X, dim=None):
        out = real_predict(clf, X, dim)
        tiny_index.store.apply(deletes=[gone])  # what a concurrent `vecsearch index` does
        return out

    monkeypatch.setattr(classifiers, "predict", predict_while_an_indexer_deletes)
    result = tiny_index.train_classifier("knn", k=3)
    assert result.skipped == 1 and len(result.predictions) == 2
    assert gone not in {i for i, *_ in tiny_index.store.predictions("knn")}
    assert tiny_index.store.set_user_labels([(gone, "x", None, "csv")]) == 0


# -- 7. faults of the disk and the files: one line each, never a traceback --------------------------
@pytest.fixture
def built(photos, index_dir):
    run("index", photos, "--index", index_dir, *TINY, "--quiet")
    return photos, index_dir


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_a_damaged_database_is_one_line(built, damage):
    _, index_dir = built
    db = index_dir / "index.db"
    for extra in ("index.db-wal", "index.db-shm"):
        (index_dir / extra).unlink(missing_ok=True)
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3] if damage == "truncated" else os.urandom(len(data)))
    for args in (["stats"], ["query", built[0] / "a" / "img01.jpg"]):
        _one_line_error(run(*args, "--index", index_dir, ok=False), "damaged", "backup")


def test_files_of_the_index_that_are_folders_are_one_line(built):
    photos, index_dir = built
    (index_dir / "vectors.faiss").unlink(missing_ok=True)
    (index_dir / "vectors.faiss").mkdir()
    _one_line_error(run("stats", "--index", index_dir, ok=False), "vectors.faiss", "move it away")
    (index_dir / "vectors.faiss").rmdir()
    (index_dir / "write.lock").unlink(missing_ok=True)
    (index_dir / "write.lock").mkdir()
    _one_line_error(run("index", photos, "--index", index_dir, ok=False), "write.lock", "move it away")


def test_index_pointing_at_a_file_and_export_into_a_missing_folder_are_one_line(built, tmp_path):
    photos, index_dir = built
    a_file = photos / "a" / "img01.jpg"
    _one_line_error(run("stats", "--index", a_file, ok=False), "is a file")
    _one_line_error(run("index", photos, "--index", a_file, ok=False), "is a file")
    _one_line_error(run("export", tmp_path / "missing" / "v.npz", "--index", index_dir, ok=False), "does not exist")


def test_a_csv_that_is_not_utf8_is_one_line(built, tmp_path):
    photos, index_dir = built
    csv = tmp_path / "labels.csv"
    csv.write_bytes(f"{photos / 'a' / 'img01.jpg'},ch\xe4t\n".encode("latin-1"))
    _one_line_error(run("teach", csv, "--index", index_dir, ok=False), "not UTF-8", "line 1")


def _sqlite_full(*args, **kwargs):
    import sqlite3

    from sqlalchemy.exc import OperationalError

    raise OperationalError("INSERT INTO images ...", {}, sqlite3.OperationalError("database or disk is full"))


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "/full/disk/file")


def _faiss_no_space(*args, **kwargs):
    raise RuntimeError("Error in faiss::FileIOWriter::FileIOWriter(const char*) at /project/faiss/impl/io.cpp:98: "
                       "Error: 'f' failed: could not open /full/vectors.faiss for writing: No space left on device")


@pytest.mark.parametrize("where", ["database commit", "vector file", "search structure", "classifier file", "export"])
def test_a_full_disk_is_one_line_at_every_write(built, tmp_path, monkeypatch, where):
    from vecsearch import files, store
    from vecsearch.search import structure

    photos, index_dir = built
    make_image(photos / "c" / "new.png", 77)
    if where == "database commit":
        monkeypatch.setattr(store.Store, "apply", _sqlite_full)
        args = ["index", photos, "--index", index_dir, "--quiet"]
    elif where == "vector file":
        from vecsearch.store import shards

        monkeypatch.setattr(shards.Shards, "write", _no_space)
        args = ["index", photos, "--index", index_dir, "--quiet"]
    elif where == "search structure":
        run("reindex", "--index", index_dir, "--index-type", "hnsw", "--quiet")
        monkeypatch.setattr(structure.FaissIndex, "save", _faiss_no_space)
        args = ["index", photos, "--index", index_dir, "--quiet"]
    elif where == "classifier file":
        write_digits(tmp_path / "digits", per_class=3, classes=[0, 1])
        run("teach", tmp_path / "digits", "--index", index_dir, "--quiet")
        monkeypatch.setattr(files.os, "replace", _no_space)
        args = ["classify", "--knn", "--index", index_dir]
    else:
        from vecsearch import vector_files

        monkeypatch.setattr(vector_files, "_write_npz", _no_space)
        args = ["export", tmp_path / "v.npz", "--index", index_dir]
    _one_line_error(run(*args, ok=False), "free some space")


def _read_only_runner(folder: Path):
    """A prefix for commands that see `folder` read-only: a read-only bind mount in a private
    mount namespace when root (root ignores permissions), else the folder's permissions."""
    if os.geteuid() != 0:
        for p in [folder, *folder.rglob("*")]:
            os.chmod(p, 0o555 if p.is_dir() else 0o444)
        return []
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("root without mount namespaces: cannot make a folder read-only for root")
    return ["unshare", "-m", "sh", "-c", 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && shift && exec "$@"',
            str(folder), "sh"]


def test_read_only_commands_work_on_a_read_only_index(tmp_path):
    photos = tmp_path / "photos"
    for i in range(4):
        make_image(photos / f"img{i}.png", i)
    with open_index(tmp_path / "ix", backbone="tiny", weights=None, seed=7) as ix:
        ix.add([photos])
    before = sorted(os.listdir(tmp_path / "ix"))
    prefix = _read_only_runner(tmp_path / "ix")
    code = "import sys; sys.path.insert(0, %r); import tiny_backbone; from vecsearch.cli import app; app(sys.argv[1:])" % str(TESTS)

    def cli(*args):
        return subprocess.run([*prefix, sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                              timeout=300)

    try:
        stats = cli("stats", "--index", tmp_path / "ix", "--json")
        assert stats.returncode == 0 and '"vectors": 4' in stats.stdout, stats.stderr
        query = cli("query", photos / "img1.png", "--index", tmp_path / "ix", "--k", "2")
        assert query.returncode == 0 and "img" in query.stdout, query.stderr
        denied = cli("index", photos, "--index", tmp_path / "ix")
        assert denied.returncode == 1 and "Traceback" not in denied.stderr and "read-only" in denied.stderr, denied.stderr
        assert sorted(os.listdir(tmp_path / "ix")) == before  # nothing written, not even SQLite's WAL files
    finally:
        for p in [tmp_path / "ix", *(tmp_path / "ix").rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)


# -- 8. terminal injection -------------------------------------------------------------------------
def test_control_characters_in_labels_and_file_names_are_escaped(tmp_path, index_dir):
    evil_name = "x\x1b]0;pwned\x07\x1b[2J.png"
    photos = tmp_path / "p"
    for i in range(3):
        make_image(photos / f"img{i}.png", i)
    make_image(photos / evil_name, 9)
    csv = tmp_path / "labels.csv"
    csv.write_text(f"img0.png,\x1b[31mred\x1b[0m\nimg1.png,plain\nimg2.png,plain\n{evil_name},plain\n", encoding="utf-8")
    (tmp_path / "img0.png").write_bytes((photos / "img0.png").read_bytes())
    for name in ("img1.png", "img2.png", evil_name):
        (tmp_path / name).write_bytes((photos / name).read_bytes())
    outputs = [run("teach", csv, "--index", index_dir, *TINY, "--quiet").output]
    run("index", photos, "--index", index_dir, "--quiet")
    outputs.append(run("query", photos / "img0.png", "--index", index_dir).output)
    outputs.append(run("stats", "--index", index_dir).output)
    for out in outputs:
        assert "\x1b" not in out and "\x07" not in out, out
    assert "\\x1b[31mred" in outputs[0]
    assert "x\\x1b]0;pwned\\x07\\x1b[2J.png" in outputs[1]
