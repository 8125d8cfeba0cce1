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
import math
import os
import struct
import sys
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from . import config
from .backbones import DEFAULT_PRECISION
from .errors import BadVectorFileError, IndexMismatchError, InputNotFoundError, VecsearchError
from .extras import require_extra
from .vectors import normalize

if TYPE_CHECKING:  # the store (SQLAlchemy) is only passed in; `embed` writes shards without it
    from .store import Store

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
def write(
    path: str | os.PathLike,
    meta: dict,
    dim: int,
    batches: Iterator[tuple[np.ndarray, list, np.ndarray, np.ndarray, dict]],
    total: int,
) -> int:
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


NPZ_FACTS = {"size": "<i8", "mtime_ns": "<i8", "sha256": "<U64", "width": "<i4", "height": "<i4"}
"""The file facts as .npz arrays, one value a row. NumPy arrays hold no None: an unknown fact
is written as 0 ("" for sha256), which is also what the index stores for an unknown size."""


def _write_npz(path: Path, meta: dict, dim: int, batches, total: int) -> int:
    """The arrays np.load gives back (`ids`, `paths`, `vectors`, `norms`, the FACT_COLUMNS, `meta`),
    the big one streamed."""
    from numpy.lib import format as npformat

    ids_all, paths_all, norms_all = [], [], []
    facts_all: dict[str, list] = {c: [] for c in FACT_COLUMNS}
    n = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        with z.open("vectors.npy", "w", force_zip64=True) as f:
            npformat.write_array_header_2_0(f, {"descr": "<f4", "fortran_order": False, "shape": (total, dim)})
            for ids, paths, vecs, norms, facts in batches:
                f.write(np.ascontiguousarray(vecs, "<f4").tobytes())
                ids_all.append(np.asarray(ids, np.int64))
                paths_all.extend(paths)
                norms_all.append(np.asarray(norms, np.float32))
                for c in FACT_COLUMNS:
                    facts_all[c].extend(facts.get(c) or [None] * len(ids))
                n += len(ids)
        if n != total:
            raise VecsearchError(f"The index changed during the export ({n} vectors read, {total} expected); export again.")
        arrays = {
            "ids": np.concatenate(ids_all) if ids_all else np.zeros(0, np.int64),
            "paths": np.array(paths_all, dtype=str),
            "norms": np.concatenate(norms_all) if norms_all else np.zeros(0, np.float32),
        }
        for c, dtype in NPZ_FACTS.items():
            unknown = "" if c == "sha256" else 0
            arrays[c] = np.array([unknown if v is None else v for v in facts_all[c]], dtype=dtype)
        arrays["meta"] = np.array(json.dumps(meta))
        for name, arr in arrays.items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                npformat.write_array(f, arr, allow_pickle=False)
    return n


