"""The SQLite file itself: connection settings, migrations applied in one transaction, integrity checks.

Migrations run on every writable open (`upgrade`). pysqlite's legacy transaction control
(the default before Python 3.16) sends no BEGIN before DDL, so each CREATE, DROP and ALTER
of a migration used to commit on its own: a SIGKILL between the steps of a batch
migration left `_alembic_tmp_<table>` behind and every later open failed on it. Here the
driver's own BEGIN is turned off and SQLAlchemy emits `BEGIN IMMEDIATE` (SQLAlchemy's
recipe for transactional DDL on pysqlite), and the whole upgrade, from reading the
version to stamping the last one, is that one transaction: a kill anywhere leaves the
schema and data of before, and the next open runs it again. IMMEDIATE takes the write
lock before the version is read, so two processes opening an old index cannot both
migrate it: the second waits, then finds it current.
"""

from __future__ import annotations

import functools
import logging
from importlib import resources
from pathlib import Path

from sqlalchemy import create_engine, event

log = logging.getLogger(__name__)

__all__ = [
    "migrations_dir",
    "write_pragmas",
    "read_pragmas",
    "transactional_engine",
    "upgrade",
    "head_revision",
    "clear_interrupted_batches",
    "pragma_problems",
    "is_damage",
    "undecodable",
    "FULL_CHECK_ON_OPEN_BYTES",
    "QUICK_CHECK_ON_OPEN_BYTES",
]

BUSY_TIMEOUT_S = 60
"""How long a connection waits for another one's write lock (a migration waits for another's)."""
TMP_PREFIX = "_alembic_tmp_"
"""Alembic's batch mode builds `<prefix><table>`, copies the rows, drops `<table>`, renames."""
VACUUM_PENDING = "_vacuum_pending"
"""The `settings` key a migration that freed many pages leaves until its VACUUM has run."""
FULL_CHECK_ON_OPEN_BYTES = 1024 * 1024
"""Every open of an index.db up to this size runs the full check (`Store.database_problems`):
47 ms measured on 0.9 MB (1,000 images with 5 ImageNet labels each; 0.43 s on 8.3 MB), on a
busy 2-core machine. The indexes of a first day are this small."""
QUICK_CHECK_ON_OPEN_BYTES = 16 * 1024 * 1024
"""Every open of a larger index.db up to this size runs `PRAGMA quick_check` (pages and b-trees):
55 ms measured on 8.3 MB (10,000 images), 0.5 s on 84 MB (100,000). Larger ones are checked
in full by each `vecsearch index` run and by `vecsearch check`, not on every query."""


def migrations_dir() -> Path:
    """Alembic scripts: top-level `migrations/` in a checkout, `vecsearch/migrations` in a wheel."""
    return Path(str(resources.files("vecsearch.migrations")))


def read_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
    cur.close()


def write_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on a power cut, and a write
    # over HTTP is answered as durable (one more fsync per commit; indexing commits per chunk).
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
    cur.close()


def transactional_engine(url: str):
    """An engine whose transactions cover DDL too: the driver's BEGIN off, `BEGIN IMMEDIATE` sent instead."""
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, record) -> None:
        write_pragmas(dbapi_conn, record)  # journal_mode cannot change inside a transaction: set it first
        dbapi_conn.isolation_level = None  # no implicit BEGIN (nor COMMIT) from pysqlite

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _alembic_config():
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return cfg


