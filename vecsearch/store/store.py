"""The repository: every query the rest of vecsearch makes, migrations on open, and the vectors.

SQLite holds the images, labels, classifiers and, per vector, its slot in the shard files
(`shards.py`) and its length; the unit vectors themselves are stored once, in the shards.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import zlib
from bisect import bisect_right
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, cast
from urllib.parse import quote

import numpy as np
from sqlalchemy import DateTime, String, and_, create_engine, delete, event, func, insert, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from ..config import DB_NAME
from ..errors import BadVectorFileError, DatabaseDamagedError, IndexCorruptError, IndexNotFoundError, VecsearchError
from . import database
from .models import (
    Base,
    Classifier,
    Image,
    ImagenetLabel,
    IndexInfo,
    KeptVector,
    Prediction,
    Setting,
    UserLabel,
    Vector,
    VectorChunk,
)
from .shards import DIRNAME as SHARDS_DIRNAME
from .shards import Shards

log = logging.getLogger(__name__)

__all__ = ["Store", "ImageRecord", "Importer", "no_annotations"]


_IN_LIMIT = 500  # SQLite caps bound parameters per statement: long id lists go in slices


def _slices(values: Iterable) -> Iterator[list]:
    values = list(values)
    for i in range(0, len(values), _IN_LIMIT):
        yield values[i : i + _IN_LIMIT]


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass(frozen=True)
class ImageRecord:
    id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str | None
    width: int | None
    height: int | None
    status: str
    reason: str | None
    indexed_at: datetime


def _record(row: Image) -> ImageRecord:
    return ImageRecord(
        row.id, row.path, row.size, row.mtime_ns, row.sha256, row.width, row.height, row.status, row.reason, row.indexed_at
    )


class Store:
    """One index's SQLite database (WAL, so readers never wait for the indexer).

    With `read_only` nothing is written, not even SQLite's WAL index files: for an index
    folder the user cannot write (a backup, a shared disk). Migrations then cannot run,
    so an index that needs one is refused with a message.
    """

    def __init__(self, db_path: Path, *, read_only: bool = False):
        self.path = Path(db_path)
        self.read_only = read_only
        self._shards: Shards | None = None
        self.engine = self._engine(immutable=False)
        try:
            if read_only:
                try:
                    self.check_current()
                except OperationalError:
                    # A read-only folder without the WAL's -shm file: SQLite cannot make one,
                    # so read the file as it is (nothing can write to the folder meanwhile).
                    self.engine.dispose()
                    self.engine = self._engine(immutable=True)
                    self.check_current()
                self._check_on_open()
            else:
                self._check_on_open(consistency=False)  # before a migration writes into a damaged file
                self.migrate()
                self._check_on_open(sqlite=False)
        except (DatabaseError, sqlite3.DatabaseError) as e:
            self.engine.dispose()
            raise _database_error(self.path, e) from None
        except UnicodeDecodeError as e:  # SQLite's error quoting a damaged schema
            self.engine.dispose()
            raise DatabaseDamagedError(self.path, [database.undecodable(e)]) from None
        except BaseException:
            self.engine.dispose()
            raise

    def _engine(self, *, immutable: bool):
        if not self.read_only:
            engine = create_engine(f"sqlite:///{self.path}", connect_args={"timeout": 60})
            event.listen(engine, "connect", database.write_pragmas)
            return engine
        mode = "immutable=1" if immutable else "mode=ro"
        uri = f"file:{quote(str(self.path.absolute()))}?{mode}"
        engine = create_engine(
            "sqlite://", poolclass=NullPool, creator=lambda: sqlite3.connect(uri, uri=True, timeout=60, check_same_thread=False)
        )
        event.listen(engine, "connect", database.read_pragmas)
        return engine

    def _check_on_open(self, *, sqlite: bool = True, consistency: bool = True) -> None:
        """The full check, or the quick one, when the file is small enough for it to cost little
        (`database.FULL_CHECK_ON_OPEN_BYTES`, `QUICK_CHECK_ON_OPEN_BYTES`): damage is then
        reported by every command, not answered from. Around a migration in two halves:
        SQLite's own check before it, vecsearch's (which needs the current schema) after."""
        try:
            size = self.path.stat().st_size
        except OSError:
            return  # no file yet (a new index), or one SQLite reports on its own
        full = size <= database.FULL_CHECK_ON_OPEN_BYTES
        if size <= database.QUICK_CHECK_ON_OPEN_BYTES and (full or sqlite):
            self._raise_if(self.database_problems(full=full, sqlite=sqlite, consistency=consistency))

    def database_problems(self, *, full: bool = True, sqlite: bool = True, consistency: bool = True) -> list[str]:
        """What is wrong with index.db (empty: nothing found).

        full: SQLite's `integrity_check` (every index agrees with its table: a changed path or
        hash is caught by its index), then vecsearch's consistency (foreign keys, and every
        vector's slot its own and below the commit point: a changed slot would serve another
        image's vector); otherwise `quick_check` (pages and b-trees only). Neither sees a
        changed digit in a column no index covers (a file's size or time): SQLite keeps no
        checksum of row contents. `sqlite`/`consistency` turn either half off.
        """
        try:
            with self.engine.connect() as c:
                raw = c.connection.dbapi_connection
                # One read snapshot for every query (pysqlite sends no BEGIN before a SELECT):
                # a concurrent indexer's commit between reading the commit point and the slots
                # would look like slots past it.
                raw.execute("BEGIN")
                try:
                    problems = []
                    if sqlite:
                        problems = database.pragma_problems(raw, "integrity_check" if full else "quick_check")
                    if full and consistency and not problems:
                        problems = _consistency_problems(c)
                finally:
                    if raw.in_transaction:
                        raw.execute("ROLLBACK")
        except (DatabaseError, sqlite3.DatabaseError) as e:
            if not database.is_damage(e):
                raise  # busy, locked, unwritable: not the file's fault
            return [str(getattr(e, "orig", None) or e).splitlines()[0]]
        except UnicodeDecodeError as e:
            return [database.undecodable(e)]
        return problems

    def require_sound(self, *, full: bool = True) -> None:
        """Raise DatabaseDamagedError when `database_problems` finds anything."""
        self._raise_if(self.database_problems(full=full))

    def _raise_if(self, problems: list[str]) -> None:
        if problems:
            raise DatabaseDamagedError(self.path, problems)

    def migrate(self) -> None:
        """Apply the migrations this database lacks, all in one transaction (`database.upgrade`)."""
        before = database.upgrade(self.path)
        if before is not None and before < "0005":
            log.info("moved the vectors of %s into shard files", self.path)

    def check_current(self) -> None:
        """Refuse (read-only) an index whose database needs a migration."""
        from alembic.runtime.migration import MigrationContext

        head = database.head_revision()
        with self.engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
        if current != head:
            raise IndexCorruptError(
                f"The index at {self.path.parent} needs a database upgrade ({current or 'none'} -> {head}), "
                "which needs write access: run any vecsearch command on it once where the folder is writable."
            )

    def close(self) -> None:
        if self._shards is not None:
            self._shards.close()
        self.engine.dispose()

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # -- what built the index -------------------------------------------------
    def info(self) -> IndexInfo | None:
        with self.session() as s:
            return s.scalars(select(IndexInfo)).first()

    def require_info(self) -> IndexInfo:
        """What built the index; IndexNotFoundError when nothing has been indexed yet."""
        info = self.info()
        if info is None:
            raise IndexNotFoundError(f"The index at {self.path.parent} is empty: add images first.", option="index")
        return info

    def create_info(self, **fields) -> IndexInfo:
        with self.session() as s, s.begin():
            info = IndexInfo(id=1, generation=0, created_at=_now(), **fields)
            s.add(info)
        return info

    def set_index_type(self, index_type: str, max_memory: int | None = None, spec_json: str | None = None) -> None:
        """Record a search structure built (its spec), with the type and budget that chose it, in one
        transaction: a type is recorded only with a structure that exists, so a build that fails
        leaves the previous one in force. The new generation makes every reader reload it."""
        values: dict[str, Any] = {"index_type": index_type, "index_spec": spec_json, "generation": IndexInfo.generation + 1}
        if max_memory is not None:
            values["max_memory"] = int(max_memory)
        with self.session() as s, s.begin():
            s.execute(update(IndexInfo).values(**values))

    def set_index_spec(self, spec_json: str | None) -> None:
        """Record the search structure just built (no new generation: the vectors did not change)."""
        with self.session() as s, s.begin():
            s.execute(update(IndexInfo).values(index_spec=spec_json))

    # -- settings later runs remember --------------------------------------------
    def setting(self, key: str, default=None):
        """A remembered per-index option (decoded JSON), or `default` when never set."""
        with self.session() as s:
            row = s.get(Setting, key)
            return default if row is None else json.loads(row.value)

    def set_setting(self, key: str, value) -> None:
        with self.session() as s, s.begin():
            s.merge(Setting(key=key, value=json.dumps(value)))

    def generation(self) -> int:
        with self.engine.connect() as c:
            return c.execute(select(IndexInfo.generation)).scalar() or 0

    # -- images ---------------------------------------------------------------
    def records(self) -> dict[str, ImageRecord]:
        with self.session() as s:
            return {r.path: _record(r) for r in s.scalars(select(Image))}

    def image(self, image_id: int) -> ImageRecord | None:
        with self.session() as s:
            r = s.get(Image, image_id)
            return _record(r) if r else None

    def image_by_path(self, path: str) -> ImageRecord | None:
        with self.session() as s:
            r = s.scalars(select(Image).where(Image.path == path)).first()
            return _record(r) if r else None

    def images(self, ids: Iterable[int]) -> dict[int, ImageRecord]:
        ids = [int(i) for i in ids]
        out: dict[int, ImageRecord] = {}
        with self.session() as s:
            for part in _slices(ids):
                for r in s.scalars(select(Image).where(Image.id.in_(part))):
                    out[r.id] = _record(r)
        return out

    def ok_ids_by_sha(self, shas: Iterable[str]) -> dict[str, int]:
        shas = list(set(shas))
        out: dict[str, int] = {}
        with self.session() as s:
            for part in _slices(shas):
                q = (
                    select(Image.sha256, func.min(Image.id))
                    .where(Image.sha256.in_(part), Image.status == "ok")
                    .group_by(Image.sha256)
                )
                # sha256.in_() never matches NULL: the check only tells the type checker so.
                out.update({sha: image_id for sha, image_id in s.execute(q) if sha is not None})
        return out

    # -- vectors kept by content hash after their image was dropped ------------
    def kept_sizes(self) -> set[int]:
        """File sizes of the kept vectors' content: only files of these sizes can revive one."""
        with self.engine.connect() as c:
            return {r[0] for r in c.execute(select(KeptVector.size).distinct())}

    def kept_shas(self, shas: Iterable[str]) -> set[str]:
        """Which of these content hashes have a kept vector."""
        out: set[str] = set()
        with self.engine.connect() as c:
            for part in _slices(set(shas)):
                out.update(r[0] for r in c.execute(select(KeptVector.sha256).where(KeptVector.sha256.in_(part))))
        return out

    def forget_kept(self, before: datetime) -> int:
        """Drop the kept vectors kept before `before` (UTC); returns how many."""
        with self.session() as s, s.begin():
            # A DML statement's result is a CursorResult; Session.execute is typed as returning a plain Result.
            result = cast("CursorResult[Any]", s.execute(delete(KeptVector).where(KeptVector.kept_at < before)))
            return result.rowcount or 0

    def failed(self) -> list[ImageRecord]:
        with self.session() as s:
            return [_record(r) for r in s.scalars(select(Image).where(Image.status == "failed").order_by(Image.path))]

    def page_images(self, offset: int, limit: int, status: str | None = None) -> tuple[int, list[ImageRecord]]:
        """(total, one page of image records ordered by id), all images or those of one status."""
        q = select(Image).order_by(Image.id)
        n = select(func.count()).select_from(Image)
        if status:
            q, n = q.where(Image.status == status), n.where(Image.status == status)
        with self.session() as s:
            total = s.execute(n).scalar() or 0
            rows = [_record(r) for r in s.scalars(q.offset(offset).limit(limit))]
        return total, rows

    def iter_images(
        self, *, status: str | None = None, under: Iterable[str] = (), ids: np.ndarray | None = None, chunk: int = 1000
    ) -> Iterator[ImageRecord]:
        """Image records by id, read `chunk` at a time (keyset pages: memory stays at one page).

        `status` keeps one status; `under` keeps paths equal to or inside these absolute
        folders; `ids` (ascending) keeps those ids only.
        """
        q = select(Image).order_by(Image.id)
        if status:
            q = q.where(Image.status == status)
        under = list(under)
        if under:
            q = q.where(or_(*(_path_under(r) for r in under)))
        if ids is not None:
            ids = np.unique(np.asarray(ids, np.int64))
            for part in _slices(ids.tolist()):
                with self.session() as s:
                    yield from [_record(r) for r in s.scalars(q.where(Image.id.in_(part)))]
            return
        last = -1
        while True:
            with self.session() as s:
                rows = [_record(r) for r in s.scalars(q.where(Image.id > last).limit(chunk))]
            if not rows:
                return
            yield from rows
            last = rows[-1].id

    def ids_under(self, folders: Iterable[str]) -> np.ndarray:
        """Ids of images whose path is one of these absolute paths or inside one, ascending."""
        folders = list(folders)
        if not folders:
            return np.zeros(0, np.int64)
        with self.engine.connect() as c:
            q = select(Image.id).where(or_(*(_path_under(r) for r in folders))).order_by(Image.id)
            return np.fromiter((r[0] for r in c.execute(q)), np.int64)

    def has_under(self, folder: str) -> bool:
        """Whether any image's path is this absolute path or inside it."""
        with self.engine.connect() as c:
            return c.execute(select(Image.id).where(_path_under(folder)).limit(1)).first() is not None

    def ids_with_user_label(self, label: str) -> np.ndarray:
        """Ids of images taught class `label`, ascending."""
        with self.engine.connect() as c:
            q = select(UserLabel.image_id).where(UserLabel.label == label).order_by(UserLabel.image_id)
            return np.fromiter((r[0] for r in c.execute(q)), np.int64)

    def ids_predicted(self, classifier: str, label: str) -> np.ndarray:
        """Ids of images classifier `classifier` predicted as `label`, ascending."""
        with self.engine.connect() as c:
            q = (
                select(Prediction.image_id)
                .where(Prediction.classifier == classifier, Prediction.label == label)
                .order_by(Prediction.image_id)
            )
            return np.fromiter((r[0] for r in c.execute(q)), np.int64)

    def counts(self) -> dict[str, int]:
        with self.session() as s:
            by_status = dict(s.execute(select(Image.status, func.count()).group_by(Image.status)).all())
            vectors = s.execute(select(func.count()).select_from(Vector)).scalar() or 0
        return {
            "images": sum(by_status.values()),
            "ok": by_status.get("ok", 0),
            "failed": by_status.get("failed", 0),
            "vectors": vectors,
        }

    # -- vectors --------------------------------------------------------------
    @property
    def shards(self) -> Shards:
        """The shard files of this index (its dimension must be known: an index with info)."""
        if self._shards is None:
            self._shards = Shards(self.path.parent / SHARDS_DIRNAME, self.require_info().dim)
        return self._shards

    def vector_ids(self) -> np.ndarray:
        with self.engine.connect() as c:
            return np.fromiter((r[0] for r in c.execute(select(Vector.image_id).order_by(Vector.image_id))), dtype=np.int64)

    def slot_map(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(ids ascending, their slots, the commit point), read in one snapshot: 16 bytes a vector."""
        with self.engine.connect() as c, c.begin():
            # Plain tuples from the driver: numpy converts a million of them in a blink.
            cur = c.connection.dbapi_connection.cursor()
            rows = cur.execute("SELECT image_id, slot FROM vectors ORDER BY image_id").fetchall()
            next_slot = int(c.execute(select(IndexInfo.next_slot)).scalar() or 0)
        arr = np.array(rows, dtype=np.int64).reshape(-1, 2)
        return np.ascontiguousarray(arr[:, 0]), np.ascontiguousarray(arr[:, 1]), next_slot

    def next_slot(self) -> int:
        """The shard commit point: slots below it are committed and never change."""
        with self.engine.connect() as c:
            return int(c.execute(select(IndexInfo.next_slot)).scalar() or 0)

    def _rows(self, q, id_column, ids: Iterable[int] | None) -> list:
        """Rows of query `q`, all of them or those whose `id_column` is in `ids` (in slices)."""
        with self.engine.connect() as c:
            if ids is None:
                return list(c.execute(q))
            rows = []
            for part in _slices(int(i) for i in ids):
                rows.extend(c.execute(q.where(id_column.in_(part))))
            return rows

    def damaged_vectors(self) -> list[int]:
        """Ids of images whose stored vector bytes no longer match the checksum they were written with.

        Reads every committed shard row once (streaming): what `vecsearch index` runs first,
        so a damaged vector is re-embedded rather than silently missing from results.
        """
        with self.engine.connect() as c:
            chunks = c.execute(
                select(VectorChunk.start_slot, VectorChunk.count, VectorChunk.crc32).order_by(VectorChunk.start_slot)
            ).all()
        bad: list[tuple[int, int]] = []
        for start, count, crc in chunks:
            got = 0
            try:
                for _, rows in self.shards.read_range(start, start + count):
                    got = zlib.crc32(np.ascontiguousarray(rows).tobytes(), got)
                    del rows
            except IndexCorruptError:
                got = -1  # the file is shorter than the rows it should hold
            if got != crc:
                bad.append((start, count))
        if not bad:
            return []
        ids: list[int] = []
        with self.engine.connect() as c:
            for start, count in bad:
                ids += [r[0] for r in c.execute(select(Vector.image_id).where(Vector.slot >= start, Vector.slot < start + count))]
        if not self.read_only:
            # A kept vector in a damaged run must never come back: it is forgotten (not re-embeddable).
            with self.session() as s, s.begin():
                for start, count in bad:
                    s.execute(delete(KeptVector).where(KeptVector.slot >= start, KeptVector.slot < start + count))
        return sorted(ids)

    def forget_vectors(self, ids: Iterable[int]) -> None:
        """Drop the vectors of these images and mark the files changed, so the next run embeds them anew."""
        ids = [int(i) for i in ids]
        with self.session() as s, s.begin():
            for part in _slices(ids):
                s.execute(delete(Vector).where(Vector.image_id.in_(part)))
                s.execute(update(Image).where(Image.id.in_(part)).values(size=-1, sha256=None))
            s.execute(update(IndexInfo).values(generation=IndexInfo.generation + 1))

    def vectors(self, ids: Iterable[int] | None = None, dim: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, unit vectors, norms) for the given ids (all when None), ordered by id.

        Norms are NaN for vectors imported without one. This holds everything asked for in
        memory at once; `iter_vectors` streams.
        """
        q = select(Vector.image_id, Vector.slot, Vector.norm)
        rows = sorted(self._rows(q, Vector.image_id, ids), key=lambda r: r[0])
        if not rows:
            info = self.info()
            return np.zeros(0, np.int64), np.zeros((0, dim or (info.dim if info else 0)), np.float32), np.zeros(0, np.float32)
        out_ids = np.array([r[0] for r in rows], dtype=np.int64)
        mat = self.shards.read([r[1] for r in rows])
        norms = np.array([np.nan if r[2] is None else r[2] for r in rows], dtype=np.float32)
        return out_ids, mat, norms

    def iter_vectors(
        self, ids: Iterable[int] | None = None, chunk: int = 8192
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """`vectors` in chunks of at most `chunk`, ordered by id: memory stays at one chunk."""
        if ids is not None:
            ids = np.unique(np.fromiter((int(i) for i in ids), np.int64))
            for i in range(0, len(ids), chunk):
                yield self.vectors(ids[i : i + chunk])
            return
        last = -1
        while True:
            with self.engine.connect() as c:
                part = [
                    r[0]
                    for r in c.execute(
                        select(Vector.image_id).where(Vector.image_id > last).order_by(Vector.image_id).limit(chunk)
                    )
                ]
            if not part:
                return
            yield self.vectors(part)
            last = part[-1]

    # -- writes, each one transaction that bumps the generation --------------
    def apply(
        self,
        *,
        upserts: Iterable[dict] = (),
        moves: Iterable[tuple[int, dict]] = (),
        copies: Iterable[tuple[int, dict]] = (),
        revives: Iterable[dict] = (),
        deletes: Iterable[int] = (),
    ) -> dict[str, list[int]]:
        """Write one chunk of an indexing run atomically.

        upserts: image fields plus `vector`/`norm` (none for a failed file); replace by path.
        moves: (existing id, new fields) -- a renamed file keeps its id and vector.
        copies: (source id, new image fields) -- identical content elsewhere reuses the vector.
        revives: image fields of files whose content (sha256) has a kept vector: it is reused.
        deletes: image ids to drop (their vectors are kept by content hash, see KeptVector).
        Returns the image ids whose vectors were added/changed ("set") or dropped ("unset").
        """
        changed: list[int] = []
        dropped: list[int] = []
        new_rows: list[np.ndarray] = []  # vectors to write at the commit point, in order
        deletes = [int(i) for i in deletes]
        with self.session() as s, s.begin():
            info = s.get(IndexInfo, 1)
            slot = info.next_slot if info is not None else 0
            _keep(s, deletes)
            for image_id in deletes:
                s.execute(delete(Vector).where(Vector.image_id == image_id))
                s.execute(delete(Image).where(Image.id == image_id))
                dropped.append(image_id)
            for image_id, fields in moves:
                s.execute(update(Image).where(Image.id == image_id).values(**fields))
            for src_id, fields in copies:
                src = s.get(Vector, src_id)
                img = s.get(Image, src_id)
                if src is None or img is None:
                    raise IndexCorruptError(f"Image {src_id} to copy vanished during the run; run `vecsearch index` again.")
                norm = src.norm
                new_rows.append(self.shards.read([src.slot])[0])  # one slot per image: a copy gets its own row
                fields = {**fields, "width": fields.get("width") or img.width, "height": fields.get("height") or img.height}
                row = self._upsert_image(s, fields, dropped)
                s.add(Vector(image_id=row.id, slot=slot, norm=norm))
                slot += 1
                changed.append(row.id)
            for fields in revives:
                kept = s.get(KeptVector, fields["sha256"])
                if kept is not None:  # the slot passes to the new image, with the vector it holds
                    s.delete(kept)
                    s.flush()
                    row = self._upsert_image(
                        s, {**fields, "width": kept.width, "height": kept.height, "status": "ok", "reason": None}, dropped
                    )
                    s.add(Vector(image_id=row.id, slot=kept.slot, norm=kept.norm))
                else:  # a second file of that content in this chunk: a copy of the first
                    first = s.execute(
                        select(Vector.slot, Vector.norm, Image.width, Image.height)
                        .join(Image, Image.id == Vector.image_id)
                        .where(Image.sha256 == fields["sha256"], Image.status == "ok")
                        .limit(1)
                    ).first()
                    if first is None:
                        raise IndexCorruptError(
                            f"The kept vector of {fields['path']} vanished during the run; run `vecsearch index` again."
                        )
                    new_rows.append(self.shards.read([first.slot])[0])
                    row = self._upsert_image(
                        s, {**fields, "width": first.width, "height": first.height, "status": "ok", "reason": None}, dropped
                    )
                    s.add(Vector(image_id=row.id, slot=slot, norm=first.norm))
                    slot += 1
                changed.append(row.id)
            for fields in upserts:
                fields = dict(fields)
                vector = fields.pop("vector", None)
                norm = fields.pop("norm", None)
                row = self._upsert_image(s, fields, dropped)
                if vector is not None:
                    new_rows.append(np.asarray(vector, np.float32).reshape(-1))
                    s.add(Vector(image_id=row.id, slot=slot, norm=None if norm is None else float(norm)))
                    slot += 1
                    changed.append(row.id)
            if new_rows:
                if info is None:
                    raise IndexNotFoundError(f"No index at {self.path.parent}: add images first.", option="index")
                # The rows reach the disk before the transaction that points at them commits.
                block = np.stack(new_rows).astype("<f4")
                self.shards.write(info.next_slot, block)
                s.add(VectorChunk(start_slot=info.next_slot, count=len(block), crc32=zlib.crc32(block.data.cast("B"))))
                info.next_slot = slot
            if changed or dropped:
                s.execute(update(IndexInfo).values(generation=IndexInfo.generation + 1))
        return {"set": changed, "unset": dropped}

    @contextmanager
    def importing(self, create_info: dict | None = None) -> Iterator[Importer]:
        """One transaction for a whole `import`: every batch commits together, or none does.

        A file that fails part-way (a repeated path, a NaN in its last batch) leaves the index
        as it was; the shard rows written meanwhile are past the commit point, i.e. scratch.
        `create_info`: the fields of the index info to create in the same transaction (an
        empty index taking its model from the file), so a failed first import leaves it empty.
        """
        with self.session() as s, s.begin():
            if create_info is not None:
                s.add(IndexInfo(id=1, generation=0, created_at=_now(), **create_info))
                s.flush()
            info = s.get(IndexInfo, 1)
            if info is None:
                raise IndexNotFoundError(f"No index at {self.path.parent}: add images first.", option="index")
            shards = self._shards or Shards(self.path.parent / SHARDS_DIRNAME, info.dim)
            importer = Importer(s, info, shards)
            yield importer
            if importer.slot != info.next_slot:
                info.next_slot = importer.slot
            if importer.ids_from is not None:
                s.execute(update(IndexInfo).values(generation=IndexInfo.generation + 1))
        self._shards = self._shards or shards

    @staticmethod
    def _upsert_image(s: Session, fields: dict, dropped: list[int]) -> Image:
        """Insert a row for this path; an older row for it is replaced by a new id.

        New content gets a new id (ids are never reused), so the FAISS file can be brought
        up to date from id sets alone after a crash: no id ever changes its vector.
        """
        old = s.scalars(select(Image).where(Image.path == fields["path"])).first()
        label = None
        if old is not None:
            if s.get(Vector, old.id) is not None:
                dropped.append(old.id)
                _keep(s, [old.id])  # an edit may be undone: the old content's vector stays findable
            # The user's class belongs to the path: it survives the file being re-embedded.
            old_label = s.get(UserLabel, old.id)
            if old_label is not None:
                label = (old_label.label, old_label.split, old_label.source)
            s.execute(delete(UserLabel).where(UserLabel.image_id == old.id))
            s.execute(delete(Vector).where(Vector.image_id == old.id))
            s.execute(delete(Image).where(Image.id == old.id))
        row = Image(**fields, indexed_at=_now())
        s.add(row)
        s.flush()
        if label is not None:
            s.add(UserLabel(image_id=row.id, label=label[0], split=label[1], source=label[2]))
        return row

    # -- classes of the user's own, classifiers, predictions ----------------------
    def set_user_labels(self, rows: Iterable[tuple[int, str, str | None, str]]) -> int:
        """Upsert (image_id, label, split, source) rows; returns how many were written.

        Rows of images deleted meanwhile (a concurrent indexer) are skipped, as in
        `set_imagenet_labels`: the caller compares the count with the rows it gave.
        """
        rows = [(int(r[0]), str(r[1]), r[2], r[3]) for r in rows]
        n = 0
        with self.session() as s, s.begin():
            alive = _lock_and_keep_alive(s, [r[0] for r in rows], UserLabel.image_id)
            for image_id, label, split, source in rows:
                if image_id in alive:
                    s.merge(UserLabel(image_id=image_id, label=label, split=split, source=source))
                    n += 1
        return n

    def clear_user_labels(self, ids: Iterable[int] | None = None) -> None:
        """Forget the labels of the given images (all when None)."""
        with self.session() as s, s.begin():
            if ids is None:
                s.execute(delete(UserLabel))
            else:
                ids = [int(i) for i in ids]
                for part in _slices(ids):
                    s.execute(delete(UserLabel).where(UserLabel.image_id.in_(part)))

    def user_labels(self) -> list[tuple[int, str, str | None, str]]:
        """(image_id, label, split, source) of every labelled image, ordered by id."""
        with self.engine.connect() as c:
            q = select(UserLabel.image_id, UserLabel.label, UserLabel.split, UserLabel.source).order_by(UserLabel.image_id)
            return [tuple(r) for r in c.execute(q)]

    def label_counts(self) -> dict[str, dict[str, int]]:
        """{label: {split or "": count}} over labelled images."""
        out: dict[str, dict[str, int]] = {}
        with self.engine.connect() as c:
            q = select(UserLabel.label, UserLabel.split, func.count()).group_by(UserLabel.label, UserLabel.split)
            for label, split, n in c.execute(q):
                out.setdefault(label, {})[split or ""] = n
        return out

    def save_classifier_row(self, name: str, kind: str, path: str | None, params: str, metrics: str) -> None:
        """Insert or replace one classifier row (params/metrics are JSON text)."""
        with self.session() as s, s.begin():
            s.merge(Classifier(name=name, kind=kind, path=path, params=params, metrics=metrics, created_at=_now()))

    def classifier_rows(self) -> list[Classifier]:
        """Every trained classifier, newest first."""
        with self.session() as s:
            return list(s.scalars(select(Classifier).order_by(Classifier.created_at.desc(), Classifier.name)))

    def set_predictions(self, classifier: str, rows: Iterable[tuple[int, str, float]], *, replace: bool = True) -> int:
        """Store (image_id, label, confidence) for one classifier, dropping its older ones if replace.

        Returns how many were written: rows of images deleted meanwhile (a concurrent
        indexer) are skipped, not a foreign-key failure.
        """
        rows = [(int(r[0]), str(r[1]), float(r[2])) for r in rows]
        now = _now()
        n = 0
        with self.session() as s, s.begin():
            if replace:
                s.execute(delete(Prediction).where(Prediction.classifier == classifier))
            alive = _lock_and_keep_alive(s, [r[0] for r in rows], Prediction.image_id)
            for image_id, label, conf in rows:
                if image_id in alive:
                    s.merge(Prediction(image_id=image_id, classifier=classifier, label=label, confidence=conf, created_at=now))
                    n += 1
        return n

    def predictions(self, classifier: str | None = None) -> list[tuple[int, str, str, float]]:
        """(image_id, classifier, label, confidence), ordered by classifier then id."""
        q = select(Prediction.image_id, Prediction.classifier, Prediction.label, Prediction.confidence)
        if classifier is not None:
            q = q.where(Prediction.classifier == classifier)
        with self.engine.connect() as c:
            return [tuple(r) for r in c.execute(q.order_by(Prediction.classifier, Prediction.image_id))]

    # -- ImageNet top-k labels -------------------------------------------------
    def set_imagenet_labels(self, ids: Iterable[int], rows: Iterable[tuple[int, int, int, str, str, float]]) -> int:
        """Replace the labels of `ids` with (image_id, rank, class_index, wnid, name, prob) rows.

        Rows of images deleted meanwhile (a concurrent indexer) are skipped: the delete
        takes SQLite's write lock first, so the existence check can't go stale.
        """
        ids = [int(i) for i in ids]
        n = 0
        with self.session() as s, s.begin():
            alive: set[int] = set()
            for part in _slices(ids):
                s.execute(delete(ImagenetLabel).where(ImagenetLabel.image_id.in_(part)))
                alive.update(s.scalars(select(Image.id).where(Image.id.in_(part))))
            values = [
                dict(image_id=int(r[0]), rank=int(r[1]), class_index=int(r[2]), wnid=r[3], name=r[4], prob=float(r[5]))
                for r in rows
                if int(r[0]) in alive
            ]
            if values:
                s.execute(insert(ImagenetLabel), values)
                n = len(values)
        return n

    def imagenet_labelled_ids(self) -> np.ndarray:
        """Ids of images that have ImageNet labels, ascending."""
        with self.engine.connect() as c:
            q = select(ImagenetLabel.image_id).distinct().order_by(ImagenetLabel.image_id)
            return np.fromiter((r[0] for r in c.execute(q)), dtype=np.int64)

    def imagenet_labels(self, ids: Iterable[int] | None = None) -> dict[int, list[tuple[int, int, str, str, float]]]:
        """{image_id: [(rank, class_index, wnid, name, prob), ...] best first} (all when ids is None)."""
        q = select(
            ImagenetLabel.image_id,
            ImagenetLabel.rank,
            ImagenetLabel.class_index,
            ImagenetLabel.wnid,
            ImagenetLabel.name,
            ImagenetLabel.prob,
        )
        out: dict[int, list] = {}
        for image_id, *rest in sorted(self._rows(q, ImagenetLabel.image_id, ids), key=lambda r: (r[0], r[1])):
            out.setdefault(image_id, []).append(tuple(rest))
        return out

    def images_with_imagenet_class(self, class_indexes: Iterable[int]) -> list[tuple[int, int, str, str, float]]:
        """(image_id, rank, wnid, name, prob) of stored labels of these classes."""
        q = (
            select(ImagenetLabel.image_id, ImagenetLabel.rank, ImagenetLabel.wnid, ImagenetLabel.name, ImagenetLabel.prob)
            .where(ImagenetLabel.class_index.in_([int(c) for c in class_indexes]))
            .order_by(ImagenetLabel.prob.desc(), ImagenetLabel.image_id)
        )
        with self.engine.connect() as c:
            return [tuple(r) for r in c.execute(q)]

    # -- everything known about a few images, for the HTTP service ----------------
    def annotations(self, ids: Iterable[int], *, top: int) -> dict[int, dict]:
        """{id: {"imagenet_labels", "user_label", "predictions"}} for the given images.

        ImageNet labels are the best `top`; images with nothing stored are left out.
        """
        ids = [int(i) for i in ids]
        out: dict[int, dict] = {}
        with self.session() as s:
            for part in _slices(ids):
                for r in s.scalars(
                    select(ImagenetLabel)
                    .where(ImagenetLabel.image_id.in_(part), ImagenetLabel.rank <= top)
                    .order_by(ImagenetLabel.image_id, ImagenetLabel.rank)
                ):
                    out.setdefault(r.image_id, no_annotations())["imagenet_labels"].append(
                        {"rank": r.rank, "class_index": r.class_index, "wnid": r.wnid, "name": r.name, "prob": r.prob}
                    )
                for u in s.scalars(select(UserLabel).where(UserLabel.image_id.in_(part))):
                    out.setdefault(u.image_id, no_annotations())["user_label"] = {
                        "label": u.label,
                        "split": u.split,
                        "source": u.source,
                    }
                for p in s.scalars(select(Prediction).where(Prediction.image_id.in_(part)).order_by(Prediction.classifier)):
                    out.setdefault(p.image_id, no_annotations())["predictions"].append(
                        {"classifier": p.classifier, "label": p.label, "confidence": p.confidence}
                    )
        return out


class Importer:
    """The writes of one `import` inside `Store.importing`'s transaction, batch by batch.

    A path may come once per import: a second row for it, in the same file or another one,
    is refused with a BadVectorFileError that names the path and the files. A path that was
    in the index before is replaced (new id, its user label carried over, the old vector kept
    by content hash).
    """

    def __init__(self, s: Session, info: IndexInfo, shards: Shards):
        self._s, self._info, self._shards = s, info, shards
        self.slot = info.next_slot
        self.ids_from: int | None = None  # the first id this import gave: ids at or past it are its own
        self._sources: list[tuple[int, str]] = []  # (first id, file) per batch, to name a repeat's file

    def _cursor(self):
        return self._s.connection().connection.dbapi_connection.cursor()

    def _next_id(self) -> int:
        # Ids continue past every id ever used (AUTOINCREMENT's own rule), so none is reused.
        cur = self._cursor()
        seq = cur.execute("SELECT seq FROM sqlite_sequence WHERE name = 'images'").fetchone()
        top = cur.execute("SELECT max(id) FROM images").fetchone()[0]
        return max(seq[0] if seq else 0, top or 0) + 1

    def _replacing(self, paths: list[str], source: str) -> dict[str, int]:
        """{path: id} of the rows these paths replace; a path this import already wrote is refused."""
        twice = [p for p, n in Counter(paths).items() if n > 1]
        if twice:
            raise self._repeat(twice[0], source, source)
        existing: dict[str, int] = {}
        for part in _slices(paths):
            existing.update(self._s.execute(select(Image.path, Image.id).where(Image.path.in_(part))).all())
        if self.ids_from is not None:
            for path, image_id in existing.items():
                if image_id >= self.ids_from:
                    first = self._sources[bisect_right([i for i, _ in self._sources], image_id) - 1][1]
                    raise self._repeat(path, first, source)
        return existing

    @staticmethod
    def _repeat(path: str, first: str, then: str) -> BadVectorFileError:
        where = f"twice in {first}" if first == then else f"in both {first} and {then}"
        return BadVectorFileError(
            f"{path} is {where}; a path may come once per import. Nothing was imported: "
            "the index is as it was. Drop the repeated row (or import the files one "
            "at a time: a later import replaces a path)."
        )

    def _drop(self, existing: dict[str, int]) -> dict[str, tuple]:
        """Delete the rows being replaced; returns their user labels by path, to carry over."""
        s = self._s
        carried: dict[str, tuple] = {}
        if existing:
            path_of = {i: p for p, i in existing.items()}
            old_ids = list(existing.values())
            _keep(s, old_ids)
            for part in _slices(old_ids):
                for lab in s.scalars(select(UserLabel).where(UserLabel.image_id.in_(part))):
                    carried[path_of[lab.image_id]] = (lab.label, lab.split, lab.source)
                s.execute(delete(UserLabel).where(UserLabel.image_id.in_(part)))
                s.execute(delete(Vector).where(Vector.image_id.in_(part)))
                s.execute(delete(Image).where(Image.id.in_(part)))
        return carried

    def _begin(self, source: str) -> int:
        first = self._next_id()
        if self.ids_from is None:
            self.ids_from = first
        self._sources.append((first, source))
        return first

    def add(self, rows: list[dict], vectors: np.ndarray, norms: np.ndarray, source: str) -> tuple[list[int], int]:
        """Insert or replace images by path, each with a vector; returns (new ids in row order, how many replaced).

        rows: image fields (path, size, mtime_ns, sha256, width, height); vectors: unit
        float32 (n, dim); norms: float32, NaN where unknown; source: the file they come from.
        """
        if not rows:
            return [], 0
        s = self._s
        existing = self._replacing([r["path"] for r in rows], source)
        carried = self._drop(existing)
        first = self._begin(source)
        ids = list(range(first, first + len(rows)))
        when = _now().isoformat(sep=" ")
        # Bulk rows through the driver in this same transaction (ORM objects cost ~20x more).
        cur = self._cursor()
        cur.executemany(
            "INSERT INTO images (id, path, size, mtime_ns, sha256, width, height, status, reason, indexed_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'ok', NULL, ?)",
            [
                (i, r["path"], r["size"], r["mtime_ns"], r["sha256"], r["width"], r["height"], when)
                for i, r in zip(ids, rows, strict=False)
            ],
        )
        cur.executemany(
            "INSERT INTO vectors (image_id, slot, norm) VALUES (?, ?, ?)",
            [(i, self.slot + j, None if nm != nm else nm) for j, (i, nm) in enumerate(zip(ids, norms.tolist(), strict=False))],
        )
        if carried:
            id_of = {r["path"]: i for r, i in zip(rows, ids, strict=False)}
            s.execute(
                insert(UserLabel),
                [{"image_id": id_of[p], "label": lab, "split": split, "source": src} for p, (lab, split, src) in carried.items()],
            )
        # The rows reach the disk before the transaction that points at them commits.
        block = np.ascontiguousarray(vectors, "<f4")
        self._shards.write(self.slot, block)
        s.add(VectorChunk(start_slot=self.slot, count=len(block), crc32=zlib.crc32(block.data.cast("B"))))
        self.slot += len(rows)
        return ids, len(existing)

    def add_failed(self, rows: list[dict], source: str) -> None:
        """Rows of files an `embed` shard records as failed (no vector), as indexing would store them."""
        if not rows:
            return
        existing = self._replacing([r["path"] for r in rows], source)
        carried = self._drop(existing)
        self._begin(source)
        for fields in rows:
            row = Image(**fields, indexed_at=_now())
            self._s.add(row)
            self._s.flush()
            if fields["path"] in carried:
                label, split, src = carried[fields["path"]]
                self._s.add(UserLabel(image_id=row.id, label=label, split=split, source=src))


def _lock_and_keep_alive(s: Session, ids: list[int], id_column) -> set[int]:
    """Which of `ids` are still images, checked inside a write transaction.

    A no-op DELETE first takes SQLite's write lock (a deferred transaction would otherwise
    read before a concurrent indexer's delete commits), so the answer cannot go stale
    before this transaction's inserts.
    """
    s.execute(delete(id_column.class_).where(id_column == -1))
    alive: set[int] = set()
    for part in _slices(sorted(set(ids))):
        alive.update(s.scalars(select(Image.id).where(Image.id.in_(part))))
    return alive


def _keep(s: Session, ids: list[int]) -> None:
    """Before these images are dropped: keep their vectors findable by content hash (KeptVector).

    Only images with a vector and a known hash; a newer copy of a hash replaces an older one.
    """
    when = _now()
    for part in _slices(ids):
        q = (
            select(Image.sha256, Vector.slot, Vector.norm, Image.size, Image.width, Image.height)
            .join(Vector, Vector.image_id == Image.id)
            .where(Image.id.in_(part), Image.status == "ok", Image.sha256.is_not(None), Image.size > 0)
        )
        rows = [
            {"sha256": r[0], "slot": r[1], "norm": r[2], "size": r[3], "width": r[4], "height": r[5], "kept_at": when}
            for r in s.execute(q)
        ]
        if rows:
            s.execute(insert(KeptVector).prefix_with("OR REPLACE"), rows)


def _path_under(folder: str):
    """SQL: the path is `folder` or inside it. A range on the path column, so no LIKE
    wildcard in a folder's name (`_`, `%`) can widen it; "0" sorts right after "/"."""
    root = folder.rstrip("/") or ""
    prefix = root + "/"
    return or_(Image.path == folder, and_(Image.path > prefix, Image.path < root + "0"))


def no_annotations() -> dict:
    """What `Store.annotations` gives an image that has none."""
    return {"imagenet_labels": [], "user_label": None, "predictions": []}


def _consistency_problems(c) -> list[str]:
    """What SQLite's own check cannot know: the tables have the columns vecsearch reads (a changed
    byte in the schema's text can rename one), rows point at rows that exist, and every vector's
    slot is its own and below the commit point."""
    problems = []
    for table in Base.metadata.sorted_tables:
        have = {r[1] for r in c.exec_driver_sql(f'PRAGMA table_info("{table.name}")')}
        missing = [col.name for col in table.columns if col.name not in have]
        if missing:
            problems.append(f"table {table.name} lacks column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    if problems:
        return problems
    cur = c.connection.dbapi_connection.cursor()
    for table in Base.metadata.sorted_tables:
        # Every text decodes and every time parses, as the app will read them: a changed byte
        # in a column no index covers fails here, not later in a listing. In SQL and the
        # driver's C decoding: 10x faster than reading rows through SQLAlchemy's types.
        texts = [col.name for col in table.columns if isinstance(col.type, String)]
        times = [col.name for col in table.columns if isinstance(col.type, DateTime)]
        try:
            if texts:
                cur.execute(f'SELECT {", ".join(texts)} FROM "{table.name}"')
                while cur.fetchmany(10_000):
                    pass
            for name in times:
                bad = cur.execute(
                    f'SELECT count(*) FROM "{table.name}" WHERE {name} IS NOT NULL AND julianday({name}) IS NULL'
                ).fetchone()[0]
                if bad:
                    problems.append(f"{bad} rows of {table.name} hold no time in {name}")
        except (sqlite3.OperationalError, UnicodeDecodeError) as e:
            problems.append(f"a row of {table.name} cannot be read ({str(e).splitlines()[0]})")
    cur.close()
    if problems:
        return problems
    problems = [
        f"row {rowid} of {table} points at a missing row of {parent}"
        for table, rowid, parent, _ in c.exec_driver_sql("PRAGMA foreign_key_check").fetchall()[:10]
    ]
    next_slot = c.execute(select(IndexInfo.next_slot)).scalar() or 0
    outside = c.execute(select(func.count()).select_from(Vector).where(or_(Vector.slot < 0, Vector.slot >= next_slot))).scalar()
    if outside:
        problems.append(f"{outside} vectors point at shard rows outside 0..{next_slot - 1}")
    shared = c.execute(select(Vector.slot).group_by(Vector.slot).having(func.count() > 1).limit(1)).scalar()
    if shared is not None:
        problems.append(f"several images point at the vector in shard row {shared}")
    return problems


def _database_error(path: Path, e: Exception) -> Exception:
    """A VecsearchError that says what is wrong with the database file, or `e` itself."""
    if database.is_damage(e):
        return DatabaseDamagedError(path, [str(getattr(e, "orig", None) or e).splitlines()[0]])
    return e


def open_folder(directory: Path, *, create: bool, read_only: bool | None, restructure: bool) -> Store:
    """The store of the index folder `directory`, created when allowed; read-only (None: when not writable here)."""
    if directory.exists() and not directory.is_dir():
        raise VecsearchError(f"{directory} is a file, not an index folder: open a folder (new or existing).", option="index")
    db = directory / DB_NAME
    if db.exists() and not db.is_file():
        raise IndexCorruptError(f"{db} is not a file: move it away (the index is then empty) or restore it from a backup.")
    if not db.exists():
        if not create:
            raise IndexNotFoundError(
                f"No index at {directory}: add images to build one, or open the folder that holds it.", option="index"
            )
        if read_only:
            raise IndexNotFoundError(f"No index at {directory} to open read-only.")
        directory.mkdir(parents=True, exist_ok=True)
    if read_only is None:
        read_only = db.exists() and not (os.access(directory, os.W_OK) and os.access(db, os.W_OK))
        if read_only:
            log.info("%s is not writable: opening the index read-only", directory)
    if read_only and restructure:
        raise VecsearchError(f"The index at {directory} is read-only here; its search structure cannot be changed.")
    return Store(db, read_only=read_only)
