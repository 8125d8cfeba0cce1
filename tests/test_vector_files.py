"""Vector files (`export` / `import`): the file facts they carry, and files that must be refused.

Hostile files are refused with one BadVectorFileError (one `Error:` line in the CLI) from
what their headers say, before they cost memory, and the index is left as it was. Parquet needs the
parquet extra, which is named before anything is written.
"""

from __future__ import annotations

import ast
import json
import os
import struct
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import run, run_json, write_vector_file

from vecsearch import BadVectorFileError, VecsearchError, config, open_index
from vecsearch.extras import install_line
from vecsearch.model import IndexModel

TINY = ["--backbone", "tiny", "--weights", "none", "--seed", "7"]
DIM = 32


@pytest.fixture
def source(photos, tmp_path):
    """An index of the 12 photos, and its vectors by path."""
    run("index", photos, "--index", tmp_path / "src", *TINY, "--quiet")
    with open_index(tmp_path / "src", create=False) as src:
        ids, vecs, _ = src.store.vectors()
        records = src.store.images(ids)
        return {records[int(i)].path: (records[int(i)], v) for i, v in zip(ids, vecs, strict=False)}


# -- 3. an .npz keeps the file facts ------------------------------------------------------------
def test_an_npz_export_keeps_the_file_facts_so_an_import_then_index_embeds_nothing(source, photos, tmp_path, monkeypatch):
    out = tmp_path / "all.npz"
    run("export", out, "--index", tmp_path / "src", "--quiet")
    with np.load(out) as z:
        by_path = dict(zip(z["paths"].tolist(), range(len(z["paths"])), strict=False))
        for path, (rec, _) in source.items():
            j = by_path[path]
            assert (int(z["size"][j]), int(z["mtime_ns"][j]), str(z["sha256"][j])) == (rec.size, rec.mtime_ns, rec.sha256)
            assert (int(z["width"][j]), int(z["height"][j])) == (rec.width, rec.height)
    dst = tmp_path / "dst"
    assert run_json("import", out, "--index", dst)["imported"] == 12

    # A query of an indexed path takes its stored vector: no model runs, and it is left out of its results.
    def no_model(*a, **k):
        raise AssertionError("the model ran for a query of an indexed, unchanged file")

    monkeypatch.setattr(IndexModel, "embed", no_model)
    query = photos / "a" / "img01.jpg"
    hits = run_json("query", query, "--index", dst, "--k", 11)
    assert len(hits) == 11 and str(query.resolve()) not in [h["path"] for h in hits]
    monkeypatch.undo()

    s = run_json("index", photos, "--index", dst)
    assert (s["indexed"], s["unchanged"], s["reused"], s["removed"]) == (0, 12, 0, 0)
    with open_index(dst, create=False) as ix:
        ids, vecs, _ = ix.store.vectors()
        for i, v in zip(ids, vecs, strict=False):
            rec = ix.store.image(int(i))
            np.testing.assert_array_equal(v, source[rec.path][1])
            assert (rec.size, rec.sha256, rec.width) == (
                source[rec.path][0].size,
                source[rec.path][0].sha256,
                source[rec.path][0].width,
            )


def test_an_old_npz_without_file_facts_still_imports_and_the_next_index_run_reconciles_it(source, photos, tmp_path, model_meta):
    paths = sorted(source)
    old = write_vector_file(tmp_path / "old.npz", np.stack([source[p][1] for p in paths]), model_meta, paths=paths)
    with np.load(old) as z:
        assert "sha256" not in z.files
    assert run_json("import", old, "--index", tmp_path / "dst")["imported"] == 12
    # Nothing proves the files are what the vectors were made of: they are read again, once.
    s = run_json("index", photos, "--index", tmp_path / "dst")
    assert (s["indexed"], s["removed"], s["total"]) == (12, 0, 12)
    with open_index(tmp_path / "dst", create=False) as ix:
        assert len(ix) == 12 and all(r.sha256 == source[r.path][0].sha256 for r in ix)
    assert run_json("index", photos, "--index", tmp_path / "dst")["unchanged"] == 12