@functools.cache
def head_revision() -> str | None:
    """The newest revision of the scripts (read once a process: parsing them costs a few ms each open)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(conn) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def _tmp_tables(conn) -> list[str]:
    rows = conn.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND substr(name, 1, ?) = ?", (len(TMP_PREFIX), TMP_PREFIX)
    )
    return [r[0] for r in rows]


def _needs(engine) -> tuple[bool, bool]:
    """(a migration is due, a VACUUM is due): behind the head, an interrupted batch's table left,
    or the marker a committed migration leaves until its VACUUM is done.

    Read on the driver's connection in autocommit, so the check takes no write lock: it runs on
    every open, beside other processes that search and index.
    """
    raw = engine.raw_connection()
    try:
        db = raw.driver_connection
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        row = db.execute("SELECT version_num FROM alembic_version").fetchone() if "alembic_version" in tables else None
        if (row[0] if row else None) != head_revision() or any(t.startswith(TMP_PREFIX) for t in tables):
            return True, False
        return False, db.execute("SELECT 1 FROM settings WHERE key = ?", (VACUUM_PENDING,)).fetchone() is not None
    finally:
        raw.close()


def clear_interrupted_batches(conn) -> list[str]:
    """Finish or roll back what an interrupted batch migration left (`_alembic_tmp_<table>`); their names.

    Older vecsearch versions committed each DDL step apart. The copy's rows are inserted
    before the original is dropped, so while `<table>` still exists it is the truth and the
    copy is dropped (rolled back: the version was not stamped, the migration runs again);
    a copy without its original is complete and takes the original's name (finished).
    """
    fixed = []
    for tmp in _tmp_tables(conn):
        table = tmp[len(TMP_PREFIX) :]
        exists = conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).first()
        if exists:
            conn.exec_driver_sql(f'DROP TABLE "{tmp}"')
            log.warning("dropped %s, left by a migration that was interrupted; the migration runs again", tmp)
        else:
            conn.exec_driver_sql(f'ALTER TABLE "{tmp}" RENAME TO "{table}"')
            log.warning("renamed %s to %s, finishing a migration that was interrupted", tmp, table)
        fixed.append(tmp)
    return fixed


def upgrade(db_path: Path) -> str | None:
    """Bring the database to the scripts' head in one transaction; the revision it had before.

    Nothing is written (no lock taken) when it is current already.
    """
    from alembic import command

    engine = transactional_engine(f"sqlite:///{db_path}")
    try:
        migrate, vacuum = _needs(engine)
        before = head_revision()
        if migrate:
            with engine.connect() as conn, conn.begin():
                # Read under the write lock: another process may have migrated meanwhile.
                before = current_revision(conn)
                clear_interrupted_batches(conn)
                cfg = _alembic_config()
                cfg.attributes["connection"] = conn  # in a transaction: alembic runs every step inside it
                command.upgrade(cfg, "head")
                if before is not None and before < "0005":
                    # The vector BLOBs moved to shard files: their pages go back to the file system
                    # by a VACUUM, which cannot run inside a transaction. The marker commits with
                    # the migration, so a kill before the VACUUM ends leaves it due, not forgotten.
                    conn.exec_driver_sql("INSERT OR REPLACE INTO settings (key, value) VALUES (?, 'true')", (VACUUM_PENDING,))
                    vacuum = True
        if vacuum:
            _vacuum(engine, db_path)
    finally:
        engine.dispose()
    return before


def _vacuum(engine, db_path: Path) -> None:
    """VACUUM, then clear the marker. A VACUUM that fails (it needs room for a copy of the
    database, and no other writer) is only a warning: the index works without it, and the
    marker makes the next open try again."""
    import sqlite3

    raw = engine.raw_connection()
    try:
        raw.driver_connection.execute("VACUUM")  # the driver's autocommit: no BEGIN around it
    except sqlite3.OperationalError as e:
        log.warning("could not VACUUM %s (%s); the next open tries again", db_path, e)
        return
    finally:
        raw.close()
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM settings WHERE key = ?", (VACUUM_PENDING,))


def pragma_problems(dbapi_conn, pragma: str, limit: int = 20) -> list[str]:
    """What `PRAGMA quick_check` or `integrity_check` finds (empty: sound), at most `limit` lines.

    Their lines (and SQLite's errors) may quote damaged bytes, so text is decoded with
    replacement: a damaged file must give a report, not a UnicodeDecodeError.
    """
    import sqlite3

    before = dbapi_conn.text_factory
    dbapi_conn.text_factory = lambda b: b.decode("utf-8", "replace")
    try:
        rows = [r[0] for r in dbapi_conn.execute(f"PRAGMA {pragma}({int(limit)})").fetchall()]
    except sqlite3.DatabaseError as e:
        if not is_damage(e):
            raise
        return [str(e)]
    except UnicodeDecodeError as e:
        return [undecodable(e)]
    finally:
        dbapi_conn.text_factory = before
    return [] if rows == ["ok"] else rows


def is_damage(e: BaseException) -> bool:
    """Whether a SQLite error says the file is damaged (not busy, locked or unwritable)."""
    low = str(getattr(e, "orig", None) or e).lower()
    return any(w in low for w in ("malformed", "not a database", "could not decode", "encrypted", "corrupt"))


def undecodable(e: UnicodeDecodeError) -> str:
    """SQLite's message (or a value) that did not decode as UTF-8: a damaged schema or row, made printable."""
    data = e.object if isinstance(e.object, (bytes, bytearray)) else b""
    return bytes(data).decode("utf-8", "replace") or str(e)