def _row_fields(pa, dim: int) -> list:
    """The Parquet columns an export and an `embed` shard share: the file, its vector and norm, its facts."""
    return [
        ("path", pa.string()),
        ("vector", pa.list_(pa.float32(), dim)),
        ("norm", pa.float32()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]


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
                "id": pa.array(np.asarray(ids, np.int64)),
                "path": pa.array(paths, pa.string()),
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
    columns = {
        "path": pa.array([r["path"] for r in rows], pa.string()),
        "vector": vector,
        "norm": pa.array(norms, pa.float32(), mask=np.isnan(norms)),
    }
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
    """One vector file: its metadata, dimension and row count, then its rows in batches.

    Everything a batch will hold is checked first, from the file's own headers (the `.npy`
    headers of an `.npz`, the schema and row-group sizes of a Parquet file), against the
    caps in `config` (MAX_IMPORT_*): a hostile or broken file is refused with one
    BadVectorFileError before it costs memory, and no pickled object is ever loaded.
    """

    meta: dict  # read by _open_npz or _open_parquet, then checked

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.suffix = check_suffix(self.path)
        try:
            if self.suffix == ".npz":
                self._open_npz()
            else:
                self._open_parquet()
        except BadVectorFileError:
            raise
        except _read_errors() as e:
            raise BadVectorFileError(f"{self.path} is not a vector file vecsearch can read ({_reason(e)}).") from e
        self.meta = _checked_meta(self.meta, self.path)
        if not 1 <= self.dim <= config.MAX_IMPORT_DIM:
            raise self._bad(f"its vectors are {self.dim}-d; vecsearch takes 1 to {config.MAX_IMPORT_DIM}")

    def _bad(self, what: str) -> BadVectorFileError:
        return BadVectorFileError(f"{self.path} cannot be imported: {what}.")

    # npz: every array is read in row batches straight from its zip member, never whole.
    def _open_npz(self) -> None:
        self._zip = zipfile.ZipFile(self.path)
        names = set(self._zip.namelist())
        if "vectors.npy" not in names or "paths.npy" not in names:
            raise KeyError("it needs arrays `paths` and `vectors`")
        with self._member("vectors") as vectors:
            if len(vectors.shape) != 2:
                raise self._bad(f"`vectors` must be a 2-D array (one row a vector), not of shape {vectors.shape}")
            self._numbers(vectors)
            self.rows, self.dim = vectors.shape
        # The other arrays' headers are checked now too, so a file fails before anything is written.
        for name in self._npz_columns():
            with self._member(name):
                pass
        self.meta = {}
        if "meta.npy" in names:
            with self._member("meta") as m:
                if m.shape not in ((), (1,)) or m.dtype.kind not in "US" or m.nbytes > config.MAX_IMPORT_META_BYTES:
                    raise self._bad(
                        f"`meta` must be one JSON string of at most {config.MAX_IMPORT_META_BYTES} "
                        f"bytes, not {m.dtype.str} of shape {m.shape}"
                    )
                text = _text(m.read(m.shape[0] if m.shape else None).reshape(-1)[0], self, "meta")
            try:
                self.meta = json.loads(text)
            except (ValueError, RecursionError) as e:
                raise self._bad(f"`meta` is not JSON ({_reason(e)})") from e

    def _npz_columns(self) -> list[str]:
        """The per-row arrays an import reads besides `vectors`: paths, norms, file facts."""
        names = set(self._zip.namelist())
        return ["paths", *(c for c in ("norms", *FACT_COLUMNS) if f"{c}.npy" in names)]

    def _member(self, name: str) -> _NpyMember:
        """The array `name`, its header checked against the caps and the member's real size."""
        m = _NpyMember(self._zip, f"{name}.npy", self.path)
        try:
            if name == "vectors":
                return m
            if name == "meta":
                return m
            if len(m.shape) != 1 or m.shape[0] != self.rows:
                raise self._bad(f"`{name}` must hold one value per vector ({self.rows}), not shape {m.shape}")
            if name == "paths":
                self._strings(m, "paths", config.MAX_IMPORT_PATH_CHARS)
            elif name == "sha256":
                self._strings(m, name, 64)
            elif name == "norms":
                self._numbers(m)
            elif m.dtype.kind not in "iu":
                raise self._bad(f"`{name}` must be integers, not {m.dtype.str}")
            return m
        except BaseException:
            m.close()
            raise

    def _strings(self, m: _NpyMember, name: str, cap: int) -> None:
        if m.dtype.kind not in "US":
            raise self._bad(f"`{name}` must be an array of strings, not {_describe(m.dtype)}")
        chars = m.dtype.itemsize // (4 if m.dtype.kind == "U" else 1)
        if chars > cap:
            raise self._bad(
                f"`{name}` holds strings of up to {chars} characters; at most {cap} are accepted "
                "(config.MAX_IMPORT_PATH_CHARS for paths)"
            )

    def _numbers(self, m: _NpyMember) -> None:
        if m.dtype.kind not in "fiu" or m.dtype.itemsize > 8:
            raise self._bad(f"`{m.name[:-4]}` must be an array of numbers, not {_describe(m.dtype)}")

    def _open_parquet(self) -> None:
        pa = _pyarrow()
        import pyarrow.parquet as pq

        self._pq = pq.ParquetFile(self.path)
        schema = self._pq.schema_arrow
        if "path" not in schema.names or "vector" not in schema.names:
            raise KeyError("it needs columns `path` and `vector`")
        kinds = {
            "path": _is_text,
            "norm": _is_number,
            "sha256": _is_text,
            "reason": _is_text,
            **{c: pa.types.is_integer for c in ("size", "mtime_ns", "width", "height")},
        }
        for name, ok in kinds.items():
            if name in schema.names and not ok(schema.field(name).type):
                raise self._bad(f"column `{name}` is {schema.field(name).type}, which vecsearch does not read as {name}")
        vtype = schema.field("vector").type
        if not (pa.types.is_list(vtype) or pa.types.is_large_list(vtype) or pa.types.is_fixed_size_list(vtype)) or not _is_number(
            vtype.value_type
        ):
            raise self._bad(f"column `vector` is {vtype}, not a list of numbers")
        meta = self._pq.metadata
        for i in range(meta.num_row_groups):
            size = meta.row_group(i).total_byte_size
            if size > config.MAX_IMPORT_ROW_GROUP_BYTES:
                raise self._bad(
                    f"its row group {i} holds {size} bytes uncompressed, over the cap of "
                    f"{config.MAX_IMPORT_ROW_GROUP_BYTES} (config.MAX_IMPORT_ROW_GROUP_BYTES); rewrite "
                    "it with smaller row groups (row_group_size= of pyarrow's writer)"
                )
        self.dim = getattr(vtype, "list_size", None) or 0
        if not self.dim:  # a variable-size list: read the first row to learn the width
            first = next(self._pq.iter_batches(batch_size=1, columns=["vector"]), None)
            value = first.column(0)[0] if first is not None and first.num_rows else None
            self.dim = len(value) if value is not None and value.is_valid else 0
        self.rows = meta.num_rows
        raw = (schema.metadata or {}).get(META_KEY.encode())
        if raw is not None and len(raw) > config.MAX_IMPORT_META_BYTES:
            raise self._bad(f"its `{META_KEY}` metadata is {len(raw)} bytes, over {config.MAX_IMPORT_META_BYTES}")
        try:
            self.meta = json.loads(raw) if raw else {}
        except (ValueError, RecursionError) as e:
            raise self._bad(f"its `{META_KEY}` metadata is not JSON ({_reason(e)})") from e

    def batches(self, size: int = BATCH) -> Iterator[Batch]:
        """The rows in batches; a file that turns out broken part-way raises BadVectorFileError."""
        try:
            if self.suffix == ".npz":
                yield from self._npz_batches(size)
            else:
                yield from self._parquet_batches(size)
        except BadVectorFileError:
            raise
        except _read_errors() as e:
            raise BadVectorFileError(f"{self.path} could not be read to the end ({_reason(e)}).") from e

    def _npz_batches(self, size: int) -> Iterator[Batch]:
        from contextlib import ExitStack

        with ExitStack() as stack:
            vectors = stack.enter_context(self._member("vectors"))
            columns = {name: stack.enter_context(self._member(name)) for name in self._npz_columns()}
            row_bytes = vectors.row_bytes + sum(m.row_bytes for m in columns.values())
            size = max(1, min(size, config.MAX_IMPORT_BATCH_BYTES // max(1, row_bytes)))
            for start in range(0, self.rows, size):
                n = min(size, self.rows - start)
                vecs = vectors.read(n)
                paths = [_text(p, self, "paths") for p in columns["paths"].read(n).tolist()]
                _check_paths(paths, self)
                norms = None
                if "norms" in columns:
                    norms = _checked_norms(columns["norms"].read(n), self)
                facts: dict[str, list] = {}
                for c in FACT_COLUMNS:
                    if c in columns:
                        values = columns[c].read(n).tolist()
                        if c == "sha256":
                            facts[c] = [_text(v, self, c) or None for v in values]
                        else:  # 0 is how an .npz says "unknown" (NPZ_FACTS)
                            facts[c] = [int(v) if v else None for v in values]
                yield Batch(paths, np.asarray(vecs, np.float32), norms, facts)

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
                _check_paths([f["path"] for f in failed], self)
                rb = rb.filter(pc.is_null(reason))
            vcol = rb.column(rb.schema.get_field_index("vector"))
            if vcol.null_count:
                raise self._bad("a row has no vector (and no failure `reason`)")
            flat = vcol.flatten() if hasattr(vcol, "flatten") else vcol.values
            vecs = np.asarray(flat.to_numpy(zero_copy_only=False), np.float32)
            if vecs.size != rb.num_rows * self.dim:
                raise BadVectorFileError(f"{self.path}: vectors of unequal length (expected {self.dim} each).")
            vecs = vecs.reshape(rb.num_rows, self.dim)
            norms = None
            if "norm" in columns:
                raw = rb.column(rb.schema.get_field_index("norm")).to_numpy(zero_copy_only=False)
                norms = _checked_norms(np.asarray(raw, np.float64), self)
            facts = {c: rb.column(rb.schema.get_field_index(c)).to_pylist() for c in FACT_COLUMNS if c in columns}
            paths = rb.column(rb.schema.get_field_index("path")).to_pylist()
            _check_paths(paths, self)
            yield Batch(paths, vecs, norms, facts, failed)


class _NpyMember:
    """One `.npy` member of an `.npz`: its header read and checked, its rows read in order.

    The header's claim (shape x itemsize) must fit in the member's size the zip directory
    records, so a forged header cannot make a read allocate more than the file holds.
    """

    def __init__(self, zf: zipfile.ZipFile, name: str, where: Path):
        from numpy.lib import format as npformat

        self.name, self.where = name, where
        info = zf.getinfo(name)
        self._f = zf.open(info)
        try:
            version = npformat.read_magic(self._f)
            if version == (1, 0):
                shape, fortran, dtype = npformat.read_array_header_1_0(self._f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = npformat.read_array_header_2_0(self._f)
            else:
                raise ValueError(f"`{name[:-4]}` has an .npy format version {version} vecsearch does not read")
            self.shape, self.dtype = tuple(int(d) for d in shape), np.dtype(dtype)
            if self.dtype.hasobject or self.dtype.kind == "V":
                raise BadVectorFileError(
                    f"{where} cannot be imported: `{name[:-4]}` is an array of "
                    f"{_describe(self.dtype)}; vecsearch loads no pickled objects."
                )
            if fortran and len(self.shape) > 1:
                raise BadVectorFileError(
                    f"{where} cannot be imported: `{name[:-4]}` is in Fortran order; write it C-ordered (np.ascontiguousarray)."
                )
            self.row_bytes = self.dtype.itemsize * math.prod(self.shape[1:])
            self.nbytes = self.dtype.itemsize * math.prod(self.shape)
            held = info.file_size - self._f.tell()
            if self.nbytes > held:
                raise BadVectorFileError(
                    f"{where} cannot be imported: `{name[:-4]}` claims {self.nbytes} bytes ({_describe(self.dtype)}, "
                    f"shape {self.shape}) but holds {held}: the file is truncated or its header is wrong."
                )
        except BaseException:
            self._f.close()
            raise

    def read(self, n: int | None) -> np.ndarray:
        """The next n rows (n None: the one value of a 0-d array)."""
        want = self.dtype.itemsize if n is None else n * self.row_bytes
        buf = self._f.read(want)
        if len(buf) != want:
            raise BadVectorFileError(f"{self.where} is truncated (`{self.name[:-4]}` ends early).")
        arr = np.frombuffer(buf, self.dtype)
        return arr if n is None else arr.reshape((n, *self.shape[1:]))

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> _NpyMember:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_META_TYPES = {
    "backbone": str,
    "weights_kind": str,
    "weights_path": str,
    "weights_fingerprint": str,
    "metric": str,
    "precision": str,
    "vecsearch": str,
    "dim": int,
    "weights_seed": int,
}


def _checked_meta(meta, where: Path) -> dict:
    """The model metadata, if it is a JSON object whose known fields have the types vecsearch writes."""
    if not isinstance(meta, dict):
        raise BadVectorFileError(
            f"{where} cannot be imported: its model metadata must be a JSON object, not a {type(meta).__name__}."
        )
    for key, kind in _META_TYPES.items():
        value = meta.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise BadVectorFileError(
                f"{where} cannot be imported: its model metadata field `{key}` must be "
                f"{'an integer' if kind is int else 'a string'}, not {json.dumps(value)[:40]}."
            )
    return meta


def _check_paths(paths: list, reader: Reader) -> None:
    for p in paths:
        if not isinstance(p, str) or not p or "\x00" in p:
            raise reader._bad(f"a path is {'empty' if p in ('', None) else repr(p)[:60]}; every row needs a file path")
        if len(p) > config.MAX_IMPORT_PATH_CHARS:
            raise reader._bad(
                f"a path is {len(p)} characters long, over the cap of {config.MAX_IMPORT_PATH_CHARS} "
                f"(config.MAX_IMPORT_PATH_CHARS): {p[:60]}..."
            )


def _checked_norms(raw: np.ndarray, reader: Reader) -> np.ndarray:
    """Norms as float32, NaN where unknown; any other value must be a positive, finite length."""
    norms = np.asarray(raw, np.float64)
    known = norms[~np.isnan(norms)]
    if not (np.isfinite(known) & (known > 0)).all():
        raise reader._bad("`norms` holds values that are no vector length (zero, negative or infinite)")
    return norms.astype(np.float32)


def _text(value, reader: Reader, name: str) -> str:
    """A string of a U or S array (bytes must be UTF-8)."""
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise reader._bad(f"`{name}` holds bytes that are not UTF-8 text") from e
    return str(value)


def _describe(dtype: np.dtype) -> str:
    if dtype.hasobject:
        return "Python objects (pickled)"
    return {
        "U": "strings",
        "S": "bytes",
        "V": "records",
        "b": "booleans",
        "c": "complex numbers",
        "M": "dates",
        "m": "time spans",
    }.get(dtype.kind, "numbers") + f" ({dtype.str})"


def _is_number(t) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _is_text(t) -> bool:
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _read_errors() -> tuple[type[BaseException], ...]:
    """What reading a broken file raises: I/O, zip, zlib, NumPy header and pyarrow errors."""
    errors: tuple[type[BaseException], ...] = (
        OSError,
        ValueError,
        KeyError,
        EOFError,
        zipfile.BadZipFile,
        zlib.error,
        struct.error,
        NotImplementedError,
    )  # zip: unknown method
    pyarrow = sys.modules.get("pyarrow")  # not loaded: nothing can have raised its errors
    if pyarrow is not None:
        errors += (pyarrow.ArrowException,)
    return errors


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# -- an index's vectors out and in -----------------------------------------------------------
def export_index(store: Store, out: str | os.PathLike, meta: dict, progress: Callable[[int, int], None] | None = None) -> int:
    """Write every vector of `store` with its path, norm, file facts and `meta` (the model) to `out`.

    The suffix decides the format. Streams in batches; an image deleted meanwhile is left out.
    """
    out = Path(out).expanduser()
    if not out.parent.is_dir():
        raise InputNotFoundError(f"Cannot write {out}: the folder {out.parent} does not exist; create it first.")
    if out.is_dir():
        raise VecsearchError(f"Cannot write {out}: it is a folder; give a file name such as {out / 'vectors.npz'}.")
    check_suffix(out)
    total = store.counts()["vectors"]

    def batches() -> Iterator[tuple[np.ndarray, list, np.ndarray, np.ndarray, dict]]:
        done = 0
        for ids, mat, norms in store.iter_vectors(chunk=BATCH):
            recs = store.images(ids)
            keep = [j for j, i in enumerate(ids) if int(i) in recs]  # one deleted meanwhile is left out
            rows = [recs[int(ids[j])] for j in keep]
            facts = {c: [getattr(r, c) for r in rows] for c in FACT_COLUMNS}
            yield ids[keep], [r.path for r in rows], mat[keep], norms[keep], facts
            done += len(ids)
            if progress:
                progress(done, total)

    return write(out, meta, int(meta["dim"]), batches(), total)


@dataclass
class CheckedImport:
    """Vector files checked against an index before anything is written (`check_import`)."""

    readers: list[Reader]
    model: dict  # the index's model, or the first file's for an empty index
    precisions: set[str]  # the precisions the files that name a model were embedded in
    rows: int


def check_import(source: str | os.PathLike, model: dict | None, unchecked: bool, where: Path) -> CheckedImport:
    """Open the vector files `source` names and check each against `model` (None: an empty index).

    Every file is checked before anything is written; what `check_precision` needs to say
    about another precision is left to the caller, which holds the model.
    """
    readers = [Reader(f) for f in files_in(source)]
    empty = model is None
    for r in readers:
        model = check_vector_file(r, model, unchecked, where)
    assert model is not None  # files_in finds at least one file
    precisions = {r.meta.get("precision") or DEFAULT_PRECISION for r in readers if r.meta.get("weights_fingerprint")}
    if empty and len(precisions) > 1:
        raise VecsearchError(
            f"These files hold vectors of {' and '.join(sorted(precisions))} precision; import one "
            "precision first, then the other (it is checked against the stored vectors)."
        )
    return CheckedImport(readers, model, precisions, sum(r.rows for r in readers))


def import_files(
    store: Store, checked: CheckedImport, *, create: bool, progress: Callable[[int, int], None] | None = None
) -> ImportSummary:
    """Add the checked files' vectors to `store` in one transaction; the caller holds the writer lock.

    `create`: the index is empty, so its info is made from the files' model in the same
    transaction, and a failed first import leaves it empty.
    """
    summary = ImportSummary(files=[str(r.path) for r in checked.readers])
    if progress:
        progress(0, checked.rows)
    # One transaction: a file that fails part-way (a repeated path, a bad row) leaves the index as it was.
    with store.importing(_index_info(checked.model) if create else None) as importer:
        for r in checked.readers:
            for batch in r.batches():
                vecs, lengths = unit_rows(batch, r.path)
                rows = [
                    {"path": path, **{c: (batch.facts[c][j] if c in batch.facts else None) for c in FACT_COLUMNS}}
                    for j, path in enumerate(batch.paths)
                ]
                for row in rows:
                    row["size"] = row["size"] or 0
                    row["mtime_ns"] = row["mtime_ns"] or 0
                _, replaced = importer.add(rows, vecs, lengths, str(r.path))
                summary.imported += len(rows)
                summary.replaced += replaced
                if batch.failed:  # `embed` shards: a file that failed is a failed row, as indexing makes it
                    importer.add_failed([failed_row(f) for f in batch.failed], str(r.path))
                    summary.failed += len(batch.failed)
                if progress:
                    progress(summary.imported + summary.failed, checked.rows)
    return summary


def _index_info(model: dict) -> dict:
    """The index info an empty index takes from the model its first imported file names."""
    return {
        "backbone": model["backbone"],
        "weights_kind": model.get("weights_kind") or "file",
        "weights_seed": model.get("weights_seed"),
        "weights_path": model.get("weights_path"),
        "weights_fingerprint": model["weights_fingerprint"],
        "dim": int(model["dim"]),
        "metric": "cosine",
        # Flat until a structure is built: a type is recorded only once its structure exists.
        "index_type": "flat",
        "max_memory": None,
        "precision": model.get("precision") or DEFAULT_PRECISION,
    }


def check_vector_file(reader: Reader, model: dict | None, unchecked: bool, where: Path) -> dict:
    """The model the file's vectors come from, if the index can take them; else VecsearchError."""
    meta = reader.meta
    if model is None:
        if not meta.get("weights_fingerprint") or not meta.get("backbone"):
            raise VecsearchError(
                f"{reader.path} names no model (backbone and weights fingerprint), so an empty index "
                "cannot take its model from it. Index a few images first, or import a vecsearch export."
            )
        return {**meta, "dim": reader.dim}
    if reader.dim != int(model["dim"]):
        raise IndexMismatchError(f"{reader.path} holds {reader.dim}-d vectors; the index at {where} holds {model['dim']}-d.")
    got = meta.get("weights_fingerprint")
    if got is None and not unchecked:
        raise IndexMismatchError(
            f"{reader.path} names no model, so its vectors may come from another one than the "
            f"index's ({model['backbone']}). Import it unchecked if you know they match.",
            option="unchecked",
        )
    if got is not None and got != model["weights_fingerprint"]:
        raise IndexMismatchError(
            f"{reader.path} holds vectors of another model ({meta.get('backbone')}, weights fingerprint "
            f"{got[:12]}...) than the index at {where} ({model['backbone']}, {model['weights_fingerprint'][:12]}...); "
            "they cannot be compared. Import into an index of that model."
        )
    return model


def failed_row(f: dict) -> dict:
    """The image row of a file a shard records as failed (no vector)."""
    return {
        "path": f["path"],
        "size": f.get("size") or 0,
        "mtime_ns": f.get("mtime_ns") or 0,
        "sha256": f.get("sha256"),
        "width": f.get("width"),
        "height": f.get("height"),
        "status": "failed",
        "reason": f["reason"],
    }


def unit_rows(batch: Batch, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(unit vectors, norms) of a batch: raw features are normalised, their length kept as the norm."""
    vecs = np.ascontiguousarray(batch.vectors, np.float32)
    if not np.isfinite(vecs).all():
        raise VecsearchError(f"{path} holds NaN or infinite vectors.")
    lengths = np.sqrt(np.einsum("ij,ij->i", vecs, vecs))
    if (lengths == 0).any():
        raise VecsearchError(f"{path} holds all-zero vectors, which have no direction to compare.")
    norms = np.full(len(vecs), np.nan, np.float32) if batch.norms is None else np.asarray(batch.norms, np.float32).copy()
    raw = np.abs(lengths - 1.0) > 1e-3
    if raw.any():  # unit rows are kept bit for bit, so an export imports back unchanged
        norms[raw & np.isnan(norms)] = lengths[raw & np.isnan(norms)]
        vecs = vecs.copy()
        vecs[raw] = normalize(vecs[raw])
    return vecs, norms
