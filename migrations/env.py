"""Alembic environment: vecsearch passes an open connection, inside its transaction, in `config.attributes`.

`vecsearch.store.database.upgrade` begins that transaction (BEGIN IMMEDIATE, DDL included)
before alembic reads the version, so every step and every version stamp commit together
or not at all; alembic sees an external transaction and leaves it alone. Alembic's SQLite
default is `transactional_ddl=False` because pysqlite's legacy mode autocommits DDL; the
engine used here does not, so it is told the truth.
"""

from alembic import context

from vecsearch.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` CLI use, for authoring new revisions: the same transactional engine
    from vecsearch.store.database import transactional_engine

    url = context.config.get_main_option("sqlalchemy.url") or "sqlite:///index.db"
    connection = transactional_engine(url).connect()

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
