"""Faults of the disk and of the index's own files: a damaged database, files that are folders,
an index that is a file, a CSV that is not UTF-8, a full disk at every write, a read-only index.
One line each (helpers.one_line_error), never a traceback.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from digits import write_digits
from helpers import TESTS, make_image, one_line_error, run

from vecsearch import open_index


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_a_damaged_database_is_one_line(indexed_photos, damage):
    _, index_dir = indexed_photos
    db = index_dir / "index.db"
    for extra in ("index.db-wal", "index.db-shm"):
        (index_dir / extra).unlink(missing_ok=True)
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3] if damage == "truncated" else os.urandom(len(data)))
    for args in (["stats"], ["query", indexed_photos[0] / "a" / "img01.jpg"]):
        one_line_error(run(*args, "--index", index_dir, ok=False), "damaged", "backup")


def test_files_of_the_index_that_are_folders_are_one_line(indexed_photos):
    photos, index_dir = indexed_photos
    (index_dir / "vectors.faiss").unlink(missing_ok=True)
    (index_dir / "vectors.faiss").mkdir()
    one_line_error(run("stats", "--index", index_dir, ok=False), "vectors.faiss", "move it away")
    (index_dir / "vectors.faiss").rmdir()
    (index_dir / "write.lock").unlink(missing_ok=True)
    (index_dir / "write.lock").mkdir()
    one_line_error(run("index", photos, "--index", index_dir, ok=False), "write.lock", "move it away")


def test_index_pointing_at_a_file_and_export_into_a_missing_folder_are_one_line(indexed_photos, tmp_path):
    photos, index_dir = indexed_photos
    a_file = photos / "a" / "img01.jpg"
    one_line_error(run("stats", "--index", a_file, ok=False), "is a file")
    one_line_error(run("index", photos, "--index", a_file, ok=False), "is a file")
    one_line_error(run("export", tmp_path / "missing" / "v.npz", "--index", index_dir, ok=False), "does not exist")


def test_a_csv_that_is_not_utf8_is_one_line(indexed_photos, tmp_path):
    photos, index_dir = indexed_photos
    csv = tmp_path / "labels.csv"
    csv.write_bytes(f"{photos / 'a' / 'img01.jpg'},ch\xe4t\n".encode("latin-1"))
    one_line_error(run("teach", csv, "--index", index_dir, ok=False), "not UTF-8", "line 1")


# -- a full disk ------------------------------------------------------------------------------
def _sqlite_full(*args, **kwargs):
    import sqlite3

    from sqlalchemy.exc import OperationalError

    raise OperationalError("INSERT INTO images ...", {}, sqlite3.OperationalError("database or disk is full"))


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "/full/disk/file")


def _faiss_no_space(*args, **kwargs):
    raise RuntimeError(
        "Error in faiss::FileIOWriter::FileIOWriter(const char*) at /project/faiss/impl/io.cpp:98: "
        "Error: 'f' failed: could not open /full/vectors.faiss for writing: No space left on device"
    )


@pytest.mark.parametrize("where", ["database commit", "vector file", "search structure", "classifier file", "export"])
def test_a_full_disk_is_one_line_at_every_write(indexed_photos, tmp_path, monkeypatch, where):
    from vecsearch import files, store
    from vecsearch.search import structure

    photos, index_dir = indexed_photos
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
    one_line_error(run(*args, ok=False), "free some space")


# -- a read-only index ------------------------------------------------------------------------
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
    return [
        "unshare",
        "-m",
        "sh",
        "-c",
        'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && shift && exec "$@"',
        str(folder),
        "sh",
    ]


def test_read_only_commands_work_on_a_read_only_index(tmp_path):
    photos = tmp_path / "photos"
    for i in range(4):
        make_image(photos / f"img{i}.png", i)
    with open_index(tmp_path / "ix", backbone="tiny", weights=None, seed=7) as ix:
        ix.add([photos])
    before = sorted(os.listdir(tmp_path / "ix"))
    prefix = _read_only_runner(tmp_path / "ix")
    code = "import sys; sys.path.insert(0, %r); import tiny_backbone; from vecsearch.cli import app; app(sys.argv[1:])" % str(
        TESTS
    )

    def cli(*args):
        return subprocess.run([*prefix, sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)

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