# -- 11. files checked before they cost memory --------------------------------------------------
def _npy(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _forged_npy(descr: str, shape: tuple, payload: bytes = b"") -> bytes:
    """An .npy whose header claims any shape and dtype, followed by only `payload`."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


def _npz(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(f"{name}.npy", data)
    return path


def _good(model, n=4, **override) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    arrays = {
        "paths": np.array([f"/x/{i}.jpg" for i in range(n)]),
        "vectors": rng.normal(size=(n, DIM)).astype(np.float32),
        "norms": np.full(n, 2.0, np.float32),
        "meta": np.array(json.dumps(model)),
    }
    members = {k: _npy(v) for k, v in arrays.items()}
    members.update({k: v if isinstance(v, bytes) else _npy(v) for k, v in override.items()})
    return members


HOSTILE = {
    "meta as a list": (lambda m: {"meta": np.array(json.dumps([m]))}, "JSON object"),
    "meta pickled": (lambda m: {"meta": np.array([m], dtype=object)}, "pickled"),
    "meta not JSON": (lambda m: {"meta": np.array("{not json")}, "not JSON"),
    "meta with a number for a name": (
        lambda m: {"meta": np.array(json.dumps({**m, "weights_fingerprint": 7}))},
        "weights_fingerprint",
    ),
    "paths pickled": (lambda m: {"paths": np.array(["/x/0.jpg", 1, None, 2.5], dtype=object)}, "pickled"),
    "paths as numbers": (lambda m: {"paths": np.arange(4)}, "array of strings"),
    "paths of another length": (lambda m: {"paths": np.array(["/x/0.jpg", "/x/1.jpg"])}, "one value per vector"),
    "an empty path": (lambda m: {"paths": np.array(["/x/0.jpg", "", "/x/2.jpg", "/x/3.jpg"])}, "empty"),
    "norms of another length": (lambda m: {"norms": np.ones(5, np.float32)}, "one value per vector"),
    "norms as strings": (lambda m: {"norms": np.array(["1", "2", "3", "4"])}, "array of numbers"),
    "negative norms": (lambda m: {"norms": np.array([1, -1, 1, 1], np.float32)}, "no vector length"),
    "vectors as strings": (lambda m: {"vectors": np.full((4, DIM), "a")}, "array of numbers"),
    "vectors complex": (lambda m: {"vectors": np.ones((4, DIM), np.complex64)}, "array of numbers"),
    "vectors 1-D": (lambda m: {"vectors": np.ones(4 * DIM, np.float32)}, "2-D"),
    "vectors in Fortran order": (lambda m: {"vectors": np.asfortranarray(np.ones((4, DIM), np.float32))}, "Fortran"),
    "vectors NaN": (lambda m: {"vectors": np.full((4, DIM), np.nan, np.float32)}, "NaN"),
    "vectors infinite": (lambda m: {"vectors": np.full((4, DIM), np.inf, np.float32)}, "infinite"),
    "vectors all zero": (lambda m: {"vectors": np.zeros((4, DIM), np.float32)}, "all-zero"),
    "vectors of another width": (lambda m: {"vectors": np.ones((4, DIM + 1), np.float32)}, "33-d"),
    "a fact of the wrong kind": (lambda m: {"size": np.array(["a", "b", "c", "d"])}, "integers"),
    "a header cut short": (lambda m: {"vectors": _npy(np.ones((4, DIM), np.float32))[:60]}, "read"),
    "rows cut short": (lambda m: {"vectors": _npy(np.ones((4, DIM), np.float32))[:-10]}, "holds"),
    "a path array of 8 GB": (lambda m: {"paths": _forged_npy("<U500000000", (4,))}, "claims 8000000000 bytes"),
    "8 GB of rows the file does not hold": (
        lambda m: {
            "vectors": _forged_npy("<f4", (2_000_000, DIM)),
            "paths": _forged_npy("<U1000", (2_000_000,)),
            "norms": _forged_npy("<f4", (2_000_000,)),
        },
        "truncated or its header is wrong",
    ),
}


@pytest.fixture
def target(tmp_path, model_meta):
    """An index of 4 imported vectors, and a snapshot of everything in it."""
    ix = open_index(tmp_path / "target")
    ix.import_vectors(
        write_vector_file(
            tmp_path / "base.npz", np.eye(4, DIM, dtype=np.float32), model_meta, paths=[f"/base/{i}.jpg" for i in range(4)]
        )
    )
    yield ix
    ix.close()


def _snapshot(ix):
    ids, vecs, _ = ix.store.vectors()
    return ix.store.records(), ids.tolist(), vecs.tolist(), ix.store.generation(), ix.store.next_slot()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_npz_is_one_clear_error_from_its_headers_and_the_index_is_untouched(case, target, tmp_path, model_meta):
    override, words = HOSTILE[case]
    f = _npz(tmp_path / "bad.npz", _good(model_meta, **override(model_meta)))
    before = _snapshot(target)
    tracemalloc.start()
    try:
        with pytest.raises(VecsearchError, match=words):
            target.import_vectors(f)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"{case}: {peak / 2**20:.0f} MiB allocated before refusing"  # nothing of the claim
    assert _snapshot(target) == before
    # The CLI says it in one line, no traceback.
    r = run("import", f, "--index", tmp_path / "target", ok=False)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert len([line for line in r.output.splitlines() if line.startswith("Error:")]) == 1, r.output


def test_a_hostile_npz_cannot_make_an_empty_index_take_its_model(tmp_path, model_meta):
    f = _npz(tmp_path / "bad.npz", _good(model_meta, norms=np.ones(5, np.float32)))
    with open_index(tmp_path / "fresh") as ix:
        with pytest.raises(BadVectorFileError):
            ix.import_vectors(f)
        assert ix.info is None  # still empty: a good file of any model may come next


def test_paths_longer_than_the_cap_are_refused_from_the_header(target, tmp_path, model_meta, monkeypatch):
    f = write_vector_file(
        tmp_path / "long.npz",
        np.eye(3, DIM, dtype=np.float32),
        model_meta,
        paths=[f"/a/long/folder/name/{i}.jpg" for i in range(3)],
    )
    monkeypatch.setattr(config, "MAX_IMPORT_PATH_CHARS", 16)
    with pytest.raises(BadVectorFileError, match=r"up to 2[0-9] characters; at most 16"):
        target.import_vectors(f)
    monkeypatch.undo()
    assert target.import_vectors(f).imported == 3


@pytest.mark.parametrize("where", ["one batch", "a later batch", "another file"])
def test_a_repeated_path_is_named_and_nothing_is_imported(where, target, tmp_path, model_meta, monkeypatch):
    vecs = np.eye(6, DIM, dtype=np.float32)
    paths = [f"/new/{i}.jpg" for i in range(6)]
    if where == "another file":
        src = tmp_path / "two"
        src.mkdir()
        write_vector_file(src / "a.npz", vecs[:3], model_meta, paths=paths[:3])
        write_vector_file(src / "b.npz", vecs[3:], model_meta, paths=[paths[1], *paths[4:]])
        said = f"/new/1.jpg is in both {src / 'a.npz'} and {src / 'b.npz'}"
    else:
        src = write_vector_file(tmp_path / "rep.npz", vecs, model_meta, paths=[*paths[:5], paths[1]])
        said = f"/new/1.jpg is twice in {src}"
        if where == "a later batch":  # batches of 2 rows: the repeat is 2 commits of the old design later
            monkeypatch.setattr(config, "MAX_IMPORT_BATCH_BYTES", 2 * (DIM * 4 + 4 * 20 + 4))
    before = _snapshot(target)
    with pytest.raises(BadVectorFileError) as e:
        target.import_vectors(src)
    assert said in str(e.value) and "Nothing was imported" in str(e.value)
    assert _snapshot(target) == before
    r = run("import", src, "--index", tmp_path / "target", ok=False)
    assert r.exit_code == 1 and "UNIQUE" not in r.output and "Restore" not in r.output and "/new/1.jpg" in r.output
    # Importing the same file again replaces its paths: that is not a repeat.
    ok = write_vector_file(tmp_path / "ok.npz", vecs[:2], model_meta, paths=["/base/0.jpg", "/new/9.jpg"])
    assert target.import_vectors(ok).replaced == 1 and target.import_vectors(ok).replaced == 2


def test_a_failure_in_the_last_batch_leaves_the_index_as_it_was(target, tmp_path, model_meta, monkeypatch):
    vecs = np.eye(6, DIM, dtype=np.float32)
    vecs[5] = np.nan
    f = write_vector_file(tmp_path / "late.npz", vecs, model_meta, paths=[f"/late/{i}.jpg" for i in range(6)])
    monkeypatch.setattr(config, "MAX_IMPORT_BATCH_BYTES", 2 * (DIM * 4 + 4 * 20 + 4))
    before = _snapshot(target)
    with pytest.raises(VecsearchError, match="NaN"):
        target.import_vectors(f)
    assert _snapshot(target) == before


def test_an_export_imports_back_in_small_batches_bit_for_bit(target, tmp_path, model_meta, monkeypatch):
    vecs = np.random.default_rng(3).normal(size=(7, DIM)).astype(np.float32)
    f = write_vector_file(tmp_path / "seven.npz", vecs, model_meta, paths=[f"/s/{i}.jpg" for i in range(7)])
    monkeypatch.setattr(config, "MAX_IMPORT_BATCH_BYTES", 3 * (DIM * 4 + 4 * 10))
    assert target.import_vectors(f).imported == 7
    _, got, norms = target.store.vectors([target.store.image_by_path(f"/s/{i}.jpg").id for i in range(7)])
    np.testing.assert_allclose(got, vecs / np.linalg.norm(vecs, axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(norms, np.linalg.norm(vecs, axis=1), rtol=1e-5)


# -- Parquet: what its metadata tells before reading ---------------------------------------------
def _parquet(path, meta, *, paths=None, row_group_size=None, **columns):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    n = len(paths) if paths is not None else 4
    vecs = np.random.default_rng(1).normal(size=(n, DIM)).astype(np.float32)
    data = {
        "path": pa.array(paths if paths is not None else [f"/p/{i}.jpg" for i in range(n)]),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), DIM),
    }
    data.update(columns)
    table = pa.table(data).replace_schema_metadata({"vecsearch": json.dumps(meta)})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def test_hostile_parquet_files_are_refused_from_their_metadata(target, tmp_path, model_meta, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    before = _snapshot(target)
    cases = [
        (_parquet(tmp_path / "num-path.parquet", model_meta, paths=[1, 2, 3]), "column `path`"),
        (_parquet(tmp_path / "null-path.parquet", model_meta, paths=["/p/0.jpg", None]), "empty"),
        (_parquet(tmp_path / "str-vec.parquet", model_meta, vector=pa.array([["a"] * DIM] * 4)), "list of numbers"),
        (_parquet(tmp_path / "str-norm.parquet", model_meta, norm=pa.array(["1", "2", "3", "4"])), "column `norm`"),
        (_parquet(tmp_path / "rep.parquet", model_meta, paths=["/p/0.jpg", "/p/1.jpg", "/p/0.jpg"]), "/p/0.jpg is twice"),
        (_parquet(tmp_path / "list-meta.parquet", [model_meta]), "JSON object"),
    ]
    for f, words in cases:
        with pytest.raises(BadVectorFileError, match=words):
            target.import_vectors(f)
    big = _parquet(tmp_path / "groups.parquet", model_meta, paths=[f"/g/{i}.jpg" for i in range(40)], row_group_size=20)
    monkeypatch.setattr(config, "MAX_IMPORT_ROW_GROUP_BYTES", 1000)
    with pytest.raises(BadVectorFileError, match="row group 0 holds .* bytes uncompressed"):
        target.import_vectors(big)
    assert _snapshot(target) == before
    monkeypatch.undo()
    assert target.import_vectors(big).imported == 40


def test_the_caps_are_documented():
    text = (Path(config.__file__).parent.parent / "README.md").read_text()
    for name in ("MAX_IMPORT_PATH_CHARS", "MAX_IMPORT_DIM", "MAX_IMPORT_META_BYTES", "MAX_IMPORT_ROW_GROUP_BYTES"):
        assert name in text, name
        assert ast.literal_eval(str(getattr(config, name))) > 0


# -- the Parquet extra, and the file export writes --------------------------------------------
def test_parquet_without_pyarrow_names_the_extra_and_writes_nothing(indexed_photos, tmp_path, monkeypatch):
    photos, index_dir = indexed_photos
    run("export", tmp_path / "v.npz", "--index", index_dir, "-q")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    r = run("export", tmp_path / "out.parquet", "--index", index_dir, "-q", ok=False)
    assert r.exit_code == 1 and install_line("parquet") in r.output
    (tmp_path / "in.parquet").write_bytes(b"PAR1")
    r = run("import", tmp_path / "in.parquet", "--index", tmp_path / "fresh", "-q", ok=False)
    assert r.exit_code == 1 and install_line("parquet") in r.output
    assert not (tmp_path / "fresh").exists() and not list(tmp_path.glob("out.parquet*"))


def test_export_writes_exactly_the_named_file(indexed_photos, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    photos, index_dir = indexed_photos
    out = tmp_path / "out" / "vectors.parquet"
    out.parent.mkdir()
    reported = run_json("export", out, "--index", index_dir, "-q")
    assert reported == {"exported": 12, "file": str(out)}
    assert sorted(os.listdir(out.parent)) == ["vectors.parquet"]
    data = out.read_bytes()
    assert data[:4] == b"PAR1" and data[-4:] == b"PAR1"
    table = pq.read_table(out)
    assert table.num_rows == 12 and {"path", "vector"} <= set(table.column_names)
    npz = tmp_path / "out" / "vectors.npz"
    assert run_json("export", npz, "--index", index_dir, "-q")["file"] == str(npz)
    assert sorted(os.listdir(out.parent)) == ["vectors.npz", "vectors.parquet"] and len(np.load(npz)["ids"]) == 12
