"""Vectors as files: what `export` writes and `import` reads, NumPy `.npz` or Parquet.

Both carry the same columns -- id, path, vector (unit, float32), norm, and the file facts
the indexer uses (size, mtime_ns, sha256, width, height) -- plus the model that made the
vectors (backbone, weights, fingerprint, dim) as metadata, so an index can refuse vectors
of another model. Parquet is the format clip-retrieval and autofaiss exchange embeddings
in (`vector` as a fixed-size list of float32); it needs the `parquet` extra (pyarrow).

Everything streams in batches: exporting or importing a million vectors holds one batch.

The shards `vecsearch embed --out DIR` writes are the same Parquet with one more column,
`reason`: a file that could not be embedded is a row with its reason and no vector, so
`import` records it as failed, as indexing would have.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import InputNotFoundError, VecsearchError
from .extras import require_extra

SUFFIXES = (".npz", ".parquet")
BATCH = 1 << 15
META_KEY = "vecsearch"
FACT_COLUMNS = ("size", "mtime_ns", "sha256", "width", "height")


@dataclass
class Batch:
    """A batch of rows read from a vector file."""

    paths: list[str]
    vectors: np.ndarray  # float32 (n, dim), as stored (unit vectors from vecsearch)
    norms: np.ndarray | None = None  # float32 (n,), NaN where unknown
    facts: dict[str, list] = field(default_factory=dict)  # FACT_COLUMNS present in the file
    failed: list[dict] = field(default_factory=list)  # rows with a `reason` and no vector: path, reason, facts


@dataclass
class ImportSummary:
    files: list[str] = field(default_factory=list)
    imported: int = 0
    replaced: int = 0  # paths that were in the index already (their new vectors replace the old)
    failed: int = 0  # rows that carry a failure reason instead of a vector (from `embed` shards)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _pyarrow():
    require_extra("parquet", needed_for="Parquet")
    import pyarrow

    return pyarrow


def check_parquet() -> None:
    """Raise the install hint now if pyarrow is missing, before any work is done."""
    _pyarrow()


def check_suffix(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise VecsearchError(f"Cannot tell the format of {path}: name it .npz or .parquet.")
    if suffix == ".parquet":
        _pyarrow()
    return suffix


# -- writing ---------------------------------------------------------------------------------
def write(path: str | os.PathLike, meta: dict, dim: int, batches: Iterator[tuple[np.ndarray, list, np.ndarray, np.ndarray, dict]],
          total: int) -> int:
    """Write `total` rows from batches of (ids, paths, vectors, norms, facts); returns the count.

    Written to a temporary name and renamed at the end, so a failed export leaves no file.
    """
    path = Path(path)
    suffix = check_suffix(path)
    if not path.parent.is_dir():
        raise InputNotFoundError(f"No such folder: {path.parent}")
    tmp = path.with_name(f".{path.name}.partial")
    try:
        n = (_write_npz if suffix == ".npz" else _write_parquet)(tmp, meta, dim, batches, total)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


def _write_npz(path: Path, meta: dict, dim: int, batches, total: int) -> int:
    """The arrays np.load gives back (`ids`, `paths`, `vectors`, `norms`, `meta`), the big one streamed."""
    from numpy.lib import format as npformat

    ids_all, paths_all, norms_all = [], [], []
    n = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        with z.open("vectors.npy", "w", force_zip64=True) as f:
            npformat.write_array_header_2_0(f, {"descr": "<f4", "fortran_order": False, "shape": (total, dim)})
            for ids, paths, vecs, norms, _facts in batches:
                f.write(np.ascontiguousarray(vecs, "<f4").tobytes())
                ids_all.append(np.asarray(ids, np.int64))
                paths_all.extend(paths)
                norms_all.append(np.asarray(norms, np.float32))
                n += len(ids)
        if n != total:
            raise VecsearchError(f"The index changed during the export ({n} vectors read, {total} expected); export again.")
        for name, arr in (("ids", np.concatenate(ids_all) if ids_all else np.zeros(0, np.int64)),
                          ("paths", np.array(paths_all, dtype=str)),
                          ("norms", np.concatenate(norms_all) if norms_all else np.zeros(0, np.float32)),
                          ("meta", np.array(json.dumps(meta)))):
            with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                npformat.write_array(f, arr, allow_pickle=False)
    return n


def _row_fields(pa, dim: int) -> list:
    """The Parquet columns an export and an `embed` shard share: the file, its vector and norm, its facts."""
    return [("path", pa.string()), ("vector", pa.list_(pa.float32(), dim)), ("norm", pa.float32()),
            ("size", pa.int64()), ("mtime_ns", pa.int64()), ("sha256", pa.string()), ("width", pa.int32()),
            ("height", pa.int32())]


def _write_parquet(path: Path, meta: dict, dim: int, batches, total: int) -> int:
    pa = _pyarrow()
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.int64()), *_row_fields(pa, dim)], metadata={META_KEY: json.dumps(meta)})
    n = 0
    with pq.ParquetWriter(path, schema) as writer:
        for ids, paths, vecs, norms, facts in batches:
            vecs = np.ascontiguousarray(vecs, np.float32)
            norms = np.asarray(norms, np.float32)
            columns = {
                "id": pa.array(np.asarray(ids, np.int64)), "path": pa.array(paths, pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), dim),
                "norm": pa.array(norms, pa.float32(), mask=np.isnan(norms)),
            }
            for col in FACT_COLUMNS:
                columns[col] = pa.array(facts.get(col, [None] * len(ids)), schema.field(col).type)
            writer.write_table(pa.table(columns, schema=schema))
            n += len(ids)
    return n


def write_shard(path: str | os.PathLike, meta: dict, dim: int, rows: list[dict]) -> int:
    """Write one shard of `embed --out` atomically: rows of path, vector (None if failed), norm,
    FACT_COLUMNS and reason. A crash leaves the whole shard or none (a dot-named temp file)."""
    from .files import atomic_write

    pa = _pyarrow()
    import pyarrow.parquet as pq

    schema = pa.schema([*_row_fields(pa, dim), ("reason", pa.string())], metadata={META_KEY: json.dumps(meta)})
    ok = np.array([r.get("vector") is not None for r in rows], bool)
    vecs = np.zeros((len(rows), dim), np.float32)
    for j, r in enumerate(rows):
        if ok[j]:
            vecs[j] = r["vector"]
    norms = np.array([r.get("norm") if ok[j] else np.nan for j, r in enumerate(rows)], np.float32)
    vector = pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), dim)
    if not ok.all():  # a failed row has no vector: null, not zeros
        import pyarrow.compute as pc

        vector = pc.if_else(pa.array(ok), vector, pa.nulls(len(rows), vector.type))
    columns = {"path": pa.array([r["path"] for r in rows], pa.string()), "vector": vector,
               "norm": pa.array(norms, pa.float32(), mask=np.isnan(norms))}
    for col in (*FACT_COLUMNS, "reason"):
        columns[col] = pa.array([r.get(col) for r in rows], schema.field(col).type)
    table = pa.table(columns, schema=schema)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp), suffix=".tmp")
    return len(rows)


# -- reading ---------------------------------------------------------------------------------
def files_in(source: str | os.PathLike) -> list[Path]:
    """The vector files a FILE or DIR names (a folder: its .npz and .parquet files, sorted, recursively)."""
    p = Path(source).expanduser()
    if p.is_dir():
        found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES and not f.name.startswith("."))
        if not found:
            raise InputNotFoundError(f"No .npz or .parquet files in {p}.")
        return found
    if not p.exists():
        raise InputNotFoundError(f"No such file or folder: {p}")
    check_suffix(p)
    return [p]


class Reader:
    """One vector file: its metadata, dimension and row count, then its rows in batches."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.suffix = check_suffix(self.path)
        try:
            if self.suffix == ".npz":
                self._open_npz()
            else:
                self._open_parquet()
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise VecsearchError(f"{self.path} is not a vector file vecsearch can read ({e}).") from e

    # npz: `vectors` is read in row batches straight from the zip member, never whole.
    def _open_npz(self) -> None:
        from numpy.lib import format as npformat

        self._zip = zipfile.ZipFile(self.path)
        names = set(self._zip.namelist())
        if "vectors.npy" not in names or "paths.npy" not in names:
            raise KeyError("it needs arrays `paths` and `vectors`")
        with self._zip.open("vectors.npy") as f:
            version = npformat.read_magic(f)
            shape, fortran, dtype = _read_header(f, version)
        if len(shape) != 2 or fortran:
            raise ValueError(f"`vectors` must be a C-ordered 2-D array, got shape {shape}")
        self.rows, self.dim, self._dtype = int(shape[0]), int(shape[1]), np.dtype(dtype)
        self.meta = json.loads(str(self._load("meta"))) if "meta.npy" in names else {}

    def _load(self, name: str):
        with self._zip.open(f"{name}.npy") as f:
            return np.lib.format.read_array(f, allow_pickle=False)

    def _open_parquet(self) -> None:
        _pyarrow()
        import pyarrow.parquet as pq

        self._pq = pq.ParquetFile(self.path)
        schema = self._pq.schema_arrow
        if "path" not in schema.names or "vector" not in schema.names:
            raise KeyError("it needs columns `path` and `vector`")
        vtype = schema.field("vector").type
        self.dim = getattr(vtype, "list_size", None) or 0
        if not self.dim:  # a variable-size list: read the first row to learn the width
            first = next(self._pq.iter_batches(batch_size=1, columns=["vector"]), None)
            self.dim = len(first.column(0)[0]) if first is not None and first.num_rows else 0
        self.rows = self._pq.metadata.num_rows
        raw = (schema.metadata or {}).get(META_KEY.encode())
        self.meta = json.loads(raw) if raw else {}

    def batches(self, size: int = BATCH) -> Iterator[Batch]:
        if self.suffix == ".npz":
            yield from self._npz_batches(size)
        else:
            yield from self._parquet_batches(size)

    def _npz_batches(self, size: int) -> Iterator[Batch]:
        from numpy.lib import format as npformat

        paths = [str(p) for p in self._load("paths").tolist()]
        if len(paths) != self.rows:
            raise VecsearchError(f"{self.path}: {len(paths)} paths for {self.rows} vectors.")
        names = set(self._zip.namelist())
        norms = self._load("norms").astype(np.float32) if "norms.npy" in names else None
        with self._zip.open("vectors.npy") as f:
            version = npformat.read_magic(f)
            _read_header(f, version)
            row_bytes = self.dim * self._dtype.itemsize
            for start in range(0, self.rows, size):
                n = min(size, self.rows - start)
                buf = f.read(n * row_bytes)
                if len(buf) != n * row_bytes:
                    raise VecsearchError(f"{self.path} is truncated.")
                vecs = np.frombuffer(buf, self._dtype).reshape(n, self.dim)
                if vecs.dtype != np.float32:
                    vecs = vecs.astype(np.float32)
                yield Batch(paths[start : start + n], vecs, None if norms is None else norms[start : start + n])

    def _parquet_batches(self, size: int) -> Iterator[Batch]:
        names = self._pq.schema_arrow.names
        columns = ["path", "vector"] + [c for c in ("norm", *FACT_COLUMNS, "reason") if c in names]
        for rb in self._pq.iter_batches(batch_size=size, columns=columns):
            failed: list[dict] = []
            if "reason" in columns:  # an `embed` shard: rows with a reason have no vector
                import pyarrow.compute as pc

                reason = rb.column(rb.schema.get_field_index("reason"))
                bad = rb.filter(pc.is_valid(reason))
                failed = bad.select(["path", "reason", *(c for c in FACT_COLUMNS if c in columns)]).to_pylist()
                rb = rb.filter(pc.is_null(reason))
            vcol = rb.column(rb.schema.get_field_index("vector"))
            flat = vcol.flatten() if hasattr(vcol, "flatten") else vcol.values
            vecs = np.asarray(flat.to_numpy(zero_copy_only=False), np.float32)
            if vecs.size != rb.num_rows * self.dim:
                raise VecsearchError(f"{self.path}: vectors of unequal length (expected {self.dim} each).")
            vecs = vecs.reshape(rb.num_rows, self.dim)
            norms = None
            if "norm" in columns:
                norms = np.asarray(rb.column(rb.schema.get_field_index("norm")).to_numpy(zero_copy_only=False), np.float32)
            facts = {c: rb.column(rb.schema.get_field_index(c)).to_pylist() for c in FACT_COLUMNS if c in columns}
            yield Batch(rb.column(rb.schema.get_field_index("path")).to_pylist(), vecs, norms, facts, failed)


def _read_header(f, version):
    from numpy.lib import format as npformat

    if version == (1, 0):
        return npformat.read_array_header_1_0(f)
    return npformat.read_array_header_2_0(f)
